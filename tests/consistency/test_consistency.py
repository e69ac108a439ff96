"""The consistency checker end to end: serve (memcached + LMDB) with feature logging, then `nightly` / `consistency`.

The serving world is built from seeded payments the way the stream would have seen them: batch state up to the
day boundary, and before each request the stream holds exactly the events past the boundary that had *arrived*
(``arrival_ts``) before the request and within the allowed lateness. Some cards get 2.5 minutes of stream lag
(their ``arrival_ts`` is moved, still on time), and some requests come one second after such a card's payment,
so the online vector cannot contain it yet.

* healthy fetcher, via ``run_nightly`` (upload + consistency): 0 unexplained; the lagged requests mismatch and
  are classified ``stream_lag``; report + JSON written and rendered in headless Chromium (screenshot in
  ``test-artifacts/``).
* a fetcher that drops the oldest stream tile, via ``tessera consistency`` (CLI): caught, ``unexplained``,
  exit code 1.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from features.compile import compile_repo
from features.consistency import LAG, UNEXPLAINED
from features.plan import Plan
from features.synthetic import LATE_AFTER_MS, generate
from features.windows import DAY_MS, align
from kvstore.embedded import EmbeddedBulkStore
from kvstore.memcached import MemcachedStore
from kvstore.services import start_memcached_cluster
from serving.feature_log import FeatureLogger
from serving.fetcher import Fetcher
from serving.loader import project, write_batch, write_stream
from tessera.nightly import run_nightly

pytestmark = [pytest.mark.spark, pytest.mark.services, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
LAG_MS = 150_000


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


class DropsOldestTile(Fetcher):
    """The injected online bug: the oldest stream tile of every part is lost."""

    def _read_stream(self, reads: list[Any], t: int, now: int, deadline: float) -> None:
        super()._read_stream(reads, t, now, deadline)
        for r in reads:
            if len(r.tiles) > 1:
                del r.tiles[min(r.tiles, key=lambda k: (k[1], k[0]))]


@pytest.fixture(scope="module")
def plan() -> Plan:
    return compile_repo(ROOT / "features" / "fraud")


@pytest.fixture(scope="module")
def world(plan: Plan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("consistency")
    ds = generate(seed=5, days=3, events_per_day=500)
    boundary = align(ds.start_ms, DAY_MS) + 2 * DAY_MS
    cards = sorted(set(ds.payments.column("card_id").to_pylist()))
    lagged = set(random.Random(3).sample(cards, len(cards) // 4))
    pay = ds.payments
    ts, arr = pay.column("ts").to_pylist(), pay.column("arrival_ts").to_pylist()
    new_arr = [
        max(a, t + LAG_MS) if c in lagged else a
        for c, t, a in zip(pay.column("card_id").to_pylist(), ts, arr, strict=True)
    ]
    pay = pay.set_column(
        pay.schema.get_field_index("arrival_ts"), "arrival_ts", pa.array(new_arr, pa.int64())
    )
    offline = tmp / "offline"
    offline.mkdir()
    import pyarrow.parquet as pq

    pq.write_table(pay, offline / "payments.parquet")
    pq.write_table(ds.labels, offline / "labels.parquet")
    raw = {"payments": pay.to_pylist(), "labels": ds.labels.to_pylist()}

    join = plan.join("fraud_v1")
    cols = list(join.left.schema)
    day3 = [r for r in raw["payments"] if boundary <= r["ts"] < boundary + DAY_MS]
    rng = random.Random(1)
    healthy = [{c: r[c] for c in cols} for r in rng.sample(day3, 30)]
    lag_src = [r for r in day3 if r["card_id"] in lagged and r["arrival_ts"] - r["ts"] <= LATE_AFTER_MS]
    lag_reqs = [dict({c: r[c] for c in cols}, ts=r["ts"] + 1_000) for r in rng.sample(lag_src, 8)]
    requests = sorted(healthy + lag_reqs, key=lambda r: r["ts"])

    nodes = start_memcached_cluster(1)
    bulk = EmbeddedBulkStore(tmp / "bulk")
    stream = MemcachedStore([n.address for n in nodes])
    by_key_raw: dict[str, dict[tuple[Any, ...], list[dict[str, Any]]]] = {}
    for part in join.parts:
        gb = plan.group_by(part.group_by)
        write_batch(bulk, gb, project(gb, raw[gb.source.table]), boundary, "2024-03-02")
        grouped: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        for r in raw[gb.source.table]:
            grouped[tuple(r.get(k) for k in gb.keys)].append(r)
        by_key_raw[gb.name] = grouped

    clock = Clock(boundary)
    log_ok, log_bug = tmp / "log_ok", tmp / "log_bug"
    ok_logger = FeatureLogger(log_ok, sample_rate=1.0)
    bug_logger = FeatureLogger(log_bug, sample_rate=1.0)
    healthy_fetcher = Fetcher(plan, (bulk, stream), now_ms=clock, logger=ok_logger)
    buggy_fetcher = DropsOldestTile(plan, (bulk, stream), now_ms=clock, logger=bug_logger)
    for req in requests:
        t = req["ts"]
        clock.ms = t
        for part in join.parts:  # the stream's state at t: arrived, on time, past the boundary
            gb = plan.group_by(part.group_by)
            key = tuple(req[part.key_map[k]] for k in gb.keys)
            seen = [
                e
                for e in by_key_raw[gb.name].get(key, [])
                if e["ts"] >= boundary
                and e.get("arrival_ts", e["ts"]) < t
                and e.get("arrival_ts", e["ts"]) - e["ts"] <= gb.source.allowed_lateness_ms
            ]
            if seen:
                write_stream(stream, gb, project(gb, seen), boundary, t)
        assert not healthy_fetcher.fetch("fraud_v1", req).degraded
        buggy_fetcher.fetch("fraud_v1", req)
    ok_logger.close()
    bug_logger.close()
    assert ok_logger.stats()["written"] == bug_logger.stats()["written"] == len(requests)
    stream.close()
    bulk.close()
    for n in nodes:
        n.stop()
    date = pc.strftime(pa.scalar(boundary * 1000, pa.timestamp("us", tz="UTC")), format="%Y-%m-%d").as_py()
    yield {
        "tmp": tmp,
        "offline": offline,
        "date": date,
        "log_ok": log_ok,
        "log_bug": log_bug,
        "lag_ts": {r["ts"] for r in lag_reqs},
        "requests": requests,
    }


def _screenshot(html: Path, png: Path) -> None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip(
            "no chromium binary (apt-get install -y chromium): the report was written but not rendered"
        )
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--hide-scrollbars",
                "--window-size=1280,2200",
                f"--screenshot={png}",
                html.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )
    assert png.exists() and png.stat().st_size > 20_000


def test_nightly_on_healthy_data_has_no_unexplained_and_classifies_lag(
    plan: Plan, world: dict[str, Any], spark: Any
) -> None:
    tmp = world["tmp"]
    sources = {t: str(world["offline"] / f"{t}.parquet") for t in ("payments", "labels")}
    with EmbeddedBulkStore(tmp / "nightly_bulk") as store:
        result = run_nightly(
            plan,
            world["date"],
            sources,
            store,
            world["log_ok"],
            tmp / "reports",
            joins=["fraud_v1"],
            spark=spark,
        )
        assert {u["group_by"] for u in result["uploads"]} == {p.group_by for p in plan.join("fraud_v1").parts}
    assert not result["exceeded"], result
    check = result["checks"]["fraud_v1"]
    summary = json.loads(Path(check["report"]).with_name("summary.json").read_text())
    assert summary["rows"] == len(world["requests"])
    assert summary["unexplained"] == 0, summary["examples"]
    assert summary["causes"].get(LAG, 0) > 0, summary["causes"]
    lagged_rows = {e["log_id"] for e in summary["examples"] if e["cause"] == LAG}
    assert lagged_rows
    per_col = {c["name"]: c for c in summary["columns"]}
    assert per_col["card_amount_usd_count_1h"]["causes"].get(LAG, 0) >= 1
    assert per_col["card_amount_usd_count_1h"]["diff"]["min"] < 0  # online misses the lagged payment
    assert all(c["total"] == summary["rows"] for c in summary["columns"])
    assert summary["hours"] and summary["mismatch_rate"] < 0.25  # 8 of 38 requests are lagged on purpose
    html = Path(check["report"])
    assert (
        "data:image/png;base64," in html.read_text()
        and "http" not in html.read_text().split("<body>")[1][:2000]
    )
    _screenshot(html, ARTIFACTS / "consistency_report_healthy.png")


def test_dropped_tile_bug_is_caught_as_unexplained_by_the_cli(
    plan: Plan, world: dict[str, Any], spark: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessera.cli import app

    out = world["tmp"] / "cli_reports"
    monkeypatch.setenv("TESSERA_OFFLINE_DIR", str(world["offline"]))
    monkeypatch.setenv("TESSERA_REPO", str(ROOT / "features" / "fraud"))
    res = CliRunner().invoke(
        app,
        [
            "consistency",
            "--join",
            "fraud_v1",
            "--date",
            world["date"],
            "--log-dir",
            str(world["log_bug"]),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 1, res.output
    summary = json.loads((out / "fraud_v1" / world["date"] / "summary.json").read_text())
    assert summary["exceeded"] and summary["unexplained"] > 0, summary["causes"]
    assert summary["causes"][UNEXPLAINED] >= summary["inconsistent"] // 2
    assert any("unexplained" in r for r in summary["reasons"])
    _screenshot(out / "fraud_v1" / world["date"] / "report.html", ARTIFACTS / "consistency_report_bug.png")
