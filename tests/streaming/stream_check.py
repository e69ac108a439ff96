"""Shared checks of the streaming tests: read period values back, merge them the fetcher's way, compare with the
reference fold (``features.reference.GroupByIndex``, itself checked against the DuckDB oracle)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from features.merge import FetchResult, merge_features
from features.plan import GroupByPlan
from features.reference import GroupByIndex, row_function
from features.tiles import StateCodec, Tile, TileKey, stream_reads
from features.windows import DAY_MS, align, window_interval

#: Reads period values ``(size, period start) -> bytes`` of one entity (a dict, or memcached).
ReadValues = Callable[[tuple[Any, ...], set[TileKey]], Mapping[TileKey, bytes]]


def fetch(codec: StateCodec, read: ReadValues, key: tuple[Any, ...], t: int, boundary: int) -> FetchResult:
    """Every feature of ``key`` at ``t`` from stream tiles alone (the stream holds everything from ``boundary``)."""
    values, _ = stream_reads(codec.gb, t, boundary)
    tiles: dict[TileKey, Tile] = {}
    for (size, _), data in read(key, values).items():
        _, _, decoded = codec.decode_period(data)
        tiles.update({(size, s): tl for s, tl in decoded.items()})
    return merge_features(codec, t, None, tiles, boundary_ms=boundary)


def window_values(
    gb: GroupByPlan, rows: Sequence[Mapping[str, Any]], agg_index: int, window_index: int, t: int
) -> list[Any]:
    """The values (``(bucket, value)`` when bucketed) one feature folds at ``t`` (for sketch tolerances)."""
    agg = gb.aggregations[agg_index]
    w = agg.windows[window_index]
    start, end = window_interval(t, w.length_ms, w.hop_ms, w.offset_ms)
    out: list[Any] = []
    for r in rows:
        if start <= r[gb.source.time_column] < end and r.get(agg.column) is not None:
            if agg.bucket:
                if r.get(agg.bucket) is not None:
                    out.append((r[agg.bucket], r[agg.column]))
            else:
                out.append(r[agg.column])
    return out


def compare_at(
    gb: GroupByPlan,
    read: ReadValues,
    on_time_raw: Sequence[Mapping[str, Any]],
    keys: Sequence[tuple[Any, ...]],
    times: Sequence[int],
    boundary: int | None = None,
) -> tuple[int, list[tuple[Any, ...]]]:
    """(features compared, mismatches) of the stream's values against the reference over ``on_time_raw``."""
    codec = StateCodec(gb)
    time_col = gb.source.time_column
    if boundary is None:
        boundary = align(min(r[time_col] for r in on_time_raw), DAY_MS)
    reference = GroupByIndex(gb, on_time_raw)
    fn = row_function(gb)
    projected: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for raw in on_time_raw:
        row = fn(raw)
        if row is not None:
            projected.setdefault(tuple(row.get(k) for k in gb.keys), []).append(row)
    compared = 0
    bad: list[tuple[Any, ...]] = []
    for key in keys:
        for t in times:
            got = fetch(codec, read, key, t, boundary)
            want = reference.features_at(list(key), t)
            for f in gb.features:
                op = codec.ops[f.agg_index]
                a, b = got.values[f.name], want[f.name]
                compared += 1
                if op.agrees(a, b):
                    continue
                vals = window_values(gb, projected.get(key, []), f.agg_index, f.window_index, t)
                if not op.agrees(a, b, vals):
                    bad.append((f.name, key, t, a, b))
            if got.inexact_head:
                bad.append(("inexact_head", key, t, None, None))
    return compared, bad
