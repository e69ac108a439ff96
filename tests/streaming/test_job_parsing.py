"""The Flink job's pure parts (no Flink): record validation, keys, checkpoint discovery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


_JSONIO_CHECK = r"""
import json, math, sys
from flink_jobs import jsonio
texts = [
    '{"a": 1, "b": 2.5, "c": "x", "d": null, "e": true}', '{"a": NaN}', '{"a": -Infinity}', '{"a": 1e400}',
    '{"a": 123456789012345678901234567890}', '{"a": -9223372036854775809}', '{"a": 18446744073709551615}',
    '{"a": 1e19}', '{"a": [1, 2]}', '{"a": {"b": 1}}', '[1]', '7', '{"a": 1, "a": 2}', '{"a": "\\ud800"}',
]
def same(x, y):
    return repr(x) == repr(y) and type(x) is type(y)
for t in texts:
    for raw in (t, t.encode()):
        assert same(jsonio.loads(raw), json.loads(raw)), t
for bad in ['{bad', '', '{"a": 1,}', '[1] x']:
    try:
        jsonio.loads(bad)
    except ValueError:
        pass
    else:
        raise AssertionError(bad)
for row in [{"a": 1.5, "b": "é", "c": None, "d": True}, {"a": math.inf}, {"a": math.nan}, {"a": 2**70},
            {"a": -(2**63) - 1}, {"a": 0.1 + 0.2, "b": -0.0, "c": 5e-324}]:
    back = jsonio.loads(jsonio.dumps(row))
    assert repr(back) == repr(row), (row, back)
print("orjson" if jsonio._orjson is not None else "json")
"""


@pytest.mark.parametrize("env", ["main", "flink"])
def test_fast_json_reads_and_writes_what_the_standard_library_does(env: str, flink_python: Path) -> None:
    """``flink_jobs.jsonio`` (orjson in both environments: apache-beam brings it to the Flink one, the API's
    answers to the main one): same values, same errors as the standard library."""
    import subprocess
    import sys

    python = sys.executable if env == "main" else str(flink_python)
    out = subprocess.run(
        [python, "-c", _JSONIO_CHECK], cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "orjson"


@pytest.mark.parametrize(
    "part", ["m_000014", "a b/c", 'q"uote', "back\\slash", "tab\t", "é", "\x7f", "", "x\x1fy", 12, None, 1.5]
)
def test_one_part_keys_are_spelled_as_json_spells_them(part: object) -> None:
    import json

    assert flink_key(3, (part,)) == f"3\x1f{json.dumps([part], separators=(',', ':'))}"
    assert parse_flink_key(flink_key(3, (part,))) == (3, (part,))


def test_the_job_parser_agrees_with_the_type_rules(source: SourcePlan) -> None:
    """EventParser (class lookups) against _type_ok (isinstance) for every JSON value kind in every field."""
    from flink_jobs.job import EventParser

    row = generate(seed=1, days=1, events_per_day=50).payments.to_pylist()[0]
    parser = EventParser(dict(source.schema), source.time_column)
    for field, declared in source.schema.items():
        for bad in [None, True, 0, 1.5, "s", [1], {"a": 1}]:
            status, _ = parser.parse(encode_value({**row, field: bad}).decode())
            expected = _type_ok(bad, declared) and (field != source.time_column or type(bad) is int)
            assert (status == "ok") == expected, (field, bad, status)


def _type_ok(value: Any, declared: str) -> bool:
    """The schema's type rule written with ``isinstance``: the oracle for the job's class lookups."""
    t = declared.lower().split("(")[0]
    if value is None:
        return True
    if t in {"long", "int", "integer", "bigint", "short", "smallint", "byte", "tinyint", "timestamp", "date"}:
        return isinstance(value, int) and not isinstance(value, bool)
    if t in {"double", "float", "decimal"}:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if t == "string":
        return isinstance(value, str)
    if t == "boolean":
        return isinstance(value, bool)
    return True


def test_batch_parser_applies_the_per_record_rules_in_order() -> None:
    """:class:`BatchParser` (one call per batch) against the per-record rules written out plainly: validation
    (same dead-letter reasons as :func:`parse_event`), the late check against each record's own carried
    watermark, every GroupBy's row logic; rows grouped by the bucket of their key, in record order."""
    import json

    from features.reference import row_function
    from flink_jobs.job import BatchParser, batch_record, bucket_of
    from flink_jobs.tiling import entity_of, is_late

    plan = compile_repo(ROOT / "features" / "fraud")
    gbs = [plan.group_by("card"), plan.group_by("merchant")]
    src = gbs[0].source
    rows = generate(seed=2, days=1, events_per_day=400).payments.to_pylist()
    records: list[str] = []
    wm: int | None = None
    for i, row in enumerate(rows):
        value: str | None
        if i % 37 == 5:
            bad = malformed_message(MALFORMED_KINDS[i % len(MALFORMED_KINDS)], row, ["card_id"], 0)
            value = None if bad is None else bad.decode()
        elif i % 53 == 7:
            value = encode_value({**row, "ts": row["ts"] - 2 * src.allowed_lateness_ms}).decode()
        else:
            value = encode_value(row).decode()
        records.append(batch_record(row["ts"], wm, value))
        wm = row["ts"] - 1 if wm is None else max(wm, row["ts"] - 1)
    records.append(batch_record(None, wm, None))  # a tombstone, no record timestamp
    records.append(batch_record(1, wm, '{"__tessera_end__": true, "partition": 0}'))

    parser = BatchParser(gbs, [0, 1], buckets=5)
    got_out: dict[int, list[Any]] = {}
    got_dead: list[str] = []
    got_late: list[str] = []
    floors = []
    for start in range(0, len(records), 23):  # batches of 23 records
        out, dead, late, floor = parser.parse(records[start : start + 23])
        for b, rs in out.items():
            got_out.setdefault(b, []).extend(rs)
        got_dead += dead
        got_late += late
        floors.append(floor)

    want_out: dict[int, list[Any]] = {}
    want_dead: list[tuple[str, int | None]] = []
    want_late: list[str] = []
    fns = [row_function(gb) for gb in gbs]
    for rec in records:
        ts_s, wm_s, v = rec.split("|", 2)
        raw = v[1:] if v.startswith("v") else None
        status, event = parse_event(raw, src.schema, src.time_column)
        if status == "marker":
            continue
        if status == "bad":
            want_dead.append((event, int(ts_s) if ts_s else None))
            continue
        if is_late(event["ts"], int(wm_s) if wm_s else None, src.allowed_lateness_ms):
            want_late.append(raw)  # type: ignore[arg-type]
            continue
        for gi, (gb, fn) in enumerate(zip(gbs, fns)):
            row = fn(event)
            ent = entity_of(gb, row) if row is not None else None
            if ent is not None:
                key = flink_key(gi, ent)
                want_out.setdefault(bucket_of(key, 5), []).append((gi, key, row))
    assert got_out == want_out
    assert [(d["reason"], d["record_ts"]) for d in map(json.loads, got_dead)] == want_dead
    assert got_late == want_late and len(want_late) >= 5 and len(want_dead) >= 10
    c = parser.counts
    assert c["end_markers"] == 1 and c["dead_lettered"] == len(want_dead) and c["late"] == len(want_late)
    assert c["events_in"] == len(records) - 1
    assert floors[0] is None and floors[1:] == [
        int(records[s].split("|")[1]) for s in range(23, len(records), 23)
    ]
