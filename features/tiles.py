"""Tiles and batch state: what the stream and the batch upload write, and how a fetch merges them.

One GroupBy's state for one entity is a list of IRs, one per aggregation (``features.ops``). Two stores hold it:

* **Stream tiles** (write-many store): the IRs of the events in ``[start, start + size)`` for each tile size of
  the plan (``StreamPlan.levels``). A stored *period value* holds one level's tiles of one period (the next size
  up), keyed ``(size, period start)``; each tile also records the largest event time in it, so a fetch knows
  whether a tile that straddles the query time is exact.
* **Batch state** (write-once store), computed from every event before a day boundary ``B``: per aggregation
  and window, the IR of the window's *body* (the part inside the window for every query time of the validity
  period ``[B, B + V)``) plus the hop-sized *edge tiles* that enter or leave the window during that period.

A fetch at ``t`` (``B <= t < B + V``) for a window covering ``[start, end)`` merges: the body, the edge tiles
inside ``[start, min(end, B))``, and the fewest stream tiles covering ``[max(start, B), end)``
(:func:`features.windows.cover`). Every read is bounded whatever the window length, and the result equals a
direct fold of the events in the window (``features.reference``) — the property tests prove it.
"""

from __future__ import annotations

import bisect
import functools
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from features.encoding import FORMAT_VERSION, EncodingError, Reader, Writer, decode_irs, encode_irs, join_irs
from features.ops import AggOp, OpParams, get_op
from features.ops.bucketed import Bucketed
from features.ops.ordered import _Bounded, _Single
from features.ops.simple import _Extreme
from features.ops.sketches import ApproxUniqueCount
from features.ops.topk import _Extremes
from features.plan import GroupByPlan, WindowPlan
from features.windows import DAY_MS, LIFETIME_START_MS, align, cover, window_interval

#: Format byte of period values and batch states (independent of the IR container's own version byte).
TILES_FORMAT = 1

TileKey = tuple[int, int]  # (size_ms, start_ms)

_SUFFIX = struct.Struct(">Iq")


def tile_suffix(size_ms: int, period_start_ms: int) -> bytes:
    """The key suffix of a stream period value (after the entity, in ``kvstore.codec.make_key``): big-endian
    so an entity's values sort by level, then time.

    >>> parse_tile_suffix(tile_suffix(60_000, 3_600_000))
    (60000, 3600000)
    """
    return _SUFFIX.pack(size_ms, period_start_ms)


def parse_tile_suffix(suffix: bytes) -> TileKey:
    size, start = _SUFFIX.unpack(suffix)
    return size, start


def build_ops(gb: GroupByPlan) -> list[AggOp]:
    """The shared op of each aggregation of ``gb`` (bucketed where the aggregation has buckets)."""
    ops: list[AggOp] = []
    for agg in gb.aggregations:
        op = get_op(agg.op, OpParams(k=agg.k, percentiles=agg.percentiles), input_type=agg.input_type)
        if agg.bucket:
            op = Bucketed(op, bucket_type=gb.row_logic.output_schema[agg.bucket])
        ops.append(op)
    return ops


@dataclass
class Tile:
    """The IRs (one per aggregation) of one tile and the largest event time folded into it."""

    irs: list[Any]
    max_ts: int


_MISSING = object()


class LazyIRs:
    """A tile's IR list decoded one aggregation at a time, on first use: a fetch merges a window's tiles only
    for the aggregations that use that window, so most payloads of a fresh tile are never decoded."""

    __slots__ = ("_items", "_ops", "_payloads")

    def __init__(self, ops: Sequence[AggOp], payloads: list[bytes]):
        if len(payloads) != len(ops):
            raise EncodingError(f"tile holds {len(payloads)} IRs but the plan has {len(ops)} aggregations")
        self._ops = ops
        self._payloads = payloads
        self._items: list[Any] = [_MISSING] * len(payloads)

    def __len__(self) -> int:
        return len(self._payloads)

    @property
    def payloads(self) -> list[bytes]:
        """The encoded IRs, one per aggregation (not to be mutated)."""
        return self._payloads

    def __getitem__(self, i: int) -> Any:
        item = self._items[i]
        if item is _MISSING:
            item = self._items[i] = self._ops[i].decode(self._payloads[i])
        return item

    def __setitem__(self, i: int, value: Any) -> None:
        self._items[i] = value

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(len(self._payloads)))


