"""The HTTP API over real stores (3 memcached nodes + embedded LMDB): vectors equal the reference, decisions
come with reasons, a dead node degrades instead of failing, auth, metrics, and a schemathesis run (no 5xx on
any input the OpenAPI schema allows)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from features.compile import compile_repo
from features.plan import Plan
from features.reference import GroupByIndex, join_features
from features.synthetic import generate
from features.windows import DAY_MS, HOUR_MS, align
from kvstore.embedded import EmbeddedBulkStore
from kvstore.memcached import MemcachedStore
from kvstore.services import start_memcached_cluster
from serving.api import DecisionResponse, FeaturesResponse, create_app
from serving.fetcher import Fetcher
from serving.loader import project, write_batch, write_stream
from serving.rules import Rules
from serving.scoring import Decider

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    plan: Plan = compile_repo(ROOT / "features" / "fraud")
    join = plan.join("fraud_v1")
    ds = generate(seed=13, days=3, events_per_day=600)
    boundary = align(ds.start_ms, DAY_MS) + 2 * DAY_MS
    t = boundary + 20 * HOUR_MS
    raw = {"payments": ds.payments.to_pylist(), "labels": ds.labels.to_pylist()}
    nodes = start_memcached_cluster(3)
    bulk = EmbeddedBulkStore(tmp_path_factory.mktemp("bulk"))
    stream = MemcachedStore([n.address for n in nodes])
    indexes = {}
    for part in join.parts:
        gb = plan.group_by(part.group_by)
        rows = raw[gb.source.table]
        by_key = project(gb, rows)
        write_batch(bulk, gb, by_key, boundary, "2026-01-01")
        write_stream(stream, gb, by_key, boundary, t)
        indexes[gb.name] = GroupByIndex(gb, rows)
    requests = [r for r in raw["payments"] if boundary + 18 * HOUR_MS <= r["ts"] < t]
    rng = random.Random(3)
    # Scored "now" (at t): the stream holds every event before t, as it would in real time.
    requests = [{**{c: r[c] for c in join.left.schema}, "ts": t} for r in rng.sample(requests, 8)]
    fetcher = Fetcher(plan, (bulk, stream), now_ms=lambda: t)
    decider = Decider(None, Rules.default(join.output_schema))
    yield {
        "plan": plan,
        "join": join,
        "t": t,
        "requests": requests,
        "indexes": indexes,
        "nodes": nodes,
        "fetcher": fetcher,
        "decider": decider,
    }
    decider.close()
    stream.close()
    bulk.close()
    for n in nodes:
        n.stop()


@pytest.fixture(scope="module")
def client(world: dict[str, Any]) -> TestClient:
    return TestClient(create_app(world["plan"], world["fetcher"], world["decider"]))


def test_features_equal_the_reference(world: dict[str, Any], client: TestClient) -> None:
    join = world["join"]
    for req in world["requests"]:
        resp = client.post("/v1/features/fraud_v1", json=req, params={"at_ms": req["ts"]})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert not body["degraded"] and body["errors"] == {}
        FeaturesResponse.model_validate_json(resp.content)  # the bytes written directly obey the schema
        want = join_features(join, world["indexes"], [req])[0]
        assert list(body["values"]) == list(join.output_schema)
        for col, w in want.items():
            g = body["values"][col]
            if isinstance(w, float) and w == w:
                assert g == pytest.approx(w, rel=1e-9, abs=1e-12), col
            elif isinstance(w, dict):
                assert g == {str(k): v for k, v in w.items()} or g == pytest.approx(w), col
            elif isinstance(w, float):  # NaN becomes null in JSON
                assert g is None, col
            else:
                assert g == w or g == pytest.approx(w), col


def test_decide_gives_an_action_with_reasons(world: dict[str, Any], client: TestClient) -> None:
    req = dict(world["requests"][0])
    resp = client.post("/v1/decide", json=req)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["action"] in {"approve", "review", "decline"}
    assert "features" in body and body["features"]["join"] == "fraud_v1"
    DecisionResponse.model_validate_json(resp.content)
    hit = client.post("/v1/decide", json={**req, "card_id": None}, params={"at_ms": req["ts"]})
    assert hit.status_code == 200 and DecisionResponse.model_validate_json(hit.content)


def test_json_is_the_same_with_and_without_orjson(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import serving.api as api

    vector = world["fetcher"].fetch("fraud_v1", world["requests"][0])
    body = {
        "values": {**vector.values, "nan": float("nan"), "inf": float("inf"), "map": {1: 2.5}},
        "n": np.float64(1.5),
        "k": np.int64(3),
        "t": (1, 2),
        "big": 2**70,  # beyond orjson's 64 bits: the standard library's path
    }
    fast = api.dumps(body)
    monkeypatch.setattr(api, "_orjson", None)
    plain = api.dumps(body)
    assert json.loads(fast) == json.loads(plain)
    parsed = json.loads(plain)
    assert parsed["values"]["nan"] is None and parsed["values"]["inf"] is None
    assert parsed["values"]["map"] == {"1": 2.5} and parsed["n"] == 1.5 and parsed["k"] == 3
    assert parsed["big"] == 2**70


def test_unknown_join_and_bad_input(world: dict[str, Any], client: TestClient) -> None:
    assert client.post("/v1/features/nope", json={}).status_code == 404
    assert client.post("/v1/features/fraud_v1", json={"amount": "lots"}).status_code == 422
    assert client.post("/v1/features/fraud_v1", json={}, params={"at_ms": -1}).status_code == 422
    # A query time far in the future: answered (flagged stale), in bounded time and memory.
    far = client.post("/v1/features/fraud_v1", json=world["requests"][0], params={"at_ms": 2**62})
    assert far.status_code == 200 and far.json()["stale"]
    # A request without keys: empty-window values, not an error.
    resp = client.post("/v1/features/fraud_v1", json={})
    assert resp.status_code == 200 and resp.json()["values"]["card_amount_usd_count_1h"] == 0


def test_health_metrics_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    metrics = client.get("/metrics").text
    assert "tessera_fetch_seconds_bucket" in metrics and "tessera_cache" in metrics
    schema = client.get("/openapi.json").json()
    assert "/v1/features/fraud_v1" in schema["paths"] and "/v1/decide" in schema["paths"]


def test_bearer_token(world: dict[str, Any]) -> None:
    app = create_app(world["plan"], world["fetcher"], world["decider"], token="s3cret")
    c = TestClient(app)
    assert c.get("/healthz").status_code == 200
    assert c.post("/v1/features/fraud_v1", json={}).status_code == 401
    assert (
        c.post("/v1/features/fraud_v1", json={}, headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    ok = c.post("/v1/features/fraud_v1", json={}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_schemathesis_finds_no_server_error(world: dict[str, Any]) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    app = create_app(world["plan"], world["fetcher"], world["decider"])
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    calls: list[int] = []
    modes = list(schemathesis.GenerationMode)  # valid inputs and deliberately invalid ones
    for op_result, mode in [(o, m) for o in schema.get_all_operations() for m in modes]:
        operation = op_result.ok()

        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            response = case.call()
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}"
                )

        try:
            run()
        except Unsatisfiable:  # e.g. no invalid input exists for GET /healthz
            continue
    assert len(calls) >= 40 and {200, 422} <= set(calls), sorted(set(calls))
    assert not failures, failures[:5]


def test_an_error_while_answering_is_a_500_and_the_work_is_done_once(world: dict[str, Any]) -> None:
    """A decision that raises: the answer is the 500 FastAPI gives for an exception in a route, and the
    decision was attempted once (the hot route does not hand the request on to be answered again)."""

    class Failing(Decider):
        calls = 0

        def decide(self, vector: Any) -> Any:
            Failing.calls += 1
            raise RuntimeError("broken decider")

    failing = Failing(None, Rules.default(world["plan"].join("fraud_v1").output_schema))
    client = TestClient(create_app(world["plan"], world["fetcher"], failing), raise_server_exceptions=False)
    req = world["requests"][0]
    resp = client.post("/v1/decide", json=req, params={"at_ms": req["ts"]})
    assert resp.status_code == 500 and resp.text == "Internal Server Error"
    assert Failing.calls == 1
    assert client.post("/v1/features/fraud_v1", json=req, params={"at_ms": req["ts"]}).status_code == 200


def test_opentelemetry_on_gives_the_same_answers(world: dict[str, Any], client: TestClient) -> None:
    """FastAPI's OpenTelemetry instrumentation is off by default (``otel``); on, the answers are the same."""
    traced = TestClient(create_app(world["plan"], world["fetcher"], world["decider"], otel=True))
    req = world["requests"][0]
    at = {"at_ms": req["ts"]}
    got = traced.post("/v1/features/fraud_v1", json=req, params=at)
    assert got.status_code == 200
    assert got.json()["values"] == client.post("/v1/features/fraud_v1", json=req, params=at).json()["values"]


