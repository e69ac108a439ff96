"""The code stays clean: ruff (lint + format), mypy, and the import-layer contracts (import-linter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PACKAGES = ["features", "kvstore", "flink_jobs", "spark_jobs", "serving", "tessera"]


@pytest.mark.parametrize(
    "cmd",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["lint-imports"],
        ["mypy", *PACKAGES],
    ],
    ids=["ruff-check", "ruff-format", "import-layers", "mypy"],
)
def test_clean(cmd: list[str]) -> None:
    result = subprocess.run(
        [str(BIN / cmd[0]), *cmd[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
