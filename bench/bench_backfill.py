"""Benchmark: the Spark backfill of fraud_v1 vs DuckDB RANGE-window SQL for the same count/sum features.

    python bench/bench_backfill.py            # 1 M events x 10 % labels
    python bench/bench_backfill.py --large    # 10 M events
    python bench/bench_backfill.py --demo     # the demo data (seed 7, 3 days x 20 k/day), every payment a label

Prints rows/s (labels per second), the ratio, and peak RSS of this process tree (driver, JVM, Python workers).
Our run computes all 143 features + derivations; DuckDB computes only the amount_usd count/sum features of the
windowed (no offset) aggregations — its RANGE frames are ``[t - L, t)`` without hop alignment.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from features.compile import compile_repo
from features.synthetic import generate
from spark_jobs.backfill import training_set
from spark_jobs.session import spark_session

ROOT = Path(__file__).resolve().parent.parent


def _tree_usage() -> tuple[int, float]:
    """RSS bytes and CPU seconds (user + sys, with reaped children) of this process and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(parts[1]), []).append(int(d))
            rss[int(d)] = int(parts[21]) * os.sysconf("SC_PAGE_SIZE")
            cpu[int(d)] = sum(int(x) for x in parts[11:15]) / tick
        except (OSError, IndexError, ValueError):
            continue
    total, seconds, stack = 0, 0.0, [os.getpid()]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        seconds += cpu.get(p, 0.0)
        stack.extend(children.get(p, []))
    return total, seconds


def _tree_rss() -> int:
    """RSS bytes of this process and all its descendants (from /proc)."""
    return _tree_usage()[0]


class PeakRss:
    def __enter__(self) -> PeakRss:
        self.peak, self._cpu0 = _tree_usage()
        self.cpu = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            rss, cpu = _tree_usage()
            self.peak = max(self.peak, rss)
            self.cpu = max(self.cpu, cpu - self._cpu0)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()


def duckdb_sql(plan: Any, join_name: str) -> tuple[str, int]:
    """RANGE-window SQL over payments+labels rows for the Join's amount_usd count/sum features."""
    join = plan.join(join_name)
    selects, n = [], 0
    names: list[str] = []
    for part in join.parts:
        gb = plan.group_by(part.group_by)
        if gb.source.table != "payments":
            continue
        (key,) = gb.keys
        for out_name, feat in part.features.items():
            f = gb.feature(feat)
            agg = gb.aggregations[f.agg_index]
            w = agg.windows[f.window_index]
            if agg.column != "amount_usd" or agg.op not in ("count", "sum") or agg.bucket or w.offset_ms:
                continue
            if w.length_ms is None:
                continue
            fn = "count" if agg.op == "count" else "sum"
            selects.append(
                f'{fn}(v) OVER (PARTITION BY "{key}" ORDER BY ts RANGE BETWEEN {w.length_ms} PRECEDING '
                f'AND 1 PRECEDING) AS "{out_name}"'
            )
            n += 1
            names.append(out_name)
    cols = ", ".join(selects)
    # Aggregate every window column: with count(*) alone DuckDB prunes the unused window functions (0.0 s).
    sums = ", ".join(f'sum("{name}")' for name in names)
    sql = f"""
        WITH u AS (
            SELECT card_id, customer_id, merchant_id, device_id, ip, ts, amount * fx_rate AS v, FALSE AS is_label
            FROM read_parquet($payments)
            UNION ALL
            SELECT card_id, customer_id, merchant_id, device_id, ip, ts, NULL AS v, TRUE AS is_label
            FROM read_parquet($left)
        )
        SELECT count(*), {sums} FROM (SELECT is_label, {cols} FROM u) WHERE is_label
    """
    return sql, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--large", action="store_true", help="10 M events instead of 1 M")
    ap.add_argument(
        "--demo", action="store_true", help="what `make demo` backfills: 3 days x 20 k events/day"
    )
    ap.add_argument("--label-fraction", type=float, default=None, help="default 0.1 (1.0 with --demo)")
    args = ap.parse_args()
    if args.demo:
        seed, days, events_per_day = 7, 3, 20_000
        label_fraction = 1.0 if args.label_fraction is None else args.label_fraction
    else:
        seed, days = 42, 30
        events_per_day = (10_000_000 if args.large else 1_000_000) // days
        label_fraction = 0.1 if args.label_fraction is None else args.label_fraction
    console = Console()
    plan = compile_repo(ROOT / "features" / "fraud")
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        t0 = time.perf_counter()
        data = generate(seed=seed, days=days, events_per_day=events_per_day)
        pay_path, lab_path = data.write(tmp)
        rng = np.random.default_rng(0)
        n_events = data.payments.num_rows
        idx = np.sort(rng.choice(n_events, int(n_events * label_fraction), replace=False))
        left = data.payments.take(pa.array(idx))
        left_path = Path(tmp) / "left.parquet"
        pq.write_table(left, left_path)
        del data
        console.log(
            f"generated {n_events} events, {left.num_rows} labels in {time.perf_counter() - t0:.1f} s"
        )

        spark = spark_session(app_name="tessera-bench-backfill")
        with PeakRss() as ours_mem:
            t0 = time.perf_counter()
            training_set(
                plan,
                "fraud_v1",
                str(left_path),
                {"payments": str(pay_path), "labels": str(lab_path)},
                spark=spark,
                out=Path(tmp) / "out",
            )
            ours_s = time.perf_counter() - t0
        n_buckets = spark.conf.get("spark.sql.shuffle.partitions")
        spark.stop()
        console.log(
            f"tessera: {left.num_rows} labels in {ours_s:.1f} s ({left.num_rows / ours_s:,.0f} labels/s), "
            f"peak RSS {ours_mem.peak / 2**30:.2f} GiB, tree CPU {ours_mem.cpu:.0f} s; "
            f"spark.sql.shuffle.partitions={n_buckets}, load average {os.getloadavg()[0]:.1f}"
        )
        sql, n_duck = duckdb_sql(plan, "fraud_v1")
        con = duckdb.connect()
        con.execute("SET threads = 2")
        with PeakRss() as duck_mem:
            t0 = time.perf_counter()
            con.execute(sql, {"payments": str(pay_path), "left": str(left_path)}).fetchall()
            duck_s = time.perf_counter() - t0
        n_features = len(plan.join("fraud_v1").output_schema) - len(plan.join("fraud_v1").left.schema)
        rows = left.num_rows
        table = Table(title=f"backfill, {n_events:,} events x {rows:,} labels (fraud_v1)")
        for col in ("engine", "features", "seconds", "labels/s", "peak RSS (tree)", "CPU s (tree)"):
            table.add_column(col)
        table.add_row(
            "tessera Spark backfill",
            str(n_features),
            f"{ours_s:.1f}",
            f"{rows / ours_s:,.0f}",
            f"{ours_mem.peak / 2**30:.2f} GiB",
            f"{ours_mem.cpu:.0f}",
        )
        table.add_row(
            "DuckDB RANGE windows",
            f"{n_duck} (count/sum)",
            f"{duck_s:.1f}",
            f"{rows / duck_s:,.0f}",
            f"{duck_mem.peak / 2**30:.2f} GiB",
            f"{duck_mem.cpu:.1f}",
        )
        console.print(table)
        console.print(f"ratio (ours / DuckDB time): {ours_s / duck_s:.1f}x")


if __name__ == "__main__":
    main()
