"""A seeded synthetic payment stream for tests, benchmarks and demos (numpy + pyarrow only, vectorised).

:func:`generate` returns a :class:`Dataset` with two Arrow tables, ``payments`` (one row per payment, sorted by
``(ts, event_id)``) and ``labels`` (one row per payment, the ground truth as it becomes known, sorted by label
arrival time). The same seed gives byte-identical tables.

The shape is meant to look like card payments, and to hit the edges of the window semantics on purpose:

- Entities: customers own 1-3 cards, 1-2 usual devices and a home IP; card and merchant activity is Zipf-like
  (a few busy cards and merchants, a long tail). Most purchases are domestic; currencies follow the merchant's
  country, with a daily-jittered ``fx_rate`` to USD (``amount * fx_rate`` is the USD amount).
- Time: a diurnal rhythm (quiet nights, a lunch and an evening peak), in UTC.
- Fraud (``is_fraud = 1``, about 0.3-0.8 % of payments): card testing (bursts of tiny e-commerce amounts, some
  sent in the same millisecond, mostly declined), account takeover (a new device and IP in a foreign country,
  large amounts), stolen-card velocity bursts (many merchants within an hour), and one compromised merchant
  whose card-present customers later see foreign card-not-present fraud.
- Edges, deliberately: same-millisecond ties on one card (retries and split payments), events exactly on
  minute, hour and day boundaries, and late events (``arrival_ts - ts`` above 5 minutes, about 0.5 %).
- Nulls: card-present (``pos``) payments carry no ``device_id`` and no ``ip``.

``event_id`` is the arrival sequence number (what a Kafka offset would be): unique, and it is the declared
tie-break for events with equal ``ts``. Labels arrive ``label_delay_days`` after the payment (a chargeback for
fraud, the end of the dispute window otherwise).

>>> ds = generate(seed=1, days=1, events_per_day=2_000)
>>> ds.payments.num_rows == ds.labels.num_rows
True
>>> ds.payments.column_names[:4]
['payment_id', 'event_id', 'ts', 'arrival_ts']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.windows import DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS

#: 2024-03-01T00:00:00Z, a day boundary.
DEFAULT_START_MS = 1_709_251_200_000

#: Above this ``arrival_ts - ts`` an event is late (the default allowed lateness of a source).
LATE_AFTER_MS = 5 * MINUTE_MS

PAYMENTS_SCHEMA = pa.schema(
    [
        ("payment_id", pa.string()),
        ("event_id", pa.int64()),
        ("ts", pa.int64()),
        ("arrival_ts", pa.int64()),
        ("card_id", pa.string()),
        ("customer_id", pa.string()),
        ("merchant_id", pa.string()),
        ("merchant_category", pa.string()),
        ("device_id", pa.string()),
        ("ip", pa.string()),
        ("country", pa.string()),
        ("card_country", pa.string()),
        ("currency", pa.string()),
        ("amount", pa.float64()),
        ("fx_rate", pa.float64()),
        ("status", pa.string()),
        ("channel", pa.string()),
        ("is_fraud", pa.int64()),
        ("label_ts", pa.int64()),
    ]
)

LABELS_SCHEMA = pa.schema(
    [
        ("payment_id", pa.string()),
        ("event_id", pa.int64()),
        ("card_id", pa.string()),
        ("customer_id", pa.string()),
        ("merchant_id", pa.string()),
        ("ts", pa.int64()),
        ("payment_ts", pa.int64()),
        ("is_fraud", pa.int64()),
        ("amount", pa.float64()),
    ]
)

# Country -> (currency, share of customers and merchants).
_COUNTRIES: tuple[tuple[str, str, float], ...] = (
    ("US", "USD", 0.46),
    ("GB", "GBP", 0.09),
    ("DE", "EUR", 0.08),
    ("FR", "EUR", 0.06),
    ("CA", "CAD", 0.05),
    ("BR", "BRL", 0.05),
    ("IN", "INR", 0.05),
    ("JP", "JPY", 0.04),
    ("MX", "MXN", 0.04),
    ("ES", "EUR", 0.03),
    ("NL", "EUR", 0.02),
    ("AU", "AUD", 0.02),
    ("NG", "NGN", 0.01),
)
# Currency -> USD per unit (a plausible 2024 level; jittered per day).
_FX_USD: dict[str, float] = {
    "USD": 1.0,
    "GBP": 1.27,
    "EUR": 1.08,
    "CAD": 0.74,
    "BRL": 0.20,
    "INR": 0.012,
    "JPY": 0.0067,
    "MXN": 0.058,
    "AUD": 0.66,
    "NGN": 0.00065,
}
# Category -> (median USD amount, log-sd, share of e-commerce, share of merchants).
_CATEGORIES: tuple[tuple[str, float, float, float, float], ...] = (
    ("grocery", 42.0, 0.6, 0.10, 0.20),
    ("restaurants", 28.0, 0.5, 0.05, 0.18),
    ("fuel", 45.0, 0.35, 0.0, 0.08),
    ("pharmacy", 22.0, 0.6, 0.15, 0.06),
    ("fashion", 75.0, 0.7, 0.55, 0.12),
    ("electronics", 220.0, 0.9, 0.70, 0.08),
    ("travel", 380.0, 0.8, 0.85, 0.06),
    ("digital_goods", 12.0, 0.9, 1.0, 0.10),
    ("utilities", 85.0, 0.5, 0.90, 0.05),
    ("gambling", 90.0, 1.0, 1.0, 0.03),
    ("marketplace", 55.0, 0.9, 1.0, 0.04),
)
_DIGITAL = 7  # index of digital_goods: card testers' favourite
_STATUS = ("authorized", "declined")
_CHANNEL = ("ecom", "pos")

# Relative activity per hour of day (UTC): quiet night, lunch and evening peaks.
_HOURLY = np.array(
    [0.25, 0.15, 0.1, 0.08, 0.08, 0.12, 0.3, 0.55, 0.8, 0.9, 1.0, 1.1,
     1.25, 1.15, 1.0, 0.95, 1.0, 1.1, 1.25, 1.35, 1.3, 1.05, 0.75, 0.45]
)  # fmt: skip


@dataclass(frozen=True)
class Dataset:
    """The generated tables. ``payments`` is sorted by ``(ts, event_id)``, ``labels`` by ``(ts, event_id)``."""

    payments: pa.Table
    labels: pa.Table
    seed: int
    start_ms: int
    end_ms: int

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``payments.parquet`` and ``labels.parquet`` into ``directory`` (created if missing)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = (out / "payments.parquet", out / "labels.parquet")
        pq.write_table(self.payments, paths[0])
        pq.write_table(self.labels, paths[1])
        return paths

    def events_in_arrival_order(self) -> pa.Table:
        """The payments as a stream sees them: by ``arrival_ts``, then ``event_id`` (the arrival sequence)."""
        return events_in_arrival_order(self.payments)


def events_in_arrival_order(payments: pa.Table) -> pa.Table:
    """Sort a payments table by ``(arrival_ts, event_id)``."""
    return payments.sort_by([("arrival_ts", "ascending"), ("event_id", "ascending")])


@dataclass(frozen=True)
class _World:
    """The entities: customers, cards, devices, IPs and merchants, all as index arrays."""

    card_customer: np.ndarray  # card -> customer
    card_weight: np.ndarray  # card -> activity probability (sums to 1)
    cust_country: np.ndarray  # customer -> country index
    cust_devices: np.ndarray  # customer -> number of usual devices (1 or 2)
    merch_country: np.ndarray  # merchant -> country index
    merch_category: np.ndarray  # merchant -> category index
    merch_ecom_p: np.ndarray  # merchant -> probability a payment is e-commerce
    merch_pools: list[tuple[np.ndarray, np.ndarray]]  # country -> (merchants, cumulative weights)
    merch_cum: np.ndarray  # cumulative merchant weights over all merchants


@dataclass
class _Events:
    """Columns of events under construction (indices into the world and vocabularies)."""

    ts: np.ndarray
    card: np.ndarray
    merchant: np.ndarray
    device: np.ndarray  # -1: none (pos); < n_cust * 2: usual; above: a fraudster's device
    ip: np.ndarray  # -1: none; < n_cust: home IP; above: a fraudster's IP
    country: np.ndarray
    ecom: np.ndarray  # bool
    amount_usd: np.ndarray
    declined: np.ndarray  # bool
    fraud: np.ndarray  # bool

    @staticmethod
    def concat(parts: list[_Events]) -> _Events:
        return _Events(
            **{
                name: np.concatenate([getattr(p, name) for p in parts])
                for name in _Events.__dataclass_fields__
            }
        )

    def take(self, idx: np.ndarray) -> _Events:
        return _Events(**{name: getattr(self, name)[idx] for name in _Events.__dataclass_fields__})


def generate(
    seed: int = 7,
    start_ms: int = DEFAULT_START_MS,
    days: int = 3,
    events_per_day: int = 20_000,
    n_cards: int | None = None,
    n_merchants: int | None = None,
    label_delay_days: tuple[float, float] = (30, 60),
    late_fraction: float = 0.005,
    fraud_scale: float = 1.0,
) -> Dataset:
    """Generate ``days`` days of payments from ``start_ms`` (about ``events_per_day`` legitimate ones a day).

    ``n_cards`` defaults to one card per 25 payments, ``n_merchants`` to one merchant per 400 (at least 50 and
    20). ``fraud_scale`` multiplies the number of fraud episodes (1.0 gives roughly 0.3-0.8 % fraud).
    """
    if days <= 0 or events_per_day <= 0:
        raise ValueError(f"days={days} and events_per_day={events_per_day} must both be positive")
    lo_delay, hi_delay = label_delay_days
    if not 0 <= lo_delay <= hi_delay:
        raise ValueError(f"label_delay_days={label_delay_days!r} must be (low, high) with 0 <= low <= high")
    rng = np.random.default_rng(seed)
    n_legit = days * events_per_day
    n_cards = n_cards if n_cards is not None else max(50, n_legit // 25)
    n_merchants = n_merchants if n_merchants is not None else max(20, n_legit // 400)
    world = _make_world(rng, n_cards, n_merchants)
    end_ms = start_ms + days * DAY_MS

    legit = _legit_events(rng, world, n_legit, start_ms, days)
    scale = n_legit * fraud_scale
    parts = [
        legit,
        _card_testing(rng, world, _episodes(rng, scale * 1.0e-4), start_ms, end_ms),
        _account_takeover(rng, world, _episodes(rng, scale * 2.5e-4), start_ms, end_ms),
        _velocity_bursts(rng, world, _episodes(rng, scale * 1.5e-4), start_ms, end_ms),
        _compromised_merchant(rng, world, legit, scale, start_ms, end_ms),
    ]
    ev = _Events.concat(parts)
    ev = ev.take(np.flatnonzero((ev.ts >= start_ms) & (ev.ts < end_ms)))
    _snap_to_boundaries(rng, ev.ts, start_ms)
    ev = _add_same_ms_ties(rng, ev)
    return _assemble(rng, world, ev, seed, start_ms, end_ms, label_delay_days, late_fraction)


def _episodes(rng: np.random.Generator, expected: float) -> int:
    """At least one episode of each scenario, so small data still holds every kind of fraud."""
    return max(1, int(rng.poisson(expected)))


def _zipf_weights(rng: np.random.Generator, n: int, exponent: float, flatten: float) -> np.ndarray:
    """Zipf-like weights ``1 / (rank + flatten) ** exponent``, in a random order over the n entities."""
    w = 1.0 / (np.arange(n) + flatten) ** exponent
    w = w[rng.permutation(n)]
    return w / w.sum()


def _make_world(rng: np.random.Generator, n_cards: int, n_merchants: int) -> _World:
    cards_per_customer = rng.choice([1, 2, 3], size=n_cards, p=[0.55, 0.3, 0.15])
    cards_per_customer = cards_per_customer[np.cumsum(cards_per_customer) <= n_cards]
    short = n_cards - int(cards_per_customer.sum())
    cards_per_customer = np.concatenate([cards_per_customer, np.ones(short, dtype=np.int64)])
    n_cust = len(cards_per_customer)
    card_customer = np.repeat(np.arange(n_cust), cards_per_customer)

    country_p = np.array([c[2] for c in _COUNTRIES])
    country_p = country_p / country_p.sum()
    cust_country = rng.choice(len(_COUNTRIES), size=n_cust, p=country_p)
    cust_devices = rng.choice([1, 2], size=n_cust, p=[0.6, 0.4])

    merch_country = rng.choice(len(_COUNTRIES), size=n_merchants, p=country_p)
    cat_p = np.array([c[4] for c in _CATEGORIES])
    merch_category = rng.choice(len(_CATEGORIES), size=n_merchants, p=cat_p / cat_p.sum())
    cat_ecom = np.array([c[3] for c in _CATEGORIES])
    merch_ecom_p = np.clip(cat_ecom[merch_category] + rng.normal(0, 0.1, n_merchants), 0, 1)

    merch_w = _zipf_weights(rng, n_merchants, 1.05, 3.0)
    pools: list[tuple[np.ndarray, np.ndarray]] = []
    for c in range(len(_COUNTRIES)):
        members = np.flatnonzero(merch_country == c)
        cum = np.cumsum(merch_w[members])
        pools.append((members, cum / cum[-1] if len(members) else cum))
    return _World(
        card_customer=card_customer,
        card_weight=_zipf_weights(rng, n_cards, 1.1, 8.0),
        cust_country=cust_country,
        cust_devices=cust_devices,
        merch_country=merch_country,
        merch_category=merch_category,
        merch_ecom_p=merch_ecom_p,
        merch_pools=pools,
        merch_cum=np.cumsum(merch_w),
    )


def _diurnal_ts(rng: np.random.Generator, n: int, start_ms: int, days: int) -> np.ndarray:
    """``n`` event times over ``days`` days following the hourly rhythm, at millisecond resolution."""
    day = rng.integers(0, days, n)
    hour = rng.choice(24, size=n, p=_HOURLY / _HOURLY.sum())
    within = rng.integers(0, HOUR_MS, n)
    return start_ms + day * DAY_MS + hour * HOUR_MS + within


def _pick_merchants(
    rng: np.random.Generator, world: _World, home: np.ndarray, domestic: np.ndarray
) -> np.ndarray:
    """A Zipf-weighted merchant per event: from the home country's pool where ``domestic``, else from all."""
    merchant = np.searchsorted(world.merch_cum, rng.random(len(home)) * world.merch_cum[-1])
    merchant = np.minimum(merchant, len(world.merch_cum) - 1)
    for c, (members, cum) in enumerate(world.merch_pools):
        if len(members) == 0:
            continue
        sel = np.flatnonzero(domestic & (home == c))
        if len(sel):
            merchant[sel] = members[np.minimum(np.searchsorted(cum, rng.random(len(sel))), len(members) - 1)]
    return merchant


