"""The functions row logic allows: Spark (ANSI off) typing, Spark SQL text and the Python implementation.

Each :class:`FunctionSpec` types its (already analyzed) arguments, may insert casts, and says how to emit
itself for both backends. ``strict`` functions are NULL when any argument is NULL; the NULL check is emitted
inline by ``to_python``. A function missing here is rejected by ``analyze`` with the closest names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from features.sql import types as T
from features.sql.ir import Node, cast
from features.sql.types import SqlType


class Reject(Exception):
    """Raised by a typer: the call is not allowed. ``analyze`` attaches the span."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


Typer = Callable[[list[Node]], tuple[SqlType, list[Node], Any]]
Emit = Callable[[list[str], Node], str]


@dataclass(frozen=True)
class FunctionSpec:
    """A supported function. ``typer(args) -> (result type, converted args, constants)``."""

    name: str
    min_args: int
    max_args: int | None
    typer: Typer
    py: Emit
    doc: str
    strict: bool = True
    spark: Emit | None = None


# ---- argument conversions ----------------------------------------------------------------------------
def _numeric(n: Node, what: str) -> Node:
    if n.type.is_numeric or n.type in (T.NULL, T.ERROR):
        return n
    raise Reject(
        f"{what} needs a number, got {n.type}", "CAST the argument to a number, e.g. CAST(x AS DOUBLE)"
    )


def _to_double(n: Node, what: str) -> Node:
    return cast(_numeric(n, what), T.DOUBLE)


def _to_int(n: Node, what: str) -> Node:
    if n.type.is_integral or n.type in (T.NULL, T.ERROR):
        return cast(n, T.INT)
    raise Reject(f"{what} needs an integer, got {n.type}", "pass an INT, e.g. CAST(x AS INT)")


def _to_str(n: Node, what: str) -> Node:
    if n.type.name in ("timestamp",):
        raise Reject(f"{what} needs a string, got a timestamp", "use date_format(ts, 'yyyy-MM-dd HH:mm:ss')")
    return cast(n, T.STRING)


def _str_only(n: Node, what: str) -> Node:
    if n.type in (T.STRING, T.NULL, T.ERROR):
        return cast(n, T.STRING)
    raise Reject(f"{what} needs a string, got {n.type}", "CAST the argument AS STRING")


def _to_date(n: Node, what: str) -> Node:
    if n.type in (T.DATE, T.TIMESTAMP, T.NULL, T.ERROR):
        return cast(n, T.DATE)
    raise Reject(
        f"{what} needs a date or timestamp, got {n.type}",
        "epoch-millisecond columns need timestamp_millis(col) first",
    )


def _to_ts(n: Node, what: str) -> Node:
    if n.type in (T.DATE, T.TIMESTAMP, T.NULL, T.ERROR):
        return cast(n, T.TIMESTAMP)
    raise Reject(
        f"{what} needs a timestamp, got {n.type}",
        "epoch-millisecond columns need timestamp_millis(col) first",
    )


def int_constant(n: Node, what: str) -> int:
    """A literal integer argument (Spark requires ROUND's scale etc. to be foldable)."""
    if n.op == "lit" and n.type.is_integral and n.value is not None:
        return int(n.value)
    raise Reject(f"{what} must be an integer literal", "write a constant such as 2")


def common(nodes: Sequence[Node], what: str) -> SqlType:
    """The wider type of all ``nodes`` (NULL literals take the others' type)."""
    t: SqlType = T.NULL
    for n in nodes:
        if n.type == T.ERROR:
            return T.ERROR
        w = T.wider(t, n.type)
        if w is None:
            raise Reject(
                f"{what} mixes {t} and {n.type}",
                "CAST the arguments to one type, e.g. CAST(x AS STRING) or CAST(x AS DOUBLE)",
            )
        t = w
    return t


