"""A sorted list that keeps only the k largest (or smallest) items: the IR of first_k/last_k/top_k/bottom_k."""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable
from typing import Any


def bounded_insert(
    ir: list[Any], item: Any, k: int, key: Callable[[Any], Any] | None, keep_largest: bool
) -> list[Any]:
    """Insert ``item`` into the ascending list ``ir`` (by ``key``) and drop what falls outside the k kept."""
    if len(ir) < k:
        insort(ir, item, key=key)
    elif keep_largest:
        if (key(item) > key(ir[0])) if key else (item > ir[0]):
            insort(ir, item, key=key)
            del ir[0]
    elif (key(item) < key(ir[-1])) if key else (item < ir[-1]):
        insort(ir, item, key=key)
        ir.pop()
    return ir


def bounded_merge(
    a: list[Any], b: list[Any], k: int, key: Callable[[Any], Any] | None, keep_largest: bool
) -> list[Any]:
    """Merge ascending ``b`` into ``a`` (``a`` is mutated, ``b`` is not), keeping the k largest or smallest."""
    if not b:
        return a
    a.extend(b)
    a.sort(key=key)
    if len(a) > k:
        if keep_largest:
            del a[: len(a) - k]
        else:
            del a[k:]
    return a
