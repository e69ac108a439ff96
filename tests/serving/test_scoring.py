"""The fraud decision: vectorize, train, reload, offline/online parity, rules, fallbacks.

Small seeded data (4 days x 800 payments a day, fraud episodes scaled up so both sides of the time split have
enough fraud); the feature rows come from the reference fold of the plan, i.e. what the backfill and the fetcher
produce.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.compile import compile_repo
from features.plan import JoinPlan
from features.reference import GroupByIndex, join_features
from features.synthetic import generate
from serving.rules import DEFAULT_RULES_PATH, Rules, RulesError
from serving.scoring import (
    AUTO_WARMUP,
    MANIFEST_FILE,
    MODEL_FILE,
    Decider,
    Model,
    TrainResult,
    average_precision,
    choose_thresholds,
    main,
    roc_auc,
    train,
)
from serving.vectorize import Vectorizer, build_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def join() -> JoinPlan:
    return compile_repo(ROOT / "features" / "fraud").join("fraud_v1")


@pytest.fixture(scope="module")
def rows(join: JoinPlan) -> list[dict[str, Any]]:
    ds = generate(seed=3, days=4, events_per_day=800, fraud_scale=8)
    plan = compile_repo(ROOT / "features" / "fraud")
    sources = {"payments": ds.payments, "labels": ds.labels}
    parts = {p.group_by for p in join.parts}
    indexes = {
        gb.name: GroupByIndex(gb, sources[gb.source.table].to_pylist())
        for gb in plan.group_bys
        if gb.name in parts
    }
    requests = ds.payments.to_pylist()
    out = join_features(join, indexes, requests)
    for row, req in zip(out, requests, strict=True):
        row["is_fraud"] = req["is_fraud"]
    return out


_SCALARS = {"string": pa.string(), "long": pa.int64(), "int": pa.int32(), "double": pa.float64()}


def _arrow_type(t: str) -> pa.DataType:
    if t.startswith("array<"):
        return pa.list_(_arrow_type(t[6:-1]))
    if t.startswith("map<"):
        k, v = t[4:-1].split(",", 1)
        return pa.map_(_arrow_type(k), _arrow_type(v))
    return _SCALARS[t]


@pytest.fixture(scope="module")
def table(rows: list[dict[str, Any]], join: JoinPlan) -> pa.Table:
    """The rows as the backfill writes them: maps as Arrow maps (``to_pylist`` gives (key, value) pairs),
    lists as Arrow lists."""
    schema = pa.schema(
        [(c, _arrow_type(t)) for c, t in join.output_schema.items()] + [("is_fraud", pa.int64())]
    )
    columns = {c: [r[c] for r in rows] for c in schema.names}
    for c, t in join.output_schema.items():
        if t.startswith("map<"):
            columns[c] = [None if v is None else list(v.items()) for v in columns[c]]
    return pa.table(columns, schema=schema)


@pytest.fixture(scope="module")
def trained(table: pa.Table, join: JoinPlan, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    path = tmp_path_factory.mktemp("train") / "training.parquet"
    pq.write_table(table, path)
    return train(path, join, out_dir=tmp_path_factory.mktemp("model"), num_boost_round=80)


# --------------------------------------------------------------------------------------------- vectorize


def test_vectorize_rule(join: JoinPlan) -> None:
    v = Vectorizer.for_join(join.output_schema)
    names = set(v.names)
    assert "card_amount_usd_count_10m" in names and "amount_z_card_30d" in names
    assert {
        "card_amount_usd_approx_percentile_30d__len",
        "card_amount_usd_approx_percentile_30d__first",
    } <= names
    assert {
        "card_amount_usd_sum_7d_by_merchant_category__n_keys",
        "card_merchant_id_last3_1d__nunique",
    } <= names
    assert {"channel=ecom", "channel=pos", "device_id__eq__customer_device_id_last"} <= names
    for dropped in (
        "payment_id",
        "card_id",
        "ts",
        "event_id",
        "card_ts_first",
        "currency",
        "card_country_last",
    ):
        assert dropped not in names
    row = {
        "card_amount_usd_count_10m": 3,
        "is_foreign": True,
        "amount_z_card_30d": None,
        "card_amount_usd_approx_percentile_30d": [10.0, 90.0],
        "card_amount_usd_sum_7d_by_merchant_category": {"grocery": 5.0, "travel": 7.5},
        "card_merchant_id_last3_1d": ["m1", "m1", "m2"],
        "channel": "pos",
        "device_id": None,
        "customer_device_id_last": "d1",
        "ts": 10_000,
        "card_ts_last": 4_000,
    }
    x = dict(zip(v.names, v.vector(row), strict=True))
    assert x["card_amount_usd_count_10m"] == 3.0 and x["is_foreign"] == 1.0
    assert math.isnan(x["amount_z_card_30d"]) and math.isnan(x["card_amount_usd_count_1h"])  # None, missing
    assert x["card_amount_usd_approx_percentile_30d__len"] == 2
    assert x["card_amount_usd_approx_percentile_30d__first"] == 10.0
    assert x["card_amount_usd_approx_percentile_30d__max"] == 90.0
    assert x["card_amount_usd_sum_7d_by_merchant_category__n_keys"] == 2
    assert x["card_amount_usd_sum_7d_by_merchant_category__sum"] == 12.5
    assert x["card_merchant_id_last3_1d__nunique"] == 2
    assert (x["channel=pos"], x["channel=ecom"]) == (1.0, 0.0)
    assert math.isnan(x["device_id__eq__customer_device_id_last"])
    assert x["card_ts_last__secs_before_ts"] == 6.0
    # Arrow's map form (a list of pairs) gives the same values as a dict.
    arrow_form = {**row, "card_amount_usd_sum_7d_by_merchant_category": [("grocery", 5.0), ("travel", 7.5)]}
    assert np.array_equal(v.vector(arrow_form), v.vector(row), equal_nan=True)


_NUMBERS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([2**53 + 1, 2**63 - 1, 2**63, 2**64 + 5, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_one_row_vector_equals_the_per_value_definition(join: JoinPlan, data: st.DataObject) -> None:
    """The numeric columns' one-call conversion gives float(v) (NaN for None) bit for bit; a value that is
    not a number fails as the per-value rule fails."""
    v = Vectorizer.for_join(join.output_schema)
    num_cols = [s.column for s in v.spec if s.rule == "num"]
    every = data.draw(st.booleans())  # every column (a fetched vector) or some (others count as None)
    cols = num_cols if every else data.draw(st.lists(st.sampled_from(num_cols), max_size=40))
    row = {c: data.draw(_NUMBERS) for c in cols}
    got, want = v.vector(row), v.vector_by_value(row)
    assert got.tobytes() == want.tobytes() or np.array_equal(got, want, equal_nan=True)
    bad = data.draw(st.sampled_from(["abc", [1.0], {"a": 1}, 10**400]))
    row[data.draw(st.sampled_from(num_cols))] = bad
    with pytest.raises((TypeError, ValueError, OverflowError)) as by_value:
        v.vector_by_value(row)
    with pytest.raises(type(by_value.value)):
        v.vector(row)


def test_vectorize_table_equals_rows(rows: list[dict[str, Any]], table: pa.Table, join: JoinPlan) -> None:
    v = Vectorizer.for_join(join.output_schema)
    sample = rows[-300:]
    by_table = v.matrix(table.slice(len(rows) - 300))
    by_rows = v.matrix(sample)
    assert by_table.shape == (300, len(v.names))
    assert np.array_equal(by_table, by_rows, equal_nan=True)
    # a map that Arrow inferred as a struct (from_pylist of dicts) would count keys wrongly: refused
    with pytest.raises(ValueError, match="struct"):
        v.matrix(pa.Table.from_pylist(sample))


# ------------------------------------------------------------------------------------------------- train


def test_metrics_helpers() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert roc_auc(y, s) == pytest.approx(0.75)
    assert average_precision(y, s) == pytest.approx((1.0 + 2 / 3) / 2)
    t = choose_thresholds(
        np.array([1, 1, 1, 0, 1, 0, 0, 0]),
        np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]),
        decline_precision=0.9,
        review_alert_rate=0.75,
        min_decline_hits=2,
    )
    assert t.decline == 0.7  # the lowest score with precision >= 0.9
    assert t.review == 0.4  # the top 75 % of 8 payments = 6 payments
    t = choose_thresholds(
        np.array([1, 1, 0, 1, 0, 0, 0, 0]),
        np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]),
        decline_precision=0.6,
        min_decline_hits=1,
    )
    assert t.decline == 0.6  # 0.5 still has precision 3/5 but catches no fraud: the threshold stays at 0.6


def test_training_reports_metrics_and_beats_baseline(trained: TrainResult) -> None:
    m = trained.metrics
    valid = m["valid"]
    assert m["positives"]["train"] > 20 and m["positives"]["valid"] > 10
    # time-based: every validation row is at or after the split, every train row before it
    assert m["rows"]["train"] > m["rows"]["valid"] > 0
    assert valid["pr_auc"] > max(0.5, 5 * valid["base_rate"])
    assert valid["roc_auc"] > 0.9
    t = trained.thresholds
    assert 0 < t.review <= t.decline
    assert valid["decline"]["precision"] >= 0.9 or valid["decline"]["flagged"] == 0
    assert valid["review"]["recall"] >= valid["decline"]["recall"]
    manifest = json.loads((trained.out_dir / MANIFEST_FILE).read_text())
    assert manifest["join"] == "fraud_v1"
    assert manifest["metrics"]["valid"]["pr_auc"] == valid["pr_auc"]
    assert manifest["thresholds"]["decline"] == t.decline
    assert [f["name"] for f in manifest["vectorizer"]["features"]] == trained.feature_names
    assert not list(trained.out_dir.glob("*.pkl")) and not list(trained.out_dir.glob("*.pickle"))


def test_time_split_respects_time(table: pa.Table, trained: TrainResult) -> None:
    ts = table.column("ts").to_numpy()
    cut = trained.metrics["split_ts"]
    assert (ts < cut).sum() == trained.metrics["rows"]["train"]
    assert (ts >= cut).sum() == trained.metrics["rows"]["valid"]


def test_reload_gives_identical_scores(trained: TrainResult, table: pa.Table, tmp_path: Path) -> None:
    a = Model.load(trained.out_dir).score_table(table)
    copy = tmp_path / "copy"
    shutil.copytree(trained.out_dir, copy)
    b = Model.load(copy).score_table(table)
    assert np.array_equal(a, b)
    assert np.all((a >= 0) & (a <= 1))


def test_offline_online_parity(trained: TrainResult, table: pa.Table, rows: list[dict[str, Any]]) -> None:
    """Batch scoring of the training-set table == decide() on each feature dict, bit for bit."""
    model = Model.load(trained.out_dir)
    offline = model.score_table(table)
    with Decider(model, None, timeout_ms=5_000, explain="never") as decider:
        online = np.array([decider.decide(r).score for r in rows], dtype=np.float64)
    assert np.array_equal(offline, online)
    # and the actions follow the saved thresholds
    d = Decider(model, None, timeout_ms=5_000)
    top = int(np.argmax(offline))
    decision = d.decide(rows[top])
    assert decision.action == model.thresholds.action(float(offline[top])) != "approve"
    assert any(r.kind == "model" and r.contribution and r.contribution > 0 for r in decision.reasons)
    d.close()


def test_row_predictor_gives_the_scores_of_inplace_predict(trained: TrainResult, table: pa.Table) -> None:
    """The one-row fast path (what decisions use) scores every row exactly as the batch call does, also from
    several threads at once (each has its own buffers)."""
    model = Model.load(trained.out_dir)
    assert model.row_predictor is not None, "the fast path should build with this xgboost"
    X = model.vectorizer.matrix(table)
    rng = np.random.default_rng(1)
    noisy = X[:200].copy()
    noisy[rng.random(noisy.shape) < 0.2] = np.nan  # missing values take the default branches
    for matrix in (X, noisy):
        want = model.score_matrix(matrix)
        got = np.array([model.score_vector(x) for x in matrix])
        assert np.array_equal(got, want)
    with cf.ThreadPoolExecutor(4) as pool:
        got_mt = list(pool.map(model.score_vector, list(noisy) * 5))
    assert np.array_equal(np.array(got_mt), np.tile(model.score_matrix(noisy), 5))


def test_feature_order_comes_from_the_model_file(
    trained: TrainResult, rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    model = Model.load(trained.out_dir)
    manifest = json.loads((trained.out_dir / MANIFEST_FILE).read_text())
    assert model.vectorizer.names == [f["name"] for f in manifest["vectorizer"]["features"]]
    assert model.booster.feature_names == model.vectorizer.names
    # a spec whose order disagrees with the booster is refused, not silently permuted
    broken = tmp_path / "reordered"
    shutil.copytree(trained.out_dir, broken)
    features = manifest["vectorizer"]["features"]
    manifest["vectorizer"]["features"] = [features[1], features[0], *features[2:]]
    (broken / MANIFEST_FILE).write_text(json.dumps(manifest))
    decider = Decider(broken, None)
    assert decider.model is None and decider.load_error and "feature names" in decider.load_error
    assert "model_fallback" in decider.decide(rows[0]).flags
    decider.close()


def test_cli_main(table: pa.Table, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ts.parquet"
    pq.write_table(table, path)
    out = tmp_path / "model"
    assert main(["--join", "fraud_v1", "--training-set", str(path), "--out", str(out), "--rounds", "20"]) == 0
    assert (out / MODEL_FILE).exists() and (out / MANIFEST_FILE).exists()
    assert "PR-AUC" in capsys.readouterr().out
    assert main(["--join", "nope", "--training-set", str(path), "--out", str(out)]) == 1
    pq.write_table(table.drop_columns(["card_amount_usd_count_10m"]), path)
    assert main(["--join", "fraud_v1", "--training-set", str(path), "--out", str(out)]) == 1
    assert "card_amount_usd_count_10m" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- rules


def test_default_rules_load_and_fire(join: JoinPlan) -> None:
    rules = Rules.default(join.output_schema)
    assert {r.name for r in rules.rules} >= {"card_velocity_10m", "card_testing_declines_10m"}
    hits = rules.evaluate({"card_amount_usd_count_10m": 9, "card_merchant_id_approx_unique_count_1h": 6})
    assert [h.name for h in hits] == ["card_velocity_10m", "card_many_merchants_1h"]  # declines first
    assert hits[0].action == "decline" and "10 minutes" in hits[0].reason
    assert rules.evaluate({"card_amount_usd_count_10m": None}) == []


def test_rules_file_errors_are_listed(join: JoinPlan, tmp_path: Path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text(
        '[[rule]]\nname = "a"\nwhen = "no_such_feature > 1"\naction = "decline"\nreason = "x"\n'
        '[[rule]]\nname = "b"\nwhen = "card_amount_usd_count_10m + 1"\naction = "block"\nreason = "y"\n'
        '[[blocklist]]\nname = "c"\ncolumn = "nope"\nvalues = []\naction = "decline"\nreason = "z"\n'
    )
    with pytest.raises(RulesError) as e:
        Rules.load(bad, join.output_schema)
    text = str(e.value)
    assert "no_such_feature" in text and "'block'" in text and "'nope'" in text


def test_decider_rules_and_blocklist(
    trained: TrainResult, join: JoinPlan, rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    cfg = DEFAULT_RULES_PATH.read_text().replace(
        'column = "card_id"\naction = "decline"\nreason = "card is on the blocklist"\nvalues = []',
        'column = "card_id"\naction = "decline"\nreason = "card is on the blocklist"\nvalues = ["card_blocked"]',
    )
    path = tmp_path / "rules.toml"
    path.write_text(cfg)
    rules = Rules.load(path, join.output_schema)
    quiet = rows[0]  # the first payment of the data: no history, no rule fires
    with Decider(trained.out_dir, rules) as decider:
        d = decider.decide({**quiet, "card_id": "card_blocked"})
        assert d.action == "decline" and d.reasons[0].name == "blocked_card"
        assert d.reasons[0].text == "card is on the blocklist" and d.score is not None and not d.flags
        fast = decider.decide({**quiet, "card_amount_usd_count_10m": 12})
        assert fast.action == "decline" and fast.reasons[0].name == "card_velocity_10m"


# ----------------------------------------------------------------------------------------------- fallback


def test_broken_model_file_falls_back_to_rules(
    trained: TrainResult, join: JoinPlan, rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(trained.out_dir, broken)
    (broken / MODEL_FILE).write_bytes(b"not a model")
    rules = Rules.default(join.output_schema)
    with Decider(broken, rules) as decider:
        assert decider.model is None and decider.load_error
        ok = decider.decide(rows[0])
        assert ok.action == "approve" and ok.score is None
        assert {"model_unavailable", "model_fallback"} <= set(ok.flags)
        hit = decider.decide({**rows[0], "card_amount_usd_count_10m": 20})
        assert (
            hit.action == "decline"
            and hit.reasons[0].name == "card_velocity_10m"
            and "model_fallback" in hit.flags
        )
    with Decider(tmp_path / "missing", rules) as decider:
        assert "model_fallback" in decider.decide(rows[0]).flags


def test_model_timeout_and_error_fall_back_to_rules(
    trained: TrainResult, join: JoinPlan, rows: list[dict[str, Any]]
) -> None:
    model = Model.load(trained.out_dir)
    rules = Rules.default(join.output_schema)
    with Decider(model, rules, timeout_ms=20) as decider:
        assert "model_fallback" not in decider.decide(rows[0]).flags
        real = model.score_vector

        def slow(x: np.ndarray) -> float:
            time.sleep(0.3)
            return real(x)

        model.score_vector = slow  # type: ignore[method-assign]
        started = time.perf_counter()
        d = decider.decide({**rows[0], "card_amount_usd_count_10m": 20})
        assert time.perf_counter() - started < 0.25
        assert d.action == "decline" and d.score is None
        assert {"model_timeout", "model_fallback"} <= set(d.flags)
        assert d.reasons[0].name == "card_velocity_10m"

        def boom(x: np.ndarray) -> float:
            raise RuntimeError("model exploded")

        model.score_vector = boom  # type: ignore[method-assign]
        e = decider.decide(rows[0])
        assert e.action == "approve" and {"model_error", "model_fallback"} <= set(e.flags)


def test_inline_and_auto_placement_keep_the_fallback_semantics(
    trained: TrainResult, join: JoinPlan, rows: list[dict[str, Any]]
) -> None:
    """In the caller's thread the model gives the same decisions; a call past the budget is discarded
    (rules only, ``model_timeout``) and ``auto`` then moves the model back to the pool, which bounds latency."""
    rules = Rules.default(join.output_schema)
    with Decider(Model.load(trained.out_dir), rules, timeout_ms=5_000) as pool:
        want = [pool.decide(r) for r in rows[: AUTO_WARMUP + 5]]
    model = Model.load(trained.out_dir)
    real = model.score_vector

    def slow(x: np.ndarray) -> float:
        time.sleep(0.6)
        return real(x)

    with Decider(model, rules, timeout_ms=400, placement="inline") as inline:
        got = [inline.decide(r) for r in rows[: AUTO_WARMUP + 5]]
        assert [(d.action, d.score) for d in got] == [(d.action, d.score) for d in want]
        assert inline.inline_calls == len(got) and inline.pool_calls == 0
        model.score_vector = slow  # type: ignore[method-assign]
        d = inline.decide({**rows[0], "card_amount_usd_count_10m": 20})
        assert (
            d.score is None and d.action == "decline" and {"model_timeout", "model_fallback"} <= set(d.flags)
        )
        model.score_vector = real  # type: ignore[method-assign]

    with Decider(model, rules, timeout_ms=400, placement="auto") as auto:
        got = [auto.decide(r) for r in rows[: AUTO_WARMUP + 5]]
        assert [(d.action, d.score) for d in got] == [(d.action, d.score) for d in want]
        assert auto.pool_calls == AUTO_WARMUP and auto.inline_calls == 5  # fast model: inline after warm-up
        model.score_vector = slow  # type: ignore[method-assign]
        first = auto.decide(rows[0])  # inline: cannot be cut short, but its late score is not used
        assert first.score is None and {"model_timeout", "model_fallback"} <= set(first.flags)
        started = time.perf_counter()
        second = auto.decide(rows[0])  # back in the pool: bounded by the budget
        assert time.perf_counter() - started < 0.55
        assert second.score is None and "model_timeout" in second.flags
        assert auto.inline_calls == 6 and auto.pool_calls == AUTO_WARMUP + 1


def test_spec_roundtrip(join: JoinPlan) -> None:
    v = Vectorizer.for_join(join.output_schema)
    again = Vectorizer.from_json(json.loads(json.dumps(v.to_json())))
    assert again.names == v.names == [s.name for s in build_spec(join.output_schema)]
