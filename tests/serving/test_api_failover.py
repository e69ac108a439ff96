"""A memcached node killed while the API is under load: every answer is still a 200, the vectors that needed the
dead node come back degraded and flagged, and /metrics counts them.

The API is a real uvicorn server on a loopback port (as ``tessera serve`` runs it) over 3 memcached nodes and
the embedded bulk store; a client thread sends decisions back to back over HTTP while the test kills one node
(SIGKILL) in the middle of the load.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from features.compile import compile_repo
from features.gcpolicy import no_full_collections
from features.synthetic import generate
from features.windows import DAY_MS, HOUR_MS, align
from kvstore.embedded import EmbeddedBulkStore
from kvstore.memcached import MemcachedStore
from kvstore.services import free_port, start_memcached_cluster
from serving.api import create_app
from serving.fetcher import Fetcher
from serving.loader import project, write_batch, write_stream
from serving.rules import Rules
from serving.scoring import Decider

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    plan = compile_repo(ROOT / "features" / "fraud")
    join = plan.join("fraud_v1")
    ds = generate(seed=29, days=3, events_per_day=400)
    boundary = align(ds.start_ms, DAY_MS) + 2 * DAY_MS
    t = boundary + 20 * HOUR_MS
    raw = {"payments": ds.payments.to_pylist(), "labels": ds.labels.to_pylist()}
    nodes = start_memcached_cluster(3)
    bulk = EmbeddedBulkStore(tmp_path / "bulk")
    stream = MemcachedStore([n.address for n in nodes])
    for part in join.parts:
        gb = plan.group_by(part.group_by)
        by_key = project(gb, raw[gb.source.table])
        write_batch(bulk, gb, by_key, boundary, "2026-01-01")
        write_stream(stream, gb, by_key, boundary, t)
    # Cards with stream values today: each request reads period values from the node its card hashes to.
    today = [r for r in raw["payments"] if boundary <= r["ts"] < t]
    requests = [{c: r[c] for c in join.left.schema} | {"ts": t} for r in today[:60]]
    fetcher = Fetcher(plan, (bulk, stream), now_ms=lambda: t)
    decider = Decider(None, Rules.default(join.output_schema))
    port = free_port()
    srv = uvicorn.Server(
        uvicorn.Config(create_app(plan, fetcher, decider), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=5.0) as c:  # warm, as a deployment warms a new server
        for req in requests:
            c.post("/v1/decide", json=req)
    # As `tessera serve` runs (features/gcpolicy.py): no full collection of this process's heap - the whole
    # suite's objects - in the middle of a request while the healthy cluster is measured.
    with no_full_collections():
        yield {"url": url, "requests": requests, "nodes": nodes}
    srv.should_exit = True
    thread.join(10)
    decider.close()
    stream.close()
    bulk.close()
    for n in nodes:
        n.stop()


def test_a_node_killed_mid_load_degrades_answers_not_statuses(server: dict[str, Any]) -> None:
    answers: list[tuple[float, float, int, dict[str, Any] | None]] = []  # sent, answered, status, body
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server["url"], timeout=5.0) as c:
            i = 0
            while not stop.is_set():
                req = server["requests"][i % len(server["requests"])]
                sent = time.monotonic()
                try:
                    resp = c.post("/v1/decide", json=req)
                except httpx.HTTPError as e:  # a transport error is a failure of the API too
                    failures.append(repr(e))
                    continue
                finally:
                    i += 1
                body = resp.json() if resp.status_code == 200 else None
                answers.append((sent, time.monotonic(), resp.status_code, body))

    client = threading.Thread(target=load)
    client.start()

    def wait_for(n: int, since: float) -> None:
        deadline = time.monotonic() + 60
        while (
            sum(1 for a in answers if a[0] > since) < n and time.monotonic() < deadline and client.is_alive()
        ):
            time.sleep(0.05)

    wait_for(20, 0.0)
    killed_at = time.monotonic()
    server["nodes"][0].kill()
    wait_for(60, killed_at)
    stop.set()
    client.join(10)

    assert not failures, failures[:3]
    before = [a for a in answers if a[1] < killed_at]
    after = [a for a in answers if a[0] > killed_at]
    assert len(before) >= 20 and len(after) >= 60, (len(before), len(after))
    assert all(status == 200 for _, _, status, _ in answers), {a[2] for a in answers}
    assert not any(b and b["features"]["degraded"] for _, _, _, b in before)
    degraded = [b for _, _, _, b in after if b and b["features"]["degraded"]]
    assert degraded
    for b in degraded:
        assert "features_degraded" in b["flags"] and b["features"]["errors"]
        assert b["action"] in {"approve", "review", "decline"}
        assert any("unavailable" in e for e in b["features"]["errors"].values()), b["features"]["errors"]
    metrics = httpx.get(server["url"] + "/metrics").text
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("tessera_degraded_total{")
    )
    assert counted >= len(degraded)
