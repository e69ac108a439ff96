"""Typed tree -> Spark SQL text (run with ``spark.sql.ansi.enabled=false`` and session time zone UTC).

Every implicit conversion is written as an explicit CAST, so Spark computes with exactly the operand types
the Python backend uses. Operators are parenthesized; the outermost parentheses are dropped.
"""

from __future__ import annotations

import math
from decimal import Decimal

from features.sql import types as T
from features.sql.ir import Node

_BIN = {
    "add": "+",
    "sub": "-",
    "mul": "*",
    "div": "/",
    "mod": "%",
    "intdiv": "DIV",
    "eq": "=",
    "neq": "<>",
    "lt": "<",
    "le": "<=",
    "gt": ">",
    "ge": ">=",
    "nseq": "<=>",
    "and": "AND",
    "or": "OR",
}


def quote_ident(name: str) -> str:
    """A back-quoted Spark identifier."""
    return "`" + name.replace("`", "``") + "`"


def string_literal(s: str) -> str:
    """A Spark string literal whose value is exactly ``s`` (backslash escapes, default parser settings)."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def literal(n: Node) -> str:
    v, t = n.value, n.type
    if v is None:
        return "NULL" if t in (T.NULL,) else f"CAST(NULL AS {t.spark})"
    if t == T.STRING:
        return string_literal(v)
    if t == T.BOOLEAN:
        return "TRUE" if v else "FALSE"
    if t == T.INT:
        return str(v) if v >= 0 else f"({v})"
    if t == T.LONG:
        return f"{v}L" if v >= 0 else f"({v}L)"
    if t == T.DOUBLE:
        if math.isfinite(v):
            return f"{v!r}D" if v >= 0 else f"({v!r}D)"
        return f"CAST({string_literal(repr(v))} AS DOUBLE)"
    if t.name == "decimal":
        d = Decimal(v)
        txt = format(d, "f")
        return f"CAST({txt} AS {t.spark})" if d >= 0 else f"CAST(({txt}) AS {t.spark})"
    if t == T.DATE:
        from features.sql.runtime import date_str

        return f"DATE {string_literal(date_str(v))}"
    raise ValueError(f"no Spark literal for {t}")


def _emit(n: Node) -> str:
    op = n.op
    if op == "col":
        return quote_ident(n.value)
    if op == "lit":
        return literal(n)
    a = [_emit(x) for x in n.args]
    if op == "cast":
        return f"CAST({a[0]} AS {n.type.spark})"
    if op in _BIN:
        return f"({a[0]} {_BIN[op]} {a[1]})"
    if op == "neg":
        return f"(- {a[0]})"
    if op == "not":
        return f"(NOT {a[0]})"
    if op == "isnull":
        return f"({a[0]} IS NULL)"
    if op == "isnotnull":
        return f"({a[0]} IS NOT NULL)"
    if op == "in":
        return f"({a[0]} IN ({', '.join(a[1:])}))"
    if op == "like":
        esc = "" if n.value == "\\" else f" ESCAPE {string_literal(n.value)}"
        return f"({a[0]} LIKE {a[1]}{esc})"
    if op == "case":
        parts = [f"WHEN {a[i]} THEN {a[i + 1]}" for i in range(0, len(a) - 1, 2)]
        return f"CASE {' '.join(parts)} ELSE {a[-1]} END"
    if op == "coalesce":
        return f"COALESCE({', '.join(a)})"
    if op == "fn":
        from features.sql.functions import FUNCTIONS

        spec = FUNCTIONS[n.value[0]]
        if spec.spark is not None:
            return spec.spark(a, n)
        return f"{spec.name}({', '.join(a)})"
    raise ValueError(f"cannot emit {op!r} as Spark SQL")


def to_spark(n: Node) -> str:
    """Spark SQL for a typed tree."""
    s = _emit(n)
    if s.startswith("(") and s.endswith(")") and _balanced_inner(s):
        return s[1:-1]
    return s


def _balanced_inner(s: str) -> bool:
    depth = 0
    quote = ""
    i = 0
    while i < len(s) - 1:
        c = s[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "'`":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return False
        i += 1
    return True
