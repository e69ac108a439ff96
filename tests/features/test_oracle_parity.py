"""Parity: the Python reference fold (``features.fold`` over ``features.ops``) against the DuckDB SQL oracle.

Every registered op x every window shape (short, long, lifetime, offset, explicit hop, lifetime with offset) x
scalar and bucketed, on seeded synthetic payments with same-ms ties, events on minute/hour/day boundaries and
null values, at query times on event timestamps, on boundaries and at random. Exact ops must agree exactly
(floats: relative 1e-9); sketches within their stated error.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

pytest.importorskip("duckdb")

from support.duckdb_oracle import oracle_features

from features.fold import (
    FeatureSpec,
    feature_spec,
    fold_features,
    fold_window,
    fold_window_bucketed,
    input_type_of,
)
from features.ops import REGISTRY, Bucketed, OpParams, get_op
from features.synthetic import generate
from features.windows import DAY_MS, HOUR_MS, MINUTE_MS, WindowSpec

KEY = ["card_id"]
TIME, TIE = "ts", "event_id"
K = 3
PERCENTILES = (0.0, 0.1, 0.5, 0.9, 0.99, 1.0)
K_OPS = {"first_k", "last_k", "top_k", "bottom_k"}
# (window, hop, offset): short and long, lifetime, offsets (the label-delay shape), an explicit hop.
WINDOWS: list[tuple[str | None, str | None, str | None]] = [
    ("1m", None, None),
    ("10m", None, None),
    ("1h", None, None),
    ("1d", None, None),
    (None, None, None),
    ("1d", None, "1h"),
    ("7d", None, "1d"),
    ("1h", "5m", None),
    (None, "1h", "1h"),
]
# Value columns: a double with nulls (card-present payments have none), a long, a string with nulls.
COLUMNS = ("amount_ecom", "amount_cents", "device_id")
BUCKETED = [("amount_ecom", "sum", "merchant_category"), ("device_id", "count", "channel")]


# ---- data ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def events() -> pa.Table:
    p = generate(seed=11, days=3, events_per_day=1_200, n_cards=30, n_merchants=12).payments
    ecom = pc.equal(p["channel"], "ecom")
    p = p.append_column("amount_ecom", pc.if_else(ecom, p["amount"], pa.scalar(None, pa.float64())))
    cents = pc.round(pc.multiply(p["amount"], 100.0)).cast(pa.int64())
    return p.append_column("amount_cents", cents)


def _queries(events: pa.Table, seed: int = 5) -> pa.Table:
    """Query times on event timestamps (ties at t excluded), on boundaries, just after events, and random."""
    rng = np.random.default_rng(seed)
    ts = events["ts"].to_numpy()
    cards = np.array(events["card_id"].to_pylist(), dtype=object)
    n = len(ts)
    # Events sharing (card, ts) with another one, and events on an hour boundary, come first.
    pair = Counter(zip(cards.tolist(), ts.tolist()))
    tied = np.flatnonzero([pair[(c, t)] > 1 for c, t in zip(cards.tolist(), ts.tolist())])
    on_hour = np.flatnonzero(ts % HOUR_MS == 0)
    picks = np.concatenate(
        [rng.choice(tied, min(60, len(tied)), replace=False), on_hour[:40], rng.integers(0, n, 80)]
    )
    q_card = list(cards[picks])
    q_t = list(ts[picks])
    # Just after an event (it is then included) and just before (it is not).
    for delta in (1, -1):
        idx = rng.integers(0, n, 20)
        q_card += list(cards[idx])
        q_t += list(ts[idx] + delta)
    # Exactly on minute, hour and day boundaries, and boundaries plus the offsets.
    for size in (MINUTE_MS, HOUR_MS, DAY_MS):
        idx = rng.integers(0, n, 30)
        q_card += list(cards[idx])
        q_t += list(ts[idx] // size * size + (size if size == DAY_MS else 0))
    idx = rng.integers(0, n, 20)
    q_card += list(cards[idx])
    q_t += list(ts[idx] // HOUR_MS * HOUR_MS + HOUR_MS + DAY_MS)  # t - 1d offset lands on a boundary
    # Random times from before the data to a week after, on random cards; a card with no events.
    lo, hi = int(ts.min()) - HOUR_MS, int(ts.max()) + 8 * DAY_MS
    idx = rng.integers(0, n, 80)
    q_card += list(cards[idx])
    q_t += list(rng.integers(lo, hi, 80))
    q_card += ["card_never_seen"] * 5
    q_t += list(rng.integers(lo, hi, 5))
    m = len(q_t)
    qid = rng.permutation(m).astype(np.int64)  # ids not in table order: outputs are ordered by id
    return pa.table(
        {"query_id": qid, "card_id": pa.array(q_card, pa.string()), "t": pa.array(q_t, pa.int64())}
    )


def _params(op_name: str) -> OpParams:
    if op_name in K_OPS:
        return OpParams(k=K)
    if op_name == "approx_percentile":
        return OpParams(percentiles=PERCENTILES)
    return OpParams()


def _specs(events: pa.Table) -> tuple[list[FeatureSpec], list[str]]:
    """Every (op, column) the registry accepts, over every window; and the pairs it refuses."""
    specs: list[FeatureSpec] = []
    refused: list[str] = []
    for op_name in sorted(REGISTRY):
        for col in COLUMNS:
            try:
                get_op(op_name, _params(op_name), input_type=input_type_of(events.schema.field(col).type))
            except ValueError:
                refused.append(f"{op_name}({col})")
                continue
            for window, hop, offset in WINDOWS:
                specs.append(
                    feature_spec(
                        col,
                        op_name,
                        window,
                        hop=hop,
                        offset=offset,
                        k=K if op_name in K_OPS else None,
                        percentiles=PERCENTILES if op_name == "approx_percentile" else (),
                    )
                )
    for col, op_name, bucket in BUCKETED:
        for window, hop, offset in WINDOWS:
            specs.append(feature_spec(col, op_name, window, hop=hop, offset=offset, bucket=bucket))
    return specs, refused


# ---- comparison ---------------------------------------------------------------------------------------


def _py(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """Python values with Arrow maps turned into dicts (recursively)."""

    def conv(v: Any, t: pa.DataType) -> Any:
        if v is None:
            return None
        if pa.types.is_map(t):
            return {conv(k, t.key_type): conv(x, t.item_type) for k, x in v}
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return [conv(x, t.value_type) for x in v]
        return v

    return [conv(v, column.type) for v in column.to_pylist()]


def _close(a: Any, b: Any, rtol: float = 1e-9, atol: float = 0.0) -> bool:
    """Structural equality; floats within ``rtol`` relative (+ ``atol``); ints and strings exact."""
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None or isinstance(a, str) or isinstance(b, str):
            return False
        return math.isclose(float(a), float(b), rel_tol=rtol, abs_tol=atol)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rtol, atol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[key], b[key], rtol, atol) for key in a)
    return type(a) is type(b) and a == b


def _hll_ok(op: Any, got: Any, exact: Any) -> bool:
    if getattr(op, "is_exact", True):
        return bool(got == exact)
    lg_k = int(getattr(op, "lg_k", 12))
    bound = 3 * 1.04 / math.sqrt(2**lg_k) * exact
    return isinstance(got, int) and abs(got - exact) <= bound


def _kll_eps(op: Any) -> float:
    """The normalized rank error of the op's KLL sketch (k from the op, DataSketches' formula)."""
    if getattr(op, "is_exact", False):
        return 0.0
    k = int(getattr(op, "sketch_k", 0) or getattr(op, "kll_k", 0) or 200)
    try:
        from datasketches import kll_doubles_sketch

        return float(kll_doubles_sketch.get_normalized_rank_error(k, False))
    except ImportError:  # the published approximation, 2.296 / k^0.9723 (single-item rank error)
        return 2.296 / k**0.9723


def _bounds_specs(spec: FeatureSpec, eps: float) -> tuple[FeatureSpec, FeatureSpec]:
    """Oracle specs for the exact quantiles at ``p - eps`` and ``p + eps`` (clipped to [0, 1])."""
    lo = tuple(max(0.0, p - eps) for p in spec.percentiles)
    hi = tuple(min(1.0, p + eps) for p in spec.percentiles)
    return (
        FeatureSpec(**{**_fields(spec), "name": spec.name + "__lo", "percentiles": lo}),
        FeatureSpec(**{**_fields(spec), "name": spec.name + "__hi", "percentiles": hi}),
    )


def _fields(spec: FeatureSpec) -> dict[str, Any]:
    return {f: getattr(spec, f) for f in FeatureSpec.__slots__}


# ---- the parity run -----------------------------------------------------------------------------------


def test_fold_matches_oracle(events: pa.Table, capsys: pytest.CaptureFixture[str]) -> None:
    queries = _queries(events)
    specs, refused = _specs(events)
    ops = {
        s.name: get_op(s.op, s.params, input_type=input_type_of(events.schema.field(s.column).type))
        for s in specs
    }
    extra: list[FeatureSpec] = []
    for s in specs:
        if s.op == "approx_percentile" and s.bucket is None:
            extra += _bounds_specs(s, _kll_eps(ops[s.name]))
    args: dict[str, Any] = {"key_cols": KEY, "time_col": TIME, "tie_col": TIE}
    folded = fold_features(events, queries, specs, **args)
    expected = oracle_features(events, queries, [*specs, *extra], **args)
    assert folded.column("query_id").equals(expected.column("query_id"))

    comparisons: Counter[str] = Counter()
    mismatches: Counter[str] = Counter()
    non_empty: Counter[str] = Counter()
    examples: list[str] = []
    qids = folded.column("query_id").to_pylist()
    for s in specs:
        op = ops[s.name]
        got, want = _py(folded.column(s.name)), _py(expected.column(s.name))
        check = _checker(s, op, expected)
        label = f"{s.op}[{s.bucket}]" if s.bucket else s.op
        for i, (g, w) in enumerate(zip(got, want)):
            comparisons[label] += 1
            if w not in (None, 0, [], {}):
                non_empty[label] += 1
            if not check(i, g, w):
                mismatches[label] += 1
                if len(examples) < 15:
                    examples.append(f"{s.name} query {qids[i]}: fold={g!r} oracle={w!r}")

    with capsys.disabled():
        total, bad = sum(comparisons.values()), sum(mismatches.values())
        print(
            f"\noracle parity: {len(queries)} queries x {len(specs)} features over {events.num_rows} events"
            f" = {total} comparisons, {bad} mismatches"
        )
        for label in sorted(comparisons):
            print(
                f"  {label:32s} {comparisons[label]:6d} compared, {non_empty[label]:6d} non-empty, "
                f"{mismatches[label]:3d} mismatches"
            )
        if refused:
            print(f"  not applicable (the op refuses the input type): {', '.join(refused)}")
    assert not mismatches, "fold and oracle disagree:\n" + "\n".join(examples)
    # The data really exercised the windows: most features are non-empty somewhere.
    assert all(non_empty[label] > 0 for label in comparisons), non_empty


def _checker(spec: FeatureSpec, op: Any, expected: pa.Table) -> Callable[[int, Any, Any], bool]:
    if spec.bucket is None and spec.op == "approx_unique_count":
        return lambda i, g, w: _hll_ok(op, g, w)
    if spec.bucket is None and spec.op == "approx_percentile":
        lo = _py(expected.column(spec.name + "__lo"))
        hi = _py(expected.column(spec.name + "__hi"))

        def within(i: int, g: Any, w: Any) -> bool:
            if w is None or g is None:
                return g is None and w is None
            return len(g) == len(w) and all(a <= x <= b for a, x, b in zip(lo[i], g, hi[i]))

        return within
    return lambda i, g, w: _close(g, w)


def test_sketches_beyond_exact_mode(events: pa.Table, capsys: pytest.CaptureFixture[str]) -> None:
    """Keyed by two low-cardinality columns, windows hold thousands of values: HLL leaves its exact list/set
    modes and KLL compacts. A composite key, too."""
    keys = ["channel", "status"]
    rng = np.random.default_rng(9)
    ts = events["ts"].to_numpy()
    m = 200
    idx = rng.integers(0, events.num_rows, m)
    queries = pa.table(
        {
            "query_id": np.arange(m, dtype=np.int64),
            "channel": events["channel"].take(pa.array(idx)),
            "status": events["status"].take(pa.array(idx)),
            "t": pa.array(
                np.where(rng.random(m) < 0.5, ts[idx], rng.integers(ts.min(), ts.max() + DAY_MS, m))
            ),
        }
    )
    specs = [
        feature_spec(
            col,
            op_name,
            window,
            offset=offset,
            percentiles=PERCENTILES if op_name == "approx_percentile" else (),
        )
        for col in ("amount_cents", "amount_ecom")
        for op_name in ("approx_unique_count", "approx_percentile", "count", "sum", "last")
        for window, offset in (("1d", None), (None, None), ("7d", "1h"))
    ]
    ops = {
        s.name: get_op(s.op, s.params, input_type=input_type_of(events.schema.field(s.column).type))
        for s in specs
    }
    extra = [b for s in specs if s.op == "approx_percentile" for b in _bounds_specs(s, _kll_eps(ops[s.name]))]
    args: dict[str, Any] = {"key_cols": keys, "time_col": TIME, "tie_col": TIE}
    folded = fold_features(events, queries, specs, **args)
    expected = oracle_features(events, queries, [*specs, *extra], **args)
    sizes = oracle_features(events, queries, [replace_op(s, "count") for s in specs], **args)
    bad: list[str] = []
    large = Counter[str]()
    for s in specs:
        check = _checker(s, ops[s.name], expected)
        got, want = _py(folded.column(s.name)), _py(expected.column(s.name))
        counts = sizes.column(s.name).to_pylist()
        for i, (g, w) in enumerate(zip(got, want)):
            if s.op == "approx_unique_count" and w > 400:
                large["distinct > 400 (HLL estimating)"] += 1
            if s.op == "approx_percentile" and w is not None and counts[i] > 200:
                large["n > 200 (KLL compacted)"] += 1
            if not check(i, g, w):
                bad.append(f"{s.name} query {i}: fold={g!r} oracle={w!r}")
    with capsys.disabled():
        print(
            f"\nsketch regime: {len(specs) * m} comparisons keyed by {keys}, {len(bad)} mismatches; {dict(large)}"
        )
    assert not bad, "\n".join(bad[:15])
    assert large["distinct > 400 (HLL estimating)"] > 0 and large["n > 200 (KLL compacted)"] > 0


def replace_op(spec: FeatureSpec, op_name: str) -> FeatureSpec:
    return FeatureSpec(**{**_fields(spec), "op": op_name, "percentiles": ()})


def test_bucketed_op_matches_reference_grouping(events: pa.Table) -> None:
    """``features.ops.Bucketed`` folded over (bucket, value) pairs equals the reference's per-bucket folds."""
    rng = np.random.default_rng(3)
    cards = events["card_id"].to_pylist()
    rows_by_card: dict[str, list[tuple[int, int, Any, Any]]] = {}
    for c, t, tie, b, v in zip(
        cards,
        events["ts"].to_pylist(),
        events["event_id"].to_pylist(),
        events["merchant_category"].to_pylist(),
        events["amount_ecom"].to_pylist(),
    ):
        rows_by_card.setdefault(c, []).append((t, tie, b, v))
    ts = events["ts"].to_numpy()
    compared = 0
    for op_name in sorted(REGISTRY):
        try:
            inner = get_op(op_name, _params(op_name), input_type="double")
        except ValueError:
            continue
        bucketed = Bucketed(inner, bucket_type="string")
        for i in rng.integers(0, events.num_rows, 15):
            rows = rows_by_card[cards[i]]
            for window, hop, offset in WINDOWS[2:6]:
                w = feature_spec("x", op_name, window, hop=hop, offset=offset).window
                want = fold_window_bucketed(inner, rows, int(ts[i]), w)
                got = fold_window(bucketed, [(t, tie, (b, v)) for t, tie, b, v in rows], int(ts[i]), w)
                assert bucketed.agrees(got, want), (op_name, window, got, want)
                compared += 1
    assert compared > 500


