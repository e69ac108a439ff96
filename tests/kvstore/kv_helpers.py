"""Helpers shared by the kvstore tests (imported as ``kv_helpers``; tests/kvstore is on sys.path)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from kvstore.base import Capability, KVStore


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
