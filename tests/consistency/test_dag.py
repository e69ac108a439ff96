"""The generated Airflow DAG parses (``ast``, no Airflow) and runs the same commands as ``tessera nightly``."""

from __future__ import annotations

import ast
from pathlib import Path

from typer.testing import CliRunner

from tessera.cli import app
from tessera.nightly import airflow_dag

ROOT = Path(__file__).resolve().parents[2]


def _operators(tree: ast.Module) -> dict[str, dict[str, str]]:
    ops: dict[str, dict[str, str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "BashOperator":
            kw = {k.arg: k.value for k in node.keywords}
            task_id = ast.literal_eval(kw["task_id"])
            ops[task_id] = {"bash_command": ast.literal_eval(kw["bash_command"])}
    return ops


def test_generated_dag_parses_and_chains_upload_before_each_check() -> None:
    source = airflow_dag(["fraud_v1", "other-join"], schedule="15 2 * * *")
    tree = ast.parse(source)
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("airflow.operators.bash", "BashOperator") in imports and ("airflow", "DAG") in imports
    ops = _operators(tree)
    assert set(ops) == {"upload", "consistency_fraud_v1", "consistency_other_join"}
    assert ops["upload"]["bash_command"].startswith("tessera upload features/fraud --date {{ ds }}")
    assert (
        ops["consistency_fraud_v1"]["bash_command"] == "tessera consistency --join fraud_v1 --date {{ ds }}"
    )
    edges = {
        (n.left.id, n.right.id)
        for n in ast.walk(tree)
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.RShift)
        and isinstance(n.left, ast.Name) and isinstance(n.right, ast.Name)
    }  # fmt: skip
    assert edges == {("upload", "consistency_fraud_v1"), ("upload", "consistency_other_join")}
    dag_call = next(
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "DAG"
    )
    kw = {
        k.arg: ast.literal_eval(k.value)
        for k in dag_call.keywords
        if k.arg in ("dag_id", "schedule", "catchup")
    }
    assert kw == {"dag_id": "tessera_nightly", "schedule": "15 2 * * *", "catchup": False}
    compile(source, "dag.py", "exec")


def test_dag_command_writes_a_dag_for_every_online_join(tmp_path: Path) -> None:
    out = tmp_path / "dag.py"
    res = CliRunner().invoke(app, ["dag", "--out", str(out), "--repo", str(ROOT / "features" / "fraud")])
    assert res.exit_code == 0, res.output
    ops = _operators(ast.parse(out.read_text()))
    assert "consistency_fraud_v1" in ops and "upload" in ops


def test_dag_with_a_cluster_master_runs_every_step_through_spark_submit(tmp_path: Path) -> None:
    out = tmp_path / "dag.py"
    res = CliRunner().invoke(
        app,
        [
            "dag",
            "--out",
            str(out),
            "--repo",
            "features/fraud",
            "--spark-master",
            "spark://spark-master:7077",
        ],
    )
    assert res.exit_code == 0, res.output
    source = out.read_text()
    compile(source, "dag.py", "exec")
    ops = _operators(ast.parse(source))
    assert set(ops) == {"upload", "consistency_fraud_v1"}
    submit = "--repo features/fraud --spark-master spark://spark-master:7077"
    assert ops["upload"]["bash_command"] == f"tessera nightly --date {{{{ ds }}}} --no-check {submit}"
    assert (
        ops["consistency_fraud_v1"]["bash_command"]
        == f"tessera consistency --join fraud_v1 --date {{{{ ds }}}} {submit}"
    )
    for command in ops.values():  # the commands the DAG runs are the CLI's
        argv = command["bash_command"].replace("{{ ds }}", "2024-03-02").split()
        res = CliRunner().invoke(app, [*argv[1:], "--help"])
        assert res.exit_code == 0 and "--spark-master" in res.output, res.output
