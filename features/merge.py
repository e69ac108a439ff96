"""The fetch-time merge of one GroupBy's features: batch body + edge tiles + stream tiles, finalized.

:class:`MergeProgram` is compiled once per GroupBy (:func:`merge_program`); :func:`merge_features` is the
definition it implements, used by tests and the consistency checker; a fetcher adds an :class:`EntityMemo` per
entity so a repeated fetch folds only the fresh tiles (see :meth:`MergeProgram.run`). Where the pieces lie is
:mod:`features.tiles`.
"""

from __future__ import annotations

import bisect
import operator
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from features.ops import AggOp
from features.tiles import BatchState, LazyIRs, Run, StateCodec, Tile, TileKey, cover_runs
from features.windows import DAY_MS, LIFETIME_START_MS, align, window_interval


@dataclass
class FetchResult:
    """Feature values of one GroupBy for one entity, and how trustworthy they are."""

    values: dict[str, Any]
    stale_batch: bool = False  # the query time is past the batch state's validity
    inexact_head: bool = False  # a tile straddling t held events at or after t (an "as of" query in the past)


def merge_features(
    codec: StateCodec,
    t_ms: int,
    batch: BatchState | None,
    stream_tiles: Mapping[TileKey, Tile],
    boundary_ms: int | None = None,
) -> FetchResult:
    """Every feature of the GroupBy at ``t``: batch body + edge tiles + stream tiles, finalized.

    ``stream_tiles`` maps ``(size, start)`` to tiles (from the decoded period values of :func:`stream_reads`).
    Without batch state, ``boundary_ms`` says from when the stream holds everything (default: the start of time,
    i.e. the stream holds all events).
    """
    program = merge_program(codec)
    res = program.run(t_ms, batch, stream_tiles, boundary_ms)
    return FetchResult(
        dict(zip(program.names, res.values)), stale_batch=res.stale_batch, inexact_head=res.inexact_head
    )


def reuse_tiles(old: Mapping[int, Tile], new: dict[int, Tile]) -> dict[int, Tile]:
    """``new`` (a period value just decoded lazily) with every tile whose bytes equal the one in ``old`` (the
    same period value read before) replaced by the old object, so its already decoded IRs and its identity
    (which :meth:`MergeProgram.run` compares) carry over."""
    for start, tile in new.items():
        prev = old.get(start)
        if (
            prev is not None
            and prev.max_ts == tile.max_ts
            and isinstance(prev.irs, LazyIRs)
            and isinstance(tile.irs, LazyIRs)
            and prev.irs.payloads == tile.irs.payloads
        ):
            new[start] = prev
    return new


def merge_program(codec: StateCodec) -> MergeProgram:
    """The :class:`MergeProgram` of ``codec`` (built once per codec)."""
    program = _PROGRAMS.get(codec)
    if program is None:
        program = _PROGRAMS[codec] = MergeProgram(codec)
    return program


@dataclass(frozen=True)
class _WindowProgram:
    """One distinct window (length, hop, offset) of a GroupBy and the features it feeds."""

    length_ms: int | None
    hop_ms: int
    offset_ms: int
    #: per feature: (slot in the GroupBy's feature order, aggregation index, window index in the aggregation, op)
    feats: tuple[tuple[int, int, int, AggOp], ...]
    #: per feature: whether its finalized value is a list or dict (copied before it leaves a memo)
    mutable: tuple[bool, ...]


@dataclass(frozen=True)
class WindowLayout:
    """Where one window lies at a query time: ``[start, end)``, its batch part's end ``min(end, B)``, and which
    of the layout's covers holds the stream tiles of ``[max(start, B), end)`` (the last may straddle ``t``)."""

    start: int
    end: int
    batch_end: int
    cover: int  # index of the window's pieces in the layout's covers (windows often share them); -1: none


