"""The KV interface every store implements: versioned bytes in, bytes out.

Two kinds of store sit behind it:

* bulk (write once, read many): ``bulk_upload`` writes a whole new *version* of a dataset, ``publish`` switches
  readers to it atomically; ``multi_put`` is refused.
* stream (write many, read many): ``multi_put`` upserts values; versions are refused.

A store says which it is through :attr:`KVStore.capabilities`; a refused operation raises
:class:`~kvstore.errors.UnsupportedOperationError`. Every other contract is the same for all backends and is
checked by one conformance suite (``tests/kvstore/test_conformance.py``):

* ``multi_get`` returns only keys that exist, each with exactly the bytes written; absent keys are simply
  missing from the result; one call reads from exactly one version of a bulk dataset (never a mix).
* Keys are non-empty ``bytes``; values are ``bytes`` (stores wrap them in :mod:`kvstore.codec`'s envelope).
* Datasets are independent namespaces named by :func:`check_name`.
* ``close`` is idempotent; any other call after it raises :class:`~kvstore.errors.KVStoreError`.
"""

from __future__ import annotations

import enum
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Self

from kvstore.errors import (
    InvalidKeyError,
    InvalidNameError,
    KVStoreError,
    UnsortedInputError,
    UnsupportedOperationError,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class Capability(enum.Flag):
    """What a store offers beyond ``multi_get``."""

    PUT = enum.auto()
    VERSIONS = enum.auto()


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a valid dataset/version name (``[A-Za-z0-9][A-Za-z0-9_.-]{0,99}``), else raise.

    >>> check_name("dataset", "card_velocity.v1")
    'card_velocity.v1'
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidNameError(
            f"{kind} name {name!r} is not valid: use 1-100 characters from A-Z a-z 0-9 _ . - "
            "starting with a letter or digit"
        )
    return name


def check_keys(keys: Sequence[bytes], max_len: int | None = None) -> None:
    """Raise InvalidKeyError unless every key is non-empty bytes (and at most ``max_len`` long)."""
    for k in keys:
        if not isinstance(k, bytes) or not k or (max_len is not None and len(k) > max_len):
            raise InvalidKeyError(
                f"keys must be non-empty bytes{f' of at most {max_len} bytes' if max_len else ''}, got {k!r:.80}"
            )


class KVStore(ABC):
    """A store of bytes values under bytes keys, grouped in named datasets."""

    capabilities: Capability = Capability(0)

    @property
    def name(self) -> str:
        """A short label for messages and benchmark tables."""
        return type(self).__name__

    @abstractmethod
    def multi_get(self, dataset: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """Values of those ``keys`` that exist; missing keys are absent from the result."""

    def multi_put(self, dataset: str, items: Mapping[bytes, bytes]) -> None:
        """Upsert ``items`` (stream stores only)."""
        raise UnsupportedOperationError(
            f"{self.name} is write-once: it cannot multi_put into {dataset!r}; upload a new version with "
            "bulk_upload + publish, or route the dataset to a stream store"
        )

    def bulk_upload(self, dataset: str, version: str, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Write a complete new ``version`` of ``dataset`` from ``items`` (sorted by key); return the key count.

        The version is invisible to readers until :meth:`publish`. If the uploader dies midway, nothing of the
        version is visible and the published version keeps serving.
        """
        raise UnsupportedOperationError(
            f"{self.name} has no versions: bulk_upload of {dataset!r} is for bulk stores; use multi_put"
        )

    def publish(self, dataset: str, version: str) -> None:
        """Atomically switch readers of ``dataset`` to the fully uploaded ``version``."""
        raise UnsupportedOperationError(
            f"{self.name} has no versions: cannot publish {dataset!r} {version!r}"
        )

    def versions(self, dataset: str) -> list[str]:
        """Completely uploaded versions of ``dataset``, oldest first."""
        raise UnsupportedOperationError(f"{self.name} has no versions of {dataset!r}")

    def current_version(self, dataset: str) -> str | None:
        """The published version of ``dataset``, or None if none was published."""
        raise UnsupportedOperationError(f"{self.name} has no versions of {dataset!r}")

    @abstractmethod
    def close(self) -> None:
        """Release connections and files; idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ClosedMixin:
    """Tracks closing so that use after ``close`` raises a clear error."""

    _closed: bool = False

    def _check_open(self) -> None:
        if self._closed:
            raise KVStoreError(f"{type(self).__name__} is closed; open a new one")


def sorted_checked(
    dataset: str, items: Iterable[tuple[bytes, bytes]], max_key_len: int | None = None
) -> Iterable[tuple[bytes, bytes]]:
    """Yield ``items`` unchanged while checking keys are non-empty bytes in strictly increasing order."""
    prev: bytes | None = None
    limit = max_key_len or 1 << 62
    for i, (k, v) in enumerate(items):
        if (
            not isinstance(k, bytes)
            or not 0 < len(k) <= limit
            or not isinstance(v, bytes | bytearray | memoryview)
        ):
            raise InvalidKeyError(
                f"bulk_upload {dataset!r} item {i}: key must be non-empty bytes of at most {limit} bytes and "
                f"value bytes, got key {k!r:.80}"
            )
        if prev is not None and k <= prev:
            raise UnsortedInputError(
                f"bulk_upload {dataset!r} item {i}: key {k!r:.80} is not greater than the previous key "
                f"{prev!r:.80}; sort the items by key bytes (ascending, no duplicates) before uploading"
            )
        prev = k
        yield k, bytes(v)
