"""The local broker and the replay producer, against a real Kafka-protocol broker (tansu here)."""

from __future__ import annotations

import json
import socket
import time
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from flink_jobs.broker import BrokerError, create_topics, local_broker, start_broker, stop_broker
from flink_jobs.replay import (
    END_MARKER_KEY,
    MALFORMED_KINDS,
    inject_malformed,
    is_end_marker,
    replay,
)

pytestmark = pytest.mark.services

T0 = 1_709_251_200_000  # 2024-03-01T00:00:00Z


def events(n: int = 400, cards: int = 23) -> pa.Table:
    """Payments in arrival order, some of them arriving late (arrival order != event-time order)."""
    ts = [T0 + 1_000 * i + (i % 7) * 10 for i in range(n)]
    arrival = [t + (90_000 if i % 11 == 0 else 50) for i, t in enumerate(ts)]  # every 11th arrives 90 s late
    return pa.table(
        {
            "event_id": pa.array(range(n), pa.int64()),
            "ts": pa.array(ts, pa.int64()),
            "arrival_ts": pa.array(arrival, pa.int64()),
            "card_id": [f"card-{(i * 7) % cards}" for i in range(n)],
            "amount": [round(1.5 + i % 13, 2) for i in range(n)],
            "device_id": [None if i % 5 == 0 else f"dev-{i % 3}" for i in range(n)],
        }
    )


def consume_until_markers(bootstrap: str, topic: str, timeout_s: float = 20.0) -> list[Any]:
    """Every record of ``topic`` from the start until each partition's end marker (offsets not trusted)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, consumer_timeout_ms=1000
    )
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        assert parts, f"no partitions for {topic}"
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records: list[Any] = []
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(parts):
            assert time.monotonic() < deadline, (
                f"end markers seen for {sorted(done)} of {len(parts)} partitions"
            )
            for batch in consumer.poll(timeout_ms=500).values():
                for rec in batch:
                    records.append(rec)
                    if rec.key == END_MARKER_KEY:
                        done.add(rec.partition)
        return records
    finally:
        consumer.close()


def test_create_topics_with_partitions(kafka_broker: str, unique_topic: Callable[[str], str]) -> None:
    a, b = unique_topic("three"), unique_topic("one")
    assert create_topics(kafka_broker, {a: 3, b: 1}) == {a: 3, b: 1}
    # Idempotent: an existing topic is reported as it is, not re-created.
    assert create_topics(kafka_broker, {a: 3}) == {a: 3}
    with pytest.raises(BrokerError):
        create_topics(kafka_broker, {a: 3}, exist_ok=False)
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker)
    try:
        described = {t["name"]: t for t in admin.describe_topics([a, b])}
    finally:
        admin.close()
    assert sorted(p["partition_index"] for p in described[a]["partitions"]) == [0, 1, 2]
    assert all(p["leader_id"] >= 0 for p in described[a]["partitions"])


def test_replay_round_trip(kafka_broker: str, unique_topic: Callable[[str], str]) -> None:
    topic = unique_topic("payments")
    create_topics(kafka_broker, {topic: 4})
    table = events()
    result = replay(table, topic, kafka_broker, key="card_id", event_time="ts", arrival_time="arrival_ts")
    assert result.events == table.num_rows
    assert result.end_markers == 4
    assert sum(result.per_partition.values()) == table.num_rows

    records = consume_until_markers(kafka_broker, topic)
    data = [r for r in records if r.key != END_MARKER_KEY]
    markers = [r for r in records if r.key == END_MARKER_KEY]
    assert len(data) == table.num_rows and len(markers) == 4

    by_id = {row["event_id"]: row for row in table.to_pylist()}
    partitions_of_card: dict[str, set[int]] = defaultdict(set)
    arrival_per_partition: dict[int, list[int]] = defaultdict(list)
    for rec in data:
        value = json.loads(rec.value)
        row = by_id[value["event_id"]]
        assert value == row  # schema-less: the whole row, nulls included
        assert rec.timestamp == row["ts"]  # record timestamp = event time (ms)
        assert rec.key == row["card_id"].encode()
        partitions_of_card[row["card_id"]].add(rec.partition)
        arrival_per_partition[rec.partition].append(row["arrival_ts"])
    assert len(by_id) == len({json.loads(r.value)["event_id"] for r in data})  # every event exactly once
    assert all(len(ps) == 1 for ps in partitions_of_card.values())  # one card, one partition
    for arrivals in arrival_per_partition.values():  # sent in arrival order, not event-time order
        assert arrivals == sorted(arrivals)
    late = [r for r in data if json.loads(r.value)["event_id"] % 11 == 0]
    assert late, "the fixture should contain late arrivals"

    for m in markers:
        value = json.loads(m.value)
        assert is_end_marker(value) and value["partition"] == m.partition
        assert value["events"] == result.per_partition.get(m.partition, 0)


def test_end_markers_make_end_offsets_exact(kafka_broker: str, unique_topic: Callable[[str], str]) -> None:
    """With one marker batch per partition last, the broker's end offset covers every record (tansu workaround)."""
    topic = unique_topic("offsets")
    create_topics(kafka_broker, {topic: 3})
    result = replay(events(300), topic, kafka_broker)
    consumer = KafkaConsumer(bootstrap_servers=kafka_broker, group_id=None)
    try:
        parts = [TopicPartition(topic, p) for p in range(3)]
        end = consumer.end_offsets(parts)
    finally:
        consumer.close()
    for tp in parts:
        assert end[tp] == result.per_partition.get(tp.partition, 0) + 1  # events + the marker


