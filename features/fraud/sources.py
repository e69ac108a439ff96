"""Event sources: payments (the request stream) and labels (chargebacks and confirmations, late)."""

from features.definitions import EventSource

REQUEST_SCHEMA = {
    "payment_id": "string",
    "event_id": "long",
    "ts": "long",
    "card_id": "string",
    "customer_id": "string",
    "merchant_id": "string",
    "merchant_category": "string",
    "device_id": "string",
    "ip": "string",
    "country": "string",
    "card_country": "string",
    "currency": "string",
    "amount": "double",
    "fx_rate": "double",
    "channel": "string",
}

payments = EventSource(
    table="payments",
    topic="payments",
    time_column="ts",
    tie_break="event_id",
    allowed_lateness="5m",
    schema={
        **REQUEST_SCHEMA,
        "status": "string",
        "arrival_ts": "long",
        "is_fraud": "long",
        "label_ts": "long",
    },
)

# What the decision sees: a payment before it is authorized (no status, no label).
payment_requests = EventSource(
    table="payments",
    topic="payments",
    time_column="ts",
    tie_break="event_id",
    schema=REQUEST_SCHEMA,
)

# A label arrives 30-60 days after its payment; `ts` is when it arrived.
labels = EventSource(
    table="labels",
    topic="labels",
    time_column="ts",
    tie_break="event_id",
    allowed_lateness="1h",
    schema={
        "payment_id": "string",
        "event_id": "long",
        "card_id": "string",
        "customer_id": "string",
        "merchant_id": "string",
        "ts": "long",
        "payment_ts": "long",
        "is_fraud": "long",
        "amount": "double",
    },
)
