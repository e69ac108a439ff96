"""Device and IP velocity: shared devices and addresses are where fraud rings show."""

from features.definitions import Aggregation, GroupBy, Op
from features.fraud.sources import payments

device_velocity = GroupBy(
    name="device",
    keys=["device_id"],
    source=payments,
    selects={"amount_usd": "amount * fx_rate", "card_id": "card_id", "customer_id": "customer_id"},
    aggregations=[
        Aggregation("amount_usd", Op.COUNT, windows=["1h", "1d", "7d"]),
        Aggregation("amount_usd", Op.SUM, windows=["1d", "7d"]),
        Aggregation("card_id", Op.APPROX_UNIQUE_COUNT, windows=["1h", "1d", "7d", "30d"]),
        Aggregation("customer_id", Op.APPROX_UNIQUE_COUNT, windows=["7d", "30d"]),
        Aggregation("ts", Op.FIRST),
    ],
)

ip_velocity = GroupBy(
    name="ip",
    keys=["ip"],
    source=payments,
    selects={"amount_usd": "amount * fx_rate", "card_id": "card_id", "device_id": "device_id"},
    aggregations=[
        Aggregation("amount_usd", Op.COUNT, windows=["10m", "1h", "1d"]),
        Aggregation("amount_usd", Op.SUM, windows=["1h", "1d"]),
        Aggregation("card_id", Op.APPROX_UNIQUE_COUNT, windows=["10m", "1h", "1d"]),
        Aggregation("device_id", Op.APPROX_UNIQUE_COUNT, windows=["1d", "7d"]),
    ],
)