# ---- typers --------------------------------------------------------------------------------------------
def _double_fn(what: str, arity: int = 1) -> Typer:
    def typer(args: list[Node]) -> tuple[SqlType, list[Node], Any]:
        return T.DOUBLE, [_to_double(a, what) for a in args[:arity]], None

    return typer


def _abs(args: list[Node]) -> tuple[SqlType, list[Node], Any]:
    a = _numeric(args[0], "abs")
    return (a.type if a.type != T.NULL else T.DOUBLE), [a], None


def _round(half_even: bool) -> Typer:
    def typer(args: list[Node]) -> tuple[SqlType, list[Node], Any]:
        name = "bround" if half_even else "round"
        x = _numeric(args[0], name)
        d = int_constant(args[1], f"{name}'s scale") if len(args) > 1 else 0
        t = x.type if x.type != T.NULL else T.DOUBLE
        if t.name == "decimal":
            lead = t.precision - t.scale + 1
            t = T.decimal(lead, 0) if d < 0 else T.decimal(lead + min(t.scale, d), min(t.scale, d))
        return t, [x], (d, half_even)

    return typer


def _floor_ceil(name: str) -> Typer:
    def typer(args: list[Node]) -> tuple[SqlType, list[Node], Any]:
        x = _numeric(args[0], name)
        if x.type.name == "decimal":
            return T.decimal(x.type.precision - x.type.scale + 1, 0), [x], None
        if x.type.is_integral:
            return T.LONG, [cast(x, T.LONG)], None
        return T.LONG, [cast(x, T.DOUBLE)], None

    return typer


def _extreme(name: str) -> Typer:
    def typer(args: list[Node]) -> tuple[SqlType, list[Node], Any]:
        t = common(args, name)
        if t == T.NULL:
            t = T.STRING
        return t, [cast(a, t) for a in args], None

    return typer


def _strings(out: SqlType, *conv: Callable[[Node, str], Node], name: str) -> Typer:
    def typer(args: list[Node]) -> tuple[SqlType, list[Node], Any]:
        return out, [c(a, name) for c, a in zip(conv, args)], None

    return typer


def _concat(args: list[Node]) -> tuple[SqlType, list[Node], Any]:
    return T.STRING, [_to_str(a, "concat") for a in args], None


def _concat_ws(args: list[Node]) -> tuple[SqlType, list[Node], Any]:
    return (
        T.STRING,
        [_str_only(args[0], "concat_ws separator")] + [_to_str(a, "concat_ws") for a in args[1:]],
        None,
    )


def _timestamp_millis(args: list[Node]) -> tuple[SqlType, list[Node], Any]:
    x = args[0]
    if not (x.type.is_integral or x.type in (T.NULL, T.ERROR)):
        raise Reject(f"timestamp_millis needs epoch milliseconds (long), got {x.type}", "pass a LONG column")
    return T.TIMESTAMP, [cast(x, T.LONG)], None


def _unix_millis(args: list[Node]) -> tuple[SqlType, list[Node], Any]:
    return T.LONG, [_to_ts(args[0], "unix_millis")], None


def _ts_part(name: str) -> Typer:
    def typer(args: list[Node]) -> tuple[SqlType, list[Node], Any]:
        return T.INT, [_to_ts(args[0], name)], None

    return typer


def _date_part(name: str) -> Typer:
    def typer(args: list[Node]) -> tuple[SqlType, list[Node], Any]:
        return T.INT, [_to_date(args[0], name)], None

    return typer


def _to_date_fn(args: list[Node]) -> tuple[SqlType, list[Node], Any]:
    if len(args) > 1:
        raise Reject(
            "to_date with a format is not supported", "use to_date(x) on 'yyyy-MM-dd' text or a timestamp"
        )
    x = args[0]
    if x.type in (T.STRING, T.DATE, T.TIMESTAMP, T.NULL, T.ERROR):
        return T.DATE, [cast(x, T.DATE)], None
    raise Reject(
        f"to_date needs a string, date or timestamp, got {x.type}", "use to_date(timestamp_millis(ts_ms))"
    )


