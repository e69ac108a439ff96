"""Sliding-window aggregation over sorted index ranges with any shared op, in O(events + queries).

The backfill (:mod:`spark_jobs.bucket_fold`) sorts a bucket's events by ``(key, ts, tie)`` and turns every
query's window into an index range ``[lo, hi)`` of that order. For one (aggregation, window), sorting the
queries by ``(lo, hi)`` makes ``hi`` non-decreasing too: within a key both window ends are monotone in the
query time (also with offsets, hop alignment and the serving-delay cut), and different keys occupy disjoint,
ascending index segments. So a single left-to-right pass can answer every query with a bounded number of op
calls per event and per query, whatever the window length — instead of folding each range from scratch.

Two strategies, both using only the shared op contract (:mod:`features.ops`):

* **Invertible ops** (``has_inverse``: histogram, bucketed count/sum, ...): one running IR; events entering
  the window are ``update``-d in, events leaving are ``inverse``-d out; a query is ``finalize(running)``. A
  query whose range does not overlap the running one restarts from ``init()``.
* **Any monoid** — a two-stack sliding-window aggregation specialised to queries known in advance. Queries
  are cut into groups: a group starts at the first not-yet-answered query, whose ``hi`` becomes the group's
  *pivot* ``p``, and holds every following query with ``lo <= p``. Each query of the group is
  ``suffix(lo, p) ⊕ prefix(p, hi)``:

  - the *back* pass walks from ``p`` down to the group's smallest ``lo``, folding events into one running IR
    and snapshotting (``copy``) it at every distinct ``lo`` the group needs: the front stack of suffix
    aggregates, restricted to the positions actually queried;
  - the *front* pass folds events from ``p`` forward into a prefix IR as ``hi`` advances; a query merges a
    copy of its suffix snapshot with the prefix (no copy on the snapshot's last use) and finalizes.
  - Queries that share the group's smallest ``lo`` (the common case for long and lifetime windows) skip the
    merge: the back pass's running IR simply keeps folding forward and is finalized directly.

  Back ranges of consecutive groups are disjoint (the next group's first ``lo`` is beyond the pivot) and so
  are front ranges (``hi`` is monotone), so every event is folded at most three times, and every query costs
  at most one copy, one merge and one finalize.

Ties need no special care: ranges come from ``searchsorted`` on timestamps, so events of one ``ts`` are all in
or all out. Order-sensitive ops (first/last/...) compare ``(ts, tie)`` in their ``update``/``merge``, so the
backward fold order does not matter; for the others the op laws say results do not depend on order (KLL is
equal within its rank error, variance within :meth:`AggOp.agrees`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from features.ops import AggOp

IR = Any
Fold = Callable[[IR, int, int], IR]
"""``fold(ir, a, b)``: the IR with events ``a .. b-1`` (of the sorted order) added (or removed); may mutate."""


def direct_fold(op: AggOp, lo: Sequence[int], hi: Sequence[int], add: Fold) -> list[Any]:
    """Each range folded from scratch: the O(window)-per-query baseline (tests, and the fallback)."""
    return [op.finalize(add(op.init(), int(a), int(b)) if b > a else op.init()) for a, b in zip(lo, hi)]


def sliding_fold(
    op: AggOp,
    lo: np.ndarray,
    hi: np.ndarray,
    add: Fold,
    remove: Fold | None = None,
) -> list[Any]:
    """``op.finalize`` of the events ``[lo[i], hi[i])`` for every query ``i``, in query order.

    ``add(ir, a, b)`` folds events ``a .. b-1`` into ``ir``; ``remove`` (only for invertible ops) takes them
    back out. Ranges may come in any order; they must be monotone once sorted by ``(lo, hi)`` (see the
    module docstring), otherwise each is folded directly.
    """
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    n = len(lo)
    out: list[Any] = [None] * n
    if n == 0:
        return out
    hi = np.maximum(hi, lo)
    nonempty = hi > lo
    if not nonempty.all():
        empty_value = op.finalize(op.init())
        for i in np.flatnonzero(~nonempty).tolist():
            out[i] = empty_value
        if not nonempty.any():
            return out
    idx = np.flatnonzero(nonempty)
    m = int(hi.max()) + 1
    uniq, inverse = np.unique(lo[idx] * m + hi[idx], return_inverse=True)
    ulo, uhi = uniq // m, uniq % m
    if len(uhi) > 1 and not bool(np.all(np.diff(uhi) >= 0)):
        values = direct_fold(op, ulo.tolist(), uhi.tolist(), add)  # not monotone: never from bucket_fold
    elif remove is not None:
        values = _invertible(op, ulo.tolist(), uhi.tolist(), add, remove)
    else:
        values = _two_stacks(op, ulo.tolist(), uhi.tolist(), add)
    for i, u in zip(idx.tolist(), np.asarray(inverse).reshape(-1).tolist()):
        out[i] = values[u]
    return out


def _invertible(op: AggOp, lo: list[int], hi: list[int], add: Fold, remove: Fold) -> list[Any]:
    out: list[Any] = []
    finalize = op.finalize
    run = op.init()
    plo = phi = lo[0]
    for a, b in zip(lo, hi):
        if a >= phi:  # no overlap with the running range: start afresh (cheaper than removing it all)
            run = op.init()
            plo = phi = a
        if b > phi:
            run = add(run, phi, b)
            phi = b
        if a > plo:
            run = remove(run, plo, a)
            plo = a
        out.append(finalize(run))
    return out


def _two_stacks(op: AggOp, lo: list[int], hi: list[int], add: Fold) -> list[Any]:
    """Sorted, distinct, non-empty ranges with monotone ``hi``; see the module docstring."""
    n = len(lo)
    out: list[Any] = [None] * n
    finalize, merge, copy, init = op.finalize, op.merge, op.copy, op.init
    i = 0
    while i < n:
        p = hi[i]
        j = bisect_right(lo, p, i)  # the group: queries i .. j-1, all with lo <= p
        first = lo[i]
        k = bisect_right(lo, first, i, j)  # queries i .. k-1 share the smallest lo
        # Back pass: suffix snapshots at the group's other distinct lo values, from p down to `first`.
        snaps: dict[int, Any] = {}
        run = init()
        pos = p
        q = j - 1
        while q >= k:
            a = lo[q]
            if a < pos:
                run = add(run, a, pos)
                pos = a
            if a < p:
                snaps[a] = copy(run)
            while q >= k and lo[q] == a:
                q -= 1
        if first < pos:
            run = add(run, first, pos)
        # Front pass, first the queries sharing `first`: keep folding forward into the back pass's IR.
        pos = p
        for q in range(i, k):
            b = hi[q]
            if b > pos:
                run = add(run, pos, b)
                pos = b
            out[q] = finalize(run)
        # Then the others: suffix snapshot ⊕ prefix from p.
        if k < j:
            prefix = init()
            pos = p
            for q in range(k, j):
                a, b = lo[q], hi[q]
                if b > pos:
                    prefix = add(prefix, pos, b)
                    pos = b
                if a == p:
                    out[q] = finalize(prefix)
                    continue
                suffix = snaps[a]
                if b == p:
                    out[q] = finalize(suffix)
                elif q + 1 < j and lo[q + 1] == a:
                    out[q] = finalize(merge(copy(suffix), prefix))
                else:  # the snapshot's last use: merge into it
                    out[q] = finalize(merge(suffix, prefix))
                    del snaps[a]
        i = j
    return out
