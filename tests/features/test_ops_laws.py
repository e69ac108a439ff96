"""The monoid laws, written once and checked for every op in REGISTRY (and Bucketed over a few).

A new op is tested by registering it: there is no per-op code here. Results are compared with the op's own
``agrees`` (exact for exact ops, NaN == NaN, floats within FLOAT_RTOL; variance within FLOAT_RTOL·max|x|²;
sketches within their published bounds) and, for ops that declare ``deterministic``, bit for bit.

Value strategies mix a few small values (to force duplicates and ties) with wide ones; doubles include NaN,
±inf and -0.0 but stay within ±1e12 so variance does not overflow.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.ops import REGISTRY, AggOp, Bucketed, OpError, OpParams, fold, get_op
from features.ops.base import results_close

# 15 examples x ~600 (law, op, type) combinations keeps the file well under 60 s on 2 shared cores; set
# TESSERA_LAW_EXAMPLES=500 for a deep run.
LAWS = settings(max_examples=int(os.environ.get("TESSERA_LAW_EXAMPLES", "15")), deadline=None)

Event = tuple[Any, int, int]

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "long": st.one_of(st.integers(-3, 3), st.integers(-(2**62), 2**62)),
    "int": st.integers(-(2**31), 2**31 - 1),
    "double": st.one_of(
        st.integers(-3, 3).map(float),
        st.floats(-1e12, 1e12, allow_nan=False),
        st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.1, 5e-324]),
    ),
    "string": st.one_of(st.sampled_from(["a", "b", "c"]), st.text(max_size=4)),
    "boolean": st.booleans(),
}
TYPES = ("long", "double", "string")
EXTRA_TYPES = [
    ("sum", "int"),
    ("sum", "boolean"),
    ("avg", "boolean"),
    ("max", "boolean"),
    ("histogram", "boolean"),
    ("first_k", "boolean"),
    ("last", "int"),
]


def _params(cls: type[AggOp]) -> OpParams:
    if cls.uses_k:
        return OpParams(k=3)
    if cls.uses_percentiles:
        return OpParams(percentiles=(0.0, 0.25, 0.5, 0.99, 1.0))
    return OpParams()


def _cases() -> list[Any]:
    cases = []
    for name, cls in REGISTRY.items():
        for t in [*TYPES, *(t for n, t in EXTRA_TYPES if n == name)]:
            if t in cls.accepted_inputs:
                op = get_op(name, _params(cls), t)
                cases.append(pytest.param(op, VALUES[t], id=f"{name}-{t}"))
    buckets = st.one_of(st.sampled_from(["x", "y"]), st.integers(0, 2))
    for name, t in [
        ("sum", "double"),
        ("count", "string"),
        ("histogram", "long"),
        ("last_k", "string"),
        ("approx_unique_count", "long"),
        ("variance", "double"),
    ]:
        op = Bucketed(get_op(name, _params(REGISTRY[name]), t))
        cases.append(pytest.param(op, st.tuples(buckets, VALUES[t]), id=f"bucketed-{name}-{t}"))
    return cases


CASES = _cases()

ts_ms = st.one_of(st.integers(0, 5), st.integers(1_700_000_000_000, 1_700_000_000_020))
ties = st.integers(0, 2)


def events(values: st.SearchStrategy[Any], max_size: int = 30) -> st.SearchStrategy[list[Event]]:
    return st.lists(st.tuples(values, ts_ms, ties), max_size=max_size)


def _values(evs: list[Event]) -> list[Any]:
    return [e[0] for e in evs]


def assert_agree(op: AggOp, got_ir: Any, want_ir: Any, evs: list[Event]) -> None:
    got, want = op.finalize(got_ir), op.finalize(want_ir)
    assert op.agrees(got, want, _values(evs)), f"{op!r}: {got!r} != {want!r}"
    if op.deterministic:
        assert results_close(got, want, rtol=0.0), f"{op!r} is declared deterministic: {got!r} != {want!r}"


def merge_all(op: AggOp, irs: list[Any]) -> Any:
    acc = op.init()
    for ir in irs:
        acc = op.merge(acc, ir)
    return acc


def split(data: st.DataObject, evs: list[Event], parts: int) -> list[list[Event]]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(evs)), min_size=parts - 1, max_size=parts - 1)))
    bounds = [0, *cuts, len(evs)]
    return [evs[a:b] for a, b in pairwise(bounds)]


pytestmark = pytest.mark.parametrize(("op", "values"), CASES)


@LAWS
@given(data=st.data())
def test_identity(op: AggOp, values: st.SearchStrategy[Any], data: st.DataObject) -> None:
    evs = data.draw(events(values))
    x = fold(op, evs)
    assert_agree(op, op.merge(op.init(), x), fold(op, evs), evs)
    assert_agree(op, op.merge(fold(op, evs), op.init()), x, evs)
    assert results_close(op.finalize(op.init()), op.empty_result())


@LAWS
@given(data=st.data())
def test_associativity(op: AggOp, values: st.SearchStrategy[Any], data: st.DataObject) -> None:
    evs = data.draw(events(values))
    a, b, c = split(data, evs, 3)
    left = op.merge(op.merge(fold(op, a), fold(op, b)), fold(op, c))
    right = op.merge(fold(op, a), op.merge(fold(op, b), fold(op, c)))
    assert_agree(op, left, right, evs)


@LAWS
@given(data=st.data())
def test_commutativity(op: AggOp, values: st.SearchStrategy[Any], data: st.DataObject) -> None:
    evs = data.draw(events(values))
    a, b = split(data, evs, 2)
    assert_agree(op, op.merge(fold(op, a), fold(op, b)), op.merge(fold(op, b), fold(op, a)), evs)


@LAWS
@given(data=st.data())
def test_split_merge_equals_whole_fold(
    op: AggOp, values: st.SearchStrategy[Any], data: st.DataObject
) -> None:
    evs = data.draw(events(values))
    parts = split(data, evs, data.draw(st.integers(1, 5)))
    order = data.draw(st.permutations(range(len(parts))))
    merged = merge_all(op, [fold(op, parts[i]) for i in order])
    assert_agree(op, merged, fold(op, evs), evs)


@LAWS
@given(data=st.data())
def test_order_independence(op: AggOp, values: st.SearchStrategy[Any], data: st.DataObject) -> None:
    evs = data.draw(events(values))
    shuffled = data.draw(st.permutations(evs))
    assert_agree(op, fold(op, shuffled), fold(op, evs), evs)


@LAWS
@given(data=st.data())
def test_encode_decode_roundtrip(op: AggOp, values: st.SearchStrategy[Any], data: st.DataObject) -> None:
    evs = data.draw(events(values))
    a, b = split(data, evs, 2)
    for ir in (op.init(), fold(op, evs), op.merge(fold(op, a), fold(op, b))):
        blob = op.encode(ir)
        back = op.decode(blob)
        assert op.encode(back) == blob
        assert results_close(op.finalize(back), op.finalize(ir), rtol=0.0)
        assert op.encode(ir) == blob, "encode must be deterministic"


@LAWS
@given(data=st.data())
def test_merge_does_not_mutate_b(op: AggOp, values: st.SearchStrategy[Any], data: st.DataObject) -> None:
    a, b = data.draw(events(values)), data.draw(events(values))
    b_ir = fold(op, b)
    before = op.encode(b_ir), op.finalize(b_ir)
    merged = op.merge(fold(op, a), b_ir)
    for v, ts, tie in data.draw(events(values, max_size=5)):  # later updates of the result must not leak
        merged = op.update(merged, v, ts, tie)
    assert op.encode(b_ir) == before[0]
    assert results_close(op.finalize(b_ir), before[1], rtol=0.0)


@LAWS
@given(data=st.data())
def test_copy_is_independent(op: AggOp, values: st.SearchStrategy[Any], data: st.DataObject) -> None:
    evs = data.draw(events(values))
    x = fold(op, evs)
    before = op.encode(x)
    c = op.copy(x)
    for v, ts, tie in data.draw(events(values, max_size=5)):
        c = op.update(c, v, ts, tie)
    c = op.merge(c, fold(op, evs))
    assert op.encode(x) == before


@LAWS
@given(data=st.data())
def test_inverse(op: AggOp, values: st.SearchStrategy[Any], data: st.DataObject) -> None:
    evs = data.draw(events(values))
    extra = data.draw(events(values, max_size=5))
    if not op.has_inverse:
        if extra and extra[0][0] is not None:
            with pytest.raises(OpError, match="inverse"):
                op.inverse(fold(op, extra), *extra[0])
        return
    ir = fold(op, evs + extra)
    for e in data.draw(st.permutations(extra)):
        ir = op.inverse(ir, *e)
    assert_agree(op, ir, fold(op, evs), evs)
    # taking everything back out gives the empty result
    for e in data.draw(st.permutations(evs)):
        ir = op.inverse(ir, *e)
    assert results_close(op.finalize(ir), op.empty_result(), rtol=0.0)


def _arrays(op: AggOp, evs: list[Event]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dtype: Callable[..., Any] | type = {
        "long": np.int64,
        "int": np.int32,
        "double": np.float64,
        "boolean": np.bool_,
    }.get(op.input_type, object)
    if isinstance(op, Bucketed):
        dtype = object
    vals = np.empty(len(evs), dtype=dtype)
    for i, e in enumerate(evs):
        vals[i] = e[0]
    return vals, np.array([e[1] for e in evs], dtype=np.int64), np.array([e[2] for e in evs], dtype=np.int64)


@LAWS
@given(data=st.data())
def test_update_many_matches_fold(op: AggOp, values: st.SearchStrategy[Any], data: st.DataObject) -> None:
    evs = data.draw(events(values))
    a, b = split(data, evs, 2)
    ir = op.update_many(fold(op, a), *_arrays(op, b))
    assert_agree(op, ir, fold(op, evs), evs)