DATE_FORMAT_LETTERS = {
    "y": (2, 4),
    "M": (1, 4),
    "d": (1, 2),
    "H": (1, 2),
    "m": (1, 2),
    "s": (1, 2),
    "S": (1, 6),
    "E": (1, 4),
}
_PATTERN_TOKEN = re.compile(r"'[^']*'|([A-Za-z])\1*|[^A-Za-z']+")


def parse_date_pattern(pattern: str) -> tuple[tuple[str, str], ...]:
    """Split a date_format pattern into (letters, "") / ("", literal) parts; Reject unsupported letters.

    >>> parse_date_pattern("yyyy-MM-dd'T'HH")
    (('yyyy', ''), ('', '-'), ('MM', ''), ('', '-'), ('dd', ''), ('', 'T'), ('HH', ''))
    """
    parts: list[tuple[str, str]] = []
    pos = 0
    while pos < len(pattern):
        m = _PATTERN_TOKEN.match(pattern, pos)
        if m is None:
            raise Reject(f"unbalanced quote in date pattern {pattern!r}", "close the quoted literal with '")
        tok = m.group(0)
        pos = m.end()
        if tok.startswith("'"):
            parts.append(("", tok[1:-1] if tok != "''" else "'"))
        elif tok[0].isalpha():
            rng = DATE_FORMAT_LETTERS.get(tok[0])
            if rng is None or not rng[0] <= len(tok) <= rng[1] or (tok[0] == "y" and len(tok) == 3):
                raise Reject(
                    f"date pattern field {tok!r} is not supported",
                    "use yyyy yy M MM MMM MMMM d dd H HH m mm s ss S..SSSSSS E EEE EEEE and quoted 'text'",
                )
            parts.append((tok, ""))
        else:
            parts.append(("", tok))
    return tuple(parts)


def _date_format(args: list[Node]) -> tuple[SqlType, list[Node], Any]:
    pat = args[1]
    if pat.op != "lit" or pat.type != T.STRING or pat.value is None:
        raise Reject(
            "date_format's pattern must be a string literal", "write the pattern inline, e.g. 'yyyy-MM-dd'"
        )
    return T.STRING, [_to_ts(args[0], "date_format"), pat], parse_date_pattern(pat.value)


def _split_part(args: list[Node]) -> tuple[SqlType, list[Node], Any]:
    idx = args[2]
    if idx.op == "lit" and idx.value == 0:
        raise Reject("split_part's part index must not be 0", "use 1 for the first part, -1 for the last")
    return (
        T.STRING,
        [_str_only(args[0], "split_part"), _str_only(args[1], "split_part"), _to_int(idx, "split_part")],
        None,
    )


# ---- Python emitters -----------------------------------------------------------------------------------
def _call(fn: str) -> Emit:
    return lambda a, n: f"{fn}({', '.join(a)})"


def _round_py(a: list[str], n: Node) -> str:
    d, even = n.value[1]
    t = n.type
    if t.name == "double":
        return f"_rt.round_double({a[0]}, {d!r}, {even!r})"
    if t.name == "decimal":
        return f"_rt.round_dec({a[0]}, {d!r}, {even!r}, {t.precision!r}, {t.scale!r})"
    return f"_rt.round_int({a[0]}, {d!r}, {even!r}, {32 if t.name == 'int' else 64!r})"


def _abs_py(a: list[str], n: Node) -> str:
    if n.type.name == "int":
        return f"_rt.wrap32(abs({a[0]}))"
    if n.type.name == "long":
        return f"_rt.wrap64(abs({a[0]}))"
    return f"abs({a[0]})"


