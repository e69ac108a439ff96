"""top_k and bottom_k: the k largest / smallest values, duplicates kept.

IR: a list of at most k coerced values sorted ascending (NaN greatest for doubles). Output: top_k
descending, bottom_k ascending; empty → []. Not invertible (a removed value's replacement is not kept).

>>> from features.ops import OpParams, fold, get_op
>>> op = get_op("top_k", OpParams(k=3), "long")
>>> op.finalize(fold(op, [(v, 0, 0) for v in (5, 1, 9, 5, 7)]))
[9, 7, 5]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from features.encoding import Reader, uvarint_bytes
from features.ops.base import AggOp, canonical_input_type, read_all, value_key
from features.ops.bounded import bounded_insert, bounded_merge


class _Extremes(AggOp):
    """Shared code: keep the k largest (``keep_largest``) or k smallest values in an ascending list."""

    uses_k = True
    keep_largest: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.vkey: Callable[[Any], Any] | None = value_key(self.input_type)

    def init(self) -> list[Any]:
        return []

    def update(self, ir: list[Any], value: Any, ts_ms: int, tie: int) -> list[Any]:
        return bounded_insert(ir, self.coerce(value), self.k, self.vkey, self.keep_largest)

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        return bounded_merge(a, b, self.k, self.vkey, self.keep_largest)

    def encode(self, ir: list[Any]) -> bytes:
        vb = self.value_bytes
        return uvarint_bytes(len(ir)) + b"".join([vb(v) for v in ir])

    def decode(self, data: bytes) -> list[Any]:
        def read(r: Reader) -> list[Any]:
            return [self.coerce(self.read_value(r)) for _ in range(r.uvarint())]

        return list(read_all(data, read))

    def copy(self, ir: list[Any]) -> list[Any]:
        return list(ir)

    def output_type(self, input_type: str | None = None) -> str:
        t = canonical_input_type(input_type) if input_type else self.input_type
        return f"array<{t}>"


class TopK(_Extremes):
    """The k largest values, descending."""

    name = "top_k"
    keep_largest = True

    def finalize(self, ir: list[Any]) -> list[Any]:
        return ir[::-1]


class BottomK(_Extremes):
    """The k smallest values, ascending."""

    name = "bottom_k"
    keep_largest = False

    def finalize(self, ir: list[Any]) -> list[Any]:
        return list(ir)
