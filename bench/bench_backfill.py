"""Benchmark: the Spark backfill of fraud_v1 vs DuckDB RANGE-window SQL computing the same features.

    python bench/bench_backfill.py            # 1 M events x 10 % labels
    python bench/bench_backfill.py --large    # 10 M events
    python bench/bench_backfill.py --demo     # the demo data (seed 7, 3 days x 20 k/day), every payment a label

Prints rows/s (labels per second), both ratios (wall and CPU) and peak RSS of this process tree (driver, JVM,
Python workers). Our run computes all 133 features + 10 derivations. DuckDB runs twice:

* every feature its window SQL expresses (``duckdb_full_sql``, 132): count/sum/avg/min/max, var_pop/stddev_pop,
  approx_count_distinct (HLL), first/last (``arg_min``/``arg_max`` by event ts), first_k/last_k (``arg_min``/
  ``arg_max`` with n), top_k (``max(v, k)``), approx_percentile (``approx_quantile``), histogram; with the
  GroupBy's row logic (transpiled by sqlglot) and ``where`` per part, offsets as frames ``[t - D - L, t - D)``,
  lifetime as ``UNBOUNDED PRECEDING``, the labels source for merchant_fraud. Not computed: the bucketed sum
  (a map of per-bucket window sums has no window aggregate) and the derivations. Frames are ``[t - L, t)``
  without hop alignment (same work, different tail), ties by ts only.
* the 35 ``amount_usd`` count/sum features without offset (``duckdb_sql``), as before.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sqlglot
from rich.console import Console
from rich.table import Table

from features.compile import compile_repo
from features.synthetic import generate
from spark_jobs.backfill import training_set
from spark_jobs.bucket_fold import needed_columns
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


_DUCK_OPS = {
    "count": "count({v})",
    "sum": "sum({v})",
    "avg": "avg({v})",
    "min": "min({v})",
    "max": "max({v})",
    "variance": "var_pop({v})",
    "stddev": "stddev_pop({v})",
    "approx_unique_count": "approx_count_distinct({v})",
    "first": "arg_min({v}, {ts})",
    "last": "arg_max({v}, {ts})",
    "first_k": "arg_min({v}, {ts}, {k})",
    "last_k": "arg_max({v}, {ts}, {k})",
    "top_k": "max({v}, {k})",
    "bottom_k": "min({v}, {k})",
    "approx_percentile": "approx_quantile({v}, {percentiles})",
    "histogram": "histogram({v})",
}
"""fraud_v1 op -> DuckDB window aggregate (population variance/stddev as the op; first/last/.._k by event ts)."""


def _duck_expr(sql: str) -> str:
    """A plan SQL snippet (Spark dialect) in DuckDB's."""
    out: str = sqlglot.transpile(sql, read="spark", write="duckdb")[0]
    return out.replace("TIMESTAMP_MILLIS(", "EPOCH_MS(")


def _frame(w: Any) -> str:
    """``[t - D - L, t - D)`` as a RANGE frame over integer ms (no hop alignment: same work, tail differs)."""
    upper = f"{w.offset_ms + 1} PRECEDING"
    if w.length_ms is None:
        return f"RANGE BETWEEN UNBOUNDED PRECEDING AND {upper}"
    return f"RANGE BETWEEN {w.offset_ms + w.length_ms} PRECEDING AND {upper}"


