"""Finalized op results against independent references (statistics, sorted lists, Counter, numpy).

The laws (test_ops_laws.py) say the ops are consistent with themselves; these say they compute the right
thing. Floats: exact sums are compared with ``math.fsum`` bit for bit; variance within 1e-9 relative plus
1e-9·max|x|²; sketches within their published bounds.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.ops import REGISTRY, Bucketed, OpError, OpParams, fold, get_op
from features.ops.base import results_close
from features.ops.sketches import HLL_LG_K, HLL_TYPE, ApproxPercentile

REF = settings(max_examples=40, deadline=None)

finite = st.floats(-1e9, 1e9, allow_nan=False, allow_infinity=False)
longs = st.integers(-(2**62), 2**62)
words = st.sampled_from(["visa", "mc", "amex", "disc", "jcb", "", "é"])


def rows(values: list[Any]) -> list[tuple[Any, int, int]]:
    return [(v, i, 0) for i, v in enumerate(values)]


def run(name: str, values: list[Any], input_type: str = "double", **params: Any) -> Any:
    op = get_op(name, OpParams(**params), input_type)
    return op.finalize(fold(op, rows(values)))


# ---- empty windows --------------------------------------------------------------------------------------
EMPTY: dict[str, Any] = {
    "count": 0,
    "sum": None,
    "avg": None,
    "min": None,
    "max": None,
    "variance": None,
    "stddev": None,
    "first": None,
    "last": None,
    "first_k": [],
    "last_k": [],
    "top_k": [],
    "bottom_k": [],
    "histogram": {},
    "approx_unique_count": 0,
    "approx_percentile": None,
}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_empty_window_results(name: str) -> None:
    assert set(EMPTY) == set(REGISTRY)
    params = OpParams(k=2) if REGISTRY[name].uses_k else OpParams()
    assert get_op(name, params).finalize(get_op(name, params).init()) == EMPTY[name]
    assert get_op(name, params).finalize(fold(get_op(name, params), [(None, 1, 0)])) == EMPTY[name]


# ---- numeric ---------------------------------------------------------------------------------------------
@REF
@given(st.lists(finite, min_size=1, max_size=60))
def test_double_sum_avg_min_max(xs: list[float]) -> None:
    assert run("count", xs) == len(xs)
    assert run("sum", xs) == math.fsum(xs)  # exact sum, rounded once
    assert run("avg", xs) == math.fsum(xs) / len(xs)
    assert run("min", xs) == min(xs)
    assert run("max", xs) == max(xs)


@REF
@given(st.lists(longs, min_size=1, max_size=60))
def test_long_sum_is_exact_int(xs: list[int]) -> None:
    total = run("sum", xs, "long")
    assert isinstance(total, int) and total == sum(xs)
    assert run("avg", xs, "long") == sum(xs) / len(xs)
    assert run("min", xs, "long") == min(xs) and run("max", xs, "long") == max(xs)


@REF
@given(st.lists(finite, min_size=1, max_size=60))
def test_variance_stddev_population(xs: list[float]) -> None:
    tol = 1e-9 * max(abs(x) for x in xs) ** 2
    assert math.isclose(run("variance", xs), statistics.pvariance(xs), rel_tol=1e-9, abs_tol=tol)
    assert math.isclose(run("variance", xs), float(np.var(xs)), rel_tol=1e-9, abs_tol=tol)
    assert math.isclose(run("stddev", xs) ** 2, statistics.pvariance(xs), rel_tol=1e-9, abs_tol=tol)


def test_variance_of_one_value_is_zero_and_stable_with_offset() -> None:
    assert run("variance", [42.0]) == 0.0 and run("stddev", [42.0]) == 0.0
    # Welford/Chan keep precision where the naive Σx² − n·mean² loses it all
    xs = [1e9 + v for v in (4.0, 7.0, 13.0, 16.0)]
    assert run("variance", xs) == pytest.approx(22.5, rel=1e-12)


def test_double_sum_is_exact_and_nan_inf_follow_ieee() -> None:
    assert run("sum", [1e16, 1.0, -1e16]) == 1.0  # naive float sum gives 0.0
    assert run("sum", [0.1] * 10) == 1.0
    assert run("sum", [math.inf, 1.0]) == math.inf
    assert math.isnan(run("sum", [math.inf, -math.inf]))
    assert math.isnan(run("avg", [math.nan, 1.0]))
    assert run("sum", [-0.0]) == 0.0 and math.copysign(1, run("sum", [-0.0])) == 1.0
    assert run("sum", [1e308, 1e308]) == math.inf  # overflow is recorded as +inf, like IEEE


def test_nan_is_the_greatest_double() -> None:
    xs = [3.0, math.nan, -1.0]
    assert math.isnan(run("max", xs)) and run("min", xs) == -1.0
    assert math.isnan(run("min", [math.nan, math.nan]))
    top = run("top_k", xs, k=2)
    assert math.isnan(top[0]) and top[1] == 3.0
    assert run("bottom_k", xs, k=2) == [-1.0, 3.0]


def test_boolean_and_int_inputs() -> None:
    assert run("sum", [True, False, True], "boolean") == 2
    assert run("avg", [True, False, True, True], "boolean") == 0.75
    assert run("sum", [3, 4], "int") == 7 and run("max", [3, 4], "int") == 4
    assert get_op("sum", input_type="double").finalize(fold(get_op("sum"), rows([3, 4]))) == 7.0


# ---- ordered ---------------------------------------------------------------------------------------------
events_st = st.lists(st.tuples(words, st.integers(0, 4), st.integers(0, 2)), max_size=40)


@REF
@given(events_st, st.integers(1, 6))
def test_first_last_and_k_against_sorted(evs: list[tuple[str, int, int]], k: int) -> None:
    order = sorted(evs, key=lambda e: (e[1], e[2], e[0]))
    vals = [e[0] for e in order]
    for name, want in [("first", vals[0] if vals else None), ("last", vals[-1] if vals else None)]:
        op = get_op(name, input_type="string")
        assert op.finalize(fold(op, evs)) == want
    op = get_op("first_k", OpParams(k=k), "string")
    assert op.finalize(fold(op, evs)) == vals[:k]
    op = get_op("last_k", OpParams(k=k), "string")
    assert op.finalize(fold(op, evs)) == vals[::-1][:k]


@REF
@given(st.lists(longs | st.integers(-3, 3), max_size=40), st.integers(1, 6))
def test_top_bottom_k_against_sorted(xs: list[int], k: int) -> None:
    assert run("top_k", xs, "long", k=k) == sorted(xs, reverse=True)[:k]
    assert run("bottom_k", xs, "long", k=k) == sorted(xs)[:k]


@REF
@given(st.lists(words, max_size=60))
def test_histogram_against_counter(xs: list[str]) -> None:
    assert run("histogram", xs, "string") == dict(Counter(xs))
    assert list(run("histogram", xs, "string")) == sorted(set(xs))


def test_histogram_double_keys_merge_nan() -> None:
    h = run("histogram", [1.0, math.nan, float("nan"), -0.0, 0.0])
    assert list(h.values()) == [2, 1, 2] and math.isnan(list(h)[-1])  # 0.0, 1.0, NaN (greatest)


# ---- sketches --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 10, 100, 300])
def test_unique_count_exact_for_small_sets(n: int) -> None:
    xs = [f"merchant-{i % n}" for i in range(3 * n)]
    assert run("approx_unique_count", xs, "string") == n
    assert run("approx_unique_count", list(range(n)) * 2, "long") == n


@pytest.mark.parametrize("n", [1_000, 20_000])
def test_unique_count_within_hll_bound(n: int) -> None:
    rng = random.Random(n)
    xs = [rng.getrandbits(62) for _ in range(n)]
    est = run("approx_unique_count", xs, "long")
    rse = 1.04 / math.sqrt(4096)
    assert abs(est - len(set(xs))) <= 3 * rse * len(set(xs))  # 3 standard errors


@pytest.mark.parametrize("n", [1, 7, 200])
def test_percentiles_exact_while_sketch_holds_every_value(n: int) -> None:
    rng = random.Random(n)
    xs = [rng.uniform(-100, 100) for _ in range(n)]
    qs = (0.0, 0.1, 0.5, 0.9, 0.99, 1.0)
    s = sorted(xs)
    want = [s[max(math.ceil(q * n), 1) - 1] for q in qs]  # smallest value with inclusive rank ≥ q
    assert run("approx_percentile", xs, percentiles=qs) == want


def test_percentile_default_quantiles() -> None:
    op = get_op("approx_percentile")
    assert isinstance(op, ApproxPercentile) and op.percentiles == (0.5, 0.9, 0.99)
    assert op.finalize(fold(op, rows(list(range(1, 101))))) == [50.0, 90.0, 99.0]


@pytest.mark.parametrize("n", [5_000, 50_000])
def test_percentiles_within_kll_rank_error(n: int) -> None:
    rng = random.Random(n)
    xs = [rng.lognormvariate(3, 1) for _ in range(n)]
    op = get_op("approx_percentile", OpParams(percentiles=(0.01, 0.25, 0.5, 0.9, 0.99)))
    assert isinstance(op, ApproxPercentile)
    # fold in 10 tiles and merge, as the fetcher does
    parts = [np.array(xs[i::10]) for i in range(10)]
    tiles = [
        op.update_many(op.init(), p, np.zeros(len(p), np.int64), np.zeros(len(p), np.int64)) for p in parts
    ]
    ir = op.init()
    for t in tiles:
        ir = op.merge(ir, t)
    assert op.within_rank_error(op.finalize(ir), xs, op.rank_error())


# ---- bucketed --------------------------------------------------------------------------------------------
@REF
@given(st.lists(st.tuples(st.sampled_from(["US", "FR", "DE"]), finite), max_size=40))
def test_bucketed_sum_against_groupby(pairs: list[tuple[str, float]]) -> None:
    op = Bucketed(get_op("sum"), bucket_type="string")
    got = op.finalize(fold(op, rows(pairs)))
    want: dict[str, list[float]] = {}
    for b, v in pairs:
        want.setdefault(b, []).append(v)
    assert got == {b: math.fsum(vs) for b, vs in sorted(want.items())}
    assert op.output_type() == "map<string,double>"


# ---- contract details ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "input_type", "want"),
    [
        ("count", "string", "long"),
        ("sum", "long", "long"),
        ("sum", "int", "long"),
        ("sum", "double", "double"),
        ("sum", "decimal(10,2)", "double"),
        ("avg", "long", "double"),
        ("min", "string", "string"),
        ("max", "int", "int"),
        ("variance", "long", "double"),
        ("stddev", "double", "double"),
        ("first", "string", "string"),
        ("last", "bigint", "long"),
        ("first_k", "string", "array<string>"),
        ("last_k", "long", "array<long>"),
        ("top_k", "double", "array<double>"),
        ("bottom_k", "int", "array<int>"),
        ("histogram", "string", "map<string,long>"),
        ("approx_unique_count", "string", "long"),
        ("approx_percentile", "long", "array<double>"),
    ],
)
def test_output_types(name: str, input_type: str, want: str) -> None:
    params = OpParams(k=3) if REGISTRY[name].uses_k else None
    assert get_op(name, params, input_type).output_type(input_type) == want


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: get_op("top_k"), "needs k"),
        (lambda: get_op("sum", OpParams(k=3)), "takes no k"),
        (lambda: get_op("sum", input_type="string"), "does not accept 'string'"),
        (lambda: get_op("avg", input_type="timestamp"), "unsupported input type"),
        (lambda: get_op("uniq"), "unknown op"),
        (lambda: get_op("approx_unique"), "did you mean 'approx_unique_count'"),
        (lambda: OpParams(percentiles=(50.0,)), "write 0.99"),
        (lambda: get_op("variance").inverse([1, 0.0, 0.0], 1.0, 0, 0), "no exact inverse"),
        (lambda: get_op("histogram").inverse({}, 1.0, 0, 0), "never added"),
    ],
)
def test_errors_say_what_to_do(call: Any, message: str) -> None:
    with pytest.raises(OpError, match=message):
        call()


def test_inverse_choices() -> None:
    assert {n for n, c in REGISTRY.items() if c(OpParams(k=1) if c.uses_k else None).has_inverse} == {
        "count",
        "sum",
        "avg",
        "histogram",
    }
    op = get_op("sum")
    ir = fold(op, rows([0.1, 0.2, 0.3]))
    assert op.finalize(op.inverse(ir, 0.3, 2, 0)) == math.fsum([0.1, 0.2])  # float sums invert exactly


def test_ops_compare_equal_by_definition() -> None:
    assert get_op("sum", input_type="bigint") == get_op("sum", input_type="long")
    assert get_op("sum") != get_op("avg")
    assert len({get_op("top_k", OpParams(k=3)), get_op("top_k", OpParams(k=3))}) == 1
    assert results_close(get_op("stddev").finalize([2, 1.0, 2.0]), 1.0)


# ---- docstring examples ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "module",
    [
        "features.encoding",
        "features.ops",
        "features.ops.base",
        "features.ops.simple",
        "features.ops.exact_sum",
        "features.ops.moments",
        "features.ops.ordered",
        "features.ops.topk",
        "features.ops.histogram",
        "features.ops.bucketed",
    ],
)
def test_doctests(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


@pytest.mark.parametrize("n", [1, 7, 200, 383, 384, 1000, 3071, 3072, 3073, 12_000, 60_000])
def test_hll_finalize_is_the_estimate_of_the_self_union_result(n: int) -> None:
    """finalize reads the self-union's estimate directly; it must equal the estimate of the union's HLL_4
    result (what it read before), in list, set and HLL modes, for unions of several sketches too."""
    import datasketches as ds

    op = get_op("approx_unique_count", OpParams(), input_type="string")
    rng = random.Random(n)
    parts = [op.init() for _ in range(3)]
    for i in range(n):
        parts[i % 3] = op.update(parts[i % 3], f"item{rng.randrange(10**12)}", i, 0)
    merged = op.merge(op.merge(op.copy(parts[0]), parts[1]), parts[2])
    for sk in (*parts, merged):
        union = ds.hll_union(HLL_LG_K)
        union.update(sk)
        union.update(sk)
        assert op.finalize(sk) == round(union.get_result(HLL_TYPE).get_estimate())
