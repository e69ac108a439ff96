"""The fetcher against real stores: 3 memcached nodes (stream tiles) + the embedded LMDB bulk store (batch state).

Batch versions and stream period values are written for seeded payments with the shared layout
(``serving.loader``); every fetch of the fraud_v1 Join must equal ``features.reference.join_features`` (every part
feature and every derivation) at the request's time. Failures degrade, never raise.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from features.compile import compile_repo
from features.plan import Plan
from features.reference import GroupByIndex, join_features
from features.synthetic import generate
from features.tiles import StateCodec
from features.windows import DAY_MS, align
from kvstore.embedded import EmbeddedBulkStore
from kvstore.memcached import MemcachedStore
from kvstore.services import Service, start_memcached_cluster
from serving.fetcher import Fetcher
from serving.loader import project, write_batch, write_stream

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@pytest.fixture(scope="module")
def plan() -> Plan:
    return compile_repo(ROOT / "features" / "fraud")


@pytest.fixture(scope="module")
def world(plan: Plan) -> dict[str, Any]:
    ds = generate(seed=5, days=3, events_per_day=800)
    boundary = align(ds.start_ms, DAY_MS) + 2 * DAY_MS
    join = plan.join("fraud_v1")
    raw = {"payments": ds.payments.to_pylist(), "labels": ds.labels.to_pylist()}
    by_key = {}
    indexes = {}
    for part in join.parts:
        gb = plan.group_by(part.group_by)
        by_key[gb.name] = project(gb, raw[gb.source.table])
        indexes[gb.name] = GroupByIndex(gb, raw[gb.source.table])
    return {"ds": ds, "boundary": boundary, "join": join, "by_key": by_key, "indexes": indexes, "raw": raw}


@pytest.fixture
def memcached() -> Iterator[list[Service]]:
    nodes = start_memcached_cluster(3)
    yield nodes
    for n in nodes:
        n.stop()


def _stores(tmp_path: Path, nodes: list[Service]) -> tuple[EmbeddedBulkStore, MemcachedStore]:
    return EmbeddedBulkStore(tmp_path / "bulk"), MemcachedStore([n.address for n in nodes])


def _load_batch(plan: Plan, world: dict[str, Any], bulk: EmbeddedBulkStore) -> None:
    for part in world["join"].parts:
        gb = plan.group_by(part.group_by)
        write_batch(bulk, gb, world["by_key"][gb.name], world["boundary"], "2026-01-01")


def _load_stream(
    plan: Plan, world: dict[str, Any], stream: MemcachedStore, requests: list[dict[str, Any]], until: int
) -> None:
    """The stream's state of the requests' entities: every event in [boundary, until)."""
    for part in world["join"].parts:
        gb = plan.group_by(part.group_by)
        wanted = {tuple(r[part.key_map[k]] for k in gb.keys) for r in requests}
        by_key = {k: v for k, v in world["by_key"][gb.name].items() if k in wanted}
        write_stream(stream, gb, by_key, world["boundary"], until)


def _assert_equal(
    plan: Plan,
    world: dict[str, Any],
    got: dict[str, Any],
    want: dict[str, Any],
    failed: set[str] | None = None,
) -> int:
    """Every column equal; with ``failed`` parts, only the request columns and the features of the other parts."""
    join = world["join"]
    ops = {}
    for part in join.parts:
        gb = plan.group_by(part.group_by)
        codec = StateCodec(gb)
        for out, feat in part.features.items():
            ops[out] = (part.group_by, codec.ops[gb.feature(feat).agg_index])
    assert list(got) == list(want) == list(join.output_schema)
    n = 0
    for col, w in want.items():
        g = got[col]
        if col in ops:
            if failed and ops[col][0] in failed:
                continue
            assert ops[col][1].agrees(g, w), (col, g, w)
        elif failed and col not in join.left.schema:
            continue  # a derivation may read a failed part
        elif isinstance(w, float) and isinstance(g, float):
            assert math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(g) and math.isnan(w)), (
                col,
                g,
                w,
            )
        else:
            assert g == w, (col, g, w)
        n += 1
    return n


def _requests(world: dict[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    b = world["boundary"]
    cols = list(world["join"].left.schema)
    rows = [r for r in world["raw"]["payments"] if b <= r["ts"] < b + DAY_MS]
    rng = random.Random(seed)
    picked = [{c: r[c] for c in cols} for r in rng.sample(rows, n)]
    return sorted(picked, key=lambda r: r["ts"])


def test_fetch_equals_the_reference_join(
    plan: Plan, world: dict[str, Any], memcached: list[Service], tmp_path: Path
) -> None:
    bulk, stream = _stores(tmp_path, memcached)
    _load_batch(plan, world, bulk)
    clock = Clock(world["boundary"])
    fetcher = Fetcher(plan, (bulk, stream), now_ms=clock)
    requests = _requests(world, 12, seed=1)
    extra = dict(requests[0], ts=world["boundary"])  # exactly at the boundary: no stream tile yet
    compared = 0
    for req in [extra, *requests]:
        clock.ms = req["ts"]
        _load_stream(plan, world, stream, requests, req["ts"])  # the stream has every event before now
        vec = fetcher.fetch("fraud_v1", req)
        want = join_features(world["join"], world["indexes"], [req])[0]
        assert not vec.errors and not vec.degraded and not vec.stale, vec.errors
        compared += _assert_equal(plan, world, vec.values, want)
        again = fetcher.fetch("fraud_v1", req)  # from the caches this time
        assert again.values == vec.values or _assert_equal(plan, world, again.values, want)
    assert compared > 1_500
    stats = fetcher.cache_stats()
    assert stats["batch_hits"] > 0 and stats["tile_hits"] > 0
    bulk.close()
    stream.close()


def test_missing_entities_give_empty_windows(
    plan: Plan, world: dict[str, Any], memcached: list[Service], tmp_path: Path
) -> None:
    bulk, stream = _stores(tmp_path, memcached)
    _load_batch(plan, world, bulk)
    req = dict(_requests(world, 1, seed=2)[0])
    for col in ("card_id", "customer_id", "merchant_id", "device_id", "ip"):
        req[col] = f"nobody-{col}"
    fetcher = Fetcher(plan, (bulk, stream), now_ms=Clock(req["ts"]))
    vec = fetcher.fetch("fraud_v1", req)
    assert not vec.degraded and not vec.errors
    want = join_features(world["join"], world["indexes"], [req])[0]
    _assert_equal(plan, world, vec.values, want)
    assert vec.values["card_amount_usd_count_1d"] == 0
    null_key = dict(req, device_id=None)
    vec = fetcher.fetch("fraud_v1", null_key)
    assert not vec.degraded
    _assert_equal(plan, world, vec.values, join_features(world["join"], world["indexes"], [null_key])[0])
    bulk.close()
    stream.close()


def test_a_dead_memcached_node_degrades_within_budget(
    plan: Plan, world: dict[str, Any], memcached: list[Service], tmp_path: Path
) -> None:
    bulk, stream = _stores(tmp_path, memcached)
    _load_batch(plan, world, bulk)
    requests = _requests(world, 8, seed=3)
    until = requests[-1]["ts"]
    _load_stream(plan, world, stream, requests, until + 1)
    memcached[0].kill()
    fetcher = Fetcher(plan, (bulk, stream), now_ms=Clock(until + 1), budget_s=0.5)
    degraded = 0
    for req in requests:
        req = dict(req, ts=until + 1)
        started = time.perf_counter()
        vec = fetcher.fetch("fraud_v1", req)
        elapsed = time.perf_counter() - started
        assert elapsed < 1.0, elapsed  # memcached budget (0.2 s) + the fetch's own
        want = join_features(world["join"], world["indexes"], [req])[0]
        failed = {name for name in vec.errors if not name.startswith("derivation:")}
        if failed:
            degraded += 1
            assert vec.degraded
            for part in world["join"].parts:
                if part.group_by in failed:
                    assert all(vec.values[c] is None for c in part.features)
        _assert_equal(plan, world, vec.values, want, failed)
    assert degraded > 0
    bulk.close()
    stream.close()


def _same_values(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert list(a) == list(b)
    for col in a:
        x, y = a[col], b[col]
        assert x == y or (
            isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
        ), (
            col,
            x,
            y,
        )


def test_caches_give_exactly_the_uncached_values(
    plan: Plan, world: dict[str, Any], memcached: list[Service], tmp_path: Path
) -> None:
    """A clock moving by seconds and minutes: the caching fetcher equals one with every cache off, bit for bit."""
    bulk, stream = _stores(tmp_path, memcached)
    _load_batch(plan, world, bulk)
    requests = _requests(world, 6, seed=7)
    clock = Clock(world["boundary"])
    cached = Fetcher(plan, (bulk, stream), now_ms=clock, budget_s=10.0)  # a busy machine must not degrade it
    plain = Fetcher(
        plan, (bulk, stream), now_ms=clock, cache_size=0, tile_cache_size=0, merge_cache_size=0, budget_s=10.0
    )
    for req in requests:
        for step in (0, 1_000, 2_000, 61_000, 7 * 60_000):
            clock.ms = req["ts"] + step
            _load_stream(plan, world, stream, requests, clock.ms)
            r = dict(req, ts=clock.ms)
            got, want = cached.fetch("fraud_v1", r), plain.fetch("fraud_v1", r)
            assert not got.degraded and not want.degraded
            _same_values(got.values, want.values)
    stats = cached.cache_stats()
    assert stats["merge_hits"] > 0 and stats["tile_hits"] > 0
    bulk.close()
    stream.close()


def test_a_new_batch_version_is_served_at_once(
    plan: Plan, world: dict[str, Any], memcached: list[Service], tmp_path: Path
) -> None:
    bulk, stream = _stores(tmp_path, memcached)
    _load_batch(plan, world, bulk)
    req = _requests(world, 1, seed=8)[0]
    _load_stream(plan, world, stream, [req], req["ts"])
    fetcher = Fetcher(plan, (bulk, stream), now_ms=Clock(req["ts"]), version_check_s=0.0)
    before = fetcher.fetch("fraud_v1", req)
    assert fetcher.fetch("fraud_v1", req).values == before.values
    # A re-upload of the same day without this card (e.g. its events were deleted upstream).
    card = plan.group_by("card")
    by_key = {k: v for k, v in world["by_key"]["card"].items() if k != (req["card_id"],)}
    write_batch(bulk, card, by_key, world["boundary"], "2026-01-01.r2")
    after = fetcher.fetch("fraud_v1", req)
    fresh = Fetcher(plan, (bulk, stream), now_ms=Clock(req["ts"])).fetch("fraud_v1", req)
    _same_values(after.values, fresh.values)
    assert after.values["card_amount_usd_count_30d"] < before.values["card_amount_usd_count_30d"]
    bulk.close()
    stream.close()


def test_a_fresh_tile_that_changes_is_read_again(
    plan: Plan, world: dict[str, Any], memcached: list[Service], tmp_path: Path
) -> None:
    """An event reaching the stream late (within the allowed lateness) changes the next fetch at the same time."""
    bulk, stream = _stores(tmp_path, memcached)
    _load_batch(plan, world, bulk)
    b = world["boundary"]
    card_rows = world["by_key"]["card"]
    late = next(
        r
        for rows in card_rows.values()
        for r in sorted(rows, key=lambda r: r["ts"])
        if b + 6 * 3_600_000 <= r["ts"] < b + DAY_MS - 3_600_000
    )
    payment = next(
        p for p in world["raw"]["payments"] if p["card_id"] == late["card_id"] and p["ts"] == late["ts"]
    )
    req = {c: payment[c] for c in world["join"].left.schema}
    t = late["ts"] + 90_000  # the event's tile is still fresh: 90 s < allowed lateness
    req["ts"] = t
    clock = Clock(t)
    fetcher = Fetcher(plan, (bulk, stream), now_ms=clock)
    card = plan.group_by("card")
    key = (late["card_id"],)
    without = [r for r in card_rows[key] if r is not late]
    write_stream(stream, card, {key: without}, b, t)
    first = fetcher.fetch("fraud_v1", req)
    assert fetcher.fetch("fraud_v1", req).values == first.values
    write_stream(stream, card, {key: card_rows[key]}, b, t)  # the late event arrives
    second = fetcher.fetch("fraud_v1", req)
    assert second.values["card_amount_usd_count_10m"] == first.values["card_amount_usd_count_10m"] + 1
    fresh = Fetcher(plan, (bulk, stream), now_ms=clock).fetch("fraud_v1", req)
    _same_values(second.values, fresh.values)
    bulk.close()
    stream.close()


def test_a_fetch_of_final_tiles_only_does_not_read_the_stream(
    plan: Plan, world: dict[str, Any], memcached: list[Service], tmp_path: Path
) -> None:
    """ "As of" a time well before the clock every tile is final: the second fetch needs no stream node at all."""
    bulk, stream = _stores(tmp_path, memcached)
    _load_batch(plan, world, bulk)
    req = _requests(world, 1, seed=9)[0]
    req["ts"] -= req["ts"] % 3_600_000  # a whole hour: no head tile holds events at or after it
    now = req["ts"] + 3 * 3_600_000  # past every GroupBy's allowed lateness (1 h at most)
    _load_stream(plan, world, stream, [req], now)
    fetcher = Fetcher(plan, (bulk, stream), now_ms=Clock(now), budget_s=0.5)
    first = fetcher.fetch("fraud_v1", req, at_ms=req["ts"])
    assert not first.degraded
    want = join_features(world["join"], world["indexes"], [req])[0]
    _assert_equal(plan, world, first.values, want)
    for node in memcached:
        node.kill()
    again = fetcher.fetch("fraud_v1", req, at_ms=req["ts"])
    assert not again.degraded and not again.errors, again.errors
    _same_values(again.values, first.values)
    # A time whose head tile is fresh has to read the stream, which is down now.
    assert fetcher.fetch("fraud_v1", dict(req, ts=now), at_ms=now).degraded
    bulk.close()
    stream.close()


def test_final_tiles_are_read_again_after_recheck_s(
    plan: Plan, world: dict[str, Any], memcached: list[Service], tmp_path: Path
) -> None:
    """A tile already final that the stream rewrites (a job that fell behind its allowed lateness and caught up)
    is served once ``recheck_s`` has passed."""
    bulk, stream = _stores(tmp_path, memcached)
    _load_batch(plan, world, bulk)
    b = world["boundary"]
    card = plan.group_by("card")
    key, rows = max(
        world["by_key"]["card"].items(), key=lambda kv: sum(b <= r["ts"] < b + DAY_MS for r in kv[1])
    )
    day = sorted((r for r in rows if b <= r["ts"] < b + DAY_MS), key=lambda r: r["ts"])
    t = day[-1]["ts"] + 3 * 3_600_000
    payment = next(p for p in world["raw"]["payments"] if p["card_id"] == key[0])
    req = dict({c: payment[c] for c in world["join"].left.schema}, ts=t)
    missed = day[0]
    write_stream(stream, card, {key: [r for r in rows if r is not missed]}, b, t)
    fetcher = Fetcher(plan, (bulk, stream), now_ms=Clock(t), recheck_s=0.0)
    first = fetcher.fetch("fraud_v1", req)
    write_stream(stream, card, {key: rows}, b, t)  # the missed event, hours late
    second = fetcher.fetch("fraud_v1", req)
    assert second.values["card_amount_usd_count_30d"] == first.values["card_amount_usd_count_30d"] + 1
    _same_values(second.values, Fetcher(plan, (bulk, stream), now_ms=Clock(t)).fetch("fraud_v1", req).values)
    bulk.close()
    stream.close()
