"""The PyFlink tiling job end to end: a real broker (tansu), real memcached, the Flink mini-cluster.

Seeded payments are replayed into a topic; the job (``flink_jobs.job``, bounded at the topic's end) tiles them into
memcached; the test reads the period values back, merges them with ``features.merge.merge_features`` (no batch
state: the stream holds everything from the first day) and compares every feature with the reference fold over the
events the job applied (all events minus those it routed to the late topic). Also: malformed and very late events
are routed and counted without touching the values; a job killed with SIGKILL mid-stream and restarted from its
latest checkpoint ends with the same values (nothing lost, nothing counted twice).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from stream_check import ReadValues, compare_at

from features.compile import compile_repo
from features.plan import GroupByPlan, Plan
from features.synthetic import generate
from features.tiles import tile_suffix
from features.windows import DAY_MS, HOUR_MS, MINUTE_MS
from flink_jobs.broker import create_topics
from flink_jobs.replay import replay
from kvstore.codec import KeyLayout, encode_entity
from kvstore.memcached import MemcachedStore
from kvstore.services import Service, start_memcached_cluster

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]
FRAUD = ROOT / "features" / "fraud"
GROUP_BYS = ("card", "merchant")


@pytest.fixture
def memcached() -> Iterator[list[str]]:
    """Two memcached servers of this test's own (plan keys are fixed, so tests must not share servers)."""
    nodes: list[Service] = start_memcached_cluster(2)
    yield [n.address for n in nodes]
    for n in nodes:
        n.stop()


def plan_on_topics(name: Callable[[str], str]) -> Plan:
    """The fraud plan with this test's own topics (the semantic hashes, hence the keys, are unchanged)."""
    plan = compile_repo(FRAUD)
    gbs = []
    for gb in plan.group_bys:
        src = gb.source
        src = dataclasses.replace(
            src,
            topic=name(src.topic),
            late_topic=name(src.late_topic),
            dead_letter_topic=name(src.dead_letter_topic),
        )
        gbs.append(dataclasses.replace(gb, source=src))
    return dataclasses.replace(plan, group_bys=tuple(gbs))


def job_command(
    flink_python: Path, plan_file: Path, bootstrap: str, servers: list[str], tmp: Path, bounded: bool = True
) -> list[str]:
    cmd = [str(flink_python), "-m", "flink_jobs.job", "--plan", str(plan_file)]
    for n in GROUP_BYS:
        cmd += ["--group-by", n]
    return [
        *cmd,
        "--bootstrap",
        bootstrap,
        "--memcached",
        ",".join(servers),
        *(["--bounded"] if bounded else []),
        "--checkpoint-dir",
        str(tmp / "chk"),
        "--checkpoint-interval-ms",
        "500",
        "--metrics-dir",
        str(tmp / "metrics"),
        "--flush-interval-ms",
        "10",
    ]


