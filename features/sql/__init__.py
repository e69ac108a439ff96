"""SQL row logic: one parsed expression, two executions that agree (Spark SQL and a Python row function).

Users write Spark SQL snippets (GroupBy ``selects``/``where``, Join ``derivations``). :func:`analyze_expression`
checks and types them (every problem at once, with spans and fixes); :func:`compile_row_logic` turns a
GroupBy's row logic into Spark select/where text plus a compiled Python function for the stream and the
fetcher.

Semantics are Spark 4's with ``spark.sql.ansi.enabled=false`` and ``spark.sql.session.timeZone=UTC``
(see :data:`SPARK_CONF`): division by zero and invalid casts give NULL, integer overflow wraps.

>>> logic = compile_row_logic({"usd": "amount * fx", "big": "amount > 100"}, "status = 'ok'",
...                           {"amount": "double", "fx": "double", "status": "string", "card": "string"},
...                           passthrough=["card"])
>>> logic.python_fn({"amount": 200.0, "fx": 0.5, "status": "ok", "card": "c1"})
{'card': 'c1', 'usd': 100.0, 'big': True}
>>> logic.python_fn({"amount": 200.0, "fx": 0.5, "status": None, "card": "c1"}) is None
True
>>> logic.spark_selects
['`card`', '`amount` * `fx` AS `usd`', '`amount` > 100.0D AS `big`']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from features.sql.analyze import AnalyzedExpr, Kind, analyze_expression, parse_schema
from features.sql.errors import SqlError, SqlProblem
from features.sql.functions import FUNCTIONS
from features.sql.ir import Node
from features.sql.to_python import build_expression_function, build_row_function
from features.sql.to_spark import quote_ident

__all__ = [
    "FUNCTIONS",
    "SPARK_CONF",
    "AnalyzedExpr",
    "RowLogic",
    "SqlError",
    "SqlProblem",
    "analyze_expression",
    "compile_expression",
    "compile_row_logic",
]

#: The Spark session settings under which ``spark_selects``/``spark_where`` mean what the Python side does.
SPARK_CONF: dict[str, str] = {
    "spark.sql.ansi.enabled": "false",
    "spark.sql.session.timeZone": "UTC",
}


@dataclass(frozen=True)
class RowLogic:
    """Compiled row logic of one source.

    ``output_schema``: output name -> Spark type name (passthrough columns first, then selects, in order).
    ``spark_selects``: ``expr AS `name``` strings for ``df.selectExpr`` (passthrough as `` `col` ``).
    ``spark_where``: the predicate for ``df.where`` (None = keep every row); apply it before the selects.
    ``python_fn(row)``: the projected dict, or None when the where does not hold (NULL filters out).
    Rows are mappings; a missing key is NULL. double columns may arrive as int, decimal columns as
    int/str/float (they are converted); dates are ``datetime.date`` in and out.
    """

    output_schema: dict[str, str]
    spark_selects: list[str]
    spark_where: str | None
    python_fn: Callable[[Mapping[str, Any]], dict[str, Any] | None] = field(repr=False)
    python_source: str = field(repr=False, default="")
    analyzed: dict[str, AnalyzedExpr] = field(repr=False, default_factory=dict)


def compile_row_logic(
    selects: Mapping[str, str] | None,
    where: str | None,
    schema: Mapping[str, str],
    passthrough: Sequence[str] = (),
) -> RowLogic:
    """Analyze and compile a GroupBy's ``selects`` and ``where`` over ``schema``.

    ``selects=None`` means identity over every schema column. Raises :class:`SqlError` with every problem
    of every expression (each problem's offsets refer to its own expression; ``SqlError.label`` says which
    one when there is a single failing expression, else the message lists them).
    """
    types = parse_schema(schema)
    errors: list[SqlError] = []
    analyzed: dict[str, AnalyzedExpr] = {}
    where_a: AnalyzedExpr | None = None
    if where is not None:
        try:
            where_a = analyze_expression(where, schema, kind="where")
        except SqlError as e:
            e.label = "where"
            errors.append(e)
    if selects is None:
        pass_cols = [c for c in schema if c not in passthrough]
        passthrough = [*passthrough, *pass_cols]
        selects = {}
    for col in passthrough:
        if col not in types:
            raise ValueError(f"passthrough column {col!r} is not in the schema ({', '.join(types)})")
    for name, text in selects.items():
        if name in passthrough:
            raise ValueError(f"select {name!r} has the same name as a passthrough column; rename it")
        try:
            analyzed[name] = analyze_expression(text, schema, kind="select")
        except SqlError as e:
            e.label = f"selects[{name!r}]"
            errors.append(e)
    if errors:
        if len(errors) == 1:
            raise errors[0]
        problems = [p for e in errors for p in e.problems]
        raise SqlError(problems, "", "; ".join(f"{e.label}: {e.render()}" for e in errors))
    outputs: list[tuple[str, Node | None]] = [(c, None) for c in passthrough]
    outputs += [(n, a.node) for n, a in analyzed.items()]
    fn, source = build_row_function(types, outputs, where_a.node if where_a else None)
    out_schema = {c: str(types[c]) for c in passthrough}
    out_schema.update({n: a.output_type for n, a in analyzed.items()})
    spark_selects = [quote_ident(c) for c in passthrough]
    spark_selects += [f"{a.spark_sql} AS {quote_ident(n)}" for n, a in analyzed.items()]
    if where_a is not None:
        analyzed = {"<where>": where_a, **analyzed}
    return RowLogic(out_schema, spark_selects, where_a.spark_sql if where_a else None, fn, source, analyzed)


def compile_expression(
    sql: str, schema: Mapping[str, str], *, kind: Kind = "derivation"
) -> Callable[[Mapping[str, Any]], Any]:
    """Analyze ``sql`` and return ``fn(row) -> value`` (raises :class:`SqlError`).

    >>> f = compile_expression("ROUND(score * 100, 1)", {"score": "double"})
    >>> f({"score": 0.12345}), f({"score": None})
    (12.3, None)
    """
    a = analyze_expression(sql, schema, kind=kind)
    fn, _ = build_expression_function(parse_schema(schema), a.node)
    return fn