class _CountingProducer:
    """A real KafkaProducer that notes the most record bytes (keys + values) ever sent but not yet acknowledged."""

    def __init__(self, **config: Any) -> None:
        self._producer = KafkaProducer(**config)
        self._sent: deque[tuple[Any, int]] = deque()
        self._bytes = 0
        self.max_unacked_bytes = 0

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, **kw: Any) -> Any:
        while self._sent and self._sent[0][0].is_done:  # one partition: acknowledged in send order
            self._bytes -= self._sent.popleft()[1]
        future = self._producer.send(topic, value=value, key=key, **kw)
        size = len(value or b"") + len(key or b"")
        self._sent.append((future, size))
        self._bytes += size
        self.max_unacked_bytes = max(self.max_unacked_bytes, self._bytes)
        return future

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


def test_replay_waits_for_a_broker_slower_than_it(
    kafka_broker: str, unique_topic: Callable[[str], str]
) -> None:
    """The broker drains slower than the replay sends; the replay must wait for it, not queue every record.

    One record per batch and the idempotent producer's one batch in flight per partition make the drain ~1 k
    records/s here, while the replay sends ~15 k/s. kafka-python's accumulator has no bound and each record's
    delivery timeout (1.5 s here, 120 s by default) runs from send(): without back-pressure all 3,000 records were
    queued at once, the drain took ~2.5 s and the tail expired ("Expiring 1 record(s) ... since batch creation")
    the way a 100 k backlog's tail did at the default timeout.
    """
    topic = unique_topic("slow")
    create_topics(kafka_broker, {topic: 1})
    window = 8 * 1024
    producer = _CountingProducer(
        bootstrap_servers=kafka_broker,
        acks="all",
        batch_size=256,  # one event per batch
        linger_ms=0,
        request_timeout_ms=1000,
        delivery_timeout_ms=1500,
    )
    try:
        result = replay(events(3000), topic, kafka_broker, producer=producer, max_pending_bytes=window)
    finally:
        producer.close()
    assert result.events == 3000 and result.per_partition == {0: 3000} and result.end_markers == 1
    assert producer.max_unacked_bytes <= window + 300  # the window plus the one record sent on top of it
    assert len([r for r in consume_until_markers(kafka_broker, topic) if r.key != END_MARKER_KEY]) == 3000


