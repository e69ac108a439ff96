"""Feature logging: served vectors of a deterministic key sample, written off the request path.

:class:`FeatureLogger` is handed to :class:`serving.fetcher.Fetcher` (``logger=``). For every fetch the fetcher
calls :meth:`FeatureLogger.log`, which

* samples by key: a stable hash of the request's sample key (by default the first part's entity key, e.g. the
  card) decides, so every request of a sampled key is logged and none of the others (what the consistency job
  needs to see a key's history, and what a per-key debugging session wants);
* snapshots the vector and puts it on a bounded queue without waiting: when the queue is full the row is dropped
  and counted (``stats()["dropped"]``). Nothing here raises into the fetch.

A background thread batches rows (``batch_rows`` or every ``flush_interval_s``), encodes them to the fixed
:data:`features.consistency.LOG_COLUMNS` schema (values, request, keys and batch versions as JSON text, so one
schema fits every Join) and hands each batch to the sink: a directory gets hive-partitioned parquet by request
time, ``date=YYYY-MM-DD/hour=HH/part-<uuid>.parquet``; ``kafka://HOST:PORT[,HOST:PORT]/TOPIC``
(:class:`KafkaSink`) sends one JSON record per row, keyed by its log id; a callable gets the encoded rows.

A Kafka topic is landed into the same partitioned parquet by :func:`land_topic` (a consumer group that commits
after each write), which is what the consistency job reads; a row landed twice (a crash between the write and
the commit) is dropped by the reader on its log id.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import queue
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from features.consistency import LOG_COLUMNS, LOG_ID

if TYPE_CHECKING:
    from serving.fetcher import FeatureVector

log = logging.getLogger("tessera.feature_log")

Row = dict[str, Any]
Sink = Callable[[list[Row]], None]

_ARROW = {"string": pa.string(), "long": pa.int64(), "boolean": pa.bool_(), "double": pa.float64()}
LOG_ARROW_SCHEMA = pa.schema([(name, _ARROW[typ]) for name, typ in LOG_COLUMNS.items()])
_STOP = object()


def _json(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def key_fraction(value: Any, salt: str = "") -> float:
    """A stable number in [0, 1) for a key value (the same in every process and release)."""
    digest = hashlib.blake2b(f"{salt}\x1f{_json(value)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def partition_of(at_ms: int) -> str:
    """``date=YYYY-MM-DD/hour=HH`` of a request time (UTC)."""
    t = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC)
    return f"date={t:%Y-%m-%d}/hour={t:%H}"


class ParquetSink:
    """Writes each batch as one parquet file per (date, hour) partition of the rows' request times."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.files = 0

    def __call__(self, rows: list[Row]) -> None:
        by_part: dict[str, list[Row]] = defaultdict(list)
        for r in rows:
            by_part[partition_of(int(r["at_ms"]))].append(r)
        for part, part_rows in by_part.items():
            folder = self.root / part
            folder.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pylist(part_rows, schema=LOG_ARROW_SCHEMA)
            tmp = folder / f".part-{uuid.uuid4().hex}.parquet.tmp"
            pq.write_table(table, tmp)
            tmp.rename(folder / tmp.name[1:].removesuffix(".tmp"))  # readers never see half a file
            self.files += 1


KAFKA_SCHEME = "kafka://"


def parse_kafka_url(url: str) -> tuple[str, str]:
    """``kafka://HOST:PORT[,HOST:PORT...]/TOPIC`` -> (bootstrap servers, topic)."""
    rest = url.removeprefix(KAFKA_SCHEME)
    bootstrap, _, topic = rest.partition("/")
    if not url.startswith(KAFKA_SCHEME) or not bootstrap or not topic or "/" in topic:
        raise ValueError(
            f"feature log {url!r}: write kafka://host:port/topic (e.g. kafka://127.0.0.1:9092/feature_log)"
        )
    return bootstrap, topic


