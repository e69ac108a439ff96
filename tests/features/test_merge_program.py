"""The compiled merge (``features.merge.MergeProgram``) with its per-entity memo gives exactly the values of the
plain merge (``merge_features``): same fold order, so equal bit for bit, whatever changed between two fetches —
the query time, fresh tiles, tiles that became final, a tile gone, a new batch version.

The stream is simulated as the fetcher sees it: every event reaches the stream within the allowed lateness, a
fetch at clock ``now`` sees the tiles of the events arrived by then, and a tile whose bytes did not change keeps
its object (as the fetcher reuses decoded tiles).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from features.compile import compile_repo
from features.merge import EntityMemo, MergeProgram, merge_features
from features.ops.base import results_close
from features.plan import GroupByPlan
from features.reference import row_function
from features.synthetic import generate
from features.tiles import StateCodec, Tile, TileKey, _cover, batch_state, stream_reads, tiles_from_rows
from features.windows import DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS, align, cover

ROOT = Path(__file__).resolve().parents[2]
GOOD = ROOT / "tests" / "fixtures" / "repos" / "good_small"


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert results_close(a[name], b[name], 0.0, 0.0), (name, a[name], b[name])


class Stream:
    """The tiles of one entity as a fetcher holds them: unchanged tiles keep their object."""

    def __init__(self, codec: StateCodec, rows: list[dict[str, Any]], boundary: int) -> None:
        self.codec = codec
        self.rows = rows
        self.boundary = boundary
        self.tiles: dict[TileKey, Tile] = {}
        self._bytes: dict[TileKey, tuple[int, bytes]] = {}

    def at(self, now: int) -> dict[TileKey, Tile]:
        arrived = [r for r in self.rows if r["_arrival"] <= now and r[self.codec.time_col] >= self.boundary]
        fresh = tiles_from_rows(self.codec, arrived, self.boundary)
        out: dict[TileKey, Tile] = {}
        for key, tile in fresh.items():
            image = (tile.max_ts, self.codec.encode(tile.irs))
            if self._bytes.get(key) == image:
                out[key] = self.tiles[key]
            else:
                out[key] = tile
                self._bytes[key] = image
        self.tiles = out
        return out


def _rows(
    gb: GroupByPlan, raw: list[dict[str, Any]], key: Any, lateness: int, seed: int
) -> list[dict[str, Any]]:
    fn = row_function(gb)
    rng = random.Random(seed)
    rows = []
    for r in raw:
        p = fn(r)
        if p is not None and p[gb.keys[0]] == key:
            rows.append({**p, "_arrival": p[gb.source.time_column] + rng.randrange(0, lateness + 1)})
    return rows


def _spoil(values: list[Any]) -> None:
    """Change every array and map a caller got (a caller may): later answers must not see it."""
    for v in values:
        if isinstance(v, list):
            v.append("spoiled")
        elif isinstance(v, dict):
            v["spoiled"] = -1


def _walk(
    gb: GroupByPlan,
    raw: list[dict[str, Any]],
    keys: list[Any],
    boundary: int,
    seed: int,
    with_inputs: bool = False,
) -> int:
    """Fetch each key at a clock that moves by seconds to hours, also "as of" earlier times; compare.
    ``with_inputs``: the runs also get the tile objects as ``inputs`` (the whole-answer memo)."""
    assert gb.batch is not None and gb.stream is not None
    codec = StateCodec(gb)
    program = MergeProgram(codec)
    settle = gb.source.allowed_lateness_ms + gb.stream.flush_interval_ms
    rng = random.Random(seed)
    compared = 0
    for key in keys:
        rows = _rows(gb, raw, key, gb.source.allowed_lateness_ms, seed)
        state = codec.decode_batch(
            codec.encode_batch(batch_state(codec, rows, boundary, gb.batch.validity_ms))
        )
        stream = Stream(codec, rows, boundary)
        memo = EntityMemo()
        now = boundary
        for step in range(60):
            now += rng.choice([0, SECOND_MS, 7 * SECOND_MS, MINUTE_MS, 4 * MINUTE_MS, HOUR_MS, 3 * HOUR_MS])
            tiles = stream.at(now)
            for t in (now, now - rng.randrange(0, 2 * HOUR_MS)) if step % 3 else (now,):
                if t < boundary:
                    continue
                if step == 40 and tiles:  # a tile lost on the way: the memo must notice
                    tiles = dict(tiles)
                    del tiles[min(tiles, key=lambda k: (k[1], k[0]))]
                want = merge_features(codec, t, state, tiles)
                inputs = tuple(tiles.values()) if with_inputs else None
                res = program.run(t, state, tiles, memo=memo, final_before=now - settle, inputs=inputs)
                _same(dict(zip(program.names, res.values)), want.values)
                assert (res.stale_batch, res.inexact_head) == (want.stale_batch, want.inexact_head)
                compared += len(res.values)
                _spoil(res.values)
                want = merge_features(codec, t, state, tiles)
                again = program.run(t, state, tiles, memo=memo, final_before=now - settle, inputs=inputs)
                _same(dict(zip(program.names, again.values)), want.values)
                assert (again.stale_batch, again.inexact_head) == (want.stale_batch, want.inexact_head)
    return compared


@pytest.mark.parametrize("with_inputs", [False, True], ids=["per-window memo", "whole-answer memo"])
def test_memoized_merge_equals_the_plain_merge(with_inputs: bool) -> None:
    plan = compile_repo(GOOD)
    gb = plan.group_by("card")
    start = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS
    rng = random.Random(4)
    raw = []
    for i in range(2_500):
        ts = start + rng.randrange(0, 10 * DAY_MS)
        if i % 7 == 0:
            ts = align(ts, rng.choice([MINUTE_MS, HOUR_MS, DAY_MS]))
        raw.append(
            {
                "event_id": i,
                "ts": ts,
                "card_id": rng.choice(["c1", "c2"]),
                "merchant_id": f"m{rng.randrange(6)}",
                "mcc": rng.choice(["a", "b", None]),
                "amount": round(rng.uniform(-5, 500), 2) if i % 11 else None,
                "fx_rate": rng.choice([1.0, 1.1, 0.9]),
                "status": "authorized" if i % 13 else "declined",
            }
        )
    assert _walk(gb, raw, ["c1", "c2", "nobody"], start + 8 * DAY_MS, seed=1, with_inputs=with_inputs) > 2_000


@pytest.mark.parametrize("with_inputs", [False, True], ids=["per-window memo", "whole-answer memo"])
@pytest.mark.parametrize("name", ["card", "merchant", "merchant_fraud"])
def test_memoized_merge_on_fraud_group_bys(name: str, with_inputs: bool) -> None:
    plan = compile_repo(ROOT / "features" / "fraud")
    gb = plan.group_by(name)
    ds = generate(seed=3, days=3, events_per_day=1_500)
    raw = (ds.payments if gb.source.table == "payments" else ds.labels).to_pylist()
    boundary = align(raw[0]["ts"], DAY_MS) + 2 * DAY_MS
    key_col = gb.keys[0]
    counts: dict[Any, int] = {}
    for r in raw:
        if r[key_col] is not None and r["ts"] >= boundary:
            counts[r[key_col]] = counts.get(r[key_col], 0) + 1
    busiest = sorted(counts, key=lambda k: (-counts[k], str(k)))[:2]
    _walk(gb, raw, busiest, boundary, seed=2, with_inputs=with_inputs)


def test_a_new_batch_version_resets_the_memo() -> None:
    plan = compile_repo(ROOT / "features" / "fraud")
    gb = plan.group_by("card")
    assert gb.batch is not None and gb.stream is not None
    codec = StateCodec(gb)
    program = MergeProgram(codec)
    ds = generate(seed=4, days=4, events_per_day=800)
    raw = ds.payments.to_pylist()
    b1 = align(raw[0]["ts"], DAY_MS) + 2 * DAY_MS
    b2 = b1 + DAY_MS
    card = max({r["card_id"] for r in raw}, key=lambda c: sum(r["card_id"] == c for r in raw))
    rows = _rows(gb, raw, card, 0, seed=0)
    t = b2 + 10 * HOUR_MS
    memo = EntityMemo()
    for boundary in (b1, b2):  # the same query time under two versions: the memo must not leak the first
        state = batch_state(codec, rows, boundary, gb.batch.validity_ms)
        tiles = tiles_from_rows(codec, [r for r in rows if r["ts"] < t], boundary)
        want = merge_features(codec, t, state, tiles)
        got = program.run(t, state, tiles, memo=memo, final_before=t, inputs=())  # same (no) inputs
        _same(dict(zip(program.names, got.values)), want.values)
    assert memo.boundary_ms == b2
    # A re-upload of the same day (same boundary, other content) under the same inputs: not the memo's answer.
    tiles = tiles_from_rows(codec, [r for r in rows if r["ts"] < t], b2)
    for part in (rows[: len(rows) // 2], rows):
        state = batch_state(codec, part, b2, gb.batch.validity_ms)
        want = merge_features(codec, t, state, tiles)
        got = program.run(t, state, tiles, memo=memo, final_before=t, inputs=())
        _same(dict(zip(program.names, got.values)), want.values)


def test_memo_values_are_not_shared_with_callers() -> None:
    """A caller mutating a list or map feature value does not change what the next fetch returns."""
    plan = compile_repo(ROOT / "features" / "fraud")
    gb = plan.group_by("card")
    assert gb.batch is not None
    codec = StateCodec(gb)
    program = MergeProgram(codec)
    ds = generate(seed=4, days=3, events_per_day=800)
    raw = ds.payments.to_pylist()
    boundary = align(raw[0]["ts"], DAY_MS) + 2 * DAY_MS
    card = max({r["card_id"] for r in raw}, key=lambda c: sum(r["card_id"] == c for r in raw))
    rows = _rows(gb, raw, card, 0, seed=0)
    state = batch_state(codec, rows, boundary, gb.batch.validity_ms)
    t = boundary + 12 * HOUR_MS
    tiles = tiles_from_rows(codec, [r for r in rows if r["ts"] < t], boundary)
    memo = EntityMemo()
    first = program.run(t, state, tiles, memo=memo, final_before=t)
    mutable = [i for i, v in enumerate(first.values) if isinstance(v, list | dict) and v]
    assert mutable
    for i in mutable:
        first.values[i].clear()
    again = program.run(t, state, tiles, memo=memo, final_before=t)
    _same(dict(zip(program.names, again.values)), merge_features(codec, t, state, tiles).values)


def test_cover_pieces_equal_the_greedy_cover() -> None:
    rng = random.Random(7)
    all_sizes = [
        (SECOND_MS, MINUTE_MS, 5 * MINUTE_MS, HOUR_MS, DAY_MS),
        (MINUTE_MS, 5 * MINUTE_MS, HOUR_MS, DAY_MS),
        (HOUR_MS, DAY_MS),
        (1, 10, 100),
        (SECOND_MS,),
    ]
    for _ in range(5_000):
        sizes = rng.choice(all_sizes)
        s0 = sizes[0]
        span = rng.choice([5 * s0, 3 * sizes[-1], 2 * sizes[-1] + 3 * sizes[min(1, len(sizes) - 1)]])
        lo = rng.randrange(0, 10 * span) // s0 * s0
        hi = lo + rng.randrange(0, span + 1) // s0 * s0
        assert _cover(lo, hi, sizes) == (tuple(cover(lo, hi, sizes)) if lo < hi else ()), (lo, hi, sizes)


def test_layout_reads_the_period_values_stream_reads_names() -> None:
    plan = compile_repo(ROOT / "features" / "fraud")
    rng = random.Random(2)
    for gb in plan.group_bys:
        if gb.stream is None:
            continue
        program = MergeProgram(StateCodec(gb))
        boundary = 100 * DAY_MS
        for _ in range(100):
            t = boundary + rng.randrange(0, 3 * DAY_MS)
            values, pieces = stream_reads(gb, t, boundary)
            needs = program.layout(t, boundary).needs
            want: dict[TileKey, int] = {}
            for tiles in pieces.values():
                for size, start in tiles:
                    pkey = (size, align(start, program.period_of[size]))
                    want[pkey] = max(want.get(pkey, 0), start + size)
            assert set(needs) == values and needs == want, (gb.name, t)


def test_a_final_tile_rewritten_rebuilds_the_prefix() -> None:
    """A tile taken as final that comes back with other content (a stream job that fell behind) is a new object:
    the memo folds it instead of keeping the prefix folded from the old one."""
    plan = compile_repo(ROOT / "features" / "fraud")
    gb = plan.group_by("card")
    assert gb.batch is not None
    codec = StateCodec(gb)
    program = MergeProgram(codec)
    ds = generate(seed=6, days=3, events_per_day=800)
    raw = ds.payments.to_pylist()
    boundary = align(raw[0]["ts"], DAY_MS) + 2 * DAY_MS
    card = max({r["card_id"] for r in raw}, key=lambda c: sum(r["card_id"] == c for r in raw))
    rows = _rows(gb, raw, card, 0, seed=0)
    state = batch_state(codec, rows, boundary, gb.batch.validity_ms)
    t = boundary + 20 * HOUR_MS
    day = [r for r in rows if boundary <= r["ts"] < t]
    hours = [align(r["ts"], HOUR_MS) for r in day]
    # An event sharing its hour tile with another: the tile is there both times, with other content.
    missed = next(r for r, h in zip(day, hours) if hours.count(h) > 1)
    memo = EntityMemo()
    tiles = tiles_from_rows(codec, [r for r in day if r is not missed], boundary)
    first = program.run(t, state, tiles, memo=memo, final_before=t)
    _same(dict(zip(program.names, first.values)), merge_features(codec, t, state, tiles).values)
    rewritten = tiles_from_rows(codec, day, boundary)
    changed = {
        k: (
            rewritten[k]
            if k not in tiles or codec.encode(rewritten[k].irs) != codec.encode(tiles[k].irs)
            else tiles[k]
        )
        for k in rewritten
    }
    again = program.run(t, state, changed, memo=memo, final_before=t)
    want = merge_features(codec, t, state, changed)
    _same(dict(zip(program.names, again.values)), want.values)
    assert again.values != first.values


@pytest.mark.parametrize("repo", [ROOT / "features" / "fraud", GOOD])
def test_layout_templates_equal_the_computed_layout(repo: Path) -> None:
    """A layout built from the template of its smallest tile (query times moving by milliseconds, also onto
    and off a tile edge) equals the one computed from the definitions."""
    rng = random.Random(11)
    plan = compile_repo(repo)
    programs = [MergeProgram(StateCodec(gb)) for gb in plan.group_bys if gb.stream is not None]
    assert any(p._bucket_ms for p in programs), "the template path should apply to these definitions"
    for program in programs:
        for _ in range(40):
            boundary = align(1_790_000_000_000 + rng.randrange(0, 30 * DAY_MS), DAY_MS)
            if rng.random() < 0.2:  # a boundary that is not a day's (still on the tile grid)
                boundary += rng.choice([1, 60, 420]) * program.sizes[0]
            t = boundary + rng.randrange(-2 * HOUR_MS, 3 * DAY_MS)
            for _ in range(12):
                t += rng.choice([0, 1, 3, 250, 999, 1000, SECOND_MS - t % SECOND_MS, 61_000])
                assert program.layout(t, boundary) == program._compute(t, boundary), (program.names[0], t)
