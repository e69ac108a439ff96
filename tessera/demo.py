"""``tessera demo``: the story end to end on embedded defaults, with a summary at each step.

Everything it makes lives under one folder (default ``.data/demo``); every process it starts it stops.
Running it twice in a row starts from a clean folder each time.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from features.compile import compile_repo
from features.plan import Plan
from features.reference import GroupByIndex, join_features
from features.synthetic import Dataset, generate

console = Console()
ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def step(n: int, title: str) -> Iterator[None]:
    console.rule(f"[bold]{n}. {title}")
    started = time.perf_counter()
    yield
    console.print(f"[dim]   ({time.perf_counter() - started:.1f} s)[/]")


def _sample_requests(payments: pa.Table, n: int, seed: int = 11) -> list[dict[str, Any]]:
    """The last ``n`` payments of the data (the most history behind them), spread over cards."""
    ts = payments.column("ts").to_numpy()
    order = ts.argsort()[-n * 4 :: 4]
    return payments.take(pa.array(order)).to_pylist()


def run_demo(
    data_dir: Path,
    *,
    days: int = 3,
    events_per_day: int = 20_000,
    sample: int = 200,
    services: Callable[[ExitStack, Path, Dataset], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the demo; return a summary (also used by the tests)."""
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    summary: dict[str, Any] = {"data_dir": str(data_dir)}

    with step(1, "Generate seeded synthetic payments with fraud scenarios and delayed labels"):
        dataset = generate(seed=7, days=days, events_per_day=events_per_day)
        dataset.write(data_dir / "offline")
        payments = dataset.payments
        n_fraud = int(sum(payments.column("is_fraud").to_pylist()))
        console.print(
            f"   {payments.num_rows:,} payments over {days} days, {n_fraud} fraudulent "
            f"({100 * n_fraud / payments.num_rows:.2f} %), {dataset.labels.num_rows:,} labels "
            f"-> {data_dir / 'offline'}"
        )
        summary["payments"] = payments.num_rows

    with step(2, "Validate and compile the fraud feature repo"):
        plan: Plan = compile_repo(ROOT / "features" / "fraud")
        (data_dir / "plan.json").write_text(plan.to_json())
        join = plan.join("fraud_v1")
        n_features = sum(len(p.features) for p in join.parts) + len(join.derivations)
        console.print(
            f"   plan {plan.plan_hash}: {len(plan.group_bys)} GroupBys, Join fraud_v1 with "
            f"{n_features} features -> {data_dir / 'plan.json'}"
        )
        summary["features"] = n_features

    with ExitStack() as stack:
        if services is not None:
            with step(3, "Start the broker and memcached; replay the history into Kafka"):
                summary.update(services(stack, data_dir, dataset))

        with step(4, "Point-in-time features for recent payments (reference fold of the plan)"):
            sources = {"payments": payments, "labels": dataset.labels}
            started = time.perf_counter()
            indexes = {
                gb.name: GroupByIndex(gb, sources[gb.source.table].to_pylist())
                for gb in plan.group_bys
                if gb.name in {p.group_by for p in join.parts}
            }
            requests = _sample_requests(payments, sample)
            rows = join_features(join, indexes, requests)
            elapsed = time.perf_counter() - started
            out = data_dir / "fraud_v1_sample.parquet"
            pq.write_table(pa.Table.from_pylist([_flat(r) for r in rows]), out)
            table = Table(
                "payment",
                "card 1h count",
                "card 1h sum $",
                "card 30d merchants",
                "z-score 30d",
                "merchant fraud 30d(-7d)",
                box=None,
            )
            for r in rows[:8]:
                table.add_row(
                    str(r["payment_id"]),
                    str(r["card_amount_usd_count_1h"]),
                    _num(r["card_amount_usd_sum_1h"]),
                    str(r["card_merchant_id_approx_unique_count_30d"]),
                    _num(r["amount_z_card_30d"]),
                    _num(r["merchant_fraud_is_fraud_avg_30d_off7d"]),
                )
            console.print(table)
            console.print(f"   {len(rows)} requests x {n_features} features in {elapsed:.1f} s -> {out}")
            summary["sample_rows"] = len(rows)

    console.rule("[bold green]done")
    console.print(f"Everything the demo made is under {data_dir}")
    return summary


def local_services(stack: ExitStack, data_dir: Path, dataset: Dataset) -> dict[str, Any]:
    """Start a Kafka-protocol broker and three memcached servers on loopback (stopped when ``stack``
    closes) and replay the payments and labels into their topics, in arrival order."""
    from flink_jobs.broker import create_topics, start_broker
    from flink_jobs.replay import replay
    from kvstore.services import start_memcached_cluster

    broker = start_broker(pid_file=data_dir / "services" / "broker.pid")
    stack.callback(broker.stop)
    memcached = start_memcached_cluster(3)
    for server in memcached:
        stack.callback(server.stop)
    console.print(
        f"   broker {broker.bootstrap} (PID {broker.pid}, ready in {broker.startup_s:.2f} s); memcached "
        + ", ".join(f"{m.address} (PID {m.pid})" for m in memcached)
    )
    create_topics(broker.bootstrap, {"payments": 4, "labels": 2, "payments.late": 1, "payments.dlq": 1})
    sent = replay(dataset.payments, "payments", broker.bootstrap, key="card_id", arrival_time="arrival_ts")
    labels = replay(dataset.labels, "labels", broker.bootstrap, key="merchant_id")
    console.print(
        f"   replayed {sent.events:,} payments ({sent.events_per_s:,.0f}/s) and {labels.events:,} labels "
        "into Kafka, keyed by entity, record time = event time"
    )
    return {
        "bootstrap": broker.bootstrap,
        "memcached": [m.address for m in memcached],
        "replayed": sent.events,
    }


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:,.2f}"


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """Maps and lists as strings, so one parquet schema holds every feature."""
    return {k: (str(v) if isinstance(v, dict | list) else v) for k, v in row.items()}
