"""Fixtures for the streaming tests: a real Kafka-protocol broker and the Flink environment.

``kafka_broker`` (session-scoped) yields a bootstrap address, in this order of preference:

1. ``$TESSERA_KAFKA_BOOTSTRAP`` if set (an already running broker; nothing is started or stopped);
2. testcontainers' Kafka if a Docker engine answers (CI machines with Docker);
3. tansu started as a local process on a free loopback port (these machines: no Docker engine), fetched by
   ``scripts/setup-streaming.sh`` first if the binary is missing.

Each test uses its own topic names (``unique_topic``), so tests share the broker without interfering.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = ROOT / "scripts" / "setup-streaming.sh"
FLINK_PYTHON = ROOT / ".venv-flink" / "bin" / "python"
JARS = (
    ROOT / ".tools" / "jars" / "flink-connector-kafka.jar",
    ROOT / ".tools" / "jars" / "kafka-clients.jar",
)


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


def _stop_orphans(state: Path) -> None:
    """Stop brokers left by test sessions that were killed (their PID file names the dead pytest process)."""
    from flink_jobs.broker import stop_broker

    for pid_file in state.glob("tansu-*.pid"):
        owner = pid_file.stem.removeprefix("tansu-")
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            stop_broker(pid_file)
    for log in state.glob("tansu-*.log"):
        if not log.with_suffix(".pid").exists():
            log.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    """The bootstrap address of a real Kafka-protocol broker for the whole session."""
    external = os.environ.get("TESSERA_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    if docker_available():
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers < 4.14
            from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
        return

    from flink_jobs.broker import DEFAULT_TANSU, start_broker

    if not os.environ.get("TESSERA_TANSU") and not DEFAULT_TANSU.exists():
        run_setup("broker")
    state = ROOT / ".data" / "test-broker"
    _stop_orphans(state)
    broker = start_broker(pid_file=state / f"tansu-{os.getpid()}.pid")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
        broker.log_file.unlink(missing_ok=True)  # kept only if the session dies (see _stop_orphans)


@pytest.fixture(scope="session")
def flink_python() -> Path:
    """The Flink environment's interpreter (``.venv-flink/bin/python``), with the Kafka connector jars in place."""
    if not FLINK_PYTHON.exists() or not all(j.exists() for j in JARS):
        run_setup("jars", "flink")
    return FLINK_PYTHON


@pytest.fixture
def unique_topic() -> Callable[[str], str]:
    """Makes topic names unique to this test run, so tests can share one broker."""
    run = uuid.uuid4().hex[:8]
    return lambda name: f"test-{name}-{run}"
