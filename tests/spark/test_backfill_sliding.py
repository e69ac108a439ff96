"""The backfill's sliding-window aggregation (``spark_jobs.sliding``) against the direct fold, no Spark.

* ``sliding_fold`` == folding every range from scratch, for every kind of op (two stacks and the invertible
  path), over random events with ties, random query times and window lengths, in random query order.
* ``fold_bucket`` (the whole per-bucket fold, with offsets, hops, lifetime windows, buckets and the
  serving-delay cut) == ``features.reference.fold_window`` per query.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from features.compile import compile_repo
from features.fold import fold_window, fold_window_bucketed
from features.ops import AggOp, Bucketed, OpParams, get_op
from features.plan import GroupByPlan
from features.reference import agg_op
from features.windows import WindowSpec
from spark_jobs.bucket_fold import (
    KEY,
    QID,
    TIE,
    TS,
    T,
    _range_extreme,
    arrow_type,
    fold_bucket,
    needed_columns,
)
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
    aggs = []
    for col, op, bucket, extra in AGGS:
        b = f', buckets="{bucket}"' if bucket else ""
        aggs.append(f'Aggregation("{col}", "{op}", windows={WINDOWS}{b}{extra})')
        aggs.append(f'Aggregation("{col}", "{op}"{b}{extra})')
    return _group_by_g(
        tmp_path_factory,
        "sliding_repo",
        '{"k": "string", "ts": "long", "id": "long", "v": "long", "x": "double", "b": "string"}',
        ", ".join(aggs),
    )


def _group_by_g(tmp_path_factory: pytest.TempPathFactory, name: str, schema: str, aggs: str) -> GroupByPlan:
    """GroupBy ``g`` (keys ``k``, source ``ev`` with ``schema``, ``aggs``) of a one-module feature repo ``name``."""
    pkg = tmp_path_factory.mktemp(name) / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "defs.py").write_text(
        "from features.definitions import Aggregation, EventSource, GroupBy, Window\n"
        f'ev = EventSource(table="ev", topic="ev", time_column="ts", tie_break="id", schema={schema})\n'
        f'g = GroupBy(name="g", keys=["k"], source=ev, aggregations=[{aggs}])\n'
    )
    return compile_repo(Path(pkg)).group_by("g")


def _queries(queries: list[tuple[str, int]], unit_ms: int) -> pa.Table:
    """The query table of ``(key, time in units)`` pairs, ids in order."""
    return pa.table(
        {
            QID: pa.array(range(len(queries)), pa.int64()),
            KEY: pa.array([q[0] for q in queries], pa.string()),
            T: pa.array([q[1] * unit_ms for q in queries], pa.int64()),
        }
    )


def _features(gb: GroupByPlan) -> Iterator[tuple[Any, Any, Any, WindowSpec]]:
    """Per feature of ``gb``: the feature, its aggregation, the shared op and the window spec."""
    for f in gb.features:
        agg = gb.aggregations[f.agg_index]
        w = agg.windows[f.window_index]
        yield f, agg, agg_op(agg), WindowSpec(w.length_ms, w.hop_ms, w.offset_ms)


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
    qs = _queries(queries, 2 * ms)
    got = fold_bucket(ev, qs, gb, delay_ms=delay)
    rows = ev.to_pylist()
    for f, agg, op, spec in _features(gb):
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


@pytest.fixture(scope="module")
def sum_gb(tmp_path_factory: pytest.TempPathFactory) -> GroupByPlan:
    windows = '["10s", "1m", Window("1m", offset="10s")]'
    return _group_by_g(
        tmp_path_factory,
        "risky_repo",
        '{"k": "string", "ts": "long", "id": "long", "x": "double"}',
        f'Aggregation("x", "sum", windows={windows}), Aggregation("x", "avg", windows={windows}), '
        'Aggregation("x", "sum"), Aggregation("x", "avg")',
    )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from("ab"),
            st.integers(0, 120),
            st.sampled_from([1e17, -1e17, 3e16, 1.0, 0.1, -0.3, 2.5e-3, 7.0, float("inf"), float("nan")]),
        ),
        max_size=120,
    ),
    queries=st.lists(st.tuples(st.sampled_from("abc"), st.integers(-5, 130)), min_size=1, max_size=40),
)
@example(events=[("a", 1, 1e17), ("a", 2, 0.1), ("a", 3, -1e17), ("b", 4, 7.0)], queries=[("a", 5), ("b", 9)])
def test_fold_bucket_risky_double_sums_are_exact(
    sum_gb: GroupByPlan, events: list[tuple[str, int, float]], queries: list[tuple[str, int]]
) -> None:
    """Double sums whose rounding-error bound is too large for the fast path (cancellation, inf/NaN) are
    refolded exactly in a sliding pass: the reference fold of each window (within the sum tolerance)."""
    gb, ms = sum_gb, 1000
    ev = pa.table(
        {
            KEY: pa.array([e[0] for e in events], pa.string()),
            TS: pa.array([e[1] * ms for e in events], pa.int64()),
            TIE: pa.array(range(len(events)), pa.int64()),
            "x": pa.array([e[2] for e in events], pa.float64()),
        }
    )
    qs = _queries(queries, ms)
    got = fold_bucket(ev, qs, gb)
    rows = ev.to_pylist()
    for f, _agg, op, spec in _features(gb):
        for qi, (key, t) in enumerate(queries):
            want = fold_window(op, [(r[TS], r[TIE], r["x"]) for r in rows if r[KEY] == key], t * ms, spec)
            g = got.column(f.name)[qi].as_py()
            assert op.agrees(g, want), (f.name, key, t, g, want)


@settings(max_examples=60, deadline=None)
@given(
    xs=st.lists(st.sampled_from([-2.5, -0.0, 0.0, 1.0, 3.0, 7.5, float("nan"), float("-inf")]), max_size=70),
    ranges=st.lists(st.tuples(st.integers(0, 70), st.integers(0, 70)), max_size=30),
)
def test_range_extreme_equals_reduce_per_range(xs: list[float], ranges: list[tuple[int, int]]) -> None:
    """The sparse-table min/max of the backfill == ``ufunc.reduce`` of each slice (NaN rules, ints too)."""
    x = np.array(xs, dtype=np.float64)
    lo = np.array([min(a, len(xs)) for a, _ in ranges], dtype=np.int64)
    hi = np.array([min(max(a, b), len(xs)) for a, b in ranges], dtype=np.int64)
    ints = np.nan_to_num(x, nan=5.0, neginf=-9.0).astype(np.int64)
    for uf, arr in ((np.fmin, x), (np.maximum, x), (np.minimum, ints), (np.maximum, ints)):
        got = _range_extreme(uf, arr, lo, hi, 0)
        want = [uf.reduce(arr[a:b]) if b > a else 0 for a, b in zip(lo.tolist(), hi.tolist())]
        assert len(got) == len(want)
        for g, w in zip(got.tolist(), want):
            assert g == w or (g != g and w != w), (uf, g, w)


def test_bucket_output_goes_back_in_bounded_batches(
    plan_gb: GroupByPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket's features reach the JVM in batches of at most OUT_BATCH_ROWS rows (one batch per bucket needed
    JVM direct memory in proportion to the bucket's labels), with every query's values as in one piece."""
    from spark_jobs import backfill

    gb = plan_gb
    needed = tuple(needed_columns(gb))
    struct = pa.struct([pa.field(f.name, arrow_type(f.type)) for f in gb.features])
    n_ev, n_q = 40, 23
    values = {
        "v": pa.array([i % 5 - 2 for i in range(n_ev)], pa.int64()),
        "x": pa.array([i * 0.5 for i in range(n_ev)], pa.float64()),
        "b": pa.array(["p" if i % 3 else None for i in range(n_ev)], pa.string()),
    }
    events = pa.table(
        {
            "__g": pa.array([0] * n_ev, pa.int32()),
            KEY: pa.array(["ab"[i % 2] for i in range(n_ev)], pa.string()),
            TS: pa.array([i * 1000 for i in range(n_ev)], pa.int64()),
            TIE: pa.array(range(n_ev), pa.int64()),
            backfill._ev(0): pa.StructArray.from_arrays([values[c] for c in needed], names=list(needed)),
        }
    )
    queries = pa.table(
        {
            "__g": pa.array([0] * n_q, pa.int32()),
            QID: pa.array(range(n_q), pa.int64()),
            KEY: pa.array(["abc"[i % 3] for i in range(n_q)], pa.string()),
            T: pa.array([i * 2000 for i in range(n_q)], pa.int64()),
        }
    )
    fold = backfill._fold_fn([backfill._PartFold(gb, needed, struct)], 0)
    whole = fold(events, queries)
    monkeypatch.setattr(backfill, "OUT_BATCH_ROWS", 4)
    out = fold(events, queries)
    sizes = [b.num_rows for b in out.to_batches()]
    assert max(sizes) <= 4 and sum(sizes) == n_q and len(sizes) == 6
    assert out.to_pylist() == whole.to_pylist()
