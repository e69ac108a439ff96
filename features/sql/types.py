"""The Spark SQL types row logic knows, and Spark's (ANSI off) rules for combining them.

Python representations: boolean -> bool, int/long -> int, double -> float, string -> str,
decimal(p,s) -> decimal.Decimal (quantized to s), date -> datetime.date at the boundary (days since epoch
inside generated code), timestamp -> epoch microseconds (only inside expressions; never an output).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_PRECISION = 38


@dataclass(frozen=True)
class SqlType:
    """A Spark type. ``name`` is one of the NAMES; ``precision``/``scale`` are set for decimals only."""

    name: str
    precision: int = 0
    scale: int = 0

    def __str__(self) -> str:
        if self.name == "decimal":
            return f"decimal({self.precision},{self.scale})"
        return self.name

    @property
    def spark(self) -> str:
        """The type as written in Spark SQL (``CAST(x AS <spark>)``)."""
        return {
            "long": "BIGINT",
            "int": "INT",
            "double": "DOUBLE",
            "string": "STRING",
            "boolean": "BOOLEAN",
            "date": "DATE",
            "timestamp": "TIMESTAMP",
        }.get(self.name, f"DECIMAL({self.precision},{self.scale})")

    @property
    def is_integral(self) -> bool:
        return self.name in ("int", "long")

    @property
    def is_numeric(self) -> bool:
        return self.name in ("int", "long", "double", "decimal")


BOOLEAN = SqlType("boolean")
INT = SqlType("int")
LONG = SqlType("long")
DOUBLE = SqlType("double")
STRING = SqlType("string")
DATE = SqlType("date")
TIMESTAMP = SqlType("timestamp")
NULL = SqlType("null")
ERROR = SqlType("error")  # an operand that already produced a problem; suppresses follow-on errors

NAMES = ("boolean", "int", "long", "double", "string", "decimal", "date", "timestamp")
_ALIASES = {"bigint": "long", "integer": "int", "bool": "boolean"}
_DEC = re.compile(r"^decimal\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)$")


def decimal(precision: int, scale: int) -> SqlType:
    """decimal(p, s), bounded like Spark's ``DecimalType.bounded``."""
    return SqlType("decimal", min(precision, MAX_PRECISION), min(scale, MAX_PRECISION))


def parse_type(name: str) -> SqlType:
    """Parse a schema type name ("long", "int", "double", "string", "boolean", "decimal(p,s)", "date").

    >>> parse_type("decimal(10, 2)")
    SqlType(name='decimal', precision=10, scale=2)
    """
    low = name.strip().lower()
    low = _ALIASES.get(low, low)
    m = _DEC.match(low)
    if m:
        p, s = int(m.group(1)), int(m.group(2))
        if not 1 <= p <= MAX_PRECISION or s > p:
            raise ValueError(f"decimal({p},{s}) is not a valid Spark decimal (1 <= p <= 38, s <= p)")
        return SqlType("decimal", p, s)
    if low == "decimal":
        return SqlType("decimal", 10, 0)
    if low in NAMES:
        return SqlType(low)
    raise ValueError(
        f"unsupported column type {name!r}; use one of long, int, double, string, boolean, decimal(p,s), date"
    )


def decimal_for(t: SqlType) -> SqlType:
    """Spark's DecimalType.forType: the decimal an integral type widens to."""
    if t.name == "int":
        return decimal(10, 0)
    if t.name == "long":
        return decimal(20, 0)
    if t.name == "boolean":
        return decimal(1, 0)
    return t


def adjust(precision: int, scale: int) -> SqlType:
    """Spark's ``DecimalType.adjustPrecisionScale`` (allowPrecisionLoss=true): keep >= 6 fraction digits."""
    if precision <= MAX_PRECISION:
        return SqlType("decimal", precision, scale)
    int_digits = precision - scale
    min_scale = min(scale, 6)
    return SqlType("decimal", MAX_PRECISION, max(MAX_PRECISION - int_digits, min_scale))


def wider_decimal(a: SqlType, b: SqlType) -> SqlType:
    """The decimal that holds both (Spark's ``widerDecimalType``), bounded at 38 digits."""
    scale = max(a.scale, b.scale)
    rng = max(a.precision - a.scale, b.precision - b.scale)
    return decimal(rng + scale, scale)


_NUM_RANK = {"int": 0, "long": 1, "decimal": 2, "double": 3}


def wider(a: SqlType, b: SqlType) -> SqlType | None:
    """The common type of two values (CASE branches, COALESCE, IN, comparison), or None if Spark's
    rules would need a string<->number cast, which tessera asks the user to write explicitly."""
    if a == b:
        return a
    if a == NULL:
        return b
    if b == NULL:
        return a
    if a.is_numeric and b.is_numeric:
        if "double" in (a.name, b.name):
            return DOUBLE
        if a.name == "decimal" or b.name == "decimal":
            return wider_decimal(decimal_for(a), decimal_for(b))
        return a if _NUM_RANK[a.name] >= _NUM_RANK[b.name] else b
    if {a.name, b.name} == {"date", "timestamp"}:
        return TIMESTAMP
    return None
