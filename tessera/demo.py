"""``tessera demo``: the whole story end to end on embedded defaults, with a summary at each step.

1. seeded synthetic payments (fraud scenarios, delayed labels) ending now;
2. a Kafka-protocol broker, three memcached servers and the embedded bulk store, started as local processes;
3. the PyFlink job tiles the replayed history into memcached while Spark uploads yesterday's batch state;
4. a point-in-time training set (Spark backfill) and an xgboost model;
5. the API scores live payments (``POST /v1/decide``) while they stream through Kafka and Flink: decisions with
   reasons, latency percentiles and stream freshness;
6. every process it started is stopped (by PID); everything it made stays under one folder.

Running it twice in a row starts from a clean folder each time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from features.compile import compile_repo
from features.plan import Plan
from features.synthetic import Dataset, generate
from features.windows import DAY_MS, MINUTE_MS, align

console = Console(width=None if sys.stdout.isatty() else 160)  # logs keep a row per line
ROOT = Path(__file__).resolve().parent.parent
FLINK_PYTHON = ROOT / ".venv-flink" / "bin" / "python"


@contextmanager
def step(n: int, title: str) -> Iterator[None]:
    console.rule(f"[bold]{n}. {title}")
    started = time.perf_counter()
    yield
    console.print(f"[dim]   ({time.perf_counter() - started:.1f} s)[/]")


def _pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p)) if xs else float("nan")


def _utc_date(ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ms / 1000))


def _flink_metrics(folder: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in folder.glob("*.json"):
        with contextlib.suppress(ValueError, OSError):
            for k, v in json.loads(f.read_text()).items():
                if k not in ("pid", "at") and isinstance(v, int | float):
                    out[k] = out.get(k, 0) + int(v)
    return out


def _start_stream_job(
    plan_file: Path, bootstrap: str, memcached: list[str], data_dir: Path
) -> subprocess.Popen[bytes]:
    if not FLINK_PYTHON.exists():
        raise RuntimeError(
            "the Flink environment is missing: run `make streaming` (or `make demo`, which does)"
        )
    cmd = [
        str(FLINK_PYTHON),
        "-m",
        "flink_jobs.job",
        "--plan",
        str(plan_file),
        "--all",
        "--bootstrap",
        bootstrap,
        "--memcached",
        ",".join(memcached),
        "--checkpoint-dir",
        str(data_dir / "checkpoints"),
        "--metrics-dir",
        str(data_dir / "flink-metrics"),
        "--out-of-orderness-ms",
        "2000",
        "--flush-interval-ms",
        "0",
        "--checkpoint-interval-ms",
        "5000",
    ]
    log = (data_dir / "logs" / "stream-job.log").open("ab")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        return subprocess.Popen(
            cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    finally:
        log.close()


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def _wait_stream(
    proc: subprocess.Popen[bytes], metrics_dir: Path, sent: int, data_dir: Path, timeout_s: float
) -> dict[str, int]:
    """Until the job has read every record sent and its tile counts have settled."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, int] = {}
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (data_dir / "logs" / "stream-job.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the stream job exited ({proc.returncode}):\n{tail}")
        m = _flink_metrics(metrics_dir)
        if m != last:
            last, stable_since = m, time.monotonic()
        elif (
            m.get("events_in", 0) + m.get("end_markers", 0) >= sent and time.monotonic() - stable_since > 2.0
        ):
            return m
        time.sleep(0.5)
    raise RuntimeError(f"the stream job did not catch up in {timeout_s:.0f} s (metrics: {last})")


def _held_out_attack(payments: pa.Table, before_ms: int, most: int = 12) -> list[dict[str, Any]]:
    """The last fraud episode before ``before_ms`` (one card's fraudulent payments of its last fraud day): held
    out of the history and sent live, so the demo shows the model and rules catching an attack as it happens."""
    fraud = payments.filter(
        pc.and_(pc.equal(payments.column("is_fraud"), 1), pc.less(payments.column("ts"), before_ms))
    )
    if fraud.num_rows == 0:
        return []
    rows = fraud.to_pylist()
    recent = [r for r in rows if r["ts"] >= rows[-1]["ts"] - DAY_MS]  # the last day's frauds
    counts: dict[str, int] = {}
    for r in recent:
        counts[r["card_id"]] = counts.get(r["card_id"], 0) + 1
    card = max(counts, key=lambda c: (counts[c], c))  # the busiest attack (e.g. card testing)
    episode = [r for r in recent if r["card_id"] == card]
    return episode[-most:]


def _training_left(history: pa.Table, seed: int = 3) -> pa.Table:
    """Labeled payments to train on: every fraud and 1 in 4 of the rest, from the second day on (some history)."""
    ts = history.column("ts").to_numpy()
    fraud = history.column("is_fraud").to_numpy() == 1
    rng = np.random.default_rng(seed)
    keep = (ts >= ts.min() + DAY_MS) & (fraud | (rng.random(len(ts)) < 0.25))
    return history.filter(pa.array(keep))