# How :meth:`StateCodec.update_tracked` tells that an update left an op's IR (hence its payload) unchanged.
_ALWAYS, _SCALAR, _SINGLE, _BOUNDED, _DISTINCT = range(5)
#: Distinct items remembered per (tile, approx_unique_count) to recognise a repeat (a sketch no-op).
_SEEN_MAX = 64


def _no_item(value: Any) -> Any:
    return value


def _change_kind(op: AggOp) -> int:
    if isinstance(op, Bucketed):
        return _ALWAYS
    if isinstance(op, _Extreme):
        return _SCALAR  # the IR is the value; update returns the old object when it keeps it
    if isinstance(op, _Single):
        return _SINGLE  # [ts, tie, value] replaced in place or kept
    if isinstance(op, _Bounded | _Extremes):
        return _BOUNDED  # an ascending list changed only by an insert (and a drop at an end)
    if isinstance(op, ApproxUniqueCount):
        return _DISTINCT  # re-adding an item already in the sketch changes nothing
    return _ALWAYS


class TilePayloads:
    """The encoded payload of each op of one tile, kept while the op's IR does not change (``None``: stale),
    and, per approx_unique_count op, the items known to be in its sketch. See
    :meth:`StateCodec.update_tracked` and :meth:`StateCodec.encode_tracked`.

    ``joined`` is the container of the payloads as they were at the last encode: a payload only ever goes stale
    (``None``) and back, so while none is stale it still holds (tiles of several levels sharing one IR list, and
    their cache, are joined once)."""

    __slots__ = ("joined", "payloads", "seen")

    def __init__(self, payloads: list[bytes | None]) -> None:
        self.payloads = payloads
        self.seen: dict[int, set[Any]] = {}
        self.joined: bytes | None = None


