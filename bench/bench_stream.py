"""Streaming benchmark: sustained throughput and freshness of the PyFlink tiling job (``flink_jobs.job``).

    .venv/bin/python bench/bench_stream.py                      # card GroupBy, 300/1000/3000 events/s
    .venv/bin/python bench/bench_stream.py --group-by merchant --seconds 30 --write-docs
    .venv/bin/python bench/bench_stream.py --backlog-time days --skip-freshness   # the multi-day catch-up

The defaults are the settings docs/benchmarks.md reports (thread mode, bundles of 100 / 5 ms, 1 ms buffer
timeout, flush every 10 ms (20 ms in the throughput run), a 100,000-payment backlog timed as a live stream).

Everything is real and local: a tansu broker, one memcached, the job in ``.venv-flink`` (Flink mini-cluster).

* **Throughput**: ``--backlog`` synthetic payments are put in a topic first; the job (bounded) reads them as fast as
  it can. Sustained events/s = events read between the first and the last metrics sample / the time between
  them (start-up excluded; the job's operators write their counters every second).
* **Freshness**: an unbounded job on an empty topic; payments are produced at each rate (event time = wall
  clock). Every ``--probe-every``-th event is a probe with an entity key of its own; a poller thread asks memcached
  (every ms) for the period value that event creates. Freshness = first read that finds it - the moment just
  before ``producer.send``. So it covers producer batching, the broker, the job (parse, row logic, keyed
  state, flush timer) and the memcached write, plus up to ~1 ms of polling.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from features.compile import compile_repo  # noqa: E402
from features.plan import Plan  # noqa: E402
from features.synthetic import generate  # noqa: E402
from features.tiles import tile_suffix  # noqa: E402
from features.windows import align  # noqa: E402
from flink_jobs.broker import create_topics, start_broker  # noqa: E402
from flink_jobs.replay import encode_value, replay  # noqa: E402
from kvstore.codec import KeyLayout, encode_entity  # noqa: E402
from kvstore.memcached import MemcachedStore  # noqa: E402
from kvstore.services import start_memcached_cluster  # noqa: E402

FLINK_PYTHON = ROOT / ".venv-flink" / "bin" / "python"
DOCS = ROOT / "docs" / "benchmarks.md"


def plan_with_topics(suffix: str) -> Plan:
    plan = compile_repo(ROOT / "features" / "fraud")
    gbs = []
    for gb in plan.group_bys:
        s = gb.source
        s = dataclasses.replace(
            s,
            topic=f"{s.topic}-{suffix}",
            late_topic=f"{s.late_topic}-{suffix}",
            dead_letter_topic=f"{s.dead_letter_topic}-{suffix}",
        )
        gbs.append(dataclasses.replace(gb, source=s))
    return dataclasses.replace(plan, group_bys=tuple(gbs))


#: Options passed on to the job as they are, when given.
JOB_FLAGS = (
    "--flush-interval-ms",
    "--flush-cost-share",
    "--full-gc-s",
    "--compact-rows",
    "--compact-periods",
    "--open-tile-lead-ms",
)


def job_args(args: argparse.Namespace) -> list[str]:
    out = [
        "--bundle-size",
        str(args.bundle_size),
        "--bundle-time-ms",
        str(args.bundle_time_ms),
        "--buffer-timeout-ms",
        str(args.buffer_timeout_ms),
        "--execution-mode",
        args.execution_mode,
        "--parallelism",
        str(args.parallelism),
    ]
    for flag in JOB_FLAGS:  # the job's own default where not given
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            out += [flag, str(value)]
    return out


def start_job(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as f:
        return subprocess.Popen(
            cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )


def stop_job(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def read_metrics(d: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for f in d.glob("*.json"):
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        for k, v in data.items():
            if k == "at":
                out[f"at:{f.stem}"] = v
            elif k != "pid":
                out[k] = out.get(k, 0) + v
    return out


def tree_threads_cpu_s(pid: int) -> dict[str, float]:
    """User + system CPU seconds of every thread of ``pid``'s session (the job's client, its JVM and, in process
    mode, the Python workers), summed per thread name (digits dropped, so a pool's threads add up)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[3]) != pid:  # session id
                continue
            tasks = list((d / "task").iterdir())
        except (OSError, ValueError, IndexError):
            continue
        for t in tasks:
            try:
                stat = (t / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            name = "".join(c for c in name if not c.isdigit()).strip(" -#/()") or "?"
            fields = stat.rsplit(")", 1)[1].split()
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


# ---- throughput ----------------------------------------------------------------------------------------


def backlog_table(args: argparse.Namespace) -> pa.Table:
    """The throughput run's payments. ``--backlog-time days``: the synthetic days as generated (20,000 payments a
    day, one card per 25 payments), so the job covers ~8 hours of event time per second - a catch-up after days
    down; windows roll and periods expire ~30,000 times faster than live, so eviction is most of the work.
    ``live``: the same generator with a card per payment, re-timed the way a live stream at ``--live-rate``
    events/s has them (consecutive, ending now, in arrival order): the catch-up after a few seconds down, or the
    load of a stream at that rate."""
    if args.backlog_time == "days":
        days = max(1, args.backlog // 20_000)
        ds = generate(seed=5, days=days, events_per_day=max(1, args.backlog // days), late_fraction=0.0)
        return ds.payments.slice(0, args.backlog)
    ds = generate(seed=5, days=1, events_per_day=args.backlog, n_cards=args.backlog, late_fraction=0.0)
    table = ds.payments.slice(0, args.backlog).sort_by("arrival_ts")
    n = table.num_rows
    end = int(time.time() * 1000)
    ts = pa.array([end - int((n - 1 - i) * 1000 / args.live_rate) for i in range(n)], pa.int64())
    table = table.set_column(table.schema.get_field_index("ts"), "ts", ts)
    return table.set_column(table.schema.get_field_index("arrival_ts"), "arrival_ts", ts)


def throughput(args: argparse.Namespace, bootstrap: str, servers: list[str], work: Path) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:6]
    plan = plan_with_topics(suffix)
    gb = plan.group_by(args.group_by)
    plan_file = work / f"plan-{suffix}.json"
    plan_file.write_text(plan.to_json())
    create_topics(bootstrap, {gb.source.topic: args.partitions})
    table = backlog_table(args)
    sent = replay(table, gb.source.topic, bootstrap, arrival_time="arrival_ts")
    mdir = work / f"metrics-tp-{suffix}"
    cmd = [
        str(FLINK_PYTHON), "-m", "flink_jobs.job", "--plan", str(plan_file), "--group-by", gb.name,
        "--bootstrap", bootstrap, "--memcached", ",".join(servers), "--bounded",
        "--metrics-dir", str(mdir), *job_args(args),
    ]  # fmt: skip
    if args.throughput_flush_ms is not None:
        cmd += ["--flush-interval-ms", str(args.throughput_flush_ms)]
    log = work / f"job-tp-{suffix}.log"
    t0 = time.monotonic()
    proc = start_job(cmd, log)
    samples: list[tuple[float, float]] = []
    cpu: list[tuple[float, dict[str, float]]] = []  # (events_in, CPU s per thread name) while the job runs
    while proc.poll() is None and time.monotonic() - t0 < args.timeout_s:
        m = read_metrics(mdir)
        at = m.get("at:parse-" + gb.source.topic + "-0")
        if at is not None and (not samples or samples[-1][0] != at):
            samples.append((at, m.get("events_in", 0)))
            if samples[-1][1] < sent.events:
                cpu.append((samples[-1][1], tree_threads_cpu_s(proc.pid)))
        time.sleep(0.2)
    wall = time.monotonic() - t0
    if proc.poll() is None:
        stop_job(proc)
        raise RuntimeError(f"throughput job did not finish in {args.timeout_s} s; see {log}")
    if proc.returncode != 0:
        raise RuntimeError(f"throughput job failed; see {log}:\n{log.read_text()[-3000:]}")
    m = read_metrics(mdir)
    samples.append((m["at:parse-" + gb.source.topic + "-0"], m["events_in"]))
    (t_a, n_a), (t_b, n_b) = samples[0], samples[-1]
    rate = (n_b - n_a) / (t_b - t_a) if t_b > t_a else float("nan")
    # CPU per event between the first and the last sample taken while events were still coming in.
    per_thread: dict[str, float] = {}
    cpu_us = float("nan")
    if len(cpu) >= 2 and cpu[-1][0] > cpu[0][0]:
        n = cpu[-1][0] - cpu[0][0]
        (_, c_a), (_, c_b) = cpu[0], cpu[-1]
        cpu_us = (sum(c_b.values()) - sum(c_a.values())) / n * 1e6
        per_thread = {k: (v - c_a.get(k, 0.0)) / n * 1e6 for k, v in c_b.items() if v - c_a.get(k, 0.0) > 0}
    top = dict(sorted(per_thread.items(), key=lambda kv: -kv[1])[:6])
    return {
        "cpu_us_per_event": cpu_us,
        "cpu_us_per_event_by_thread": {k: round(v) for k, v in top.items()},
        "load_avg_1m": os.getloadavg()[0],
        "events": sent.events,
        "events_in": m["events_in"],
        "applied": m.get("applied", 0),
        "sustained_events_per_s": rate,
        "window_s": t_b - t_a,
        "wall_s": wall,
        "flushes": m.get("flushes", 0),
    }


# ---- freshness -----------------------------------------------------------------------------------------


class Poller(threading.Thread):
    def __init__(self, store: MemcachedStore, dataset: str) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.dataset = dataset
        self.pending: dict[bytes, float] = {}
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.lost = 0
        self.stop_flag = False

    def add(self, key: bytes, sent: float) -> None:
        with self.lock:
            self.pending[key] = sent

    def run(self) -> None:
        while not self.stop_flag:
            with self.lock:
                keys = list(self.pending)
            if keys:
                got = self.store.multi_get(self.dataset, keys)
                now = time.time()
                with self.lock:
                    for k in got:
                        sent = self.pending.pop(k, None)
                        if sent is not None:
                            self.latencies.append(now - sent)
                    for k, sent in list(self.pending.items()):
                        if now - sent > 30:
                            del self.pending[k]
                            self.lost += 1
            time.sleep(0.001)

    def drain(self, timeout_s: float = 30) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            with self.lock:
                if not self.pending:
                    return
            time.sleep(0.05)


def freshness(args: argparse.Namespace, bootstrap: str, servers: list[str], work: Path) -> dict[int, Any]:
    from kafka import KafkaProducer

    suffix = uuid.uuid4().hex[:6]
    plan = plan_with_topics(suffix)
    gb = plan.group_by(args.group_by)
    assert gb.stream is not None
    plan_file = work / f"plan-{suffix}.json"
    plan_file.write_text(plan.to_json())
    create_topics(bootstrap, {gb.source.topic: args.partitions})
    mdir = work / f"metrics-fr-{suffix}"
    cmd = [
        str(FLINK_PYTHON), "-m", "flink_jobs.job", "--plan", str(plan_file), "--group-by", gb.name,
        "--bootstrap", bootstrap, "--memcached", ",".join(servers), "--metrics-dir", str(mdir), *job_args(args),
    ]  # fmt: skip
    log = work / f"job-fr-{suffix}.log"
    proc = start_job(cmd, log)
    store = MemcachedStore(servers, timeout_s=1.0, connect_timeout_s=1.0)
    layout = KeyLayout(gb.stream.dataset, gb.semantic_hash)
    smallest = gb.stream.levels[0]
    key_col = gb.keys[0]
    templates = generate(seed=3, days=1, events_per_day=5_000, late_fraction=0.0).payments.to_pylist()
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=args.linger_ms, acks=1, key_serializer=str.encode
    )
    poller = Poller(store, gb.stream.dataset)
    poller.start()
    seq = 0

    def send(probe: str | None) -> None:
        nonlocal seq
        row = dict(templates[seq % len(templates)])
        seq += 1
        now = time.time()
        ts = int(now * 1000)
        row.update(ts=ts, arrival_ts=ts, event_id=seq)
        if probe is not None:
            row[key_col] = probe
            ps = align(ts, smallest.period_ms)
            poller.add(layout.key(encode_entity([probe]), tile_suffix(smallest.size_ms, ps)), now)
        producer.send(gb.source.topic, value=encode_value(row), key=str(row.get("card_id")), timestamp_ms=ts)

    results: dict[int, Any] = {}
    try:
        # Warm-up: until a probe comes back (the job is up), then a few seconds at the lowest rate.
        deadline = time.time() + args.timeout_s
        while True:
            n = len(poller.latencies)
            send(f"warm-{uuid.uuid4().hex[:8]}")
            producer.flush()
            time.sleep(0.5)
            if len(poller.latencies) > n:
                break
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"job not ready; see {log}:\n{log.read_text()[-3000:]}")
        for step, rate in enumerate([min(args.rates), *args.rates]):
            warm = step == 0
            seconds = 5 if warm else args.seconds
            poller.drain()
            with poller.lock:
                poller.latencies.clear()
                poller.lost = 0
            m0 = read_metrics(mdir)
            period = 1.0 / rate
            t0 = time.monotonic()
            n = int(rate * seconds)
            for i in range(n):
                due = t0 + i * period
                ahead = due - time.monotonic()
                if ahead > 0.0005:
                    time.sleep(ahead)
                # Probe keys are unique to the phase (a key written earlier would be "found" at once).
                send(f"p{step}-{rate}-{i}" if i % args.probe_every == 0 else None)
            achieved = n / (time.monotonic() - t0)
            producer.flush()
            poller.drain()
            if warm:
                results[-1] = {}
                continue
            m1 = read_metrics(mdir)
            lat = [x * 1000 for x in poller.latencies]
            results[rate] = {
                "achieved_rate": achieved,
                "probes": len(lat),
                "lost": poller.lost,
                "p50_ms": pct(lat, 0.5),
                "p99_ms": pct(lat, 0.99),
                "p999_ms": pct(lat, 0.999),
                "max_ms": max(lat) if lat else float("nan"),
                "mean_ms": statistics.fmean(lat) if lat else float("nan"),
                "flushes": m1.get("flushes", 0) - m0.get("flushes", 0),
            }
            print(f"  {rate}/s: {results[rate]}", file=sys.stderr)
        results.pop(-1, None)
    finally:
        poller.stop_flag = True
        producer.close()
        stop_job(proc)
        store.close()
    return results


def settings_line(args: argparse.Namespace) -> str:
    flush = "the plan's (10 ms)" if args.flush_interval_ms is None else f"{args.flush_interval_ms} ms"
    return (
        f"GroupBy `{args.group_by}`, parallelism {args.parallelism}, {args.partitions} partitions, execution mode "
        f"`{args.execution_mode}`, bundle size {args.bundle_size}, bundle time {args.bundle_time_ms} ms, buffer "
        f"timeout {args.buffer_timeout_ms} ms, flush interval {flush}"
        + ("" if args.flush_cost_share is None else f", flush cost share {args.flush_cost_share:g}")
        + ("" if args.full_gc_s is None else f", full GC every {args.full_gc_s:g} s")
        + ("" if args.compact_rows is None else f", compaction every {args.compact_rows} rows")
        + ("" if args.compact_periods is None else f", compaction at {args.compact_periods} periods")
        + ("" if args.open_tile_lead_ms is None else f", open-tile lead {args.open_tile_lead_ms} ms")
        + ", checkpoints off, 1 memcached node"
    )


def to_markdown(args: argparse.Namespace, tp: dict[str, Any] | None, fr: dict[int, Any]) -> str:
    lines = [
        "",
        f"### `bench/bench_stream.py` - {args.date}, this machine ({os.cpu_count()} cores, shared; "
        f"{platform.python_version()}, apache-flink 2.3.0, tansu 0.6.0, memcached 1.6)",
        "",
        f"Settings: {settings_line(args)}. Command: `.venv/bin/python bench/bench_stream.py "
        f"{' '.join(sys.argv[1:])}`.",
        "",
    ]
    if tp:
        lines += [
            f"- Throughput (backlog of {tp['events']:,} payments, "
            + (
                "event times of synthetic days"
                if args.backlog_time == "days"
                else f"event times of a live stream at {args.live_rate:,.0f}/s"
            )
            + ", bounded job"
            + (
                f", flush interval {args.throughput_flush_ms} ms"
                if args.throughput_flush_ms is not None
                else ""
            )
            + f"): **{tp['sustained_events_per_s']:,.0f} events/s** sustained over {tp['window_s']:.1f} s "
            f"(wall {tp['wall_s']:.1f} s with start-up; {tp['flushes']:,.0f} flushes); job CPU "
            f"{tp['cpu_us_per_event']:,.0f} us per event (busiest threads: {tp['cpu_us_per_event_by_thread']}); "
            f"load average {tp['load_avg_1m']:.1f}.",
            "",
        ]
    if fr:
        lines += [
            "| target rate | achieved | probes | p50 ms | p99 ms | p99.9 ms | max ms | lost |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for rate, r in fr.items():
            lines.append(
                f"| {rate:,}/s | {r['achieved_rate']:,.0f}/s | {r['probes']} | {r['p50_ms']:.0f} | "
                f"{r['p99_ms']:.0f} | {r['p999_ms']:.0f} | {r['max_ms']:.0f} | {r['lost']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--group-by", default="card")
    p.add_argument("--rates", default="300,1000,3000")
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--probe-every", type=int, default=10)
    p.add_argument("--linger-ms", type=int, default=5, help="the load generator's producer linger.ms")
    p.add_argument("--backlog", type=int, default=100_000)
    p.add_argument(
        "--backlog-time",
        choices=["days", "live"],
        default="live",
        help="event times of the backlog: synthetic days, or those of a live stream at --live-rate",
    )
    p.add_argument("--live-rate", type=float, default=10_000, help="events/s of --backlog-time live")
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--flush-interval-ms", type=int, default=10)
    p.add_argument("--throughput-flush-ms", type=int, default=20, help="flush interval of the throughput run")
    p.add_argument("--flush-cost-share", type=float, default=None, help="the job's (default: its own)")
    p.add_argument("--compact-rows", type=int, default=None, help="the job's (default: its own)")
    p.add_argument("--compact-periods", type=int, default=None, help="the job's (default: its own)")
    p.add_argument(
        "--open-tile-lead-ms",
        type=int,
        default=None,
        help="the job's (default: its own; negative: no deferral)",
    )
    p.add_argument(
        "--full-gc-s", type=float, default=None, help="the job's (default: its own; 0: Python's GC)"
    )
    # Defaults: the settings docs/benchmarks.md reports (PyFlink's thread mode, small bundles, 1 ms buffer timeout).
    p.add_argument("--bundle-size", type=int, default=100)
    p.add_argument("--bundle-time-ms", type=int, default=5)
    p.add_argument("--buffer-timeout-ms", type=int, default=1)
    p.add_argument("--execution-mode", default="thread")
    p.add_argument("--parallelism", type=int, default=1, help="the job's (use as many --partitions)")
    p.add_argument("--timeout-s", type=float, default=240)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-freshness", action="store_true")
    p.add_argument("--write-docs", action="store_true", help="append the results to docs/benchmarks.md")
    p.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    args = p.parse_args(argv)
    args.rates = [int(r) for r in args.rates.split(",")]

    work = Path(tempfile.mkdtemp(prefix="tessera-bench-stream-"))
    broker = start_broker(pid_file=ROOT / ".data" / "bench-broker" / f"tansu-{os.getpid()}.pid")
    nodes = start_memcached_cluster(1)
    servers = [n.address for n in nodes]
    try:
        tp = None if args.skip_throughput else throughput(args, broker.bootstrap, servers, work)
        if tp:
            print(f"throughput: {tp}", file=sys.stderr)
        fr = {} if args.skip_freshness else freshness(args, broker.bootstrap, servers, work)
    finally:
        for n in nodes:
            n.stop()
        broker.stop()
        broker.log_file.unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)  # kept (job logs) when a run fails
    md = to_markdown(args, tp, fr)
    print(md)
    if args.write_docs:
        text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
        if "\n## Stream" not in text:
            text = text.rstrip("\n") + "\n\n## Stream\n"
        DOCS.write_text(text.rstrip("\n") + "\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
