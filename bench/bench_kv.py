"""kvstore benchmark: bulk-load rate and multi-get latency (1, 10, 50 random keys) per backend.

    python bench/bench_kv.py                       # 1 M keys, every backend whose server is installed
    python bench/bench_kv.py --keys 10000000       # 10 M keys (slow: minutes, ~2.5 GB per copy on disk)
    python bench/bench_kv.py --engines             # also the raw embedded-engine comparison (LMDB/RocksDB/SQLite)

Keys are layout keys (``kvstore.codec.make_key``, 20 bytes) of distinct entities; values are ``--value-bytes``
(200) incompressible bytes. Loads time ``bulk_upload`` + ``publish`` (bulk stores) or ``multi_put`` in batches of 1,000
(memcached). Reads pick keys uniformly at random over the whole data set (the cache-hostile case), after a
warm-up, one call at a time from one thread. The servers are started on 127.0.0.1 by kvstore.services and
stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kvstore.base import Capability, KVStore
from kvstore.codec import KeyLayout, encode_entity, seal
from kvstore.embedded import EmbeddedBulkStore
from kvstore.errors import PartialWriteError
from kvstore.memcached import MemcachedStore
from kvstore.services import Service, postgres_bin_dir, start_memcached_cluster, start_postgres

SIZES = (1, 10, 50)


@dataclass
class Row:
    name: str
    keys: int
    load_s: float
    disk_mib: float | None = None
    latencies_us: dict[int, tuple[float, float]] = field(default_factory=dict)

    def cells(self) -> list[str]:
        out = [self.name, f"{self.keys:,}", f"{self.load_s:.1f}", f"{self.keys / self.load_s:,.0f}"]
        out.append("" if self.disk_mib is None else f"{self.disk_mib:,.0f}")
        out += [f"{p50:.0f} / {p99:.0f}" for p50, p99 in (self.latencies_us[n] for n in SIZES)]
        return out


HEADER = ["backend", "keys", "load s", "load keys/s", "disk MiB"] + [f"get {n} p50/p99 µs" for n in SIZES]


LAYOUT = KeyLayout("bench", "plan")


def key_of(i: int) -> bytes:
    return LAYOUT.key(encode_entity([i]))


_POOL = random.Random(1).randbytes(1 << 20)


def value_of(i: int, size: int) -> bytes:
    """``size`` incompressible bytes, different per key (so compressing engines get no unfair help)."""
    off = (i * 2654435761) % (len(_POOL) - size)
    return (i.to_bytes(8, "big") + _POOL[off : off + size])[:size]


def items(n: int, size: int) -> Iterator[tuple[bytes, bytes]]:
    # encode_entity of a non-negative int is a fixed-width big-endian integer: range order is key order.
    for i in range(n):
        yield key_of(i), value_of(i, size)


def measure(
    get: Callable[[list[bytes]], object], n: int, queries: int, seed: int = 7
) -> dict[int, tuple[float, float]]:
    """p50/p99 latency in µs of ``get`` on random keys, per request size."""
    rng = random.Random(seed)
    out = {}
    for size in SIZES:
        for _ in range(200):  # warm-up: connections, prepared statements, page tables
            get([key_of(rng.randrange(n)) for _ in range(size)])
        lat = []
        for _ in range(queries):
            ks = [key_of(rng.randrange(n)) for _ in range(size)]
            t0 = time.perf_counter_ns()
            got = get(ks)
            lat.append((time.perf_counter_ns() - t0) / 1000)
            assert got, "benchmark read found nothing"
        q = statistics.quantiles(lat, n=100)
        out[size] = (q[49], q[98])
    return out


def dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def put_retrying(store: KVStore, dataset: str, batch: dict[bytes, bytes], attempts: int = 20) -> None:
    """What a stream writer does: retry the keys a PartialWriteError names (tile writes are idempotent)."""
    for _ in range(attempts):
        try:
            store.multi_put(dataset, batch)
            return
        except PartialWriteError as e:
            batch = {k: batch[k] for k in e.failed_keys}
            time.sleep(0.5)
    raise RuntimeError(f"{len(batch)} keys still unwritten after {attempts} attempts")


def bench_store(store: KVStore, n: int, value_bytes: int, queries: int) -> Row:
    dataset = "bench"
    t0 = time.perf_counter()
    if Capability.VERSIONS in store.capabilities:
        version = f"v{time.time_ns()}"  # a fresh version each run, also in a reused --workdir
        store.bulk_upload(dataset, version, items(n, value_bytes))
        store.publish(dataset, version)
    else:
        batch: dict[bytes, bytes] = {}
        for k, v in items(n, value_bytes):
            batch[k] = v
            if len(batch) == 1000:
                put_retrying(store, dataset, batch)
                batch = {}
        if batch:
            put_retrying(store, dataset, batch)
    load_s = time.perf_counter() - t0
    disk = dir_mib(store.root) if isinstance(store, EmbeddedBulkStore) else None
    return Row(store.name, n, load_s, disk, measure(lambda ks: store.multi_get(dataset, ks), n, queries))


# -- raw embedded engines (the decision behind EmbeddedBulkStore) ---------------------------------------------
def engine_lmdb(path: Path, n: int, vb: int, queries: int) -> Row:
    import lmdb

    t0 = time.perf_counter()
    env = lmdb.open(str(path), map_size=1 << 38, lock=False, sync=False, metasync=False)
    it = ((k, seal(v)) for k, v in items(n, vb))
    while True:
        chunk = [kv for _, kv in zip(range(200_000), it)]
        if not chunk:
            break
        with env.begin(write=True) as txn:
            txn.cursor().putmulti(chunk, append=True)
    env.sync(True)
    env.close()
    load = time.perf_counter() - t0
    env = lmdb.open(str(path), readonly=True, lock=False, readahead=False)

    def get(ks: list[bytes]) -> object:
        with env.begin() as txn:
            return txn.cursor().getmulti(ks)

    return Row("raw LMDB (putmulti append)", n, load, dir_mib(path), measure(get, n, queries))


def engine_rocksdb(path: Path, n: int, vb: int, queries: int) -> Row:
    from rocksdict import AccessType, Options, Rdict, SstFileWriter

    opts = Options(raw_mode=True)
    t0 = time.perf_counter()
    sst = str(path) + ".sst"
    w = SstFileWriter(options=opts)
    w.open(sst)
    for k, v in items(n, vb):
        w[k] = seal(v)
    w.finish()
    db = Rdict(str(path), options=opts)
    db.ingest_external_file([sst])
    db.close()
    os.remove(sst)
    load = time.perf_counter() - t0
    db = Rdict(str(path), options=opts, access_type=AccessType.read_only())
    return Row("raw RocksDB (SST ingest)", n, load, dir_mib(path), measure(lambda ks: db[ks], n, queries))


def engine_sqlite(path: Path, n: int, vb: int, queries: int) -> Row:
    path.mkdir()
    db_file = path / "kv.sqlite"
    t0 = time.perf_counter()
    con = sqlite3.connect(db_file)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
    con.executemany("INSERT INTO kv VALUES (?, ?)", ((k, seal(v)) for k, v in items(n, vb)))
    con.commit()
    con.close()
    load = time.perf_counter() - t0
    ro = sqlite3.connect(f"file:{db_file}?immutable=1", uri=True, check_same_thread=False)
    ro.execute("PRAGMA mmap_size=17179869184")
    stmts = {s: f"SELECT k, v FROM kv WHERE k IN ({','.join('?' * s)})" for s in SIZES}
    return Row(
        "raw SQLite WITHOUT ROWID",
        n,
        load,
        dir_mib(path),
        measure(lambda ks: ro.execute(stmts[len(ks)], ks).fetchall(), n, queries),
    )


# -- driver ---------------------------------------------------------------------------------------------------
def render(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--value-bytes", type=int, default=200)
    ap.add_argument("--queries", type=int, default=3000, help="timed calls per request size")
    ap.add_argument("--backends", default="embedded,postgres,memcached")
    ap.add_argument("--engines", action="store_true", help="also compare raw LMDB / RocksDB / SQLite")
    ap.add_argument("--workdir", default=None, help="where data files go (default: a temporary dir, removed)")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tessera-bench-kv-"))
    work.mkdir(parents=True, exist_ok=True)
    n, vb, q = args.keys, args.value_bytes, args.queries
    print(
        f"# kvstore bench: {n:,} keys x {vb} B values; {platform.node()} {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d')}"
    )
    rows: list[Row] = []

    def report(row: Row) -> None:
        rows.append(row)
        print(render([row]).splitlines()[-1], flush=True)

    print(render([]))
    services: list[Service] = []
    try:
        for backend in args.backends.split(","):
            if backend == "embedded":
                with EmbeddedBulkStore(work / "embedded") as s:
                    report(bench_store(s, n, vb, q))
            elif backend == "postgres":
                if postgres_bin_dir() is None:
                    print("| postgres | skipped: PostgreSQL not installed |")
                    continue
                from kvstore.postgres import PostgresBulkStore

                pg = start_postgres()
                services.append(pg)
                with PostgresBulkStore(pg.extra["dsn"]) as s:
                    report(bench_store(s, n, vb, q))
            elif backend == "memcached":
                mem_mb = max(256, int(n * (vb + 160) / 2**20 / 3 * 1.5))
                nodes = start_memcached_cluster(3, memory_mb=mem_mb)
                services += nodes
                with MemcachedStore([x.address for x in nodes]) as s:
                    report(bench_store(s, n, vb, q))
                single = nodes[:1]
                with MemcachedStore([x.address for x in single]) as s:
                    row = bench_store(s, min(n, 200_000), vb, q)
                    row.name = "memcached-1 (one node)"
                    report(row)
            else:
                raise SystemExit(f"unknown backend {backend!r}; use embedded, postgres, memcached")
        if args.engines:
            for fn, name in ((engine_lmdb, "lmdb"), (engine_rocksdb, "rocksdb"), (engine_sqlite, "sqlite")):
                shutil.rmtree(work / f"engine-{name}", ignore_errors=True)
                try:
                    report(fn(work / f"engine-{name}", n, vb, q))
                except ImportError as e:  # rocksdict is only needed for this comparison
                    print(f"| raw {name} | skipped: {e} (pip install rocksdict) |")
                shutil.rmtree(work / f"engine-{name}", ignore_errors=True)
    finally:
        for svc in services:
            svc.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
