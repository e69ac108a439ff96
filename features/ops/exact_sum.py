"""Exact, order-independent summation of doubles (the IR behind sum/avg of double inputs).

Floating-point ``+`` is not associative, so a plain float IR would make stream tiles, batch values and the
backfill disagree in the last bits depending on fold and merge order. Instead the IR keeps the *exact* sum
as a short list of non-overlapping partials (Shewchuk's algorithm, the one behind ``math.fsum``; written here
from the published description: J. R. Shewchuk, "Adaptive Precision Floating-Point Arithmetic and Fast
Robust Geometric Predicates", 1997). ``finalize`` rounds the exact sum once, so every engine gets the same
bits whatever the order, and subtracting a value is exact (sum/avg of doubles are invertible).

Non-finite values are counted, not added (``inf - inf`` would poison the partials): NaN count, +inf count,
-inf count. The result is NaN if any NaN or both infinities were seen, else ±inf, else the rounded sum.

Limit: exactness holds while partial sums stay below ~1.8e308 in magnitude; a partial that overflows is
recorded as an infinity (the IEEE result), after which ``inverse`` is no longer exact.

State layout (a plain list so the per-event path stays cheap): ``[nan, pos_inf, neg_inf, p0, p1, ...]``.

>>> s = new(); [add(s, x) for x in (1e16, 1.0, -1e16)] and None; total(s)
1.0
"""

from __future__ import annotations

import math

import numpy as np

NAN_I, POS_I, NEG_I, P0 = 0, 1, 2, 3


def new() -> list[float]:
    return [0, 0, 0]


def add(s: list[float], x: float) -> None:
    """Add ``x`` (a float) to the exact sum ``s`` in place."""
    if x - x != 0.0:  # inf or nan
        s[NAN_I if x != x else (POS_I if x > 0 else NEG_I)] += 1
        return
    n = len(s)
    if n == P0 + 1:  # fast path: the usual single partial (two-sum with one partial, no list surgery)
        y = s[P0]
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        if hi - hi != 0.0:
            s[POS_I if hi > 0 else NEG_I] += 1
            del s[P0:]
            return
        lo = y - (hi - x)
        if lo:
            s[P0] = lo
            s.append(hi)
        else:
            s[P0] = hi
        return
    if n == P0:
        s.append(x)
        return
    i = P0
    for j in range(P0, n):
        y = s[j]
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        if hi - hi != 0.0:  # overflow: the exact sum left the double range
            s[POS_I if hi > 0 else NEG_I] += 1
            del s[i:]
            return
        lo = y - (hi - x)
        if lo:
            s[i] = lo
            i += 1
        x = hi
    del s[i:]
    s.append(x)


def add_specials(s: list[float], nan: int, pos_inf: int, neg_inf: int) -> None:
    s[NAN_I] += nan
    s[POS_I] += pos_inf
    s[NEG_I] += neg_inf


def merge(a: list[float], b: list[float]) -> None:
    """Add the exact sum ``b`` into ``a`` (``b`` is not modified)."""
    add_specials(a, int(b[NAN_I]), int(b[POS_I]), int(b[NEG_I]))
    for j in range(P0, len(b)):
        add(a, b[j])


def negate_into(s: list[float], x: float) -> None:
    """Subtract ``x`` exactly (undo an :func:`add` of ``x``)."""
    if x - x != 0.0:
        s[NAN_I if x != x else (POS_I if x > 0 else NEG_I)] -= 1
        return
    add(s, -x)


def total(s: list[float]) -> float:
    """The exact sum rounded once to the nearest double (0.0 for an empty sum)."""
    if s[NAN_I] or (s[POS_I] and s[NEG_I]):
        return math.nan
    if s[POS_I]:
        return math.inf
    if s[NEG_I]:
        return -math.inf
    if len(s) == P0:
        return 0.0
    return math.fsum(s[P0:]) + 0.0


def add_array(s: list[float], values: np.ndarray) -> None:
    """Add a float64 array at C speed: repeated ``math.fsum`` peels the exact sum off in a few
    correctly-rounded pieces (each residual is below half an ulp of the previous piece, so ≤ ~40 rounds,
    usually 1–2)."""
    arr = np.asarray(values, dtype=np.float64)
    finite_mask = np.isfinite(arr)
    if not finite_mask.all():
        special = arr[~finite_mask]
        add_specials(s, int(np.isnan(special).sum()), int((special > 0).sum()), int((special < 0).sum()))
    finite: list[float] = arr[finite_mask].tolist()
    if not finite:
        return
    try:
        while True:
            piece = math.fsum(finite)
            if piece == 0.0:
                return
            add(s, piece)
            finite.append(-piece)
    except OverflowError:
        # An intermediate overflowed. `finite` now holds the inputs plus the negated pieces already added,
        # so adding its elements one by one nets out to the inputs, and add() records the overflow.
        for x in finite:
            add(s, x)
