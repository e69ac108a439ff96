"""The Flink job's pure parts (no Flink): record validation, keys, checkpoint discovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.compile import compile_repo
from features.plan import SourcePlan
from features.synthetic import generate
from flink_jobs.job import flink_key, latest_checkpoint, parse_event, parse_flink_key, select_group_bys
from flink_jobs.replay import EXTRA_MALFORMED_KINDS, MALFORMED_KINDS, encode_value, malformed_message

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def source() -> SourcePlan:
    return compile_repo(ROOT / "features" / "fraud").group_by("card").source


def test_good_rows_parse_and_markers_are_recognised(source: SourcePlan) -> None:
    rows = generate(seed=1, days=1, events_per_day=300).payments.to_pylist()
    for row in rows:
        status, event = parse_event(encode_value(row).decode(), source.schema, source.time_column)
        assert status == "ok", event
        assert event["ts"] == row["ts"]
    assert parse_event('{"__tessera_end__": true, "partition": 0}', source.schema, "ts") == ("marker", None)


@pytest.mark.parametrize("kind", MALFORMED_KINDS + EXTRA_MALFORMED_KINDS)
def test_every_malformed_kind_is_dead_lettered_with_a_reason(source: SourcePlan, kind: str) -> None:
    row = generate(seed=1, days=1, events_per_day=50).payments.to_pylist()[0]
    required = ["card_id", "ts"]
    for n in range(len(required)):
        value = malformed_message(kind, row, required, n)
        status, reason = parse_event(None if value is None else value.decode(), source.schema, "ts")
        assert status == "bad" and isinstance(reason, str) and reason, (kind, n)


def test_type_checks(source: SourcePlan) -> None:
    row = generate(seed=1, days=1, events_per_day=50).payments.to_pylist()[0]
    for field, bad in [("amount", "12"), ("event_id", 1.5), ("card_id", 7), ("ts", True), ("ts", None)]:
        status, reason = parse_event(encode_value({**row, field: bad}).decode(), source.schema, "ts")
        assert status == "bad" and field in reason, (field, reason)
    assert parse_event(encode_value({**row, "amount": 12}).decode(), source.schema, "ts")[0] == "ok"
    assert parse_event(encode_value({**row, "extra": [1]}).decode(), source.schema, "ts")[0] == "ok"


def test_keys_round_trip_and_group_by_selection() -> None:
    for parts in [("c1",), (12,), ("a", 3), ("x\x1fy",)]:
        assert parse_flink_key(flink_key(4, parts)) == (4, parts)
    plan = compile_repo(ROOT / "features" / "fraud")
    assert {gb.name for gb in select_group_bys(plan, None)} == {
        gb.name for gb in plan.group_bys if gb.online and gb.stream
    }
    assert [gb.name for gb in select_group_bys(plan, ["card"])] == ["card"]


def test_latest_complete_checkpoint(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    for job, n, complete in [("a", 3, True), ("a", 4, False), ("b", 1, True)]:
        chk = tmp_path / job / f"chk-{n}"
        chk.mkdir(parents=True)
        if complete:
            (chk / "_metadata").write_bytes(b"x")
    found = latest_checkpoint(tmp_path)
    assert found is not None and found.name in {"chk-3", "chk-1"} and (found / "_metadata").exists()
