"""The pure tiling logic (no Flink): flushed period values, merged by the shared fetch path, equal the reference.

A stream is simulated the way Flink sees it: events in arrival order, the watermark = the largest event time seen
so far, flushes on a timer, eviction on watermark progress. The flushed values go into a dict standing for
memcached (last write wins), and a fetch at the stream's end reads them back with ``features.tiles``.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Any

import pytest
from stream_check import ReadValues, compare_at
from stream_check import fetch as stream_fetch

from features.compile import compile_repo
from features.plan import GroupByPlan
from features.reference import row_function
from features.synthetic import generate
from features.tiles import StateCodec
from features.windows import DAY_MS, HOUR_MS, MINUTE_MS, align
from flink_jobs.tiling import (
    FlushKey,
    Tiler,
    decode_tile,
    encode_tile,
    expired_periods,
    is_late,
    period_value,
)

ROOT = Path(__file__).resolve().parents[2]
FRAUD = ROOT / "features" / "fraud"


@pytest.fixture(scope="module")
def plan() -> Any:
    return compile_repo(FRAUD)


@pytest.fixture(scope="module")
def payments() -> list[dict[str, Any]]:
    ds = generate(seed=4, days=2, events_per_day=1_500, n_cards=40, n_merchants=15)
    return ds.events_in_arrival_order().to_pylist()


def run_stream(
    tiler: Tiler, raw: list[dict[str, Any]], store: dict[FlushKey, bytes], *, evict: bool = True
) -> tuple[list[dict[str, Any]], int]:
    """Feed ``raw`` (arrival order) through ``tiler``; returns the raw events applied and the peak tile count."""
    fn = row_function(tiler.gb)
    time_col = tiler.gb.source.time_column
    watermark: int | None = None
    on_time: list[dict[str, Any]] = []
    peak = 0
    for i, ev in enumerate(raw):
        now = i  # processing time: one ms per event
        row = fn(ev)
        if row is not None:
            if tiler.on_event(row, watermark, now_ms=now) == "applied":
                on_time.append(ev)
        elif not is_late(ev[time_col], watermark, tiler.allowed_lateness_ms):
            on_time.append(ev)  # filtered by the row logic: the reference filters it too
        watermark = ev[time_col] if watermark is None else max(watermark, ev[time_col])
        store.update(tiler.on_timer(now))
        if evict and i % 100 == 0:
            tiler.evict(watermark)
        peak = max(peak, tiler.tile_count())
    store.update(tiler.flush())
    return on_time, peak


def dict_reader(store: dict[FlushKey, bytes]) -> ReadValues:
    def read(key: tuple[Any, ...], wanted: set[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        return {(s, p): store[(key, s, p)] for s, p in wanted if (key, s, p) in store}

    return read


def fetch(gb: GroupByPlan, store: dict[FlushKey, bytes], key: tuple[Any, ...], t: int, boundary: int) -> Any:
    return stream_fetch(StateCodec(gb), dict_reader(store), key, t, boundary)


def payments_on_time(gb: GroupByPlan, raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events a stream with watermark = largest event time so far applies."""
    wm: int | None = None
    out = []
    for ev in raw:
        if not is_late(ev["ts"], wm, gb.source.allowed_lateness_ms):
            out.append(ev)
        wm = ev["ts"] if wm is None else max(wm, ev["ts"])
    return out


@pytest.mark.parametrize("name", ["card", "merchant", "customer"])
def test_flushed_values_equal_the_reference(plan: Any, payments: list[dict[str, Any]], name: str) -> None:
    gb = plan.group_by(name)
    tiler = Tiler(gb)
    store: dict[FlushKey, bytes] = {}
    on_time, _ = run_stream(tiler, payments, store)
    assert tiler.stats.late > 0, "the synthetic data has late events"
    key_col = gb.keys[0]
    counts: dict[Any, int] = {}
    for r in on_time:
        if r.get(key_col) is not None:
            counts[r[key_col]] = counts.get(r[key_col], 0) + 1
    keys = [*sorted(counts, key=lambda k: -counts[k])[:5], "nobody"]
    end = max(r["ts"] for r in on_time) + 1
    times = [end, end + 7 * MINUTE_MS, end + HOUR_MS, end + DAY_MS]  # at or after the last event
    compared, bad = compare_at(gb, dict_reader(store), on_time, [(k,) for k in keys], times)
    assert not bad, bad[:5]
    assert compared > 100


