"""Window and tile math: pure functions on epoch-millisecond integers.

The semantics (DESIGN.md, "One semantics"): a window of length ``L``, hop ``h`` and offset ``D`` evaluated at
query time ``t`` covers the events with ``ts`` in ``[align(t - D - L, h), end)`` where ``end = t`` when
``D == 0`` (the head is exact: every event strictly before ``t``) and ``end = align(t - D, h)`` otherwise.
A lifetime window (no length) covers every event strictly before ``t``.

Every time here is an ``int`` of milliseconds since the epoch; the unit is in the names (``_ms``).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import timedelta

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

#: The hop ladder. Each size divides the next, so tiles of one size nest exactly in the next.
HOP_LADDER_MS: tuple[int, ...] = (SECOND_MS, MINUTE_MS, 5 * MINUTE_MS, HOUR_MS, DAY_MS)

#: The start of time for lifetime windows (far enough back for any real event).
LIFETIME_START_MS = -(2**62)

_UNITS_MS = {"ms": 1, "s": SECOND_MS, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS}
_DURATION_RE = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")


class WindowError(ValueError):
    """A duration or window that cannot be used; the message says what was given and the fix."""


def parse_duration_ms(value: str | int | timedelta, *, what: str = "duration") -> int:
    """Parse ``"10s"``, ``"5m"``, ``"1h"``, ``"7d"``, ``"250ms"``, a ``timedelta`` or an int of ms.

    >>> parse_duration_ms("5m")
    300000
    >>> parse_duration_ms(timedelta(hours=1))
    3600000
    """
    if isinstance(value, bool):
        raise WindowError(f"{what} {value!r} is not a duration; write it like '10m', '1h' or '7d'")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, timedelta):
        ms = value // timedelta(milliseconds=1)
        if timedelta(milliseconds=ms) != value:
            raise WindowError(f"{what} {value!r} is not a whole number of milliseconds")
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise WindowError(
                f"{what} {value!r} is not a duration; write a number and a unit: "
                "'500ms', '10s', '5m', '1h' or '7d'"
            )
        ms = int(m.group(1)) * _UNITS_MS[m.group(2)]
    else:
        raise WindowError(f"{what} {value!r} is not a duration; write it like '10m', '1h' or '7d'")
    if ms < 0:
        raise WindowError(f"{what} {value!r} is negative")
    return ms


def format_duration(ms: int) -> str:
    """The shortest exact name of a duration, used in feature names.

    >>> format_duration(600_000), format_duration(90 * 60_000), format_duration(7 * DAY_MS)
    ('10m', '90m', '7d')
    """
    if ms == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def align(x_ms: int, size_ms: int) -> int:
    """``floor(x / size) * size`` on integers, correct for negative times too.

    >>> align(1_999, 1_000), align(-1, 1_000)
    (1000, -1000)
    """
    return (x_ms // size_ms) * size_ms


def tile_start(ts_ms: int, tile_ms: int) -> int:
    """The start of the tile of size ``tile_ms`` that holds ``ts_ms``."""
    return align(ts_ms, tile_ms)


def default_hop_ms(length_ms: int) -> int:
    """The largest ladder size that is at most ``length / 60`` (at least 1 s).

    The tail of a hopping window is then within 1/60 of its length.

    >>> [format_duration(default_hop_ms(parse_duration_ms(w))) for w in ("10s", "10m", "1h", "1d", "7d", "30d")]
    ['1s', '1s', '1m', '5m', '1h', '1h']
    """
    best = HOP_LADDER_MS[0]
    for size in HOP_LADDER_MS:
        if size * 60 <= length_ms:
            best = size
    return best


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A resolved window: every field in ms. ``length_ms`` None means lifetime."""

    length_ms: int | None
    hop_ms: int
    offset_ms: int = 0

    @property
    def is_lifetime(self) -> bool:
        return self.length_ms is None

    @property
    def suffix(self) -> str:
        """The window's part of a feature name: ``1h``, ``30d_off7d``, or empty for lifetime."""
        if self.length_ms is None:
            return ""
        base = format_duration(self.length_ms)
        return f"{base}_off{format_duration(self.offset_ms)}" if self.offset_ms else base

    def interval(self, t_ms: int) -> tuple[int, int]:
        """The covered interval ``[start, end)`` at query time ``t_ms``."""
        return window_interval(t_ms, self.length_ms, self.hop_ms, self.offset_ms)


def window_interval(t_ms: int, length_ms: int | None, hop_ms: int, offset_ms: int = 0) -> tuple[int, int]:
    """The half-open interval ``[start, end)`` of event times a window covers at query time ``t_ms``.

    >>> window_interval(3_601_500, HOUR_MS, MINUTE_MS)   # 1h window, 1m hop, at 01:00:01.5
    (0, 3601500)
    >>> window_interval(10 * DAY_MS + 5, 30 * DAY_MS, HOUR_MS, 7 * DAY_MS)[1] == 3 * DAY_MS
    True
    """
    if length_ms is None:
        end = t_ms if offset_ms == 0 else align(t_ms - offset_ms, hop_ms)
        return LIFETIME_START_MS, end
    start = align(t_ms - offset_ms - length_ms, hop_ms)
    end = t_ms if offset_ms == 0 else align(t_ms - offset_ms, hop_ms)
    return start, max(start, end)


def cover(start_ms: int, end_ms: int, sizes_ms: tuple[int, ...]) -> list[tuple[int, int]]:
    """The fewest ``(size, start)`` tiles, sizes from ``sizes_ms``, that cover ``[start, end)`` exactly.

    ``sizes_ms`` must be ascending with each size dividing the next; ``start`` and ``end`` must be multiples
    of the smallest size. Tiles are aligned to their own size. The greedy climb-then-descend walk is optimal
    for such nested sizes, and the count is at most
    ``2 * sum(s[i+1] // s[i] - 1) + (end - start) // s[-1] + 1``.

    >>> cover(59 * MINUTE_MS, 3 * HOUR_MS + 2 * MINUTE_MS, (MINUTE_MS, HOUR_MS))
    [(60000, 3540000), (3600000, 3600000), (3600000, 7200000), (60000, 10800000), (60000, 10860000)]
    """
    if not sizes_ms:
        raise WindowError("cover needs at least one tile size")
    smallest = sizes_ms[0]
    for small, big in itertools.pairwise(sizes_ms):
        if big % small:
            raise WindowError(f"tile sizes must nest: {big} ms is not a multiple of {small} ms")
    if start_ms % smallest or end_ms % smallest:
        raise WindowError(f"[{start_ms}, {end_ms}) is not aligned to the smallest tile size {smallest} ms")
    pieces: list[tuple[int, int]] = []
    pos = start_ms
    while pos < end_ms:
        # The largest size aligned at pos that still fits before end.
        size = smallest
        for s in sizes_ms:
            if pos % s == 0 and pos + s <= end_ms:
                size = s
        pieces.append((size, pos))
        pos += size
    return pieces


def cover_bound(span_ms: int, sizes_ms: tuple[int, ...]) -> int:
    """The most pieces :func:`cover` can return for an interval of ``span_ms``."""
    climb = sum(big // small - 1 for small, big in itertools.pairwise(sizes_ms))
    return 2 * climb + span_ms // sizes_ms[-1] + 1
