"""In-process fetch latency of the fraud_v1 Join for one entity: real memcached (3 nodes) + embedded LMDB.

Seeded payments; batch state as of a day boundary written to the bulk store, stream period values of the
request's entities (every event from the boundary to the request time) to memcached. Then ``Fetcher.fetch`` is
timed ``--n`` times at a fixed query time, in three modes:

* ``warm``: the default caches (decoded batch states, period values with their finality horizon and the
  per-entity merge memo in process; fresh tiles read),
* ``no-cache``: caches disabled (every fetch reads and decodes everything),
* ``moving``: the clock advances 1 s per fetch (new query times, so fresh tiles and merges differ each time).

Prints p50/p99/p99.9 (ms), the CPU time per fetch (``time.process_time``, the load-independent figure) and the
mean batch/stream/merge split. ``python bench/bench_fetch.py [--n 3000]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from features.compile import compile_repo
from features.synthetic import generate
from features.windows import DAY_MS, HOUR_MS, align
from kvstore.embedded import EmbeddedBulkStore
from kvstore.memcached import MemcachedStore
from kvstore.services import start_memcached_cluster
from serving.fetcher import Fetcher
from serving.loader import project, write_batch, write_stream

ROOT = Path(__file__).resolve().parents[1]


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def run(n: int, events_per_day: int, days: int) -> list[dict[str, Any]]:
    plan = compile_repo(ROOT / "features" / "fraud")
    join = plan.join("fraud_v1")
    ds = generate(seed=9, days=days, events_per_day=events_per_day)
    boundary = align(ds.start_ms, DAY_MS) + (days - 1) * DAY_MS
    payments = ds.payments.to_pylist()
    raw = {"payments": payments, "labels": ds.labels.to_pylist()}
    # The busiest card's payment late on the last day: long windows, many fresh tiles.
    day_rows = [r for r in payments if boundary + 18 * HOUR_MS <= r["ts"] < boundary + DAY_MS]
    counts: dict[str, int] = {}
    for r in payments:
        counts[r["card_id"]] = counts.get(r["card_id"], 0) + 1
    req_row = max(day_rows, key=lambda r: (counts[r["card_id"]], r["ts"]))
    request = {c: req_row[c] for c in join.left.schema}
    t = request["ts"]
    nodes = start_memcached_cluster(3)
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bulk = EmbeddedBulkStore(Path(tmp) / "bulk")
            stream = MemcachedStore([s.address for s in nodes])
            for part in join.parts:
                gb = plan.group_by(part.group_by)
                by_key = project(gb, raw[gb.source.table])
                write_batch(bulk, gb, by_key, boundary, "bench")
                entity = tuple(request[part.key_map[k]] for k in gb.keys)
                write_stream(stream, gb, {entity: by_key.get(entity, [])}, boundary, t + 3600_000)
            n_features = len(join.output_schema)
            for mode in ("warm", "no-cache", "moving"):
                clock = {"ms": t}

                def now(clock: dict[str, int] = clock) -> int:
                    return clock["ms"]

                size = 0 if mode == "no-cache" else 100_000
                fetcher = Fetcher(
                    plan,
                    (bulk, stream),
                    now_ms=now,
                    cache_size=size,
                    tile_cache_size=size,
                    merge_cache_size=size,
                )
                for _ in range(50):
                    fetcher.fetch("fraud_v1", request)
                degraded = 0
                totals: list[float] = []
                cpu = 0.0
                split = {"batch": 0.0, "stream": 0.0, "merge": 0.0}
                for i in range(n):
                    at = t + (i * 1000 if mode == "moving" else 0)
                    clock["ms"] = at
                    req = dict(request, ts=at)
                    cpu_started = time.process_time()
                    started = time.perf_counter()
                    vec = fetcher.fetch("fraud_v1", req)
                    totals.append((time.perf_counter() - started) * 1e3)
                    cpu += time.process_time() - cpu_started
                    degraded += vec.degraded
                    for k in split:
                        split[k] += vec.timings_ms[k]
                rows.append(
                    {
                        "mode": mode,
                        "n": n,
                        "features": n_features,
                        "degraded": degraded,
                        "p50": statistics.median(totals),
                        "p99": _pct(totals, 0.99),
                        "p999": _pct(totals, 0.999),
                        "cpu": cpu * 1e3 / n,
                        **{k: v / n for k, v in split.items()},
                    }
                )
            bulk.close()
            stream.close()
    finally:
        for s in nodes:
            s.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=3000, help="fetches per mode")
    parser.add_argument("--events-per-day", type=int, default=5000)
    parser.add_argument("--days", type=int, default=3)
    args = parser.parse_args(argv)
    rows = run(args.n, args.events_per_day, args.days)
    print(
        "| mode | fetches | columns | p50 ms | p99 ms | p99.9 ms | CPU ms/fetch | batch ms (mean) "
        "| stream ms (mean) | merge ms (mean) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['mode']} | {r['n']} | {r['features']} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p999']:.2f} | "
            f"{r['cpu']:.2f} | {r['batch']:.2f} | {r['stream']:.2f} | {r['merge']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