def test_late_events_are_counted_not_applied(plan: Any) -> None:
    gb = plan.group_by("card")
    tiler = Tiler(gb)
    base = 100 * DAY_MS
    row = {"card_id": "c1", "ts": base, "event_id": 1, "amount_usd": 10.0}
    assert tiler.on_event(row, watermark_ms=None) == "applied"
    very_late = {**row, "ts": base - gb.source.allowed_lateness_ms - 1, "event_id": 2}
    assert tiler.on_event(very_late, watermark_ms=base) == "late"
    just_in_time = {**row, "ts": base - gb.source.allowed_lateness_ms, "event_id": 3}
    assert tiler.on_event(just_in_time, watermark_ms=base) == "applied"
    assert tiler.on_event({**row, "card_id": None}, watermark_ms=base) == "no_key"
    assert (tiler.stats.late, tiler.stats.applied, tiler.stats.no_key) == (1, 2, 1)
    store = tiler.flush()
    got = fetch(gb, store, ("c1",), base + 1, align(base - DAY_MS, DAY_MS))
    assert got.values["amount_usd_count_1h"] == 2


def test_idempotent_reflush_and_period_value_bytes(plan: Any, payments: list[dict[str, Any]]) -> None:
    gb = plan.group_by("merchant")
    tiler = Tiler(gb)
    store: dict[FlushKey, bytes] = {}
    run_stream(tiler, payments[:2000], store, evict=False)
    # Mark every period dirty again: a re-flush writes exactly the bytes already stored (full-IR upserts).
    for entity, ent in tiler.entities.items():
        for size, start in ent.tiles:
            tiler.dirty.add((entity, size, tiler.codec.period_key(size, start)[1]))
    again = tiler.flush()
    assert again and all(store[k] == v for k, v in again.items())
    assert set(again) == set(store)
    # The Flink operator's assembly from tile state bytes is byte-identical to encode_period.
    codec = tiler.codec
    for (entity, size, ps), data in list(store.items())[:200]:
        tiles = {
            s: t
            for (sz, s), t in tiler.entities[entity].tiles.items()
            if sz == size and codec.period_key(sz, s)[1] == ps
        }
        encoded = {s: encode_tile(codec, t) for s, t in tiles.items()}
        assert period_value(size, ps, encoded) == data
        for s, e in encoded.items():
            back = decode_tile(codec, e)
            assert back.max_ts == tiles[s].max_ts and codec.encode(back.irs) == codec.encode(tiles[s].irs)


def test_eviction_keeps_state_bounded(plan: Any) -> None:
    gb = plan.group_by("merchant")
    ds = generate(seed=9, days=6, events_per_day=400, n_cards=30, n_merchants=3)
    raw = ds.events_in_arrival_order().to_pylist()
    bounded = Tiler(gb)
    unbounded = Tiler(gb)
    _, peak = run_stream(bounded, raw, {})
    _, peak_all = run_stream(unbounded, raw, {}, evict=False)
    assert bounded.stats.periods_evicted > 0
    assert peak < peak_all / 2, (peak, peak_all)
    # Nothing left in state is past its retention.
    wm = max(r["ts"] for r in raw)
    bounded.evict(wm)
    for ent in bounded.entities.values():
        periods = {bounded.codec.period_key(*tk) for tk in ent.tiles}
        assert not expired_periods(bounded.codec, bounded.retention, periods, wm)
    # The retained state covers the last day: the 1d windows still read from memory equal the full run's.
    level_sizes = {s for (_, s, _) in bounded.dirty}
    assert not level_sizes  # flushed at the end