@dataclass(frozen=True)
class Layout:
    """Where a GroupBy's windows lie at one query time: per window its :class:`WindowLayout`; the distinct
    covers (stream tiles as runs, see :func:`cover_runs`); and the stored period values ``(size, period start)``
    they lie in, each with the latest end of a tile read from it."""

    windows: tuple[WindowLayout, ...]
    covers: tuple[tuple[Run, ...], ...]
    needs: dict[TileKey, int]


@dataclass
class MergeResult:
    """A :meth:`MergeProgram.run`: values in the GroupBy's feature order, and the flags of :class:`FetchResult`."""

    values: list[Any]
    stale_batch: bool = False
    inexact_head: bool = False


class EntityMemo:
    """What a fetcher remembers between fetches of one entity under one batch version (see
    :meth:`MergeProgram.run`): per window, the last inputs and finalized values, and the merged IRs of the
    window's immutable part (batch body, edge tiles, stream tiles that can no longer change).

    Updated by whole-tuple assignment and never mutated in place, so threads may share one."""

    __slots__ = ("batch", "boundary_ms", "last", "windows")

    def __init__(self) -> None:
        self.batch: BatchState | None = None
        self.boundary_ms: int | None = None
        self.windows: list[Any] = []
        # The last run given ``inputs``: (covers, batch end, batch, boundary, inputs, finals by slot, heads).
        self.last: tuple[Any, ...] | None = None