class _ApiServer:
    """uvicorn in a thread of this process, on a free loopback port; stopped by ``stop``."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        from flink_jobs.broker import free_port

        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, name="tessera-api", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def run_demo(
    data_dir: Path,
    *,
    days: int = 3,
    events_per_day: int = 8_000,
    live: int = 150,
    live_rate: float = 25.0,
    seed: int = 7,
    fraud_scale: float = 1.0,
) -> dict[str, Any]:
    """Run the demo; return a summary (also used by the tests)."""
    if threading.current_thread() is threading.main_thread():
        # A SIGTERM (or a CI timeout) still unwinds the ExitStack below, so every started process is stopped.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if data_dir.exists():
        shutil.rmtree(data_dir)
    for sub in ("offline", "logs", "flink-metrics", "bulk"):
        (data_dir / sub).mkdir(parents=True)
    summary: dict[str, Any] = {"data_dir": str(data_dir)}
    now = int(time.time() * 1000)

    with step(1, "Generate seeded synthetic payments with fraud scenarios and delayed labels"):
        ds: Dataset = generate(
            seed=seed,
            start_ms=now - days * DAY_MS,
            days=days,
            events_per_day=events_per_day,
            label_delay_days=(0.5, 2.0),
            fraud_scale=fraud_scale,
        )
        payments = ds.payments
        cut = now - 30 * MINUTE_MS  # the last half hour is replayed "live" while it is scored
        attack = _held_out_attack(payments, cut)
        held = pa.array(np.isin(payments.column("event_id").to_numpy(), [r["event_id"] for r in attack]))
        history = payments.filter(pc.and_(pc.less(payments.column("ts"), cut), pc.invert(held)))
        live_rows = payments.filter(pc.greater_equal(payments.column("ts"), cut)).slice(0, live).to_pylist()
        middle = len(live_rows) // 2  # the attack arrives mid-way through the live traffic
        live_rows = live_rows[:middle] + attack + live_rows[middle:]
        labels = ds.labels.filter(pc.less(ds.labels.column("ts"), cut))
        pq.write_table(history, data_dir / "offline" / "payments.parquet")
        pq.write_table(labels, data_dir / "offline" / "labels.parquet")
        n_fraud = int(pc.sum(history.column("is_fraud")).as_py())
        console.print(
            f"   {history.num_rows:,} past payments over {days} days ({n_fraud} fraudulent, "
            f"{100 * n_fraud / history.num_rows:.2f} %), {labels.num_rows:,} labels arrived so far, "
            f"{len(live_rows)} live payments to come -> {data_dir / 'offline'}"
        )
        summary["payments"] = history.num_rows

    plan: Plan = compile_repo(ROOT / "features" / "fraud")
    plan_file = data_dir / "plan.json"
    plan_file.write_text(plan.to_json())
    join = plan.join("fraud_v1")
    summary["features"] = sum(len(p.features) for p in join.parts) + len(join.derivations)

    with ExitStack() as stack:
        with step(2, "Start the broker, three memcached servers and the embedded bulk store"):
            from flink_jobs.broker import create_topics, start_broker
            from kvstore.embedded import EmbeddedBulkStore
            from kvstore.memcached import MemcachedStore
            from kvstore.services import start_memcached_cluster

            broker = start_broker(
                pid_file=data_dir / "logs" / "broker.pid", log_file=data_dir / "logs" / "broker.log"
            )
            stack.callback(broker.stop)
            memcached = start_memcached_cluster(3)
            for server in memcached:
                stack.callback(server.stop)
            bulk = EmbeddedBulkStore(data_dir / "bulk")
            stack.callback(bulk.close)
            stream_store = MemcachedStore([m.address for m in memcached])
            stack.callback(stream_store.close)
            topics = {"payments": 4, "labels": 2}
            for gb in plan.group_bys:
                topics.setdefault(gb.source.late_topic, 1)
                topics.setdefault(gb.source.dead_letter_topic, 1)
            create_topics(broker.bootstrap, topics)
            console.print(
                f"   broker {broker.bootstrap} (PID {broker.pid}); memcached "
                + ", ".join(f"{m.address} (PID {m.pid})" for m in memcached)
                + f"; bulk store {data_dir / 'bulk'}; plan {plan.plan_hash}: {len(plan.group_bys)} "
                f"GroupBys, fraud_v1 with {summary['features']} features"
            )

        with step(
            3, "Stream the history through Flink into memcached; Spark uploads yesterday's batch state"
        ):
            from flink_jobs.replay import replay

            job = _start_stream_job(plan_file, broker.bootstrap, [m.address for m in memcached], data_dir)
            stack.callback(_stop_group, job)
            sent = replay(history, "payments", broker.bootstrap, key="card_id", arrival_time="arrival_ts")
            sent_labels = replay(labels, "labels", broker.bootstrap, key="merchant_id")
            console.print(
                f"   replayed {sent.events:,} payments ({sent.events_per_s:,.0f}/s) and "
                f"{sent_labels.events:,} labels into Kafka (record time = event time, in arrival order)"
            )
            from spark_jobs.session import spark_session
            from spark_jobs.upload import run_upload

            spark = spark_session(app_name="tessera-demo")
            stack.callback(spark.stop)
            yesterday = _utc_date(align(now, DAY_MS) - DAY_MS)
            result = run_upload(
                plan,
                yesterday,
                {
                    "payments": data_dir / "offline" / "payments.parquet",
                    "labels": data_dir / "offline" / "labels.parquet",
                },
                bulk,
                spark=spark,
            )
            console.print(
                f"   batch upload for {yesterday}: "
                + ", ".join(f"{g.group_by} {g.keys:,} keys" for g in result.uploads)
            )
            m = _wait_stream(
                job, data_dir / "flink-metrics", sent.records + sent_labels.records, data_dir, timeout_s=600
            )
            console.print(
                f"   stream job: {m.get('events_in', 0):,} records in, {m.get('applied', 0):,} tile "
                f"updates, {m.get('late', 0)} late (-> payments.late), {m.get('dead_lettered', 0)} "
                f"dead-lettered, {m.get('flushes', 0):,} flushes to memcached"
            )
            summary["stream"] = m

        with step(4, "Point-in-time training set (Spark backfill) and the xgboost fraud model"):
            from serving.scoring import format_metrics, train
            from spark_jobs.backfill import training_set

            left = _training_left(history)
            started = time.perf_counter()
            table = training_set(
                plan,
                "fraud_v1",
                left,
                {
                    "payments": str(data_dir / "offline" / "payments.parquet"),
                    "labels": str(data_dir / "offline" / "labels.parquet"),
                },
                spark=spark,
            )
            assert table is not None
            elapsed = time.perf_counter() - started
            pq.write_table(table, data_dir / "training_set.parquet")
            console.print(
                f"   {table.num_rows:,} labeled payments x {summary['features']} features in {elapsed:.1f} s "
                f"({table.num_rows / elapsed:,.0f} rows/s) -> {data_dir / 'training_set.parquet'}"
            )
            trained = train(table, join, out_dir=data_dir / "model", num_boost_round=150)
            console.print(
                "   " + format_metrics(trained).replace("\n", "\n   "), markup=False, highlight=False
            )
            summary["pr_auc"] = trained.metrics["valid"]["pr_auc"]

        with step(5, "Score live payments through the API while they stream through Kafka and Flink"):
            summary.update(
                _live(plan, data_dir, live_rows, broker.bootstrap, bulk, stream_store, live_rate, stack)
            )

        with step(6, "Nightly consistency check: logged online vectors vs offline recomputation"):
            summary.update(_consistency(plan, data_dir, history, summary.pop("live_events"), spark))

    console.rule("[bold green]done")
    console.print(f"Every process the demo started is stopped. Everything it made is under {data_dir}")
    return summary


def _live(
    plan: Plan,
    data_dir: Path,
    live_rows: list[dict[str, Any]],
    bootstrap: str,
    bulk: Any,
    stream: Any,
    rate: float,
    stack: ExitStack,
) -> dict[str, Any]:
    import httpx
    from kafka import KafkaProducer

    from flink_jobs.replay import encode_value
    from serving.api import create_app
    from serving.feature_log import FeatureLogger
    from serving.fetcher import Fetcher
    from serving.rules import Rules
    from serving.scoring import Decider

    join = plan.join("fraud_v1")
    logger = FeatureLogger(data_dir / "feature_log", sample_rate=1.0)  # the demo logs every served vector
    fetcher = Fetcher(plan, (bulk, stream), logger=logger)
    probe = Fetcher(plan, (bulk, stream))  # freshness probes: not served vectors, so not logged
    decider = Decider(data_dir / "model", Rules.default(join.output_schema))
    stack.callback(decider.close)
    api = _ApiServer(create_app(plan, fetcher, decider))
    stack.callback(api.stop)
    client = httpx.Client(base_url=api.url, timeout=5.0)
    stack.callback(client.close)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    stack.callback(producer.close)
    console.print(f"   API on {api.url}; {len(live_rows)} live payments at {rate:.0f}/s")

    decide_ms: list[float] = []
    fetch_ms: list[float] = []
    fresh_ms: list[float] = []
    decisions: list[tuple[dict[str, Any], dict[str, Any]]] = []
    request_cols = list(join.left.schema)
    next_id = 10**12
    for i, row in enumerate(live_rows):
        t = int(time.time() * 1000)
        event = {**row, "ts": t, "arrival_ts": t, "event_id": next_id + i}
        request = {c: event[c] for c in request_cols}
        started = time.perf_counter()
        resp = client.post(
            "/v1/decide", json=request, params={"at_ms": t}
        )  # decided as of the payment's time
        decide_ms.append((time.perf_counter() - started) * 1000)
        resp.raise_for_status()
        body = resp.json()
        fetch_ms.append(body["features"]["timings_ms"].get("total", float("nan")))
        decisions.append((event, body))
        before = body["features"]["values"].get("card_amount_usd_count_10m") or 0
        sent_at = time.perf_counter()
        producer.send(
            "payments", key=str(event["card_id"]).encode(), value=encode_value(event), timestamp_ms=t
        )
        producer.flush()
        if i % 5 == 0:  # freshness: produced -> visible in the fetched vector
            while time.perf_counter() - sent_at < 5.0:
                vec = probe.fetch("fraud_v1", {**request, "ts": t + 1}, at_ms=t + 1)
                if (vec.values.get("card_amount_usd_count_10m") or 0) > before:
                    fresh_ms.append((time.perf_counter() - sent_at) * 1000)
                    break
                time.sleep(0.002)
        time.sleep(max(0.0, 1.0 / rate - (time.perf_counter() - started)))

    logger.close()
    table = Table("payment", "card", "amount", "action", "score", "reasons", box=None)
    shown = sorted(decisions, key=lambda d: {"decline": 0, "review": 1, "approve": 2}[d[1]["action"]])[:10]
    for event, body in shown:
        reasons = "; ".join(r["text"] for r in body["reasons"][:3]) or "-"
        score = "-" if body["score"] is None else f"{body['score']:.3f}"
        table.add_row(
            str(event["payment_id"]),
            str(event["card_id"]),
            f"{event['amount']:,.2f} {event['currency']}",
            body["action"],
            score,
            reasons[:90],
        )
    console.print(table)
    actions = {a: sum(1 for _, b in decisions if b["action"] == a) for a in ("approve", "review", "decline")}
    console.print(
        f"   decisions: {actions['approve']} approve, {actions['review']} review, {actions['decline']} decline"
    )
    console.print(
        f"   POST /v1/decide p50 {_pct(decide_ms, 50):.1f} ms, p99 {_pct(decide_ms, 99):.1f} ms "
        f"(fetch inside it p50 {_pct(fetch_ms, 50):.1f} ms, p99 {_pct(fetch_ms, 99):.1f} ms)"
    )
    if fresh_ms:
        console.print(
            f"   stream freshness (produced -> in the served vector): p50 {_pct(fresh_ms, 50):.0f} ms, "
            f"p99 {_pct(fresh_ms, 99):.0f} ms over {len(fresh_ms)} payments"
        )
    return {
        "live_events": [event for event, _ in decisions],
        "decisions": actions,
        "decide_p50_ms": _pct(decide_ms, 50),
        "decide_p99_ms": _pct(decide_ms, 99),
        "fresh_p50_ms": _pct(fresh_ms, 50),
        "fresh_n": len(fresh_ms),
    }


def _consistency(
    plan: Plan, data_dir: Path, history: pa.Table, live_events: list[dict[str, Any]], spark: Any
) -> dict[str, Any]:
    """Today's logged vectors against the backfill over the offline tables as they are after today's ingest
    (the history plus the live payments)."""
    from tessera.nightly import check_join

    ingested = pa.concat_tables([history, pa.Table.from_pylist(live_events, schema=history.schema)])
    offline = data_dir / "offline-after-ingest"
    offline.mkdir(exist_ok=True)
    pq.write_table(ingested, offline / "payments.parquet")
    shutil.copy(data_dir / "offline" / "labels.parquet", offline / "labels.parquet")
    day = _utc_date(int(live_events[0]["ts"])) if live_events else _utc_date(int(time.time() * 1000))
    summary = check_join(
        plan,
        "fraud_v1",
        day,
        data_dir / "feature_log",
        data_dir / "reports",
        {"payments": str(offline / "payments.parquet"), "labels": str(offline / "labels.parquet")},
        spark=spark,
    )
    causes = ", ".join(f"{k} {v}" for k, v in sorted(summary["causes"].items())) or "none"
    console.print(
        f"   {summary['rows']} logged vectors, {summary['inconsistent']} inconsistent cells; likely causes: "
        f"{causes}"
    )
    console.print(f"   report: {summary['report']}  (JSON: {summary['summary']})")
    return {
        "consistency": {"rows": summary["rows"], "causes": summary["causes"], "report": summary["report"]}
    }


def main() -> None:
    run_demo(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".data/demo"))
