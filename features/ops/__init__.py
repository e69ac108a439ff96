"""Aggregation ops shared by every engine: the registry, :func:`get_op` and :func:`fold`.

>>> op = get_op("avg", input_type="long")
>>> op.finalize(fold(op, [(1, 10, 0), (None, 11, 0), (4, 12, 0)]))
2.5
>>> get_op("top_k")
Traceback (most recent call last):
...
features.ops.base.OpError: top_k needs k, the number of values to keep: e.g. OpParams(k=5) / Aggregation(..., Op.TOP_K, k=5)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from features.ops.base import IR, AggOp, OpError, OpParams
from features.ops.bucketed import Bucketed
from features.ops.histogram import Histogram
from features.ops.moments import Stddev, Variance
from features.ops.ordered import First, FirstK, Last, LastK
from features.ops.simple import Avg, Count, Max, Min, Sum
from features.ops.sketches import ApproxPercentile, ApproxUniqueCount
from features.ops.topk import BottomK, TopK

__all__ = ["IR", "REGISTRY", "AggOp", "Bucketed", "OpError", "OpParams", "fold", "get_op"]

REGISTRY: dict[str, type[AggOp]] = {
    cls.name: cls
    for cls in (
        Count,
        Sum,
        Avg,
        Min,
        Max,
        Variance,
        Stddev,
        First,
        Last,
        FirstK,
        LastK,
        TopK,
        BottomK,
        Histogram,
        ApproxUniqueCount,
        ApproxPercentile,
    )
}
"""Op name → class, for every op."""


def get_op(name: str, params: OpParams | None = None, input_type: str = "double") -> AggOp:
    """The op ``name`` for ``params`` and a Spark ``input_type``; raises :class:`OpError` with a fix."""
    cls = REGISTRY.get(name.strip().lower()) if isinstance(name, str) else None
    if cls is None:
        close = difflib.get_close_matches(str(name).lower(), REGISTRY, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise OpError(f"unknown op {name!r}; {hint}ops: {', '.join(REGISTRY)}")
    return cls(params, input_type)


def fold(op: AggOp, rows: Iterable[tuple[Any, int, int]]) -> IR:
    """Fold ``(value, ts_ms, tie)`` rows into a fresh IR, skipping None values (a test/fetcher convenience)."""
    ir = op.init()
    update = op.update
    for value, ts_ms, tie in rows:
        if value is not None:
            ir = update(ir, value, ts_ms, tie)
    return ir