def _amounts_usd(rng: np.random.Generator, world: _World, merchant: np.ndarray) -> np.ndarray:
    median = np.array([c[1] for c in _CATEGORIES])[world.merch_category[merchant]]
    sigma = np.array([c[2] for c in _CATEGORIES])[world.merch_category[merchant]]
    return np.exp(np.log(median) + sigma * rng.standard_normal(len(merchant)))


def _legit_events(rng: np.random.Generator, world: _World, n: int, start_ms: int, days: int) -> _Events:
    card = rng.choice(len(world.card_weight), size=n, p=world.card_weight)
    cust = world.card_customer[card]
    home = world.cust_country[cust]
    merchant = _pick_merchants(rng, world, home, rng.random(n) < 0.93)
    ecom = rng.random(n) < world.merch_ecom_p[merchant]
    # E-commerce from a usual device and the home IP (sometimes travelling: foreign IP, same device).
    device = np.where(ecom, cust * 2 + (rng.random(n) < 0.3) * (world.cust_devices[cust] - 1), -1)
    travelling = ecom & (rng.random(n) < 0.01)
    n_cust = len(world.cust_country)
    ip = np.where(ecom, cust, -1)
    ip = np.where(travelling, n_cust + rng.integers(0, 10 * n_cust + 1000, n), ip)
    country = np.where(ecom, home, world.merch_country[merchant])
    country = np.where(travelling, rng.integers(0, len(_COUNTRIES), n), country)
    return _Events(
        ts=_diurnal_ts(rng, n, start_ms, days),
        card=card,
        merchant=merchant,
        device=device,
        ip=ip,
        country=country,
        ecom=ecom,
        amount_usd=_amounts_usd(rng, world, merchant),
        declined=rng.random(n) < 0.03,
        fraud=np.zeros(n, dtype=bool),
    )