def test_snapshot_restore_continues_exactly(plan: Any, payments: list[dict[str, Any]]) -> None:
    gb = plan.group_by("card")
    half = len(payments) // 2
    whole = Tiler(gb)
    store_whole: dict[FlushKey, bytes] = {}
    run_stream(whole, payments, store_whole)

    first = Tiler(gb)
    store: dict[FlushKey, bytes] = {}
    run_stream(first, payments[:half], store)
    # A crash: the restored tiler starts from the snapshot; the second half is fed (watermark restarts too).
    second = Tiler(gb)
    second.restore(first.snapshot())
    assert second.tile_count() == first.tile_count()
    run_stream(second, payments[half:], store)
    assert set(store) == set(store_whole)
    codec = StateCodec(gb)
    differ = 0
    for k, data in store_whole.items():
        if data != store[k]:  # sketches may serialize differently after a round trip; values must agree
            differ += 1
            _, _, a = codec.decode_period(data)
            _, _, b = codec.decode_period(store[k])
            assert a.keys() == b.keys()
            for s in a:
                assert a[s].max_ts == b[s].max_ts
                for op, x, y in zip(codec.ops, a[s].irs, b[s].irs):
                    assert op.agrees(op.finalize(x), op.finalize(y)), op
    rng = random.Random(3)
    keys = rng.sample(sorted({k for (k, _, _) in store_whole}), 5)
    end = max(r["ts"] for r in payments) + MINUTE_MS
    _, bad = compare_at(gb, dict_reader(store), payments_on_time(gb, payments), keys, [end])
    assert not bad, bad[:5]


def test_period_entries_write_the_tilers_bytes(plan: Any, payments: list[dict[str, Any]]) -> None:
    """The Flink operator's in-place period values (re-parsed from bytes now and then, as after a restore)
    are byte-identical to the Tiler's flushed values."""
    from flink_jobs.tiling import PeriodEntry, entity_of

    gb = plan.group_by("card")
    tiler = Tiler(gb)
    store: dict[FlushKey, bytes] = {}
    run_stream(tiler, payments[:1500], store, evict=False)
    fn = row_function(gb)
    codec = tiler.codec
    wm: int | None = None
    entries: dict[FlushKey, PeriodEntry] = {}
    for i, ev in enumerate(payments[:1500]):
        row = fn(ev)
        if (
            row is not None
            and entity_of(gb, row)
            and not is_late(row["ts"], wm, gb.source.allowed_lateness_ms)
        ):
            for size in codec.sizes:
                ps = codec.period_key(size, row["ts"] - row["ts"] % size)[1]
                k = (entity_of(gb, row), size, ps)
                e = entries.get(k) or PeriodEntry(size, ps)
                e.update(codec, row)
                entries[k] = PeriodEntry.from_value(e.value()) if i % 3 == 0 else e
        wm = ev["ts"] if wm is None else max(wm, ev["ts"])
    assert set(entries) == set(store)
    assert all(entries[k].value() == store[k] for k in store)


@pytest.mark.parametrize("name", ["card", "merchant", "customer"])
def test_key_tiles_flush_at_flush_time_and_restore_from_any_checkpoint(
    plan: Any, payments: list[dict[str, Any]], name: str
) -> None:
    """The Flink operator's per-key form (:class:`KeyTiles`): events update IRs only, flushes encode the dirty
    periods, state = period values + pending rows. Crashes restore a checkpoint (a copy of every key's state) and
    replay from its offset; the flushed values still equal the Tiler's, byte for byte."""
    from flink_jobs.tiling import KeyTiles, entity_of, retention_of

    gb = plan.group_by(name)
    raw = payments[:2000]
    tiler = Tiler(gb)
    expected: dict[FlushKey, bytes] = {}
    run_stream(tiler, raw, expected, evict=False)

    codec = StateCodec(gb)
    retention = retention_of(gb)
    fn = row_function(gb)
    rng = random.Random(11)
    state: dict[tuple[Any, ...], dict[str, bytes]] = {}  # keyed MapState
    memory: dict[tuple[Any, ...], KeyTiles] = {}
    store: dict[FlushKey, bytes] = {}
    checkpoint: tuple[int, dict[tuple[Any, ...], dict[str, bytes]]] = (0, {})
    crashes = 0

    def flush_all() -> None:
        for ent, kt in memory.items():
            for size, ps, v in kt.flush():
                store[(ent, size, ps)] = v

    def tiles_of(ent: tuple[Any, ...]) -> KeyTiles:
        if ent not in memory:
            memory[ent] = KeyTiles.load(codec, retention, list(state.get(ent, {}).items()))
        return memory[ent]

    def compact(ent: tuple[Any, ...]) -> None:
        puts, removes = tiles_of(ent).compact()
        st = state.setdefault(ent, {})
        st.update(puts)
        for k in removes:
            del st[k]

    i = 0
    wm: int | None = None
    while i < len(raw):
        ev = raw[i]
        row = fn(ev)
        ent = entity_of(gb, row) if row is not None else None
        if ent is not None and not is_late(row["ts"], wm, gb.source.allowed_lateness_ms):  # type: ignore[index]
            k, v, _ = tiles_of(ent).apply(row)  # type: ignore[arg-type]
            state.setdefault(ent, {})[k] = v
            if rng.random() < 0.1:
                flush_all()
            if rng.random() < 0.05:
                flush_all()
                compact(ent)
        wm = ev["ts"] if wm is None else max(wm, ev["ts"])
        i += 1
        if rng.random() < 0.02:  # a checkpoint barrier: offset + a copy of the keyed state
            checkpoint = (i, {e: dict(st) for e, st in state.items()})
        if crashes < 3 and rng.random() < 0.003:  # kill -9: memory lost, memcached keeps what it got
            crashes += 1
            i, saved = checkpoint
            state = {e: dict(st) for e, st in saved.items()}
            memory = {}
            wm = max((e["ts"] for e in raw[:i]), default=None)
            for e in list(state):  # restored keys flush their replayed rows when next touched
                tiles_of(e)
    flush_all()
    assert crashes > 0
    assert set(store) == set(expected)
    assert all(store[k] == expected[k] for k in expected)
    # Compacted state alone (no pending rows) rebuilds the same values.
    for ent in list(memory):
        compact(ent)
    assert all(not k.startswith("r:") for st in state.values() for k in st)
    for ent, st in state.items():
        kt = KeyTiles.load(codec, retention, st.items())
        for e in kt.entries.values():
            assert e.value(codec) == expected[(ent, e.size, e.period_start)]


