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
            values: dict[str, Any] = {
                c: (dict(r[c]) if c in maps and r[c] is not None else r[c]) for c in join.output_schema
            }
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


@pytest.fixture(scope="module")
def local(world: dict[str, Any], spark: Any) -> dict[str, Any]:
    """The local-mode results (this process, ``local[2]``) and the feature log both modes check."""
    plan: Plan = world["plan"]
    training = training_set(plan, JOIN, str(world["left"]), world["sources"], spark=spark)
    assert training is not None and training.num_rows == 30
    log_root = world["tmp"] / "feature_log"
    bad_col = _write_log(world, training, log_root)
    summary = run_consistency(plan, JOIN, world["log_date"], log_root, world["sources"], spark=spark)
    return {
        "training": training,
        "log_root": log_root,
        "bad_col": bad_col,
        "summary": _stable(json.loads(json.dumps(summary, default=str))),
    }


def _stable(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in ("seconds", "generated_at")}


def test_upload_backfill_consistency_on_a_standalone_cluster_equal_local_mode(
    spark_cluster: StandaloneCluster, world: dict[str, Any], local: dict[str, Any], spark: Any
) -> None:
    plan: Plan = world["plan"]
    tmp: Path = world["tmp"]

    # ---- upload -------------------------------------------------------------------------------------------
    up = _submit(
        spark_cluster, world, "upload", "--date", world["upload_date"], "--store", str(tmp / "bulk-c")
    )
    with EmbeddedBulkStore(tmp / "bulk-l") as local_store:
        uploaded = run_upload(plan, world["upload_date"], world["sources"], local_store, spark=spark)
    assert [(u["group_by"], u["keys"]) for u in up["uploads"]] == [
        (u.group_by, u.keys) for u in uploaded.uploads
    ]
    assert sum(u.keys for u in uploaded.uploads) > 50
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
    local_set = local["training"]
    assert cluster_set.column_names == local_set.column_names
    assert _same(cluster_set.to_pylist(), local_set.to_pylist())

    # ---- consistency ---------------------------------------------------------------------------------------
    cons = _submit(
        spark_cluster,
        world,
        "consistency",
        "--join",
        JOIN,
        "--date",
        world["log_date"],
        "--log-dir",
        str(local["log_root"]),
        "--out",
        str(tmp / "reports"),
    )
    assert cons["_rc"] == 1 and cons["exceeded"]  # the injected error is unexplained: a scheduler would alert
    cluster_summary = _stable(json.loads(Path(cons["checks"][JOIN]["summary"]).read_text()))
    assert cluster_summary["rows"] == 30 and cluster_summary["inconsistent"] == 1
    assert cluster_summary["causes"] == {UNEXPLAINED: 1}
    assert [e["column"] for e in cluster_summary["examples"]] == [local["bad_col"]]
    assert cluster_summary == local["summary"]
    assert os.path.getsize(cons["checks"][JOIN]["report"]) > 1000


def test_nightly_with_a_cluster_master_submits_upload_and_check(
    spark_cluster: StandaloneCluster,
    world: dict[str, Any],
    local: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``tessera nightly --spark-master spark://…``: the CLI builds the plan JSON and the zip and submits both."""
    from typer.testing import CliRunner

    from tessera.cli import app

    data = world["tmp"] / "nightly-data"
    monkeypatch.setenv("TESSERA_DATA_DIR", str(data))
    monkeypatch.setenv("TESSERA_OFFLINE_DIR", str(world["offline"]))
    monkeypatch.setenv("TESSERA_BULK_STORE", f"embedded:{data / 'bulk'}")
    monkeypatch.setenv("TESSERA_FEATURE_LOG", str(local["log_root"]))
    monkeypatch.delenv("TESSERA_SPARK_MASTER", raising=False)
    args = [
        "nightly",
        "--repo",
        str(ROOT / "features" / "fraud"),
        "--date",
        world["log_date"],
        "--join",
        JOIN,
    ]
    res = CliRunner().invoke(app, [*args, "--spark-master", spark_cluster.master_url])
    assert res.exit_code == 1, res.output  # the injected error
    result = json.loads(res.output[res.output.index("{") :])
    plan: Plan = world["plan"]
    online = [g for g in plan.group_bys if g.online and g.batch is not None]
    assert [u["group_by"] for u in result["uploads"]] == [g.name for g in online]
    with EmbeddedBulkStore(data / "bulk") as store:
        assert all(store.current_version(g.batch.dataset) == world["log_date"] for g in online if g.batch)
    check = result["checks"][JOIN]
    assert check["rows"] == 30 and check["unexplained"] == 1 and check["exceeded"]
    assert Path(check["report"]).is_relative_to(data / "reports")
    summary = _stable(json.loads((Path(check["report"]).parent / "summary.json").read_text()))
    assert summary == local["summary"]
    assert (data / "submit" / "tessera.zip").exists()
