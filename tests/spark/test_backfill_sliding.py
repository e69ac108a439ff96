"""The backfill's sliding-window aggregation (``spark_jobs.sliding``) against the direct fold, no Spark.

* ``sliding_fold`` == folding every range from scratch, for every kind of op (two stacks and the invertible
  path), over random events with ties, random query times and window lengths, in random query order.
* ``fold_bucket`` (the whole per-bucket fold, with offsets, hops, lifetime windows, buckets and the
  serving-delay cut) == ``features.reference.fold_window`` per query.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.compile import compile_repo
from features.fold import fold_window, fold_window_bucketed
from features.ops import AggOp, Bucketed, OpParams, get_op
from features.plan import GroupByPlan
from features.reference import agg_op
from features.windows import WindowSpec
from spark_jobs.bucket_fold import KEY, QID, TIE, TS, T, fold_bucket
from spark_jobs.sliding import direct_fold, sliding_fold

OPS: list[tuple[str, OpParams, str, bool]] = [
    ("approx_unique_count", OpParams(), "long", False),
    ("approx_percentile", OpParams(percentiles=(0.1, 0.5, 0.9)), "double", False),
    ("variance", OpParams(), "double", False),
    ("stddev", OpParams(), "long", False),
    ("top_k", OpParams(k=3), "long", False),
    ("bottom_k", OpParams(k=2), "double", False),
    ("first_k", OpParams(k=2), "long", False),
    ("last", OpParams(), "long", False),
    ("histogram", OpParams(), "long", False),
    ("sum", OpParams(), "double", False),
    ("max", OpParams(), "double", False),
    ("sum", OpParams(), "double", True),
    ("count", OpParams(), "long", True),
    ("approx_unique_count", OpParams(), "long", True),
]


def _op(i: int) -> AggOp:
    name, params, typ, bucketed = OPS[i]
    op = get_op(name, params, input_type=typ)
    return Bucketed(op, bucket_type="long") if bucketed else op


def _value(op: AggOp, v: int) -> Any:
    return float(v) / 2 if op.input_type == "double" else v


@settings(max_examples=200, deadline=None)
@given(
    op_i=st.integers(0, len(OPS) - 1),
    seed=st.integers(0, 2**32 - 1),
    n_events=st.integers(0, 120),
    n_queries=st.integers(1, 60),
    span=st.integers(1, 100),
    length=st.one_of(st.none(), st.integers(1, 60)),
    invertible=st.booleans(),
)
def test_sliding_fold_equals_direct_fold(
    op_i: int,
    seed: int,
    n_events: int,
    n_queries: int,
    span: int,
    length: int | None,
    invertible: bool,
) -> None:
    """Random events (ts in [0, span): many ties), random query times and one window length."""
    op = _op(op_i)
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, span, n_events))
    vals = [_value(op, int(v)) for v in rng.integers(-5, 6, n_events)]
    buckets = rng.integers(0, 3, n_events).tolist()
    bucketed = isinstance(op, Bucketed)

    def add(ir: Any, a: int, b: int) -> Any:
        for j in range(a, b):
            ir = op.update(ir, (buckets[j], vals[j]) if bucketed else vals[j], int(ts[j]), j)
        return ir

    def remove(ir: Any, a: int, b: int) -> Any:
        for j in range(a, b):
            ir = op.inverse(ir, (buckets[j], vals[j]) if bucketed else vals[j], int(ts[j]), j)
        return ir

    t = rng.integers(-5, span + 10, n_queries)
    start = np.full_like(t, -(10**9)) if length is None else t - length
    lo = np.searchsorted(ts, start, "left")
    hi = np.searchsorted(ts, t, "left")
    got = sliding_fold(op, lo, hi, add, remove if invertible and op.has_inverse else None)
    want = direct_fold(op, lo.tolist(), hi.tolist(), add)
    for i, (g, w) in enumerate(zip(got, want)):
        window = [(buckets[j], vals[j]) if bucketed else vals[j] for j in range(lo[i], hi[i])]
        assert op.agrees(g, w, window), (i, lo[i], hi[i], g, w)


def test_sliding_fold_empty_and_unsorted() -> None:
    op = get_op("top_k", OpParams(k=2), input_type="long")
    xs = [5, 1, 7, 3]

    def add(ir: Any, a: int, b: int) -> Any:
        for j in range(a, b):
            ir = op.update(ir, xs[j], j, 0)
        return ir

    lo, hi = np.array([2, 0, 1, 3, 0]), np.array([4, 2, 1, 3, 4])
    assert sliding_fold(op, lo, hi, add) == [[7, 3], [5, 1], [], [], [7, 5]]
    assert sliding_fold(op, np.zeros(0, np.int64), np.zeros(0, np.int64), add) == []


# ---- fold_bucket against the reference fold ----------------------------------------------------------

AGGS = [
    ("v", "approx_unique_count", None, ""),
    ("x", "variance", None, ""),
    ("v", "top_k", None, ", k=2"),
    ("v", "histogram", None, ""),
    ("x", "approx_percentile", None, ", percentiles=[0.25, 0.75]"),
    ("x", "sum", "b", ""),
    ("v", "approx_unique_count", "b", ""),
    ("v", "count", None, ""),
]
WINDOWS = (
    '["10s", "1m", Window("1m", offset="10s"), Window("5m", hop="1m"), Window("3m", hop="1m", offset="30s")]'
)


@pytest.fixture(scope="module")
def plan_gb(tmp_path_factory: pytest.TempPathFactory) -> GroupByPlan:
    root = tmp_path_factory.mktemp("sliding_repo")
    pkg = root / "sliding_repo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    aggs = []
    for col, op, bucket, extra in AGGS:
        b = f', buckets="{bucket}"' if bucket else ""
        aggs.append(f'Aggregation("{col}", "{op}", windows={WINDOWS}{b}{extra})')
        aggs.append(f'Aggregation("{col}", "{op}"{b}{extra})')
    (pkg / "defs.py").write_text(
        "from features.definitions import Aggregation, EventSource, GroupBy, Window\n"
        'ev = EventSource(table="ev", topic="ev", time_column="ts", tie_break="id", '
        'schema={"k": "string", "ts": "long", "id": "long", "v": "long", "x": "double", "b": "string"})\n'
        f'g = GroupBy(name="g", keys=["k"], source=ev, aggregations=[{", ".join(aggs)}])\n'
    )
    return compile_repo(Path(pkg)).group_by("g")


SEC = 1000


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from("ab"), st.integers(0, 120), st.integers(-3, 3), st.sampled_from(["p", "q", None])
        ),
        max_size=80,
    ),
    queries=st.lists(st.tuples(st.sampled_from("abc"), st.integers(-10, 200)), min_size=1, max_size=25),
    delay=st.sampled_from([0, 0, 1, 5 * SEC]),
    ms=st.sampled_from([1, SEC // 2, SEC, 7 * SEC]),
)
def test_fold_bucket_equals_reference(
    plan_gb: GroupByPlan,
    events: list[tuple[str, int, int, str | None]],
    queries: list[tuple[str, int]],
    delay: int,
    ms: int,
) -> None:
    gb = plan_gb
    ev = pa.table(
        {
            KEY: pa.array([e[0] for e in events], pa.string()),
            TS: pa.array([e[1] * ms for e in events], pa.int64()),  # few distinct ts: many ties
            TIE: pa.array(list(range(len(events)))[::-1], pa.int64()),
            "v": pa.array([e[2] for e in events], pa.int64()),
            "x": pa.array([None if e[2] == 0 else e[2] * 0.75 for e in events], pa.float64()),
            "b": pa.array([e[3] for e in events], pa.string()),
        }
    )
    qs = pa.table(
        {
            QID: pa.array(range(len(queries)), pa.int64()),
            KEY: pa.array([q[0] for q in queries], pa.string()),
            T: pa.array([q[1] * ms * 2 for q in queries], pa.int64()),
        }
    )
    got = fold_bucket(ev, qs, gb, delay_ms=delay)
    rows = ev.to_pylist()
    for f in gb.features:
        agg = gb.aggregations[f.agg_index]
        w = agg.windows[f.window_index]
        op = agg_op(agg)
        spec = WindowSpec(w.length_ms, w.hop_ms, w.offset_ms)
        mine = got.column(f.name).to_pylist()
        for qi, (key, _) in enumerate(queries):
            t = qs[T][qi].as_py()
            cut = [r for r in rows if r[KEY] == key and r[TS] < t - delay]
            if agg.bucket is None:
                want = fold_window(op, [(r[TS], r[TIE], r[agg.column]) for r in cut], t, spec)
            else:
                assert isinstance(op, Bucketed)
                want = fold_window_bucketed(
                    op.inner, [(r[TS], r[TIE], r[agg.bucket], r[agg.column]) for r in cut], t, spec
                )
            g = mine[qi]
            if isinstance(want, dict):
                g = dict(g) if g is not None else None
            assert op.agrees(g, want), (f.name, key, t, g, want)
