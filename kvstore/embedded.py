"""The embedded write-once bulk store: one LMDB file per (dataset, version), switched by a pointer file.

Why LMDB: measured against RocksDB SST ingestion and SQLite WITHOUT ROWID, it loads fastest from sorted input
and answers a 50-key multi-get several times faster (docs/decisions.md, "Embedded bulk engine").

On-disk layout under ``root``::

    <dataset>/CURRENT                      the published version's name; replaced with os.replace
    <dataset>/versions/<version>/data.mdb  complete versions only (LMDB environment, read-only after upload)
    <dataset>/versions/<version>/meta.json key count, creation time, engine
    <dataset>/versions/<version>/RETIRED   written when a newer version was published over it
    <dataset>/tmp/<version>.<pid>.<nonce>/ an upload in progress

Contracts:

* Write once: an upload builds its version in ``tmp/`` (append-only B-tree load from sorted keys, committed in
  chunks, fsynced) and renames the finished directory into ``versions/`` in one ``rename``. A process killed
  midway leaves only a ``tmp/`` directory, which readers never look at and :meth:`gc` removes.
* Atomic publish: ``CURRENT`` is replaced by ``os.replace`` (fsynced file and directory). Each ``multi_get``
  checks the pointer (one ``stat``) and reads all its keys in one read transaction of one version, so readers in
  any process see either the old or the new version, never a mix.
* Garbage collection: a version that is not current and has been idle (retired, or uploaded but unpublished) for
  more than ``grace_s`` is deleted, except the ``keep_previous`` most recent ones (for rollback). A reader that
  still has a deleted version open keeps reading it (POSIX keeps the mapping alive).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import lmdb

from kvstore import codec
from kvstore.base import Capability, ClosedMixin, KVStore, check_keys, check_name, sorted_checked
from kvstore.errors import KVStoreError, NotPublishedError, VersionExistsError, VersionNotFoundError

_LMDB_MAX_KEY = 511
_STALE_UPLOAD_S = 24 * 3600.0
# A read takes microseconds: a version not current for this long has no reader left in this process.
_RETIRED_ENV_CLOSE_S = 30.0


@dataclass
class _Reader:
    """An open version and the identity of the pointer file it was opened from."""

    pointer_id: tuple[int, int]
    version: str
    env: lmdb.Environment


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedBulkStore(ClosedMixin, KVStore):
    """Write-once versioned datasets in LMDB files under ``root``; safe for many reader processes.

    ``chunk_keys`` bounds the memory of an upload (keys per write transaction); ``map_size`` is the largest
    version file allowed (address space only, not disk).
    """

    capabilities = Capability.VERSIONS

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        grace_s: float = 600.0,
        keep_previous: int = 1,
        chunk_keys: int = 200_000,
        map_size: int = 1 << 38,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.grace_s = grace_s
        self.keep_previous = keep_previous
        self.chunk_keys = chunk_keys
        self.map_size = map_size
        self._readers: dict[str, _Reader] = {}
        self._envs: dict[tuple[str, str], lmdb.Environment] = {}
        self._retired_at: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "embedded-lmdb"

    # -- paths -------------------------------------------------------------------------------------------
    def _ds(self, dataset: str) -> Path:
        return self.root / check_name("dataset", dataset)

    def _pointer(self, dataset: str) -> Path:
        return self._ds(dataset) / "CURRENT"

    def _version_dir(self, dataset: str, version: str) -> Path:
        return self._ds(dataset) / "versions" / check_name("version", version)

    # -- reads -------------------------------------------------------------------------------------------
    def _reader(self, dataset: str) -> _Reader:
        pointer = self._pointer(dataset)
        try:
            st = os.stat(pointer)
        except FileNotFoundError:
            raise NotPublishedError(
                f"dataset {dataset!r} has no published version under {self.root}; bulk_upload and publish one"
            ) from None
        cached = self._readers.get(dataset)
        if cached is not None and cached.pointer_id == (st.st_ino, st.st_mtime_ns):
            return cached
        with self._lock:
            error: Exception | None = None
            for _attempt in range(3):
                # Read the identity and the content from one open file, so they belong together.
                with open(pointer, encoding="utf-8") as f:
                    fst = os.fstat(f.fileno())
                    version = f.read().strip()
                try:
                    env = self._open_env(dataset, version)
                except lmdb.Error as e:
                    # Republished and collected between our read of the pointer and the open: read it again.
                    error = e
                    continue
                old = self._readers.get(dataset)
                if old is not None and old.version != version:
                    self._retired_at[(dataset, old.version)] = time.monotonic()
                self._retired_at.pop((dataset, version), None)
                reader = _Reader((fst.st_ino, fst.st_mtime_ns), version, env)
                self._readers[dataset] = reader
                self._close_retired()
                return reader
        raise KVStoreError(f"dataset {dataset!r}: published version {version!r} could not be opened: {error}")

    def _open_env(self, dataset: str, version: str) -> lmdb.Environment:
        """The one open environment of a version in this process (LMDB refuses to open a path twice)."""
        env = self._envs.get((dataset, version))
        if env is None:
            env = lmdb.open(
                str(self._version_dir(dataset, version)),
                readonly=True,
                lock=False,
                readahead=False,
                max_readers=1024,
            )
            self._envs[(dataset, version)] = env
        return env

    def _close_retired(self) -> None:
        """Close versions no longer current for a while: their mapping pins a deleted file's disk space."""
        now = time.monotonic()
        for key, since in list(self._retired_at.items()):
            if now - since > _RETIRED_ENV_CLOSE_S:
                del self._retired_at[key]
                env = self._envs.pop(key, None)
                if env is not None:
                    env.close()

    def multi_get(self, dataset: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        self._check_open()
        check_keys(keys, _LMDB_MAX_KEY)
        reader = self._reader(dataset)
        if not keys:
            return {}
        with reader.env.begin(buffers=False) as txn:
            found = txn.cursor().getmulti(keys)
        return {k: codec.unseal(v, key=k) for k, v in found}

    def current_version(self, dataset: str) -> str | None:
        self._check_open()
        try:
            return self._pointer(dataset).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None

    def versions(self, dataset: str) -> list[str]:
        self._check_open()
        vdir = self._ds(dataset) / "versions"
        if not vdir.is_dir():
            return []
        metas = []
        for d in vdir.iterdir():
            with contextlib.suppress(FileNotFoundError, ValueError):
                metas.append((json.loads((d / "meta.json").read_text())["created_ms"], d.name))
        return [name for _, name in sorted(metas)]

    # -- writes ------------------------------------------------------------------------------------------
    def bulk_upload(self, dataset: str, version: str, items: Iterable[tuple[bytes, bytes]]) -> int:
        self._check_open()
        final = self._version_dir(dataset, version)
        if final.exists():
            raise VersionExistsError(
                f"{dataset!r} version {version!r} already exists at {final}; pick a new name"
            )
        tmp = self._ds(dataset) / "tmp" / f"{version}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        (self._ds(dataset) / "versions").mkdir(exist_ok=True)
        try:
            count = self._load(tmp, dataset, items)
            meta = {"format": 1, "engine": "lmdb", "dataset": dataset, "version": version, "keys": count}
            meta["created_ms"] = time.time_ns() // 1_000_000
            (tmp / "meta.json").write_text(json.dumps(meta))
            _fsync_dir(tmp)
            try:
                os.rename(tmp, final)
            except OSError as e:
                raise VersionExistsError(
                    f"{dataset!r} version {version!r} was uploaded concurrently: {e}"
                ) from e
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return count

    def _load(self, tmp: Path, dataset: str, items: Iterable[tuple[bytes, bytes]]) -> int:
        env = lmdb.open(
            str(tmp), map_size=self.map_size, lock=False, sync=False, metasync=False, readahead=False
        )
        count = 0
        try:
            stream = ((k, codec.seal(v)) for k, v in sorted_checked(dataset, items, _LMDB_MAX_KEY))
            while chunk := list(islice(stream, self.chunk_keys)):
                with env.begin(write=True) as txn:
                    # Keys are checked increasing, so append=True builds full pages with no B-tree splits.
                    txn.cursor().putmulti(chunk, append=True)
                count += len(chunk)
            env.sync(True)
        finally:
            env.close()
        return count

    def publish(self, dataset: str, version: str) -> None:
        self._check_open()
        if not (self._version_dir(dataset, version) / "meta.json").exists():
            raise VersionNotFoundError(
                f"{dataset!r} version {version!r} is not a complete upload under {self.root}; "
                f"complete versions: {self.versions(dataset)}"
            )
        previous = self.current_version(dataset)
        pointer = self._pointer(dataset)
        tmp = pointer.with_name(f"CURRENT.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, pointer)
        _fsync_dir(pointer.parent)
        if previous is not None and previous != version:
            with contextlib.suppress(FileNotFoundError):
                (self._version_dir(dataset, previous) / "RETIRED").write_text(str(time.time()))
        self.gc(dataset)

    def gc(self, dataset: str, now: float | None = None) -> list[str]:
        """Delete idle old versions and dead uploads of ``dataset``; return the versions deleted."""
        self._check_open()
        now = time.time() if now is None else now
        current = self.current_version(dataset)
        idle: list[tuple[float, str]] = []
        for v in self.versions(dataset):
            if v == current:
                continue
            d = self._version_dir(dataset, v)
            marker = d / "RETIRED" if (d / "RETIRED").exists() else d / "meta.json"
            with contextlib.suppress(FileNotFoundError):
                idle.append((marker.stat().st_mtime, v))
        idle.sort(reverse=True)  # most recently idle first: those are kept for rollback
        removed = []
        for since, v in idle[self.keep_previous :]:
            if now - since >= self.grace_s:
                shutil.rmtree(self._version_dir(dataset, v), ignore_errors=True)
                removed.append(v)
        self._gc_uploads(dataset, now)
        return removed

    def _gc_uploads(self, dataset: str, now: float) -> None:
        tmp = self._ds(dataset) / "tmp"
        if not tmp.is_dir():
            return
        for d in tmp.iterdir():
            try:
                pid = int(d.name.rsplit(".", 2)[1])
                age = now - d.stat().st_mtime
            except (IndexError, ValueError, FileNotFoundError):
                continue
            if not _pid_alive(pid) or age > _STALE_UPLOAD_S:
                shutil.rmtree(d, ignore_errors=True)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            envs, self._envs, self._readers = self._envs, {}, {}
        for env in envs.values():
            env.close()
