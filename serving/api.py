"""The HTTP API: feature vectors and fraud decisions over FastAPI.

* ``POST /v1/features/{join}`` — the Join's feature vector for a request (the Join's left columns as JSON).
* ``POST /v1/decide`` — fetch the decision Join's vector, then rules + model: approve / review / decline.
* ``GET /healthz`` — liveness (no auth). ``GET /metrics`` — Prometheus text format.

The request body of each Join is a model generated from the Join's left schema, so the OpenAPI document says
exactly which fields a caller sends. A store that is down or slow never turns into a 5xx: the vector comes back
``degraded`` with per-part ``errors``. When a token is configured every route but ``/healthz`` needs
``Authorization: Bearer <token>``.

Per request, the hot routes keep the framework's work small: the body is validated by its pydantic model, but
the answer (~160 values) is written as JSON bytes directly (``orjson`` when installed, else the standard
library; NaN and infinities become null either way) instead of building and re-validating the response models,
which stay in the OpenAPI document. A plain request to a hot route does not even reach FastAPI's router:
:class:`HotRoutes` validates it with the same model and writes the same answer (anything else is FastAPI's; an
exception while answering gets the 500 of Starlette's error middleware, as from the route). ``blocking="inline"`` (the default) runs fetch and decision in the event
loop's thread: both are CPU-bound Python, so a worker thread only adds two thread switches per request; a slow
store is bounded by the fetch's own budgets. ``blocking="threads"`` runs them in at most ``threads`` worker
threads instead, which overlaps one request's waits (store round trips, thread wake-ups) with another's work.

Several server processes (``tessera serve --workers N``) each have their own fetcher and caches. ``/metrics``
is then prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set before the workers start):
counters and histograms are summed over the workers, the cache gauges summed over the live workers; each worker
refreshes its cache gauges at most once a second while it serves.
"""

import importlib
import json
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import BaseModel, ConfigDict, Field, create_model

from features.plan import JoinPlan, Plan
from serving.fetcher import FeatureVector, Fetcher
from serving.scoring import Decider

_orjson: Any
try:  # a faster encoder of the same JSON (in tessera's main dependencies; the code runs without it too)
    _orjson = importlib.import_module("orjson")
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

#: Query times the stores can address (period starts are signed 64-bit milliseconds).
MAX_AT_MS = 2**62

_PY_TYPES: dict[str, type] = {
    "string": str,
    "long": int,
    "int": int,
    "bigint": int,
    "double": float,
    "float": float,
    "boolean": bool,
}
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class FeaturesResponse(BaseModel):
    join: str
    at_ms: int
    values: dict[str, Any] = Field(description="every output column of the Join, in order")
    errors: dict[str, str] = Field(
        description="per part (GroupBy name) or derivation: why its values are null"
    )
    degraded: bool = Field(
        description="some part could not be served (store down or slow); its values are null"
    )
    stale: bool = Field(description="some batch state is past its validity (the daily upload is late)")
    timings_ms: dict[str, float]


class ReasonOut(BaseModel):
    kind: str
    name: str
    text: str
    action: str | None = None
    value: float | None = None
    contribution: float | None = None


_REASON_FIELDS = tuple(ReasonOut.model_fields)


