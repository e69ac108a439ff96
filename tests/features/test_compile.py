"""The compiler: golden plans and diagnostics for several definition sets, and plan round-trips.

Regenerate the golden files after an intended change with ``UPDATE_GOLDEN=1 make test``; review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from features.compile import compile_repo, validate_repo
from features.diagnostics import DefinitionError
from features.discovery import load_repo
from features.plan import Plan

HERE = Path(__file__).resolve().parent.parent / "fixtures"
REPOS = HERE / "repos"
GOLDEN = HERE / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
ROOT = Path(__file__).resolve().parents[2]


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.write_text(text)
        if not UPDATE:
            pytest.fail(f"golden file {path} was missing and has been written; review and commit it")
    assert text == path.read_text(), f"{name} differs from the golden file (UPDATE_GOLDEN=1 to accept)"


def _diagnostics_text(repo_dir: Path) -> str:
    diags = validate_repo(load_repo(repo_dir))
    return "\n".join(d.render(str(repo_dir)) for d in diags) + "\n"


@pytest.mark.parametrize("name", ["bad_column", "bad_sql", "bad_window", "duplicate_name"])
def test_bad_definitions_give_golden_diagnostics(name: str) -> None:
    text = _diagnostics_text(REPOS / name)
    assert "error[" in text
    _check_golden(f"{name}.diagnostics.txt", text)
    with pytest.raises(DefinitionError):
        compile_repo(REPOS / name)


@pytest.mark.parametrize("name", ["good_small"])
def test_good_definitions_give_golden_plans(name: str) -> None:
    assert validate_repo(load_repo(REPOS / name)) == []
    plan = compile_repo(REPOS / name)
    _check_golden(f"{name}.plan.json", plan.to_json() + "\n")


@pytest.mark.parametrize("path", [REPOS / "good_small", ROOT / "features" / "fraud"])
def test_plan_round_trips_through_json(path: Path) -> None:
    plan = compile_repo(path)
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert again.to_json() == plan.to_json()
    assert json.loads(plan.to_json())["plan_hash"] == plan.plan_hash


def test_fraud_repo_is_a_real_model_sized_join() -> None:
    plan = compile_repo(ROOT / "features" / "fraud")
    join = plan.join("fraud_v1")
    n_features = sum(len(p.features) for p in join.parts) + len(join.derivations)
    assert 100 <= n_features <= 200, n_features
    names = list(join.output_schema)
    assert len(names) == len(set(names))
    assert "card_amount_usd_sum_1h" in names and "merchant_fraud_is_fraud_avg_30d_off7d" in names
    fraud = plan.group_by("merchant_fraud")
    offset = [w for a in fraud.aggregations for w in a.windows if w.offset_ms]
    assert offset and all(w.offset_ms == 7 * 86_400_000 for w in offset)


def test_diagnostics_point_at_the_offending_line() -> None:
    diags = validate_repo(load_repo(REPOS / "bad_column"))
    lines = (REPOS / "bad_column" / "defs.py").read_text().splitlines()
    by_code = {(d.code, lines[d.line - 1].strip()) for d in diags}
    assert ("unknown-column", 'keys=["card_idd"],') in by_code
    assert ("unknown-column", 'Aggregation("amout", Op.SUM, windows=["1d"]),') in by_code
    assert any(code == "bad-op-type" and "card_id" in line for code, line in by_code)
    assert any(code == "bad-k" and "TOP_K" in line for code, line in by_code)
    unknown = next(d for d in diags if "amout" in d.message)
    assert "did you mean 'amount'" in unknown.fix


def test_sql_errors_are_underlined_with_a_fix() -> None:
    diags = validate_repo(load_repo(REPOS / "bad_sql"))
    codes = [d.code for d in diags]
    assert codes.count("bad-sql") == 4, "\n".join(d.render() for d in diags)
    where = next(d for d in diags if d.message.startswith("where"))
    assert "^" in where.detail and "status" in where.fix
    lines = (REPOS / "bad_sql" / "defs.py").read_text().splitlines()
    assert "stauts" in lines[where.line - 1]


def test_window_errors_name_the_fix() -> None:
    diags = validate_repo(load_repo(REPOS / "bad_window"))
    text = "\n".join(d.render() for d in diags)
    assert "'7x' is not a duration" in text
    assert "hop '7m' is not one of the tile sizes" in text
    assert "length 0" in text
    assert "longer than the window" in text
    assert "unknown aggregation op 'medianish'" in text


def test_duplicate_names_point_at_both_places() -> None:
    diags = validate_repo(load_repo(REPOS / "duplicate_name"))
    dup = next(d for d in diags if d.code == "duplicate-name")
    assert "one.py" in dup.message or "two.py" in dup.message


def test_import_errors_become_diagnostics(tmp_path: Path) -> None:
    pkg = tmp_path / "broken_repo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "ok.py").write_text(
        "from features.definitions import EventSource\n"
        "s = EventSource(table='t', topic='t', time_column='ts', schema={'ts': 'long'})\n"
    )
    (pkg / "bad.py").write_text("x = 1\ny = (\n")
    repo = load_repo(pkg)
    assert len(repo.sources) == 1
    diag = next(d for d in validate_repo(repo) if d.code == "import-error")
    assert diag.file.endswith("bad.py") and diag.line >= 2
