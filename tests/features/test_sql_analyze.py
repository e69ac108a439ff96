"""Analysis: every rejection kind names the offending span (checked through the underline) and a fix."""

from __future__ import annotations

import pytest

from features.sql import SqlError, analyze_expression, compile_expression, compile_row_logic

SCHEMA = {
    "amount": "double",
    "status": "string",
    "ts": "long",
    "qty": "int",
    "flag": "boolean",
    "price": "decimal(10,2)",
}

# (text, kind, underlined text, words in the message, words in the fix)
REJECTIONS = [
    ("amount +", "select", "+", "syntax error", "syntax"),
    ("status = 'x", "where", "'x", "unterminated", "close"),
    ("amout * 2", "select", "amout", "unknown column 'amout'", "'amount'"),
    ("foo(amount)", "select", "foo(amount)", "FOO is not supported", "floor"),
    ("lenght(status)", "select", "lenght(status)", "LENGHT", "length"),
    ("log(2, amount)", "select", "log(2, amount)", "LOG", "log10"),
    ("sum(amount)", "select", "sum(amount)", "aggregate", "Aggregation"),
    ("amount + count(*)", "select", "count(*)", "aggregate", "Aggregation"),
    ("row_number() over (order by ts)", "select", "row_number() over (order by ts", "window", "windows="),
    ("amount in (select 1)", "where", "amount in (select 1", "subquer", "JoinPart"),
    ("rand() > 0.5", "where", "rand()", "not deterministic", "column"),
    ("now()", "select", "now()", "NOW is not deterministic", "column"),
    ("uuid()", "select", "uuid()", "UUID", "column"),
    ("current_timestamp()", "select", "current_timestamp()", "CURRENT_TIMESTAMP", "column"),
    ("amount * 2", "where", "amount * 2", "where must be boolean", "predicate"),
    ("status", "where", "status", "where must be boolean", "predicate"),
    ("status + 1", "select", "status + 1", "arithmetic '+' on string", "CAST"),
    ("'a' * qty", "select", "'a' * qty", "arithmetic '*' on string", "CAST"),
    ("status rlike 'a.*'", "where", "status rlike 'a.*'", "RLIKE", "LIKE"),
    ("status ilike 'a%'", "where", "status ilike 'a%'", "ILIKE", "LOWER"),
    ("flag and qty", "where", "qty", "AND needs a boolean", "compare"),
    ("status = 1", "where", "status = 1", "cannot compare string with int", "CAST"),
    (
        "timestamp_millis(ts)",
        "select",
        "timestamp_millis(ts)",
        "timestamp cannot be an output",
        "unix_millis",
    ),
    ("hour(ts)", "select", "hour(ts)", "needs a timestamp", "timestamp_millis"),
    ("round(amount, qty)", "select", "round(amount, qty)", "integer literal", "constant"),
    (
        "date_format(timestamp_millis(ts), 'yyyy QQ')",
        "select",
        "date_format(timestamp_millis(ts), 'yyyy QQ')",
        "'QQ'",
        "yyyy",
    ),
    ("cast(amount as timestamp)", "select", "cast(amount as timestamp)", "CAST to TIMESTAMP", "BIGINT"),
    ("amount AS x", "select", "amount AS x", "alias", "dict key"),
    ("t.amount", "select", "t.amount", "qualified", "'amount'"),
    ("substring(status)", "select", "substring(status)", "takes 2 to 3 arguments", "SUBSTRING"),
    ("split_part(status, ',', 0)", "select", "split_part(status, ',', 0)", "must not be 0", "-1"),
    ("status LIKE 'a!x' ESCAPE '!'", "where", "'a!x'", "escape character", "escape only"),
    ("IF(flag, 1, 'one')", "select", "IF(flag, 1, 'one')", "mixes int and string", "CAST"),
    ("NULL", "select", "NULL", "always NULL", "CAST(NULL"),
    ("qty div amount", "select", "qty div amount", "'div' needs integers", "BIGINT"),
    ("", "select", "", "empty", "expression"),
]


@pytest.mark.parametrize(
    ("text", "kind", "underlined", "message", "fix"), REJECTIONS, ids=[r[0] or "<empty>" for r in REJECTIONS]
)
def test_rejection(text: str, kind: str, underlined: str, message: str, fix: str) -> None:
    with pytest.raises(SqlError) as info:
        analyze_expression(text, SCHEMA, kind=kind)  # type: ignore[arg-type]
    err = info.value
    assert len(err.problems) == 1, err.problems
    p = err.problems[0]
    assert message in p.message
    assert fix in p.fix
    assert text[p.start : p.end] == underlined
    rendered = err.render(text)
    lines = rendered.splitlines()
    assert lines[0] == text
    assert lines[1] == " " * p.start + "^" * max(1, p.end - p.start)
    assert f"fix: {p.fix}" in rendered


def test_all_problems_are_reported_at_once() -> None:
    text = "amout > 1 AND lenght(statuz) > 2 AND rand() < 1"
    with pytest.raises(SqlError) as info:
        analyze_expression(text, SCHEMA, kind="where")
    spans = [text[p.start : p.end] for p in info.value.problems]
    assert spans == ["amout", "lenght(statuz)", "rand()"]
    assert info.value.render().count("^") == len("amout") + len("lenght(statuz)") + len("rand()")


def test_unknown_column_without_close_match_lists_columns() -> None:
    with pytest.raises(SqlError) as info:
        analyze_expression("zzzzzz", SCHEMA, kind="select")
    assert "columns are:" in info.value.problems[0].fix


def test_compile_row_logic_labels_the_failing_select() -> None:
    with pytest.raises(SqlError) as info:
        compile_row_logic({"ok": "amount * 2", "bad": "amout"}, None, SCHEMA)
    assert info.value.label == "selects['bad']"


def test_analyzed_expression_contract() -> None:
    a = analyze_expression("ROUND(price * qty, 1) + 1", SCHEMA, kind="select")
    assert a.columns == ("price", "qty")
    assert a.output_type == "decimal(22,1)"
    assert "`price`" in a.spark_sql and "`qty`" in a.spark_sql
    w = analyze_expression("Status = 'ok'", SCHEMA, kind="where")  # Spark resolves names case-insensitively
    assert w.columns == ("status",) and w.output_type == "boolean"


def test_row_logic_shapes() -> None:
    logic = compile_row_logic(None, "qty > 0", SCHEMA)
    assert list(logic.output_schema) == list(SCHEMA)
    assert logic.spark_selects[0] == "`amount`"
    assert logic.python_fn({"qty": 0}) is None
    row = logic.python_fn({"qty": 2, "amount": 3})
    assert row is not None and row["amount"] == 3.0 and isinstance(row["amount"], float)
    assert row["status"] is None  # a missing key is NULL
    null_where = compile_row_logic({"x": "qty"}, "flag", SCHEMA)
    assert null_where.python_fn({"qty": 1, "flag": None}) is None


def test_generated_code_never_evaluates_user_text() -> None:
    # A string literal that looks like Python stays data.
    f = compile_expression("concat(status, '\\') + __import__(\\'os\\')')", SCHEMA)
    assert f({"status": "a"}) == "a') + __import__('os')"
