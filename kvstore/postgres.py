"""The distributed bulk option: write-once versions as PostgreSQL tables, switched by a view in one transaction.

For a company that already runs PostgreSQL and wants the batch features off the serving hosts. Same contracts as
:class:`~kvstore.embedded.EmbeddedBulkStore`; the embedded store stays the default.

Schema ``tessera_kv``:

* ``versions(dataset, version, table_name, keys, created_at, retired_at)``: complete uploads only.
* ``current(dataset, version, published_at)``: the pointer row.
* one table ``t_<digest>`` ``(k bytea primary key, v bytea)`` per (dataset, version), and one view
  ``cur_<digest>`` per dataset selecting from the published version's table.

Contracts:

* Upload: one transaction creates the table, streams the rows with binary ``COPY`` (no per-key round trips),
  adds the primary key (an index build over sorted input, which also rejects duplicates) and registers the
  version. If the uploader dies, the server rolls the whole transaction back: nothing of it remains.
* Publish: one transaction repoints the view and the pointer row. A read is one statement on the view, so it
  sees exactly one version; PostgreSQL's locks order it wholly before or after the switch.
* GC: versions idle longer than ``grace_s``, beyond the ``keep_previous`` most recent, are dropped after a
  publish (``DROP TABLE`` waits for readers still on it).
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from kvstore import codec
from kvstore.base import Capability, ClosedMixin, KVStore, check_keys, check_name, sorted_checked
from kvstore.errors import NotPublishedError, UnavailableError, VersionExistsError, VersionNotFoundError

SCHEMA = "tessera_kv"
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_ROW = struct.Struct(">hi")
_LEN = struct.Struct(">i")
_COPY_CHUNK_BYTES = 1 << 20


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=10).hexdigest()


def _lock_id(dataset: str) -> int:
    return int.from_bytes(hashlib.blake2b(dataset.encode(), digest_size=8).digest(), "big", signed=True)


class PostgresBulkStore(ClosedMixin, KVStore):
    """Write-once versioned datasets in PostgreSQL at ``dsn``; one connection per thread."""

    capabilities = Capability.VERSIONS

    def __init__(
        self, dsn: str, *, grace_s: float = 600.0, keep_previous: int = 1, connect_timeout_s: int = 5
    ):
        self.dsn = dsn
        self.grace_s = grace_s
        self.keep_previous = keep_previous
        self.connect_timeout_s = connect_timeout_s
        self._local = threading.local()
        self._conns: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        with self._conn().transaction():
            self._ensure_schema()

    @property
    def name(self) -> str:
        return "postgres"

    def _conn(self) -> psycopg.Connection:
        self._check_open()
        conn: psycopg.Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=self.connect_timeout_s)
            except psycopg.OperationalError as e:
                raise UnavailableError(f"cannot connect to PostgreSQL at {self.dsn}: {e}") from e
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _ensure_schema(self) -> None:
        c = self._conn()
        c.execute("SELECT pg_advisory_xact_lock(7204811)")  # serialise concurrent first-time creation
        c.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        c.execute(
            f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.versions (
                dataset text NOT NULL, version text NOT NULL, table_name text NOT NULL, keys bigint NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(), retired_at timestamptz,
                PRIMARY KEY (dataset, version))"""
        )
        c.execute(
            f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.current (
                dataset text PRIMARY KEY, version text NOT NULL, published_at timestamptz NOT NULL)"""
        )

    @staticmethod
    def _view(dataset: str) -> sql.Identifier:
        return sql.Identifier(SCHEMA, f"cur_{_digest(dataset)}")

    # -- reads -------------------------------------------------------------------------------------------
    def multi_get(self, dataset: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        check_name("dataset", dataset)
        check_keys(keys)
        query = sql.SQL("SELECT k, v FROM {} WHERE k = ANY(%s)").format(self._view(dataset))
        try:
            rows = self._conn().execute(query, (list(keys),), binary=True).fetchall()
        except psycopg.errors.UndefinedTable:
            raise NotPublishedError(f"dataset {dataset!r} has no published version in {SCHEMA}") from None
        except psycopg.OperationalError as e:
            self._local.conn = None
            raise UnavailableError(f"PostgreSQL read of {dataset!r} failed: {e}") from e
        return {bytes(k): codec.unseal(bytes(v), key=bytes(k)) for k, v in rows}

    def versions(self, dataset: str) -> list[str]:
        check_name("dataset", dataset)
        rows = self._conn().execute(
            f"SELECT version FROM {SCHEMA}.versions WHERE dataset = %s ORDER BY created_at, version",
            (dataset,),
        )
        return [r[0] for r in rows]

    def current_version(self, dataset: str) -> str | None:
        check_name("dataset", dataset)
        row = (
            self._conn()
            .execute(f"SELECT version FROM {SCHEMA}.current WHERE dataset = %s", (dataset,))
            .fetchone()
        )
        return None if row is None else str(row[0])

    # -- writes ------------------------------------------------------------------------------------------
    def bulk_upload(self, dataset: str, version: str, items: Iterable[tuple[bytes, bytes]]) -> int:
        check_name("dataset", dataset)
        check_name("version", version)
        table = f"t_{_digest(dataset, version)}"
        ident = sql.Identifier(SCHEMA, table)
        c = self._conn()
        count = 0
        try:
            with c.transaction():
                c.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id(dataset),))
                exists = c.execute(
                    f"SELECT 1 FROM {SCHEMA}.versions WHERE dataset = %s AND version = %s", (dataset, version)
                ).fetchone()
                if exists:
                    raise VersionExistsError(
                        f"{dataset!r} version {version!r} already exists; pick a new name"
                    )
                c.execute(
                    sql.SQL(
                        "CREATE TABLE {} (k bytea NOT NULL, v bytea NOT NULL) WITH (autovacuum_enabled = false)"
                    ).format(ident)
                )
                with c.cursor().copy(
                    sql.SQL("COPY {} (k, v) FROM STDIN (FORMAT BINARY)").format(ident)
                ) as copy:
                    buf = bytearray(_COPY_HEADER)
                    for k, v in sorted_checked(dataset, items):
                        blob = codec.seal(v)
                        buf += _ROW.pack(2, len(k)) + k + _LEN.pack(len(blob)) + blob
                        count += 1
                        if len(buf) >= _COPY_CHUNK_BYTES:
                            copy.write(bytes(buf))
                            buf.clear()
                    buf += _COPY_TRAILER
                    copy.write(bytes(buf))
                c.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (k)").format(ident))
                c.execute(
                    f"INSERT INTO {SCHEMA}.versions (dataset, version, table_name, keys) VALUES (%s, %s, %s, %s)",
                    (dataset, version, table, count),
                )
        except psycopg.errors.UniqueViolation as e:
            raise VersionExistsError(f"{dataset!r} version {version!r} was uploaded concurrently: {e}") from e
        return count

    def publish(self, dataset: str, version: str) -> None:
        check_name("dataset", dataset)
        c = self._conn()
        with c.transaction():
            c.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id(dataset),))
            row = c.execute(
                f"SELECT table_name FROM {SCHEMA}.versions WHERE dataset = %s AND version = %s",
                (dataset, version),
            ).fetchone()
            if row is None:
                raise VersionNotFoundError(
                    f"{dataset!r} version {version!r} is not a complete upload; complete versions: "
                    f"{self.versions(dataset)}"
                )
            c.execute(
                sql.SQL("CREATE OR REPLACE VIEW {} AS SELECT k, v FROM {}").format(
                    self._view(dataset), sql.Identifier(SCHEMA, row[0])
                )
            )
            c.execute(
                f"""UPDATE {SCHEMA}.versions SET retired_at = now() WHERE dataset = %s AND version <> %s
                    AND version = (SELECT version FROM {SCHEMA}.current WHERE dataset = %s)""",
                (dataset, version, dataset),
            )
            c.execute(
                f"""INSERT INTO {SCHEMA}.current (dataset, version, published_at) VALUES (%s, %s, now())
                    ON CONFLICT (dataset) DO UPDATE SET version = excluded.version, published_at = now()""",
                (dataset, version),
            )
        self.gc(dataset)

    def gc(self, dataset: str) -> list[str]:
        """Drop idle old versions of ``dataset`` (see module docstring); return the versions dropped."""
        c = self._conn()
        removed = []
        with c.transaction():
            c.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id(dataset),))
            rows = c.execute(
                f"""SELECT v.version, v.table_name, coalesce(v.retired_at, v.created_at) AS idle_since, now()
                    FROM {SCHEMA}.versions v LEFT JOIN {SCHEMA}.current c ON c.dataset = v.dataset
                    WHERE v.dataset = %s AND v.version IS DISTINCT FROM c.version
                    ORDER BY idle_since DESC""",
                (dataset,),
            ).fetchall()
            for version, table, idle_since, now in rows[self.keep_previous :]:
                if isinstance(now, datetime) and now - idle_since >= timedelta(seconds=self.grace_s):
                    c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(SCHEMA, table)))
                    c.execute(
                        f"DELETE FROM {SCHEMA}.versions WHERE dataset = %s AND version = %s",
                        (dataset, version),
                    )
                    removed.append(version)
        return removed

    def close(self) -> None:
        self._closed = True
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
