"""The feature logger alone (no stores): key-hash sampling, partitioned parquet, never blocking or raising."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from features.consistency import LOG_COLUMNS
from serving.feature_log import FeatureLogger, key_fraction, partition_of
from serving.fetcher import FeatureVector

T0 = 1_709_251_200_000 + 5 * 3_600_000 + 17  # 2024-03-01 05:00:00.017 UTC


def _vec(at_ms: int, card: str) -> FeatureVector:
    return FeatureVector(
        "j",
        at_ms,
        {"card_id": card, "n": 3, "avg": 1.5, "hist": {"a": 1.0}, "last": ["x", "y"], "nan": float("nan")},
        timings_ms={"total": 1.0},
    )


def _log(logger: FeatureLogger, at_ms: int, card: str) -> bool:
    return logger.log(
        _vec(at_ms, card),
        {"card_id": card, "ts": at_ms},
        plan_hash="p",
        keys={"card": [card]},
        batch={"card": ("2024-02-29", T0 - 5 * 3_600_000)},
    )


def test_sampling_is_by_key_and_rows_land_in_hour_partitions(tmp_path: Path) -> None:
    cards = [f"c{i}" for i in range(400)]
    with FeatureLogger(tmp_path, sample_rate=0.25, flush_interval_s=0.05) as logger:
        for rep in range(3):
            for i, c in enumerate(cards):
                _log(logger, T0 + rep * 3_600_000 + i, c)
        assert logger.flush()
        stats = logger.stats()
    sampled = {c for c in cards if key_fraction([c]) < 0.25}
    assert 60 < len(sampled) < 140
    assert stats["sampled"] == 3 * len(sampled) and stats["dropped"] == 0 and stats["write_errors"] == 0
    files = sorted(tmp_path.rglob("part-*.parquet"))
    assert (
        {f.parent.relative_to(tmp_path).as_posix() for f in files}
        == {partition_of(T0 + h * 3_600_000) for h in range(3)}
        == {"date=2024-03-01/hour=05", "date=2024-03-01/hour=06", "date=2024-03-01/hour=07"}
    )
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    assert len(rows) == 3 * len(sampled)
    assert list(rows[0]) == list(LOG_COLUMNS)
    by_card: dict[str, int] = {}
    for r in rows:
        card = json.loads(r["request"])["card_id"]
        by_card[card] = by_card.get(card, 0) + 1
    assert set(by_card) == sampled and set(by_card.values()) == {3}  # every request of a sampled key
    values = json.loads(rows[0]["values"])
    assert values["hist"] == {"a": 1.0} and values["last"] == ["x", "y"] and values["nan"] != values["nan"]
    assert json.loads(rows[0]["batch"]) == {
        "card": {"version": "2024-02-29", "boundary_ms": T0 - 5 * 3_600_000}
    }
    assert len({r["log_id"] for r in rows}) == len(rows)


def test_a_slow_or_failing_sink_never_blocks_or_raises() -> None:
    release = threading.Event()
    got: list[Any] = []

    def slow(rows: list[dict[str, Any]]) -> None:
        release.wait(5)
        got.extend(rows)

    logger = FeatureLogger(slow, sample_rate=1.0, queue_size=4, batch_rows=1, flush_interval_s=0.01)
    started = time.perf_counter()
    results = [_log(logger, T0 + i, "c") for i in range(50)]
    assert time.perf_counter() - started < 0.5  # the request path never waits for the sink
    assert results.count(False) == logger.stats()["dropped"] > 0
    release.set()
    assert logger.flush()
    logger.close()
    assert len(got) == results.count(True)

    def broken(rows: list[dict[str, Any]]) -> None:
        raise OSError("disk full")

    with FeatureLogger(broken, sample_rate=1.0, flush_interval_s=0.01) as bad:
        assert _log(bad, T0, "c")
        assert bad.flush()
        assert bad.stats()["write_errors"] == 1
        # a value the encoder cannot serialize is still not the fetch's problem
        assert bad.log(_vec(T0, "c"), {"x": object()}, plan_hash="p", keys={"card": ["c"]}, batch={}) in (
            True,
            False,
        )
