"""Stream tiles + batch state merged at fetch time equal a direct fold of the window's events.

This is the contract between the stream job (writes tiles), the batch upload (writes batch state) and the
fetcher (merges them): for every query time in the batch state's validity period, every feature equals
``features.reference`` (itself checked against the DuckDB oracle), and every read is bounded.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from features.compile import compile_repo
from features.merge import merge_features
from features.plan import GroupByPlan
from features.reference import GroupByIndex, row_function
from features.synthetic import generate
from features.tiles import StateCodec, batch_state, stream_reads, tiles_from_rows
from features.windows import DAY_MS, HOUR_MS, MINUTE_MS, align

ROOT = Path(__file__).resolve().parents[2]
GOOD = ROOT / "tests" / "fixtures" / "repos" / "good_small"


def _events(seed: int, start_ms: int, n: int, keys: list[str]) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ts = start_ms + rng.randrange(0, 10 * DAY_MS)
        if i % 7 == 0:  # exact boundaries and ties on purpose
            ts = align(ts, rng.choice([MINUTE_MS, HOUR_MS, DAY_MS]))
        rows.append(
            {
                "event_id": i,
                "ts": ts,
                "card_id": rng.choice(keys),
                "merchant_id": f"m{rng.randrange(6)}",
                "mcc": rng.choice(["a", "b", None]),
                "amount": round(rng.uniform(-5, 500), 2) if i % 11 else None,
                "fx_rate": rng.choice([1.0, 1.1, 0.9]),
                "status": "authorized" if i % 13 else "declined",
            }
        )
    return rows


def _check(gb: GroupByPlan, raw: list[dict[str, Any]], queries: list[tuple[Any, int]], boundary: int) -> int:
    codec = StateCodec(gb)
    fn = row_function(gb)
    projected = [r for r in (fn(x) for x in raw) if r is not None]
    reference = GroupByIndex(gb, raw)
    assert gb.batch is not None
    compared = 0
    for key, t in queries:
        rows = [r for r in projected if r[gb.keys[0]] == key]
        state = batch_state(codec, rows, boundary, gb.batch.validity_ms)
        state = codec.decode_batch(codec.encode_batch(state))  # what the store gives back
        arrived = [
            r for r in rows if boundary <= r[gb.source.time_column] < t
        ]  # real time: nothing at/after t
        tiles = tiles_from_rows(codec, arrived)
        values, _ = stream_reads(gb, t, boundary)
        stored = {}
        for size, period_start in values:  # round-trip the period values the fetch would read
            in_period = {
                s: tl
                for (sz, s), tl in tiles.items()
                if sz == size and codec.period_key(sz, s) == (size, period_start)
            }
            if in_period:
                _, _, decoded = codec.decode_period(codec.encode_period(size, period_start, in_period))
                stored.update({(size, s): tl for s, tl in decoded.items()})
        got = merge_features(codec, t, state, stored)
        assert not got.stale_batch and not got.inexact_head
        want = reference.features_at([key], t)
        for f in gb.features:
            op = codec.ops[f.agg_index]
            assert op.agrees(got.values[f.name], want[f.name]), (
                f.name,
                key,
                t,
                got.values[f.name],
                want[f.name],
            )
            compared += 1
    return compared


def test_tiles_plus_batch_equal_the_direct_fold() -> None:
    plan = compile_repo(GOOD)
    gb = plan.group_by("card")
    start = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS
    raw = _events(3, start, 3_000, ["c1", "c2", "c3"])
    boundary = start + 8 * DAY_MS
    rng = random.Random(5)
    event_times = sorted({r["ts"] for r in raw if boundary <= r["ts"] < boundary + 2 * DAY_MS})
    times = [boundary, boundary + 2 * DAY_MS, boundary + 1, boundary + HOUR_MS]
    times += rng.sample(event_times, 15) + [rng.randrange(boundary, boundary + 2 * DAY_MS) for _ in range(15)]
    queries = [(k, t) for t in times for k in ("c1", "c2", "c3", "nobody")]
    assert _check(gb, raw, queries, boundary) > 1000


@pytest.mark.parametrize("name", ["card", "merchant", "merchant_fraud"])
def test_fraud_group_bys_on_synthetic_payments(name: str) -> None:
    plan = compile_repo(ROOT / "features" / "fraud")
    gb = plan.group_by(name)
    ds = generate(seed=2, days=3, events_per_day=1_500)
    source = ds.payments if gb.source.table == "payments" else ds.labels
    raw = source.to_pylist()
    boundary = align(raw[0]["ts"], DAY_MS) + 2 * DAY_MS
    key_col = gb.keys[0]
    keys = sorted({r[key_col] for r in raw if r[key_col] is not None and r["ts"] >= boundary})[:4]
    rng = random.Random(1)
    times = [rng.randrange(boundary, boundary + DAY_MS) for _ in range(6)]
    times += [r["ts"] for r in raw if boundary <= r["ts"] < boundary + DAY_MS][:: max(1, len(raw) // 40)][:6]
    _check(gb, raw, [(k, t) for k in keys for t in times], boundary)


def test_reads_are_bounded_whatever_the_window() -> None:
    plan = compile_repo(ROOT / "features" / "fraud")
    for gb in plan.group_bys:
        boundary = 100 * DAY_MS
        for t in (boundary, boundary + 1, boundary + DAY_MS - 1, boundary + 2 * DAY_MS):
            values, pieces = stream_reads(gb, t, boundary)
            assert len(values) <= 40, (gb.name, len(values))
            assert all(len(p) <= 200 for p in pieces.values())


def test_stale_and_inexact_are_flagged() -> None:
    plan = compile_repo(GOOD)
    gb = plan.group_by("card")
    codec = StateCodec(gb)
    row = {
        "event_id": 1,
        "ts": 10 * DAY_MS + 5_800,
        "card_id": "c",
        "merchant_id": "m",
        "mcc": "a",
        "amount": 2.0,
        "fx_rate": 1.0,
        "status": "authorized",
    }
    projected = row_function(gb)(row)
    assert projected is not None
    state = batch_state(codec, [], 10 * DAY_MS, DAY_MS)
    tiles = tiles_from_rows(codec, [projected])
    # "As of" 1 s before an event already in the tile: flagged, since the tile cannot be split.
    got = merge_features(codec, 10 * DAY_MS + 5_500, state, tiles)
    assert got.inexact_head
    late = merge_features(codec, 12 * DAY_MS, state, tiles)
    assert late.stale_batch


def test_a_query_far_past_the_boundary_stays_bounded() -> None:
    """A query time far past a stale batch boundary (e.g. a bad `at_ms`) must not ask for unbounded tiles."""
    plan = compile_repo(ROOT / "features" / "fraud")
    for gb in plan.group_bys:
        values, pieces = stream_reads(gb, 2**62, 100 * DAY_MS)
        assert len(values) <= 40 and all(len(p) <= 200 for p in pieces.values())