@pytest.mark.parametrize(
    ("defer", "slices"),
    [(False, 1), (True, 1), (True, 3)],
    ids=["every-flush", "deferred-open-tiles", "deferred-sliced-compaction"],
)
def test_buckets_flush_the_tilers_bytes_and_restore_from_any_barrier(
    plan: Any, payments: list[dict[str, Any]], defer: bool, slices: int
) -> None:
    """The batch path's per-bucket form (:class:`BucketTiles`): two GroupBys' keys hashed into a few buckets, rows
    applied a batch at a time, state = key values + pending batches, eviction on the watermark carried by the
    batches. Barriers fall between batches; crashes restore a checkpoint and replay from its offset. Every period
    value written equals the in-memory Tiler's, byte for byte, and eviction really drops periods.

    ``deferred-open-tiles``: flushes defer open tiles of the larger levels (horizon = the stream's time + a lead,
    as the job's), compactions keep in state the earliest end a deferred value waits for (``#deferred-since``), and
    a restore writes again every period ending at or after it: a crash must not leave a deferred value out of memcached.

    ``deferred-sliced-compaction``: each bucket's keys in 3 slices that compact one at a time (and all before an
    eviction); a restore replays only the rows of batches their slice was not compacted through."""
    from flink_jobs.job import EVICT_GRANULARITY_MS, bucket_of, flink_key, parse_flink_key
    from flink_jobs.tiling import PERIOD_SEP, BucketTiles, entity_of, period_entry_key, retention_of

    gbs = [plan.group_by("card"), plan.group_by("merchant")]
    expected: dict[tuple[Any, ...], bytes] = {}
    for gi, gb in enumerate(gbs):
        got: dict[FlushKey, bytes] = {}
        run_stream(Tiler(gb), payments, got, evict=False)
        expected.update({(gi, ent, s, p): v for (ent, s, p), v in got.items()})

    codecs = [StateCodec(gb) for gb in gbs]
    retentions = [retention_of(gb) for gb in gbs]
    fns = [row_function(gb) for gb in gbs]
    lateness = gbs[0].source.allowed_lateness_ms
    n_buckets = 3
    rng = random.Random(7)
    # bucket -> (key values - with the bucket's own "#..." entries -, pending batches): the keyed MapStates
    State = dict[int, tuple[dict[str, bytes], dict[str, bytes]]]
    state: State = {b: ({}, {}) for b in range(n_buckets)}
    memory: dict[int, BucketTiles] = {}
    store: dict[tuple[Any, ...], bytes] = {}
    checkpoint: tuple[int, State] = (0, {b: ({}, {}) for b in range(n_buckets)})
    crashes = dropped = compactions = replayed = deferred_restored = partial = 0
    checkpoint_partial = barrier_now = False
    lead = 2_000

    def bucket(b: int) -> BucketTiles:
        nonlocal replayed, deferred_restored
        if b not in memory:
            bt = memory[b] = BucketTiles(codecs, retentions, slices)
            replayed += bt.replay(list(state[b][1].items()), state[b][0].get)
            values = state[b][0]
            indexes = [
                (k, parse_flink_key(k)[0], v)
                for k, v in values.items()
                if PERIOD_SEP not in k and not k.startswith("#")
            ]
            deferred_restored += bt.restore_deferred(indexes, values.get)
        return memory[b]

    def flush_all(final: bool = False) -> None:
        horizon = None if final or not defer or wm is None else wm + lead
        for bt in memory.values():
            for gi, key, size, ps, v in bt.flush(horizon):
                store[(gi, parse_flink_key(key)[1], size, ps)] = v

    def compact(b: int, part: int | None = None) -> None:
        nonlocal compactions
        puts, removes, pending = bucket(b).compact(part)
        values, batches = state[b]
        values.update(puts)
        for k in removes:
            values.pop(k, None)
        for k in pending:
            del batches[k]
        compactions += 1

    def wm_before(i: int) -> int | None:
        return max((e["ts"] for e in payments[:i]), default=None)

    i = 0
    wm = None
    while i < len(payments):
        batch_wm = wm
        by_bucket: dict[int, list[Any]] = {}
        for ev in payments[i : i + rng.randint(1, 40)]:
            if not is_late(ev["ts"], wm, lateness):
                for gi, (gb, fn) in enumerate(zip(gbs, fns)):
                    row = fn(ev)
                    ent = entity_of(gb, row) if row is not None else None
                    if ent is not None:
                        key = flink_key(gi, ent)
                        by_bucket.setdefault(bucket_of(key, n_buckets), []).append((gi, key, row))
            wm = ev["ts"] if wm is None else max(wm, ev["ts"])
            i += 1
        for b, rows in by_bucket.items():
            bt = bucket(b)
            if bt.pending_rows >= 50 and not bt.dirty:
                compact(b, bt.next_part if slices > 1 else None)
                barrier_now = slices > 1 and rng.random() < 0.3  # (checkpoints between slice compactions)
            k, v = bt.apply(rows, state[b][0].get)
            state[b][1][k] = v
            if bt.eviction_due(batch_wm, EVICT_GRANULARITY_MS):
                assert batch_wm is not None
                flush_all()
                compact(b)
                puts, removes, n = bt.expire(batch_wm)
                state[b][0].update(puts)
                for key in removes:
                    del state[b][0][key]
                dropped += n
        if rng.random() < 0.2:
            flush_all()
        if (
            rng.random() < 0.2 or barrier_now
        ):  # a barrier (between batches): offset + a copy of the keyed state
            barrier_now = False
            checkpoint = (i, {b: (dict(v), dict(p)) for b, (v, p) in state.items()})
            checkpoint_partial = any(len(set(bt.through)) > 1 for bt in memory.values())
        if (
            crashes < 4 and i > 500 and (rng.random() < 0.03 or (checkpoint_partial and rng.random() < 0.1))
        ):  # kill -9: memory lost, memcached keeps what it got
            crashes += 1
            partial += checkpoint_partial
            i, saved = checkpoint
            state = {b: (dict(v), dict(p)) for b, (v, p) in saved.items()}
            memory = {}
            wm = wm_before(i)
            for b in state:  # restored timers touch every bucket with pending batches
                bucket(b)
    flush_all(final=True)
    assert crashes > 0 and compactions > 0 and dropped > 0 and replayed > 0
    assert (deferred_restored > 0) == defer
    # restores of a checkpoint whose slices were compacted through different batches
    assert (partial > 0) == (slices > 1), partial
    assert set(store) == set(expected)
    bad = [k for k in expected if store[k] != expected[k]]
    assert not bad, bad[:3]
    # Compacted state alone (no pending batch) rebuilds exactly the periods held in memory (evicted ones gone).
    for b in list(memory):
        compact(b)
    for b, (values, batches) in state.items():
        assert not batches
        indexes = {k for k in values if PERIOD_SEP not in k and not k.startswith("#")}
        assert indexes == set(memory[b].keys)
        # every period value in state is listed by its key's index, and the other way round
        listed = {period_entry_key(k, pk) for k in indexes for pk in values[k].decode("ascii").split(",")}
        assert listed == {k for k in values if not k.startswith("#")} - indexes
        fresh = BucketTiles(codecs, retentions)
        for key in indexes:
            gi, ent = parse_flink_key(key)
            held = memory[b].keys[key].entries
            loaded = fresh.tiles(gi, key, values.get).entries
            assert set(loaded) == set(held)
            for pk, e in loaded.items():
                assert e.value(codecs[gi]) == held[pk].value(codecs[gi])
                assert e.value(codecs[gi]) == expected[(gi, ent, e.size, e.period_start)]


