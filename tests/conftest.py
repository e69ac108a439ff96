"""Session-wide fixtures. One fixture per real service, started once per test session.

``tests/`` is on ``sys.path`` (pytest's rootdir conftest), so helpers live in ``tests/support``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.services import docker_available, run_setup, stop_orphan_brokers

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """A local Spark session configured the way tessera's Spark jobs configure theirs."""
    from spark_jobs.session import spark_session

    session = spark_session(master="local[2]", app_name="tessera-tests", shuffle_partitions=4)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    """The bootstrap address of a real Kafka-protocol broker for the whole session, in this order of preference:

    1. ``$TESSERA_KAFKA_BOOTSTRAP`` if set (an already running broker; nothing is started or stopped);
    2. testcontainers' Kafka if a Docker engine answers (CI machines with Docker);
    3. tansu started as a local process on a free loopback port (these machines: no Docker engine), fetched by
       ``scripts/setup-streaming.sh`` first if the binary is missing.
    """
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
    stop_orphan_brokers(state)
    broker = start_broker(pid_file=state / f"tansu-{os.getpid()}.pid")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
        broker.log_file.unlink(missing_ok=True)  # kept only if the session dies (see stop_orphan_brokers)
