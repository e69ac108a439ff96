"""The feature log to a Kafka topic (real broker): same rows as the parquet log once landed; never blocks a fetch.

The same served vectors go to a parquet logger and to a ``kafka://`` logger; :func:`land_topic` lands the topic
into partitioned parquet, and the consistency job's reader (:func:`spark_jobs.consistency.read_log`) must see the
same rows from both (apart from the per-row log id and logging time). Landing is resumable (a second run lands
nothing new), skips records that are not log rows, and a row landed twice is read once.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer

from features.consistency import LOG_COLUMNS, LOG_ID
from kvstore.services import free_port
from serving.feature_log import FeatureLogger, KafkaSink, land_topic, open_sink, parse_kafka_url
from serving.fetcher import FeatureVector
from spark_jobs.consistency import read_log
from tessera.config import Settings
from tessera.nightly import feature_log_dir

pytestmark = pytest.mark.services

T0 = 1_709_251_200_000 + 5 * 3_600_000  # 2024-03-01 05:00 UTC
DATE = "2024-03-01"


def _log(logger: FeatureLogger, i: int) -> bool:
    card = f"c{i % 7}"
    at = T0 + i * 97_000  # spans two hours
    return logger.log(
        FeatureVector(
            "j", at, {"card_id": card, "n": i, "avg": i / 3, "hist": {"a": float(i)}, "last": ["x"]}
        ),
        {"card_id": card, "ts": at},
        plan_hash="p",
        keys={"card": [card]},
        batch={"card": ("2024-02-29", T0 - 5 * 3_600_000)},
    )


def _content(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    skip = {LOG_ID, "logged_at_ms"}
    return sorted(tuple((k, r[k]) for k in LOG_COLUMNS if k not in skip) for r in rows)


def test_kafka_url_and_sink_selection(tmp_path: Path) -> None:
    assert parse_kafka_url("kafka://127.0.0.1:9092,127.0.0.1:9093/feature_log") == (
        "127.0.0.1:9092,127.0.0.1:9093",
        "feature_log",
    )
    for bad in ("kafka://127.0.0.1:9092", "kafka:///topic", "kafka://h:1/a/b"):
        with pytest.raises(ValueError, match="kafka://host:port/topic"):
            parse_kafka_url(bad)
    assert isinstance(open_sink("kafka://127.0.0.1:9092/t"), KafkaSink)
    assert not isinstance(open_sink(tmp_path), KafkaSink)
    s = Settings.from_env({"TESSERA_DATA_DIR": str(tmp_path)})
    assert s.feature_log == str(tmp_path / "feature_log")
    assert feature_log_dir(s, None) == tmp_path / "feature_log"  # a directory: nothing to land


def test_kafka_log_lands_as_the_same_rows_as_the_parquet_log(kafka_broker: str, tmp_path: Path) -> None:
    topic = f"test-feature-log-{uuid.uuid4().hex[:8]}"
    url = f"kafka://{kafka_broker}/{topic}"
    n = 60
    with (
        FeatureLogger(tmp_path / "direct", sample_rate=1.0, flush_interval_s=0.05) as direct,
        FeatureLogger(url, sample_rate=1.0, flush_interval_s=0.05, batch_rows=25) as kafka,
    ):
        for i in range(n):
            assert _log(direct, i) and _log(kafka, i)
        assert direct.flush() and kafka.flush(timeout_s=30)
        stats = kafka.stats()
    assert stats["written"] == n and stats["dropped"] == 0 and stats["write_errors"] == 0

    consumer = KafkaConsumer(
        topic, bootstrap_servers=kafka_broker, auto_offset_reset="earliest", consumer_timeout_ms=5_000
    )
    records = list(consumer)
    consumer.close()
    assert len(records) == n
    values = [json.loads(r.value) for r in records]
    assert all(r.key.decode() == v[LOG_ID] for r, v in zip(records, values, strict=True))
    assert {r.timestamp for r in records} == {v["at_ms"] for v in values}

    landed = tmp_path / "landed"
    first = land_topic(url, landed, idle_s=2.0)
    assert first == {"landed": n, "skipped": 0, "files": first["files"]} and first["files"] >= 2
    assert {p.parent.name for p in landed.rglob("part-*.parquet")} == {"hour=05", "hour=06"}
    want = read_log(tmp_path / "direct", DATE).to_pylist()
    got = read_log(landed, DATE).to_pylist()
    assert len(want) == len(got) == n
    assert _content(got) == _content(want)

    # resumable: nothing new; a record that is not a log row is skipped; a row landed twice is read once
    producer = KafkaProducer(bootstrap_servers=kafka_broker)
    producer.send(topic, key=b"x", value=b"not json")
    producer.send(topic, key=b"y", value=json.dumps({"join": "j"}).encode())
    producer.send(topic, key=got[0][LOG_ID].encode(), value=json.dumps(got[0]).encode())
    producer.flush()
    producer.close()
    again = land_topic(url, landed, idle_s=2.0)
    assert again["landed"] == 1 and again["skipped"] == 2
    assert len(read_log(landed, DATE)) == n
    assert land_topic(url, landed, idle_s=2.0)["landed"] == 0

    # the setting a deployment uses: TESSERA_FEATURE_LOG=kafka://… lands into <data dir>/feature_log
    s = Settings.from_env({"TESSERA_DATA_DIR": str(tmp_path / "data"), "TESSERA_FEATURE_LOG": url})
    root = feature_log_dir(s, None)
    assert root == tmp_path / "data" / "feature_log"
    assert len(read_log(root, DATE)) == n


def test_an_unreachable_broker_never_blocks_or_fails_a_fetch(tmp_path: Path) -> None:
    url = f"kafka://127.0.0.1:{free_port()}/nobody-listens"
    sink = KafkaSink.from_url(url, send_timeout_s=1.0)  # the writer thread gives up on a batch sooner
    logger = FeatureLogger(sink, sample_rate=1.0, queue_size=8, batch_rows=4, flush_interval_s=0.05)
    started = time.perf_counter()
    results = [_log(logger, i) for i in range(200)]
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"logging 200 vectors took {elapsed:.2f} s"
    assert any(results) and not all(results)
    logger.flush(timeout_s=30)
    logger.close(timeout_s=30)
    stats = logger.stats()
    assert stats["written"] == 0 and stats["write_errors"] >= 1
    assert stats["dropped"] + stats["queued"] + 4 * stats["write_errors"] >= 200 - 8 - 4
    assert stats["log_errors"] == 0
