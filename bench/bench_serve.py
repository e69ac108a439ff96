"""HTTP serving benchmark: ``tessera serve`` in its own process, driven open-loop over loopback at fixed rates.

The world: seeded payments (``features.synthetic.generate``) whose last day is today, batch state of every
fraud_v1 GroupBy as of today's midnight in the embedded LMDB bulk store, stream period values of the request
entities (every event from midnight to now) on 3 local memcached nodes, and an xgboost model trained with
``serving.scoring.train`` on a small reference training set (``features.reference``; ``--rules-only`` skips
it). Then:

1. in-process ``Fetcher.fetch`` latency over the same stores (warm caches, wall clock), for comparison;
2. ``python -m tessera.cli serve`` on 127.0.0.1 as a separate process (``TESSERA_MEMCACHED``,
   ``TESSERA_BULK_STORE=embedded:PATH``, ``--model-dir``), fetching at its own wall clock;
3. for ``POST /v1/features/fraud_v1`` and ``POST /v1/decide``, one stage per rate: requests are *scheduled* at
   ``i / rate`` (open loop: a slow answer does not delay the next request), at most ``--seconds`` of schedule and
   ``--max-requests`` requests per stage, each with a ``--timeout-s`` deadline. At most ``--max-inflight``
   requests wait for an answer at once (one connection each); a request due while the cap is reached is *shed*
   (counted, not sent), so an overloaded server cannot make the client queue without bound. Latency is measured
   from the scheduled time (so client lag counts), and also from the actual send. Before an endpoint's stages,
   a warm-up sends every request entity once at 100/s (the stages measure a warm server). During a stage the
   client's garbage collector makes no full collection (what exists is frozen), so the client does not stall.

The client (``--client``): ``raw`` (default), a minimal HTTP/1.1 keep-alive client on asyncio streams with
bodies encoded once, or ``httpx`` (what earlier runs used; its per-request CPU made the client, sharing the 2
cores, the bottleneck). ``--client-procs N`` splits one schedule over N forked client processes (request ``i``
goes to process ``i % N``). Each stage reports the client's CPU (in cores) and the server's CPU per answered
request (its process tree, from /proc), so a saturated client or a starved server shows in the table.
``--workers N`` starts ``tessera serve --workers N``.

Prints a markdown table: achieved throughput, p50/p99/p99.9 per endpoint and rate, errors and degraded answers.
``python bench/bench_serve.py [--rates 100,300,1000] [--seconds 10] [--rules-only] [--workers 2]
[--client raw|httpx] [--client-procs 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

from features.compile import compile_repo
from features.gcpolicy import no_full_collections
from features.plan import JoinPlan, Plan
from features.reference import GroupByIndex, join_features
from features.synthetic import generate
from features.windows import DAY_MS, align
from kvstore.embedded import EmbeddedBulkStore
from kvstore.memcached import MemcachedStore
from kvstore.services import free_port, start_memcached_cluster
from serving.fetcher import Fetcher
from serving.loader import project, write_batch, write_stream

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "features" / "fraud"
JOIN = "fraud_v1"


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


# ---- the world -----------------------------------------------------------------------------------------------
def load_world(
    plan: Plan,
    bulk: EmbeddedBulkStore,
    stream: MemcachedStore,
    *,
    days: int,
    events_per_day: int,
    entities: int,
) -> list[dict[str, Any]]:
    """Write batch state (as of today's midnight) and the request entities' stream values; return requests."""
    join = plan.join(JOIN)
    now = time.time_ns() // 1_000_000
    boundary = align(now, DAY_MS)
    ds = generate(seed=9, days=days, events_per_day=events_per_day, start_ms=boundary - (days - 1) * DAY_MS)
    payments = ds.payments.to_pylist()
    raw = {"payments": payments, "labels": ds.labels.to_pylist()}
    # Requests: the latest payment of distinct cards, preferring today's (before now); yesterday's if too few.
    recent = sorted((r for r in payments if r["ts"] < now), key=lambda r: -r["ts"])
    seen: set[Any] = set()
    requests: list[dict[str, Any]] = []
    for r in recent:
        if r["card_id"] in seen:
            continue
        seen.add(r["card_id"])
        requests.append({c: r[c] for c in join.left.schema})
        if len(requests) >= entities:
            break
    version = time.strftime("%Y-%m-%d", time.gmtime(boundary / 1000 - 1))
    for part in join.parts:
        gb = plan.group_by(part.group_by)
        by_key = project(gb, raw[gb.source.table])
        write_batch(bulk, gb, by_key, boundary, version)
        wanted = {tuple(req[part.key_map[k]] for k in gb.keys) for req in requests}
        write_stream(stream, gb, {e: by_key.get(e, []) for e in wanted}, boundary, now)
    return requests


_SCALARS = {"string": pa.string(), "long": pa.int64(), "int": pa.int32(), "double": pa.float64()}


def _arrow_type(t: str) -> pa.DataType:
    if t.startswith("array<"):
        return pa.list_(_arrow_type(t[len("array<") : -1]))
    if t.startswith("map<"):
        k, v = t[len("map<") : -1].split(",", 1)
        return pa.map_(_arrow_type(k.strip()), _arrow_type(v.strip()))
    return _SCALARS[t]


def train_model(plan: Plan, out_dir: Path) -> dict[str, Any]:
    """A quick xgboost model on a small reference training set (4 days × 800 payments, fraud × 8)."""
    from serving.scoring import train

    join: JoinPlan = plan.join(JOIN)
    ds = generate(seed=3, days=4, events_per_day=800, fraud_scale=8)
    sources = {"payments": ds.payments.to_pylist(), "labels": ds.labels.to_pylist()}
    parts = {p.group_by for p in join.parts}
    indexes = {
        gb.name: GroupByIndex(gb, sources[gb.source.table]) for gb in plan.group_bys if gb.name in parts
    }
    requests = sources["payments"]
    rows = join_features(join, indexes, requests)
    schema = pa.schema(
        [(c, _arrow_type(t)) for c, t in join.output_schema.items()] + [("is_fraud", pa.int64())]
    )
    columns: dict[str, list[Any]] = {c: [] for c in schema.names}
    for row, req in zip(rows, requests, strict=True):
        for c, t in join.output_schema.items():
            v = row[c]
            columns[c].append(list(v.items()) if t.startswith("map<") and v is not None else v)
        columns["is_fraud"].append(req["is_fraud"])
    path = out_dir.parent / "training.parquet"
    pq.write_table(pa.table(columns, schema=schema), path)
    result = train(path, join, out_dir=out_dir, num_boost_round=80)
    return dict(result.metrics)


def in_process_fetch(
    plan: Plan, bulk: EmbeddedBulkStore, stream: MemcachedStore, requests: list[dict[str, Any]], n: int
) -> dict[str, float]:
    fetcher = Fetcher(plan, (bulk, stream))
    for req in requests[:50]:
        fetcher.fetch(JOIN, req)
    totals: list[float] = []
    degraded = 0
    for i in range(n):
        started = time.perf_counter()
        vec = fetcher.fetch(JOIN, requests[i % len(requests)])
        totals.append((time.perf_counter() - started) * 1e3)
        degraded += vec.degraded
    return {
        "n": n,
        "p50": statistics.median(totals),
        "p99": _pct(totals, 0.99),
        "p999": _pct(totals, 0.999),
        "degraded": degraded,
    }


# ---- the server ----------------------------------------------------------------------------------------------
def start_server(
    port: int, memcached: list[str], bulk_path: Path, model_dir: Path, log: Path, workers: int = 1
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "TESSERA_API_TOKEN"}
    env.update(
        TESSERA_MEMCACHED=",".join(memcached),
        TESSERA_BULK_STORE=f"embedded:{bulk_path}",
        TESSERA_DATA_DIR=str(bulk_path.parent),
    )
    cmd = [
        sys.executable,
        "-m",
        "tessera.cli",
        "serve",
        str(REPO),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    cmd += ["--model-dir", str(model_dir)]
    if workers != 1:
        cmd += ["--workers", str(workers)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return wait_ready(proc, f"http://127.0.0.1:{port}/healthz", log, "tessera serve", timeout_s=90)


def wait_ready(
    proc: subprocess.Popen[bytes], url: str, log: Path, what: str, timeout_s: float
) -> subprocess.Popen[bytes]:
    """``proc`` once ``url`` answers 200; its log's tail in the error if it exits or never answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError(f"{what} did not answer {url} within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


# ---- the load ------------------------------------------------------------------------------------------------
class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: one request per connection at a time, bodies
    encoded once up front. It costs the client a fraction of httpx's CPU per request, which matters when the
    client shares 2 cores with the server."""

    def __init__(self, port: int, max_connections: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.max_connections = max_connections

    async def post(self, path: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout):
            if self.idle:  # a kept-alive connection the server may have closed meanwhile (idle timeout)
                conn = self.idle.pop()
                try:
                    return await self._exchange(conn, path, body)
                except (ConnectionError, asyncio.IncompleteReadError) as e:
                    if isinstance(e, asyncio.IncompleteReadError) and e.partial:
                        raise  # an answer had begun: a real error
                    # closed before answering: send again on a new connection, as HTTP clients do
            conn = await asyncio.open_connection("127.0.0.1", self.port)
            return await self._exchange(conn, path, body)

    async def _exchange(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str, body: bytes
    ) -> tuple[int, bytes]:
        reader, writer = conn
        try:
            writer.write(
                b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            content = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if len(self.idle) < self.max_connections:
            self.idle.append(conn)
        else:
            writer.close()
        return status, content

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


class HttpxClient:
    """The same interface over ``httpx.AsyncClient`` (the client earlier runs used)."""

    def __init__(self, port: int, max_connections: int) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits)

    async def post(self, path: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        resp = await self.client.post(
            path, content=body, headers={"content-type": "application/json"}, timeout=timeout
        )
        return resp.status_code, resp.content

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class Stage:
    endpoint: str
    rate: int
    scheduled: int = 0
    shed: int = 0  # not sent: ``max_inflight`` requests were already waiting for an answer
    ok: int = 0
    errors: int = 0
    degraded: int = 0
    fallback: int = 0  # decisions flagged model_fallback (model timed out, failed or missing): rules only
    latency_ms: list[float] = field(default_factory=list)  # from the scheduled time
    service_ms: list[float] = field(default_factory=list)  # from the actual send
    max_lag_ms: float = 0.0
    elapsed_s: float = 0.0
    client_cpu_s: float = 0.0  # CPU seconds of the client process(es) during the stage
    server_cpu_s: float = 0.0  # CPU seconds of the server's processes during the stage

    def merge(self, other: Stage) -> None:
        self.scheduled += other.scheduled
        self.shed += other.shed
        self.ok += other.ok
        self.errors += other.errors
        self.degraded += other.degraded
        self.fallback += other.fallback
        self.latency_ms += other.latency_ms
        self.service_ms += other.service_ms
        self.max_lag_ms = max(self.max_lag_ms, other.max_lag_ms)
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)
        self.client_cpu_s += other.client_cpu_s

    def row(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "rate": self.rate,
            "requests": self.scheduled,
            "ok": self.ok,
            "errors": self.errors,
            "shed": self.shed,
            "degraded": self.degraded,
            "fallback": self.fallback,
            "achieved": self.ok / self.elapsed_s if self.elapsed_s else 0.0,
            "p50": _pct(self.latency_ms, 0.5),
            "p99": _pct(self.latency_ms, 0.99),
            "p999": _pct(self.latency_ms, 0.999),
            "send_p99": _pct(self.service_ms, 0.99),
            "max_lag": self.max_lag_ms,
            "client_cores": self.client_cpu_s / self.elapsed_s if self.elapsed_s else 0.0,
            "server_ms_per_req": 1e3 * self.server_cpu_s / self.ok if self.ok else float("nan"),
        }


async def run_stage(
    client: RawClient | HttpxClient,
    path: str,
    bodies: list[bytes],
    rate: int,
    n: int,
    start_wall: float,
    timeout_s: float,
    max_inflight: int,
    share: tuple[int, int] = (0, 1),
) -> Stage:
    """Requests ``i`` of ``range(n)`` with ``i % share[1] == share[0]``, each scheduled at ``start_wall + i /
    rate`` (wall clock, so several client processes keep one schedule)."""
    stage = Stage(path, rate)
    inflight = 0
    loop = asyncio.get_running_loop()
    t0 = loop.time() + (start_wall - time.time())
    cpu0 = time.process_time()

    async def one(i: int, at: float) -> None:
        nonlocal inflight
        sent = loop.time()
        stage.max_lag_ms = max(stage.max_lag_ms, (sent - at) * 1e3)
        inflight += 1
        try:
            status, content = await client.post(path, bodies[i % len(bodies)], timeout_s)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, httpx.HTTPError):
            stage.errors += 1
            return
        finally:
            inflight -= 1
        done = loop.time()
        if status != 200:
            stage.errors += 1
            return
        stage.ok += 1
        stage.degraded += b'"degraded":true' in content
        stage.fallback += b'"model_fallback"' in content
        stage.latency_ms.append((done - at) * 1e3)
        stage.service_ms.append((done - sent) * 1e3)

    tasks: list[asyncio.Task[None]] = []
    k, every = share
    for i in range(k, n, every):
        at = t0 + i / rate
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        stage.scheduled += 1
        if inflight >= max_inflight:  # open loop with a bounded client: shed instead of queueing without end
            stage.shed += 1
            continue
        tasks.append(asyncio.create_task(one(i, at)))
    pending: set[asyncio.Task[None]] = set()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=timeout_s + 1.0)
    for t in pending:  # bounded: whatever has not answered by now counts as an error
        t.cancel()
        stage.errors += 1
    stage.elapsed_s = loop.time() - t0
    stage.client_cpu_s = time.process_time() - cpu0
    return stage


def _client(kind: str, port: int, connections: int) -> RawClient | HttpxClient:
    return RawClient(port, connections) if kind == "raw" else HttpxClient(port, connections)


async def _one_client_stage(
    kind: str,
    port: int,
    path: str,
    bodies: list[bytes],
    rate: int,
    n: int,
    start_wall: float,
    timeout_s: float,
    max_inflight: int,
    share: tuple[int, int],
) -> Stage:
    client = _client(kind, port, max_inflight)
    # The client's own garbage collections must not stall the schedule: this process holds the generated world
    # (hundreds of thousands of objects), and a full collection of it stopped the client for ~85 ms (the "max
    # client lag" column), which every request in flight then counted as latency.
    with no_full_collections():
        try:
            for body in bodies[:4]:  # open a few connections before the schedule starts
                with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError, httpx.HTTPError):
                    await client.post(path, body, timeout_s)
            return await run_stage(client, path, bodies, rate, n, start_wall, timeout_s, max_inflight, share)
        finally:
            await client.close()


def _child_stage(q: Any, *args: Any) -> None:
    try:
        q.put(asyncio.run(_one_client_stage(*args)))
    except BaseException as e:  # the parent reports it instead of waiting for a result that never comes
        q.put(f"{type(e).__name__}: {e}")
        raise


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(d.name)] = int(fields[1])
        cpu[int(d.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier += kids
    return sum(cpu.get(p, 0.0) for p in tree)


def stage(
    kind: str,
    procs: int,
    port: int,
    server_pid: int,
    path: str,
    bodies: list[bytes],
    rate: int,
    seconds: float,
    max_requests: int,
    timeout_s: float,
    max_inflight: int,
) -> Stage:
    """One open-loop stage from ``procs`` client processes (each every ``procs``-th request of one schedule,
    with ``max_inflight / procs`` connections)."""
    n = max(1, min(int(rate * seconds), max_requests))
    per = max(1, max_inflight // procs)
    start_wall = time.time() + (0.3 if procs == 1 else 1.5)
    cpu0 = tree_cpu_s(server_pid)
    if procs == 1:
        st = asyncio.run(
            _one_client_stage(kind, port, path, bodies, rate, n, start_wall, timeout_s, per, (0, 1))
        )
    else:
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        children = [
            ctx.Process(
                target=_child_stage,
                args=(q, kind, port, path, bodies, rate, n, start_wall, timeout_s, per, (k, procs)),
            )
            for k in range(procs)
        ]
        for c in children:
            c.start()
        parts = [q.get(timeout=seconds + timeout_s + 60) for _ in children]
        for c in children:
            c.join(10)
        st = Stage(path, rate)
        for part in parts:
            if isinstance(part, str):
                raise RuntimeError(f"a client process failed: {part}")
            st.merge(part)
    st.server_cpu_s = tree_cpu_s(server_pid) - cpu0
    return st


def drive(
    port: int,
    server_pid: int,
    requests: list[dict[str, Any]],
    rates: list[int],
    seconds: float,
    max_requests: int,
    timeout_s: float,
    max_inflight: int,
    client: str = "raw",
    client_procs: int = 1,
    endpoints: tuple[str, ...] = ("features", "decide"),
) -> list[Stage]:
    bodies = [json.dumps(r, separators=(",", ":")).encode() for r in requests]
    paths = {"features": f"/v1/features/{JOIN}", "decide": "/v1/decide"}
    stages: list[Stage] = []
    for path in (paths[e] for e in endpoints):
        # Warm-up: every request entity once (at 100/s), so the stages measure a warm server; a cold one's first
        # second at 1,000/s is its caches filling (each entity's batch values and period values read and decoded).
        n_warm = len(bodies)
        stage(client, 1, port, server_pid, path, bodies, 100, n_warm / 100, n_warm, timeout_s, max_inflight)
        for rate in rates:
            st = stage(
                client,
                client_procs,
                port,
                server_pid,
                path,
                bodies,
                rate,
                seconds,
                max_requests,
                timeout_s,
                max_inflight,
            )
            r = st.row()
            print(
                f"  {path} @ {rate}/s: {r['achieved']:.0f}/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
                f"errors {r['errors']}, shed {r['shed']}, server CPU {r['server_ms_per_req']:.2f} ms/req, "
                f"client {r['client_cores']:.2f} cores, load {load_average()}",
                flush=True,
            )
            stages.append(st)
            time.sleep(1.0)
    return stages


def load_average() -> str:
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rates", default="100,300,1000", help="request rates (req/s), comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="schedule length per stage")
    parser.add_argument("--max-requests", type=int, default=10_000, help="requests per stage at most")
    parser.add_argument("--timeout-s", type=float, default=2.0, help="per-request deadline")
    parser.add_argument("--max-inflight", type=int, default=64, help="client concurrency cap (then shed)")
    parser.add_argument("--entities", type=int, default=200, help="distinct request cards")
    parser.add_argument("--events-per-day", type=int, default=5000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--fetch-n", type=int, default=500, help="in-process fetches timed")
    parser.add_argument("--rules-only", action="store_true", help="no model: /v1/decide runs the rules only")
    parser.add_argument("--workers", type=int, default=1, help="tessera serve --workers")
    parser.add_argument(
        "--client", choices=("raw", "httpx"), default="raw", help="load client: raw asyncio HTTP/1.1 or httpx"
    )
    parser.add_argument("--client-procs", type=int, default=1, help="client processes sharing one schedule")
    parser.add_argument("--endpoints", default="features,decide", help="which endpoints to drive")
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",") if r.strip()]

    plan = compile_repo(REPO)
    nodes = start_memcached_cluster(3)
    proc: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp_s:
            tmp = Path(tmp_s)
            bulk_path = tmp / "bulk"
            addrs = [s.address for s in nodes]
            bulk = EmbeddedBulkStore(bulk_path)
            stream = MemcachedStore(addrs)
            t = time.perf_counter()
            requests = load_world(
                plan, bulk, stream, days=args.days, events_per_day=args.events_per_day, entities=args.entities
            )
            print(
                f"world loaded in {time.perf_counter() - t:.1f} s: {len(requests)} request entities",
                flush=True,
            )
            model_dir = tmp / "model"
            if args.rules_only:
                print("rules only: no model", flush=True)
            else:
                t = time.perf_counter()
                metrics = train_model(plan, model_dir)
                print(
                    f"model trained in {time.perf_counter() - t:.1f} s "
                    f"(valid PR-AUC {metrics['valid']['pr_auc']:.3f}, {metrics['features']} features)",
                    flush=True,
                )
            fetch = in_process_fetch(plan, bulk, stream, requests, args.fetch_n)
            bulk.close()
            stream.close()
            port = free_port()
            proc = start_server(port, addrs, bulk_path, model_dir, tmp / "serve.log", args.workers)
            load_before = load_average()
            stages = drive(
                port,
                proc.pid,
                requests,
                rates,
                args.seconds,
                args.max_requests,
                args.timeout_s,
                args.max_inflight,
                client=args.client,
                client_procs=args.client_procs,
                endpoints=tuple(e.strip() for e in args.endpoints.split(",") if e.strip()),
            )
            load_after = load_average()
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for s in nodes:
            s.stop()

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}; "
        f"load average (1, 5, 15 min) {load_before} before the HTTP stages, {load_after} after"
    )
    print(
        f"settings: {len(requests)} entities, 3 memcached nodes, embedded bulk store, "
        f"{'rules only' if args.rules_only else 'rules + xgboost model'}, uvicorn {args.workers} worker(s), "
        f"client {args.client} × {args.client_procs} process(es), "
        f"{args.seconds:g} s or {args.max_requests} requests per stage, timeout {args.timeout_s:g} s, at most {args.max_inflight} in flight"
    )
    print(
        f"in-process fetch ({fetch['n']:.0f} fetches, warm): p50 {fetch['p50']:.2f} ms, p99 {fetch['p99']:.2f} ms, "
        f"p99.9 {fetch['p999']:.2f} ms, degraded {fetch['degraded']:.0f}"
    )
    print()
    print(
        "| endpoint | target req/s | achieved req/s | requests | errors | shed | degraded | model fallback | p50 ms | p99 ms | p99.9 ms "
        "| p99 from send ms | max client lag ms | server CPU ms/req | client cores |"
    )
    print(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for st in stages:
        r = st.row()
        print(
            f"| `POST {r['endpoint']}` | {r['rate']:,} | {r['achieved']:,.0f} | {r['requests']:,} | {r['errors']} | {r['shed']} | "
            f"{r['degraded']} | {r['fallback']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['p999']:.1f} | {r['send_p99']:.1f} | "
            f"{r['max_lag']:.1f} | {r['server_ms_per_req']:.2f} | {r['client_cores']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