def _fraud_block(
    rng: np.random.Generator,
    world: _World,
    card: np.ndarray,
    ts: np.ndarray,
    merchant: np.ndarray,
    amount_usd: np.ndarray,
    decline_p: float,
    new_identity: np.ndarray,
) -> _Events:
    """Card-not-present fraud events: a fraudster's device and IP per episode, in a foreign country."""
    n = len(card)
    n_cust = len(world.cust_country)
    home = world.cust_country[world.card_customer[card]]
    foreign = (home + 1 + rng.integers(0, len(_COUNTRIES) - 1, n)) % len(_COUNTRIES)
    # One identity per episode: new_identity holds an episode number per event.
    ident_dev = n_cust * 2 + 1_000_000 + new_identity
    ident_ip = n_cust + 10 * n_cust + 1000 + new_identity
    _, first, inverse = np.unique(new_identity, return_index=True, return_inverse=True)
    episode_country = foreign[first][inverse]
    return _Events(
        ts=ts,
        card=card,
        merchant=merchant,
        device=ident_dev,
        ip=ident_ip,
        country=episode_country,
        ecom=np.ones(n, dtype=bool),
        amount_usd=amount_usd,
        declined=rng.random(n) < decline_p,
        fraud=np.ones(n, dtype=bool),
    )


