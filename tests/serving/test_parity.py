"""Offline/online parity on demo-shaped data: the training set the model learns from and the vectors the API
scores are the same numbers, and the model scores them the same.

Seeded payments (``features.synthetic.generate``, small) are written as the offline tables. Then, as the demo
does it but in process:

* **offline**: the Spark backfill (``spark_jobs.backfill.training_set``) gives every labeled payment its
  point-in-time features; an xgboost model is trained on that table (``serving.scoring.train``);
* **online**: the Spark batch upload (``spark_jobs.upload.run_upload``) writes the state as of the last day
  boundary into the embedded bulk store; for each payment of the last day, in time order, the stream's period
  values of that payment's entities are written to memcached as the stream job would hold them at that instant
  (every event past the boundary and before it), and ``Fetcher.fetch`` reads the vector at the payment's time.

The stream is caught up in this world (no event is in flight or late: ``late_fraction=0`` and each request is
served after every earlier event was tiled), so nothing may differ. Per value: aggregate features as the
consistency checker judges them (:func:`features.consistency.compare` with the feature's op: exact for counts,
relative 1e-9 for float sums, the stated error bound for sketches); other columns within a relative 1e-9. Then
the model: inputs equal within a relative 1e-9, scores and decisions identical.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from features.compile import compile_repo
from features.consistency import MATCH, compare, is_number, normalize
from features.plan import Plan
from features.synthetic import generate
from features.tiles import StateCodec
from features.windows import DAY_MS, align
from kvstore.embedded import EmbeddedBulkStore
from kvstore.memcached import MemcachedStore
from kvstore.services import start_memcached_cluster
from serving.fetcher import Fetcher
from serving.loader import project, write_stream
from serving.rules import Rules
from serving.scoring import Decider, Model, train

pytestmark = [pytest.mark.spark, pytest.mark.services]

ROOT = Path(__file__).resolve().parents[2]
ONLINE_ROWS = 60  # payments of the last day scored both ways
REL = 1e-9


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def _ops(plan: Plan, join_name: str) -> dict[str, Any]:
    """Output column -> the aggregation op that computes it (parts' features only)."""
    out: dict[str, Any] = {}
    for part in plan.join(join_name).parts:
        gb = plan.group_by(part.group_by)
        codec = StateCodec(gb)
        by_name = {f.name: codec.ops[f.agg_index] for f in gb.features}
        for out_name, feature in part.features.items():
            out[out_name] = by_name[feature]
    return out


def _same(online: Any, offline: Any, op: Any) -> bool:
    online, offline = normalize(online), normalize(offline)
    if op is not None:
        return compare(online, offline, op) in (MATCH, "both_null")
    if is_number(online) and is_number(offline):
        return bool(np.isclose(float(online), float(offline), rtol=REL, atol=0.0, equal_nan=True))
    return bool(online == offline)


@pytest.fixture(scope="module")
def world(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from spark_jobs.backfill import training_set
    from spark_jobs.upload import run_upload

    tmp = tmp_path_factory.mktemp("parity")
    plan = compile_repo(ROOT / "features" / "fraud")
    join = plan.join("fraud_v1")
    ds = generate(
        seed=17, days=3, events_per_day=300, label_delay_days=(0.5, 2.0), late_fraction=0.0, fraud_scale=12
    )
    payments_path, labels_path = ds.write(tmp / "offline")
    sources = {"payments": str(payments_path), "labels": str(labels_path)}
    boundary = align(ds.start_ms, DAY_MS) + 2 * DAY_MS  # the last day's start: batch state up to here
    date = dt.datetime.fromtimestamp((boundary - 1) / 1000, tz=dt.UTC).date().isoformat()

    # Offline: the backfill over every payment (the labeled rows), and a model trained on it.
    left = ds.payments
    offline = training_set(plan, "fraud_v1", left, sources, spark=spark)
    assert offline is not None and offline.num_rows == left.num_rows
    model_dir = tmp / "model"
    train(offline, join, out_dir=model_dir, num_boost_round=30, min_decline_hits=1)

    # Online: the Spark upload into the embedded bulk store, stream period values in memcached.
    nodes = start_memcached_cluster(2)
    bulk = EmbeddedBulkStore(tmp / "bulk")
    stream = MemcachedStore(
        [n.address for n in nodes], timeout_s=5.0, connect_timeout_s=5.0
    )  # (see budget_s)
    try:
        run_upload(plan, date, sources, bulk, spark=spark)
        raw = {"payments": ds.payments.to_pylist(), "labels": ds.labels.to_pylist()}
        events: dict[str, dict[tuple[Any, ...], list[dict[str, Any]]]] = {}
        for part in join.parts:
            gb = plan.group_by(part.group_by)
            grouped: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
            for r in raw[gb.source.table]:
                grouped[tuple(r.get(k) for k in gb.keys)].append(r)
            events[gb.name] = grouped

        last_day = pc.greater_equal(offline.column("ts"), boundary)
        idx = np.flatnonzero(last_day.to_numpy(zero_copy_only=False))
        pick = np.random.default_rng(5).choice(idx, size=min(ONLINE_ROWS, len(idx)), replace=False)
        pick = sorted(pick.tolist(), key=lambda i: (left.column("ts")[i].as_py(), i))
        clock = Clock(boundary)
        # Values are under test here, not latency: a budget (and memcached timeouts) no pause of this process (a
        # full garbage collection of the whole suite's heap, the Spark gateway) can spend, so no part is ever
        # degraded for time.
        fetcher = Fetcher(plan, (bulk, stream), now_ms=clock, budget_s=30.0)
        online: list[dict[str, Any]] = []
        for i in pick:
            req = {c: left.column(c)[i].as_py() for c in join.left.schema}
            t = req["ts"]
            clock.ms = t
            for part in join.parts:  # the stream as it is at t: every event past the boundary and before t
                gb = plan.group_by(part.group_by)
                key = tuple(req[part.key_map[k]] for k in gb.keys)
                seen = [e for e in events[gb.name].get(key, []) if boundary <= e[gb.source.time_column] < t]
                if seen:
                    write_stream(stream, gb, project(gb, seen), boundary, t)
            vector = fetcher.fetch("fraud_v1", req)
            assert not vector.degraded and not vector.stale and not vector.errors, vector.errors
            online.append(vector.values)
    finally:
        stream.close()
        bulk.close()
        for n in nodes:
            n.stop()
    return {
        "plan": plan,
        "join": join,
        "offline": offline,
        "rows": pick,
        "online": online,
        "model_dir": model_dir,
    }


def test_online_vectors_equal_the_training_set(world: dict[str, Any]) -> None:
    join, offline = world["join"], world["offline"]
    ops = _ops(world["plan"], "fraud_v1")
    mismatches: list[str] = []
    compared = 0
    nonzero = 0
    for i, values in zip(world["rows"], world["online"], strict=True):
        assert list(values) == list(join.output_schema)
        for col in join.output_schema:
            want = offline.column(col)[i].as_py()
            got = values[col]
            compared += 1
            nonzero += bool(got)
            if not _same(got, want, ops.get(col)):
                mismatches.append(f"row {i} {col}: online {got!r} offline {want!r}")
    assert compared >= 40 * len(join.output_schema)
    assert nonzero > compared // 3  # the world is not empty
    assert not mismatches, f"{len(mismatches)} of {compared} differ:\n" + "\n".join(mismatches[:20])


def test_model_scores_and_decisions_are_identical(world: dict[str, Any]) -> None:
    model = Model.load(world["model_dir"])
    table = world["offline"].take(pa.array(world["rows"]))
    x_offline = model.vectorizer.matrix(table)
    x_online = np.vstack([model.vectorizer.vector(v) for v in world["online"]])
    assert np.allclose(x_online, x_offline, rtol=REL, atol=0.0, equal_nan=True)
    offline_scores = model.score_table(table)
    rules = Rules.default(world["join"].output_schema)
    with Decider(model, rules, timeout_ms=10_000) as decider:
        decisions = [decider.decide(v) for v in world["online"]]
        from_offline = [decider.decide(row) for row in table.to_pylist()]
    online_scores = np.array([d.score for d in decisions], dtype=np.float64)
    assert np.array_equal(online_scores, offline_scores)
    for d, o, s in zip(decisions, from_offline, offline_scores, strict=True):
        assert "model_fallback" not in d.flags
        assert d.model_action == model.thresholds.action(float(s))
        assert (d.action, d.score, [r.name for r in d.reasons]) == (
            o.action,
            o.score,
            [r.name for r in o.reasons],
        )
    assert len(set(np.round(online_scores, 6))) > 5  # the model is not constant on these rows
