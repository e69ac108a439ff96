"""Card velocity: how much, how fast, where and with whom a card has been paying."""

from features.definitions import Aggregation, GroupBy, Op, Window
from features.fraud.sources import payments

SHORT_TO_LONG = ["10m", "1h", "1d", "7d", "30d"]

card_velocity = GroupBy(
    name="card",
    keys=["card_id"],
    source=payments,
    selects={
        "amount_usd": "amount * fx_rate",
        "is_foreign": "IF(country <> card_country, 1, 0)",
        "is_declined": "IF(status = 'declined', 1, 0)",
        "is_ecom": "IF(channel = 'ecom', 1, 0)",
        "is_night": "IF(hour(timestamp_millis(ts)) < 6, 1, 0)",
        "merchant_id": "merchant_id",
        "merchant_category": "merchant_category",
        "device_id": "device_id",
        "country": "country",
        "ip": "ip",
    },
    aggregations=[
        Aggregation("amount_usd", Op.COUNT, windows=SHORT_TO_LONG),
        Aggregation("amount_usd", Op.SUM, windows=SHORT_TO_LONG),
        Aggregation("amount_usd", Op.AVG, windows=["1h", "1d", "7d", "30d"]),
        Aggregation("amount_usd", Op.MAX, windows=["1h", "1d", "7d", "30d"]),
        Aggregation("amount_usd", Op.MIN, windows=["1d", "7d"]),
        Aggregation("amount_usd", Op.STDDEV, windows=["7d", "30d"]),
        Aggregation("amount_usd", Op.APPROX_PERCENTILE, windows=["30d"], percentiles=[0.5, 0.95]),
        Aggregation("amount_usd", Op.LAST),
        Aggregation("amount_usd", Op.LAST_K, k=5, windows=["1d"]),
        Aggregation("is_declined", Op.SUM, windows=["10m", "1h", "1d", "7d"]),
        Aggregation("is_foreign", Op.SUM, windows=["1h", "1d", "7d", "30d"]),
        Aggregation("is_ecom", Op.SUM, windows=["1h", "1d", "7d"]),
        Aggregation("is_night", Op.SUM, windows=["1d", "7d"]),
        Aggregation("merchant_id", Op.APPROX_UNIQUE_COUNT, windows=["1h", "1d", "7d", "30d"]),
        Aggregation("merchant_category", Op.APPROX_UNIQUE_COUNT, windows=["1d", "30d"]),
        Aggregation("device_id", Op.APPROX_UNIQUE_COUNT, windows=["1d", "7d", "30d"]),
        Aggregation("ip", Op.APPROX_UNIQUE_COUNT, windows=["1h", "1d", "7d"]),
        Aggregation("country", Op.APPROX_UNIQUE_COUNT, windows=["1d", "30d"]),
        Aggregation("country", Op.LAST),
        Aggregation("merchant_id", Op.LAST_K, k=3, windows=["1d"]),
        Aggregation("amount_usd", Op.SUM, windows=["7d"], buckets="merchant_category"),
        Aggregation("ts", Op.FIRST),
        Aggregation("ts", Op.LAST),
        Aggregation("amount_usd", Op.TOP_K, k=3, windows=["7d"]),
        Aggregation("amount_usd", Op.SUM, windows=[Window("1d", offset="1d")]),
    ],
)
