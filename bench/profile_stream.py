"""CPU per event of the stream job's Python work, in-process and Flink-free (a development aid for bench_stream).

    .venv/bin/python bench/profile_stream.py --group-by card --events 30000 [--profile]

Runs what the batch path's two Python operators do with a backlog of synthetic payments, in the same
proportions as a throughput run of ``bench/bench_stream.py`` (batches of ``--batch`` records; a flush every
``--flush-every`` batches; compaction when the job would compact), and prints CPU µs per event per step:

* ``parse``: :class:`flink_jobs.job.BatchParser` (JSON, validation, row logic, keys, hash buckets);
* ``fold``: :meth:`flink_jobs.tiling.BucketTiles.apply` (the fold into IRs and the pending-batch bytes);
* ``flush``: :meth:`~flink_jobs.tiling.BucketTiles.flush` (encoding every changed period value);
* ``compact``: :meth:`~flink_jobs.tiling.BucketTiles.compact` (key values for state; when the job would);
* ``evict``: what the job does when the carried watermark passes a period's retention (flush, compact, expire).

Flink's own costs (state calls, the Java-Python bridge) and memcached writes are not included.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_stream import backlog_table  # noqa: E402

from features.compile import compile_repo  # noqa: E402
from features.gcpolicy import quiet_full_collections  # noqa: E402
from features.tiles import StateCodec  # noqa: E402
from flink_jobs.job import (  # noqa: E402
    COMPACT_BUCKET_PERIODS,
    COMPACT_BUCKET_ROWS,
    COMPACT_SLICES,
    EVICT_GRANULARITY_MS,
    FULL_GC_S,
    OPEN_TILE_LEAD_MS,
    BatchParser,
    batch_record,
)
from flink_jobs.replay import encode_value  # noqa: E402
from flink_jobs.tiling import BucketTiles, flush_horizon, retention_of  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group-by", default="card")
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--backlog-time", choices=["days", "live"], default="days", help="as bench_stream.py's")
    ap.add_argument("--live-rate", type=float, default=10_000)
    ap.add_argument("--batch", type=int, default=1000, help="records per batch (the job's default cap)")
    ap.add_argument("--flush-every", type=int, default=4, help="batches between flushes")
    ap.add_argument("--compact-rows", type=int, default=COMPACT_BUCKET_ROWS, help="the job's --compact-rows")
    ap.add_argument(
        "--compact-periods", type=int, default=COMPACT_BUCKET_PERIODS, help="the job's --compact-periods"
    )
    ap.add_argument(
        "--evict", action=argparse.BooleanOptionalAction, default=True, help="evict as the job does"
    )
    ap.add_argument(
        "--open-tile-lead-ms",
        type=int,
        default=OPEN_TILE_LEAD_MS,
        help="the job's (flushes defer open tiles of larger levels; negative: every flush writes them)",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--python-gc",
        action="store_true",
        help="Python's automatic full collections (default: the job's policy)",
    )
    ap.add_argument("--profile", action="store_true", help="also a cProfile of one round (top 30 by tottime)")
    a = ap.parse_args(argv)

    plan = compile_repo(ROOT / "features" / "fraud")
    gb = next(g for g in plan.group_bys if g.name == a.group_by or g.name.startswith(a.group_by))
    table = backlog_table(
        argparse.Namespace(backlog=a.events, backlog_time=a.backlog_time, live_rate=a.live_rate)
    )
    ts_col = gb.source.time_column
    records = []
    wm: int | None = None  # as the job's source: the largest event time so far (no out-of-orderness)
    for r in table.to_pylist():
        records.append(batch_record(int(r[ts_col]), wm, encode_value(r).decode("utf-8")))
        wm = int(r[ts_col]) if wm is None else max(wm, int(r[ts_col]))
    batches = [records[i : i + a.batch] for i in range(0, len(records), a.batch)]
    print(
        f"{gb.name}: {len(records)} events, {len(batches)} batches of {a.batch}, flush every {a.flush_every}"
    )

    def horizon(floor: int | None) -> int | None:
        return flush_horizon(int(time.time() * 1000), floor, a.open_tile_lead_ms)  # as the job's

    def one_round() -> dict[str, float]:
        parser = BatchParser([gb], [0], 1)
        bt = BucketTiles([StateCodec(gb)], [retention_of(gb)], COMPACT_SLICES)
        spent = dict.fromkeys(["parse", "fold", "flush", "compact", "evict"], 0.0)
        clock = time.process_time
        for i, batch in enumerate(batches):
            t0 = clock()
            out, _, _, floor = parser.parse(batch)
            t1 = clock()
            compacting = evicting = 0.0
            for rows in out.values():
                due = bt.compaction_due(a.compact_rows, a.compact_periods)
                if due and not bt.dirty:  # the job's rule
                    t4 = clock()
                    bt.compact(bt.next_part)
                    compacting += clock() - t4
                bt.apply(rows)
                if a.evict and bt.eviction_due(floor, EVICT_GRANULARITY_MS):  # as the job's _maybe_evict
                    assert floor is not None
                    t5 = clock()
                    if bt.dirty:
                        bt.flush(horizon(floor))
                    bt.compact()
                    bt.expire(floor)
                    evicting += clock() - t5
            t2 = clock()
            spent["parse"] += t1 - t0
            spent["fold"] += t2 - t1 - compacting - evicting
            spent["compact"] += compacting
            spent["evict"] += evicting
            if (i + 1) % a.flush_every == 0 or i == len(batches) - 1:
                t3 = clock()
                bt.flush(horizon(floor))
                spent["flush"] += clock() - t3
        return {k: v / len(records) * 1e6 for k, v in spent.items()}

    if not a.python_gc:
        quiet_full_collections(FULL_GC_S)  # as the job's tile operator does
    rounds = [one_round() for _ in range(a.rounds)]
    print(
        f"{'step':<10}" + "".join(f"{'round ' + str(i + 1):>10}" for i in range(len(rounds))) + f"{'min':>10}"
    )
    for step in [*rounds[0], "total"]:
        vals = [sum(r.values()) if step == "total" else r[step] for r in rounds]
        print(f"{step:<10}" + "".join(f"{v:>10.1f}" for v in vals) + f"{min(vals):>10.1f}")
    print("(CPU µs per event)")
    if a.profile:
        prof = cProfile.Profile(time.process_time)
        prof.runcall(one_round)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
