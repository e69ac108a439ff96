"""Open the stores a deployment names in its settings (``TESSERA_BULK_STORE``, ``TESSERA_MEMCACHED``)."""

from __future__ import annotations

from pathlib import Path

from kvstore.base import KVStore
from kvstore.memcached import MemcachedStore


class StoreConfigError(ValueError):
    """A store URL tessera cannot open; the message says which forms it takes."""


def open_bulk(url: str) -> KVStore:
    """``embedded:PATH`` (the default LMDB store) or ``postgres:DSN``."""
    kind, _, rest = url.partition(":")
    if kind == "embedded" and rest:
        from kvstore.embedded import EmbeddedBulkStore

        Path(rest).mkdir(parents=True, exist_ok=True)
        return EmbeddedBulkStore(rest)
    if kind == "postgres" and rest:
        from kvstore.postgres import PostgresBulkStore

        return PostgresBulkStore(rest)
    raise StoreConfigError(
        f"bulk store {url!r} is not understood; write embedded:/path/to/dir or postgres:postgresql://user@host/db"
    )


def open_stream(servers: tuple[str, ...] | list[str]) -> MemcachedStore:
    if not servers:
        raise StoreConfigError("no memcached servers: set TESSERA_MEMCACHED=host:port[,host:port...]")
    return MemcachedStore(list(servers))
