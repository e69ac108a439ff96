"""count, sum, avg, min, max.

IRs:

* count — ``int``.
* sum/avg — ``[n, acc]``: ``n`` the number of values; ``acc`` an exact Python ``int`` for integer inputs
  (long/int/boolean, True = 1) or an exact double sum (:mod:`features.ops.exact_sum`) for double inputs.
  Because both are exact, sum and avg are order-independent to the bit and **invertible for every input
  type** (the only loss of exactness is a double sum overflowing ±1.8e308, which is recorded as ±inf).
* min/max — ``None`` or the value. NaN is the greatest double (Spark's ordering): max is NaN if any value is
  NaN; min ignores NaN unless every value is NaN.

>>> from features.ops import fold, get_op
>>> op = get_op("sum", input_type="double")
>>> op.finalize(fold(op, [(0.1, 1, 0), (0.2, 2, 0), (-0.3, 3, 0)]))  # exact: not 5.551115123125783e-17
2.7755575615628914e-17
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from features.encoding import Reader, svarint_bytes, uvarint_bytes
from features.ops import exact_sum
from features.ops.base import (
    INTEGER_TYPES,
    IR,
    NAN,
    NUMERIC_TYPES,
    AggOp,
    OpError,
    canonical_input_type,
    read_all,
)

_F64S: dict[int, struct.Struct] = {}


def _f64s(n: int) -> struct.Struct:
    """``n`` little-endian doubles (what ``n`` × :meth:`Writer.f64` appends)."""
    st = _F64S.get(n)
    if st is None:
        st = _F64S[n] = struct.Struct(f"<{n}d")
    return st


class Count(AggOp):
    """Number of non-null values. Invertible. Empty → 0."""

    name = "count"
    has_inverse = True

    def init(self) -> int:
        return 0

    def update(self, ir: int, value: Any, ts_ms: int, tie: int) -> int:
        return ir + 1

    def inverse(self, ir: int, value: Any, ts_ms: int, tie: int) -> int:
        if ir <= 0:
            raise OpError("count inverse of an empty count: the event was never added to this IR")
        return ir - 1

    def update_many(self, ir: int, values: Any, ts: Any, ties: Any) -> int:
        return ir + len(values)

    def merge(self, a: int, b: int) -> int:
        return a + b

    def finalize(self, ir: int) -> int:
        return ir

    def encode(self, ir: int) -> bytes:
        return uvarint_bytes(ir)

    def decode(self, data: bytes) -> int:
        return int(read_all(data, Reader.uvarint))

    def copy(self, ir: int) -> int:
        return ir

    def output_type(self, input_type: str | None = None) -> str:
        return "long"


class Sum(AggOp):
    """Sum of the values: exact ``int`` for integer inputs, correctly rounded exact sum for doubles.
    Empty → None. Invertible for every input type."""

    name = "sum"
    accepted_inputs = NUMERIC_TYPES
    has_inverse = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.integral = self.input_type in INTEGER_TYPES

    def init(self) -> list[Any]:
        return [0, 0] if self.integral else [0, exact_sum.new()]

    def update(self, ir: list[Any], value: Any, ts_ms: int, tie: int) -> list[Any]:
        ir[0] += 1
        if self.integral:
            ir[1] += int(value)
        else:
            exact_sum.add(ir[1], float(value))
        return ir

    def inverse(self, ir: list[Any], value: Any, ts_ms: int, tie: int) -> list[Any]:
        if ir[0] <= 0:
            raise OpError(f"{self.name} inverse on an empty IR: the event was never added")
        ir[0] -= 1
        if self.integral:
            ir[1] -= int(value)
        else:
            exact_sum.negate_into(ir[1], float(value))
        return ir

    def update_many(self, ir: list[Any], values: Any, ts: Any, ties: Any) -> list[Any]:
        if self.integral:
            vals = values.tolist() if isinstance(values, np.ndarray) else list(values)
            ir[0] += len(vals)
            ir[1] += sum(map(int, vals))
        else:
            arr = np.asarray(values, dtype=np.float64)
            ir[0] += len(arr)
            exact_sum.add_array(ir[1], arr)
        return ir

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        a[0] += b[0]
        if self.integral:
            a[1] += b[1]
        else:
            exact_sum.merge(a[1], b[1])
        return a

    def total(self, ir: list[Any]) -> int | float:
        return ir[1] if self.integral else exact_sum.total(ir[1])

    def finalize(self, ir: list[Any]) -> int | float | None:
        if ir[0] == 0:
            return None
        return int(ir[1]) if self.integral else exact_sum.total(ir[1])

    def encode(self, ir: list[Any]) -> bytes:
        # n, then: integer → svarint total; double → uvarint(len(partials) << 1 | has_specials),
        # [3 uvarint special counts], partials as f64.
        if self.integral:
            return uvarint_bytes(ir[0]) + svarint_bytes(ir[1])
        s = ir[1]
        n_partials = len(s) - exact_sum.P0
        if s[0] or s[1] or s[2]:
            head = uvarint_bytes(n_partials << 1 | 1) + b"".join(uvarint_bytes(int(c)) for c in s[:3])
        else:
            head = uvarint_bytes(n_partials << 1)
        return uvarint_bytes(ir[0]) + head + _f64s(n_partials).pack(*s[exact_sum.P0 :])

    def decode(self, data: bytes) -> list[Any]:
        def read(r: Reader) -> list[Any]:
            n = r.uvarint()
            if self.integral:
                return [n, r.svarint()]
            head = r.uvarint()
            s: list[float] = [r.uvarint(), r.uvarint(), r.uvarint()] if head & 1 else exact_sum.new()
            s.extend(r.f64() for _ in range(head >> 1))
            return [n, s]

        return list(read_all(data, read))

    def copy(self, ir: list[Any]) -> list[Any]:
        return [ir[0], ir[1] if self.integral else list(ir[1])]

    def output_type(self, input_type: str | None = None) -> str:
        t = canonical_input_type(input_type) if input_type else self.input_type
        return "long" if t in INTEGER_TYPES else "double"


class Avg(Sum):
    """Mean of the values as a double (exact sum / count, one rounding for integers). Empty → None.
    Same IR as :class:`Sum`, so also invertible."""

    name = "avg"

    def finalize(self, ir: list[Any]) -> float | None:
        if ir[0] == 0:
            return None
        if self.integral:
            return ir[1] / ir[0]  # int / int is correctly rounded in Python
        return exact_sum.total(ir[1]) / ir[0]

    def output_type(self, input_type: str | None = None) -> str:
        return "double"


class _Extreme(AggOp):
    """Shared code of min/max: IR is None or the current extreme value."""

    def init(self) -> Any:
        return None

    def merge(self, a: Any, b: Any) -> Any:
        if b is None:
            return a
        return self.update(a, b, 0, 0)

    def finalize(self, ir: Any) -> Any:
        return ir

    def encode(self, ir: Any) -> bytes:
        if ir is None:
            return b""
        return self.value_bytes(ir)

    def decode(self, data: bytes) -> Any:
        if not data:
            return None
        return self.coerce(read_all(data, self.read_value))

    def copy(self, ir: IR) -> IR:
        return ir

    def output_type(self, input_type: str | None = None) -> str:
        return canonical_input_type(input_type) if input_type else self.input_type

    def _batch_extreme(self, values: Any) -> Any:
        raise NotImplementedError

    def update_many(self, ir: Any, values: Any, ts: Any, ties: Any) -> Any:
        if len(values) == 0:
            return ir
        return self.update(ir, self._batch_extreme(values), 0, 0)


class Min(_Extreme):
    """Smallest value (NaN only if all values are NaN). Empty → None."""

    name = "min"

    def update(self, ir: Any, value: Any, ts_ms: int, tie: int) -> Any:
        v = self.coerce(value)
        # `ir != ir` is true only for NaN, which any value replaces (NaN is the greatest double).
        if ir is None or v < ir or ir != ir:
            return v
        return ir

    def _batch_extreme(self, values: Any) -> Any:
        arr = np.asarray(values)
        if arr.dtype.kind == "f":
            return NAN if np.isnan(arr).all() else float(np.nanmin(arr))
        if arr.dtype.kind in "iub":
            return arr.min().item()
        return min(arr.tolist())


class Max(_Extreme):
    """Largest value (NaN if any value is NaN). Empty → None."""

    name = "max"

    def update(self, ir: Any, value: Any, ts_ms: int, tie: int) -> Any:
        v = self.coerce(value)
        if ir is None or v > ir or v != v:
            return v
        return ir

    def _batch_extreme(self, values: Any) -> Any:
        arr = np.asarray(values)
        if arr.dtype.kind == "f":
            return NAN if np.isnan(arr).any() else float(arr.max())
        if arr.dtype.kind in "iub":
            return arr.max().item()
        return max(arr.tolist())
