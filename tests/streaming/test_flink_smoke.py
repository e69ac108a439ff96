"""A real PyFlink job (Flink 2.3 mini-cluster, Kafka connector) reads every replayed event from the broker.

The job (flink_jobs/smoke.py) runs in .venv-flink as a subprocess; it must count exactly the replayed events per
card, see the Kafka record timestamp equal to the JSON event time on every record, find no record behind the
watermark (watermarks come from record timestamps per partition), and skip malformed messages without failing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from flink_jobs.broker import create_topics
from flink_jobs.replay import replay

pytestmark = pytest.mark.services

T0 = 1_709_251_200_000
ROOT = Path(__file__).resolve().parents[2]


def payments(n: int, cards: int) -> pa.Table:
    """Skewed card activity (a few busy cards), ties on the same millisecond, a null column."""
    card = [f"card-{(i * i + 3 * i) % cards}" if i % 4 else f"card-{i % 3}" for i in range(n)]
    ts = [T0 + 37 * (i // 2) for i in range(n)]  # pairs share a millisecond
    return pa.table(
        {
            "event_id": pa.array(range(n), pa.int64()),
            "ts": pa.array(ts, pa.int64()),
            "card_id": card,
            "amount": [float(i % 97) for i in range(n)],
            "ip": [None if i % 3 else "10.0.0.1" for i in range(n)],
        }
    )


@pytest.mark.timeout(150)
def test_pyflink_kafka_source_sees_every_event(
    kafka_broker: str, flink_python: Path, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    topic = unique_topic("flink-smoke")
    create_topics(kafka_broker, {topic: 4})
    table = payments(3_000, cards=60)
    sent = replay(table, topic, kafka_broker, key="card_id", event_time="ts", malformed_every=500)
    assert sent.events == 3_000 and sum(sent.malformed.values()) == 6

    out = tmp_path / "counts.json"
    t0 = time.monotonic()
    cmd = [str(flink_python), "-m", "flink_jobs.smoke", "--bootstrap", kafka_broker, "--topic", topic]
    cmd += ["--group-id", f"smoke-{topic}", "--out", str(out)]
    # Own process group: on a timeout, kill the job's JVM too, not just its Python client.
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"smoke job timed out after 120 s:\n{stderr[-6000:]}")
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, f"smoke job failed:\n{stdout[-3000:]}\n{stderr[-6000:]}"
    result = json.loads(out.read_text())

    expected = Counter(table["card_id"].to_pylist())
    assert result["counts"] == dict(expected)  # every event, exactly once, per key
    assert result["events"] == table.num_rows
    assert result["ts_mismatch"] == 0  # Kafka record timestamp == event time
    assert result["late"] == 0  # per-partition watermarks from record timestamps: nothing behind them
    assert result["malformed"] == 6  # skipped and counted; the job kept going
    assert result["end_markers"] == 4
    assert elapsed < 90, f"smoke job took {elapsed:.1f} s"
