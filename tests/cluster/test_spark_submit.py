"""The Spark jobs on a cluster-shaped config: ``spark-submit`` to a real standalone Master + Worker on loopback.

Upload, backfill and consistency run through ``spark-submit --master spark://… --py-files tessera.zip
spark_jobs/submit.py …`` from a scratch working directory with ``PYTHONPATH`` removed, so the driver and the
executors (the Worker's own JVM and Python workers) import tessera only from the zip. Each result must equal the
same job run in local mode in this process: the bulk store's values byte for byte, the training set row for row,
the consistency summary (counts, causes, examples) field for field, including one injected online error.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.compile import compile_repo
from features.consistency import UNEXPLAINED
from features.plan import Plan
from features.reference import row_function
from features.synthetic import generate
from features.windows import DAY_MS, align
from kvstore.codec import KeyLayout, encode_entity
from kvstore.embedded import EmbeddedBulkStore
from serving.feature_log import FeatureLogger
from serving.fetcher import FeatureVector
from spark_jobs.backfill import training_set
from spark_jobs.consistency import run_consistency
from spark_jobs.standalone import StandaloneCluster, spark_env
from spark_jobs.submit import build_py_files, submit_argv
from spark_jobs.upload import batch_meta_key, run_upload

pytestmark = [pytest.mark.spark, pytest.mark.services, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
JOIN = "fraud_v1"


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).date().isoformat()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("cluster-world")
    plan = compile_repo(ROOT / "features" / "fraud")
    ds = generate(
        seed=21, days=3, events_per_day=200, n_cards=40, n_merchants=10, label_delay_days=(0.2, 1.0)
    )
    offline = tmp / "offline"
    ds.write(offline)
    day3 = align(ds.start_ms, DAY_MS) + 2 * DAY_MS
    pay = ds.payments
    rows = [i for i, t in enumerate(pay.column("ts").to_pylist()) if day3 <= t < day3 + DAY_MS]
    left = pay.take(pa.array(rows[::6][:30]))
    pq.write_table(left, tmp / "left.parquet")
    plan_file = tmp / "plan.json"
    plan_file.write_text(plan.to_json())
    return {
        "tmp": tmp,
        "plan": plan,
        "plan_file": plan_file,
        "ds": ds,
        "offline": offline,
        "sources": {"payments": str(offline / "payments.parquet"), "labels": str(offline / "labels.parquet")},
        "left": tmp / "left.parquet",
        "upload_date": _iso(day3 - DAY_MS),  # boundary: the start of the third day
        "log_date": _iso(day3),
        "zip": build_py_files(tmp / "tessera.zip"),
    }


def _submit(cluster: StandaloneCluster, world: dict[str, Any], job: str, *args: str) -> dict[str, Any]:
    scratch = world["tmp"] / f"cwd-{job}"
    scratch.mkdir(exist_ok=True)
    env = spark_env()
    env.pop("PYTHONPATH", None)  # the driver and the executors import tessera from the zip only
    result = scratch / "result.json"
    argv = submit_argv(
        cluster.master_url,
        job,
        [str(world["plan_file"]), *args, "--data", str(world["offline"]), "--result", str(result)],
        world["zip"],
        conf={"spark.executor.memory": "1g", "spark.sql.shuffle.partitions": "4"},
    )
    proc = subprocess.run(argv, cwd=scratch, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode in (0, 1), f"spark-submit {job} failed:\n{proc.stderr[-4000:]}"
    out: dict[str, Any] = json.loads(result.read_text())
    out["_rc"] = proc.returncode
    return out


def _entity_keys(plan: Plan, ds: Any) -> dict[str, list[bytes]]:
    tables = {"payments": ds.payments.to_pylist(), "labels": ds.labels.to_pylist()}
    keys: dict[str, list[bytes]] = {}
    for gb in plan.group_bys:
        if not gb.online or gb.batch is None:
            continue
        fn = row_function(gb)
        entities = set()
        for r in tables[gb.source.table]:
            p = fn(r)
            if p is not None and all(p.get(k) is not None for k in gb.keys):
                entities.add(tuple(p[k] for k in gb.keys))
        layout = KeyLayout(gb.batch.dataset, gb.semantic_hash)
        keys[gb.batch.dataset] = [batch_meta_key(gb)] + [
            layout.key(encode_entity(list(e))) for e in sorted(entities, key=repr)
        ]
    return keys


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _write_log(world: dict[str, Any], offline: pa.Table, root: Path) -> str:
    """Log the local training set's vectors as the fetcher would; the first row's first count is off by one."""
    plan: Plan = world["plan"]
    join = plan.join(JOIN)
    maps = {c for c, t in join.output_schema.items() if t.startswith("map<")}
    bad_col = next(c for c in join.output_schema if "count" in c and c not in join.left.schema)
    with FeatureLogger(root, sample_rate=1.0) as logger:
        for i, r in enumerate(offline.to_pylist()):
            values = {c: (dict(r[c]) if c in maps and r[c] is not None else r[c]) for c in join.output_schema}
            if i == 0:
                values[bad_col] = (values[bad_col] or 0) + 1
            keys = {p.group_by: [r[p.key_map[k]] for k in plan.group_by(p.group_by).keys] for p in join.parts}
            batch = {p.group_by: (world["upload_date"], None) for p in join.parts}
            request = {c: r[c] for c in join.left.schema}
            assert logger.log(
                FeatureVector(JOIN, int(r["ts"]), values),
                request,
                plan_hash=plan.plan_hash,
                keys=keys,
                batch=batch,
            )
        assert logger.flush()
    return bad_col


def test_upload_backfill_consistency_on_a_standalone_cluster_equal_local_mode(
    spark_cluster: StandaloneCluster, world: dict[str, Any], spark: Any
) -> None:
    plan: Plan = world["plan"]
    tmp: Path = world["tmp"]

    # ---- upload -------------------------------------------------------------------------------------------
    up = _submit(
        spark_cluster, world, "upload", "--date", world["upload_date"], "--store", str(tmp / "bulk-c")
    )
    with EmbeddedBulkStore(tmp / "bulk-l") as local_store:
        local = run_upload(plan, world["upload_date"], world["sources"], local_store, spark=spark)
    assert [(u["group_by"], u["keys"]) for u in up["uploads"]] == [
        (u.group_by, u.keys) for u in local.uploads
    ]
    assert sum(u.keys for u in local.uploads) > 50
    keys = _entity_keys(plan, world["ds"])
    with EmbeddedBulkStore(tmp / "bulk-c") as cs, EmbeddedBulkStore(tmp / "bulk-l") as ls:
        for dataset, ks in keys.items():
            got, want = cs.multi_get(dataset, ks), ls.multi_get(dataset, ks)
            assert got == want, dataset
            assert (
                batch_meta_key(next(g for g in plan.group_bys if g.batch and g.batch.dataset == dataset))
                in got
            )

    # ---- backfill ------------------------------------------------------------------------------------------
    _submit(
        spark_cluster,
        world,
        "backfill",
        "--join",
        JOIN,
        "--left",
        str(world["left"]),
        "--out",
        str(tmp / "train-c"),
    )
    cluster_set = pq.read_table(tmp / "train-c")
    local_set = training_set(plan, JOIN, str(world["left"]), world["sources"], spark=spark)
    assert local_set is not None and local_set.num_rows == 30
    assert cluster_set.column_names == local_set.column_names
    assert _same(cluster_set.to_pylist(), local_set.to_pylist())

    # ---- consistency ---------------------------------------------------------------------------------------
    log_root = tmp / "feature_log"
    bad_col = _write_log(world, local_set, log_root)
    cons = _submit(
        spark_cluster,
        world,
        "consistency",
        "--join",
        JOIN,
        "--date",
        world["log_date"],
        "--log-dir",
        str(log_root),
        "--out",
        str(tmp / "reports"),
    )
    assert cons["_rc"] == 1 and cons["exceeded"]  # the injected error is unexplained: a scheduler would alert
    cluster_summary = json.loads(Path(cons["checks"][JOIN]["summary"]).read_text())
    local_summary = run_consistency(plan, JOIN, world["log_date"], log_root, world["sources"], spark=spark)
    local_summary = json.loads(json.dumps(local_summary, default=str))
    for s in (cluster_summary, local_summary):
        for volatile in ("seconds", "generated_at"):
            s.pop(volatile)
    assert cluster_summary["rows"] == 30 and cluster_summary["inconsistent"] == 1
    assert cluster_summary["causes"] == {UNEXPLAINED: 1}
    assert [e["column"] for e in cluster_summary["examples"]] == [bad_col]
    assert cluster_summary == local_summary
    assert os.path.getsize(cons["checks"][JOIN]["report"]) > 1000
