"""Python implementations of Spark (ANSI off) semantics, called by generated row functions.

Every helper here receives non-NULL arguments unless its docstring says otherwise: NULL propagation is
emitted inline by ``to_python``. Helpers never raise for data (Spark with ANSI off returns NULL or wraps),
except where Spark itself fails the query (``split_part`` with part 0).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any

DEC_CTX = Context(prec=200, rounding=ROUND_HALF_UP, Emax=999_999, Emin=-999_999)
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
_US_PER_DAY = 86_400_000_000


# ---- integers: Java two's-complement wrapping ------------------------------------------------------
def wrap32(v: int) -> int:
    """Java int overflow (Spark with ANSI off wraps instead of failing)."""
    if -2147483648 <= v <= 2147483647:
        return v
    return ((v + 2147483648) & 0xFFFFFFFF) - 2147483648


def wrap64(v: int) -> int:
    """Java long overflow."""
    if -9223372036854775808 <= v <= 9223372036854775807:
        return v
    return ((v + 9223372036854775808) & 0xFFFFFFFFFFFFFFFF) - 9223372036854775808


def int_div(a: int, b: int) -> int | None:
    """Spark ``a div b``: truncates toward zero; NULL for b = 0."""
    if b == 0:
        return None
    q = abs(a) // abs(b)
    return wrap64(q if (a < 0) == (b < 0) else -q)


def int_mod(a: int, b: int) -> int | None:
    """Java remainder: the sign follows the dividend; NULL for b = 0."""
    if b == 0:
        return None
    r = abs(a) % abs(b)
    return -r if a < 0 else r


def float_div(a: float, b: float) -> float | None:
    """Spark ``/`` on doubles: NULL (not Infinity) for a zero divisor."""
    if b == 0.0:
        return None
    return a / b


def float_mod(a: float, b: float) -> float | None:
    if b == 0.0:
        return None
    if math.isinf(b) and not math.isinf(a) and not math.isnan(a):
        return a
    return math.fmod(a, b)


def d2i(v: float, bits: int) -> int:
    """Java ``(int) d`` / ``(long) d``: NaN -> 0, saturating, truncating toward zero."""
    if v != v:
        return 0
    hi = (1 << (bits - 1)) - 1
    lo = -(1 << (bits - 1))
    if v >= hi:
        return hi
    if v <= lo:
        return lo
    return int(v)


# ---- doubles: Spark orders NaN above everything and NaN = NaN ----------------------------------------
def d_eq(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)


def d_lt(a: float, b: float) -> bool:
    if a == a and b == b:
        return a < b
    return b != b and a == a


def d_le(a: float, b: float) -> bool:
    return d_lt(a, b) or d_eq(a, b)


def java_pow(a: float, b: float) -> float:
    """``Math.pow``: IEEE results (inf, NaN) where Python's math.pow raises."""
    try:
        return math.pow(a, b)
    except OverflowError:
        neg = a < 0 and b == int(b) and int(b) % 2 == 1
        return -math.inf if neg else math.inf
    except ValueError:
        if a == 0.0:  # 0 ** negative
            odd = b == int(b) and int(b) % 2 == 1
            return -math.inf if (odd and math.copysign(1.0, a) < 0) else math.inf
        return math.nan


def java_exp(a: float) -> float:
    try:
        return math.exp(a)
    except OverflowError:
        return math.inf


def java_sqrt(a: float) -> float:
    return math.sqrt(a) if a >= 0 or a != a else math.nan


def spark_ln(a: float) -> float | None:
    """Spark ``ln``: NULL for a <= 0."""
    if a <= 0.0:
        return None
    return math.log(a) if a != math.inf else math.inf


def spark_log10(a: float) -> float | None:
    if a <= 0.0:
        return None
    return math.log10(a) if a != math.inf else math.inf


def signum(a: float) -> float:
    if a > 0:
        return 1.0
    if a < 0:
        return -1.0
    return a  # 0.0, -0.0 or NaN, like Math.signum


def floor_long(a: float) -> int:
    return d2i(math.floor(a), 64) if math.isfinite(a) else d2i(a, 64)


def ceil_long(a: float) -> int:
    return d2i(math.ceil(a), 64) if math.isfinite(a) else d2i(a, 64)


def greatest(values: Sequence[Any], is_double: bool) -> Any:
    """GREATEST skipping NULLs (NaN is the largest double)."""
    best = None
    for v in values:
        if v is None:
            continue
        if best is None or (d_lt(best, v) if is_double else best < v):
            best = v
    return best


