"""Profile the backfill's per-bucket fold without Spark, on a sample of keys of one GroupBy.

    python bench/profile_fold.py DATA_DIR card --top 5 --rand 300 [--profile] [--out result.parquet]

DATA_DIR holds bench_backfill's ``payments.parquet``, ``labels.parquet`` and ``left-0.1.parquet``. Takes the
``--top`` busiest keys plus ``--rand`` random ones (seeded), applies the GroupBy's row logic (the compiled
Python of the same SQL), builds the events and queries the way ``spark_jobs.backfill`` hands them to
``fold_bucket`` and prints the fold's CPU time per event and per query (optionally a cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import pstats
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import features
from features.compile import compile_repo
from features.sql import compile_row_logic
from spark_jobs.bucket_fold import KEY, QID, TIE, TS, T, fold_bucket, needed_columns

ap = argparse.ArgumentParser()
ap.add_argument("data")
ap.add_argument("part")
ap.add_argument("--top", type=int, default=5)
ap.add_argument("--rand", type=int, default=200)
ap.add_argument("--skip-top", type=int, default=0)
ap.add_argument("--profile", action="store_true")
ap.add_argument("--out")
ap.add_argument("--features", default=None, help="comma list of substrings: keep only matching features")
a = ap.parse_args()
plan = compile_repo(Path(features.__file__).parent / "fraud")
gb = plan.group_by(a.part)
if a.features:
    subs = a.features.split(",")
    feats = [f for f in gb.features if any(s in f.name for s in subs)]
    gb = dataclasses.replace(gb, features=tuple(feats) if isinstance(gb.features, tuple) else feats)
keycol = gb.keys[0]
src = Path(a.data) / ("labels.parquet" if gb.source.table == "labels" else "payments.parquet")
t = pq.read_table(src)
t = t.filter(pc.is_valid(t[keycol]))
counts = (
    t.group_by(keycol)
    .aggregate([([], "count_all")])
    .sort_by([("count_all", "descending"), (keycol, "ascending")])
)
keys = counts.column(keycol).to_pylist()
rng = np.random.default_rng(1)
sample = keys[a.skip_top : a.skip_top + a.top] + [
    keys[i] for i in rng.choice(len(keys), a.rand, replace=False)
]
t = t.filter(pc.is_in(t[keycol], pa.array(sample)))
logic = compile_row_logic(
    gb.row_logic.selects, gb.row_logic.where, gb.source.schema, passthrough=gb.row_logic.passthrough
)
projected = [logic.python_fn(r) for r in t.to_pylist()]
keep = [i for i, r in enumerate(projected) if r is not None]
rows = [r for r in projected if r is not None]
tt = t.take(pa.array(keep, pa.int64()))
ev = {
    KEY: pa.array([str(k) for k in tt[keycol].to_pylist()], pa.string()),
    TS: pa.array(tt[gb.source.time_column].to_numpy(), pa.int64()),
    TIE: pa.array(
        tt[gb.source.tie_break].to_numpy() if gb.source.tie_break else np.zeros(len(tt), np.int64), pa.int64()
    ),
}
for c in needed_columns(gb):
    ev[c] = pa.array([r.get(c) for r in rows])
events = pa.table(ev)
left = pq.read_table(Path(a.data) / "left-0.1.parquet", columns=["ts", keycol])
left = left.append_column(QID, pa.array(np.arange(left.num_rows), pa.int64()))
left = left.filter(pc.is_in(left[keycol], pa.array(sample)))
queries = pa.table({QID: left[QID], KEY: left[keycol].cast(pa.string()), T: left["ts"]})
print(
    f"{a.part}: {len(sample)} keys, {events.num_rows} events, {queries.num_rows} queries, {len(gb.features)} features",
    flush=True,
)
pr = cProfile.Profile() if a.profile else None
c0 = time.process_time()
if pr:
    pr.enable()
res = fold_bucket(events, queries, gb)
if pr:
    pr.disable()
cpu = time.process_time() - c0
print(
    f"fold CPU {cpu:.2f}s = {cpu / events.num_rows * 1e6:.1f} us/event, {cpu / queries.num_rows * 1e6:.1f} us/query",
    flush=True,
)
if a.out:
    pq.write_table(res.sort_by(QID), a.out)
if pr:
    st = pstats.Stats(pr)
    st.sort_stats("tottime").print_stats(18)