def _episode_layout(
    rng: np.random.Generator, n_episodes: int, size_lo: int, size_hi: int, start_ms: int, end_ms: int
) -> tuple[np.ndarray, np.ndarray]:
    """(episode number per event, episode start time per event) for episodes of ``size_lo..size_hi`` events."""
    sizes = rng.integers(size_lo, size_hi + 1, n_episodes)
    episode = np.repeat(np.arange(n_episodes), sizes)
    t0 = rng.integers(start_ms, end_ms - 4 * HOUR_MS, n_episodes)
    return episode, t0[episode]


def _card_testing(rng: np.random.Generator, world: _World, n_ep: int, start_ms: int, end_ms: int) -> _Events:
    """Bursts of 8-40 tiny e-commerce charges on one card within minutes; several in the same millisecond."""
    episode, t0 = _episode_layout(rng, n_ep, 8, 40, start_ms, end_ms)
    card = rng.integers(0, len(world.card_weight), n_ep)[episode]
    n = len(episode)
    ts = t0 + rng.integers(0, 4 * MINUTE_MS, n)
    # Bots fire in parallel: a third of the charges share the millisecond of the previous one.
    order = np.lexsort((ts, episode))
    ts, episode = ts[order], episode[order]
    same = np.concatenate([[False], (rng.random(n - 1) < 0.33) & (episode[1:] == episode[:-1])])
    idx = np.arange(n)
    last_new = np.maximum.accumulate(np.where(~same, idx, 0))
    ts = ts[last_new]
    digital = np.flatnonzero(world.merch_category == _DIGITAL)
    pool = digital if len(digital) else np.arange(len(world.merch_category))
    merchant = pool[rng.integers(0, len(pool), n_ep)][episode]
    amount = rng.choice([0.5, 1.0, 1.0, 1.99, 2.0, 0.99], size=n) + np.round(rng.random(n) * 0.5, 2)
    return _fraud_block(rng, world, card, ts, merchant, amount, 0.6, episode)


