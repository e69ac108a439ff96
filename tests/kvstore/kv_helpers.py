"""Helpers shared by the kvstore tests (imported as ``kv_helpers``; tests/kvstore is on sys.path)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest

from kvstore.base import Capability, KVStore
from kvstore.embedded import EmbeddedBulkStore
from kvstore.memcached import MemcachedStore
from kvstore.services import Service


def new_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def load(store: KVStore, dataset: str, items: dict[bytes, bytes], version: str | None = None) -> None:
    """Make ``items`` readable in ``dataset``: upload + publish a version, or multi_put, as the store offers."""
    if Capability.VERSIONS in store.capabilities:
        version = version or new_name("v")
        store.bulk_upload(dataset, version, sorted(items.items()))
        store.publish(dataset, version)
    else:
        store.multi_put(dataset, items)


def tagged(keys: Iterable[bytes], tag: bytes) -> dict[bytes, bytes]:
    """Values that say which write they came from: ``tag + b"|" + key``."""
    return {k: tag + b"|" + k for k in keys}


def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path, **kwargs: object) -> KVStore:
    """A new store of ``backend`` on the session's servers (embedded: under ``tmp_path``)."""
    if backend == "embedded":
        return EmbeddedBulkStore(tmp_path / "kv", **kwargs)  # type: ignore[arg-type]
    if backend == "postgres":
        from kvstore.postgres import PostgresBulkStore

        server: Service = request.getfixturevalue("postgres_server")
        return PostgresBulkStore(server.extra["dsn"], **kwargs)  # type: ignore[arg-type]
    if backend == "memcached":
        nodes: list[Service] = request.getfixturevalue("memcached_cluster")
        return MemcachedStore([n.address for n in nodes], **kwargs)  # type: ignore[arg-type]
    raise ValueError(backend)
