"""The synthetic payment generator: deterministic, on schema, and full of the edges it promises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.synthetic import (
    LABELS_SCHEMA,
    LATE_AFTER_MS,
    PAYMENTS_SCHEMA,
    Dataset,
    describe,
    events_in_arrival_order,
    generate,
)
from features.windows import DAY_MS


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return generate(seed=7, days=3, events_per_day=20_000)


def test_same_seed_same_bytes() -> None:
    a = generate(seed=5, days=2, events_per_day=3_000)
    b = generate(seed=5, days=2, events_per_day=3_000)
    assert a.payments.equals(b.payments)
    assert a.labels.equals(b.labels)


def test_other_seed_other_data() -> None:
    a = generate(seed=5, days=1, events_per_day=3_000)
    b = generate(seed=6, days=1, events_per_day=3_000)
    assert not a.payments.equals(b.payments)


def test_schema(ds: Dataset) -> None:
    assert ds.payments.schema == PAYMENTS_SCHEMA
    assert ds.labels.schema == LABELS_SCHEMA
    assert ds.labels.num_rows == ds.payments.num_rows


def test_values_are_well_formed(ds: Dataset) -> None:
    p = ds.payments
    ts = p["ts"].to_numpy()
    assert ts.min() >= ds.start_ms and ts.max() < ds.end_ms
    assert np.all(np.diff(ts) >= 0), "payments are sorted by ts"
    event_id = p["event_id"].to_numpy()
    assert len(np.unique(event_id)) == p.num_rows
    assert pc.count_distinct(p["payment_id"]).as_py() == p.num_rows
    assert np.all(p["arrival_ts"].to_numpy() >= ts)
    amount = p["amount"].to_numpy()
    assert np.all(amount > 0)
    np.testing.assert_allclose(amount, np.round(amount, 2), rtol=0, atol=1e-9)
    assert set(p["status"].unique().to_pylist()) == {"authorized", "declined"}
    assert set(p["channel"].unique().to_pylist()) == {"ecom", "pos"}
    assert set(p["is_fraud"].unique().to_pylist()) == {0, 1}
    assert np.all(p["fx_rate"].to_numpy() > 0)
    assert np.all(p["label_ts"].to_numpy() >= ts + 30 * DAY_MS)
    assert np.all(p["label_ts"].to_numpy() <= ts + 60 * DAY_MS)
    for col in (
        "card_id",
        "customer_id",
        "merchant_id",
        "merchant_category",
        "country",
        "card_country",
        "currency",
    ):
        assert p[col].null_count == 0, col
    # Card-present payments carry no device and no IP; online ones always do.
    pos = pc.equal(p["channel"], "pos")
    assert pc.all(pc.equal(pc.is_null(p["device_id"]), pos)).as_py()
    assert pc.all(pc.equal(pc.is_null(p["ip"]), pos)).as_py()


def test_usd_is_fx_one_and_currency_follows_country(ds: Dataset) -> None:
    p = ds.payments
    usd = p.filter(pc.equal(p["currency"], "USD"))
    assert usd.num_rows > 0 and pc.all(pc.equal(usd["fx_rate"], 1.0)).as_py()


def test_labels_match_payments(ds: Dataset) -> None:
    by_id = ds.payments.sort_by("event_id")
    labels = ds.labels.sort_by("event_id")
    assert labels["payment_id"].equals(by_id["payment_id"])
    assert labels["ts"].equals(by_id["label_ts"])
    assert labels["payment_ts"].equals(by_id["ts"])
    assert labels["is_fraud"].equals(by_id["is_fraud"])
    assert np.all(np.diff(ds.labels["ts"].to_numpy()) >= 0)


def test_stats_in_range(ds: Dataset) -> None:
    s = describe(ds)
    assert 0.001 <= s["fraud_share"] <= 0.01
    assert 0.01 <= s["declined_share"] <= 0.1
    assert 0.002 <= s["late_share"] <= 0.01
    assert s["same_ms_card_ties"] >= 100
    assert s["on_minute"] >= 50 and s["on_hour"] >= 20 and s["on_day"] >= 3


def test_small_data_still_has_every_edge() -> None:
    s = describe(generate(seed=1, days=2, events_per_day=1_000, n_cards=30))
    assert s["fraud"] > 0
    assert s["same_ms_card_ties"] >= 10
    assert s["on_minute"] >= 8 and s["on_hour"] >= 5 and s["on_day"] >= 2
    assert s["late"] >= 1


def test_fraud_scenarios_have_their_shape(ds: Dataset) -> None:
    p = ds.payments
    fraud = p.filter(pc.equal(p["is_fraud"], 1))
    legit = p.filter(pc.equal(p["is_fraud"], 0))
    # Card testing: tiny amounts; takeover and stolen cards: large ones; fraud is online from foreign places.
    assert pc.sum(pc.less(fraud["amount"], 3.0)).as_py() > 0
    assert pc.mean(pc.equal(fraud["channel"], "ecom")).as_py() == 1.0
    foreign = pc.mean(pc.not_equal(fraud["country"], fraud["card_country"])).as_py()
    assert foreign > 0.9
    assert pc.mean(pc.not_equal(legit["country"], legit["card_country"])).as_py() < 0.2
    fraud_declined = pc.mean(pc.equal(fraud["status"], "declined")).as_py()
    legit_declined = pc.mean(pc.equal(legit["status"], "declined")).as_py()
    assert fraud_declined > 3 * legit_declined
    # Fraudsters use devices the customer never used legitimately.
    legit_devices = set(legit["device_id"].drop_null().to_pylist())
    assert not legit_devices & set(fraud["device_id"].drop_null().to_pylist())


def test_zipf_activity(ds: Dataset) -> None:
    counts = np.sort(pc.value_counts(ds.payments["card_id"]).field("counts").to_numpy())[::-1]
    top_share = counts[: len(counts) // 100].sum() / counts.sum()
    assert top_share > 0.05, "the busiest 1 % of cards make a visible share of payments"


def test_late_events_and_arrival_order(ds: Dataset) -> None:
    stream = ds.events_in_arrival_order()
    arrival = stream["arrival_ts"].to_numpy()
    assert np.all(np.diff(arrival) >= 0)
    # event_id is the arrival sequence number.
    assert np.all(np.diff(stream["event_id"].to_numpy()) > 0)
    lateness = arrival - stream["ts"].to_numpy()
    assert (lateness > LATE_AFTER_MS).sum() > 0
    assert events_in_arrival_order(ds.payments).equals(stream)


def test_write_roundtrip(tmp_path: Path) -> None:
    small = generate(seed=2, days=1, events_per_day=500)
    pay, lab = small.write(tmp_path / "out")
    assert pay.name == "payments.parquet" and lab.name == "labels.parquet"
    assert pq.read_table(pay).equals(small.payments)
    assert pq.read_table(lab).equals(small.labels)


def test_one_million_events_is_fast() -> None:
    import time

    t0 = time.perf_counter()
    big = generate(seed=3, days=10, events_per_day=100_000)
    elapsed = time.perf_counter() - t0
    assert big.payments.num_rows >= 1_000_000
    assert elapsed < 20, f"1 M events took {elapsed:.1f} s"
    assert isinstance(big.payments, pa.Table)
