"""Customer velocity: the person behind the cards — cards, devices and countries they use."""

from features.definitions import Aggregation, GroupBy, Op
from features.fraud.sources import payments

customer_velocity = GroupBy(
    name="customer",
    keys=["customer_id"],
    source=payments,
    selects={
        "amount_usd": "amount * fx_rate",
        "is_foreign": "IF(country <> card_country, 1, 0)",
        "card_id": "card_id",
        "device_id": "device_id",
        "country": "country",
        "channel": "channel",
    },
    where="status = 'authorized'",
    aggregations=[
        Aggregation("amount_usd", Op.COUNT, windows=["1h", "1d", "7d", "30d"]),
        Aggregation("amount_usd", Op.SUM, windows=["1h", "1d", "7d", "30d"]),
        Aggregation("amount_usd", Op.AVG, windows=["7d", "30d"]),
        Aggregation("amount_usd", Op.VARIANCE, windows=["30d"]),
        Aggregation("card_id", Op.APPROX_UNIQUE_COUNT, windows=["1d", "7d", "30d"]),
        Aggregation("device_id", Op.APPROX_UNIQUE_COUNT, windows=["1d", "7d", "30d"]),
        Aggregation("country", Op.APPROX_UNIQUE_COUNT, windows=["7d", "30d"]),
        Aggregation("is_foreign", Op.SUM, windows=["1d", "7d", "30d"]),
        Aggregation("channel", Op.HISTOGRAM, windows=["30d"]),
        Aggregation("device_id", Op.LAST),
        Aggregation("country", Op.FIRST_K, k=2, windows=["30d"]),
    ],
)
