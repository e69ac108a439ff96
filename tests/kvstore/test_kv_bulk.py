"""Bulk-store specifics: garbage collection of old versions and of dead uploads."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from kv_helpers import make_store, new_name, tagged

from kvstore.base import KVStore
from kvstore.codec import make_key
from kvstore.embedded import EmbeddedBulkStore

pytestmark = pytest.mark.services  # real servers on 127.0.0.1

KEYS = [make_key("gc", "p", b"e%d" % i) for i in range(20)]


@pytest.mark.parametrize("backend", ["embedded", "postgres"])
def test_old_versions_are_collected_after_the_grace_period(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store: KVStore = make_store(backend, request, tmp_path, grace_s=0.0, keep_previous=1)
    dataset = new_name("gc")
    for v in ("v1", "v2", "v3"):
        store.bulk_upload(dataset, v, sorted(tagged(KEYS, v.encode()).items()))
        store.publish(dataset, v)
    assert store.versions(dataset) == ["v2", "v3"]  # v3 current, v2 kept for rollback
    assert store.multi_get(dataset, KEYS) == tagged(KEYS, b"v3")
    store.close()


@pytest.mark.parametrize("backend", ["embedded", "postgres"])
def test_versions_within_the_grace_period_are_kept(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store: KVStore = make_store(backend, request, tmp_path, grace_s=3600.0, keep_previous=0)
    dataset = new_name("gc")
    for v in ("v1", "v2", "v3"):
        store.bulk_upload(dataset, v, sorted(tagged(KEYS, v.encode()).items()))
        store.publish(dataset, v)
    assert store.versions(dataset) == ["v1", "v2", "v3"]
    store.close()


def test_a_reader_keeps_reading_a_version_collected_under_it(tmp_path: Path) -> None:
    writer = EmbeddedBulkStore(tmp_path, grace_s=0.0, keep_previous=0)
    reader = EmbeddedBulkStore(tmp_path)
    dataset = new_name("gc")
    writer.bulk_upload(dataset, "v1", sorted(tagged(KEYS, b"v1").items()))
    writer.publish(dataset, "v1")
    assert reader.multi_get(dataset, KEYS) == tagged(KEYS, b"v1")
    writer.bulk_upload(dataset, "v2", sorted(tagged(KEYS, b"v2").items()))
    writer.publish(dataset, "v2")
    assert writer.versions(dataset) == ["v2"]
    assert reader.multi_get(dataset, KEYS) == tagged(KEYS, b"v2")  # it follows the pointer


def test_gc_removes_only_dead_uploads(tmp_path: Path) -> None:
    store = EmbeddedBulkStore(tmp_path)
    dataset = new_name("gc")
    tmp = tmp_path / dataset / "tmp"
    live, dead = tmp / f"v9.{os.getpid()}.abcd", tmp / "v8.999999999.abcd"
    for d in (live, dead):
        d.mkdir(parents=True)
    store.gc(dataset, now=time.time())
    assert live.exists() and not dead.exists()
