"""When the garbage collector may pause a serving process or a stream job's tile operator.

Both hold many long-lived objects, and Python's full collection walks every tracked one whenever the old generation
has grown by a quarter. **Serving**: a serving process holds a few hundred thousand long-lived objects (plan, model, modules) and, once warm, its caches
(decoded batch values, period values, merge memos). Python's full collection walks every tracked object: measured
on the fraud_v1 API, ~0.1-0.25 s with the requests of that moment waiting, whenever the old generation has grown by a
quarter - every ~25 s at 1,000 decisions/s as the caches turn over, which is the p99 at that rate.

:func:`quiet_full_collections` moves what exists at start-up out of the collector's reach (``gc.freeze``), keeps the
young-generation collections as they are (they collect the per-request reference cycles while they are young:
~0.75 objects per decision of cyclic garbage, measured), and replaces the automatic full collections by one every
``every_s`` seconds from a timer, so the rare cycle that reaches the old generation is still freed, at a pause a
minute's traffic does not notice.

**Stream**: the tile operator's state is hundreds of thousands of small IR objects (lists, sketches) that keep growing
as tiles open: measured in-process on the ``card`` GroupBy, automatic full collections took up to 0.64 s each and ~30 %
of the fold's CPU (``bench/profile_stream.py``), paid in the middle of a flush. The same policy applies: the
state lives in the old generation, which only the timer's collection walks.

The policy is per process: a second call while a timer runs (in Flink's thread mode every Python operator shares one
interpreter) keeps the running timer.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

#: A gen-1 count no process reaches: Python starts no full collection by itself.
_NEVER = 1 << 30


class FullCollections:
    """The timer of :func:`quiet_full_collections`; :meth:`stop` puts the thresholds back."""

    def __init__(self, every_s: float, thresholds: tuple[int, int, int]) -> None:
        self.every_s = every_s
        self.thresholds = thresholds
        self.runs = 0
        self.stopped = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tessera-full-gc", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            gc.collect()
            self.runs += 1

    def stop(self) -> None:
        """Stop the timer (waiting for a collection under way) and give Python its full collections back."""
        self._stop.set()
        self._thread.join()
        gc.set_threshold(*self.thresholds)
        self.stopped = True


@contextlib.contextmanager
def no_full_collections() -> Iterator[None]:
    """For a stretch of work that must not pause (a load client's stage): what exists is frozen and Python starts
    no full collection until the block ends; young collections go on. Everything is put back after."""
    gc.collect()
    gc.freeze()
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], _NEVER)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


_running: FullCollections | None = None


def quiet_full_collections(every_s: float) -> FullCollections | None:
    """Freeze what exists now; from then on, full collections only every ``every_s`` seconds (``<= 0``: leave
    Python's automatic full collections on, and only freeze). If this process already has the timer (and it was not
    stopped), that one is returned and nothing else changes."""
    global _running
    if _running is not None and not _running.stopped:
        return _running
    gc.collect()
    gc.freeze()
    if every_s <= 0:
        return None
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], _NEVER)
    _running = FullCollections(every_s, before)
    return _running
