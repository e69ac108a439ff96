"""histogram: value → number of occurrences.

IR: a dict from coerced value to a positive count. Invertible (a count that reaches 0 is removed). Output
and encoding list keys in :func:`features.ops.base.typed_key` order, so both are independent of arrival
order. Empty → {}. The IR grows with the number of distinct values: use it on low-cardinality columns
(categories, countries, MCCs), and approx_unique_count for high-cardinality ones.

>>> from features.ops import fold, get_op
>>> op = get_op("histogram", input_type="string")
>>> op.finalize(fold(op, [(v, 0, 0) for v in "abcab"]))
{'a': 2, 'b': 2, 'c': 1}
"""

from __future__ import annotations

from typing import Any

from features.encoding import Reader, Writer
from features.ops.base import AggOp, OpError, canonical_input_type, read_all, typed_key


class Histogram(AggOp):
    """Count per distinct value."""

    name = "histogram"
    has_inverse = True

    def init(self) -> dict[Any, int]:
        return {}

    def update(self, ir: dict[Any, int], value: Any, ts_ms: int, tie: int) -> dict[Any, int]:
        v = self.coerce(value)
        ir[v] = ir.get(v, 0) + 1
        return ir

    def inverse(self, ir: dict[Any, int], value: Any, ts_ms: int, tie: int) -> dict[Any, int]:
        v = self.coerce(value)
        c = ir.get(v)
        if c is None:
            raise OpError(f"histogram inverse of {v!r}, which is not in the IR: the event was never added")
        if c == 1:
            del ir[v]
        else:
            ir[v] = c - 1
        return ir

    def merge(self, a: dict[Any, int], b: dict[Any, int]) -> dict[Any, int]:
        for v, c in b.items():
            a[v] = a.get(v, 0) + c
        return a

    def finalize(self, ir: dict[Any, int]) -> dict[Any, int]:
        return {v: ir[v] for v in sorted(ir, key=typed_key)}

    def encode(self, ir: dict[Any, int]) -> bytes:
        w = Writer()
        w.uvarint(len(ir))
        for v in sorted(ir, key=typed_key):
            self.write_value(w, v)
            w.uvarint(ir[v])
        return w.getvalue()

    def decode(self, data: bytes) -> dict[Any, int]:
        def read(r: Reader) -> dict[Any, int]:
            out: dict[Any, int] = {}
            for _ in range(r.uvarint()):
                v = self.coerce(self.read_value(r))
                out[v] = r.uvarint()
            return out

        return dict(read_all(data, read))

    def copy(self, ir: dict[Any, int]) -> dict[Any, int]:
        return dict(ir)

    def output_type(self, input_type: str | None = None) -> str:
        t = canonical_input_type(input_type) if input_type else self.input_type
        return f"map<{t},long>"
