"""Session-wide fixtures. One fixture per real service, started once per test session.

``tests/`` is on ``sys.path`` (pytest's rootdir conftest), so helpers live in ``tests/support``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """A local Spark session configured the way tessera's Spark jobs configure theirs."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    from features.sql import SPARK_CONF

    builder = (
        SparkSession.builder.master("local[2]")
        .appName("tessera-tests")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
    )
    for key, value in SPARK_CONF.items():  # ANSI off and UTC: what the row logic's Python side matches
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