def test_thread_pool_mode_gives_the_same_answers(world: dict[str, Any], client: TestClient) -> None:
    pooled = TestClient(create_app(world["plan"], world["fetcher"], world["decider"], blocking="threads"))
    for req in world["requests"][:3]:
        at = {"at_ms": req["ts"]}
        a = client.post("/v1/features/fraud_v1", json=req, params=at).json()
        b = pooled.post("/v1/features/fraud_v1", json=req, params=at).json()
        assert a["values"] == b["values"] and not b["degraded"]
        d = pooled.post("/v1/decide", json=req, params=at)
        assert (
            d.status_code == 200
            and d.json()["action"] == client.post("/v1/decide", json=req, params=at).json()["action"]
        )
    with pytest.raises(ValueError, match="blocking"):
        create_app(world["plan"], world["fetcher"], world["decider"], blocking="nope")  # type: ignore[arg-type]


def test_a_dead_node_degrades_the_answer_not_the_status(world: dict[str, Any]) -> None:
    app = create_app(world["plan"], world["fetcher"], world["decider"])
    c = TestClient(app)
    world["nodes"][0].kill()
    seen_degraded = False
    for req in world["requests"]:
        resp = c.post("/v1/decide", json=req, params={"at_ms": req["ts"]})
        assert resp.status_code == 200
        body = resp.json()
        if body["features"]["degraded"]:
            seen_degraded = True
            assert "features_degraded" in body["flags"] and body["features"]["errors"]
    assert seen_degraded