class DecisionResponse(BaseModel):
    action: str = Field(description="approve, review or decline")
    score: float | None = Field(description="the model's fraud probability; null when rules decided alone")
    reasons: list[ReasonOut]
    flags: list[str] = Field(description="e.g. model_fallback, features_degraded")
    features: FeaturesResponse


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes; NaN and infinities become null, map keys strings, numpy scalars numbers.

    With orjson installed (a dependency of tessera's main environment) it writes them, ~10x faster; a value it
    refuses (an integer beyond 64 bits) takes the standard library's path. The two parse to the same values."""
    if _orjson is not None:
        try:
            return _orjson.dumps(obj, option=_orjson.OPT_NON_STR_KEYS | _orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            pass
    return json.dumps(_clean(obj), separators=(",", ":"), allow_nan=False, default=_plain).encode()


def dumps_str_keys(obj: Any) -> bytes:
    """:func:`dumps` of an object whose maps all have ``str`` keys: the same bytes, but the standard library's
    C encoder runs on it directly, and only an object holding a NaN or an infinity (which that encoder
    refuses) is walked by :func:`_clean` first. (With ``str`` keys, :func:`_clean` changes nothing else.)"""
    if _orjson is not None:
        return dumps(obj)
    try:
        return _encode_strict(obj).encode()
    except (ValueError, TypeError):  # a NaN or an infinity somewhere (or a key that is not a string)
        return dumps(obj)


def _plain(v: Any) -> Any:
    item = getattr(v, "item", None)  # numpy scalars and 0-d arrays
    if item is not None:
        return _clean(item())
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


_encode_strict = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_plain).encode


def _json_response(content: bytes) -> Response:
    return Response(content=content, media_type="application/json")


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf become null (JSON has no NaN); maps keep their keys as strings."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


_JSON_HEADERS = [(b"content-type", b"application/json")]


class HotRoutes:
    """ASGI middleware that answers the hot routes (``POST /v1/features/{join}``, ``POST /v1/decide``) without
    FastAPI's routing, dependency solving and response classes, which cost about as much CPU per request as a
    warm fetch. It serves a request only when it can do exactly what the FastAPI route would:

    * the bearer token (when one is configured) is right,
    * the content type is absent or ``application/json``,
    * the query string is empty or exactly ``at_ms=<digits>`` within ``[0, MAX_AT_MS]``,
    * the body is JSON that the route's body model accepts (``json.loads`` then ``model_validate``, the steps
      FastAPI takes),

    and then it calls the same answer function and writes the same bytes, with the same headers. Anything else
    (a wrong token, a body the model refuses, another route) goes to the FastAPI app with the body replayed, so
    every error answer (401, 422...) stays FastAPI's own. An exception while answering is raised, not handed on
    (the work is not done twice): it reaches the middleware FastAPI installs outside this one, which answers
    500 as for an exception in the route.
    """

    def __init__(
        self,
        app: Any,
        *,
        routes: Mapping[str, tuple[type[BaseModel], Callable[[Mapping[str, Any], int | None], bytes]]],
        token: str | None,
        call: Callable[..., Awaitable[Any]],
    ) -> None:
        self.app = app
        self.routes = routes
        self.token = token
        self.call = call

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        route = None
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            route = self.routes.get(scope["path"])
        if route is None:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it as it would
                await self.app(scope, _Replay(chunks, message, receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        request = self._request(scope, route[0], body)
        if request is None:
            await self.app(scope, _Replay([body], None, receive), send)
            return
        # An error while answering propagates as it would from the route (no exception handler of the app
        # catches it there either): Starlette's ServerErrorMiddleware, outside this one, answers 500.
        answer = await self.call(route[1], request[0], request[1])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode()), *_JSON_HEADERS],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    def _request(
        self, scope: Any, model: type[BaseModel], body: bytes
    ) -> tuple[dict[str, Any], int | None] | None:
        """The validated body (as ``model_dump``) and ``at_ms``, or None when FastAPI should decide."""
        try:
            content_type = auth = None
            for name, value in scope["headers"]:
                if name == b"content-type":
                    content_type = value
                elif name == b"authorization":
                    auth = value
            media = content_type.split(b";", 1)[0].strip().lower() if content_type is not None else None
            if media not in (None, b"application/json"):
                return None
            if self.token is not None:
                scheme, _, given = (auth or b"").decode("latin-1").partition(" ")
                if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), self.token):
                    return None
            at_ms = None
            query = scope.get("query_string", b"")
            if query:
                name, eq, value = query.partition(b"=")
                if name != b"at_ms" or not eq or not value.isdigit():  # (bytes.isdigit: ASCII digits only)
                    return None
                at_ms = int(value)
                if at_ms > MAX_AT_MS:
                    return None
            data = json.loads(body)
            if not isinstance(data, dict):
                return None
            return model.model_validate(data).model_dump(), at_ms
        except Exception:  # not JSON, a body the model refuses, an odd header: FastAPI answers it
            return None


class _Replay:
    """An ASGI ``receive`` that gives back a body already read (then ``last``, then the real channel)."""

    def __init__(self, chunks: list[bytes], last: Any, receive: Any) -> None:
        self.pending: list[Any] = [
            {"type": "http.request", "body": b"".join(chunks), "more_body": last is not None}
        ]
        if last is not None:
            self.pending.append(last)
        self.receive = receive

    async def __call__(self) -> Any:
        if self.pending:
            return self.pending.pop(0)
        return await self.receive()