def least(values: Sequence[Any], is_double: bool) -> Any:
    best = None
    for v in values:
        if v is None:
            continue
        if best is None or (d_lt(v, best) if is_double else v < best):
            best = v
    return best


# ---- doubles as text: Java's Double.toString -------------------------------------------------------
def java_double_str(v: float) -> str:
    """``Double.toString``: plain notation in [1e-3, 1e7), else ``d.dddE±n``; shortest digits.

    JDK 17 (unlike 19+) sometimes prints a non-shortest digit string; such values are rare.
    """
    if v != v:
        return "NaN"
    if v == math.inf:
        return "Infinity"
    if v == -math.inf:
        return "-Infinity"
    if v == 0.0:
        return "-0.0" if math.copysign(1.0, v) < 0 else "0.0"
    sign = "-" if v < 0 else ""
    a = abs(v)
    digits, exp = _shortest(a)
    if 1e-3 <= a < 1e7:
        point = exp + 1  # position of the decimal point after the first digit
        if point <= 0:
            return f"{sign}0.{'0' * (-point)}{digits}"
        if point >= len(digits):
            return f"{sign}{digits}{'0' * (point - len(digits))}.0"
        return f"{sign}{digits[:point]}.{digits[point:]}"
    frac = digits[1:] or "0"
    return f"{sign}{digits[0]}.{frac}E{exp}"


def _shortest(a: float) -> tuple[str, int]:
    """Shortest round-trip digits of a positive finite double and its exponent (d.ddd x 10^exp)."""
    _sign, digs, exp = Decimal(repr(a)).as_tuple()
    digits = "".join(map(str, digs)).rstrip("0") or "0"
    n_all = len(digs)
    assert isinstance(exp, int)
    return digits, n_all - 1 + exp


# ---- decimals ---------------------------------------------------------------------------------------
_QUANTA = [Decimal(1).scaleb(-s) for s in range(0, 39)]


def dec_fit(v: Decimal, precision: int, scale: int) -> Decimal | None:
    """Round HALF_UP to ``scale``; NULL when it does not fit ``precision`` digits (ANSI off)."""
    try:
        r = v.quantize(_QUANTA[scale], rounding=ROUND_HALF_UP, context=DEC_CTX)
    except InvalidOperation:
        return None
    if not r.is_finite():
        return None
    if r.is_signed() and r == 0:
        r = r.copy_abs()  # Java's BigDecimal has no negative zero
    if r.adjusted() >= precision - scale:
        return None if r != 0 else r
    return r


def dec_div(a: Decimal, b: Decimal, precision: int, scale: int) -> Decimal | None:
    """Spark decimal ``/``: quotient rounded HALF_UP to 38 places, then to the result scale."""
    if b == 0:
        return None
    q = DEC_CTX.divide(a, b)
    q38 = q.quantize(_QUANTA[38], rounding=ROUND_HALF_UP, context=DEC_CTX)
    return dec_fit(q38, precision, scale)


def dec_mod(a: Decimal, b: Decimal, precision: int, scale: int) -> Decimal | None:
    if b == 0:
        return None
    return dec_fit(DEC_CTX.remainder(a, b), precision, scale)


def dec_from_float(v: float, precision: int, scale: int) -> Decimal | None:
    """CAST(double AS DECIMAL): via the double's shortest decimal text (Scala ``BigDecimal(d)``)."""
    if not math.isfinite(v):
        return None
    return dec_fit(Decimal(repr(v)), precision, scale)


def round_double(v: float, digits: int, half_even: bool) -> float:
    """Spark ROUND/BROUND on a double: ``BigDecimal(d).setScale(digits, HALF_UP|HALF_EVEN).toDouble``."""
    if not math.isfinite(v) or (digits >= 0 and abs(v) >= 2.0**53):
        return v  # already integral: nothing to round (and 1e300 would need 300 digits)
    q = Decimal(1).scaleb(-digits)
    mode = ROUND_HALF_EVEN if half_even else ROUND_HALF_UP
    return 0.0 + float(Decimal(repr(v)).quantize(q, rounding=mode, context=DEC_CTX))


def round_int(v: int, digits: int, half_even: bool, bits: int) -> int:
    if digits >= 0:
        return v
    q = Decimal(1).scaleb(-digits)
    mode = ROUND_HALF_EVEN if half_even else ROUND_HALF_UP
    r = int(Decimal(v).quantize(q, rounding=mode, context=DEC_CTX))
    return wrap32(r) if bits == 32 else wrap64(r)


