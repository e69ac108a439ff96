"""The Feast side-by-side bench (bench/bench_feast.py) serves the *same* features: its generated Feast repo has one
FeatureView per GroupBy of fraud_v1 with the plan's column names and matching types, one entity per key, and a
FeatureService over all views. Checked on the generated source (ast), so no Feast install is needed; the end-to-end
run against ``.venv-feast`` is ``slow`` and skipped where that venv is absent.
"""

from __future__ import annotations

import ast
import datetime as dt
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow.parquet as pq
import pytest

from features.compile import compile_repo
from features.plan import Plan

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench_feast.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_feast_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def plan() -> Plan:
    return compile_repo(ROOT / "features" / "fraud")


def _kwargs(call: ast.Call) -> dict[str, ast.expr]:
    return {k.arg: k.value for k in call.keywords if k.arg is not None}


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name
    ]


def test_one_view_per_group_by_with_the_plan_columns(bench: ModuleType, plan: Plan, tmp_path: Path) -> None:
    join = plan.join("fraud_v1")
    tree = ast.parse(bench.repo_source(bench.feast_views(plan), tmp_path))

    views: dict[str, dict[str, str]] = {}
    for call in _calls(tree, "FeatureView"):
        kw = _kwargs(call)
        name = ast.literal_eval(kw["name"])
        schema = kw["schema"]
        assert isinstance(schema, ast.List)
        fields: dict[str, str] = {}
        for f in schema.elts:
            assert isinstance(f, ast.Call)
            fk = _kwargs(f)
            fields[ast.literal_eval(fk["name"])] = ast.unparse(fk["dtype"])
        views[name] = fields

    assert list(views) == [p.group_by for p in join.parts]
    for part in join.parts:
        assert list(views[part.group_by]) == list(part.features), part.group_by
        for col, dtype in views[part.group_by].items():
            assert dtype == bench.FEAST_TYPES[join.output_schema[col]], col
    # Every GroupBy column of the Join is served, once.
    served = [c for cols in views.values() for c in cols]
    assert sorted(served) == sorted(c for p in join.parts for c in p.features)
    assert len(served) == len(set(served))


def test_entities_and_service(bench: ModuleType, plan: Plan, tmp_path: Path) -> None:
    tree = ast.parse(bench.repo_source(bench.feast_views(plan), tmp_path))
    entities = {
        ast.literal_eval(_kwargs(c)["name"]): ast.literal_eval(_kwargs(c)["join_keys"])
        for c in _calls(tree, "Entity")
    }
    assert entities == {
        "card": ["card_id"],
        "customer": ["customer_id"],
        "merchant": ["merchant_id"],
        "device": ["device_id"],
        "ip": ["ip"],
    }
    (service,) = _calls(tree, "FeatureService")
    kw = _kwargs(service)
    assert ast.literal_eval(kw["name"]) == "fraud_v1"
    assert isinstance(kw["features"], ast.List)
    assert [ast.unparse(e) for e in kw["features"].elts] == [
        f"{p.group_by}_view" for p in plan.join("fraud_v1").parts
    ]
    yaml = bench.store_yaml(tmp_path)
    assert "type: sqlite" in yaml and str(tmp_path / "online_store.db") in yaml
    yaml = bench.store_yaml(tmp_path, redis="127.0.0.1:6390")
    assert "type: redis" in yaml and "connection_string: 127.0.0.1:6390" in yaml and "sqlite" not in yaml


def test_view_tables_hold_one_row_per_present_key(
    bench: ModuleType, plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # write_view_tables reuses bench/bench_serve.py's Arrow types
    join = plan.join("fraud_v1")
    views = bench.feast_views(plan)
    base: dict[str, Any] = {c: None for c in join.output_schema}
    vectors = [
        dict(base, card_id="c1", customer_id="u1", merchant_id="m1", device_id="d1", ip="i1"),
        dict(base, card_id="c1", customer_id="u2", merchant_id="m1", device_id=None, ip="i2"),
        dict(base, card_id="c2", customer_id="u2", merchant_id="m2", device_id=None, ip=None),
    ]
    vectors[0]["customer_channel_histogram_30d"] = {"web": 2, "pos": 1}
    vectors[0]["card_amount_usd_last5_1d"] = [1.5, 2.5]
    at_ms = 1_700_000_000_000
    bench.write_view_tables(views, vectors, at_ms, tmp_path)

    want_keys = {"card": ["c1", "c2"], "customer": ["u1", "u2"], "device": ["d1"], "ip": ["i1", "i2"]}
    for v in views:
        table = pq.read_table(tmp_path / v.parquet)
        assert table.column_names == [v.entity.join_key, *v.columns, bench.TIMESTAMP]
        if v.name in want_keys:
            assert table.column(v.entity.join_key).to_pylist() == want_keys[v.name]
        stamps = set(table.column(bench.TIMESTAMP).to_pylist())
        assert stamps == {dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC)}
    customer = pq.read_table(tmp_path / "customer.parquet").to_pylist()
    assert customer[0]["customer_channel_histogram_30d"] == '{"web": 2, "pos": 1}'  # Feast's Json type
    card = pq.read_table(tmp_path / "card.parquet").to_pylist()
    assert card[0]["card_amount_usd_last5_1d"] == [1.5, 2.5]


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_feast_serves_tessera_values_side_by_side(store: str) -> None:
    """End to end, small: Feast applies, materializes and returns exactly tessera's values (the bench exits 1 on
    any mismatch), and the side-by-side table is printed with both servers answering."""
    venv = Path(os.environ.get("FEAST_VENV", ROOT / ".venv-feast"))
    if not (venv / "bin" / "feast").exists():
        pytest.skip("no .venv-feast (scripts/setup-feast.sh)")
    if store == "redis" and shutil.which("redis-server") is None:
        pytest.skip("no redis-server (scripts/setup-feast.sh installs it)")
    args = ["--online-store", store, "--rates", "20", "--seconds", "2", "--n", "50", "--fetch-n", "50"]
    args += ["--entities", "20", "--serial-n", "30"]
    args += ["--events-per-day", "1000", "--days", "2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(BENCH), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " 0 mismatches" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("| HTTP @ 20/s")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    # Both servers answered (at least half the rate: the box is shared, so no latency bound here).
    assert float(cells[1]) >= 10 and float(cells[7]) >= 10, rows[0]
