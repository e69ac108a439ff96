"""A real Spark standalone cluster (Master + one Worker) on loopback, once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spark_jobs.standalone import StandaloneCluster, standalone_cluster


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    """Master + Worker (1 core, 2 GiB) started from the pyspark wheel; stopped by PID at the end."""
    with standalone_cluster(tmp_path_factory.mktemp("spark-cluster"), cores=1, memory="2g") as cluster:
        yield cluster
