"""Write a GroupBy's state straight from events (no Spark, no Flink): batch versions and stream period values.

The same layout the batch upload and the stream job write (:mod:`features.tiles`, :mod:`kvstore.codec`), built in
process from projected rows. For the demo, tests and benchmarks of the fetcher; production state comes from
``spark_jobs.upload`` and the Flink job.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from features.plan import GroupByPlan
from features.reference import project_by_key
from features.tiles import StateCodec, Tile, batch_state, tile_suffix, tiles_from_rows
from kvstore.base import KVStore
from kvstore.codec import KeyLayout, encode_entity
from kvstore.meta import encode_meta, meta_key

Row = dict[str, Any]


def project(gb: GroupByPlan, raw: Iterable[Mapping[str, Any]]) -> dict[tuple[Any, ...], list[Row]]:
    """The GroupBy's row logic applied to ``raw`` events, grouped by entity key (rows with a null key or time
    dropped, as every engine drops them)."""
    return project_by_key(gb, raw)


def batch_items(
    gb: GroupByPlan, by_key: Mapping[tuple[Any, ...], list[Row]], boundary_ms: int, validity_ms: int
) -> Iterator[tuple[bytes, bytes]]:
    """The sorted ``(key, value)`` items of a batch version: the metadata record, then each entity's state."""
    assert gb.batch is not None
    codec = StateCodec(gb)
    layout = KeyLayout(gb.batch.dataset, gb.semantic_hash)
    time_col = gb.source.time_column
    items = []
    for key, rows in by_key.items():
        if any(r[time_col] < boundary_ms for r in rows):
            state = batch_state(codec, rows, boundary_ms, validity_ms)
            items.append((layout.key(encode_entity(list(key))), codec.encode_batch(state)))
    items.sort()
    meta = {"boundary_ms": boundary_ms, "validity_ms": validity_ms, "group_by": gb.name}
    yield meta_key(gb.batch.dataset, gb.semantic_hash), encode_meta(meta)
    yield from items


def write_batch(
    store: KVStore,
    gb: GroupByPlan,
    by_key: Mapping[tuple[Any, ...], list[Row]],
    boundary_ms: int,
    version: str,
    *,
    publish: bool = True,
) -> int:
    """Upload one batch version of ``gb`` (state as of ``boundary_ms``) and publish it; return the key count."""
    assert gb.batch is not None
    n = store.bulk_upload(
        gb.batch.dataset, version, batch_items(gb, by_key, boundary_ms, gb.batch.validity_ms)
    )
    if publish:
        store.publish(gb.batch.dataset, version)
    return n


def period_values(
    gb: GroupByPlan, by_key: Mapping[tuple[Any, ...], list[Row]], from_ms: int, until_ms: int
) -> dict[bytes, bytes]:
    """The stream's period values of the events in ``[from_ms, until_ms)``: key → encoded period value."""
    assert gb.stream is not None
    codec = StateCodec(gb)
    layout = KeyLayout(gb.stream.dataset, gb.semantic_hash)
    time_col = gb.source.time_column
    out: dict[bytes, bytes] = {}
    for key, rows in by_key.items():
        tiles = tiles_from_rows(codec, [r for r in rows if r[time_col] < until_ms], from_ms)
        periods: dict[tuple[int, int], dict[int, Tile]] = defaultdict(dict)
        for (size, start), tile in tiles.items():
            periods[codec.period_key(size, start)][start] = tile
        entity = encode_entity(list(key))
        for (size, pstart), in_period in periods.items():
            out[layout.key(entity, tile_suffix(size, pstart))] = codec.encode_period(size, pstart, in_period)
    return out


def write_stream(
    store: KVStore,
    gb: GroupByPlan,
    by_key: Mapping[tuple[Any, ...], list[Row]],
    from_ms: int,
    until_ms: int,
    chunk: int = 500,
) -> int:
    """Upsert the stream period values of the events in ``[from_ms, until_ms)``; return how many."""
    assert gb.stream is not None
    values = period_values(gb, by_key, from_ms, until_ms)
    items = list(values.items())
    for i in range(0, len(items), chunk):
        store.multi_put(gb.stream.dataset, dict(items[i : i + chunk]))
    return len(items)
