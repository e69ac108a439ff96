"""features.gcpolicy: start-up objects frozen, no automatic full collection, one from the timer instead."""

from __future__ import annotations

import gc
import time

from features.gcpolicy import quiet_full_collections


def test_full_collections_come_from_the_timer_only() -> None:
    before = gc.get_threshold()
    full: list[float] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            full.append(time.monotonic())

    timer = quiet_full_collections(0.3)
    assert timer is not None
    try:
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[:2] == before[:2] and gc.get_threshold()[2] > 10**6
        gc.callbacks.append(seen)
        try:
            garbage = []
            for _ in range(200_000):  # many young collections, and far more than a quarter more old objects
                a: list[object] = []
                a.append(a)
                garbage.append([a])
            deadline = time.monotonic() + 5
            while timer.runs == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            timer.stop()  # (joins the timer: no collection of its own is under way when counting)
        finally:
            gc.callbacks.remove(seen)
        assert timer.runs >= 1 and len(full) == timer.runs  # every full collection was the timer's
    finally:
        timer.stop()
        gc.unfreeze()
    assert gc.get_threshold() == before


def test_one_timer_per_process() -> None:
    """Operators sharing one interpreter (Flink's thread mode) each ask for the policy: one timer runs."""
    first = quiet_full_collections(60)
    try:
        assert first is not None
        assert quiet_full_collections(1) is first and first.every_s == 60
    finally:
        assert first is not None
        first.stop()
        gc.unfreeze()
    again = quiet_full_collections(60)  # after stop(), a new one
    try:
        assert again is not None and again is not first
    finally:
        assert again is not None
        again.stop()
        gc.unfreeze()


def test_zero_keeps_pythons_schedule() -> None:
    before = gc.get_threshold()
    try:
        assert quiet_full_collections(0) is None and gc.get_threshold() == before
    finally:
        gc.unfreeze()


def test_no_full_collections_within_a_block_and_everything_put_back() -> None:
    from features.gcpolicy import no_full_collections

    before = gc.get_threshold()
    full = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            full.append(1)

    with no_full_collections():
        assert gc.get_freeze_count() > 0 and gc.get_threshold()[2] > 10**6
        gc.callbacks.append(seen)
        try:
            keep = []
            for _ in range(200_000):
                a: list[object] = []
                a.append(a)
                keep.append([a])
        finally:
            gc.callbacks.remove(seen)
    assert not full
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
