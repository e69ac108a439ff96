"""Merchant velocity and the merchant's fraud rate on late-arriving labels."""

from features.definitions import Aggregation, GroupBy, Op, Window
from features.fraud.sources import labels, payments

merchant_velocity = GroupBy(
    name="merchant",
    keys=["merchant_id"],
    source=payments,
    selects={
        "amount_usd": "amount * fx_rate",
        "is_declined": "IF(status = 'declined', 1, 0)",
        "is_foreign": "IF(country <> card_country, 1, 0)",
        "card_id": "card_id",
        "small_amount": "IF(amount * fx_rate < 2.0, 1, 0)",
    },
    aggregations=[
        Aggregation("amount_usd", Op.COUNT, windows=["10m", "1h", "1d", "7d"]),
        Aggregation("amount_usd", Op.SUM, windows=["1h", "1d", "7d"]),
        Aggregation("amount_usd", Op.AVG, windows=["1d", "7d"]),
        Aggregation("amount_usd", Op.STDDEV, windows=["7d"]),
        Aggregation("is_declined", Op.SUM, windows=["10m", "1h", "1d"]),
        Aggregation("is_foreign", Op.SUM, windows=["1d", "7d"]),
        Aggregation("small_amount", Op.SUM, windows=["10m", "1h", "1d"]),
        Aggregation("card_id", Op.APPROX_UNIQUE_COUNT, windows=["10m", "1h", "1d", "7d"]),
    ],
)

# Labels arrive 30-60 days after the payment, so the rate is read over a window that ends a week ago.
merchant_fraud = GroupBy(
    name="merchant_fraud",
    keys=["merchant_id"],
    source=labels,
    aggregations=[
        Aggregation("is_fraud", Op.AVG, windows=[Window("30d", offset="7d"), Window("90d", offset="7d")]),
        Aggregation("is_fraud", Op.SUM, windows=[Window("30d", offset="7d"), "7d"]),
        Aggregation("is_fraud", Op.COUNT, windows=[Window("30d", offset="7d")]),
    ],
)