class KafkaSink:
    """Sends each row to ``topic`` as one JSON record (UTF-8), key = the row's log id, record time = the request
    time. The producer is made on the first batch (in the logger's writer thread, never on the request path); a
    batch is done when the broker acknowledged every record, else it raises (the logger counts it as a write
    error and drops the batch; records already delivered stay, the reader drops duplicates by log id)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        send_timeout_s: float = 10.0,
        producer_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.send_timeout_s = send_timeout_s
        self.producer_config = dict(producer_config or {})
        self._producer: Any = None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> KafkaSink:
        bootstrap, topic = parse_kafka_url(url)
        return cls(bootstrap, topic, **kwargs)

    def _connect(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer

            ms = int(self.send_timeout_s * 1000)  # also bounds the bootstrap (30 s) and metadata (60 s) waits
            config = {
                "acks": "all",
                "linger_ms": 5,
                "request_timeout_ms": ms,
                "max_block_ms": ms,
                "bootstrap_timeout_ms": ms,
            }
            self._producer = KafkaProducer(
                bootstrap_servers=self.bootstrap.split(","), **{**config, **self.producer_config}
            )
        return self._producer

    def __call__(self, rows: list[Row]) -> None:
        producer = self._connect()
        futures = [
            producer.send(
                self.topic,
                key=str(r[LOG_ID]).encode(),
                value=_json(r).encode(),
                timestamp_ms=int(r["at_ms"]),
            )
            for r in rows
        ]
        producer.flush(timeout=self.send_timeout_s)
        for f in futures:
            f.get(timeout=self.send_timeout_s)  # raises the send's error, if any

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=self.send_timeout_s)
            self._producer = None


def open_sink(spec: str | Path) -> Sink:
    """The sink a setting names: ``kafka://host:port/topic`` or a directory (partitioned parquet)."""
    if str(spec).startswith(KAFKA_SCHEME):
        return KafkaSink.from_url(str(spec))
    return ParquetSink(spec)