def test_bucket_compaction_writes_only_the_periods_that_changed(
    plan: Any, payments: list[dict[str, Any]]
) -> None:
    """A compaction puts the period values that changed since the last one, and a key's index only when the key
    gained a period: not the whole key (a hot key's state is every period it keeps for retention)."""
    from flink_jobs.job import flink_key
    from flink_jobs.tiling import (
        PERIOD_SEP,
        BucketTiles,
        entity_of,
        period_entry_key,
        period_state_key,
        retention_of,
    )

    gb = plan.group_by("merchant")
    codec = StateCodec(gb)
    fn = row_function(gb)
    rows = []
    for ev in payments[:2000]:
        row = fn(ev)
        ent = entity_of(gb, row) if row is not None else None
        if ent is not None:
            rows.append((0, flink_key(0, ent), row))
    state: dict[str, bytes] = {}
    bt = BucketTiles([codec], [retention_of(gb)])
    bt.apply(rows, state.get)
    bt.flush()
    puts, removes, _ = bt.compact()
    state.update(puts)
    assert not removes
    gi, key, row = rows[-1]
    periods = len(state[key].decode("ascii").split(","))
    assert periods > len(codec.sizes)  # the key holds more periods than one row touches

    # One more row at a time the key already has: one period value per level, no index.
    bt.apply([(gi, key, dict(row))], state.get)
    bt.flush()
    assert bt.uncompacted_periods == len(codec.sizes)  # (what --compact-periods counts)
    puts, _, _ = bt.compact()
    assert bt.uncompacted_periods == 0
    touched = {
        period_entry_key(key, period_state_key(size, align(row["ts"], codec.period_of[size])))
        for size in codec.sizes
    }
    assert set(puts) == touched
    state.update(puts)

    # A row in a new period of every level: its period values and the key's new index.
    later = dict(row, ts=row["ts"] + 3 * DAY_MS)
    bt.apply([(gi, key, later)], state.get)
    bt.flush()
    puts, _, _ = bt.compact()
    assert key in puts and len([k for k in puts if PERIOD_SEP in k]) == len(codec.sizes)
    state.update(puts)
    assert len(state[key].decode("ascii").split(",")) == periods + len(codec.sizes)
    # and the state alone loads the key as memory holds it
    loaded = BucketTiles([codec], [retention_of(gb)]).tiles(gi, key, state.get)
    held = bt.keys[key]
    assert {pk: e.value(codec) for pk, e in loaded.entries.items()} == {
        pk: e.value(codec) for pk, e in held.entries.items()
    }