def _account_takeover(
    rng: np.random.Generator, world: _World, n_ep: int, start_ms: int, end_ms: int
) -> _Events:
    """A taken-over account: 2-6 large e-commerce payments from a new device and a foreign IP within 2 hours."""
    episode, t0 = _episode_layout(rng, n_ep, 2, 6, start_ms, end_ms)
    card = rng.integers(0, len(world.card_weight), n_ep)[episode]
    n = len(episode)
    ts = t0 + rng.integers(0, 2 * HOUR_MS, n)
    ecom_merchants = np.flatnonzero(world.merch_ecom_p > 0.5)
    pool = ecom_merchants if len(ecom_merchants) else np.arange(len(world.merch_category))
    merchant = pool[rng.integers(0, len(pool), n)]
    amount = np.exp(np.log(900.0) + 0.6 * rng.standard_normal(n))
    return _fraud_block(rng, world, card, ts, merchant, amount, 0.2, episode + 100_000)


def _velocity_bursts(
    rng: np.random.Generator, world: _World, n_ep: int, start_ms: int, end_ms: int
) -> _Events:
    """A stolen card spent fast: 5-15 payments at different merchants within an hour."""
    episode, t0 = _episode_layout(rng, n_ep, 5, 15, start_ms, end_ms)
    card = rng.integers(0, len(world.card_weight), n_ep)[episode]
    n = len(episode)
    ts = t0 + rng.integers(0, HOUR_MS, n)
    merchant = rng.integers(0, len(world.merch_category), n)
    amount = np.exp(np.log(180.0) + 0.7 * rng.standard_normal(n))
    return _fraud_block(rng, world, card, ts, merchant, amount, 0.3, episode + 200_000)


