"""Window and tile math: properties that must hold for every interval and window."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.windows import (
    DAY_MS,
    HOP_LADDER_MS,
    HOUR_MS,
    MINUTE_MS,
    SECOND_MS,
    WindowError,
    align,
    cover,
    cover_bound,
    default_hop_ms,
    format_duration,
    parse_duration_ms,
    window_interval,
)

LADDERS = [HOP_LADDER_MS, (SECOND_MS, MINUTE_MS), (MINUTE_MS, HOUR_MS, DAY_MS), (5 * MINUTE_MS, HOUR_MS)]
times = st.integers(min_value=-10 * DAY_MS, max_value=400 * DAY_MS)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("10s", 10_000),
        ("5m", 300_000),
        ("1h", HOUR_MS),
        ("7d", 7 * DAY_MS),
        ("250ms", 250),
        (" 30d ", 30 * DAY_MS),
        (timedelta(minutes=90), 90 * MINUTE_MS),
        (1234, 1234),
    ],
)
def test_parse_duration(text: object, ms: int) -> None:
    assert parse_duration_ms(text) == ms  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["7x", "", "1.5h", "-1h", "h", True, timedelta(microseconds=5), -5, 3.0])
def test_parse_duration_rejects_with_fix(bad: object) -> None:
    with pytest.raises(WindowError) as info:
        parse_duration_ms(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value) or "negative" in str(info.value) or "whole" in str(info.value)


@given(st.integers(min_value=1, max_value=10**6).map(lambda n: n * SECOND_MS))
def test_format_round_trips(ms: int) -> None:
    assert parse_duration_ms(format_duration(ms)) == ms


@given(times, st.sampled_from(HOP_LADDER_MS))
def test_align_is_floor(x: int, size: int) -> None:
    a = align(x, size)
    assert a <= x < a + size and a % size == 0


@given(st.integers(min_value=SECOND_MS, max_value=400 * DAY_MS))
def test_default_hop_keeps_tail_within_a_sixtieth(length: int) -> None:
    hop = default_hop_ms(length)
    assert hop in HOP_LADDER_MS
    assert hop * 60 <= length or hop == SECOND_MS
    bigger = [s for s in HOP_LADDER_MS if s > hop]
    assert not bigger or bigger[0] * 60 > length


@given(
    times,
    st.integers(min_value=1, max_value=60 * DAY_MS),
    st.sampled_from(HOP_LADDER_MS),
    st.integers(min_value=0, max_value=30 * DAY_MS),
)
def test_window_interval(t: int, length: int, hop: int, offset: int) -> None:
    start, end = window_interval(t, length, hop, offset)
    assert start % hop == 0 and start <= end
    assert start == align(t - offset - length, hop)
    if offset == 0:
        assert end == t  # the head is exact: every event strictly before t
    else:
        assert end == max(start, align(t - offset, hop))
    # The window never reaches past t, and its tail is less than one hop longer than asked.
    assert end <= t
    assert (t - offset) - start < length + hop


def test_event_at_t_is_excluded_and_boundaries() -> None:
    t = 10 * HOUR_MS
    start, end = window_interval(t, HOUR_MS, MINUTE_MS)
    assert (start, end) == (9 * HOUR_MS, t)
    # 1 ms after an hop boundary the start has not moved; the events at exactly start are in.
    assert window_interval(t + 1, HOUR_MS, MINUTE_MS)[0] == 9 * HOUR_MS
    assert window_interval(t + MINUTE_MS, HOUR_MS, MINUTE_MS)[0] == 9 * HOUR_MS + MINUTE_MS


@settings(max_examples=300)
@given(st.sampled_from(LADDERS), times, st.integers(min_value=0, max_value=40 * DAY_MS), st.data())
def test_cover_is_exact_disjoint_and_bounded(
    ladder: tuple[int, ...], a: int, span: int, data: st.DataObject
) -> None:
    smallest = ladder[0]
    start = align(a, smallest)
    end = align(start + span, smallest)
    pieces = cover(start, end, ladder)
    pos = start
    for size, piece_start in pieces:  # contiguous, in order, aligned to their own size
        assert size in ladder
        assert piece_start == pos and piece_start % size == 0
        pos += size
    assert pos == end
    assert len(pieces) <= cover_bound(end - start, ladder)
    # Maximal tiles (hence the fewest, for nested sizes): no piece lies inside a bigger aligned tile that
    # itself fits in the interval.
    for size, piece_start in pieces:
        for bigger in (s for s in ladder if s > size):
            block = align(piece_start, bigger)
            assert not (block >= start and block + bigger <= end)


def test_cover_rejects_misaligned_and_non_nested() -> None:
    with pytest.raises(WindowError, match="not aligned"):
        cover(1, 10_000, (SECOND_MS,))
    with pytest.raises(WindowError, match="nest"):
        cover(0, HOUR_MS, (7 * MINUTE_MS, HOUR_MS))


def test_cover_of_a_day_and_a_half_uses_big_tiles() -> None:
    pieces = cover(23 * HOUR_MS, 2 * DAY_MS + 90 * MINUTE_MS, HOP_LADDER_MS)
    assert [s for s, _ in pieces].count(DAY_MS) == 1
    assert len(pieces) == 1 + 1 + 1 + 6  # 23-24h, day 1, 2d+0..1h, then 6 x 5m
