"""Parity: every expression gives the same value in Spark (ANSI off, UTC) and in the Python row function.

All expressions are evaluated by Spark in ONE ``selectExpr`` over a small DataFrame of edge rows (NULLs,
zeros, negatives, unicode, day boundaries, a leap day), then compared value by value with the compiled
Python functions. Floats compare exactly (NaN equals NaN); decimals compare value *and* scale.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Any

import pytest

from features.sql import analyze_expression, compile_expression, compile_row_logic

pytestmark = pytest.mark.spark

SCHEMA = {
    "i": "int",
    "l": "long",
    "d": "double",
    "e": "double",
    "s": "string",
    "t": "string",
    "m": "decimal(10,2)",
    "b": "boolean",
    "ts": "long",
    "ds": "string",
}

DAY = 86_400_000
LEAP = 951_782_400_000  # 2000-02-29T00:00:00Z
ROWS: list[dict[str, Any]] = [
    dict(i=1, l=10, d=2.5, e=0.5, s="Hello", t="l", m=Decimal("12.34"), b=True, ts=0, ds="2024-02-29"),
    dict(
        i=-7,
        l=-3,
        d=-2.5,
        e=0.0,
        s="  padded  ",
        t="",
        m=Decimal("-0.05"),
        b=False,
        ts=LEAP - 1,
        ds="2023-02-29",
    ),
    dict(i=0, l=0, d=0.0, e=-0.0, s="", t="x", m=Decimal("0.00"), b=None, ts=LEAP, ds=" 2024-1-5 "),
    dict(i=None, l=None, d=None, e=None, s=None, t=None, m=None, b=None, ts=None, ds=None),
    dict(
        i=2147483647,
        l=9223372036854775807,
        d=1e300,
        e=1e-300,
        s="ÄÖü ß ñ 😀",
        t="ü",
        m=Decimal("99999999.99"),
        b=True,
        ts=1_709_251_199_999,
        ds="not a date",
    ),
    dict(
        i=-2147483648,
        l=-9223372036854775808,
        d=float("nan"),
        e=float("inf"),
        s="a_b%c\\d",
        t="_",
        m=Decimal("-99999999.99"),
        b=False,
        ts=-1,
        ds="2024-12-31T23:59:59",
    ),
    dict(
        i=15,
        l=25,
        d=2.675,
        e=-1.5,
        s="a,b,,c",
        t=",",
        m=Decimal("2.50"),
        b=True,
        ts=1_700_000_000_123,
        ds="12",
    ),
    dict(
        i=-15,
        l=-25,
        d=0.125,
        e=3.0,
        s="Hello World",
        t="o",
        m=Decimal("-2.55"),
        b=False,
        ts=DAY * 365 - 1,
        ds="1.9",
    ),
    dict(i=3, l=7, d=-0.5, e=-2.0, s="TRUE", t="yes", m=Decimal("1.00"), b=None, ts=DAY * 59, ds="-12"),
    dict(
        i=100,
        l=1000,
        d=123456789.125,
        e=0.1,
        s="0x1A",
        t="1e3",
        m=Decimal("0.01"),
        b=True,
        ts=4_102_444_800_000,
        ds="3.5e2",
    ),
]

EXPRESSIONS: list[str] = [
    # arithmetic and typing
    "i + l",
    "i - 1",
    "i * 2",
    "l * l",
    "i + 1",
    "-i",
    "i / 2",
    "l / i",
    "d / e",
    "i / 0",
    "i div 2",
    "l div i",
    "i % 4",
    "l % i",
    "d % e",
    "d * e + 1",
    "d - e",
    "i * 1.5",
    "m + 1",
    "m - m",
    "m * m",
    "m / 3",
    "m / m",
    "m % 1",
    "m * 2.5",
    "m + d",
    "m / 0",
    "abs(i)",
    "abs(m)",
    "abs(e)",
    "ts + 3600000",
    "ts div 86400000",
    # NULL logic
    "b AND i > 0",
    "b OR i > 0",
    "NOT b",
    "b AND NULL",
    "b OR NULL",
    "i IS NULL",
    "s IS NOT NULL",
    "i IN (1, 3, NULL)",
    "i IN (1, 3, 15)",
    "d IN (2.5, 0.0)",
    "i BETWEEN -7 AND 3",
    "i NOT BETWEEN 0 AND 100",
    "i <=> NULL",
    "d <=> e",
    "d = d",
    "d > e",
    "d < e",
    "d >= 1.0",
    "e <= d",
    "s < t",
    "s = 'Hello'",
    "m > 1",
    "b = TRUE",
    # conditionals
    "CASE WHEN i > 10 THEN 'big' WHEN i > 0 THEN 'small' ELSE 'neg' END",
    "CASE i WHEN 1 THEN 'one' WHEN 3 THEN 'three' END",
    "IF(b, i, l)",
    "IF(i > 0, 1.5, d)",
    "COALESCE(i, l, 0)",
    "COALESCE(s, t, 'none')",
    "NULLIF(i, 0)",
    "NVL(s, '-')",
    "IFNULL(d, 0)",
    # rounding and math
    "ROUND(d, 2)",
    "ROUND(d)",
    "ROUND(e, 0)",
    "ROUND(i, -1)",
    "ROUND(m, 1)",
    "ROUND(m, -1)",
    "BROUND(d, 2)",
    "BROUND(m, 1)",
    "FLOOR(d)",
    "CEIL(d)",
    "FLOOR(m)",
    "CEIL(m)",
    "FLOOR(i)",
    "GREATEST(i, l, 3)",
    "LEAST(d, e)",
    "GREATEST(s, t)",
    "POW(d, 2)",
    "POWER(e, -1)",
    "POW(i, 0.5)",
    "SQRT(d)",
    "LN(d)",
    "LOG10(l)",
    "EXP(e)",
    "SIGN(e)",
    "SIGNUM(i)",
    # casts
    "CAST(d AS INT)",
    "CAST(d AS BIGINT)",
    "CAST(l AS INT)",
    "CAST(s AS INT)",
    "CAST(ds AS INT)",
    "CAST(ds AS DOUBLE)",
    "CAST(t AS DOUBLE)",
    "CAST(ds AS DECIMAL(10,2))",
    "CAST(s AS BOOLEAN)",
    "CAST(t AS BOOLEAN)",
    "CAST(i AS STRING)",
    "CAST(d AS STRING)",
    "CAST(e AS STRING)",
    "CAST(m AS STRING)",
    "CAST(b AS STRING)",
    "CAST(b AS INT)",
    "CAST(i AS BOOLEAN)",
    "CAST(d AS DECIMAL(12,3))",
    "CAST(m AS DECIMAL(4,1))",
    "CAST(m AS DOUBLE)",
    "CAST(m AS INT)",
    "CAST(ds AS DATE)",
    "CAST(i AS DOUBLE) / 3",
    # strings
    "LOWER(s)",
    "UPPER(s)",
    "LENGTH(s)",
    "SUBSTRING(s, 2)",
    "SUBSTRING(s, 2, 3)",
    "SUBSTR(s, -3)",
    "SUBSTR(s, -3, 2)",
    "SUBSTRING(s, 0, 2)",
    "SUBSTRING(s, i, 2)",
    "CONCAT(s, '-', t)",
    "CONCAT(s, i)",
    "s || t",
    "CONCAT_WS('|', s, t, NULL, 'z')",
    "TRIM(s)",
    "LTRIM(s)",
    "RTRIM(s)",
    "REPLACE(s, 'l', 'L')",
    "REPLACE(s, t, '#')",
    "REPLACE(s, 'l')",
    "LPAD(s, 8, 'ab')",
    "RPAD(s, 3)",
    "LPAD(s, 0, 'x')",
    "INSTR(s, t)",
    "LEFT(s, 3)",
    "RIGHT(s, 2)",
    "LEFT(s, -1)",
    "STARTSWITH(s, 'He')",
    "ENDSWITH(s, t)",
    "SPLIT_PART(s, ',', 2)",
    "SPLIT_PART(s, ',', -1)",
    "SPLIT_PART(s, t, 1)",
    "s LIKE 'H%'",
    "s LIKE '%l_o%'",
    "s LIKE 'a\\\\_b%'",
    "s LIKE 'a!_b%' ESCAPE '!'",
    "s NOT LIKE '%o%'",
    "s LIKE t",
    "concat(CAST(m AS STRING), '/', CAST(l AS STRING))",
    # time on epoch-ms longs (UTC)
    "hour(timestamp_millis(ts))",
    "minute(timestamp_millis(ts))",
    "second(timestamp_millis(ts))",
    "dayofweek(timestamp_millis(ts))",
    "dayofmonth(timestamp_millis(ts))",
    "month(timestamp_millis(ts))",
    "year(timestamp_millis(ts))",
    "to_date(timestamp_millis(ts))",
    "to_date(ds)",
    "date_format(timestamp_millis(ts), 'yyyy-MM-dd HH:mm:ss.SSS')",
    "date_format(timestamp_millis(ts), 'EEE d MMM yy')",
    "date_format(timestamp_millis(ts), \"yyyy'T'HH 'h' EEEE MMMM\")",
    "unix_millis(timestamp_millis(ts))",
    "dayofweek(to_date(ds))",
    "year(to_date(ds))",
    "to_date(ds) > '2024-01-01'",
    "(ts - ts % 3600000) div 1000",
    "hour(to_date(timestamp_millis(ts)))",
    # nesting
    "upper(substring(lower(s), 2, 3))",
    "round(sqrt(abs(d)), 3)",
    "length(concat_ws('-', lower(s), upper(t)))",
    "CASE WHEN b THEN round(m * i, 1) ELSE m END",
    "coalesce(nullif(trim(s), ''), 'blank')",
]


def _spark_type(t: str):
    from pyspark.sql import types as st

    if t.startswith("decimal"):
        p, s = t[8:-1].split(",")
        return st.DecimalType(int(p), int(s))
    return {
        "int": st.IntegerType(),
        "long": st.LongType(),
        "double": st.DoubleType(),
        "string": st.StringType(),
        "boolean": st.BooleanType(),
    }[t]


@pytest.fixture(scope="module")
def frame(spark):
    from pyspark.sql import types as st

    struct = st.StructType(
        [st.StructField("rid", st.IntegerType())]
        + [st.StructField(c, _spark_type(t)) for c, t in SCHEMA.items()]
    )
    data = [(k, *[r[c] for c in SCHEMA]) for k, r in enumerate(ROWS)]
    return spark.createDataFrame(data, struct)


@pytest.fixture(scope="module")
def spark_results(frame) -> dict[str, list[Any]]:
    """One action: every expression as a column of one selectExpr."""
    sqls = [analyze_expression(x, SCHEMA, kind="derivation").spark_sql for x in EXPRESSIONS]
    cols = ["rid"] + [f"{q} AS `e{k}`" for k, q in enumerate(sqls)]
    rows = sorted(frame.selectExpr(*cols).collect(), key=lambda r: r["rid"])
    return {x: [r[f"e{k}"] for r in rows] for k, x in enumerate(EXPRESSIONS)}


def same(a: Any, b: Any) -> bool:
    """Exact equality; NaN equals NaN; -0.0 and 0.0 differ; decimals must agree in scale too."""
    if a is None or b is None:
        return a is None and b is None
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, Decimal):
        return str(a) == str(b)
    return bool(a == b)


def test_expression_table_is_large_enough() -> None:
    assert len(EXPRESSIONS) >= 60
    assert len(set(EXPRESSIONS)) == len(EXPRESSIONS)


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_parity(expr: str, spark_results: dict[str, list[Any]]) -> None:
    fn = compile_expression(expr, SCHEMA)
    want = spark_results[expr]
    got = [fn(r) for r in ROWS]
    bad = [(k, ROWS[k], w, g) for k, (w, g) in enumerate(zip(want, got)) if not same(w, g)]
    assert not bad, "\n".join(f"row {k}: spark={w!r} python={g!r}" for k, _, w, g in bad)


def test_row_logic_parity(frame) -> None:
    """selects + where through compile_row_logic: Spark where+selectExpr vs python_fn, row by row."""
    logic = compile_row_logic(
        {
            "usd": "d * 2",
            "bucket": "CASE WHEN i > 10 THEN 'big' ELSE 'small' END",
            "day": "to_date(timestamp_millis(ts))",
            "m2": "m * 2",
        },
        "b OR i < 0",
        SCHEMA,
        passthrough=["s"],
    )
    got = [logic.python_fn(r) for r in ROWS]
    spark_rows = frame.where(logic.spark_where).selectExpr("rid", *logic.spark_selects).collect()
    by_id = {r["rid"]: r.asDict() for r in spark_rows}
    for k, g in enumerate(got):
        if g is None:
            assert k not in by_id
            continue
        want = {c: by_id[k][c] for c in logic.output_schema}
        assert all(same(want[c], g[c]) for c in want), (k, want, g)
    assert list(logic.output_schema) == ["s", "usd", "bucket", "day", "m2"]
    assert isinstance(got[0]["day"], dt.date)