class StateCodec:
    """Folds projected rows into IR lists and (de)serializes tiles, period values and batch states of one
    GroupBy. Pure Python; the Flink job, the Spark jobs and the fetcher all use it."""

    def __init__(self, gb: GroupByPlan):
        self.gb = gb
        self.ops = build_ops(gb)
        self._codecs: Sequence[Any] = self.ops  # AggOp satisfies encoding.IRCodec (name is a ClassVar there)
        self.time_col = gb.source.time_column
        self.tie_col = gb.source.tie_break
        self._aggs = [(agg.column, agg.bucket, op) for agg, op in zip(gb.aggregations, self.ops)]
        self.sizes = gb.stream.tile_sizes_ms if gb.stream else ()
        #: features grouped by their window (length, hop, offset): (name, aggregation index, window index)
        self.features_by_window: dict[tuple[int | None, int, int], list[tuple[str, int, int]]] = {}
        for f in gb.features:
            w = gb.aggregations[f.agg_index].windows[f.window_index]
            self.features_by_window.setdefault((w.length_ms, w.hop_ms, w.offset_ms), []).append(
                (f.name, f.agg_index, f.window_index)
            )
        self.period_of = {lv.size_ms: lv.period_ms for lv in gb.stream.levels} if gb.stream else {}
        # The stream's per-event path, precompiled: (index, column, bucket, bound update, change kind, item).
        self._steps: list[tuple[int, str, str | None, Callable[..., Any], int, Callable[[Any], Any]]] = [
            (
                i,
                column,
                bucket,
                op.update if bucket is None else op.update_bucket,  # type: ignore[attr-defined]
                _ALWAYS if bucket is not None else _change_kind(op),
                getattr(op, "_item", _no_item),
            )
            for i, (column, bucket, op) in enumerate(self._aggs)
        ]
        self._inits = [op.init for op in self.ops]

    # ---- IR lists --------------------------------------------------------------------------------------
    def init(self) -> list[Any]:
        return [init() for init in self._inits]

    def update(self, irs: list[Any], row: Mapping[str, Any]) -> list[Any]:
        """Add one projected row (the output of the row logic) to every aggregation's IR."""
        ts = row[self.time_col]
        tie = int(row.get(self.tie_col) or 0) if self.tie_col else 0
        for i, (column, bucket, op) in enumerate(self._aggs):
            value = row.get(column)
            if value is None:
                continue
            if bucket is None:
                irs[i] = op.update(irs[i], value, ts, tie)
            else:
                b = row.get(bucket)
                if b is not None:  # null buckets are skipped, like null values (a map key cannot be null)
                    irs[i] = op.update_bucket(irs[i], b, value, ts, tie)  # type: ignore[attr-defined]
        return irs

    def update_tracked(self, irs: list[Any], row: Mapping[str, Any], cache: TilePayloads) -> list[Any]:
        """:meth:`update`, marking stale (in ``cache``) the payload of every op whose IR may have changed; ops
        the row left as they were (a max not exceeded, a first not preceded, a distinct item seen before, a
        null value) keep theirs, so :meth:`encode_tracked` re-encodes only what changed."""
        ts = row[self.time_col]
        tie = int(row.get(self.tie_col) or 0) if self.tie_col else 0
        get = row.get
        payloads = cache.payloads
        for i, column, bucket, upd, kind, item in self._steps:
            value = get(column)
            if value is None:
                continue
            old = irs[i]
            if bucket is not None:
                b = get(bucket)
                if b is None:
                    continue
                irs[i] = upd(old, b, value, ts, tie)
                payloads[i] = None
            elif kind == _ALWAYS:
                irs[i] = upd(old, value, ts, tie)
                payloads[i] = None
            elif kind == _SCALAR:
                new = irs[i] = upd(old, value, ts, tie)
                if new is not old:
                    payloads[i] = None
            elif kind == _SINGLE:
                if old is None:
                    irs[i] = upd(old, value, ts, tie)
                    payloads[i] = None
                else:
                    t0, t1, v = old
                    new = irs[i] = upd(old, value, ts, tie)
                    if new is not old or new[2] is not v or new[0] != t0 or new[1] != t1:
                        payloads[i] = None
            elif kind == _BOUNDED:
                before = old[:]  # at most k items; equal lists encode to equal bytes
                new = irs[i] = upd(old, value, ts, tie)
                if new != before:
                    payloads[i] = None
            else:  # _DISTINCT
                key = item(value)
                seen = cache.seen.get(i)
                if seen is None and old.is_empty():
                    # Items are known only for a sketch this cache saw from empty.
                    seen = cache.seen[i] = set()
                irs[i] = upd(old, value, ts, tie)
                if seen is None or key not in seen:
                    payloads[i] = None
                    if seen is not None and len(seen) < _SEEN_MAX:
                        seen.add(key)
        return irs

    def new_payloads(self) -> TilePayloads:
        """An empty cache for a new tile (every payload stale)."""
        return TilePayloads([None] * len(self.ops))

    def copy_payloads(self, cache: TilePayloads) -> TilePayloads:
        """A copy of ``cache`` for a copy (:meth:`copy`) of its IR list."""
        out = TilePayloads(list(cache.payloads))
        out.joined = cache.joined
        out.seen = {i: set(s) for i, s in cache.seen.items()}
        return out

    def encode_tracked(self, irs: Sequence[Any], cache: TilePayloads) -> bytes:
        """:meth:`encode` (byte-identical), re-encoding only the ops whose cached payload is stale."""
        payloads = cache.payloads
        joined = cache.joined
        for i, p in enumerate(payloads):
            if p is None:
                payloads[i] = self.ops[i].encode(irs[i])
                joined = None
        if joined is None:
            joined = cache.joined = join_irs(payloads)  # type: ignore[arg-type]
        return joined

    def decode_tracked(self, data: bytes) -> tuple[list[Any], TilePayloads]:
        """:meth:`decode`, and the payloads as a cache (all fresh) for :meth:`update_tracked`."""
        payloads = _split_container(data)
        if len(payloads) != len(self.ops):
            return self.decode(data), self.new_payloads()  # decode raises the container's error
        irs = []
        for i, (op, payload) in enumerate(zip(self.ops, payloads)):
            try:
                irs.append(op.decode(payload))
            except EncodingError as exc:
                raise EncodingError(f"IR {i} ({op.name}): {exc}") from exc
        return irs, TilePayloads(list(payloads))

    def merge(self, a: list[Any], b: Sequence[Any]) -> list[Any]:
        """Merge ``b`` into ``a`` (``a`` may be mutated; ``b`` never is)."""
        for i, op in enumerate(self.ops):
            a[i] = op.merge(a[i], b[i])
        return a

    def copy(self, irs: Sequence[Any]) -> list[Any]:
        return [op.copy(ir) for op, ir in zip(self.ops, irs)]

    def encode(self, irs: Sequence[Any]) -> bytes:
        return encode_irs(self._codecs, irs)

    def decode(self, data: bytes) -> list[Any]:
        return decode_irs(self._codecs, data)

    # ---- stream period values --------------------------------------------------------------------------
    def period_key(self, size_ms: int, tile_start_ms: int) -> TileKey:
        """The stored value ``(size, period start)`` that holds tile ``(size, tile_start)``."""
        return size_ms, align(tile_start_ms, self.period_of[size_ms])

    def encode_period(self, size_ms: int, period_start_ms: int, tiles: Mapping[int, Tile]) -> bytes:
        """One stored value: the tiles of one level in one period (sorted by start; empty tiles dropped)."""
        w = Writer()
        w.buf.append(TILES_FORMAT)
        w.uvarint(size_ms)
        w.svarint(period_start_ms)
        w.uvarint(len(tiles))
        for start in sorted(tiles):
            tile = tiles[start]
            w.uvarint((start - period_start_ms) // size_ms)
            w.svarint(tile.max_ts - start)
            w.raw(self.encode(tile.irs))
        return w.getvalue()

    def decode_period(self, data: bytes, *, lazy: bool = False) -> tuple[int, int, dict[int, Tile]]:
        """Inverse of :meth:`encode_period`. ``lazy``: IRs are decoded per aggregation on first use (the
        tiles are then for reading and merging from, as a fetch does)."""
        r = Reader(data)
        version = r.byte()
        if version != TILES_FORMAT:
            raise EncodingError(
                f"tile value format {version} is not {TILES_FORMAT}; written by another tessera"
            )
        size = r.uvarint()
        period_start = r.svarint()
        tiles: dict[int, Tile] = {}
        for _ in range(r.uvarint()):
            start = period_start + r.uvarint() * size
            max_ts = start + r.svarint()
            blob = r.raw()
            irs = LazyIRs(self.ops, _split_container(blob)) if lazy else self.decode(blob)
            tiles[start] = Tile(irs, max_ts)  # type: ignore[arg-type]
        r.done()
        return size, period_start, tiles

    # ---- batch state -----------------------------------------------------------------------------------
    def encode_batch(self, state: BatchState) -> bytes:
        w = Writer()
        w.buf.append(TILES_FORMAT)
        w.svarint(state.boundary_ms)
        w.uvarint(state.validity_ms)
        for ai, windows in enumerate(state.windows):
            op = self.ops[ai]
            for ws in windows:
                w.raw(op.encode(ws.body))
                w.uvarint(len(ws.tiles))
                for start in sorted(ws.tiles):
                    w.svarint(start - state.boundary_ms)
                    w.raw(op.encode(ws.tiles[start]))
        return w.getvalue()

    def decode_batch(self, data: bytes) -> BatchState:
        r = Reader(data)
        version = r.byte()
        if version != TILES_FORMAT:
            raise EncodingError(
                f"batch value format {version} is not {TILES_FORMAT}; written by another tessera"
            )
        boundary = r.svarint()
        validity = r.uvarint()
        windows: list[list[WindowState]] = []
        for ai, agg in enumerate(self.gb.aggregations):
            op = self.ops[ai]
            per_agg = []
            for _ in agg.windows:
                body = op.decode(r.raw())
                tiles = {}
                for _ in range(r.uvarint()):
                    start = boundary + r.svarint()
                    tiles[start] = op.decode(r.raw())
                per_agg.append(WindowState(body, tiles))
            windows.append(per_agg)
        r.done()
        return BatchState(boundary, validity, windows)


def _split_container(blob: bytes) -> list[bytes]:
    """The payloads of an IR container (``features.encoding.encode_irs``) without decoding them."""
    r = Reader(blob)
    version = r.byte()
    if version != FORMAT_VERSION:
        raise EncodingError(
            f"IR container format {version} is not {FORMAT_VERSION}; written by another tessera"
        )
    payloads = [r.raw() for _ in range(r.uvarint())]
    r.done()
    return payloads


@dataclass
class WindowState:
    """Batch state of one (aggregation, window): the body IR and the edge tiles by start (hop-sized)."""

    body: Any
    tiles: dict[int, Any] = field(default_factory=dict)
    _starts: list[int] | None = field(default=None, repr=False, compare=False)

    def tiles_within(self, lo: int, hi: int, hop_ms: int) -> list[Any]:
        """The IRs of the edge tiles that lie inside ``[lo, hi)`` (found by bisection, not a scan)."""
        if self._starts is None or len(self._starts) != len(self.tiles):
            self._starts = sorted(self.tiles)
        starts = self._starts
        i = bisect.bisect_left(starts, lo)
        j = bisect.bisect_right(starts, hi - hop_ms)
        return [self.tiles[s] for s in starts[i:j]]


@dataclass
class BatchState:
    """Everything one entity needs from the batch upload made at ``boundary_ms``, for queries in
    ``[boundary, boundary + validity)``."""

    boundary_ms: int
    validity_ms: int
    windows: list[list[WindowState]]  # [aggregation][window]


def batch_layout(w: WindowPlan, boundary_ms: int, validity_ms: int) -> tuple[int, int, int, int]:
    """For a window and an upload at ``B``: ``(edge_lo, body_lo, body_hi, edge_hi)``.

    For every query time ``t`` in ``[B, B + V]`` the window's batch part ``[start(t), min(end(t), B))`` contains
    the body ``[body_lo, body_hi)`` and lies inside ``[edge_lo, edge_hi)``; the rest is whole hop tiles.
    """
    b, v = boundary_ms, validity_ms
    s_min, e_min = window_interval(b, w.length_ms, w.hop_ms, w.offset_ms)
    s_max, e_max = window_interval(b + v, w.length_ms, w.hop_ms, w.offset_ms)
    if w.offset_ms == 0:
        e_min = e_max = b
    body_lo = min(s_max, b)
    body_hi = min(e_min, b)
    edge_hi = min(e_max, b)
    if body_lo >= body_hi:  # short window: no part is inside it all period long, all edge tiles
        body_lo = body_hi = edge_hi
    return s_min, body_lo, body_hi, edge_hi


def batch_state(
    codec: StateCodec, rows: Iterable[Mapping[str, Any]], boundary_ms: int, validity_ms: int
) -> BatchState:
    """The batch state of one entity from its projected rows (any order) with event time before ``B``.

    Rows at or after the boundary are ignored (the stream owns them).
    """
    gb = codec.gb
    layouts = [[batch_layout(w, boundary_ms, validity_ms) for w in agg.windows] for agg in gb.aggregations]
    states = [[WindowState(op.init()) for _ in agg.windows] for agg, op in zip(gb.aggregations, codec.ops)]
    time_col, tie_col = codec.time_col, codec.tie_col
    for row in rows:
        ts = row[time_col]
        if ts >= boundary_ms:
            continue
        tie = int(row.get(tie_col) or 0) if tie_col else 0
        for ai, (column, bucket, op) in enumerate(codec._aggs):
            value = row.get(column)
            if value is None:
                continue
            b = row.get(bucket) if bucket else None
            if bucket and b is None:
                continue
            for wi, (edge_lo, body_lo, body_hi, edge_hi) in enumerate(layouts[ai]):
                ws = states[ai][wi]
                if body_lo <= ts < body_hi:
                    ws.body = _update(op, ws.body, b, bucket, value, ts, tie)
                elif edge_lo <= ts < edge_hi:
                    start = align(ts, gb.aggregations[ai].windows[wi].hop_ms)
                    cur = ws.tiles.get(start)
                    ws.tiles[start] = _update(
                        op, op.init() if cur is None else cur, b, bucket, value, ts, tie
                    )
    return BatchState(boundary_ms, validity_ms, states)


def _update(op: AggOp, ir: Any, b: Any, bucket: str | None, value: Any, ts: int, tie: int) -> Any:
    if bucket:
        return op.update_bucket(ir, b, value, ts, tie)  # type: ignore[attr-defined]
    return op.update(ir, value, ts, tie)


Run = tuple[int, int, int]
"""Consecutive tiles of one size in a cover: ``(size, first start, last start)``."""


@functools.lru_cache(maxsize=4096)
def _runs_memo(lo: int, hi: int, sizes: tuple[int, ...]) -> tuple[Run, ...]:
    runs: list[Run] = []
    for size, start in cover(lo, hi, sizes) if lo < hi else ():
        if runs and runs[-1][0] == size and runs[-1][2] + size == start:
            runs[-1] = (size, runs[-1][1], start)
        else:
            runs.append((size, start, start))
    return tuple(runs)


def cover_runs(lo: int, hi: int, sizes: tuple[int, ...]) -> tuple[Run, ...]:
    """:func:`features.windows.cover` of ``[lo, hi)`` as runs of same-size tiles, memoized in a form that
    survives a moving ``hi``.

    The greedy walk passes through ``P = align(hi, s)`` for every size ``s`` with ``P >= lo`` (a tile never
    straddles ``P``: it would end past ``P`` at a multiple of ``s`` no later than ``hi``), and its pieces before
    ``P`` are ``cover(lo, P)``. So with ``s`` the largest such size, the cover is the memoized ``cover(lo, P)``
    (which changes once per ``s``) followed by, per smaller size, one run of tiles of that size from
    ``align(hi, bigger)`` to ``align(hi, smaller)``: a query time that moves every second recomputes no walk.
    """
    if lo >= hi:
        return ()
    i = len(sizes) - 1
    while i > 0 and hi - hi % sizes[i] < lo:
        i -= 1
    p = hi - hi % sizes[i]
    out = _runs_memo(lo, p, sizes)
    if p == hi:
        return out
    tail: list[Run] = []
    for size in sizes[i - 1 :: -1] if i > 0 else ():
        q = hi - hi % size
        if q > p:
            tail.append((size, p, q - size))
        p = q
    return out + tuple(tail)


def _cover(lo: int, hi: int, sizes: tuple[int, ...]) -> tuple[TileKey, ...]:
    """The pieces of :func:`cover_runs`, one by one."""
    return tuple(
        (size, x) for size, first, last in cover_runs(lo, hi, sizes) for x in range(first, last + 1, size)
    )


def _window_key(w: WindowPlan) -> tuple[int | None, int, int]:
    return (w.length_ms, w.hop_ms, w.offset_ms)


def window_pieces(
    gb: GroupByPlan, t_ms: int, boundary_ms: int
) -> dict[tuple[int | None, int, int], list[TileKey]]:
    """Per distinct window of the GroupBy (length, hop, offset): the stream tiles covering its part at or after
    the boundary, ``[max(start, B), end)``; the last may be the smallest tile straddling ``t``."""
    assert gb.stream is not None
    sizes = gb.stream.tile_sizes_ms
    smallest = sizes[0]
    floor = align(t_ms - gb.stream.horizon_ms, DAY_MS)
    out: dict[tuple[int | None, int, int], list[TileKey]] = {}
    for agg in gb.aggregations:
        for w in agg.windows:
            wk = _window_key(w)
            if wk in out:
                continue
            start, end = window_interval(t_ms, w.length_ms, w.hop_ms, w.offset_ms)
            # The stream keeps tiles for its horizon only: never cover further back (a query far past a stale
            # batch boundary would otherwise ask for billions of day tiles). Within the batch's validity this
            # floor is before the boundary, so it changes nothing.
            lo = max(start, boundary_ms, floor)
            if lo >= end:
                out[wk] = []
                continue
            hi = align(end, smallest)
            tiles = list(_cover(lo, hi, sizes))
            if hi < end:  # the head: the smallest tile holding t, exact when it holds nothing at or after t
                tiles.append((smallest, hi))
            out[wk] = tiles
    return out


def stream_reads(
    gb: GroupByPlan, t_ms: int, boundary_ms: int
) -> tuple[set[TileKey], dict[tuple[int, int], list[TileKey]]]:
    """Which stream tiles a fetch at ``t`` reads: the stored period values to get, and per (aggregation,
    window) the tiles to merge. The last tile may straddle ``t`` (see :func:`features.merge.merge_features`)."""
    assert gb.stream is not None
    period_of = {lv.size_ms: lv.period_ms for lv in gb.stream.levels}
    by_window = window_pieces(gb, t_ms, boundary_ms)
    values = {(size, align(start, period_of[size])) for tiles in by_window.values() for size, start in tiles}
    pieces = {
        (ai, wi): by_window[_window_key(w)]
        for ai, agg in enumerate(gb.aggregations)
        for wi, w in enumerate(agg.windows)
    }
    return values, pieces


def tiles_from_rows(
    codec: StateCodec, rows: Iterable[Mapping[str, Any]], from_ms: int = LIFETIME_START_MS
) -> dict[TileKey, Tile]:
    """Every stream tile (all levels) of one entity's projected rows with event time at or after ``from_ms``;
    what the stream job's keyed state holds, built directly (tests, replays)."""
    tiles: dict[TileKey, Tile] = {}
    for row in rows:
        ts = row[codec.time_col]
        if ts < from_ms:
            continue
        for size in codec.sizes:
            key = (size, align(ts, size))
            tile = tiles.get(key)
            if tile is None:
                tile = tiles[key] = Tile(codec.init(), ts)
            codec.update(tile.irs, row)
            tile.max_ts = max(tile.max_ts, ts)
    return tiles
