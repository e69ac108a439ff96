"""The Spark backfill (``spark_jobs.backfill``) against the DuckDB oracle and the pure-Python reference Join.

* Every registered op x every window shape (short, long, lifetime, offsets, explicit hop) x scalar and
  bucketed, on seeded synthetic payments with same-ms ties, nulls and queries on event timestamps and on
  minute/hour/day boundaries: backfill == DuckDB oracle (floats rel 1e-9), sketches == ``features.reference``.
* The real ``fraud_v1`` Join (143 features + derivations) == ``features.reference.join_features``.
* A hand-made serving-delay case.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from datasketches import kll_doubles_sketch
from support.duckdb_oracle import oracle_features

from features.compile import compile_repo
from features.fold import FeatureSpec
from features.ops import REGISTRY, OpParams, get_op
from features.ops.base import results_close
from features.ops.sketches import KLL_K
from features.plan import Plan
from features.reference import GroupByIndex, join_features
from features.synthetic import generate
from features.windows import DAY_MS, HOUR_MS, MINUTE_MS
from spark_jobs.backfill import training_set

pytestmark = pytest.mark.spark

K = 3
PERCENTILES = (0.1, 0.5, 0.9)
K_OPS = {"first_k", "last_k", "top_k", "bottom_k"}
COLUMNS = {"amount_ecom": "double", "amount_cents": "long", "device_id": "string"}
WINDOWS = (
    '["1m", "10m", "1h", "1d", Window("1d", offset="1h"), Window("7d", offset="1d"), Window("2h", hop="5m")]'
)
BUCKETED = [("amount_ecom", "sum", "merchant_category"), ("device_id", "count", "channel")]

EVENT_SCHEMA = {
    "card_id": "string",
    "ts": "long",
    "event_id": "long",
    "amount_ecom": "double",
    "amount_cents": "long",
    "device_id": "string",
    "merchant_category": "string",
    "channel": "string",
}


def _write_repo(root: Path, aggregations: list[str], name: str = "oracle_repo") -> Plan:
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    aggs = ",\n        ".join(aggregations)
    (pkg / "defs.py").write_text(
        f"""from features.definitions import Aggregation, EventSource, GroupBy, Join, JoinPart, Window

events = EventSource(table="events", topic="events", time_column="ts", tie_break="event_id",
                     schema={EVENT_SCHEMA!r})
requests = EventSource(table="requests", topic="requests", time_column="ts",
                       schema={{"query_id": "long", "card_id": "string", "ts": "long"}})