# ---- hand-made cases: the oracle and the fold against values computed by hand -----------------------


def _hand_events() -> pa.Table:
    m = MINUTE_MS
    rows = [  # (card, ts, event_id, amount)
        ("a", 0, 10, 1.0),
        ("a", 59_999, 11, 2.0),
        ("a", m, 13, 4.0),  # exactly on the minute boundary
        ("a", m, 12, 8.0),  # same ms, smaller tie-break: it is first
        ("a", 2 * m, 14, None),  # null: ignored
        ("a", 2 * m + 1, 15, 16.0),
        ("b", m, 20, 100.0),
    ]
    return pa.table(
        {
            "card_id": [r[0] for r in rows],
            "ts": pa.array([r[1] for r in rows], pa.int64()),
            "event_id": pa.array([r[2] for r in rows], pa.int64()),
            "amount": pa.array([r[3] for r in rows], pa.float64()),
        }
    )


HAND_CASES: list[tuple[str, str | None, str | None, str | None, int, Any]] = [
    # op, window, hop, offset, t, expected for card "a"
    ("sum", None, None, None, MINUTE_MS, 3.0),  # events at exactly t are out
    ("sum", None, None, None, MINUTE_MS + 1, 15.0),  # ... and in one ms later, all of the tie
    ("first", "1m", "1s", None, 2 * MINUTE_MS, 8.0),  # window [60000, 120000): the tie, by tie-break
    ("last", "1m", "1s", None, 2 * MINUTE_MS, 4.0),
    ("count", "1m", "1m", None, 2 * MINUTE_MS + 2, 3),  # [60000, ...): the null at 120000 is not counted
    ("first_k", None, None, None, 3 * MINUTE_MS, [1.0, 2.0, 8.0]),
    ("last_k", None, None, None, 3 * MINUTE_MS, [16.0, 4.0, 8.0]),
    ("top_k", None, None, None, 3 * MINUTE_MS, [16.0, 8.0, 4.0]),
    ("sum", "1m", "1m", "1m", 3 * MINUTE_MS - 1, 3.0),  # [0, 60000) then: offset end aligns down
    ("sum", "1m", "1m", "1m", 3 * MINUTE_MS, 12.0),  # [60000, 120000)
    ("count", "1m", "1m", None, 10 * MINUTE_MS, 0),
    ("avg", "1m", "1m", None, 10 * MINUTE_MS, None),
    ("histogram", "1m", "1m", None, 10 * MINUTE_MS, {}),
    ("variance", None, None, None, MINUTE_MS, 0.25),  # of 1 and 2
]


