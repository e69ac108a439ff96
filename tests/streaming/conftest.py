"""Fixtures for the streaming tests: the Flink environment (the broker, ``kafka_broker``, is in tests/conftest.py).

Each test uses its own topic names (``unique_topic``), so tests share the broker without interfering.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from support.services import run_setup

ROOT = Path(__file__).resolve().parents[2]
FLINK_PYTHON = ROOT / ".venv-flink" / "bin" / "python"
JARS = (
    ROOT / ".tools" / "jars" / "flink-connector-kafka.jar",
    ROOT / ".tools" / "jars" / "kafka-clients.jar",
)


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
