"""The batch upload: what it writes, merged with the stream's tiles, equals the direct fold at every query time.

Seeded payments go through ``run_upload`` (Spark SQL row logic, hash buckets, shared StateCodec) into the
embedded LMDB bulk store; the test reads the values back, decodes them, merges them with the tiles of the events
at or after the boundary (``tiles_from_rows``, what the stream job holds) and compares every feature with
``features.reference.GroupByIndex.features_at``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from features.compile import compile_repo
from features.merge import merge_features
from features.plan import GroupByPlan, Plan
from features.reference import GroupByIndex, row_function
from features.synthetic import generate
from features.tiles import StateCodec, tiles_from_rows
from features.windows import DAY_MS, align
from kvstore.codec import KeyLayout, encode_entity
from kvstore.embedded import EmbeddedBulkStore
from kvstore.meta import decode_meta
from spark_jobs.upload import batch_meta_key, boundary_of, run_upload

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plan() -> Plan:
    return compile_repo(ROOT / "features" / "fraud")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, str], str]:
    ds = generate(seed=11, days=3, events_per_day=1_200)
    directory = tmp_path_factory.mktemp("offline")
    payments, labels = ds.write(directory)
    date = _iso(align(ds.start_ms, DAY_MS) + DAY_MS)  # boundary: the start of the third day
    return ds, {"payments": str(payments), "labels": str(labels)}, date


def _iso(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).date().isoformat()


def _batch_value(store: EmbeddedBulkStore, gb: GroupByPlan, key: str) -> bytes | None:
    assert gb.batch is not None
    k = KeyLayout(gb.batch.dataset, gb.semantic_hash).key(encode_entity([key]))
    return store.multi_get(gb.batch.dataset, [k]).get(k)


def _compare(gb: GroupByPlan, raw: list[dict[str, Any]], store: EmbeddedBulkStore, boundary: int) -> int:
    codec = StateCodec(gb)
    fn = row_function(gb)
    projected = [r for r in (fn(x) for x in raw) if r is not None]
    reference = GroupByIndex(gb, raw)
    key_col, time_col = gb.keys[0], gb.source.time_column
    before = sorted({r[key_col] for r in projected if r[key_col] is not None and r[time_col] < boundary})
    after = sorted({r[key_col] for r in projected if r[key_col] is not None and r[time_col] >= boundary})
    rng = random.Random(3)
    keys = rng.sample(before, min(5, len(before))) + rng.sample(after, min(3, len(after))) + ["nobody"]
    event_times = [r[time_col] for r in projected if boundary <= r[time_col] < boundary + DAY_MS]
    times = [boundary, boundary + 1, boundary + DAY_MS - 1] + [
        rng.randrange(boundary, boundary + DAY_MS) for _ in range(4)
    ]
    times += rng.sample(event_times, min(4, len(event_times)))
    compared = 0
    for key in keys:
        value = _batch_value(store, gb, key)
        assert (value is not None) == (key in before), (gb.name, key)
        state = codec.decode_batch(value) if value is not None else None
        rows = [r for r in projected if r[key_col] == key]
        for t in times:
            arrived = [r for r in rows if boundary <= r[time_col] < t]
            tiles = tiles_from_rows(codec, arrived)
            got = merge_features(codec, t, state, tiles, boundary_ms=boundary)
            assert not got.stale_batch and not got.inexact_head
            want = reference.features_at([key], t)
            for f in gb.features:
                op = codec.ops[f.agg_index]
                assert op.agrees(got.values[f.name], want[f.name]), (
                    gb.name,
                    f.name,
                    key,
                    t,
                    got.values[f.name],
                    want[f.name],
                )
                compared += 1
    return compared


def test_upload_merged_with_stream_tiles_equals_the_direct_fold(
    spark: Any, plan: Plan, data: tuple[Any, dict[str, str], str], tmp_path: Path
) -> None:
    ds, sources, date = data
    boundary = boundary_of(date)
    with EmbeddedBulkStore(tmp_path / "bulk") as store:
        result = run_upload(plan, date, sources, store, spark=spark)
        assert {u.group_by for u in result.uploads} == {gb.name for gb in plan.group_bys if gb.online}
        compared = 0
        for gb in plan.group_bys:
            assert gb.batch is not None
            assert store.current_version(gb.batch.dataset) == date
            meta = decode_meta(store.multi_get(gb.batch.dataset, [batch_meta_key(gb)])[batch_meta_key(gb)])
            assert meta["boundary_ms"] == boundary and meta["validity_ms"] == gb.batch.validity_ms
            raw = (ds.payments if gb.source.table == "payments" else ds.labels).to_pylist()
            fn = row_function(gb)
            n_keys = len(
                {
                    tuple(p[k] for k in gb.keys)
                    for p in (fn(r) for r in raw)
                    if p is not None
                    and p[gb.source.time_column] < boundary
                    and all(p[k] is not None for k in gb.keys)
                }
            )
            upload = next(u for u in result.uploads if u.group_by == gb.name)
            assert upload.keys == n_keys, gb.name
            if gb.name != "merchant_fraud":  # labels arrive weeks later: none before this boundary
                compared += _compare(gb, raw, store, boundary)
        assert compared > 5_000


def test_rerun_is_idempotent_and_readers_see_the_old_version_until_publish(
    spark: Any, plan: Plan, data: tuple[Any, dict[str, str], str], tmp_path: Path
) -> None:
    ds, sources, date = data
    gb = plan.group_by("card")
    assert gb.batch is not None
    dataset = gb.batch.dataset
    keys = sorted({r["card_id"] for r in ds.payments.to_pylist()})[:50]
    with EmbeddedBulkStore(tmp_path / "bulk") as store:
        run_upload(plan, date, sources, store, spark=spark, group_bys=["card"])
        first = {k: _batch_value(store, gb, k) for k in keys}
        again = run_upload(plan, date, sources, store, spark=spark, group_bys=["card"])
        assert again.uploads[0].version == f"{date}.r2"
        assert store.current_version(dataset) == f"{date}.r2"
        assert {k: _batch_value(store, gb, k) for k in keys} == first

        next_day = _iso(boundary_of(date))
        staged = run_upload(plan, next_day, sources, store, spark=spark, group_bys=["card"], publish=False)
        assert store.current_version(dataset) == f"{date}.r2"  # uploaded, not yet visible
        codec = StateCodec(gb)
        some = next(v for v in first.values() if v is not None)
        k0 = next(k for k, v in first.items() if v == some)
        assert _batch_value(store, gb, k0) == some
        store.publish(dataset, staged.uploads[0].version)
        new = _batch_value(store, gb, k0)
        assert new is not None
        assert codec.decode_batch(new).boundary_ms == boundary_of(next_day)
