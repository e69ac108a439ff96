"""The errors every kvstore backend raises; callers catch these, never a client library's own.

Each message says what was given, where, and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterable


class KVStoreError(Exception):
    """Base class of every error raised by :mod:`kvstore`."""


class InvalidNameError(KVStoreError, ValueError):
    """A dataset or version name that is not usable as a file, table or key component."""


class InvalidKeyError(KVStoreError, ValueError):
    """A key that is not bytes, is empty, or is too long for the backend."""


class UnsupportedOperationError(KVStoreError):
    """The backend does not offer this operation (e.g. ``multi_put`` on a write-once bulk store)."""


class UnknownDatasetError(KVStoreError, KeyError):
    """The router has no route for this dataset name."""


class NotPublishedError(KVStoreError):
    """A bulk dataset was read before any version of it was published."""


class VersionExistsError(KVStoreError):
    """A version is write-once: uploading the same (dataset, version) twice is refused."""


class VersionNotFoundError(KVStoreError):
    """``publish`` named a version that was never completely uploaded (or was garbage-collected)."""


class UnsortedInputError(KVStoreError, ValueError):
    """``bulk_upload`` needs keys in strictly increasing byte order (sorted, no duplicates)."""


class ValueTooLargeError(KVStoreError, ValueError):
    """A value exceeds the backend's item size limit; it is refused, never truncated."""


class CorruptValueError(KVStoreError):
    """A stored value failed its envelope check (unknown format version or checksum mismatch)."""


class UnavailableError(KVStoreError):
    """A backend server could not be reached within the configured budget."""


class PartialWriteError(UnavailableError):
    """Some keys of a ``multi_put`` were not written because their node was unavailable.

    ``failed_keys`` lists them so the writer can retry exactly those (tile writes are idempotent upserts).
    """

    def __init__(self, message: str, failed_keys: Iterable[bytes]) -> None:
        super().__init__(message)
        self.failed_keys: frozenset[bytes] = frozenset(failed_keys)