def test_deferred_flushes_write_every_tile_a_fetch_reads(plan: Any, payments: list[dict[str, Any]]) -> None:
    """Flushes that defer open tiles of the larger levels (horizon = now + lead) still leave in memcached, after
    each flush, every tile a fetch at ``now`` reads (:func:`features.tiles.stream_reads`: complete tiles and the
    smallest tile holding ``now``) exactly as memory holds it - and they write fewer values than flushing every
    changed period. A live stream of a few hot cards (a payment every ~200 ms for an hour): tiles of every level
    close while the stream runs."""
    from features.tiles import stream_reads
    from flink_jobs.job import flink_key
    from flink_jobs.tiling import BucketTiles, PeriodEntry, entity_of, period_state_key, retention_of

    gb = plan.group_by("card")
    codec = StateCodec(gb)
    fn = row_function(gb)
    assert gb.stream is not None
    period_of = {lv.size_ms: lv.period_ms for lv in gb.stream.levels}
    lead = 2_000
    deferring, eager = BucketTiles([codec], [retention_of(gb)]), BucketTiles([codec], [retention_of(gb)])
    store: dict[tuple[str, str], bytes] = {}
    written = {"deferring": 0, "eager": 0}
    rng = random.Random(11)
    cards = ["hot-1", "hot-2", "hot-3"]
    events = []
    now = 20 * DAY_MS + 23 * HOUR_MS + 30 * MINUTE_MS  # the stream crosses a day boundary
    while now < 20 * DAY_MS + 24 * HOUR_MS + 30 * MINUTE_MS:
        now += rng.randint(0, 400)
        ev = payments[len(events) % len(payments)]
        events.append({**ev, "card_id": rng.choice(cards), "ts": now, "arrival_ts": now})
    checked = i = 0
    parse = functools.lru_cache(maxsize=256)(lambda value: PeriodEntry.from_value(value).tiles)
    while i < len(events):
        batch = []
        for ev in events[i : i + rng.randint(1, 12)]:
            row = fn(ev)
            ent = entity_of(gb, row) if row is not None else None
            if ent is not None:
                batch.append((0, flink_key(0, ent), row))
            now = ev["ts"]
            i += 1
        deferring.apply(batch)
        eager.apply(batch)
        for _, key, size, ps, v in deferring.flush(now + lead):
            store[(key, period_state_key(size, ps))] = v
            written["deferring"] += 1
        written["eager"] += len(eager.flush())
        if rng.random() < 0.85:
            continue
        _, pieces = stream_reads(gb, now, align(now, DAY_MS) - DAY_MS)
        tiles = {tile for ps in pieces.values() for tile in ps}
        for key, kt in deferring.keys.items():
            for size, start in tiles:
                pk = period_state_key(size, align(start, period_of[size]))
                held = kt.entries.get(pk)
                want = None if held is None else parse(held.value(codec)).get(start)
                value = store.get((key, pk))
                got = None if value is None else parse(value).get(start)
                assert (got is None) == (want is None), (key, size, start, now)
                if want is not None:
                    assert got is not None and got[0] == want[0] and got[2] == want[2], (
                        key,
                        size,
                        start,
                        now,
                    )
                    checked += 1
    assert len(events) > 15_000 and checked > 30_000
    # The hot keys' minute, hour and day tiles were written near their end, not at every flush.
    assert written["deferring"] < 0.5 * written["eager"], written


