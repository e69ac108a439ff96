"""Feast side by side: the fraud_v1 features served by Feast and by tessera, same machine, same run, same load.

Run from tessera's ``.venv`` (``make bench-feast``); Feast lives in ``.venv-feast`` (``scripts/setup-feast.sh``)
because it pins pyarrow/pandas/numpy differently. Steps:

1. The world of ``bench/bench_serve.py`` (``load_world``: seeded payments whose last day is today, batch state in
   the embedded LMDB store, the request entities' stream values on 3 local memcached nodes).
2. At one instant ``T`` (now), tessera's ``Fetcher`` computes every request's fraud_v1 vector. Its GroupBy
   columns (one Feast FeatureView per GroupBy, same column names and dtypes) go to one parquet file per view,
   stamped ``T``. A Feast repo is generated in a temp dir (entities card/customer/merchant/device/ip, the views,
   a FeatureService ``fraud_v1``; SQLite online store, or ``--online-store redis``: a redis-server of its own),
   then ``feast apply`` and ``materialize``.
3. In-process, in this run, for both: the warm protocol of ``bench/bench_fetch.py`` (one request's keys, fixed
   query time ``T``, 50 warm-up reads, then ``--n`` timed reads), and the request cycle of
   ``bench/bench_serve.py`` (all request entities in turn, ``--fetch-n`` reads). Feast's side runs in a
   ``.venv-feast`` subprocess: ``store.get_online_features(features=service, entity_rows=[keys]).to_dict()``.
   Before timing it checks that Feast returns exactly tessera's values for every request entity.
4. Over HTTP: ``tessera serve`` (started as bench_serve.py does) and ``feast serve`` (1 worker, access log off,
   no worker recycling) on 127.0.0.1: first requests one at a time, then bench_serve.py's open-loop load client at
   the same rates, interleaved per rate: ``POST /v1/features/fraud_v1`` vs ``POST /get-online-features``. Each
   stage also reports the server process tree's CPU per answer (from /proc).

What differs (also printed): Feast serves values precomputed at ``T`` (a key-value read per view, no windowed
merge at read time, no freshness from a stream: they age until the next materialize); tessera reads batch state
plus fresh tiles and merges them per request at the request's time, and also returns the request columns and the
Join's derivations (Feast would need on-demand views for those; it serves the GroupBy columns only).

``python bench/bench_feast.py [--rates 100,300,1000] [--seconds 10] [--n 3000]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "features" / "fraud"
JOIN = "fraud_v1"
FEAST_VENV = Path(os.environ.get("FEAST_VENV", ROOT / ".venv-feast"))
TIMESTAMP = "event_timestamp"

# tessera type -> Feast type expression (as written in the generated feature_repo.py)
FEAST_TYPES = {
    "string": "String",
    "long": "Int64",
    "int": "Int32",
    "double": "Float64",
    "boolean": "Bool",
    "array<string>": "Array(String)",
    "array<long>": "Array(Int64)",
    "array<int>": "Array(Int32)",
    "array<double>": "Array(Float64)",
    # Feast's Map is map<string, string> in Arrow; typed maps go in as JSON text (Feast's Json type).
    "map<string,double>": "Json",
    "map<string,long>": "Json",
}


# ---- the Feast repo (pure: generating it needs no Feast) -----------------------------------------------------
@dataclass(frozen=True)
class EntitySpec:
    name: str  # card, customer, ...
    join_key: str  # the request column: card_id, ...


@dataclass(frozen=True)
class ViewSpec:
    name: str  # the GroupBy's name
    entity: EntitySpec
    columns: dict[str, str]  # output column of the Join -> tessera type

    @property
    def parquet(self) -> str:
        return f"{self.name}.parquet"


def entity_name(join_key: str) -> str:
    return join_key[: -len("_id")] if join_key.endswith("_id") else join_key


def feast_views(plan: Any, join_name: str = JOIN) -> list[ViewSpec]:
    """One Feast FeatureView per GroupBy part of the Join: the part's output columns with the Join's types."""
    join = plan.join(join_name)
    views: list[ViewSpec] = []
    for part in join.parts:
        gb = plan.group_by(part.group_by)
        if len(gb.keys) != 1:
            raise ValueError(
                f"GroupBy {gb.name!r} has {len(gb.keys)} keys; this bench maps one key to one entity"
            )
        key = part.key_map[gb.keys[0]]
        cols = {c: join.output_schema[c] for c in part.features}
        unknown = sorted({t for t in cols.values() if t not in FEAST_TYPES})
        if unknown:
            raise ValueError(f"no Feast type for {unknown} (GroupBy {gb.name!r})")
        views.append(ViewSpec(gb.name, EntitySpec(entity_name(key), key), cols))
    return views


def repo_source(views: list[ViewSpec], data_dir: Path, service: str = JOIN) -> str:
    """The ``feature_repo.py`` a Feast user would write for these views (parquet sources)."""
    lines = [
        '"""fraud_v1 as Feast definitions: generated by tessera\'s bench/bench_feast.py."""',
        "",
        "from datetime import timedelta",
        "",
        "from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType",
        "from feast.types import Array, Bool, Float64, Int32, Int64, Json, String",
        "",
    ]
    entities: dict[str, EntitySpec] = {}
    for v in views:
        entities.setdefault(v.entity.name, v.entity)
    for e in entities.values():
        lines.append(
            f"{e.name}_entity = Entity(name={e.name!r}, join_keys=[{e.join_key!r}], value_type=ValueType.STRING)"
        )
    lines.append("")
    for v in views:
        lines += [
            f"{v.name}_view = FeatureView(",
            f"    name={v.name!r},",
            f"    entities=[{v.entity.name}_entity],",
            "    ttl=timedelta(0),",
            "    online=True,",
            "    source=FileSource(",
            f"        name={v.name + '_source'!r},",
            f"        path={str(data_dir / v.parquet)!r},",
            f"        timestamp_field={TIMESTAMP!r},",
            "    ),",
            "    schema=[",
            *(f"        Field(name={c!r}, dtype={FEAST_TYPES[t]})," for c, t in v.columns.items()),
            "    ],",
            ")",
            "",
        ]
    lines.append(f"{service}_service = FeatureService(")
    lines.append(f"    name={service!r},")
    lines.append(f"    features=[{', '.join(v.name + '_view' for v in views)}],")
    lines.append(")")
    # Unused type imports are fine in a generated file; keep them referenced for linters that read it.
    lines.append("_TYPES = (Array, Bool, Float64, Int32, Int64, Json, String)")
    return "\n".join(lines) + "\n"


