"""Bucketed: any op computed separately per bucket value (Chronon's "bucketed aggregations").

IR: ``dict`` bucket → inner IR. Bucket keys are typed values (str, int, bool or None); use one type per
bucket column (``True`` and ``1`` are the same dict key). ``finalize`` gives ``{bucket: inner result}`` with
buckets in :func:`features.ops.base.typed_key` order; encodings list buckets in the same order.

Through the generic :class:`AggOp` interface an event's value is the pair ``(bucket, value)``; pairs whose
value is None are skipped. ``update_bucket`` is the direct form. ``has_inverse`` follows the inner op; a
bucket whose IR finalizes to the inner op's empty result after an inverse is dropped.

>>> from features.ops import fold, get_op
>>> op = Bucketed(get_op("sum", input_type="long"), bucket_type="string")
>>> op.finalize(fold(op, [(("US", 5), 0, 0), (("FR", 2), 1, 0), (("US", 1), 2, 0)]))
{'FR': 2, 'US': 6}
>>> op.output_type()
'map<string,long>'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from features.encoding import Reader, Writer, uvarint_bytes
from features.ops.base import IR, AggOp, OpError, canonical_input_type, read_all, results_close, typed_key

_TYPED: dict[Any, bytes] = {}


def _typed_bytes(v: Any) -> bytes:
    """:meth:`Writer.typed` bytes of a bucket key (memoised for the usual few distinct str/int keys)."""
    if type(v) is str or (type(v) is int and -(2**20) < v < 2**20):
        b = _TYPED.get((type(v), v))
        if b is None:
            w = Writer()
            w.typed(v)
            b = w.getvalue()
            if len(_TYPED) < 65536:
                _TYPED[(type(v), v)] = b
        return b
    w = Writer()
    w.typed(v)
    return w.getvalue()


class Bucketed(AggOp):
    """Wraps ``inner``: one inner IR per bucket."""

    def __init__(self, inner: AggOp, bucket_type: str = "string") -> None:
        if isinstance(inner, Bucketed):
            raise OpError("Bucketed(Bucketed(...)) is not supported: bucket by one column")
        self.inner = inner
        self.bucket_type = canonical_input_type(bucket_type)
        self.name = inner.name  # type: ignore[misc]
        self.is_exact = inner.is_exact  # type: ignore[misc]
        self.deterministic = inner.deterministic  # type: ignore[misc]
        self.params = inner.params
        self.input_type = inner.input_type
        self.declared_input_type = inner.declared_input_type
        self.has_inverse = inner.has_inverse
        self._empty = inner.empty_result()

    def _key(self) -> tuple[Any, ...]:
        return (type(self), self.inner._key(), self.bucket_type)

    def __repr__(self) -> str:
        return f"Bucketed({self.inner!r}, bucket_type={self.bucket_type!r})"

    def init(self) -> dict[Any, IR]:
        return {}

    def update_bucket(
        self, ir: dict[Any, IR], bucket: Any, value: Any, ts_ms: int, tie: int
    ) -> dict[Any, IR]:
        """Add one event with a non-null ``value`` to ``bucket``."""
        inner = self.inner
        cur = ir.get(bucket)
        ir[bucket] = inner.update(inner.init() if cur is None else cur, value, ts_ms, tie)
        return ir

    def update(self, ir: dict[Any, IR], value: Any, ts_ms: int, tie: int) -> dict[Any, IR]:
        bucket, v = value
        if v is None:
            return ir
        return self.update_bucket(ir, bucket, v, ts_ms, tie)

    def inverse(self, ir: dict[Any, IR], value: Any, ts_ms: int, tie: int) -> dict[Any, IR]:
        bucket, v = value
        if v is None:
            return ir
        if not self.has_inverse:
            return self.inner.inverse(ir, v, ts_ms, tie)  # raises OpError with the inner op's message
        if bucket not in ir:
            raise OpError(f"inverse for bucket {bucket!r}, which is not in the IR: the event was never added")
        new = self.inner.inverse(ir[bucket], v, ts_ms, tie)
        if results_close(self.inner.finalize(new), self._empty):
            del ir[bucket]
        else:
            ir[bucket] = new
        return ir

    def merge(self, a: dict[Any, IR], b: dict[Any, IR]) -> dict[Any, IR]:
        inner = self.inner
        for bucket, bir in b.items():
            cur = a.get(bucket)
            a[bucket] = inner.copy(bir) if cur is None else inner.merge(cur, bir)
        return a

    def finalize(self, ir: dict[Any, IR]) -> dict[Any, Any]:
        fin = self.inner.finalize
        return {bucket: fin(ir[bucket]) for bucket in sorted(ir, key=typed_key)}

    def encode(self, ir: dict[Any, IR]) -> bytes:
        enc = self.inner.encode
        typed = _typed_bytes
        parts = [uvarint_bytes(len(ir))]
        for bucket in sorted(ir, key=typed_key) if len(ir) > 1 else ir:
            payload = enc(ir[bucket])
            parts.append(typed(bucket))
            parts.append(uvarint_bytes(len(payload)))
            parts.append(payload)
        return b"".join(parts)

    def decode(self, data: bytes) -> dict[Any, IR]:
        dec = self.inner.decode

        def read(r: Reader) -> dict[Any, IR]:
            out: dict[Any, IR] = {}
            for _ in range(r.uvarint()):
                bucket = r.typed()
                out[bucket] = dec(r.raw())
            return out

        return dict(read_all(data, read))

    def copy(self, ir: dict[Any, IR]) -> dict[Any, IR]:
        cp = self.inner.copy
        return {bucket: cp(bir) for bucket, bir in ir.items()}

    def output_type(self, input_type: str | None = None) -> str:
        return f"map<{self.bucket_type},{self.inner.output_type(input_type)}>"

    def agrees(self, a: Any, b: Any, values: Sequence[Any] | None = None) -> bool:
        """Same buckets, and per bucket the inner op's agreement (given ``values`` as ``(bucket, value)``
        pairs, each bucket is checked against its own values)."""
        if not isinstance(a, dict) or not isinstance(b, dict) or set(a) != set(b):
            return False
        per_bucket: dict[Any, list[Any]] | None = None
        if values is not None:
            per_bucket = {}
            for bucket, v in values:
                if v is not None:
                    per_bucket.setdefault(bucket, []).append(v)
        return all(
            self.inner.agrees(a[k], b[k], None if per_bucket is None else per_bucket.get(k, [])) for k in a
        )
