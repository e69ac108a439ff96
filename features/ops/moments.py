"""variance and stddev (population: Spark's ``var_pop``/``stddev_pop``).

IR: ``[n, mean, m2]`` where ``m2`` is the sum of squared deviations from the mean. ``update`` is Welford's
online step; ``merge`` is the parallel formula of Chan, Golub and LeVeque ("Updating formulae and a pairwise
algorithm for computing sample variances", 1979; the form in Chan et al., "Algorithms for computing the
sample variance: analysis and recommendations", The American Statistician 37(3), 1983):

    n = na + nb,  δ = mean_b − mean_a,  mean = mean_a + δ·nb/n,  m2 = m2_a + m2_b + δ²·na·nb/n

Both are numerically stable (they work with deviations, never with Σx²), but float results depend slightly
on fold/merge order; :meth:`Variance.agrees` states the tolerance. Not invertible: removing a value from a
float mean/m2 is not exact and can cancel catastrophically, so ``has_inverse`` is False.

Empty → None; one value → 0.0. Any NaN/inf input gives NaN.

>>> from features.ops import fold, get_op
>>> op = get_op("variance")
>>> op.finalize(fold(op, [(x, 0, 0) for x in (2, 4, 4, 4, 5, 5, 7, 9)]))
4.0
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from features.encoding import Reader, uvarint_bytes
from features.ops.base import FLOAT_RTOL, NUMERIC_TYPES, AggOp, finite_scale, read_all, results_close

_TWO_F64 = struct.Struct("<dd")


class Variance(AggOp):
    """Population variance. IR ``[n, mean, m2]`` (n int; mean, m2 floats)."""

    name = "variance"
    deterministic = False
    accepted_inputs = NUMERIC_TYPES

    def init(self) -> list[Any]:
        return [0, 0.0, 0.0]

    def update(self, ir: list[Any], value: Any, ts_ms: int, tie: int) -> list[Any]:
        x = float(value)
        n = ir[0] + 1
        delta = x - ir[1]
        mean = ir[1] + delta / n
        ir[0] = n
        ir[1] = mean
        ir[2] += delta * (x - mean)
        return ir

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        nb = b[0]
        if nb == 0:
            return a
        na = a[0]
        if na == 0:
            a[0], a[1], a[2] = b[0], b[1], b[2]
            return a
        n = na + nb
        delta = b[1] - a[1]
        a[0] = n
        a[1] = a[1] + delta * (nb / n)
        a[2] = a[2] + b[2] + delta * delta * (na * nb / n)
        return a

    def update_many(self, ir: list[Any], values: Any, ts: Any, ties: Any) -> list[Any]:
        arr = np.asarray(values, dtype=np.float64)
        if len(arr) == 0:
            return ir
        with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN inputs give NaN, as update() does
            mean = float(arr.mean())
            m2 = float(((arr - mean) ** 2).sum())
        return self.merge(ir, [len(arr), mean, m2])

    def variance(self, ir: list[Any]) -> float | None:
        n = ir[0]
        if n == 0:
            return None
        m2 = ir[2]
        if m2 != m2:
            return math.nan
        return max(m2, 0.0) / n

    def finalize(self, ir: list[Any]) -> float | None:
        return self.variance(ir)

    def encode(self, ir: list[Any]) -> bytes:
        if ir[0] == 0:
            return b""
        return uvarint_bytes(ir[0]) + _TWO_F64.pack(ir[1], ir[2])

    def decode(self, data: bytes) -> list[Any]:
        if not data:
            return self.init()
        return list(read_all(data, lambda r: [r.uvarint(), Reader.f64(r), Reader.f64(r)]))

    def copy(self, ir: list[Any]) -> list[Any]:
        return list(ir)

    def output_type(self, input_type: str | None = None) -> str:
        return "double"

    def agrees(self, a: Any, b: Any, values: Sequence[Any] | None = None) -> bool:
        """Relative :data:`FLOAT_RTOL`, plus an absolute slack of FLOAT_RTOL·max|x|² when the values are given
        (rounding error of m2 scales with the squared magnitude of the inputs, not with the variance)."""
        scale = finite_scale(values)
        return results_close(a, b, atol=FLOAT_RTOL * scale * scale)


class Stddev(Variance):
    """Population standard deviation: sqrt of :class:`Variance`."""

    name = "stddev"

    def finalize(self, ir: list[Any]) -> float | None:
        v = self.variance(ir)
        return None if v is None else math.sqrt(v)

    def agrees(self, a: Any, b: Any, values: Sequence[Any] | None = None) -> bool:
        """Compared as variances (squares), with :meth:`Variance.agrees`' tolerance."""
        if isinstance(a, float) and isinstance(b, float):
            return super().agrees(a * a, b * b, values)
        return super().agrees(a, b, values)