def round_dec(v: Decimal, digits: int, half_even: bool, precision: int, scale: int) -> Decimal | None:
    q = Decimal(1).scaleb(-digits)
    mode = ROUND_HALF_EVEN if half_even else ROUND_HALF_UP
    r = v.quantize(q, rounding=mode, context=DEC_CTX)
    return dec_fit(r, precision, scale)


def dec_floor(v: Decimal, precision: int) -> Decimal | None:
    return dec_fit(v.to_integral_value(rounding="ROUND_FLOOR"), precision, 0)


def dec_ceil(v: Decimal, precision: int) -> Decimal | None:
    return dec_fit(v.to_integral_value(rounding="ROUND_CEILING"), precision, 0)


def dec_to_long(v: Decimal, bits: int) -> int:
    i = int(v)  # truncates toward zero
    return wrap32(i) if bits == 32 else wrap64(i)


# ---- casts from string ---------------------------------------------------------------------------
_WS = "".join(chr(c) for c in range(0, 33))
_INT_RE = re.compile(r"([+-]?)(\d+)(?:\.\d*)?")
_FLOAT_RE = re.compile(r"[+-]?(?:NaN|Infinity|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)[fFdD]?")
_DEC_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_DATE_RE = re.compile(r"(\d{4})(?:-(\d{1,2})(?:-(\d{1,2})(?:[ T].*)?)?)?", re.DOTALL)
_TRUE = frozenset(("t", "true", "y", "yes", "1"))
_FALSE = frozenset(("f", "false", "n", "no", "0"))
_SPECIAL = {
    "inf": math.inf,
    "+inf": math.inf,
    "infinity": math.inf,
    "+infinity": math.inf,
    "-inf": -math.inf,
    "-infinity": -math.inf,
    "nan": math.nan,
}


def str_to_long(s: str, bits: int) -> int | None:
    """CAST(string AS INT/BIGINT), ANSI off: trimmed, a fraction is truncated, garbage/overflow -> NULL."""
    m = _INT_RE.fullmatch(s.strip(_WS))
    if m is None:
        return None
    v = int(m.group(2))
    if m.group(1) == "-":
        v = -v
    if not -(1 << (bits - 1)) <= v < (1 << (bits - 1)):
        return None
    return v


def str_to_double(s: str) -> float | None:
    t = s.strip(_WS)
    if _FLOAT_RE.fullmatch(t):
        return float(t.rstrip("fFdD"))
    return _SPECIAL.get(t.lower())


def str_to_dec(s: str, precision: int, scale: int) -> Decimal | None:
    t = s.strip(_WS)
    if not _DEC_RE.fullmatch(t):
        return None
    return dec_fit(Decimal(t), precision, scale)


def str_to_bool(s: str) -> bool | None:
    t = s.strip(_WS).lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    return None


def str_to_date(s: str) -> int | None:
    """CAST(string AS DATE) -> days since epoch, or NULL."""
    m = _DATE_RE.fullmatch(s.strip(_WS))
    if m is None:
        return None
    try:
        d = _dt.date(int(m.group(1)), int(m.group(2) or 1), int(m.group(3) or 1))
    except ValueError:
        return None
    return d.toordinal() - _EPOCH_ORDINAL


# ---- strings -------------------------------------------------------------------------------------
def substring(s: str, pos: int, length: int = 2147483647) -> str:
    """Spark ``substring``: 1-based; a negative pos counts from the end; pos 0 acts like 1."""
    n = len(s)
    start = pos - 1 if pos > 0 else (n + pos if pos < 0 else 0)
    end = start + length
    start = max(start, 0)
    if start >= end:
        return ""
    return s[start : min(end, n)]


def left(s: str, n: int) -> str:
    return "" if n <= 0 else s[:n]


def right(s: str, n: int) -> str:
    return "" if n <= 0 else substring(s, -n)