def test_a_bucket_state_from_before_slices_restores_into_slices(
    plan: Any, payments: list[dict[str, Any]]
) -> None:
    """A bucket's state written without compaction slices (no ``#through`` entries; batch numbers restarting at 0
    after each compaction) restores into a sliced bucket as compacted through its last batch: every key's values
    equal the unsliced bucket's, and the sliced bucket goes on compacting slice by slice."""
    from flink_jobs.job import flink_key
    from flink_jobs.tiling import BucketTiles, entity_of, retention_of

    gb = plan.group_by("card")
    codec = StateCodec(gb)
    fn = row_function(gb)
    batches: list[list[Any]] = []
    rows: list[Any] = []
    for ev in payments_on_time(gb, payments)[:1_500]:
        row = fn(ev)
        ent = entity_of(gb, row) if row is not None else None
        if ent is not None:
            rows.append((0, flink_key(0, ent), row))
        if len(rows) == 25:
            batches.append(rows)
            rows = []
    values: dict[str, bytes] = {}
    pending: dict[str, bytes] = {}
    old = BucketTiles([codec], [retention_of(gb)])
    for i, batch in enumerate(batches):
        k, v = old.apply(batch, values.get)
        pending[k] = v
        old.flush()
        if i == len(batches) // 2:
            puts, _, done = old.compact()
            values.update(puts)
            for k in done:
                del pending[k]
    assert pending and values and not any(k.startswith("#") for k in values)

    sliced = BucketTiles([codec], [retention_of(gb)], 8)
    assert sliced.replay(list(pending.items()), values.get) == sum(
        len(b) for b in batches[len(batches) // 2 + 1 :]
    )
    for key, held in old.keys.items():
        got = sliced.tiles(0, key, values.get).entries
        assert {pk: e.value(codec) for pk, e in got.items()} == {
            pk: e.value(codec) for pk, e in held.entries.items()
        }
    sliced.flush()
    puts, _, done = sliced.compact(sliced.next_part)
    assert "#through:0" in puts and not done  # the other slices still need the pending batches
    for part in range(1, 8):
        puts, _, done = sliced.compact(part)
    assert sorted(done, key=int) == sorted(pending, key=int)  # every slice past them: they leave state