def store_yaml(data_dir: Path, project: str = "tessera_bench", redis: str | None = None) -> str:
    """``feature_store.yaml``: the SQLite online store in ``data_dir``, or Redis at ``redis`` (host:port)."""
    online = (
        f"  type: redis\n  connection_string: {redis}\n"
        if redis
        else f"  type: sqlite\n  path: {data_dir / 'online_store.db'}\n"
    )
    return (
        f"project: {project}\n"
        f"registry: {data_dir / 'registry.db'}\n"
        "provider: local\n"
        "online_store:\n"
        f"{online}"
        "offline_store:\n"
        "  type: file\n"
        "entity_key_serialization_version: 3\n"
    )


def write_view_tables(
    views: list[ViewSpec], vectors: list[dict[str, Any]], at_ms: int, data_dir: Path
) -> None:
    """One parquet per view: one row per distinct entity key (its values at ``at_ms``), stamped ``at_ms``."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.bench_serve import _arrow_type

    stamp = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC)
    for v in views:
        rows: dict[Any, dict[str, Any]] = {}
        for vec in vectors:
            # A request without this key has no row (Feast then returns nulls for the view).
            if vec[v.entity.join_key] is not None:
                rows.setdefault(vec[v.entity.join_key], vec)
        fields = [(v.entity.join_key, pa.string())]
        fields += [
            (c, pa.large_string() if FEAST_TYPES[t] == "Json" else _arrow_type(t))
            for c, t in v.columns.items()
        ]
        fields.append((TIMESTAMP, pa.timestamp("us", tz="UTC")))
        schema = pa.schema(fields)
        data: dict[str, list[Any]] = {name: [] for name in schema.names}
        for key, vec in rows.items():
            data[v.entity.join_key].append(key)
            for c, t in v.columns.items():
                x = vec[c]
                data[c].append(json.dumps(x) if FEAST_TYPES[t] == "Json" and x is not None else x)
            data[TIMESTAMP].append(stamp)
        pq.write_table(pa.table(data, schema=schema), data_dir / v.parquet)


# ---- Feast's side: runs in .venv-feast (stdlib + feast only) -------------------------------------------------
def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, dict):  # a Json column: Feast may hand back the text
        a = json.loads(a)
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is None and b is None
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12) or (a != a and b != b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _timed(read: Any, seq: list[dict[str, Any]], n: int, warmup: int = 50) -> dict[str, float]:
    for i in range(warmup):
        read(seq[i % len(seq)])
    totals: list[float] = []
    for i in range(n):
        started = time.perf_counter()
        read(seq[i % len(seq)])
        totals.append((time.perf_counter() - started) * 1e3)
    return {"n": n, **percentiles(totals)}


def feast_side(cfg_path: Path) -> int:
    """apply + materialize, check values against tessera's, time in-process reads; result JSON to cfg['out']."""
    from datetime import UTC, datetime, timedelta

    from feast import FeatureStore  # only in .venv-feast

    cfg = json.loads(cfg_path.read_text())
    repo = Path(cfg["repo"])
    out: dict[str, Any] = {}
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "feast"), "apply"], cwd=repo, check=True)
    out["apply_s"] = time.perf_counter() - started
    store = FeatureStore(repo_path=str(repo))
    at = datetime.fromtimestamp(cfg["at_ms"] / 1000, tz=UTC)
    started = time.perf_counter()
    store.materialize(start_date=at - timedelta(days=1), end_date=at + timedelta(minutes=1))
    out["materialize_s"] = time.perf_counter() - started
    service = store.get_feature_service(cfg["service"])

    def read(keys: dict[str, Any]) -> dict[str, list[Any]]:
        return store.get_online_features(features=service, entity_rows=[keys]).to_dict()

    # Same values: every request entity's Feast answer equals tessera's vector at T, column by column.
    # A request without a key (""): Feast has no row and returns nulls where tessera finalizes an empty window
    # (count 0); those (request, view) pairs are counted, not compared.
    mismatches: list[str] = []
    keyless = 0
    for keys, expected in zip(cfg["entity_rows"], cfg["expected"], strict=True):
        got = read(keys)
        skip = {c for k, cols in cfg["view_columns"].items() if keys[k] == "" for c in cols}
        keyless += sum(1 for k in cfg["view_columns"] if keys[k] == "")
        for col, want in expected.items():
            if col in skip:
                continue
            have = got.get(col, [None])[0]
            if not _same(have, want):
                mismatches.append(f"{keys}: {col}: feast {have!r} != tessera {want!r}")
    out["checked"] = len(cfg["expected"])
    out["columns"] = len(cfg["expected"][0]) if cfg["expected"] else 0
    out["mismatches"] = mismatches[:20]
    out["mismatch_count"] = len(mismatches)
    out["keyless"] = keyless
    out["warm"] = _timed(read, [cfg["entity_rows"][cfg["warm_index"]]], cfg["n"])
    out["cycle"] = _timed(read, cfg["entity_rows"], cfg["fetch_n"])
    Path(cfg["out"]).write_text(json.dumps(out))
    return 0


