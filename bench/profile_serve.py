"""Where a request's CPU goes in ``tessera serve``: the API app driven in-process over ASGI (no sockets, no uvicorn).

The world of ``bench_serve.py`` (3 memcached nodes, embedded bulk store, the bench's model, 200 cards), the app of
``tessera serve`` (:func:`serving.api.create_app` with the same fetcher and decider), requests cycling over the
cards. Prints CPU µs per request per round (``time.process_time``, no profiler; on a shared box the minimum
is the steadiest figure), then, with ``--profile``, cProfile's top
functions by own and cumulative time (which inflates Python-heavy parts).

    .venv/bin/python bench/profile_serve.py --rounds 10 --n 500 --endpoint decide --profile
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_serve import JOIN, REPO, load_world, train_model
from features.compile import compile_repo
from kvstore.embedded import EmbeddedBulkStore
from kvstore.memcached import MemcachedStore
from kvstore.services import start_memcached_cluster
from serving.api import create_app
from serving.fetcher import Fetcher
from serving.rules import Rules
from serving.scoring import Decider


async def _call(app: Any, path: str, body: bytes) -> tuple[int, bytes]:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    status = 0
    out: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            out.append(message.get("body", b""))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    return status, b"".join(out)


async def _drive(app: Any, path: str, bodies: list[bytes], n: int) -> list[bytes]:
    answers = []
    for i in range(n):
        status, answer = await _call(app, path, bodies[i % len(bodies)])
        if status != 200:
            raise RuntimeError(f"{path}: HTTP {status}: {answer[:300]!r}")
        answers.append(answer)
    return answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=500, help="requests per timed round")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (min and median reported)")
    parser.add_argument("--endpoint", choices=("decide", "features"), default="decide")
    parser.add_argument("--profile", action="store_true", help="also a cProfile run of the same requests")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)

    plan = compile_repo(REPO)
    nodes = start_memcached_cluster(3)
    try:
        with tempfile.TemporaryDirectory(prefix="profile-serve-") as tmp_s:
            tmp = Path(tmp_s)
            bulk = EmbeddedBulkStore(tmp / "bulk")
            stream = MemcachedStore([s.address for s in nodes])
            requests = load_world(plan, bulk, stream, days=3, events_per_day=5000, entities=200)
            train_model(plan, tmp / "model")
            join = plan.join(JOIN)
            decider = Decider(tmp / "model", Rules.default(join.output_schema), placement="auto")
            app = create_app(plan, Fetcher(plan, (bulk, stream)), decider)
            path = "/v1/decide" if args.endpoint == "decide" else f"/v1/features/{JOIN}"
            bodies = [json.dumps(r).encode() for r in requests]
            loop = asyncio.new_event_loop()
            loop.run_until_complete(_drive(app, path, bodies, 2 * len(bodies)))  # warm
            cpus = []
            for _ in range(args.rounds):
                c0 = time.process_time()
                loop.run_until_complete(_drive(app, path, bodies, args.n))
                cpus.append((time.process_time() - c0) / args.n * 1e6)
            print(
                f"{path}: CPU µs per request over {args.rounds} rounds of {args.n}: "
                f"min {min(cpus):.0f}, median {statistics.median(cpus):.0f} ({', '.join(f'{c:.0f}' for c in cpus)})"
            )
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
                loop.run_until_complete(_drive(app, path, bodies, args.n))
                prof.disable()
                for key in ("tottime", "cumulative"):
                    text = io.StringIO()
                    pstats.Stats(prof, stream=text).sort_stats(key).print_stats(args.top)
                    print(text.getvalue())
            loop.close()
            stream.close()
            bulk.close()
    finally:
        for node in nodes:
            node.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
