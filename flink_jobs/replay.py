"""Replay a table of events into a Kafka topic, the way a payments service would produce them.

Each row becomes one record: value = the row as a JSON object (schema-less; nulls as ``null``, timestamps as
epoch milliseconds), key = the row's entity key (``card_id`` by default, so one card stays in one partition),
record timestamp = the row's event time in ms (so a Flink KafkaSource gets per-partition watermarks from it).
Rows go out in arrival order (``arrival_column``) if given, else in event-time order; ties keep the input order.

The replay ends, per partition, with one small **end marker** record in a batch of its own. tansu 0.6.0 answers
ListOffsets(latest) with the last batch's base offset + 1 (PLATFORM_NOTES), so a bounded reader stopping at
"latest" would otherwise drop the tail of the last batch; with a one-record final batch, "latest" is exact.
Readers must skip markers (:func:`is_end_marker`); each marker carries how many events went to its partition.

**Back-pressure.** kafka-python (3.x) has no bound on what ``send()`` queues: its accumulator takes every record at
once, and each record's ``delivery_timeout_ms`` (120 s) runs from ``send()``. Its idempotent producer (the default)
also keeps one batch in flight per partition, so a partition drains one batch per broker round trip. A replay that
queued a whole backlog therefore failed whenever the broker drained it slower than ``events / 120 s`` — the tail of
a 100 k backlog expired in the accumulator ("Expiring ... since batch creation") while a 30 k one passed. So the
replay keeps at most ``max_pending_bytes`` of unacknowledged records and waits for the oldest before it sends
more: the wait per record is bounded by that window, not by the size of the backlog. Every record's outcome is
checked (events, malformed messages and end markers); the first failure stops the replay with an error.

For dead-letter tests, ``malformed_every=N`` mixes one malformed message in after every N good events (bad JSON,
a missing required field, a wrong type, a non-object, an empty value), or :func:`inject_malformed` sends some.

Runs in the main environment (kafka-python, pyarrow). Command line::

    python -m flink_jobs.replay payments.parquet --topic payments --bootstrap 127.0.0.1:9092 --rate 1000
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import decimal
import itertools
import json
import math
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: The field that marks an end-marker record's JSON value.
END_MARKER_FIELD = "__tessera_end__"
#: The key of end-marker records.
END_MARKER_KEY = b"__tessera_end__"

#: Kinds of malformed message :func:`malformed_message` can make, in the order ``malformed_every`` cycles them.
MALFORMED_KINDS: tuple[str, ...] = ("bad_json", "missing_field", "wrong_type", "not_object", "empty")
#: Also available on request (not in the default cycle): a null value (a Kafka tombstone).
EXTRA_MALFORMED_KINDS: tuple[str, ...] = ("tombstone",)

_BATCH_ROWS = 5_000

#: Unacknowledged record bytes (keys and values) a replay lets the producer hold before it waits for the oldest:
#: 64 producer batches of 64 KiB, about a second of a local broker's throughput, and far from any delivery timeout.
MAX_PENDING_BYTES = 4 * 1024 * 1024
#: How long to wait for one record beyond the producer's delivery timeout before calling the producer stuck.
_WAIT_MARGIN_S = 30.0


@dataclass
class ReplayResult:
    """What a replay sent."""

    topic: str
    events: int = 0
    per_partition: dict[int, int] = field(default_factory=dict)
    malformed: dict[str, int] = field(default_factory=dict)
    end_markers: int = 0
    first_ts: int | None = None
    last_ts: int | None = None
    max_ts: int | None = None
    seconds: float = 0.0

    @property
    def records(self) -> int:
        """Every record written: events + malformed + end markers."""
        return self.events + sum(self.malformed.values()) + self.end_markers

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def is_end_marker(value: Mapping[str, Any] | None) -> bool:
    """True for the JSON value of an end-marker record."""
    return isinstance(value, Mapping) and bool(value.get(END_MARKER_FIELD))


def _json_default(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=dt.UTC)
        return int(v.timestamp() * 1000)
    if isinstance(v, dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return int(v / dt.timedelta(milliseconds=1))
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    raise TypeError(f"cannot encode {type(v).__name__} as JSON")


def _clean(v: Any) -> Any:
    # NaN/inf are not JSON; send null (a reader treats them as missing values).
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def encode_value(row: Mapping[str, Any]) -> bytes:
    """A row as compact UTF-8 JSON (the record value format)."""
    return json.dumps(
        {k: _clean(v) for k, v in row.items()}, separators=(",", ":"), default=_json_default, allow_nan=False
    ).encode("utf-8")


def _encode_key(v: Any) -> bytes | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        return v
    return str(v).encode("utf-8")


def _as_ms(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """An event-time column as int64 epoch milliseconds (int columns are taken to be ms already)."""
    t = col.type
    if pa.types.is_timestamp(t):
        return pc.cast(pc.cast(col, pa.timestamp("ms", tz=t.tz)), pa.int64())
    if pa.types.is_date(t):
        return pc.cast(pc.cast(col, pa.timestamp("ms")), pa.int64())
    if pa.types.is_integer(t):
        return pc.cast(col, pa.int64())
    raise TypeError(f"event time column must be a timestamp or integer ms, not {t}")


def load_events(source: str | Path | pa.Table) -> pa.Table:
    """A parquet file or folder, or an Arrow table, as a table."""
    if isinstance(source, pa.Table):
        return source
    if isinstance(source, pa.RecordBatch):
        return pa.Table.from_batches([source])
    return pq.read_table(source)


def order_events(table: pa.Table, event_time: str = "ts", arrival_time: str | None = None) -> pa.Table:
    """Rows in send order: by ``arrival_time`` if given, else by ``event_time``; stable, so ties keep input order."""
    order_col = arrival_time or event_time
    if order_col not in table.column_names:
        raise KeyError(f"no column {order_col!r} to order by (columns: {table.column_names})")
    idx = pc.sort_indices(
        pa.table({"o": _as_ms(table[order_col]), "i": pa.array(range(table.num_rows), pa.int64())}),
        sort_keys=[("o", "ascending"), ("i", "ascending")],
    )
    return table.take(idx)


def malformed_message(kind: str, row: Mapping[str, Any], required: Sequence[str], n: int = 0) -> bytes | None:
    """A malformed record value of ``kind`` derived from a good ``row`` (``n`` varies which field is dropped)."""
    if kind == "bad_json":
        good = encode_value(row)
        return good[: max(1, len(good) // 2)] + b'"}{'
    if kind == "missing_field":
        drop = required[n % len(required)] if required else next(iter(row), None)
        return encode_value({k: v for k, v in row.items() if k != drop})
    if kind == "wrong_type":
        target = required[-1] if required else next(iter(row))  # the event time by default
        return encode_value({**row, target: {"not": "a scalar"}})
    if kind == "not_object":
        values = [_clean(v) for v in row.values()]
        return json.dumps(values, separators=(",", ":"), default=_json_default).encode("utf-8")
    if kind == "empty":
        return b""
    if kind == "tombstone":
        return None
    raise ValueError(f"unknown malformed kind {kind!r}; known: {MALFORMED_KINDS + EXTRA_MALFORMED_KINDS}")


def _producer(bootstrap: str, rate: float | None, overrides: Mapping[str, Any] | None) -> Any:
    from kafka import KafkaProducer

    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "tessera-replay",
        "acks": "all",
        # Paced replays want low latency; "as fast as possible" wants full batches.
        "linger_ms": 2 if rate else 20,
        "batch_size": 64 * 1024,
        "max_in_flight_requests_per_connection": 5,
    }
    config.update(overrides or {})
    return KafkaProducer(**config)


class _Pacer:
    """Holds sends to ``rate`` events/s against a fixed schedule (catches up after a stall, no drift)."""

    def __init__(self, rate: float | None) -> None:
        self.period = 1.0 / rate if rate else 0.0
        self.t0 = time.monotonic()
        self.n = 0

    def wait(self) -> None:
        if not self.period:
            return
        due = self.t0 + self.n * self.period
        self.n += 1
        ahead = due - time.monotonic()
        if ahead > 0.0005:
            time.sleep(ahead)


def _wait_limit_s(producer: Any) -> float:
    config = getattr(producer, "config", None)
    delivery_ms = config.get("delivery_timeout_ms") if isinstance(config, Mapping) else None
    return (delivery_ms or 120_000) / 1000 + _WAIT_MARGIN_S


class _Outstanding:
    """Sent records not yet acknowledged, oldest first; settles them in send order and counts the outcomes (from
    the settled futures: cheaper than a callback per record)."""

    def __init__(self, wait_limit_s: float) -> None:
        self.queue: deque[tuple[Any, int, bool]] = deque()  # (future, bytes, is an event)
        self.bytes = 0
        self.wait_limit_s = wait_limit_s
        self.partitions: Counter[int] = Counter()  # acknowledged events per partition
        self.errors: list[BaseException] = []

    def add(self, future: Any, size: int, event: bool = True) -> None:
        self.queue.append((future, size, event))
        self.bytes += size

    def settle(self, max_bytes: int = 0) -> None:
        """Settle what is done; while more than ``max_bytes`` are outstanding, wait for the oldest record."""
        while self.queue:
            fut, size, event = self.queue[0]
            if not fut.is_done:
                if self.bytes <= max_bytes:
                    return
                with contextlib.suppress(Exception):  # the outcome is read from the future below
                    fut.get(timeout=self.wait_limit_s)
                if not fut.is_done:
                    raise RuntimeError(
                        f"the producer did not settle a record within {self.wait_limit_s:.0f} s "
                        "(its delivery timeout has passed): is its sender thread alive?"
                    )
            self.queue.popleft()
            self.bytes -= size
            if fut.succeeded():
                if event:
                    self.partitions[fut.value.partition] += 1
            else:
                self.errors.append(fut.exception)


def _rows(table: pa.Table) -> Iterator[dict[str, Any]]:
    for batch in table.to_batches(max_chunksize=_BATCH_ROWS):
        yield from batch.to_pylist()


def replay(
    source: str | Path | pa.Table,
    topic: str,
    bootstrap: str,
    *,
    key: str | None = "card_id",
    event_time: str = "ts",
    arrival_time: str | None = None,
    rate: float | None = None,
    limit: int | None = None,
    end_markers: bool = True,
    malformed_every: int | None = None,
    malformed_kinds: Sequence[str] = MALFORMED_KINDS,
    required_fields: Sequence[str] | None = None,
    producer_config: Mapping[str, Any] | None = None,
    producer: Any = None,
    max_pending_bytes: int = MAX_PENDING_BYTES,
) -> ReplayResult:
    """Send every row of ``source`` to ``topic``; returns what was sent.

    ``rate`` is events/s (``None``: as fast as possible). ``key=None`` sends keyless records. ``malformed_every=N``
    adds one malformed message after every N events, cycling ``malformed_kinds``; ``required_fields`` (default:
    the key and event-time columns) are the ones "missing_field"/"wrong_type" break. A ``producer`` passed in is
    flushed, not closed. At most ``max_pending_bytes`` of record keys and values are unacknowledged at any time
    (back-pressure: the replay waits for the oldest); a record that fails stops the replay with a RuntimeError.
    """
    table = load_events(source)
    for col in (event_time, key, arrival_time):
        if col is not None and col not in table.column_names:
            raise KeyError(f"no column {col!r} in the events (columns: {table.column_names})")
    table = order_events(table, event_time, arrival_time)
    if limit is not None:
        table = table.slice(0, limit)
    ts_ms = _as_ms(table[event_time]).to_pylist()
    required = list(required_fields) if required_fields is not None else [c for c in (key, event_time) if c]
    kinds = itertools.cycle(malformed_kinds) if malformed_every and malformed_kinds else None

    own = producer is None
    prod = producer if producer is not None else _producer(bootstrap, rate, producer_config)
    result = ReplayResult(topic=topic)
    bad: Counter[str] = Counter()
    out = _Outstanding(_wait_limit_s(prod))
    sent = 0

    pacer = _Pacer(rate)
    t0 = time.monotonic()
    try:
        for i, (row, ts) in enumerate(zip(_rows(table), ts_ms, strict=True)):
            if ts is None:
                raise ValueError(f"row {i} has a null event time ({event_time})")
            k = _encode_key(row[key]) if key else None
            value = encode_value(row)
            pacer.wait()
            out.add(prod.send(topic, value=value, key=k, timestamp_ms=ts), len(value) + len(k or b""))
            sent += 1
            if kinds is not None and malformed_every and (i + 1) % malformed_every == 0:
                kind = next(kinds)
                bad_value = malformed_message(kind, row, required, bad[kind])
                fut = prod.send(topic, value=bad_value, key=k, timestamp_ms=ts)
                out.add(fut, len(bad_value or b"") + len(k or b""), event=False)
                bad[kind] += 1
            out.settle(max_pending_bytes)
            if out.errors:
                break  # the broker refused or timed out: stop, and report below
        prod.flush()
        out.settle()
        if out.errors:
            raise RuntimeError(
                f"{len(out.errors)} records failed to send (replay stopped after {sent:,} of {len(ts_ms):,} "
                f"events); first: {out.errors[0]!r}"
            )
        result.events = len(ts_ms)
        if ts_ms:
            result.first_ts, result.last_ts, result.max_ts = ts_ms[0], ts_ms[-1], max(ts_ms)
        result.per_partition = dict(sorted(out.partitions.items()))
        result.malformed = dict(bad)
        if end_markers:
            result.end_markers = send_end_markers(prod, topic, result.per_partition, result.max_ts)
        result.seconds = time.monotonic() - t0
    finally:
        if own:
            prod.close()
    return result


def send_end_markers(producer: Any, topic: str, per_partition: Mapping[int, int], ts_ms: int | None) -> int:
    """One marker per partition of ``topic``, each alone in its batch (the producer is flushed first and after)."""
    producer.flush()
    partitions = sorted(producer.partitions_for(topic) or per_partition)
    futures = []
    for p in partitions:
        value = json.dumps(
            {END_MARKER_FIELD: True, "partition": p, "events": int(per_partition.get(p, 0))},
            separators=(",", ":"),
        ).encode()
        futures.append(producer.send(topic, value=value, key=END_MARKER_KEY, partition=p, timestamp_ms=ts_ms))
    producer.flush()
    _raise_failed(futures, "end markers")
    return len(partitions)


def _raise_failed(futures: Sequence[Any], what: str) -> None:
    """After a flush: raise if any of ``futures`` failed (nothing is dropped silently)."""
    failed = [f.exception for f in futures if f.failed()]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(futures)} {what} failed to send; first: {failed[0]!r}")


def inject_malformed(
    bootstrap: str,
    topic: str,
    template: Mapping[str, Any],
    *,
    kinds: Iterable[str] = MALFORMED_KINDS,
    key: str | None = "card_id",
    event_time: str = "ts",
    required_fields: Sequence[str] | None = None,
    producer_config: Mapping[str, Any] | None = None,
) -> list[tuple[str, bytes | None]]:
    """Send one malformed message of each kind, derived from the good row ``template``; returns (kind, value)."""
    required = list(required_fields) if required_fields is not None else [c for c in (key, event_time) if c]
    ts = template.get(event_time)
    ts_ms = ts if isinstance(ts, int) else None
    k = _encode_key(template.get(key)) if key else None
    sent: list[tuple[str, bytes | None]] = []
    prod = _producer(bootstrap, None, producer_config)
    try:
        futures = []
        for n, kind in enumerate(kinds):
            value = malformed_message(kind, template, required, n)
            futures.append(prod.send(topic, value=value, key=k, timestamp_ms=ts_ms))
            sent.append((kind, value))
        prod.flush()
        _raise_failed(futures, "malformed messages")
    finally:
        prod.close()
    return sent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flink_jobs.replay", description=__doc__.split("\n")[0])
    p.add_argument("source", type=Path, help="a parquet file or folder of events")
    p.add_argument("--topic", required=True)
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--key", default="card_id", help="the Kafka key column ('' for keyless records)")
    p.add_argument("--event-time", default="ts", help="event time column (int ms or timestamp)")
    p.add_argument("--arrival-time", default=None, help="send in this column's order (default: event time)")
    p.add_argument("--rate", type=float, default=None, help="events/s (default: as fast as possible)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--partitions", type=int, default=None, help="create the topic with this many partitions")
    p.add_argument("--malformed-every", type=int, default=None)
    p.add_argument("--no-end-markers", action="store_true")
    args = p.parse_args(argv)
    if args.partitions:
        from flink_jobs.broker import create_topics

        create_topics(args.bootstrap, {args.topic: args.partitions})
    r = replay(
        args.source,
        args.topic,
        args.bootstrap,
        key=args.key or None,
        event_time=args.event_time,
        arrival_time=args.arrival_time,
        rate=args.rate,
        limit=args.limit,
        end_markers=not args.no_end_markers,
        malformed_every=args.malformed_every,
    )
    print(
        f"sent {r.events} events to {r.topic} in {r.seconds:.2f} s ({r.events_per_s:,.0f}/s); "
        f"partitions {r.per_partition}; malformed {r.malformed}; end markers {r.end_markers}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