@pytest.mark.parametrize(("op_name", "window", "hop", "offset", "t", "want"), HAND_CASES)
def test_hand_cases(
    op_name: str, window: str | None, hop: str | None, offset: str | None, t: int, want: Any
) -> None:
    ev = _hand_events()
    spec = feature_spec(
        "amount", op_name, window, hop=hop, offset=offset, k=K if op_name in K_OPS else None, name="f"
    )
    queries = pa.table({"query_id": [1, 2], "card_id": ["a", "zz"], "t": pa.array([t, t], pa.int64())})
    args: dict[str, Any] = {"key_cols": ["card_id"], "time_col": "ts", "tie_col": "event_id"}
    oracle = _py(oracle_features(ev, queries, [spec], **args).column("f"))
    folded = _py(fold_features(ev, queries, [spec], **args).column("f"))
    assert oracle[0] == want
    assert folded[0] == want
    assert oracle[1] == folded[1]  # an unknown key: the empty result, whatever the op's empty value is
    op = get_op(op_name, spec.params, input_type="double")
    rows = [(r["ts"], r["event_id"], r["amount"]) for r in ev.to_pylist() if r["card_id"] == "a"]
    assert fold_window(op, rows, t, spec.window) == want


def test_fold_window_ignores_row_order() -> None:
    op = get_op("last_k", OpParams(k=4), input_type="long")
    rows = [(5, 2, 50), (5, 1, 51), (3, 9, 30), (7, 0, 70), (9, 0, 90)]
    w = WindowSpec(None, DAY_MS)
    assert fold_window(op, rows, 9, w) == [70, 50, 51, 30]
    assert fold_window(op, list(reversed(rows)), 9, w) == [70, 50, 51, 30]


def test_fold_window_bucketed() -> None:
    op = get_op("sum", OpParams(), input_type="double")
    rows: Sequence[tuple[int, int, Any, Any]] = [
        (0, 0, "x", 1.0),
        (1, 0, "y", 2.0),
        (2, 0, "x", 4.0),
        (3, 0, None, 8.0),  # no bucket: skipped
        (4, 0, "z", None),  # no value: no bucket "z"
        (5, 0, "x", 16.0),  # at t: out
    ]
    assert fold_window_bucketed(op, rows, 5, WindowSpec(None, DAY_MS)) == {"x": 5.0, "y": 2.0}