def request_model(join: JoinPlan) -> type[BaseModel]:
    """The body model of a Join: its left schema's columns, each optional (a missing key gives that part's
    empty-window values, not an error)."""
    fields: dict[str, Any] = {}
    for col, typ in join.left.schema.items():
        py = _PY_TYPES.get(typ, str if not typ.startswith("decimal") else float)
        fields[col] = (py | None, Field(default=None))
    model = create_model(
        f"{''.join(p.title() for p in join.name.split('_'))}Request",
        __config__=ConfigDict(extra="ignore"),
        **fields,
    )
    return model


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.fetch_latency = Histogram(
            "tessera_fetch_seconds", "Feature fetch latency", ["join"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.decide_latency = Histogram(
            "tessera_decide_seconds",
            "Decision latency (fetch + rules + model)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "tessera_store_errors_total",
            "Parts not served (store down, slow, bad value)",
            ["join", "part"],
            registry=r,
        )
        self.degraded = Counter("tessera_degraded_total", "Vectors served degraded", ["join"], registry=r)
        self.stale = Counter(
            "tessera_stale_total", "Vectors served with batch state past its validity", ["join"], registry=r
        )
        self.decisions = Counter("tessera_decisions_total", "Decisions by action", ["action"], registry=r)
        self.model_fallbacks = Counter(
            "tessera_model_fallback_total",
            "Decisions made by rules alone because the model failed or timed out",
            registry=r,
        )
        self.cache = Gauge(
            "tessera_cache",
            "Fetcher cache counters (summed over live workers)",
            ["cache", "kind"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self._cache_set_at = 0.0

    def set_cache(self, stats: Mapping[str, int], *, every_s: float = 0.0) -> None:
        """Copy the fetcher's cache counters into the gauge (at most every ``every_s`` seconds)."""
        now = time.monotonic()
        if now - self._cache_set_at < every_s:
            return
        self._cache_set_at = now
        for name, value in stats.items():
            cache, _, kind = name.partition("_")
            self.cache.labels(cache, kind).set(value)

    def exposition(self) -> bytes:
        """The text format: this process's registry, or every worker's (multiprocess mode)."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return generate_latest(merged)


def create_app(
    plan: Plan,
    fetcher: Fetcher,
    decider: Decider | None = None,
    *,
    token: str | None = None,
    decide_join: str = "fraud_v1",
    blocking: Literal["inline", "threads"] = "inline",
    threads: int = 4,
    otel: bool = False,
) -> FastAPI:
    """The API over one plan's online Joins. ``decider`` None: ``/v1/decide`` answers 503. ``blocking``: where
    fetch and decision run (module docstring). ``otel``: FastAPI's OpenTelemetry instrumentation (spans and
    metrics through the global providers, when some are configured); off by default, because even unconfigured
    it looks the providers up on every request, and ``/metrics`` already serves the API's own metrics."""
    if blocking not in ("inline", "threads"):
        raise ValueError(f"blocking={blocking!r}: expected inline or threads")
    limiter = anyio.CapacityLimiter(max(1, threads))
    app = FastAPI(
        telemetry=None if otel else {"tracing": False, "metrics": False, "logs": False},
        title="tessera",
        version="0.1.0",
        description="Feature vectors and fraud decisions. One definition; stream, batch, backfill "
        "and serving agree.",
    )
    metrics = _Metrics()
    app.state.metrics = metrics
    joins = {j.name: j for j in plan.joins if j.online}

    async def authorize(request: Request) -> None:  # async: no thread hop for a header check
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), token):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    fetch_latency = {name: metrics.fetch_latency.labels(name) for name in joins}  # (labels() once per Join)

    def fetch(join: JoinPlan, body: Mapping[str, Any], at_ms: int | None) -> FeatureVector:
        started = time.perf_counter()
        vector = fetcher.fetch(join.name, body, at_ms=at_ms)
        fetch_latency[join.name].observe(time.perf_counter() - started)
        for part in vector.errors:
            metrics.store_errors.labels(join.name, part).inc()
        if vector.degraded:
            metrics.degraded.labels(join.name).inc()
        if vector.stale:
            metrics.stale.labels(join.name).inc()
        if metrics.multiprocess:  # other workers' scrapes read this worker's gauges from its files
            metrics.set_cache(fetcher.cache_stats(), every_s=1.0)
        return vector

    # Columns that may hold maps: their keys become strings here (as _clean does), so every map of an answer has
    # str keys and the answer can go through dumps_str_keys.
    map_columns = {
        j.name: tuple(c for c, t in j.output_schema.items() if "map<" in t.lower()) for j in joins.values()
    }

    def features_out(vector: FeatureVector) -> dict[str, Any]:
        """The :class:`FeaturesResponse` fields, as plain values for :func:`dumps_str_keys`."""
        values = vector.values
        maps = [c for c in map_columns.get(vector.join, ()) if isinstance(values.get(c), dict | list | tuple)]
        if maps:
            values = dict(values)
            for c in maps:
                values[c] = _clean(values[c])
        return {
            "join": vector.join,
            "at_ms": vector.at_ms,
            "values": values,
            "errors": vector.errors,
            "degraded": vector.degraded,
            "stale": vector.stale,
            "timings_ms": vector.timings_ms,
        }

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        if blocking == "inline":
            return fn(*args)
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers and knows its plan (``pid``: which server process answered)."""
        return {"status": "ok", "plan": plan.plan_hash, "joins": sorted(joins), "pid": os.getpid()}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse, dependencies=[Depends(authorize)])
    def prometheus() -> PlainTextResponse:
        """Prometheus metrics: latency histograms, store errors, degraded/stale counts, cache counters."""
        metrics.set_cache(fetcher.cache_stats())
        return PlainTextResponse(metrics.exposition().decode(), media_type=CONTENT_TYPE_LATEST)

    at_query = Query(None, ge=0, le=MAX_AT_MS, description="query time, epoch ms (default: now)")
    # The hot routes (path -> body model, answer function) that HotRoutes serves without FastAPI's routing.
    hot: dict[str, tuple[type[BaseModel], Callable[[Mapping[str, Any], int | None], bytes]]] = {}

    def features_endpoint(join: JoinPlan) -> Callable[..., Awaitable[Response]]:
        # No postponed annotations in this module: FastAPI reads the generated body model from the signature.
        model = request_model(join)

        def answer(request: Mapping[str, Any], at_ms: int | None) -> bytes:
            return dumps_str_keys(features_out(fetch(join, request, at_ms)))

        async def endpoint(body: model, at_ms: int | None = at_query) -> Response:  # type: ignore[valid-type]
            return _json_response(await call(answer, body.model_dump(), at_ms))  # type: ignore[attr-defined]

        hot[f"/v1/features/{join.name}"] = (model, answer)
        return endpoint

    for join in joins.values():
        app.post(
            f"/v1/features/{join.name}",
            response_model=FeaturesResponse,
            tags=["features"],
            summary=f"Feature vector of Join {join.name}",
            dependencies=[Depends(authorize)],
            name=f"features_{join.name}",
        )(features_endpoint(join))

    @app.post(
        "/v1/features/{join}",
        response_model=FeaturesResponse,
        tags=["features"],
        dependencies=[Depends(authorize)],
        include_in_schema=False,
    )
    async def unknown_join(join: str = Path(...)) -> FeaturesResponse:
        raise HTTPException(
            status_code=404, detail=f"no online Join named {join!r} (known: {', '.join(joins)})"
        )

    if decide_join in joins:
        decide_model = request_model(joins[decide_join])

        @app.post(
            "/v1/decide",
            response_model=DecisionResponse,
            tags=["decisions"],
            dependencies=[Depends(authorize)],
            summary=f"Fraud decision on Join {decide_join}",
        )
        async def decide(body: decide_model, at_ms: int | None = at_query) -> Response:  # type: ignore[valid-type]
            if decider is None:
                raise HTTPException(status_code=503, detail="no decision model is configured (tessera train)")
            return _json_response(await call(decide_now, body.model_dump(), at_ms))  # type: ignore[attr-defined]

        def decide_now(request: Mapping[str, Any], at_ms: int | None) -> bytes:
            assert decider is not None
            started = time.perf_counter()
            vector = fetch(joins[decide_join], request, at_ms)
            decision = decider.decide(vector.values)
            flags = list(decision.flags)
            if vector.degraded:
                flags.append("features_degraded")
            if vector.stale:
                flags.append("features_stale")
            if "model_fallback" in flags:
                metrics.model_fallbacks.inc()
            metrics.decisions.labels(decision.action).inc()
            metrics.decide_latency.observe(time.perf_counter() - started)
            score = decision.score if decision.score is None or math.isfinite(decision.score) else None
            return dumps_str_keys(
                {
                    "action": decision.action,
                    "score": score,
                    "reasons": [{f: getattr(r, f) for f in _REASON_FIELDS} for r in decision.reasons],
                    "flags": flags,
                    "features": features_out(vector),
                }
            )

        if decider is not None:
            hot["/v1/decide"] = (decide_model, decide_now)

    app.add_middleware(HotRoutes, routes=hot, token=token, call=call)
    return app
