"""The `tessera` command as a user runs it: exit codes, diagnostics, plan output, the demo."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from features.plan import Plan
from tessera.cli import app
from tessera.demo import run_demo

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def test_validate_ok_on_the_fraud_repo() -> None:
    result = runner.invoke(app, ["validate", str(ROOT / "features" / "fraud")])
    assert result.exit_code == 0, result.output
    assert "6 GroupBys, 1 Joins" in result.output


def test_validate_fails_with_every_problem_and_its_line() -> None:
    result = runner.invoke(app, ["validate", str(ROOT / "tests" / "fixtures" / "repos" / "bad_window")])
    assert result.exit_code == 1
    assert result.output.count("error[") == 5
    assert "bad_window/defs.py:16" in result.output


def test_plan_json_is_the_plan() -> None:
    result = runner.invoke(app, ["plan", str(ROOT / "features" / "fraud"), "--json"])
    assert result.exit_code == 0, result.output
    plan = Plan.from_json(result.output)
    assert json.loads(result.output)["plan_hash"] == plan.plan_hash
    assert {g.name for g in plan.group_bys} == {
        "card",
        "customer",
        "merchant",
        "merchant_fraud",
        "device",
        "ip",
    }


def test_plan_summary_shows_windows_tiles_and_datasets() -> None:
    result = runner.invoke(app, ["plan", str(ROOT / "features" / "fraud")])
    assert result.exit_code == 0, result.output
    for text in (
        "GroupBy card",
        "amount_usd_sum_30d",
        "is_fraud_avg_30d_off7d",
        "stream: tiles 1s",
        "bulk dataset card.",
        "payments.dlq",
        "Join fraud_v1",
    ):
        assert text in result.output, text


def test_plan_refuses_a_bad_repo() -> None:
    result = runner.invoke(app, ["plan", str(ROOT / "tests" / "fixtures" / "repos" / "bad_sql")])
    assert result.exit_code == 1


def test_demo_runs_end_to_end_on_small_data(tmp_path: Path) -> None:
    summary = run_demo(tmp_path / "demo", days=1, events_per_day=1_500, sample=10)
    assert summary["sample_rows"] == 10 and summary["features"] >= 100
    assert (tmp_path / "demo" / "fraud_v1_sample.parquet").exists()
    # Twice in a row works: the folder is made anew.
    run_demo(tmp_path / "demo", days=1, events_per_day=1_500, sample=5)