def _floor_py(up: bool) -> Emit:
    def emit(a: list[str], n: Node) -> str:
        x = n.args[0]
        if x.type.name == "decimal":
            return f"_rt.{'dec_ceil' if up else 'dec_floor'}({a[0]}, {n.type.precision!r})"
        if x.type.is_integral:
            return a[0]
        return f"_rt.{'ceil_long' if up else 'floor_long'}({a[0]})"

    return emit


def _extreme_py(fn: str) -> Emit:
    return lambda a, n: f"_rt.{fn}(({', '.join(a)},), {n.type == T.DOUBLE!r})"


def _round_spark(name: str) -> Emit:
    return lambda a, n: f"{name}({a[0]}, {n.value[1][0]})"


FUNCTIONS: dict[str, FunctionSpec] = {}


def _add(names: Sequence[str], spec: FunctionSpec) -> None:
    for nm in names:
        FUNCTIONS[nm] = spec


_add(["abs"], FunctionSpec("ABS", 1, 1, _abs, _abs_py, "absolute value; int/long wrap at MIN_VALUE"))
_add(
    ["round"],
    FunctionSpec(
        "ROUND",
        1,
        2,
        _round(False),
        _round_py,
        "ROUND(x[, d]) HALF_UP (not banker's)",
        spark=_round_spark("ROUND"),
    ),
)
_add(
    ["bround"],
    FunctionSpec(
        "BROUND", 1, 2, _round(True), _round_py, "BROUND(x[, d]) HALF_EVEN", spark=_round_spark("BROUND")
    ),
)
_add(
    ["floor"],
    FunctionSpec(
        "FLOOR", 1, 1, _floor_ceil("floor"), _floor_py(False), "FLOOR(x) -> long (decimal stays decimal)"
    ),
)
_add(["ceil", "ceiling"], FunctionSpec("CEIL", 1, 1, _floor_ceil("ceil"), _floor_py(True), "CEIL(x) -> long"))
_add(
    ["greatest"],
    FunctionSpec(
        "GREATEST",
        2,
        None,
        _extreme("greatest"),
        _extreme_py("greatest"),
        "largest non-NULL argument",
        strict=False,
    ),
)
_add(
    ["least"],
    FunctionSpec(
        "LEAST", 2, None, _extreme("least"), _extreme_py("least"), "smallest non-NULL argument", strict=False
    ),
)
_add(
    ["pow", "power"],
    FunctionSpec("POWER", 2, 2, _double_fn("power", 2), _call("_rt.java_pow"), "x^y as double"),
)
_add(
    ["sqrt"],
    FunctionSpec("SQRT", 1, 1, _double_fn("sqrt"), _call("_rt.java_sqrt"), "square root; NaN below 0"),
)
_add(
    ["ln"], FunctionSpec("LN", 1, 1, _double_fn("ln"), _call("_rt.spark_ln"), "natural log; NULL for x <= 0")
)
_add(
    ["log10"],
    FunctionSpec(
        "LOG10", 1, 1, _double_fn("log10"), _call("_rt.spark_log10"), "log base 10; NULL for x <= 0"
    ),
)
_add(["exp"], FunctionSpec("EXP", 1, 1, _double_fn("exp"), _call("_rt.java_exp"), "e^x"))
_add(
    ["sign", "signum"],
    FunctionSpec("SIGNUM", 1, 1, _double_fn("signum"), _call("_rt.signum"), "-1.0, 0.0 or 1.0"),
)
_add(
    ["lower", "lcase"],
    FunctionSpec(
        "LOWER", 1, 1, _strings(T.STRING, _to_str, name="lower"), lambda a, n: f"{a[0]}.lower()", "lower case"
    ),
)
_add(
    ["upper", "ucase"],
    FunctionSpec(
        "UPPER", 1, 1, _strings(T.STRING, _to_str, name="upper"), lambda a, n: f"{a[0]}.upper()", "upper case"
    ),
)
_add(
    ["length", "char_length", "character_length"],
    FunctionSpec(
        "LENGTH", 1, 1, _strings(T.INT, _to_str, name="length"), _call("len"), "characters (code points)"
    ),
)
_add(
    ["substring", "substr"],
    FunctionSpec(
        "SUBSTRING",
        2,
        3,
        _strings(T.STRING, _to_str, _to_int, _to_int, name="substring"),
        _call("_rt.substring"),
        "SUBSTRING(s, pos[, len]): 1-based, negative pos from the end",
    ),
)
_add(
    ["concat"],
    FunctionSpec(
        "CONCAT",
        1,
        None,
        _concat,
        lambda a, n: " + ".join(a) if len(a) > 1 else a[0],
        "NULL if any argument is NULL",
    ),
)
_add(
    ["concat_ws"],
    FunctionSpec(
        "CONCAT_WS",
        1,
        None,
        _concat_ws,
        lambda a, n: f"_rt.concat_ws({a[0]}, ({''.join(x + ', ' for x in a[1:])}))",
        "CONCAT_WS(sep, ...) skips NULL arguments",
        strict=False,
    ),
)
_add(
    ["trim"],
    FunctionSpec(
        "TRIM",
        1,
        1,
        _strings(T.STRING, _to_str, name="trim"),
        lambda a, n: f"{a[0]}.strip(' ')",
        "removes leading/trailing spaces (only ' ')",
    ),
)
_add(
    ["ltrim"],
    FunctionSpec(
        "LTRIM",
        1,
        1,
        _strings(T.STRING, _to_str, name="ltrim"),
        lambda a, n: f"{a[0]}.lstrip(' ')",
        "removes leading spaces",
    ),
)
_add(
    ["rtrim"],
    FunctionSpec(
        "RTRIM",
        1,
        1,
        _strings(T.STRING, _to_str, name="rtrim"),
        lambda a, n: f"{a[0]}.rstrip(' ')",
        "removes trailing spaces",
    ),
)
_add(
    ["replace"],
    FunctionSpec(
        "REPLACE",
        2,
        3,
        _strings(T.STRING, _to_str, _to_str, _to_str, name="replace"),
        lambda a, n: f"_rt.replace({a[0]}, {a[1]}, {a[2] if len(a) > 2 else repr('')})",
        "REPLACE(s, search[, replacement])",
    ),
)
_add(
    ["lpad"],
    FunctionSpec(
        "LPAD",
        2,
        3,
        _strings(T.STRING, _to_str, _to_int, _to_str, name="lpad"),
        lambda a, n: f"_rt.lpad({a[0]}, {a[1]}, {a[2] if len(a) > 2 else repr(' ')})",
        "LPAD(s, len[, pad=' '])",
    ),
)
_add(
    ["rpad"],
    FunctionSpec(
        "RPAD",
        2,
        3,
        _strings(T.STRING, _to_str, _to_int, _to_str, name="rpad"),
        lambda a, n: f"_rt.rpad({a[0]}, {a[1]}, {a[2] if len(a) > 2 else repr(' ')})",
        "RPAD(s, len[, pad=' '])",
    ),
)
_add(
    ["instr"],
    FunctionSpec(
        "INSTR",
        2,
        2,
        _strings(T.INT, _to_str, _to_str, name="instr"),
        lambda a, n: f"({a[0]}.find({a[1]}) + 1)",
        "1-based position of a substring, 0 if absent",
    ),
)
_add(
    ["left"],
    FunctionSpec(
        "LEFT",
        2,
        2,
        _strings(T.STRING, _to_str, _to_int, name="left"),
        _call("_rt.left"),
        "first n characters",
    ),
)
_add(
    ["right"],
    FunctionSpec(
        "RIGHT",
        2,
        2,
        _strings(T.STRING, _to_str, _to_int, name="right"),
        _call("_rt.right"),
        "last n characters",
    ),
)
_add(
    ["startswith"],
    FunctionSpec(
        "STARTSWITH",
        2,
        2,
        _strings(T.BOOLEAN, _str_only, _str_only, name="startswith"),
        lambda a, n: f"{a[0]}.startswith({a[1]})",
        "prefix test",
    ),
)
_add(
    ["endswith"],
    FunctionSpec(
        "ENDSWITH",
        2,
        2,
        _strings(T.BOOLEAN, _str_only, _str_only, name="endswith"),
        lambda a, n: f"{a[0]}.endswith({a[1]})",
        "suffix test",
    ),
)
_add(
    ["split_part"],
    FunctionSpec(
        "SPLIT_PART",
        3,
        3,
        _split_part,
        _call("_rt.split_part"),
        "SPLIT_PART(s, delim, n): n-th part (1-based, negative from the end)",
    ),
)
_add(
    ["timestamp_millis"],
    FunctionSpec(
        "TIMESTAMP_MILLIS",
        1,
        1,
        _timestamp_millis,
        lambda a, n: f"({a[0]} * 1000)",
        "epoch milliseconds -> timestamp (UTC)",
    ),
)
_add(
    ["unix_millis"],
    FunctionSpec(
        "UNIX_MILLIS", 1, 1, _unix_millis, lambda a, n: f"({a[0]} // 1000)", "timestamp -> epoch milliseconds"
    ),
)
_add(
    ["hour"],
    FunctionSpec("HOUR", 1, 1, _ts_part("hour"), lambda a, n: f"({a[0]} // 3600000000 % 24)", "0-23, UTC"),
)
_add(
    ["minute"],
    FunctionSpec("MINUTE", 1, 1, _ts_part("minute"), lambda a, n: f"({a[0]} // 60000000 % 60)", "0-59"),
)
_add(
    ["second"],
    FunctionSpec("SECOND", 1, 1, _ts_part("second"), lambda a, n: f"({a[0]} // 1000000 % 60)", "0-59"),
)
_add(["year"], FunctionSpec("YEAR", 1, 1, _date_part("year"), _call("_rt.year"), "calendar year (UTC)"))
_add(["month"], FunctionSpec("MONTH", 1, 1, _date_part("month"), _call("_rt.month"), "1-12"))
_add(
    ["dayofmonth", "day"],
    FunctionSpec("DAYOFMONTH", 1, 1, _date_part("dayofmonth"), _call("_rt.dayofmonth"), "1-31"),
)
_add(
    ["dayofweek"],
    FunctionSpec(
        "DAYOFWEEK", 1, 1, _date_part("dayofweek"), _call("_rt.dayofweek"), "1 = Sunday .. 7 = Saturday"
    ),
)
_add(
    ["to_date"],
    FunctionSpec(
        "TO_DATE",
        1,
        2,
        _to_date_fn,
        lambda a, n: a[0],
        "string/timestamp -> date",
        spark=lambda a, n: f"TO_DATE({a[0]})",
    ),
)
_add(
    ["date_format"],
    FunctionSpec(
        "DATE_FORMAT",
        2,
        2,
        _date_format,
        lambda a, n: f"_rt.format_ts({a[0]}, {n.value[1]!r})",
        "DATE_FORMAT(ts, 'pattern') with letters y M d H m s S E and quoted text",
    ),
)

NON_DETERMINISTIC = frozenset(
    {
        "rand",
        "randn",
        "random",
        "uuid",
        "now",
        "current_timestamp",
        "current_date",
        "localtimestamp",
        "current_timezone",
        "shuffle",
        "monotonically_increasing_id",
        "spark_partition_id",
        "input_file_name",
        "unix_timestamp",
        "curdate",
        "randstr",
        "uniform",
    }
)


def like_pattern_check(pattern: str, escape: str) -> str:
    """'' if ``pattern`` is a valid LIKE pattern for ``escape``, else the problem (Spark rejects it too)."""
    from features.sql.runtime import like_regex

    try:
        like_regex(pattern, escape)
    except ValueError as e:
        return str(e)
    return ""
