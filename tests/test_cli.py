"""The `tessera` command as a user runs it: exit codes, diagnostics, plan output, the demo."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
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


@pytest.mark.services
@pytest.mark.spark
def test_demo_runs_end_to_end_on_small_data(tmp_path: Path) -> None:
    """`make demo` on little data: every step runs against the real services and stops them after."""
    summary = run_demo(
        tmp_path / "demo", days=3, events_per_day=1_500, live=12, live_rate=20, fraud_scale=4.0
    )
    assert summary["features"] >= 100
    assert summary["stream"]["applied"] > 0 and summary["stream"].get("flush_errors", 0) == 0
    assert sum(summary["decisions"].values()) >= 12  # the live traffic plus a held-out attack
    assert (tmp_path / "demo" / "training_set.parquet").exists()
    assert (tmp_path / "demo" / "model" / "model.json").exists()
    consistency = summary["consistency"]
    assert consistency["rows"] >= 12 and Path(consistency["report"]).exists()
    assert consistency["causes"].get("unexplained", 0) == 0, consistency["causes"]
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True, text=True).stdout
    assert not leftovers.strip(), f"processes left running: {leftovers}"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("TESSERA_FEATURE_LOG_SAMPLE", "abc"),
        ("TESSERA_FEATURE_LOG_SAMPLE", "5"),
        ("TESSERA_API_PORT", "http"),
    ],
)
def test_serve_refuses_a_malformed_setting_by_name(var: str, value: str) -> None:
    """A bad ``TESSERA_*`` value stops ``tessera serve`` before anything starts, naming the variable and what it
    expects (exit 2), not a traceback from a worker."""
    result = runner.invoke(app, ["serve", str(ROOT / "features" / "fraud")], env={var: value})
    assert result.exit_code == 2, result.output
    assert f"{var}={value!r}: expected" in result.output