def test_json_of_answers_is_the_bytes_of_the_cleaning_encoder(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dumps_str_keys`` (what answers use) writes exactly the bytes of ``dumps`` without orjson, which walks
    every value first: NaN and infinities (also nested, also numpy) become null either way."""
    import serving.api as api

    monkeypatch.setattr(api, "_orjson", None)
    vector = world["fetcher"].fetch("fraud_v1", world["requests"][0])
    bodies: list[Any] = [
        {"values": vector.values, "errors": {}, "timings_ms": {"total": 0.25}},
        {"values": {**vector.values, "nan": float("nan")}},
        {"values": {"a": [1.0, float("-inf")], "m": {"x": float("nan")}}, "n": np.float64("nan")},
        {"n": np.float64(1.5), "k": np.int64(3), "t": (1, 2), "s": "NaN Infinity", "u": "é"},
        [{"kind": "model", "value": float("nan"), "contribution": 0.5}],
    ]
    for body in bodies:
        assert api.dumps_str_keys(body) == api.dumps(body)
    # maps of any key type: the API turns their keys into strings before (what dumps does inside)
    app = create_app(world["plan"], world["fetcher"], world["decider"])
    client = TestClient(app)
    req = world["requests"][0]
    got = client.post("/v1/features/fraud_v1", json=req, params={"at_ms": req["ts"]})
    want = world["fetcher"].fetch("fraud_v1", req, at_ms=req["ts"])
    assert got.status_code == 200
    body = json.loads(got.content)
    assert body["values"] == json.loads(api.dumps({"values": want.values}))["values"]


def test_hot_routes_answer_as_the_fastapi_routes(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HotRoutes`` serves plain requests itself with the bytes the FastAPI route writes; everything else
    (here: an extra query parameter, a body the model refuses, a query time out of range, a wrong token) is
    FastAPI's, with FastAPI's answer."""
    import serving.api as api

    served: list[bool] = []
    original = api.HotRoutes._request

    def spy(self: Any, scope: Any, model: Any, body: bytes) -> Any:
        got = original(self, scope, model, body)
        served.append(got is not None)
        return got

    monkeypatch.setattr(api.HotRoutes, "_request", spy)
    client = TestClient(create_app(world["plan"], world["fetcher"], world["decider"], token="s3cret"))
    auth = {"authorization": "Bearer s3cret"}

    def without_timings(content: bytes) -> Any:
        body = json.loads(content)
        (body.get("features") or body)["timings_ms"] = None
        return body

    for path in ("/v1/features/fraud_v1", "/v1/decide"):
        for req in world["requests"][:3]:
            served.clear()
            hot = client.post(path, json=req, params={"at_ms": req["ts"]}, headers=auth)
            routed = client.post(path, json=req, params={"at_ms": req["ts"], "other": "1"}, headers=auth)
            assert served == [True, False]
            assert hot.status_code == routed.status_code == 200
            assert hot.headers["content-type"] == routed.headers["content-type"] == "application/json"
            assert without_timings(hot.content) == without_timings(routed.content)
        served.clear()
        bad_body = client.post(path, json={**world["requests"][0], "amount": "lots"}, headers=auth)
        bad_time = client.post(path, json=world["requests"][0], params={"at_ms": 2**63}, headers=auth)
        bad_token = client.post(path, json=world["requests"][0], headers={"authorization": "Bearer nope"})
        assert served == [False, False, False]
        assert bad_body.status_code == bad_time.status_code == 422
        assert bad_body.json()["detail"][0]["loc"] == ["body", "amount"]
        assert bad_token.status_code == 401 and bad_token.headers["www-authenticate"] == "Bearer"