# ---- measuring helpers ---------------------------------------------------------------------------------------
def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def percentiles(xs: list[float]) -> dict[str, float]:
    return {
        "p50": statistics.median(xs) if xs else float("nan"),
        "p99": _pct(xs, 0.99),
        "p999": _pct(xs, 0.999),
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def _feast_python() -> Path:
    py = FEAST_VENV / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"no Feast venv at {FEAST_VENV}: run scripts/setup-feast.sh (make bench-feast does)")
    return py


def _redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False)
    return next((w.split("=", 1)[1] for w in out.stdout.split() if w.startswith("v=")), "?")


def _feast_version() -> str:
    out = subprocess.run(
        [str(_feast_python()), "-c", "import importlib.metadata as m; print(m.version('feast'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def start_redis(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A Redis server of our own on a free loopback port, no persistence; returns it and its host:port."""
    import socket

    from kvstore.services import free_port

    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return proc, f"127.0.0.1:{port}"
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("redis-server did not answer PING within 30 s")


def start_feast_server(repo: Path, port: int, log: Path) -> subprocess.Popen[bytes]:

    from bench.bench_serve import wait_ready

    cmd = [
        str(FEAST_VENV / "bin" / "feast"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        # gunicorn recycles a worker every --max-requests requests (default 1000), a multi-second restart;
        # tessera's server does not, so neither does Feast's here.
        "--max-requests",
        "100000000",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=repo, stdout=out, stderr=subprocess.STDOUT)
    return wait_ready(proc, f"http://127.0.0.1:{port}/health", log, "feast serve", timeout_s=120)


def complete_vector(fetcher: Any, request: dict[str, Any], tries: int = 5) -> dict[str, Any]:
    """The request's vector, not degraded: on a starved machine a fetch can exceed its budget and null a part,
    and Feast must be loaded with the real values."""
    for _ in range(tries):
        vec = fetcher.fetch(JOIN, request)
        if not vec.degraded:
            return dict(vec.values)
        time.sleep(0.2)
    raise RuntimeError(f"fetch of {request} still degraded after {tries} tries: {vec.errors}")


def serial_http(port: int, pid: int, path: str, bodies: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Closed loop, one request in flight: the server's service time without queueing, and its CPU per answer."""
    import httpx

    from bench.bench_serve import tree_cpu_s

    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:

        def post(body: dict[str, Any]) -> None:
            client.post(path, json=body, timeout=10.0).raise_for_status()

        for i in range(20):
            post(bodies[i % len(bodies)])
        cpu0 = tree_cpu_s(pid)
        row: dict[str, Any] = _timed(post, bodies, n, warmup=0)
        row["server_cpu_ms"] = 1e3 * (tree_cpu_s(pid) - cpu0) / n
        return row


def http_stage(
    port: int,
    pid: int,
    path: str,
    bodies: list[dict[str, Any]],
    rate: int,
    seconds: float,
    max_requests: int,
    args: Any,
) -> dict[str, Any]:
    """One open-loop stage with bench_serve.py's load client, plus the server's CPU per answered request.

    bench_serve.py's client is reused, not copied: its ``stage`` (raw asyncio HTTP client, schedule on the wall
    clock, the server's CPU over the stage)."""

    from bench import bench_serve as serve

    raw = [json.dumps(b, separators=(",", ":")).encode() for b in bodies]
    st = serve.stage(
        "raw", 1, port, pid, path, raw, rate, seconds, max_requests, args.timeout_s, args.max_inflight
    )
    row = dict(st.row())
    row["server_cpu_ms"] = row["server_ms_per_req"]  # stage() measures the server tree's CPU over the stage
    row["client"] = "bench_serve.stage, raw asyncio HTTP/1.1 client"
    return row


def drive_both(
    servers: list[tuple[int, int, str, list[dict[str, Any]]]], rates: list[int], args: argparse.Namespace
) -> list[list[dict[str, Any]]]:
    """Per rate, one stage per server (tessera's, then Feast's), so both see the same moment's machine."""
    from bench.bench_serve import load_average

    for port, pid, path, bodies in servers:  # warm-up, as bench_serve.py's drive()
        http_stage(port, pid, path, bodies, 50, 2.0, 100, args)
    rows: list[list[dict[str, Any]]] = []
    for rate in rates:
        per_rate = []
        for port, pid, path, bodies in servers:
            r = http_stage(port, pid, path, bodies, rate, args.seconds, args.max_requests, args)
            print(
                f"  {path} @ {rate}/s: {r['achieved']:.0f}/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
                f"errors {r['errors']}, shed {r['shed']}, server CPU {r['server_cpu_ms']:.1f} ms/answer "
                f"(load {load_average()})",
                flush=True,
            )
            per_rate.append(r)
            time.sleep(1.0)
        rows.append(per_rate)
    return rows


# ---- the run -------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from bench.bench_serve import load_average, load_world, start_server
    from features.compile import compile_repo
    from kvstore.embedded import EmbeddedBulkStore
    from kvstore.memcached import MemcachedStore
    from kvstore.services import free_port, start_memcached_cluster
    from serving.fetcher import Fetcher

    fpy = _feast_python()
    feast_version = _feast_version()
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    plan = compile_repo(REPO)
    join = plan.join(JOIN)
    views = feast_views(plan)
    keys = sorted({v.entity.join_key for v in views})
    nodes = start_memcached_cluster(3)
    procs: list[subprocess.Popen[bytes]] = []
    procs_extra: list[subprocess.Popen[bytes]] = []  # the Redis server, when Feast uses it
    try:
        with tempfile.TemporaryDirectory(prefix="bench-feast-") as tmp_s:
            tmp = Path(args.workdir or tmp_s)  # --workdir: keep the Feast repo and logs for a look afterwards
            tmp.mkdir(parents=True, exist_ok=True)
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

            # The values at one instant T, computed by tessera: what Feast will serve.
            at = time.time_ns() // 1_000_000
            fetcher = Fetcher(
                plan, (bulk, stream), now_ms=lambda: at, cache_size=100_000, tile_cache_size=100_000
            )
            vectors = [complete_vector(fetcher, r) for r in requests]
            feature_cols = [c for v in views for c in v.columns]
            data_dir = tmp / "feast" / "data"
            data_dir.mkdir(parents=True)
            write_view_tables(views, vectors, at, data_dir)
            repo = tmp / "feast"
            redis_address = None
            if args.online_store == "redis":
                redis_proc, redis_address = start_redis(tmp / "redis.log")
                procs_extra.append(redis_proc)
            (repo / "feature_store.yaml").write_text(store_yaml(data_dir, redis=redis_address))
            (repo / "feature_repo.py").write_text(repo_source(views, data_dir))

            # The warm request, in the spirit of bench_fetch.py's (the busiest card): the request whose card has
            # the most events, by the sum of its card part's count columns.
            card = views[0]
            counts = [c for c, t in card.columns.items() if "_count_" in c and t == "long"]
            warm_index = max(range(len(vectors)), key=lambda i: sum(vectors[i][c] or 0 for c in counts))

            # tessera in-process (same run): warm protocol, then the request cycle.
            warm_fetcher = Fetcher(
                plan, (bulk, stream), now_ms=lambda: at, cache_size=100_000, tile_cache_size=100_000
            )
            degraded = {"warm": 0, "cycle": 0}

            def fetch(f: Fetcher, r: dict[str, Any], mode: str) -> None:
                degraded[mode] += f.fetch(JOIN, r).degraded

            tessera_warm = _timed(lambda r: fetch(warm_fetcher, r, "warm"), [requests[warm_index]], args.n)
            cycle_fetcher = Fetcher(plan, (bulk, stream))
            tessera_cycle = _timed(lambda r: fetch(cycle_fetcher, r, "cycle"), requests, args.fetch_n)

            # Feast in-process (same run, its own venv).
            # Feast rejects a null entity key; a request without (say) a device sends "" (no such row: nulls).
            entity_rows = [{k: "" if r[k] is None else r[k] for k in keys} for r in requests]
            cfg = {
                "repo": str(repo),
                "at_ms": at,
                "service": JOIN,
                "entity_rows": entity_rows,
                "expected": [{c: _jsonable(v[c]) for c in feature_cols} for v in vectors],
                "view_columns": {v.entity.join_key: [] for v in views},
                "warm_index": warm_index,
                "n": args.n,
                "fetch_n": args.fetch_n,
                "out": str(tmp / "feast-result.json"),
            }
            for v in views:
                cfg["view_columns"][v.entity.join_key] += list(v.columns)
            (tmp / "feast-cfg.json").write_text(json.dumps(cfg))
            print("feast: apply, materialize, value check, in-process reads ...", flush=True)
            subprocess.run(
                [str(fpy), str(Path(__file__).resolve()), "--feast-side", str(tmp / "feast-cfg.json")],
                cwd=repo,
                check=True,
                stdout=sys.stderr,
            )
            feast = json.loads((tmp / "feast-result.json").read_text())
            print(
                f"feast: apply {feast['apply_s']:.1f} s, materialize {feast['materialize_s']:.1f} s, "
                f"{feast['checked']} entities × {feast['columns']} columns checked against tessera: "
                f"{feast['mismatch_count']} mismatches ({feast['keyless']} (request, key) pairs without a key "
                "not compared: Feast returns nulls, tessera empty-window values)",
                flush=True,
            )
            for m in feast["mismatches"]:
                print(f"  mismatch: {m}", flush=True)
            bulk.close()
            stream.close()

            # HTTP, both servers up, interleaved per rate.
            t_port, f_port = free_port(), free_port()
            procs.append(start_server(t_port, addrs, bulk_path, tmp / "model", tmp / "serve.log"))
            procs.append(start_feast_server(repo, f_port, tmp / "feast-serve.log"))
            feast_bodies = [
                {"feature_service": JOIN, "entities": {k: [row[k]] for k in keys}} for row in entity_rows
            ]
            load_before = load_average()
            serial = (
                serial_http(t_port, procs[0].pid, f"/v1/features/{JOIN}", requests, args.serial_n),
                serial_http(f_port, procs[1].pid, "/get-online-features", feast_bodies, args.serial_n),
            )
            servers = [
                (t_port, procs[0].pid, f"/v1/features/{JOIN}", requests),
                (f_port, procs[1].pid, "/get-online-features", feast_bodies),
            ]
            pairs = drive_both(servers, rates, args)
            load_after = load_average()
    finally:
        for p in procs + procs_extra:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for s in nodes:
            s.stop()

    store_name = "SQLite" if args.online_store == "sqlite" else f"Redis {_redis_version()}"
    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}; "
        f"feast {feast_version} ({store_name} online store); load average (1, 5, 15 min) {load_before} before the "
        f"HTTP stages, {load_after} after"
    )
    print(
        f"settings: {len(requests)} request entities; in-process warm: 1 request × {args.n} at a fixed time; "
        f"cycle: the {len(requests)} requests × {args.fetch_n}; HTTP: 1 worker each, {args.seconds:g} s or "
        f"{args.max_requests} requests per stage, timeout {args.timeout_s:g} s, at most {args.max_inflight} in flight"
    )
    print(
        f"what differs: Feast reads {len(feature_cols)} precomputed GroupBy columns ({len(views)} views; values "
        f"frozen at materialize, no stream freshness, no windowed merge); tessera merges batch state + fresh "
        f"tiles per request and returns {len(join.output_schema)} columns (+ request columns and derivations)"
    )
    print()
    print(f"HTTP load client: {pairs[0][0]['client'] if pairs else '-'}")
    print()
    head = "achieved req/s | p50 ms | p99 ms | p99.9 ms | server CPU ms/answer | errors/shed"
    print(
        f"| measure | tessera {head.replace(' | ', ' | tessera ')} | Feast {head.replace(' | ', ' | Feast ')} | p99 Feast/tessera |"
    )
    print("| --- |" + " ---: |" * 13)

    def cells(r: dict[str, Any], note: str) -> str:
        achieved = f"{r['achieved']:,.0f}" if "achieved" in r else "–"
        cpu = f"{r['server_cpu_ms']:.1f}" if "server_cpu_ms" in r else "–"
        return f"{achieved} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p999']:.2f} | {cpu} | {note or '–'}"

    def line(name: str, t: dict[str, Any], f: dict[str, Any], note_t: str = "", note_f: str = "") -> None:
        ratio = f["p99"] / t["p99"] if t["p99"] else float("nan")
        print(f"| {name} | {cells(t, note_t)} | {cells(f, note_f)} | {ratio:.2f} |")

    line(
        f"in-process, warm (1 entity × {args.n})", tessera_warm, feast["warm"], f"{degraded['warm']} degraded"
    )
    line(
        f"in-process, cycle ({len(requests)} entities, {args.fetch_n} reads)",
        tessera_cycle,
        feast["cycle"],
        f"{degraded['cycle']} degraded",
    )
    line(f"HTTP, one at a time ({args.serial_n} requests)", *serial)
    for tr, fr in pairs:
        line(
            f"HTTP @ {tr['rate']:,}/s", tr, fr, f"{tr['errors']}/{tr['shed']}", f"{fr['errors']}/{fr['shed']}"
        )
    return 1 if feast["mismatch_count"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--feast-side", type=Path, help=argparse.SUPPRESS)  # internal: runs in .venv-feast
    parser.add_argument("--rates", default="100,300,1000", help="request rates (req/s), comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="schedule length per stage")
    parser.add_argument("--max-requests", type=int, default=10_000, help="requests per stage at most")
    parser.add_argument("--timeout-s", type=float, default=2.0, help="per-request deadline")
    parser.add_argument("--max-inflight", type=int, default=64, help="client concurrency cap (then shed)")
    parser.add_argument("--entities", type=int, default=200, help="distinct request cards")
    parser.add_argument("--events-per-day", type=int, default=5000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--n", type=int, default=3000, help="in-process warm reads (bench_fetch.py's count)")
    parser.add_argument("--fetch-n", type=int, default=500, help="in-process reads over the request cycle")
    parser.add_argument(
        "--serial-n", type=int, default=300, help="HTTP requests one at a time, before the rates"
    )
    parser.add_argument("--online-store", choices=("sqlite", "redis"), default="sqlite", help="Feast's store")
    parser.add_argument("--workdir", type=Path, help="keep the Feast repo, data and server logs here")
    args = parser.parse_args(argv)
    if args.feast_side is not None:
        return feast_side(args.feast_side)
    return run(args)


if __name__ == "__main__":
    # `python bench/bench_feast.py` puts bench/ first on the path; tessera's packages (and bench.*) are at ROOT.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