class MergeProgram:
    """The merge of one GroupBy's features, compiled once: its distinct windows, which features (slot,
    aggregation, op) each feeds, and the stream tiles each window reads at a query time.

    :meth:`run` folds, per feature, ``init`` ← batch body ← edge tiles in ``[start, min(end, B))`` ← the
    present stream tiles in time order, and finalizes — the definition :func:`merge_features` gives. With an
    :class:`EntityMemo` and ``final_before`` (tiles ending at or before it can no longer change), it also:

    * returns a window's previous values when its inputs are the same objects as last time (same batch part,
      same present tiles);
    * keeps, per window, the fold over the batch part and the leading *final* tiles (the prefix) and continues
      from a copy of it: a fetch folds only the fresh tiles at the head, and a prefix grows by folding the
      tiles that became final. The fold order is the definition's, so values are identical, not just close.
    * given ``inputs`` (objects whose identity pins the stream tiles, e.g. the period values' decoded tile maps),
      returns the whole previous answer when the layout's covers, the batch part and every input are the same
      objects as last time: no per-window work at all (an entity asked again before anything it reads changed).
    """

    def __init__(self, codec: StateCodec) -> None:
        gb = codec.gb
        self.codec = codec
        self.names = [f.name for f in gb.features]
        slot = {name: i for i, name in enumerate(self.names)}
        windows = []
        for (length_ms, hop_ms, offset_ms), feats in codec.features_by_window.items():
            compiled = tuple((slot[name], ai, wi, codec.ops[ai]) for name, ai, wi in feats)
            mutable = tuple(op.output_type().startswith(("array<", "map<")) for _, _, _, op in compiled)
            windows.append(_WindowProgram(length_ms, hop_ms, offset_ms, compiled, mutable))
        self.windows: tuple[_WindowProgram, ...] = tuple(windows)
        # Slots whose values are arrays or maps (a caller may change them: handed out as copies).
        self._mutable_slots: list[bool] = [False] * len(self.names)
        for w in self.windows:
            for feat, is_mutable in zip(w.feats, w.mutable):
                self._mutable_slots[feat[0]] = is_mutable
        self.sizes: tuple[int, ...] = tuple(gb.stream.tile_sizes_ms) if gb.stream else ()
        self.horizon_ms = gb.stream.horizon_ms if gb.stream else 0
        self.period_of = dict(codec.period_of)
        self._last: tuple[int, int, Layout] | None = None
        # Layouts within one smallest tile are alike (see layout): kept per (tile start, t on it, boundary).
        self._bucket_ms = self._bucket_size()
        self._templates: dict[tuple[int, bool, int], tuple[Layout, tuple[WindowLayout | None, ...]]] = {}

    def _bucket_size(self) -> int:
        """The smallest tile size when every window length, offset and hop and the stream horizon are
        multiples of it (then, for ``t`` within one smallest tile, a layout differs only in the ``end`` of the
        windows that end at ``t``), else 0."""
        if not self.sizes:
            return 0
        s = self.sizes[0]
        spans = [self.horizon_ms, DAY_MS]
        for w in self.windows:
            spans += [w.hop_ms, w.offset_ms] + ([w.length_ms] if w.length_ms is not None else [])
        return s if all(x % s == 0 for x in spans) else 0

    # ---- where the windows lie ---------------------------------------------------------------------------
    def layout(self, t_ms: int, boundary_ms: int) -> Layout:
        """Where every window lies at ``t`` (see :class:`Layout`). The last query's answer is kept.

        With a smallest tile size ``s`` that divides every window's length, offset and hop, the horizon and
        the day, and a boundary on the ``s`` grid, every window start, cover and period value needed is the
        same for all ``t`` in ``(a, a + s)`` (``a = align(t, s)``), and for ``t = a``: only the windows without
        an offset end at ``t``. So the layout of the first such ``t`` is kept as a template, and a later ``t``
        in the same place only gets new :class:`WindowLayout` objects for those windows (``_compute`` is the
        definition; a test checks the two agree)."""
        last = self._last
        if last is not None and last[0] == t_ms and last[1] == boundary_ms:
            return last[2]
        s = self._bucket_ms
        if s and boundary_ms % s == 0:
            a = t_ms - t_ms % s
            key = (a, t_ms == a, boundary_ms)
            template = self._templates.get(key)
            if template is None:
                full = self._compute(t_ms, boundary_ms)
                at_t = tuple(None if w.offset_ms == 0 else lay for w, lay in zip(self.windows, full.windows))
                if len(self._templates) >= 16:  # query times move forward: the old ones are not asked again
                    self._templates.clear()
                self._templates[key] = template = (full, at_t)
                result = full
            else:
                base, at_t = template
                batch_end = min(t_ms, boundary_ms)
                result = Layout(
                    tuple(
                        WindowLayout(lay.start, t_ms, batch_end, lay.cover) if fixed is None else fixed
                        for lay, fixed in zip(base.windows, at_t)
                    ),
                    base.covers,
                    base.needs,
                )
        else:
            result = self._compute(t_ms, boundary_ms)
        self._last = (t_ms, boundary_ms, result)
        return result

    def _compute(self, t_ms: int, boundary_ms: int) -> Layout:
        """:meth:`layout` from the definitions (window intervals, covers, period values)."""
        sizes = self.sizes
        windows = []
        covers: list[tuple[Run, ...]] = []
        needs: dict[TileKey, int] = {}
        index: dict[tuple[int, int], int] = {}
        if sizes:
            smallest = sizes[0]
            floor = align(t_ms - self.horizon_ms, DAY_MS)
            period_of = self.period_of
        for w in self.windows:
            start, end = window_interval(t_ms, w.length_ms, w.hop_ms, w.offset_ms)
            ci = -1
            # The stream keeps tiles for its horizon only: never cover further back (see window_pieces).
            if sizes and (lo := max(start, boundary_ms, floor)) < end:
                ci = index.get((lo, end), -1)
                if ci < 0:
                    hi = end - end % smallest
                    runs = cover_runs(lo, hi, sizes)
                    if hi < end:  # the head: the smallest tile holding t
                        runs = (*runs, (smallest, hi, hi))
                    ci = index[(lo, end)] = len(covers)
                    covers.append(runs)
                    for size, first, last_start in runs:  # the period values the runs lie in
                        period = period_of[size]
                        x = first
                        while x <= last_start:
                            pstart = x - x % period
                            tile_end = min(last_start, pstart + period - size) + size
                            if needs.get((size, pstart), LIFETIME_START_MS) < tile_end:
                                needs[(size, pstart)] = tile_end
                            x = pstart + period
            windows.append(WindowLayout(start, end, min(end, boundary_ms), ci))
        return Layout(tuple(windows), tuple(covers), needs)

    # ---- the merge ---------------------------------------------------------------------------------------
    def run(
        self,
        t_ms: int,
        batch: BatchState | None,
        stream_tiles: Mapping[TileKey, Tile],
        boundary_ms: int | None = None,
        *,
        memo: EntityMemo | None = None,
        final_before: int | None = None,
        inputs: tuple[Any, ...] | None = None,
    ) -> MergeResult:
        """Every feature at ``t`` (arguments as :func:`merge_features`). ``memo``: this entity's memo under
        this batch version (reset here if ``batch`` or the boundary differ from what it holds).
        ``final_before``: stream tiles that end at or before it are final (their content can no longer
        change); without it no prefix is kept. ``inputs``: with a memo, objects such that the same objects (by
        identity, in the same order) mean the same ``stream_tiles``; then an unchanged query gives the memo's
        answer without a fold."""
        if batch is not None:
            boundary = batch.boundary_ms
        elif boundary_ms is not None:
            boundary = boundary_ms
        else:  # the stream holds everything: start at its oldest tile
            largest = max(self.sizes) if self.sizes else 1
            boundary = align(min((start for _, start in stream_tiles), default=t_ms), largest)
        result = MergeResult([None] * len(self.names))
        if batch is not None and not batch.boundary_ms <= t_ms <= batch.boundary_ms + batch.validity_ms:
            result.stale_batch = True
        layout = self.layout(t_ms, boundary)
        batch_end = min(t_ms, boundary)
        if memo is not None and inputs is not None:
            last = memo.last
            if (
                last is not None
                and last[0] is layout.covers
                and last[1] == batch_end
                and last[2] is batch
                and last[3] == boundary
                and len(last[4]) == len(inputs)
                and all(map(operator.is_, last[4], inputs))
            ):
                result.values = [
                    v.copy() if mutable and v is not None else v
                    for v, mutable in zip(last[5], self._mutable_slots)
                ]
                for lay, head in zip(layout.windows, last[6]):
                    if head is not None and head[0] > lay.end and head[1] >= lay.end:
                        result.inexact_head = True
                return result
        # The present tiles of each cover, in time order: per size, bisect the sorted starts into each run.
        starts_of: dict[int, list[int]] = {}
        for size, ts in stream_tiles:
            starts_of.setdefault(size, []).append(ts)
        for by_size in starts_of.values():
            by_size.sort()
        present: list[tuple[tuple[TileKey, ...], list[Tile]]] = []
        for runs in layout.covers:
            keys: list[TileKey] = []
            for size, first, last_start in runs:
                found = starts_of.get(size)
                if found:
                    for ts in found[
                        bisect.bisect_left(found, first) : bisect.bisect_right(found, last_start)
                    ]:
                        if (ts - first) % size == 0:
                            keys.append((size, ts))
            present.append((tuple(keys), [stream_tiles[k] for k in keys]))
        slots: list[Any] | None = None
        if memo is not None:
            if (
                memo.batch is not batch
                or memo.boundary_ms != boundary
                or len(memo.windows) != len(self.windows)
            ):
                memo.windows = [None] * len(self.windows)
                memo.batch, memo.boundary_ms = batch, boundary
            slots = memo.windows
        values = result.values
        kept: list[Any] | None = [None] * len(values) if slots is not None and inputs is not None else None
        heads: list[tuple[int, int] | None] = []
        no_tiles: tuple[tuple[TileKey, ...], list[Tile]] = ((), [])
        for i, (w, lay) in enumerate(zip(self.windows, layout.windows)):
            keys_t, tiles = present[lay.cover] if lay.cover >= 0 else no_tiles
            if tiles:
                size, ts = keys_t[-1]
                heads.append((ts + size, tiles[-1].max_ts))
                if ts + size > lay.end and tiles[-1].max_ts >= lay.end:
                    result.inexact_head = True
            else:
                heads.append(None)
            if slots is None:
                for slot, ai, wi, op in w.feats:
                    ir = self._batch_fold(op, batch, ai, wi, lay, w.hop_ms)
                    for tile in tiles:
                        ir = op.merge(ir, tile.irs[ai])
                    values[slot] = op.finalize(ir)
                continue
            finals = self._memo_window(w, lay, batch, keys_t, tiles, slots, i, final_before)
            for (slot, _, _, _), mutable, v in zip(w.feats, w.mutable, finals):
                values[slot] = v.copy() if mutable and v is not None else v
                if kept is not None:
                    kept[slot] = v  # the memo's own (never handed out)
        if memo is not None and kept is not None and inputs is not None:
            memo.last = (layout.covers, batch_end, batch, boundary, inputs, kept, tuple(heads))
        return result

    @staticmethod
    def _batch_fold(
        op: AggOp, batch: BatchState | None, ai: int, wi: int, lay: WindowLayout, hop: int
    ) -> Any:
        ir = op.init()
        if batch is not None:
            ws = batch.windows[ai][wi]
            ir = op.merge(ir, ws.body)
            for tile_ir in ws.tiles_within(lay.start, lay.batch_end, hop):
                ir = op.merge(ir, tile_ir)
        return ir

    def _memo_window(
        self,
        w: _WindowProgram,
        lay: WindowLayout,
        batch: BatchState | None,
        keys: tuple[TileKey, ...],
        tiles: list[Tile],
        slots: list[Any],
        i: int,
        final_before: int | None,
    ) -> Sequence[Any]:
        """The finalized values of one window's features, from the memo where its inputs are unchanged."""
        # The batch part depends on [start, batch_end) only when the window reaches before the boundary;
        # otherwise it is the body alone, whatever the start.
        bpart = (lay.start, lay.batch_end) if lay.start < lay.batch_end else None
        sig = (bpart, keys)
        held = slots[i]  # (sig, tiles, finals, prefix sig, prefix, prefix tiles)
        if held is not None and held[0] == sig and all(map(operator.is_, held[1], tiles)):
            return held[2]
        n_final = 0
        if final_before is not None:
            for size, ts in keys:
                if ts + size > final_before:
                    break
                n_final += 1
        psig = (bpart, sig[1][:n_final])
        head = tiles[:n_final]
        prefix: list[Any]
        # A kept prefix is used only over the very tile objects it was folded from (a final tile re-read with
        # other bytes, e.g. from a stream job that fell behind, is a new object and rebuilds it).
        n_held = len(held[5]) if held is not None else 0
        if held is not None and held[3] == psig and all(map(operator.is_, held[5], head)):
            prefix = held[4]
        elif (
            held is not None
            and held[3][0] == bpart
            and psig[1][:n_held] == held[3][1]
            and all(map(operator.is_, held[5], head))
        ):
            grown = head[n_held:]  # tiles that became final since: fold them in
            prefix = []
            for (_, ai, _, op), ir in zip(w.feats, held[4]):
                ir = op.copy(ir)
                for tile in grown:
                    ir = op.merge(ir, tile.irs[ai])
                prefix.append(ir)
        else:
            prefix = []
            for _, ai, wi, op in w.feats:
                ir = self._batch_fold(op, batch, ai, wi, lay, w.hop_ms)
                for tile in head:
                    ir = op.merge(ir, tile.irs[ai])
                prefix.append(ir)
        fresh = tiles[n_final:]
        if not fresh:
            finals = [op.finalize(ir) for (_, _, _, op), ir in zip(w.feats, prefix)]
        else:
            finals = []
            for (_, ai, _, op), ir in zip(w.feats, prefix):
                ir = op.copy(ir)
                for tile in fresh:
                    ir = op.merge(ir, tile.irs[ai])
                finals.append(op.finalize(ir))
        slots[i] = (sig, tuple(tiles), finals, psig, prefix, tuple(head))
        return finals


_PROGRAMS: weakref.WeakKeyDictionary[StateCodec, MergeProgram] = weakref.WeakKeyDictionary()