def land_topic(
    url: str,
    root: str | Path,
    *,
    group_id: str | None = None,
    idle_s: float = 3.0,
    max_s: float = 600.0,
    consumer_config: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Copy the feature-log records of ``kafka://host:port/topic`` not yet landed by ``group_id`` into the
    partitioned parquet under ``root`` (:class:`ParquetSink`), committing after each write. ``group_id``
    defaults to one per landing directory (its committed offsets say what that directory holds). Stops when no record
    came for ``idle_s`` (or after ``max_s``). Records that are not JSON objects with exactly the log's columns
    are skipped and counted. Returns ``{"landed": n, "skipped": n, "files": n}``."""
    from kafka import KafkaConsumer

    bootstrap, topic = parse_kafka_url(url)
    sink = ParquetSink(root)
    if group_id is None:
        where = hashlib.blake2b(str(Path(root).resolve()).encode(), digest_size=6).hexdigest()
        group_id = f"tessera-feature-log-lander-{where}"
    config: dict[str, Any] = {
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
    }
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap.split(","), **{**config, **(consumer_config or {})}
    )
    counts = {"landed": 0, "skipped": 0, "files": 0}
    started = time.monotonic()
    last = None  # idle time counts from the first assignment: joining the group takes a few seconds
    try:
        while time.monotonic() - started < max_s:
            batches = consumer.poll(timeout_ms=500, max_records=5_000)
            if consumer.assignment() and last is None:
                last = time.monotonic()
            rows: list[Row] = []
            for records in batches.values():
                for rec in records:
                    row = _log_row(rec.value)
                    if row is None:
                        counts["skipped"] += 1
                    else:
                        rows.append(row)
            if rows:
                files = sink.files
                sink(rows)
                counts["landed"] += len(rows)
                counts["files"] += sink.files - files
            if batches:
                consumer.commit()
                last = time.monotonic()
            elif last is not None and time.monotonic() - last >= idle_s:
                break
    finally:
        consumer.close()
    log.info("feature log %s: %s", url, counts)
    return counts


def _log_row(value: bytes | None) -> Row | None:
    """A record's value as a log row, or None when it is not one (never trusted beyond JSON)."""
    if not value:
        return None
    try:
        row = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(row, dict) or set(row) != set(LOG_COLUMNS):
        return None
    return row


class FeatureLogger:
    """Log a deterministic key sample of served vectors, asynchronously (see the module docstring).

    ``sink``: a directory (parquet), ``kafka://host:port/topic`` (:class:`KafkaSink`) or a callable taking a
    list of encoded rows. ``sample_rate``: the share
    of keys logged (0..1). ``sample_key``: the request column hashed for sampling (default: the first part's
    entity key). ``salt``: changes which keys are sampled.
    """

    def __init__(
        self,
        sink: str | Path | Sink,
        sample_rate: float = 0.01,
        *,
        sample_key: str | None = None,
        salt: str = "",
        queue_size: int = 10_000,
        batch_rows: int = 2_000,
        flush_interval_s: float = 1.0,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate={sample_rate} must be within [0, 1]")
        self.sink: Sink = sink if callable(sink) else open_sink(sink)
        self.sample_rate = sample_rate
        self.sample_key = sample_key
        self.salt = salt
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self.clock_ms = clock_ms
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._counts = {
            "seen": 0,
            "sampled": 0,
            "dropped": 0,
            "written": 0,
            "write_errors": 0,
            "log_errors": 0,
        }
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tessera-feature-log", daemon=True)
        self._thread.start()

    # ---- the request path -------------------------------------------------------------------------------
    def sampled(self, key_value: Any) -> bool:
        if self.sample_rate >= 1.0:
            return True
        if self.sample_rate <= 0.0:
            return False
        return key_fraction(key_value, self.salt) < self.sample_rate

    def log(
        self,
        vector: FeatureVector,
        request: Mapping[str, Any],
        *,
        plan_hash: str,
        keys: Mapping[str, list[Any]],
        batch: Mapping[str, tuple[str | None, int | None]],
    ) -> bool:
        """Queue ``vector`` if its key is sampled; True when queued. Never blocks, never raises."""
        try:
            self._count("seen")
            if self.sample_key is not None:
                key_value: Any = request.get(self.sample_key)
            else:
                key_value = next(iter(keys.values()), None)
            if not self.sampled(key_value) or self._closed:
                return False
            self._count("sampled")
            item = (
                vector.join,
                plan_hash,
                vector.at_ms,
                self.clock_ms(),
                key_value,
                dict(keys),
                dict(request),
                dict(vector.values),
                dict(vector.errors),
                vector.degraded,
                vector.stale,
                dict(batch),
                vector.timings_ms.get("total", 0.0),
            )
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self._count("dropped")
                return False
            return True
        except Exception:  # logging must never fail a fetch
            self._count("log_errors")
            return False

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    # ---- the writer -----------------------------------------------------------------------------------------
    @staticmethod
    def _encode(item: tuple[Any, ...]) -> Row:
        (
            join,
            plan_hash,
            at_ms,
            logged_at,
            key_value,
            keys,
            request,
            values,
            errors,
            degraded,
            stale,
            batch,
            ms,
        ) = item
        return {
            LOG_ID: uuid.uuid4().hex,
            "join": join,
            "plan_hash": plan_hash,
            "at_ms": int(at_ms),
            "logged_at_ms": int(logged_at),
            "sample_key": _json(key_value),
            "keys": _json(keys),
            "request": _json(request),
            "values": _json(values),
            "errors": _json(errors),
            "degraded": bool(degraded),
            "stale": bool(stale),
            "batch": _json({gb: {"version": v, "boundary_ms": b} for gb, (v, b) in batch.items()}),
            "fetch_ms": float(ms),
        }

    def _run(self) -> None:
        pending: list[Row] = []
        waiters: list[threading.Event] = []
        last = time.monotonic()
        stop = False
        while not stop:
            timeout = max(0.0, self.flush_interval_s - (time.monotonic() - last))
            try:
                item = self._queue.get(timeout=timeout)
                if item is _STOP:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    pending.append(self._encode(item))
            except queue.Empty:
                pass
            except Exception:
                self._count("log_errors")
            due = time.monotonic() - last >= self.flush_interval_s
            if pending and (len(pending) >= self.batch_rows or due or waiters or stop):
                self._write(pending)
                pending = []
            if due or waiters or stop:
                last = time.monotonic()
            for w in waiters:
                w.set()
            waiters = []

    def _write(self, rows: list[Row]) -> None:
        try:
            self.sink(rows)
            self._count("written", len(rows))
        except Exception as e:
            self._count("write_errors")
            log.warning("feature log: %d rows lost: %s: %s", len(rows), type(e).__name__, e)

    # ---- control --------------------------------------------------------------------------------------------
    def flush(self, timeout_s: float = 10.0) -> bool:
        """Write everything queued so far; True when done within ``timeout_s``."""
        if self._closed:
            return True
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout_s)
        except queue.Full:
            return False
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout_s)
        self._thread.join(timeout_s)
        close = getattr(self.sink, "close", None)
        if close is not None:
            try:
                close()
            except Exception as e:
                log.warning("feature log: closing the sink failed: %s: %s", type(e).__name__, e)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self._counts, "queued": self._queue.qsize()}

    def __enter__(self) -> FeatureLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