def lpad(s: str, n: int, pad: str) -> str:
    spaces = n - len(s)
    if spaces <= 0 or not pad:
        return s[: max(n, 0)]
    return (pad * (spaces // len(pad) + 1))[:spaces] + s


def rpad(s: str, n: int, pad: str) -> str:
    spaces = n - len(s)
    if spaces <= 0 or not pad:
        return s[: max(n, 0)]
    return s + (pad * (spaces // len(pad) + 1))[:spaces]


def replace(s: str, search: str, repl: str) -> str:
    return s if not search else s.replace(search, repl)


def split_part(s: str, delim: str, part: int) -> str:
    if part == 0:
        raise ValueError("split_part: the part index must not be 0 (Spark fails the query too)")
    parts = s.split(delim) if delim else [s]
    idx = part - 1 if part > 0 else len(parts) + part
    return parts[idx] if 0 <= idx < len(parts) else ""


def in_list(x: Any, items: Sequence[Any], is_double: bool) -> bool | None:
    """SQL ``x IN (...)``: TRUE on a match, else NULL if an item is NULL, else FALSE (x is not NULL)."""
    has_null = False
    for v in items:
        if v is None:
            has_null = True
        elif d_eq(x, v) if is_double else x == v:
            return True
    return None if has_null else False


def concat_ws(sep: str, values: Sequence[str | None]) -> str:
    return sep.join(v for v in values if v is not None)


_LIKE_CACHE: dict[tuple[str, str], re.Pattern[str]] = {}


def like_regex(pattern: str, escape: str = "\\") -> re.Pattern[str]:
    """Spark LIKE as a regex: ``_`` one char, ``%`` any run (newlines too); the escape char makes
    ``_``, ``%`` or itself literal and anything else after it is an error (as in Spark)."""
    key = (pattern, escape)
    hit = _LIKE_CACHE.get(key)
    if hit is not None:
        return hit
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == escape:
            i += 1
            if i >= len(pattern) or pattern[i] not in ("_", "%", escape):
                raise ValueError(
                    f"the escape character {escape!r} must be followed by '_', '%' or itself in {pattern!r}"
                )
            out.append(re.escape(pattern[i]))
        elif c == "_":
            out.append(".")
        elif c == "%":
            out.append(".*")
        else:
            out.append(re.escape(c))
        i += 1
    rx = re.compile("".join(out), re.DOTALL)
    if len(_LIKE_CACHE) < 10_000:
        _LIKE_CACHE[key] = rx
    return rx


def like(s: str, pattern: str, escape: str) -> bool:
    return like_regex(pattern, escape).fullmatch(s) is not None


# ---- time: timestamps are epoch microseconds, dates are epoch days ----------------------------------
def day_of(us: int) -> int:
    return us // _US_PER_DAY


def to_date_obj(days: int) -> _dt.date:
    return _dt.date.fromordinal(days + _EPOCH_ORDINAL)


def year(days: int) -> int:
    return to_date_obj(days).year


def month(days: int) -> int:
    return to_date_obj(days).month


def dayofmonth(days: int) -> int:
    return to_date_obj(days).day


def dayofweek(days: int) -> int:
    """1 = Sunday ... 7 = Saturday (1970-01-01 was a Thursday)."""
    return (days + 4) % 7 + 1


def date_str(days: int) -> str:
    return to_date_obj(days).isoformat()


_DOW = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DOW_FULL = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MON = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MON_FULL = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def format_ts(us: int, parts: tuple[tuple[str, str], ...]) -> str:
    """date_format over a pre-parsed pattern: ``parts`` are (letter-run, "") or ("", literal)."""
    days, rem = divmod(us, _US_PER_DAY)
    d = to_date_obj(days)
    out = []
    for field, lit in parts:
        if not field:
            out.append(lit)
            continue
        c, n = field[0], len(field)
        if c == "y":
            out.append(f"{d.year % 100:02d}" if n == 2 else f"{d.year:0{n}d}")
        elif c == "M":
            if n >= 4:
                out.append(_MON_FULL[d.month - 1])
            elif n == 3:
                out.append(_MON[d.month - 1])
            else:
                out.append(f"{d.month:0{n}d}")
        elif c == "d":
            out.append(f"{d.day:0{n}d}")
        elif c == "H":
            out.append(f"{rem // 3_600_000_000:0{n}d}")
        elif c == "m":
            out.append(f"{rem // 60_000_000 % 60:0{n}d}")
        elif c == "s":
            out.append(f"{rem // 1_000_000 % 60:0{n}d}")
        elif c == "S":
            out.append(f"{rem % 1_000_000:06d}"[:n])
        elif c == "E":
            out.append(_DOW_FULL[d.weekday()] if n >= 4 else _DOW[d.weekday()])
    return "".join(out)


def as_decimal(v: Any) -> Decimal:
    """A decimal column value given as int/float/str (e.g. from JSON) as a Decimal."""
    if isinstance(v, float):
        return Decimal(repr(v))
    return Decimal(v)


def date_days(v: Any) -> int:
    """A date column value (datetime.date or days since epoch) as days since epoch."""
    if isinstance(v, _dt.date):
        return v.toordinal() - _EPOCH_ORDINAL
    return int(v)


def dec_str(v: Decimal) -> str:
    """CAST(decimal AS STRING): plain notation with the type's scale."""
    return format(v, "f")