def start_job(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as f:
        return subprocess.Popen(
            cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def wait_job(proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"job did not finish in {timeout_s} s:\n{log.read_text()[-4000:]}")
    if rc != 0:
        pytest.fail(f"job failed ({rc}):\n{log.read_text()[-6000:]}")


def metrics(tmp: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in (tmp / "metrics").glob("*.json"):
        for k, v in json.loads(f.read_text()).items():
            if k not in ("pid", "at"):
                out[k] = out.get(k, 0) + v
    return out


def read_topic(bootstrap: str, topic: str, timeout_s: float = 5.0) -> list[bytes]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(timeout_s * 1000),
        group_id=None,
    )
    try:
        return [m.value for m in consumer]
    finally:
        consumer.close()


def memcached_reader(gb: GroupByPlan, servers: list[str]) -> tuple[ReadValues, MemcachedStore]:
    assert gb.stream is not None
    store = MemcachedStore(servers, timeout_s=1.0, connect_timeout_s=1.0)
    layout = KeyLayout(gb.stream.dataset, gb.semantic_hash)
    dataset = gb.stream.dataset

    def read(key: tuple[Any, ...], wanted: set[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        ent = encode_entity(list(key))
        keys = {layout.key(ent, tile_suffix(s, p)): (s, p) for s, p in wanted}
        got = store.multi_get(dataset, list(keys))
        return {keys[k]: v for k, v in got.items()}

    return read, store


def check_values(
    plan: Plan, servers: list[str], events: list[dict[str, Any]], late_ids: set[int], n_keys: int = 12
) -> int:
    applied = [e for e in events if e["event_id"] not in late_ids]
    end = max(e["ts"] for e in applied) + 1
    times = [end, end + 5 * MINUTE_MS, end + HOUR_MS, end + DAY_MS]
    total = 0
    for name in GROUP_BYS:
        gb = plan.group_by(name)
        key_col = gb.keys[0]
        counts: dict[Any, int] = {}
        for e in applied:
            counts[e[key_col]] = counts.get(e[key_col], 0) + 1
        keys = [(k,) for k in sorted(counts, key=lambda k: (-counts[k], k))[:n_keys]] + [("nobody",)]
        read, store = memcached_reader(gb, servers)
        try:
            compared, bad = compare_at(gb, read, applied, keys, times)
        finally:
            store.close()
        assert not bad, f"{name}: {len(bad)} mismatches of {compared}, e.g. {bad[:3]}"
        total += compared
    return total


def prepare(
    tmp_path: Path,
    kafka_broker: str,
    unique_topic: Callable[[str], str],
    days: int,
    per_day: int,
    partitions: int = 2,
    late_fraction: float = 0.005,
) -> tuple[Plan, Path, list[dict[str, Any]], str]:
    plan = plan_on_topics(unique_topic)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.to_json())
    src = plan.group_by("card").source
    create_topics(kafka_broker, {src.topic: partitions, src.late_topic: 1, src.dead_letter_topic: 1})
    ds = generate(
        seed=21, days=days, events_per_day=per_day, n_cards=60, n_merchants=12, late_fraction=late_fraction
    )
    table = ds.payments
    return plan, plan_file, table.to_pylist(), src.topic


def late_event_ids(kafka_broker: str, plan: Plan) -> set[int]:
    src = plan.group_by("card").source
    return {json.loads(v)["event_id"] for v in read_topic(kafka_broker, src.late_topic)}


@pytest.mark.parametrize("batch_ms", [5, 0], ids=["batches", "per-element"])
def test_stream_equals_reference_with_bad_and_late_data(
    tmp_path: Path,
    kafka_broker: str,
    flink_python: Path,
    unique_topic: Callable[[str], str],
    memcached: list[str],
    batch_ms: int,
) -> None:
    """Both paths of the job (micro-batches, the default; one record per Python call, kept for parallelism > 1)."""
    plan, plan_file, events, topic = prepare(
        tmp_path, kafka_broker, unique_topic, days=1, per_day=2_500, partitions=1
    )
    # One partition: a bounded replay is read partition after partition, and the watermark (the minimum over
    # partitions) stays at its start until every partition has been reached; with one, "very late" is certain.
    first_ts = min(e["ts"] for e in events)
    last_arrival = max(e["arrival_ts"] for e in events)
    # Very late events: event times a day before the data, sent last (any watermark is past them by then).
    very_late = [
        {
            **events[i],
            "event_id": 10_000_000 + i,
            "ts": first_ts - DAY_MS + i * 1000,
            "arrival_ts": last_arrival + 1 + i,
        }
        for i in range(5)
    ]
    sent = replay(
        pa.Table.from_pylist([*events, *very_late]),
        topic,
        kafka_broker,
        arrival_time="arrival_ts",
        malformed_every=97,
    )
    assert sent.events == len(events) + len(very_late)
    log = tmp_path / "job.log"
    cmd = [
        *job_command(flink_python, plan_file, kafka_broker, memcached, tmp_path),
        "--batch-ms",
        str(batch_ms),
    ]
    proc = start_job(cmd, log)
    wait_job(proc, log, 110)

    m = metrics(tmp_path)
    src = plan.group_by("card").source
    dlq = [json.loads(v) for v in read_topic(kafka_broker, src.dead_letter_topic)]
    n_bad = sum(sent.malformed.values())
    assert n_bad > 10
    assert len(dlq) == n_bad == m["dead_lettered"], (len(dlq), sent.malformed, m)
    assert all(d["reason"] for d in dlq)
    late_ids = late_event_ids(kafka_broker, plan)
    assert {e["event_id"] for e in very_late} <= late_ids
    assert m["late"] == len(late_ids)
    # Every late event really was behind the allowed lateness when it arrived (in send order).
    wm = None
    candidates = set()
    for e in sorted([*events, *very_late], key=lambda e: (e["arrival_ts"], e["event_id"])):
        if wm is not None and e["ts"] < wm - src.allowed_lateness_ms:
            candidates.add(e["event_id"])
        wm = e["ts"] if wm is None else max(wm, e["ts"])
    assert late_ids <= candidates
    assert m["events_in"] == len(events) + len(very_late) + n_bad
    assert m["late_at_tiler"] == 0 and m["flush_errors"] == 0
    assert m["flushes"] > 0
    compared = check_values(plan, memcached, [*events, *very_late], late_ids)
    assert compared > 1000


def test_kill_and_restore_from_checkpoint(
    tmp_path: Path,
    kafka_broker: str,
    flink_python: Path,
    unique_topic: Callable[[str], str],
    memcached: list[str],
) -> None:
    plan, plan_file, events, topic = prepare(
        tmp_path, kafka_broker, unique_topic, days=2, per_day=4_000, late_fraction=0.0
    )
    # No late events here: watermarks are not part of a checkpoint, so an event late before the crash may be on
    # time after the restore (it then is both in the late topic and applied; the nightly batch corrects either).
    # Unbounded job (a bounded KafkaSource restored from a checkpoint did not stop at its end on tansu).
    replay(pa.Table.from_pylist(events), topic, kafka_broker, arrival_time="arrival_ts")
    log = tmp_path / "job.log"
    # Three hash buckets of keys (the default is one): several buckets' pending batches restored and replayed;
    # a slice of the keys compacted every ~40 rows (--compact-rows 300 over 8 slices; the default is 20,000), so the
    # checkpoint holds key values too, of slices compacted through different batches.
    cmd = [
        *job_command(flink_python, plan_file, kafka_broker, memcached, tmp_path, bounded=False),
        "--buckets",
        "3",
        "--compact-rows",
        "300",
    ]
    proc = start_job(cmd, log)
    # Kill -9 once a good part of the stream is applied and a checkpoint is complete.
    deadline = time.monotonic() + 90
    from flink_jobs.job import latest_checkpoint

    killed_at = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"job ended before the kill (too fast? make the data bigger):\n{log.read_text()[-3000:]}"
            )
        applied = metrics(tmp_path).get("applied", 0)
        if applied > 0.25 * len(events) and latest_checkpoint(tmp_path / "chk") is not None:
            killed_at = applied
            kill_group(proc)
            break
        time.sleep(0.2)
    assert killed_at, f"no progress:\n{log.read_text()[-3000:]}"
    chk = latest_checkpoint(tmp_path / "chk")
    assert chk is not None
    for f in (tmp_path / "metrics").glob("*.json"):
        f.unlink()
    proc = start_job([*cmd, "--restore", "latest"], log)
    try:
        # Unbounded: done when the end marker (the last record) has been read and the values check out.
        deadline = time.monotonic() + 90
        while metrics(tmp_path).get("end_markers", 0) < 1:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"restored job did not reach the end:\n{log.read_text()[-4000:]}")
            time.sleep(0.3)
        assert "restoring from" in log.read_text()
        assert not late_event_ids(kafka_broker, plan)
        for attempt in range(20):
            try:
                compared = check_values(plan, memcached, events, set())
                break
            except AssertionError:
                if attempt == 19:
                    raise
                time.sleep(0.5)  # the last flushes are a timer away
        assert compared > 1000
        after = metrics(tmp_path)
        assert after["flush_errors"] == 0 and after["late_at_tiler"] == 0
        assert after["replayed"] > 0  # rows of pending batches in the checkpoint were applied again
        assert after["compactions"] > 0
    finally:
        kill_group(proc)