def test_replay_parquet_with_timestamp_column_and_rate(
    kafka_broker: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    topic = unique_topic("parquet")
    create_topics(kafka_broker, {topic: 2})
    n = 300
    table = pa.table(
        {
            "event_time": pa.array([T0 + 250 * i for i in range(n)], pa.timestamp("ms", tz="UTC")),
            "customer": [f"cust-{i % 9}" for i in range(n)],
            "amount": [float(i) for i in range(n)],
        }
    )
    path = tmp_path / "events.parquet"
    pq.write_table(table, path)
    t0 = time.monotonic()
    result = replay(path, topic, kafka_broker, key="customer", event_time="event_time", rate=1_000)
    elapsed = time.monotonic() - t0
    assert result.events == n
    assert 0.25 <= elapsed < 3.0, elapsed  # 300 events at 1,000/s: ~0.3 s
    data = [r for r in consume_until_markers(kafka_broker, topic) if r.key != END_MARKER_KEY]
    assert sorted(r.timestamp for r in data) == [T0 + 250 * i for i in range(n)]
    for rec in data:
        value = json.loads(rec.value)
        assert value["event_time"] == rec.timestamp  # timestamps travel as epoch ms
        assert rec.key == value["customer"].encode()


def test_malformed_injection(kafka_broker: str, unique_topic: Callable[[str], str]) -> None:
    topic = unique_topic("dlq-source")
    create_topics(kafka_broker, {topic: 1})
    table = events(100)
    result = replay(table, topic, kafka_broker, malformed_every=10)
    assert result.events == 100
    assert sum(result.malformed.values()) == 10
    assert set(result.malformed) == set(MALFORMED_KINDS)
    template = table.slice(0, 1).to_pylist()[0]
    sent = inject_malformed(kafka_broker, topic, template, kinds=[*MALFORMED_KINDS, "tombstone"])
    assert [kind for kind, _ in sent] == [*MALFORMED_KINDS, "tombstone"]

    # The injected messages come after the replay's end marker: read the partition until all have arrived.
    expected_total = 100 + 10 + 1 + len(sent)
    consumer = KafkaConsumer(bootstrap_servers=kafka_broker, group_id=None)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        everything: list[Any] = []
        deadline = time.monotonic() + 20
        while len(everything) < expected_total and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                everything.extend(batch)
    finally:
        consumer.close()
    records = [r for r in everything if r.key != END_MARKER_KEY]
    assert len(records) == 100 + 10 + len(sent)

    def classify(value: bytes | None) -> str:
        if value is None:
            return "tombstone"
        if value == b"":
            return "empty"
        try:
            obj = json.loads(value)
        except ValueError:
            return "bad_json"
        if not isinstance(obj, dict):
            return "not_object"
        if "card_id" not in obj or "ts" not in obj:
            return "missing_field"
        if not isinstance(obj["ts"], int):
            return "wrong_type"
        return "ok"

    kinds = [classify(r.value) for r in records]
    assert kinds.count("ok") == 100
    expected = {k: result.malformed[k] + 1 for k in MALFORMED_KINDS} | {"tombstone": 1}
    assert {k: kinds.count(k) for k in expected} == expected
    # Malformed messages keep the key and timestamp of the row they were made from, so they land in-stream.
    assert all(r.timestamp >= T0 for r in records)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _bound_addresses(port: int) -> set[str]:
    """Local addresses of sockets listening on ``port`` (from /proc/net/tcp*)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(addr)
    return found


def test_broker_lifecycle_by_pid(tmp_path: Path) -> None:
    """Start, loopback-only, stop by PID file; the context manager stops too."""
    pid_file = tmp_path / "tansu.pid"
    broker = start_broker(pid_file=pid_file)
    try:
        assert broker.startup_s < 10
        assert pid_file.read_text().strip() == str(broker.pid)
        assert _listening(broker.port)
        assert _bound_addresses(broker.port) <= {"0100007F"}  # 127.0.0.1 only
        with pytest.raises(BrokerError, match="already running"):
            start_broker(broker.port + 1, pid_file=pid_file)
        assert stop_broker(pid_file)
        assert not pid_file.exists()
        assert not broker.running()
        assert not _listening(broker.port)
        assert not stop_broker(pid_file)  # stopping twice is harmless
    finally:
        broker.stop()

    with local_broker(pid_file=tmp_path / "ctx.pid") as b:
        assert _listening(b.port)
        port = b.port
    assert not _listening(port)
    with pytest.raises(BrokerError, match="loopback"):
        start_broker(host="0.0.0.0")
