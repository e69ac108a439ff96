"""kvstore fixtures: real servers started once per session, and a ``store`` fixture over every backend.

* ``memcached_cluster``: three memcached processes on 127.0.0.1 (containers where a Docker engine is reachable).
* ``postgres_server``: one throw-away PostgreSQL; the postgres backend is skipped, with the reason, only if
  PostgreSQL is not installed (``apt-get install postgresql``).
* ``store``: a fresh store of each backend (``embedded``, ``postgres``, ``memcached``); tests isolate themselves
  by dataset name (``dataset`` fixture), so the shared servers need no cleanup between tests.

Tests that kill or freeze a server start their own servers (``fresh_memcached_cluster``), never the shared ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kv_helpers import make_store, new_name

from kvstore.base import Capability, KVStore
from kvstore.services import Service, ServiceError, postgres_bin_dir, start_memcached_cluster, start_postgres

BACKENDS = ["embedded", "postgres", "memcached"]
BULK_BACKENDS = ["embedded", "postgres"]


@pytest.fixture(scope="session")
def memcached_cluster() -> Iterator[list[Service]]:
    nodes = start_memcached_cluster(3)
    yield nodes
    for n in nodes:
        n.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Service]:
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql): postgres backend not tested")
    try:
        server = start_postgres()
    except ServiceError as e:
        pytest.fail(f"PostgreSQL is installed but did not start: {e}")
    yield server
    server.stop()


@pytest.fixture
def fresh_memcached_cluster() -> Iterator[list[Service]]:
    """Three memcached servers of this test's own, for tests that kill or freeze one."""
    nodes = start_memcached_cluster(3)
    yield nodes
    for n in nodes:
        n.stop()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KVStore]:
    s = make_store(request.param, request, tmp_path)
    yield s
    s.close()


@pytest.fixture(params=BULK_BACKENDS)
def bulk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KVStore]:
    """A fresh store of each backend that has versions."""
    s = make_store(request.param, request, tmp_path)
    assert Capability.VERSIONS in s.capabilities
    yield s
    s.close()


@pytest.fixture
def dataset() -> str:
    return new_name("ds")
