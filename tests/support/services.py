"""Helpers of the service fixtures in ``tests/conftest.py`` and ``tests/streaming/conftest.py``."""

from __future__ import annotations

import importlib
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = ROOT / "scripts" / "setup-streaming.sh"


def run_setup(*parts: str) -> None:
    """Run the setup script (idempotent); fail the test session with its output if it fails."""
    proc = subprocess.run(
        ["bash", str(SETUP_SCRIPT), *parts], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/setup-streaming.sh {' '.join(parts)} failed:\n{proc.stdout}\n{proc.stderr}")


def docker_available() -> bool:
    """True if a Docker engine answers a ping within a couple of seconds."""
    if os.environ.get("TESSERA_NO_DOCKER"):
        return False
    try:
        # By module name: the repo's own docker/ folder (deployment config) would shadow it for type checkers.
        docker = importlib.import_module("docker")
        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def stop_orphan_brokers(state: Path) -> None:
    """Stop brokers left by test sessions that were killed (their PID file names the dead pytest process)."""
    from flink_jobs.broker import stop_broker

    for pid_file in state.glob("tansu-*.pid"):
        owner = pid_file.stem.removeprefix("tansu-")
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            stop_broker(pid_file)
    for log in state.glob("tansu-*.log"):
        if not log.with_suffix(".pid").exists():
            log.unlink(missing_ok=True)
