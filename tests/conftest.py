"""Session-wide fixtures. One fixture per real service, started once per test session.

``tests/`` is on ``sys.path`` (pytest's rootdir conftest), so helpers live in ``tests/support``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """A local Spark session configured the way tessera's Spark jobs configure theirs."""
    from spark_jobs.session import spark_session

    session = spark_session(master="local[2]", app_name="tessera-tests", shuffle_partitions=4)
    yield session
    session.stop()
