"""fraud_v1: the feature vector the fraud model reads for one payment request."""

from features.definitions import Join, JoinPart
from features.fraud.card import card_velocity
from features.fraud.customer import customer_velocity
from features.fraud.device import device_velocity, ip_velocity
from features.fraud.merchant import merchant_fraud, merchant_velocity
from features.fraud.sources import payment_requests

fraud_v1 = Join(
    name="fraud_v1",
    left=payment_requests,
    parts=[
        JoinPart(card_velocity),
        JoinPart(customer_velocity),
        JoinPart(merchant_velocity),
        JoinPart(merchant_fraud),
        JoinPart(device_velocity),
        JoinPart(ip_velocity),
    ],
    derivations={
        "amount_usd": "amount * fx_rate",
        "amount_vs_card_avg_30d": "amount * fx_rate / NULLIF(card_amount_usd_avg_30d, 0)",
        "amount_z_card_30d": "(amount * fx_rate - card_amount_usd_avg_30d) / NULLIF(card_amount_usd_stddev_30d, 0)",
        "card_decline_rate_1d": "card_is_declined_sum_1d / NULLIF(card_amount_usd_count_1d, 0)",
        "card_burst_ratio_10m_1d": "card_amount_usd_count_10m / NULLIF(card_amount_usd_count_1d, 0)",
        "is_foreign": "IF(country <> card_country, 1, 0)",
        "card_age_days": "CAST(ts - card_ts_first AS DOUBLE) / 86400000",
        "device_age_days": "CAST(ts - device_ts_first AS DOUBLE) / 86400000",
        "merchant_small_share_1h": "merchant_small_amount_sum_1h / NULLIF(merchant_amount_usd_count_1h, 0)",
        "hour_of_day": "hour(timestamp_millis(ts))",
    },
)