def duckdb_full_sql(plan: Any, join_name: str) -> tuple[str, list[str], list[str]]:
    """RANGE-window SQL for every feature of the Join DuckDB's window aggregates express; returns the SQL,
    the features it computes and those it does not (with why)."""
    join = plan.join(join_name)
    kinds = {"payments": 0, "labels": 1}
    cols: list[str] = []  # per-GroupBy projected value columns over the union u
    windows: list[str] = []
    done: list[str] = []
    skipped: list[str] = []
    for pi, part in enumerate(join.parts):
        gb = plan.group_by(part.group_by)
        (key,) = gb.keys
        kind = kinds[gb.source.table]
        cond = f"kind = {kind}"
        if gb.row_logic.where:
            cond += f" AND ({_duck_expr(gb.row_logic.where)})"
        exprs = {c: f'"{c}"' for c in gb.row_logic.passthrough}
        exprs.update({n: _duck_expr(e) for n, e in (gb.row_logic.selects or {}).items()})
        ts = f"g{pi}_ts"
        cols.append(f"CASE WHEN {cond} THEN ts END AS {ts}")
        for c in needed_columns(gb):
            cols.append(f'CASE WHEN {cond} THEN {exprs.get(c, chr(34) + c + chr(34))} END AS "g{pi}_{c}"')
        for out_name, feat in part.features.items():
            f = gb.feature(feat)
            agg = gb.aggregations[f.agg_index]
            w = agg.windows[f.window_index]
            template = _DUCK_OPS.get(agg.op)
            if agg.bucket is not None or template is None:
                skipped.append(f"{out_name} ({agg.op}{' by ' + agg.bucket if agg.bucket else ''})")
                continue
            fn = template.format(
                v=f'"g{pi}_{agg.column}"',
                ts=ts,
                k=agg.k,
                percentiles=list(agg.percentiles or ()),
            )
            windows.append(f'{fn} OVER (PARTITION BY "{key}" ORDER BY ts {_frame(w)}) AS "{out_name}"')
            done.append(out_name)
    keys = sorted({k for p in join.parts for k in plan.group_by(p.group_by).keys})
    label_cols = sorted(
        {
            k
            for p in join.parts
            if plan.group_by(p.group_by).source.table == "labels"
            for k in plan.group_by(p.group_by).keys
        }
        | {"ts", "event_id", "is_fraud"}
    )
    folds = ", ".join(f'sum(hash("{n}"))' for n in done)  # every column used, so none is pruned
    key_cols = ", ".join(f'"{k}"' for k in keys)
    sql = f"""
        WITH u AS (
            SELECT *, 0 AS kind FROM read_parquet($payments)
            UNION ALL BY NAME
            SELECT {", ".join(label_cols)}, 1 AS kind FROM read_parquet($labels)
            UNION ALL BY NAME
            SELECT *, 2 AS kind FROM read_parquet($left)
        ), p AS (SELECT {key_cols}, ts, kind, {", ".join(cols)} FROM u)
        SELECT count(*), {folds} FROM (SELECT kind, {", ".join(windows)} FROM p) WHERE kind = 2
    """
    return sql, done, skipped


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--large", action="store_true", help="10 M events instead of 1 M")
    ap.add_argument(
        "--demo", action="store_true", help="what `make demo` backfills: 3 days x 20 k events/day"
    )
    ap.add_argument("--label-fraction", type=float, default=None, help="default 0.1 (1.0 with --demo)")
    ap.add_argument(
        "--duckdb-timeout",
        default="1800",
        help="stop a DuckDB query after this many seconds, or 'xF': F times our backfill's wall time "
        "(a DuckDB query still running at x0.5 already shows ours is within 2x)",
    )
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep the generated parquet here and reuse it when the same data is asked for again",
    )
    ap.add_argument("--spark-only", action="store_true", help="skip DuckDB")
    args = ap.parse_args()
    if args.demo:
        seed, days, events_per_day = 7, 3, 20_000
        label_fraction = 1.0 if args.label_fraction is None else args.label_fraction
    else:
        seed, days = 42, 30
        events_per_day = (10_000_000 if args.large else 1_000_000) // days
        label_fraction = 0.1 if args.label_fraction is None else args.label_fraction
    console = Console()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    plan = compile_repo(ROOT / "features" / "fraud")
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        t0 = time.perf_counter()
        pay_path, lab_path, left_path, n_events, n_labels = _data(
            args.data_dir, Path(tmp), seed, days, events_per_day, label_fraction
        )
        console.log(f"data: {n_events} events, {n_labels} labels in {time.perf_counter() - t0:.1f} s")

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
        spark.stop()
        console.log(
            f"tessera: {n_labels} labels in {ours_s:.1f} s ({n_labels / ours_s:,.0f} labels/s), "
            f"peak RSS {ours_mem.peak / 2**30:.2f} GiB, tree CPU {ours_mem.cpu:.0f} s; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        if args.spark_only:
            return
        timeout = (
            float(args.duckdb_timeout[1:]) * ours_s
            if args.duckdb_timeout.startswith("x")
            else float(args.duckdb_timeout)
        )
        params = {"payments": str(pay_path), "labels": str(lab_path), "left": str(left_path)}
        sql35, n35 = duckdb_sql(plan, "fraud_v1")
        sql_full, done, skipped = duckdb_full_sql(plan, "fraud_v1")
        duck = {}
        for label, sql in (("35", sql35), ("full", sql_full)):
            duck[label] = _run_duckdb(sql, params, timeout)
            seconds, mem = duck[label]
            console.log(
                f"DuckDB ({label}): {'> ' if seconds is None else ''}"
                f"{timeout if seconds is None else seconds:.1f} s, peak RSS {mem.peak / 2**30:.2f} GiB, "
                f"tree CPU {mem.cpu:.0f} s, load average {os.getloadavg()[0]:.1f}"
            )
        join = plan.join("fraud_v1")
        n_features = len(join.output_schema) - len(join.left.schema)
        rows = n_labels
        table = Table(title=f"backfill, {n_events:,} events x {rows:,} labels (fraud_v1)")
        for col in ("engine", "features", "seconds", "labels/s", "peak RSS (tree)", "CPU s (tree)"):
            table.add_column(col)
        table.add_row(
            "tessera Spark backfill",
            f"{n_features} (all + derivations)",
            f"{ours_s:.1f}",
            f"{rows / ours_s:,.0f}",
            f"{ours_mem.peak / 2**30:.2f} GiB",
            f"{ours_mem.cpu:.0f}",
        )
        for label, what in (("full", f"{len(done)} (every expressible)"), ("35", f"{n35} (count/sum)")):
            seconds, mem = duck[label]
            table.add_row(
                "DuckDB RANGE windows",
                what,
                f"> {timeout:.0f}" if seconds is None else f"{seconds:.1f}",
                "" if seconds is None else f"{rows / seconds:,.0f}",
                f"{mem.peak / 2**30:.2f} GiB",
                f"{mem.cpu:.0f}",
            )
        console.print(table)
        console.print(f"DuckDB does not compute: {', '.join(skipped) or 'none'} (plus the derivations)")
        for label, what in (
            ("full", f"all {len(done)} expressible features"),
            ("35", f"the {n35} count/sum"),
        ):
            seconds, mem = duck[label]
            if seconds is None:
                console.print(
                    f"ratio vs DuckDB {what}: DuckDB did not finish in {timeout:.0f} s "
                    f"(ours < {ours_s / timeout:.2f}x wall, < {ours_mem.cpu / max(mem.cpu, 1e-9):.2f}x CPU)"
                )
                continue
            console.print(
                f"ratio vs DuckDB {what}: {ours_s / seconds:.2f}x wall, "
                f"{ours_mem.cpu / max(mem.cpu, 1e-9):.2f}x CPU"
            )


def _data(
    keep: Path | None, tmp: Path, seed: int, days: int, events_per_day: int, label_fraction: float
) -> tuple[Path, Path, Path, int, int]:
    """(payments, labels, left) parquet paths and their row counts; generated, or reused from ``keep``."""
    folder = tmp if keep is None else keep / f"seed{seed}-d{days}-e{events_per_day}"
    pay_path, lab_path = folder / "payments.parquet", folder / "labels.parquet"
    left_path = folder / f"left-{label_fraction:g}.parquet"
    if not (pay_path.exists() and lab_path.exists()):
        data = generate(seed=seed, days=days, events_per_day=events_per_day)
        partial = folder.with_name(folder.name + ".partial")  # renamed once both files are whole
        data.write(partial)
        del data
        if folder.exists():
            shutil.rmtree(folder)  # held only an unfinished run's left side
        partial.rename(folder)
    n_events = pq.ParquetFile(pay_path).metadata.num_rows
    if not left_path.exists():
        payments = pq.read_table(pay_path)
        rng = np.random.default_rng(0)
        idx = np.sort(rng.choice(n_events, int(n_events * label_fraction), replace=False))
        pq.write_table(payments.take(pa.array(idx)), left_path.with_suffix(".tmp"))
        left_path.with_suffix(".tmp").rename(left_path)
    n_labels = pq.ParquetFile(left_path).metadata.num_rows
    return pay_path, lab_path, left_path, n_events, n_labels


def _run_duckdb(sql: str, params: dict[str, str], timeout: float) -> tuple[float | None, PeakRss]:
    """Seconds (None when interrupted after ``timeout`` or out of its 8 GB) and memory/CPU of one DuckDB query,
    2 threads."""
    con = duckdb.connect()
    con.execute("SET threads = 2")
    # At 10 M events the every-feature query grew past 19 GiB of the box's 24; past this it spills or gives up.
    con.execute("SET memory_limit = '8GB'")
    timer = threading.Timer(timeout, con.interrupt)
    with PeakRss() as mem:
        t0 = time.perf_counter()
        timer.start()
        try:
            con.execute(sql, {k: v for k, v in params.items() if f"${k}" in sql}).fetchall()
            seconds: float | None = time.perf_counter() - t0
        except (duckdb.InterruptException, duckdb.OutOfMemoryException):
            seconds = None  # reported as "did not finish"
        finally:
            timer.cancel()
    con.close()
    return seconds, mem


if __name__ == "__main__":
    main()