def _compromised_merchant(
    rng: np.random.Generator, world: _World, legit: _Events, scale: float, start_ms: int, end_ms: int
) -> _Events:
    """Cards used in person at one compromised merchant in the first half later see foreign online fraud."""
    half = start_ms + (end_ms - start_ms) // 2
    pos_first_half = ~legit.ecom & (legit.ts < half)
    counts = np.bincount(legit.merchant[pos_first_half], minlength=len(world.merch_category))
    # A mid-sized merchant (not the busiest): its victims are a cluster, not the whole population.
    ranked = np.argsort(-counts)
    busy = ranked[counts[ranked] > 0]
    if len(busy) == 0:
        return legit.take(np.zeros(0, dtype=np.int64))
    merchant = busy[min(len(busy) - 1, len(busy) // 4)]
    visits = np.flatnonzero(pos_first_half & (legit.merchant == merchant))
    n_victims = min(len(visits), max(1, int(rng.poisson(scale * 3e-4))))
    chosen = rng.choice(visits, size=n_victims, replace=False)
    sizes = rng.integers(1, 5, n_victims)
    episode = np.repeat(np.arange(n_victims), sizes)
    ts = legit.ts[chosen][episode] + rng.integers(2 * HOUR_MS, 2 * DAY_MS, len(episode))
    n = len(episode)
    card = legit.card[chosen][episode]
    other = rng.integers(0, len(world.merch_category), n)
    amount = np.exp(np.log(250.0) + 0.8 * rng.standard_normal(n))
    return _fraud_block(rng, world, card, ts, other, amount, 0.25, episode + 300_000)


def _snap_to_boundaries(rng: np.random.Generator, ts: np.ndarray, start_ms: int) -> None:
    """Move a few events exactly onto minute, hour and day boundaries (in place; never before ``start``)."""
    n = len(ts)
    for size, share, least in ((MINUTE_MS, 0.004, 8), (HOUR_MS, 0.0015, 5), (DAY_MS, 0.0005, 3)):
        k = min(n, max(least, int(n * share)))
        idx = rng.choice(n, size=k, replace=False)
        ts[idx] = np.maximum(ts[idx] // size * size, start_ms)


def _add_same_ms_ties(rng: np.random.Generator, ev: _Events) -> _Events:
    """Duplicate ~0.6 % of events on the same card at the same millisecond.

    Half are retries (same merchant and amount, so ``(ts, value)`` ties and only the tie-break orders them),
    half are split payments at the same instant with another amount.
    """
    n = len(ev.ts)
    k = min(n, max(10, int(n * 0.006)))
    src = rng.choice(n, size=k, replace=False)
    dup = ev.take(src)
    split = rng.random(k) < 0.5
    dup.amount_usd = np.where(split, dup.amount_usd * rng.uniform(0.2, 1.5, k), dup.amount_usd)
    dup.declined = np.where(split, dup.declined, rng.random(k) < 0.5)
    # A few triples: equal ts three times.
    triple = dup.take(np.flatnonzero(rng.random(k) < 0.2))
    return _Events.concat([ev, dup, triple])


def _assemble(
    rng: np.random.Generator,
    world: _World,
    ev: _Events,
    seed: int,
    start_ms: int,
    end_ms: int,
    label_delay_days: tuple[float, float],
    late_fraction: float,
) -> Dataset:
    n = len(ev.ts)
    # Arrival: a lognormal transport delay (median ~250 ms), and a late tail beyond the allowed lateness.
    delay = np.round(np.exp(np.log(250.0) + 0.9 * rng.standard_normal(n))).astype(np.int64)
    late = rng.random(n) < late_fraction
    delay = np.where(
        late, LATE_AFTER_MS + 1 + rng.integers(0, 3 * HOUR_MS, n), np.minimum(delay, 60 * SECOND_MS)
    )
    arrival = ev.ts + delay
    # event_id = the arrival sequence (a Kafka offset); ties in arrival broken by a random key, seeded.
    arrival_order = np.lexsort((rng.random(n), arrival))
    event_id = np.empty(n, dtype=np.int64)
    event_id[arrival_order] = np.arange(n, dtype=np.int64)
    order = np.lexsort((event_id, ev.ts))
    ev = ev.take(order)
    event_id, arrival = event_id[order], arrival[order]

    cust = world.card_customer[ev.card]
    currency_of_country = np.array([_list_index(sorted(_FX_USD), c[1]) for c in _COUNTRIES])
    currency = currency_of_country[world.merch_country[ev.merchant]]
    day = (ev.ts - start_ms) // DAY_MS
    n_days = int((end_ms - start_ms) // DAY_MS) + 1
    base_fx = np.array([_FX_USD[c] for c in sorted(_FX_USD)])
    fx_table = base_fx[None, :] * (1 + 0.005 * rng.standard_normal((n_days, len(base_fx))))
    fx_table[:, sorted(_FX_USD).index("USD")] = 1.0
    fx_table = np.round(fx_table, 6)
    fx_rate = fx_table[day, currency]
    amount = np.maximum(np.round(ev.amount_usd / fx_rate, 2), 0.01)

    delay_ms = rng.uniform(label_delay_days[0] * DAY_MS, label_delay_days[1] * DAY_MS, n).astype(np.int64)
    label_ts = ev.ts + delay_ms

    n_cust = len(world.cust_country)
    country_codes = [c[0] for c in _COUNTRIES]
    payment_id = pa.array([f"pay_{seed:x}_{i:09d}" for i in event_id.tolist()], pa.string())
    columns = {
        "payment_id": payment_id,
        "event_id": pa.array(event_id, pa.int64()),
        "ts": pa.array(ev.ts, pa.int64()),
        "arrival_ts": pa.array(arrival, pa.int64()),
        "card_id": _ids("card_", ev.card),
        "customer_id": _ids("cust_", cust),
        "merchant_id": _ids("m_", ev.merchant),
        "merchant_category": _vocab([c[0] for c in _CATEGORIES], world.merch_category[ev.merchant]),
        "device_id": _device_ids(ev.device, n_cust),
        "ip": _ips(ev.ip),
        "country": _vocab(country_codes, ev.country),
        "card_country": _vocab(country_codes, world.cust_country[cust]),
        "currency": _vocab(sorted(_FX_USD), currency),
        "amount": pa.array(amount, pa.float64()),
        "fx_rate": pa.array(fx_rate, pa.float64()),
        "status": _vocab(list(_STATUS), ev.declined.astype(np.int64)),
        "channel": _vocab(list(_CHANNEL), (~ev.ecom).astype(np.int64)),
        "is_fraud": pa.array(ev.fraud.astype(np.int64), pa.int64()),
        "label_ts": pa.array(label_ts, pa.int64()),
    }
    payments = pa.table(columns, schema=PAYMENTS_SCHEMA)
    labels = pa.table(
        {
            "payment_id": payments["payment_id"],
            "event_id": payments["event_id"],
            "card_id": payments["card_id"],
            "customer_id": payments["customer_id"],
            "merchant_id": payments["merchant_id"],
            "ts": payments["label_ts"],
            "payment_ts": payments["ts"],
            "is_fraud": payments["is_fraud"],
            "amount": payments["amount"],
        },
        schema=LABELS_SCHEMA,
    ).sort_by([("ts", "ascending"), ("event_id", "ascending")])
    return Dataset(payments=payments, labels=labels, seed=seed, start_ms=start_ms, end_ms=end_ms)


def _list_index(items: list[str], item: str) -> int:
    return items.index(item)


def _vocab(words: list[str], idx: np.ndarray) -> pa.Array:
    """Strings by index into a small vocabulary (-1 gives null)."""
    indices = pa.array(idx, pa.int64(), mask=idx < 0)
    return pc.take(pa.array(words, pa.string()), indices)


def _ids(prefix: str, idx: np.ndarray) -> pa.Array:
    """``prefix`` + a zero-padded number, built once per distinct entity then gathered."""
    uniq, inverse = np.unique(idx, return_inverse=True)
    words = [f"{prefix}{i:06d}" for i in uniq.tolist()]
    return pc.take(pa.array(words, pa.string()), pa.array(inverse.astype(np.int64)))


def _device_ids(device: np.ndarray, n_cust: int) -> pa.Array:
    """Usual devices ``dev_<customer>_<n>``, fraudsters' devices ``dev_x<episode>``, null for pos."""
    valid = device >= 0
    uniq, inverse = np.unique(device[valid], return_inverse=True)
    words = [
        f"dev_{d // 2:06d}_{d % 2}" if d < n_cust * 2 else f"dev_x{d - n_cust * 2:07d}" for d in uniq.tolist()
    ]
    full = np.full(len(device), -1, dtype=np.int64)
    full[valid] = inverse
    return _vocab(words, full)


def _ips(ip: np.ndarray) -> pa.Array:
    """Dotted IPv4 strings derived from an index (a stable hash, so neighbours do not share a subnet)."""
    valid = ip >= 0
    uniq, inverse = np.unique(ip[valid], return_inverse=True)
    h = (uniq.astype(np.uint64) * np.uint64(2654435761) + np.uint64(0x9E3779B9)) & np.uint64(0xFFFFFFFF)
    octets = [(int(x) >> 24 & 0xFF, int(x) >> 16 & 0xFF, int(x) >> 8 & 0xFF, int(x) & 0xFF) for x in h]
    words = [f"{max(a, 1)}.{b}.{c}.{max(d, 1)}" for a, b, c, d in octets]
    full = np.full(len(ip), -1, dtype=np.int64)
    full[valid] = inverse
    return _vocab(words, full)


def describe(ds: Dataset) -> dict[str, float | int]:
    """Counts that tests and benchmarks check: fraud share, same-card ties, boundary events, late events.

    ``same_ms_card_ties`` counts events that share ``(card_id, ts)`` with another event.
    """
    p = ds.payments
    ts = p["ts"].to_numpy()
    card = pc.dictionary_encode(p["card_id"]).combine_chunks().indices.to_numpy().astype(np.int64)
    key = card * (ds.end_ms - ds.start_ms + 1) + (ts - ds.start_ms)
    _, counts = np.unique(key, return_counts=True)
    late = (p["arrival_ts"].to_numpy() - ts) > LATE_AFTER_MS
    fraud = p["is_fraud"].to_numpy()
    return {
        "events": p.num_rows,
        "fraud": int(fraud.sum()),
        "fraud_share": float(fraud.mean()) if p.num_rows else 0.0,
        "declined_share": float(pc.mean(pc.equal(p["status"], "declined").cast(pa.int64())).as_py() or 0.0),
        "same_ms_card_ties": int(counts[counts > 1].sum()),
        "on_minute": int((ts % MINUTE_MS == 0).sum()),
        "on_hour": int((ts % HOUR_MS == 0).sum()),
        "on_day": int((ts % DAY_MS == 0).sum()),
        "late": int(late.sum()),
        "late_share": float(late.mean()) if p.num_rows else 0.0,
        "cards": len(np.unique(card)),
        "merchants": int(pc.count_distinct(p["merchant_id"]).as_py()),
    }
