"""first, last, first_k, last_k: values picked by event order.

Events are totally ordered by ``(ts_ms, tie, value)``; the value part (compared with NaN greatest, after
coercion to the input type) only matters when two events share ``ts_ms`` and ``tie``, and makes the result
independent of arrival order even then. ``first`` is the minimum, ``last`` the maximum; ``first_k`` keeps
the k earliest (output oldest first), ``last_k`` the k latest (output newest first). Duplicate events count
as separate events.

IRs: first/last — ``None`` or ``[ts_ms, tie, value]``; first_k/last_k — a list of ``(ts_ms, tie, value)``
tuples sorted ascending by the order, at most k long. None of these is invertible (a removed event's
replacement is not in the IR).

>>> from features.ops import OpParams, fold, get_op
>>> events = [("b", 2, 0), ("a", 1, 5), ("c", 2, 1), ("z", 1, 5)]
>>> op = get_op("last", input_type="string"); op.finalize(fold(op, events))
'c'
>>> op = get_op("last_k", OpParams(k=3), "string"); op.finalize(fold(op, events))
['c', 'b', 'z']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from features.encoding import Reader, svarint_bytes, uvarint_bytes
from features.ops.base import AggOp, canonical_input_type, double_key, read_all
from features.ops.bounded import bounded_insert, bounded_merge

Entry = tuple[int, int, Any]


def _entry_key_double(e: Entry) -> tuple[int, int, tuple[int, float]]:
    return (e[0], e[1], double_key(e[2]))


class _Single(AggOp):
    """Shared code of first/last: IR ``None`` or ``[ts_ms, tie, value]``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.vkey: Callable[[Any], Any] = double_key if self.input_type == "double" else _identity

    def init(self) -> list[Any] | None:
        return None

    def _lt(self, ts: int, tie: int, v: Any, ots: int, otie: int, ov: Any) -> bool:
        """Whether event (ts, tie, v) orders strictly before event (ots, otie, ov)."""
        if ts != ots:
            return ts < ots
        if tie != otie:
            return tie < otie
        vkey = self.vkey
        return bool(vkey(v) < vkey(ov))

    keep_latest: bool
    """first keeps the earliest event, last the latest."""

    def _replaces(self, ts: int, tie: int, v: Any, cur: list[Any]) -> bool:
        """Whether event (ts, tie, v) should replace the kept event ``cur``."""
        if self.keep_latest:
            return self._lt(cur[0], cur[1], cur[2], ts, tie, v)
        return self._lt(ts, tie, v, cur[0], cur[1], cur[2])

    def update(self, ir: list[Any] | None, value: Any, ts_ms: int, tie: int) -> list[Any]:
        v = self.coerce(value)
        if ir is None:
            return [ts_ms, tie, v]
        if self._replaces(ts_ms, tie, v, ir):
            ir[0], ir[1], ir[2] = ts_ms, tie, v
        return ir

    def merge(self, a: list[Any] | None, b: list[Any] | None) -> list[Any] | None:
        if b is None:
            return a
        if a is None:
            return list(b)
        if self._replaces(b[0], b[1], b[2], a):
            a[0], a[1], a[2] = b[0], b[1], b[2]
        return a

    def finalize(self, ir: list[Any] | None) -> Any:
        return None if ir is None else ir[2]

    def encode(self, ir: list[Any] | None) -> bytes:
        if ir is None:
            return b""
        return svarint_bytes(ir[0]) + svarint_bytes(ir[1]) + self.value_bytes(ir[2])

    def decode(self, data: bytes) -> list[Any] | None:
        if not data:
            return None
        return list(read_all(data, lambda r: [r.svarint(), r.svarint(), self.coerce(self.read_value(r))]))

    def copy(self, ir: list[Any] | None) -> list[Any] | None:
        return None if ir is None else list(ir)

    def output_type(self, input_type: str | None = None) -> str:
        return canonical_input_type(input_type) if input_type else self.input_type


def _identity(v: Any) -> Any:
    return v


class First(_Single):
    """Value of the earliest event by ``(ts_ms, tie, value)``. Empty → None."""

    name = "first"
    keep_latest = False


class Last(_Single):
    """Value of the latest event by ``(ts_ms, tie, value)``. Empty → None."""

    name = "last"
    keep_latest = True


class _Bounded(AggOp):
    """Shared code of first_k/last_k: a sorted list of at most k ``(ts_ms, tie, value)`` entries."""

    uses_k = True
    keep_largest: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ekey: Callable[[Entry], Any] | None = _entry_key_double if self.input_type == "double" else None

    def init(self) -> list[Entry]:
        return []

    def update(self, ir: list[Entry], value: Any, ts_ms: int, tie: int) -> list[Entry]:
        return bounded_insert(ir, (ts_ms, tie, self.coerce(value)), self.k, self.ekey, self.keep_largest)

    def merge(self, a: list[Entry], b: list[Entry]) -> list[Entry]:
        return bounded_merge(a, b, self.k, self.ekey, self.keep_largest)

    def encode(self, ir: list[Entry]) -> bytes:
        # count, then entries ascending: first ts as svarint, later ts as non-negative deltas.
        parts = [uvarint_bytes(len(ir))]
        vb = self.value_bytes
        prev = None
        for ts, tie, v in ir:
            parts.append(svarint_bytes(ts) if prev is None else uvarint_bytes(ts - prev))
            prev = ts
            parts.append(svarint_bytes(tie))
            parts.append(vb(v))
        return b"".join(parts)

    def decode(self, data: bytes) -> list[Entry]:
        def read(r: Reader) -> list[Entry]:
            out: list[Entry] = []
            ts = 0
            for i in range(r.uvarint()):
                ts = r.svarint() if i == 0 else ts + r.uvarint()
                out.append((ts, r.svarint(), self.coerce(self.read_value(r))))
            return out

        return list(read_all(data, read))

    def copy(self, ir: list[Entry]) -> list[Entry]:
        return list(ir)

    def output_type(self, input_type: str | None = None) -> str:
        t = canonical_input_type(input_type) if input_type else self.input_type
        return f"array<{t}>"


class FirstK(_Bounded):
    """Values of the k earliest events, oldest first. Empty → []."""

    name = "first_k"
    keep_largest = False

    def finalize(self, ir: list[Entry]) -> list[Any]:
        return [e[2] for e in ir]


class LastK(_Bounded):
    """Values of the k latest events, newest first. Empty → []."""

    name = "last_k"
    keep_largest = True

    def finalize(self, ir: list[Entry]) -> list[Any]:
        return [e[2] for e in reversed(ir)]