g = GroupBy(
    name="g",
    keys=["card_id"],
    source=events,
    aggregations=[
        {aggs}
    ],
)
j = Join(name="j", left=requests, parts=[JoinPart(g)])
"""
    )
    return compile_repo(pkg)


def _params(op_name: str) -> OpParams:
    if op_name in K_OPS:
        return OpParams(k=K)
    if op_name == "approx_percentile":
        return OpParams(percentiles=PERCENTILES)
    return OpParams()


def _agg_texts() -> list[str]:
    out = []
    for op_name in sorted(REGISTRY):
        extra = f", k={K}" if op_name in K_OPS else ""
        extra += f", percentiles={list(PERCENTILES)}" if op_name == "approx_percentile" else ""
        for col, typ in COLUMNS.items():
            try:
                get_op(op_name, _params(op_name), input_type=typ)
            except ValueError:
                continue
            out.append(f'Aggregation("{col}", "{op_name}", windows={WINDOWS}{extra})')
            out.append(f'Aggregation("{col}", "{op_name}"{extra})')  # lifetime
    for col, op_name, bucket in BUCKETED:
        out.append(f'Aggregation("{col}", "{op_name}", windows={WINDOWS}, buckets="{bucket}")')
        out.append(f'Aggregation("{col}", "{op_name}", buckets="{bucket}")')
    return out


@pytest.fixture(scope="module")
def events() -> pa.Table:
    p = generate(seed=11, days=3, events_per_day=600, n_cards=25, n_merchants=12).payments
    ecom = pc.equal(p["channel"], "ecom")
    p = p.append_column("amount_ecom", pc.if_else(ecom, p["amount"], pa.scalar(None, pa.float64())))
    p = p.append_column("amount_cents", pc.round(pc.multiply(p["amount"], 100.0)).cast(pa.int64()))
    return p.select(list(EVENT_SCHEMA))


def _requests(events: pa.Table, n: int = 300, seed: int = 5) -> pa.Table:
    """Query times on event timestamps (ties at t), +-1 ms, on minute/hour/day boundaries, random; a new card."""
    rng = np.random.default_rng(seed)
    ts = events["ts"].to_numpy()
    cards = np.array(events["card_id"].to_pylist(), dtype=object)
    pair = Counter(zip(cards.tolist(), ts.tolist()))
    tied = np.flatnonzero([pair[(c, t)] > 1 for c, t in zip(cards.tolist(), ts.tolist())])
    q_card: list[Any] = []
    q_t: list[int] = []

    def add(idx: np.ndarray, times: np.ndarray) -> None:
        q_card.extend(cards[idx].tolist())
        q_t.extend(int(x) for x in times)

    pick = rng.choice(tied, min(40, len(tied)), replace=False) if len(tied) else np.zeros(0, np.int64)
    add(pick, ts[pick])
    idx = rng.integers(0, len(ts), n // 6)
    add(idx, ts[idx])
    for delta in (1, -1):
        idx = rng.integers(0, len(ts), 20)
        add(idx, ts[idx] + delta)
    for size in (MINUTE_MS, HOUR_MS, DAY_MS):
        idx = rng.integers(0, len(ts), 25)
        add(idx, ts[idx] // size * size + size)
    idx = rng.integers(0, len(ts), 20)
    add(idx, ts[idx] // HOUR_MS * HOUR_MS + HOUR_MS + DAY_MS)  # t - 1d offset on a boundary
    idx = rng.integers(0, len(ts), 60)
    add(idx, rng.integers(int(ts.min()) - HOUR_MS, int(ts.max()) + 8 * DAY_MS, 60))
    q_card += ["card_never_seen"] * 4
    q_t += [int(ts.min()) + i * DAY_MS for i in range(4)]
    m = len(q_t)
    return pa.table(
        {
            "query_id": pa.array(rng.permutation(m), pa.int64()),
            "card_id": pa.array(q_card, pa.string()),
            "ts": pa.array(q_t, pa.int64()),
        }
    )


def _py(table: pa.Table, name: str) -> list[Any]:
    values = table.column(name).to_pylist()
    if pa.types.is_map(table.schema.field(name).type):
        return [None if v is None else dict(v) for v in values]
    return values


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if not isinstance(a, int | float) or not isinstance(b, int | float):
            return False
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0) or (a != a and b != b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def test_backfill_matches_oracle_every_op_and_window(
    spark: Any, events: pa.Table, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = _write_repo(tmp_path, _agg_texts())
    join = plan.join("j")
    gb = plan.group_by("g")
    (part,) = join.parts
    left = _requests(events)
    got = training_set(plan, "j", left, {"events": spark.createDataFrame(events)}, spark=spark, n_buckets=3)
    assert got is not None
    assert got.column("query_id").equals(left.column("query_id"))  # the left's rows, in its order

    by_feature = {feat: out for out, feat in part.features.items()}
    specs = []
    for f in gb.features:
        agg = gb.aggregations[f.agg_index]
        w = agg.windows[f.window_index]
        specs.append(
            FeatureSpec(
                name=by_feature[f.name],
                column=agg.column,
                op=agg.op,
                length_ms=w.length_ms,
                hop_ms=w.hop_ms,
                offset_ms=w.offset_ms,
                k=agg.k,
                percentiles=tuple(agg.percentiles or ()),
                bucket=agg.bucket,
            )
        )
    queries = left.rename_columns(["query_id", "card_id", "t"])
    args: dict[str, Any] = {"key_cols": ["card_id"], "time_col": "ts", "tie_col": "event_id"}
    eps = float(kll_doubles_sketch.get_normalized_rank_error(KLL_K, False))
    bounds = [
        FeatureSpec(
            **{
                **{f: getattr(s, f) for f in FeatureSpec.__slots__},
                "name": s.name + suffix,
                "percentiles": ps,
            }
        )
        for s in specs
        if s.op == "approx_percentile"
        for suffix, ps in (
            ("__lo", tuple(max(0.0, p - eps) for p in s.percentiles)),
            ("__hi", tuple(min(1.0, p + eps) for p in s.percentiles)),
        )
    ]
    oracle = oracle_features(events, queries, [*specs, *bounds], **args)
    order = pc.sort_indices(got, [("query_id", "ascending")])
    got_sorted = got.take(order)
    index = GroupByIndex(gb, events.to_pylist())
    reference = join_features(join, {"g": index}, left.take(order).to_pylist())

    compared: Counter[str] = Counter()
    bad: Counter[str] = Counter()
    non_empty: Counter[str] = Counter()
    examples: list[str] = []
    for s in specs:
        label = f"{s.op}[{s.bucket}]" if s.bucket else s.op
        mine = _py(got_sorted, s.name)
        ref = [r[s.name] for r in reference]
        want = _py(oracle, s.name)
        kll = s.op == "approx_percentile"
        lo, hi = (_py(oracle, s.name + "__lo"), _py(oracle, s.name + "__hi")) if kll else ([], [])
        for i, (g, w, r) in enumerate(zip(mine, want, ref)):
            compared[label] += 1
            non_empty[label] += w not in (None, 0, [], {})
            if kll:  # KLL compaction is randomized: within the sketch's rank error of the exact quantiles
                ok = (g is None and w is None) or (
                    g is not None and w is not None and all(a <= x <= b for a, x, b in zip(lo[i], g, hi[i]))
                )
            elif s.op == "approx_unique_count":  # the same HLL code: exactly the reference
                ok = results_close(g, r)
            else:
                ok = _close(g, w) and results_close(g, r)
            if not ok:
                bad[label] += 1
                if len(examples) < 10:
                    examples.append(f"{s.name} row {i}: backfill={g!r} want={w!r} reference={r!r}")
    with capsys.disabled():
        print(
            f"\nbackfill vs oracle: {left.num_rows} requests x {len(specs)} features = "
            f"{sum(compared.values())} comparisons, {sum(bad.values())} mismatches"
        )
    assert not bad, "\n".join(examples)
    assert all(non_empty[label] > 0 for label in compared), non_empty


def test_backfill_matches_reference_fraud_v1(spark: Any, capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[2]
    plan = compile_repo(root / "features" / "fraud")
    join = plan.join("fraud_v1")
    d = generate(seed=3, days=3, events_per_day=700, n_cards=60, n_merchants=15, label_delay_days=(0.2, 1.0))
    rng = np.random.default_rng(1)
    idx = np.sort(rng.choice(d.payments.num_rows, 250, replace=False))
    left = d.payments.take(pa.array(idx))  # extra columns (labels) ride along
    sources = {"payments": spark.createDataFrame(d.payments), "labels": spark.createDataFrame(d.labels)}
    got = training_set(plan, "fraud_v1", left, sources, spark=spark, n_buckets=4)
    assert got is not None
    assert got.column_names == [*left.column_names, *list(join.output_schema)[len(join.left.schema) :]]
    tables = {"payments": d.payments.to_pylist(), "labels": d.labels.to_pylist()}
    indexes = {
        p.group_by: GroupByIndex(plan.group_by(p.group_by), tables[plan.group_by(p.group_by).source.table])
        for p in join.parts
    }
    want = join_features(join, indexes, left.to_pylist())
    bad: list[str] = []
    for name in join.output_schema:
        mine = _py(got, name)
        for i, (g, w) in enumerate(zip(mine, want)):
            if not results_close(g, w[name]):
                bad.append(f"{name} row {i}: backfill={g!r} reference={w[name]!r}")
    with capsys.disabled():
        print(f"\nfraud_v1: {left.num_rows} rows x {len(join.output_schema)} columns, {len(bad)} mismatches")
    assert not bad, "\n".join(bad[:10])


def test_serving_delay_shifts_what_counts(spark: Any, tmp_path: Path) -> None:
    plan = _write_repo(
        tmp_path,
        [
            'Aggregation("amount_cents", "sum")',
            'Aggregation("amount_cents", "count", windows=["1m"])',
            'Aggregation("amount_cents", "last")',
        ],
        name="delay_repo",
    )
    rows = [("a", 1_000, 1, 1), ("a", 1_900, 2, 2), ("a", 2_000, 3, 4), ("a", 2_100, 4, 8)]
    ev = pa.table(
        {
            "card_id": [r[0] for r in rows],
            "ts": pa.array([r[1] for r in rows], pa.int64()),
            "event_id": pa.array([r[2] for r in rows], pa.int64()),
            "amount_ecom": pa.array([None] * 4, pa.float64()),
            "amount_cents": pa.array([r[3] for r in rows], pa.int64()),
            "device_id": pa.array([None] * 4, pa.string()),
            "merchant_category": pa.array([None] * 4, pa.string()),
            "channel": pa.array([None] * 4, pa.string()),
        }
    )
    left = pa.table(
        {"query_id": pa.array([1], pa.int64()), "card_id": ["a"], "ts": pa.array([2_100], pa.int64())}
    )
    sources = {"events": spark.createDataFrame(ev)}
    cols = ("g_amount_cents_sum", "g_amount_cents_count_1m", "g_amount_cents_last")

    def run(delay: int) -> tuple[Any, ...]:
        out = training_set(plan, "j", left, sources, spark=spark, serving_delay_ms=delay, n_buckets=1)
        assert out is not None
        return tuple(out.column(c)[0].as_py() for c in cols)

    assert run(0) == (7, 3, 4)  # ts < 2100: the event at exactly t is out
    assert run(100) == (3, 2, 2)  # ts < 2000: the event at 2000 has not arrived
    assert run(150) == (3, 2, 2)
    assert run(1_100) == (None, 0, None)  # ts < 1000: nothing yet
    assert run(1_099) == (1, 1, 1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))
