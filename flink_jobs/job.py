"""The streaming tiling job: Kafka (JSON events) -> row logic -> tiles in Flink keyed state -> memcached.

Built from a compiled plan only. Python is handed *batches* of records (the default, ``--batch-ms`` > 0), so
PyFlink's per-element cost (~110 us in the tile thread, 50-80 us in the source thread, per call) is paid per batch.
Per source topic of the chosen GroupBys::

    KafkaSource (record timestamp = event time; per-partition bounded-out-of-orderness watermarks)
      -> RecordBatcher (Java, flink_jobs/java, chained to the source): each record becomes
         "<record ts>|<watermark>|v<value>", the watermark being the source's as the record passed it (so the
         per-partition watermark a per-record operator would read); a batch is emitted --batch-ms after its first
         record, at --batch-max-records, before every checkpoint barrier (a batch never spans one; the operator
         has no state) and at the end of input
      -> ParseBatchFunction (one Python call per batch; BatchParser): per record, in order, parse + validate
         (malformed -> <source>.dlq with the reason), late check against *its own carried watermark*:
         ts < watermark - allowed lateness (late -> <source>.late, counted, not applied), each GroupBy's row
         logic; rows grouped by hash bucket of their (GroupBy, entity) key (crc32 mod --buckets), one element
         per bucket: (bucket, the batch's first watermark, source index, rows)
    union -> key_by(bucket) -> BucketTileFunction (one call per bucket per batch; flink_jobs.tiling.BucketTiles):
      decoded tile IRs per key in operator memory; a batch updates IRs only and is put into the bucket's MapState
      as one pending batch; changed periods are encoded (once per flush, however many events a key had) and
      written to memcached as idempotent full-IR upserts by one operator-wide flush every ``--flush-interval-ms``
      (checked per element, plus one pending processing-time timer for an idle stream; 0 = after every element;
      under load the interval stretches to FLUSH_COST_SHARE x the flush duration, smoothed over recent flushes
      with FLUSH_COST_SMOOTHING) and before an eviction.
      Periods past retention are dropped when the *carried* watermark passes them (a bucket checks at its
      batches and timers, at most once per EVICT_GRANULARITY_MS of event time): the smallest over the sources of
      the first watermark of their last batch, a watermark every later record was checked against at least -
      Flink's own watermark at this operator can run ahead of records still in a batch, so it is not used.

Checkpoint correctness: PyFlink gives a keyed Python function no hook before the barrier, so the keyed state is
kept restorable at every element - here every batch, since a barrier can only fall between two batches (the
batcher emits before it). A bucket's state holds its keys' period values as of the bucket's last compaction
(``period-values``: per key an index entry ``<key>`` listing its periods and one entry per period value,
``<key>\x1e<size>:<period start>``; a Flink key never holds "\x1e", JSON escapes it) plus every batch applied since
(``pending-batches``, ``<seq>`` -> rows, in order; one put per bucket per batch, no IR encode). A bucket is
compacted one slice of its keys at a time (COMPACT_SLICES: the period values changed since put, new periods
listed, the slice's ``#through:<slice>`` batch number; batches every slice is past removed) every
COMPACT_BUCKET_ROWS / COMPACT_SLICES rows or once COMPACT_BUCKET_PERIODS period values changed, when all of them
are flushed or deferred (at its next batch or timer), and whole before an eviction. A
bucket with rows not yet in memcached keeps a processing-time timer pending (1 s grid). On restore a bucket is
rebuilt on first touch (batch or restored timer) by replaying its pending batches over its keys' values (a key
is read from state when first needed), which marks them dirty so they are flushed again (idempotent).
Compaction only follows a flush, so a compacted value has reached memcached before the checkpoint that holds it,
unless the flush deferred it (an open tile of a larger level, OPEN_TILE_LEAD_MS): the bucket's ``#deferred-since``
entry then makes a restore write again every period that may have been deferred.
Memcached may be ahead of the restored checkpoint; the replayed Kafka records recompute the same values.
``--buckets`` must stay the same across a restore (state is keyed by bucket; each bucket keeps the count, and a
restore with another fails at the bucket's first touch). With ``--parallelism`` > 1 the job
takes the per-element path (the carried watermark is defined per source subtask; not built for several yet).

The per-element path (``--batch-ms 0``): ParseFunction per record (late check against the operator's current
watermark) -> key_by((GroupBy, entity)) -> TileFunction with one MapState per key (period values + pending rows
``r:<seq>``, one put per event, compacted after COMPACT_ROWS flushed rows) and eviction by event-time timers.

The decisions (lateness, tiles, eviction, bytes) live in :mod:`flink_jobs.tiling`; this module moves bytes.

Runs in ``.venv-flink`` (apache-flink 2.3, the Kafka connector jars of ``.tools/jars``; the batcher's jar is
compiled with ``javac`` into ``build/jars`` on first use)::

    .venv-flink/bin/python -m flink_jobs.job --plan plan.json --all --bootstrap 127.0.0.1:9092 \\
        --memcached 127.0.0.1:11211 --checkpoint-dir .data/checkpoints

Restart after a crash from the latest complete checkpoint: the same command with ``--restore latest``
(or ``--restore PATH/chk-N``). On a Flink cluster: ``flink run -py flink_jobs/job.py -pyfs <repo> -- <args>``.

Metrics (Flink metric group ``tessera``): ``events_in``, ``events_out`` (rows handed to the tiler), ``late``,
``dead_lettered``, ``filtered``, ``end_markers`` (+ ``batches``: parse operator); ``applied``, ``flushes``,
``values_flushed``, ``flush_errors``, ``periods_evicted``, ``late_at_tiler`` (never expected), the distribution
``flush_latency_us`` (+ ``batches``, ``compactions``, ``replayed``: tile operator); counters reach Flink
at most once a second (a Flink counter call per event cost more than parsing the event). With
``--metrics-dir`` each operator also writes its counters as JSON there (every second and at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features.gcpolicy import quiet_full_collections
from features.plan import GroupByPlan, Plan
from features.reference import row_function
from features.tiles import StateCodec, tile_suffix
from flink_jobs import jsonio
from flink_jobs.tiling import (
    PERIOD_SEP,
    BucketTiles,
    KeyTiles,
    entity_of,
    flush_horizon,
    is_late,
    retention_of,
)
from kvstore.codec import KeyLayout, encode_entity

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JARS = ROOT / ".tools" / "jars"
JAR_NAMES = ("flink-connector-kafka.jar", "kafka-clients.jar")
END_MARKER_FIELD = "__tessera_end__"  # kept in step with flink_jobs.replay (no kafka-python here)
LONG_MIN = -(2**63)
#: Watermarks at or beyond this are "end of input": flush, don't evict.
END_OF_INPUT_MS = 2**62
#: Eviction timers are rounded up to this, so one key registers few of them (a period stays in state up to this
#: much longer than its retention; each timer firing costs a Python callback, the largest per-key cost).
EVICT_GRANULARITY_MS = 2 * 60 * 60_000
#: A flush is due ``max(flush interval, FLUSH_COST_SHARE x the last flush's duration)`` after the last one
#: (``--flush-cost-share``; 0 = a fixed interval).
FLUSH_COST_SHARE = 2.0
#: Batch path: the flush cost that spacing uses is an exponential moving average with this weight per flush.
FLUSH_COST_SMOOTHING = 0.2
#: A key's state is compacted (period values put, pending rows removed) once it holds this many pending rows,
#: at its next event after a flush; until then an event costs one small put. Bounds the rows a restore replays.
COMPACT_ROWS = 16
#: A key with rows not yet in memcached has a processing-time timer pending, on this grid (so one per key per
#: grid step, however many events): after a restore it rebuilds the key, replaying its rows into a flush.
KEY_TIMER_GRANULARITY_MS = 1000
#: Batch path: a slice of a bucket's keys is compacted (its period values changed since put; batches every slice is
#: past removed) every COMPACT_BUCKET_ROWS / COMPACT_SLICES rows (``--compact-rows``: a restore replays at most about
#: this many rows per bucket) or once COMPACT_BUCKET_PERIODS period values changed (``--compact-periods``), at its
#: next batch or timer after a flush. A compaction is a pause of the tile operator that grows with the periods it
#: writes (an encode of each, open tiles a flush deferred included, and a state put): at 1,000 events/s of `card`
#: a whole-bucket compaction every 1,000 rows paused it 35-110 ms every second. Slices cut the pause; the periods
#: bound keeps it short for a stream of new keys (~5 periods per key), while hot keys - whose changed periods stop
#: growing - compact by rows.
COMPACT_BUCKET_ROWS = 20_000
COMPACT_BUCKET_PERIODS = 4_000
#: Batch path: a bucket's keys are compacted in this many slices, one at a time (BucketTiles): a compaction's pause
#: is about 1/COMPACT_SLICES of the bucket's changed periods. Fixed: a restore must hash keys to the same slices (a
#: checkpoint taken before slices existed restores as one whose slices are all compacted through its last batch).
COMPACT_SLICES = 8
#: Batch path defaults: how long (ms) a batch collects records after its first one, its size cap, and the number
#: of hash buckets of the keys (keyed state and tile-operator calls are per bucket: a batch costs one call per
#: bucket it touches, so at parallelism 1 one bucket is cheapest - 8 buckets cost ~40 % more tile-thread CPU at
#: 5-record batches; more buckets only matter to spread keys over parallel subtasks). Fixed for a checkpoint's life.
BATCH_MS = 5
BATCH_MAX_RECORDS = 1000
BUCKETS = 1
#: Batch path: a changed tile of a level above the smallest is written once it is within this many ms of its end
#: (fetches read such tiles only once complete; see flink_jobs.tiling.KeyTiles.flush), not at every flush while
#: open (``--open-tile-lead-ms``; negative: at every flush). It must exceed the flush interval plus any clock skew
#: between the job and the fetchers: a fetch at the end of a tile then finds it as fresh as without deferral.
OPEN_TILE_LEAD_MS = 2_000
#: Batch path: the bucket count, kept in every bucket's ``period-values`` (a Flink key starts with a digit: no clash), so
#: that a restore with another ``--buckets`` fails instead of rebuilding keys from nothing.
BUCKETS_STATE_KEY = "#buckets"
_KEY_SEP = "\x1f"
#: Seconds between the tile operator's full garbage collections (``--full-gc-s``; Python's automatic ones are off
#: in that process, see features/gcpolicy.py; 0 = leave them on).
FULL_GC_S = 600.0


# ---- settings --------------------------------------------------------------------------------------------


@dataclass
class JobSettings:
    bootstrap: str
    memcached: list[str]
    checkpoint_dir: Path | None = None
    checkpoint_interval_ms: int = 1000
    restore: str | None = None
    group_id: str = "tessera-stream"
    bounded: bool = False
    starting_offsets: str = "earliest"
    out_of_orderness_ms: int = 0
    flush_interval_ms: int | None = None  # None: the plan's
    flush_cost_share: float = FLUSH_COST_SHARE
    full_gc_s: float = FULL_GC_S
    fetch_max_wait_ms: int = 10
    bundle_size: int = 1000
    bundle_time_ms: int = 10
    buffer_timeout_ms: int = 5
    execution_mode: str = "process"
    parallelism: int = 1
    ttl_s: int = 40 * 24 * 3600
    metrics_dir: Path | None = None
    jars_dir: Path = DEFAULT_JARS
    job_name: str = "tessera-stream"
    state_cache_size: int = 100_000
    watermark_interval_ms: int = 20
    batch_ms: int = BATCH_MS  # 0: the per-element path
    batch_max_records: int = BATCH_MAX_RECORDS
    compact_rows: int = COMPACT_BUCKET_ROWS
    compact_periods: int = COMPACT_BUCKET_PERIODS
    buckets: int = BUCKETS
    open_tile_lead_ms: int = OPEN_TILE_LEAD_MS


# ---- validation (pure) -----------------------------------------------------------------------------------

_INT_TYPES = {"long", "int", "integer", "bigint", "short", "smallint", "byte", "tinyint", "timestamp", "date"}
_FLOAT_TYPES = {"double", "float", "decimal"}


_NONE = type(None)


def _accepted_classes(declared: str) -> frozenset[type] | None:
    """The classes of JSON values a field declared ``declared`` accepts (``None``: any): integers for integer
    and time types, integers or floats for floating types, strings, booleans; null everywhere. (A bool is
    not an integer here, although Python's ``isinstance`` says so.)"""
    t = declared.lower().split("(")[0]
    if t in _INT_TYPES:
        return frozenset({int, _NONE})
    if t in _FLOAT_TYPES:
        return frozenset({int, float, _NONE})
    if t == "string":
        return frozenset({str, _NONE})
    if t == "boolean":
        return frozenset({bool, _NONE})
    return None


class EventParser:
    """:func:`parse_event` for one schema, with the type checks worked out once (the per-event path).

    A JSON value's class is exactly one of ``dict, list, str, int, float, bool, NoneType``, so a set lookup on
    the class decides (:func:`_accepted_classes`).
    """

    def __init__(self, schema: dict[str, str], time_column: str) -> None:
        self.schema = dict(schema)
        self.time_column = time_column
        self._checks = [(name, _accepted_classes(declared)) for name, declared in self.schema.items()]

    def parse(self, raw: str | None) -> tuple[str, Any]:
        if raw is None:
            return "bad", "null value (tombstone)"
        try:
            value = jsonio.loads(raw)
        except (ValueError, TypeError) as e:
            return "bad", f"not JSON: {e}"
        if value.__class__ is not dict:
            return "bad", f"not a JSON object but {type(value).__name__}"
        if value.get(END_MARKER_FIELD):
            return "marker", None
        missing = _MISSING
        for name, accepted in self._checks:
            v = value.get(name, missing)
            if v is missing:
                return "bad", f"missing field {name!r}"
            if accepted is not None and v.__class__ not in accepted:
                return "bad", f"field {name!r} is {type(v).__name__}, not {self.schema[name]}"
        ts = value.get(self.time_column)
        if ts.__class__ is not int:
            return "bad", f"event time {self.time_column!r} is {ts!r}, not epoch milliseconds"
        return "ok", value


_MISSING = object()


def parse_event(raw: str | None, schema: dict[str, str], time_column: str) -> tuple[str, Any]:
    """``("ok", event)``, ``("marker", None)`` or ``("bad", reason)`` for one record value.

    Every schema field must be present (``null`` allowed) with a value of its type; the event time must be an
    integer. Fields outside the schema are ignored. (The job uses :class:`EventParser`, the same rules.)
    """
    return EventParser(schema, time_column).parse(raw)


def flink_key(gb_index: int, entity: Sequence[Any]) -> str:
    if len(entity) == 1:
        part = entity[0]
        # The common one-string key, spelled as json.dumps spells it (printable ASCII needs no escape).
        if (
            part.__class__ is str
            and part.isascii()
            and part.isprintable()
            and '"' not in part
            and "\\" not in part
        ):
            return f'{gb_index}{_KEY_SEP}["{part}"]'
    return f"{gb_index}{_KEY_SEP}{json.dumps(list(entity), separators=(',', ':'))}"


def bucket_of(key: str, buckets: int) -> int:
    """The hash bucket of a Flink key (stable across processes and restarts, unlike :func:`hash`)."""
    return zlib.crc32(key.encode("utf-8")) % buckets


def parse_flink_key(key: str) -> tuple[int, tuple[Any, ...]]:
    gi, _, parts = key.partition(_KEY_SEP)
    return int(gi), tuple(json.loads(parts))


def select_group_bys(plan: Plan, names: Sequence[str] | None) -> list[GroupByPlan]:
    """The GroupBys the job runs: ``names``, or every online GroupBy with a stream plan."""
    if names:
        gbs = [plan.group_by(n) for n in names]
        for gb in gbs:
            if gb.stream is None:
                raise ValueError(f"GroupBy {gb.name} has no stream plan (online=False?)")
        return gbs
    return [gb for gb in plan.group_bys if gb.online and gb.stream is not None]


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete ``chk-N`` (it has ``_metadata``) under ``checkpoint_dir`` (any job id)."""
    best: tuple[float, int, Path] | None = None
    for meta in checkpoint_dir.glob("*/chk-*/_metadata"):
        chk = meta.parent
        try:
            n = int(chk.name.removeprefix("chk-"))
            cand = (meta.stat().st_mtime, n, chk)
        except (ValueError, OSError):
            continue
        if best is None or cand[:2] > best[:2]:
            best = cand
    return best[2] if best else None


# ---- metrics ---------------------------------------------------------------------------------------------


class _Metrics:
    """Flink counters plus plain numbers written as JSON to ``metrics_dir`` (for tests and the bench)."""

    def __init__(self, runtime_context: Any, operator: str, names: Sequence[str], metrics_dir: str | None):
        group = runtime_context.get_metrics_group().add_group("tessera")
        self.counters = {n: group.counter(n) for n in names}
        self.values = dict.fromkeys(names, 0)
        self._pushed = dict.fromkeys(names, 0)  # what the Flink counters hold
        self.group = group
        self.path: Path | None = None
        if metrics_dir:
            try:
                sub = runtime_context.get_index_of_this_subtask()
            except Exception:  # thread mode on Flink 2.x: the Java method moved to getTaskInfo()
                try:
                    sub = runtime_context._runtime_context.getTaskInfo().getIndexOfThisSubtask()
                except Exception:
                    sub = 0
            self.path = Path(metrics_dir) / f"{operator}-{sub}.json"
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._last_write = 0.0

    def inc(self, name: str, n: int = 1) -> None:
        self.values[name] += n  # reaches the Flink counter at the next maybe_write (at most ~1 s later)

    def maybe_write(self, force: bool = False) -> None:
        """Hand the counts to Flink's counters and write the JSON file, at most once a second (or now).

        A Flink counter's ``inc`` is a call into the JVM's metric wrapper: per event it cost as much as parsing.
        """
        now = time.monotonic()
        if force or now - self._last_write >= 1.0:
            self._last_write = now
            for name, v in self.values.items():
                d = v - self._pushed[name]
                if d:
                    self.counters[name].inc(d)
                    self._pushed[name] = v
            if self.path is None:
                return
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({**self.values, "pid": os.getpid(), "at": time.time()}))
            os.replace(tmp, self.path)


def _tile_operator_setup(op: Any, store_class: Any) -> None:
    """What both tile operators (per key, per bucket) set up alike from ``op.plan_json``, ``op.names`` and
    ``op.settings``: per GroupBy its plan, codec, retention, key layout, dataset and lateness; the one
    operator-wide flush interval (the shortest any GroupBy asks for) and cost share; the memcached store."""
    plan = Plan.from_json(op.plan_json)
    s = op.settings
    op.gbs = [plan.group_by(n) for n in op.names]
    op.codecs = [StateCodec(gb) for gb in op.gbs]
    op.retention = [retention_of(gb) for gb in op.gbs]
    op.layouts = [KeyLayout(gb.stream.dataset, gb.semantic_hash) for gb in op.gbs]
    op.datasets = [gb.stream.dataset for gb in op.gbs]
    op.lateness = [gb.source.allowed_lateness_ms for gb in op.gbs]
    fi = s["flush_interval_ms"]
    op.flush_ms = max(0, min(gb.stream.flush_interval_ms if fi is None else fi for gb in op.gbs))
    op.flush_cost_share = float(s.get("flush_cost_share", FLUSH_COST_SHARE))
    op.store = store_class(s["memcached"], ttl_s=s["ttl_s"], timeout_s=0.5, connect_timeout_s=0.5)
    # The tiles are long-lived objects by the hundred thousand: Python's automatic full collections would walk them
    # all, again and again as state grows (features/gcpolicy.py); one from a timer instead.
    quiet_full_collections(float(s.get("full_gc_s", FULL_GC_S)))


def _put_values(store: Any, metrics: _Metrics, latency: Any, dataset: str, items: dict[bytes, bytes]) -> None:
    """One dataset's values of a flush to the stream store (idempotent full-IR upserts): tried 5 times, then the
    job fails, restarts from its checkpoint and writes them again. Counts flushes, values and errors."""
    t0 = time.perf_counter()
    for attempt in range(5):
        try:
            store.multi_put(dataset, items)
            break
        except Exception:
            metrics.inc("flush_errors")
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))
    latency.update(int((time.perf_counter() - t0) * 1e6))
    metrics.inc("flushes")
    metrics.inc("values_flushed", len(items))


def _start_profile() -> Any:
    """Development aid: with ``TESSERA_PROFILE=PREFIX`` set, a cProfile of the calling operator's thread, timed
    in that thread's CPU time (in thread mode every operator shares one interpreter: wall time would count the
    waits for the GIL); written to ``PREFIX.<operator>.prof`` when the operator closes."""
    if not os.environ.get("TESSERA_PROFILE"):
        return None
    import cProfile

    prof = cProfile.Profile(time.thread_time)
    prof.enable()
    return prof


def _stop_profile(prof: Any, operator: str) -> None:
    if prof is not None:
        prof.disable()
        prof.dump_stats(f"{os.environ['TESSERA_PROFILE']}.{operator}.prof")


# ---- the batch path: records as the Java record batcher hands them over (pure) -----------------------------

#: Separator of a batched record's fields (``<record ts>|<watermark>|<v value | n>``; written by ``tessera.flink.RecordBatcher``).
_REC_SEP = "|"


def batch_record(ts_ms: int | None, watermark_ms: int | None, value: str | None) -> str:
    """A record spelled as RecordBatcher spells it (for tests and tools): record timestamp, the source's
    watermark when the record passed it (empty: none yet), ``v`` + value or ``n`` for a null value."""
    return f"{'' if ts_ms is None else ts_ms}|{'' if watermark_ms is None else watermark_ms}|" + (
        "n" if value is None else "v" + value
    )


class BatchParser:
    """Per micro-batch of raw records: validation, late check, row logic, grouping by hash bucket of the key.

    The rules are :meth:`route`, one record at a time, in order (the per-element ParseFunction calls it per
    record with Flink's watermark): a record is late if its
    event time is behind *the watermark the source had emitted when this record passed it* (carried in the
    record, so exactly the per-partition watermark the per-element path reads), minus the allowed lateness.
    :meth:`parse` returns ``{bucket: [(GroupBy index, key, row), ...]}``, the dead-letter and late messages, and
    the batch's *floor* watermark: its first record's (watermarks only grow along the stream, so every record of
    this batch and of later ones was or will be checked against at least this watermark).
    """

    def __init__(self, gbs: Sequence[GroupByPlan], indexes: Sequence[int], buckets: int) -> None:
        src = gbs[0].source
        self.parser = EventParser(dict(src.schema), src.time_column)
        self.time_column = src.time_column
        self.lateness = src.allowed_lateness_ms
        self.topic = src.topic
        self.buckets = buckets
        self.fns = [(gi, gb, row_function(gb)) for gi, gb in zip(indexes, gbs)]
        self.counts = dict.fromkeys(
            ["events_in", "events_out", "late", "dead_lettered", "filtered", "end_markers"], 0
        )
        self._bucket_of: dict[str, int] = {}  # key -> bucket, for keys seen recently (bounded)

    def _dead(self, raw: str | None, reason: str, ts: int | None) -> str:
        self.counts["dead_lettered"] += 1
        return json.dumps(
            {"reason": reason, "topic": self.topic, "record_ts": ts, "value": raw}, separators=(",", ":")
        )

    def route(
        self,
        raw: str | None,
        ts: int | None,
        wm: int | None,
        rows: list[tuple[int, str, dict[str, Any]]],
        dead: list[str],
        late: list[str],
    ) -> None:
        """One record by the rules, both paths' (record timestamp ``ts``, the source's watermark ``wm`` when it
        passed): its ``(GroupBy index, key, row)`` per GroupBy appended to ``rows``, or its dead-letter message
        to ``dead``, or the record to ``late``; counted in :attr:`counts`."""
        counts = self.counts
        status, event = self.parser.parse(raw)
        if status == "marker":
            counts["end_markers"] += 1
            return
        counts["events_in"] += 1
        if status == "bad":
            dead.append(self._dead(raw, event, ts))
            return
        if is_late(event[self.time_column], wm, self.lateness):
            counts["late"] += 1
            late.append(raw)  # type: ignore[arg-type]
            return
        for gi, gb, fn in self.fns:
            try:
                row = fn(event)
            except Exception as e:  # a value the row logic cannot take: dead-letter, keep running
                dead.append(self._dead(raw, f"row logic of {gb.name} failed: {e!r}", ts))
                break
            if row is None:
                counts["filtered"] += 1
                continue
            entity = entity_of(gb, row)
            if entity is None:
                counts["filtered"] += 1
                continue
            counts["events_out"] += 1
            rows.append((gi, flink_key(gi, entity), row))

    def parse(
        self, records: Sequence[str]
    ) -> tuple[dict[int, list[tuple[int, str, dict[str, Any]]]], list[str], list[str], int | None]:
        rows: list[tuple[int, str, dict[str, Any]]] = []
        dead: list[str] = []
        late: list[str] = []
        floor: int | None = None
        route = self.route
        for i, rec in enumerate(records):
            ts_s, wm_s, v = rec.split(_REC_SEP, 2)
            wm = int(wm_s) if wm_s else None
            if i == 0:
                floor = wm
            route(v[1:] if v[:1] == "v" else None, int(ts_s) if ts_s else None, wm, rows, dead, late)
        out: dict[int, list[tuple[int, str, dict[str, Any]]]] = {}
        buckets = self.buckets
        bucket_cache = self._bucket_of
        if len(bucket_cache) > 100_000:
            bucket_cache.clear()
        for row in rows:
            key = row[1]
            b = bucket_cache.get(key)
            if b is None:
                b = bucket_cache[key] = bucket_of(key, buckets)
            got = out.get(b)
            if got is None:
                got = out[b] = []
            got.append(row)
        return out, dead, late, floor


class _ParseOperator:
    """What both parse operators (per record, per batch) hold and do alike: their arguments, and at ``open`` a
    :class:`BatchParser` (``self.parser``) whose counts are the operator's metrics. Mixed into their PyFlink
    ``ProcessFunction`` classes (first, so these ``open``/``close`` are the ones called)."""

    #: counters the operator keeps besides the parser's
    extra_counts: tuple[str, ...] = ()

    def __init__(
        self,
        plan_json: str,
        names: list[str],
        indexes: list[int],
        late_tag: Any,
        dlq_tag: Any,
        metrics_dir: str | None,
        *,
        buckets: int = 1,
        source: int = 0,
    ) -> None:
        self.plan_json = plan_json
        self.names = names
        self.indexes = indexes
        self.late_tag = late_tag
        self.dlq_tag = dlq_tag
        self.metrics_dir = metrics_dir
        self.buckets = buckets
        self.source = source

    def open(self, runtime_context: Any) -> None:
        plan = Plan.from_json(self.plan_json)
        gbs = [plan.group_by(n) for n in self.names]
        self.parser = BatchParser(gbs, self.indexes, self.buckets)
        self.topic = gbs[0].source.topic
        for name in self.extra_counts:
            self.parser.counts.setdefault(name, 0)
        self.m = _Metrics(runtime_context, f"parse-{self.topic}", list(self.parser.counts), self.metrics_dir)
        self.m.values = self.parser.counts  # the parser counts into the metrics directly
        self._profile = _start_profile()

    def close(self) -> None:
        _stop_profile(self._profile, f"parse-{self.topic}")
        self.m.maybe_write(force=True)


class _TileTimers:
    """What both tile operators (per key, per bucket: a *unit*) do alike with processing time and the store. They
    keep ``unflushed`` (units with rows not yet in memcached), ``timer_at`` (a unit's pending timer),
    ``flush_timer_at``, ``flush_ms``, ``next_flush``, and define ``_flush_all`` and ``_compact(unit state)``."""

    unflushed: dict[Any, Any]
    timer_at: dict[Any, int]
    flush_timer_at: int | None
    flush_ms: int
    next_flush: int
    m: _Metrics
    store: Any
    latency: Any

    def _flush_all(self, now_ms: int | None = None) -> None:
        raise NotImplementedError

    def _compact(self, tiles: Any) -> None:
        raise NotImplementedError

    def _ensure_unit_timer(self, unit: Any, timers: Any, now: int) -> None:
        """A unit with rows not yet in memcached keeps a processing-time timer pending (on a coarse grid, so one
        per unit per step): a checkpoint taken meanwhile holds it, and after a restore it rebuilds the unit
        (replaying its rows, hence flushing them) even if the unit never sees another event."""
        if self.timer_at.get(unit, -1) < now:
            at = -(-(now + self.flush_ms + 1) // KEY_TIMER_GRANULARITY_MS) * KEY_TIMER_GRANULARITY_MS
            timers.register_processing_time_timer(at)
            self.timer_at[unit] = at

    def _deferred_due(self) -> int | None:
        """Processing time when a value a flush deferred is due (``None``: nothing deferred)."""
        return None

    def _ensure_flush_timer(self, timers: Any, now: int) -> None:
        """One pending flush timer for the whole operator (under whichever unit), so an idle stream still
        flushes within the interval, and deferred values are written when due."""
        if self.unflushed and self.flush_ms > 0:
            at = max(self.next_flush, now + 1)
        else:
            due = self._deferred_due()
            if due is None:
                return
            at = max(due, self.next_flush, now + 1)
        if self.flush_timer_at is None or at < self.flush_timer_at:
            timers.register_processing_time_timer(at)
            self.flush_timer_at = at

    def _timer_fired(self, unit: Any, timestamp: int) -> None:
        """Forget the timers a processing-time firing at ``timestamp`` (under ``unit``) has used up."""
        if self.flush_timer_at is not None and self.flush_timer_at <= timestamp:
            self.flush_timer_at = None
        if self.timer_at.get(unit, timestamp + 1) <= timestamp:
            del self.timer_at[unit]

    def _after_element(self, tiles: Any, unit: Any, timers: Any) -> None:
        """After a unit's rows were applied: flush now if the interval is 0 (and compact), else flush if due and
        keep the unit's and the operator's timers pending."""
        if self.flush_ms <= 0:
            self._flush_all()
            self._compact(tiles)
        else:
            now = timers.current_processing_time()
            if now >= self.next_flush:
                self._flush_all(now)
            if tiles.dirty:
                self._ensure_unit_timer(unit, timers, now)
            self._ensure_flush_timer(timers, now)
        self.m.maybe_write()

    def _put(self, dataset: str, items: dict[bytes, bytes]) -> None:
        _put_values(self.store, self.m, self.latency, dataset, items)


# ---- the operators (built lazily: pyflink is only importable in the Flink environment) ------------------


def _functions() -> tuple[Any, Any]:
    from pyflink.common import Types
    from pyflink.datastream import KeyedProcessFunction, ProcessFunction, RuntimeContext
    from pyflink.datastream.state import MapStateDescriptor

    class ParseFunction(_ParseOperator, ProcessFunction):
        """JSON -> validated event -> per GroupBy (row logic) a (GroupBy index, key, projected row) record: the
        parser's per-record rules (:meth:`BatchParser.route`), one record per call."""

        def process_element(self, raw: str, ctx: ProcessFunction.Context) -> Iterator[Any]:
            markers = self.parser.counts["end_markers"]
            rows: list[tuple[int, str, dict[str, Any]]] = []
            dead: list[str] = []
            late: list[str] = []
            wm = ctx.timer_service().current_watermark()
            self.parser.route(raw, ctx.timestamp(), wm if wm > LONG_MIN else None, rows, dead, late)
            for d in dead:
                yield self.dlq_tag, d
            for r in late:
                yield self.late_tag, r
            yield from rows
            self.m.maybe_write(force=self.parser.counts["end_markers"] > markers)

    class TileFunction(_TileTimers, KeyedProcessFunction):
        """Per (GroupBy, entity): decoded tiles in memory (:class:`KeyTiles`); keyed state holds period values
        plus the rows applied since they were last written; dirty periods are encoded at flush time."""

        def __init__(self, plan_json: str, names: list[str], settings: dict[str, Any]) -> None:
            self.plan_json = plan_json
            self.names = names
            self.settings = settings

        def open(self, runtime_context: RuntimeContext) -> None:
            from kvstore.memcached import MemcachedStore

            s = self.settings
            _tile_operator_setup(self, MemcachedStore)
            # Values are bytes held as latin-1 strings: a byte array crosses into the JVM one element at a time
            # (PyFlink's converter), a string in one call (thread mode: ~30x cheaper per put for period values).
            self.state = runtime_context.get_map_state(
                MapStateDescriptor("tiles", Types.STRING(), Types.STRING())
            )
            self.cache: OrderedDict[str, KeyTiles] = OrderedDict()
            self.cache_max = int(s.get("cache_keys", 50_000))
            self.evict_at: dict[str, int] = {}
            self.flush_timer_at: int | None = None  # the one pending processing-time (flush) timer, any key
            self.timer_at: dict[str, int] = {}  # the key's pending processing-time timer (see the grid)
            self.unflushed: dict[str, KeyTiles] = {}  # keys with periods not yet in memcached
            self.entities: dict[str, tuple[int, bytes]] = {}  # key -> (GroupBy index, encoded entity), cached
            self.next_flush = 0  # processing time (epoch ms) when the next operator-wide flush is due
            self.m = _Metrics(
                runtime_context,
                "tiles",
                ["applied", "late_at_tiler", "flushes", "values_flushed", "flush_errors", "periods_evicted"],
                s.get("metrics_dir"),
            )
            self.latency = self.m.group.distribution("flush_latency_us")
            self._profile = _start_profile()

        def close(self) -> None:
            _stop_profile(self._profile, "tiles")
            self._flush_all()  # memcached only: state already holds every applied row
            self.m.maybe_write(force=True)
            self.store.close()

        # -- the current key's tiles: in memory, loaded from MapState once (LRU over keys) ---------------
        def _tiles_of(self, gi: int, key: str) -> KeyTiles:
            kt = self.cache.get(key)
            if kt is None:  # first time this key is seen since open(): load all of it in one read
                kt = KeyTiles.load(
                    self.codecs[gi],
                    self.retention[gi],
                    ((k, v.encode("latin-1")) for k, v in self.state.items()),
                )
                if kt.dirty:  # rows replayed from state (after a restore): flush them again (idempotent)
                    self.unflushed[key] = kt
                self.cache[key] = kt
                if len(self.cache) > self.cache_max:
                    # Dropped keys are rebuilt from state (period values + pending rows); flush them first.
                    self._flush_all()
                    for _ in range(len(self.cache) // 4):
                        old, _ = self.cache.popitem(last=False)
                        self.evict_at.pop(old, None)
                        self.entities.pop(old, None)
            else:
                self.cache.move_to_end(key)
            return kt

        def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
            gi, key, row = value
            timers = ctx.timer_service()
            wm = timers.current_watermark()
            if is_late(row[self.codecs[gi].time_col], wm if wm > LONG_MIN else None, self.lateness[gi]):
                self.m.inc("late_at_tiler")  # never expected: the parse operator saw a later watermark
                return iter(())
            kt = self._tiles_of(gi, key)
            if kt.seq >= COMPACT_ROWS and not kt.dirty:
                self._compact(kt)  # every row so far has been flushed: their period values may go to state
            rk, rv, earliest = kt.apply(row)
            self.state.put(
                rk, rv.decode("latin-1")
            )  # state = period values + rows since: restorable at any barrier
            self.unflushed[key] = kt
            if earliest is not None:
                # One pending eviction timer per key (in memory; after a restore Flink has the old ones).
                pending = self.evict_at.get(key)
                at = -(-earliest // EVICT_GRANULARITY_MS) * EVICT_GRANULARITY_MS
                if pending is None or at < pending:
                    timers.register_event_time_timer(at)
                    self.evict_at[key] = at
            self.m.inc("applied")
            self._after_element(kt, key, timers)
            return iter(())

        def _compact(self, kt: KeyTiles) -> None:
            """Write the current key's changed period values to state and drop its pending rows."""
            puts, removes = kt.compact()
            for pk, v in puts.items():
                self.state.put(pk, v.decode("latin-1"))
            for rk in removes:
                self.state.remove(rk)

        def _flush_all(self, now_ms: int | None = None) -> None:
            """Encode every dirty period of every key (once, however many events it took) -> memcached."""
            now = int(time.time() * 1000) if now_ms is None else now_ms
            self.next_flush = now + self.flush_ms
            if not self.unflushed:
                return
            t0 = time.perf_counter()
            items: dict[str, dict[bytes, bytes]] = {}
            entities = self.entities
            for key, kt in self.unflushed.items():
                known = entities.get(key)
                if known is None:
                    gi, entity = parse_flink_key(key)
                    known = entities[key] = (gi, encode_entity(list(entity)))
                gi, ent = known
                layout = self.layouts[gi]
                out = items.setdefault(self.datasets[gi], {})
                for size, ps, v in kt.flush():
                    out[layout.key(ent, tile_suffix(size, ps))] = v
            self.unflushed.clear()
            for dataset, batch in items.items():
                if batch:
                    self._put(dataset, batch)
            # Under load a flush takes longer (more keys changed): space flushes so that they take at most
            # 1/FLUSH_COST_SHARE of the time, which lets hot keys coalesce more events into one encode. At low
            # rates a flush takes far less than the interval and this changes nothing.
            cost_ms = (time.perf_counter() - t0) * 1000
            self.next_flush = now + max(self.flush_ms, int(cost_ms * self.flush_cost_share))

        def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
            from pyflink.datastream import TimeDomain

            key = ctx.get_current_key()
            gi, _ = parse_flink_key(key)
            kt = self._tiles_of(gi, key)
            if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
                self._timer_fired(key, timestamp)
                timers = ctx.timer_service()
                now = timers.current_processing_time()
                if now >= self.next_flush:
                    self._flush_all(now)
                if kt.dirty:
                    self._ensure_unit_timer(key, timers, now)  # flushed by the next operator-wide flush
                elif kt.seq >= COMPACT_ROWS:
                    self._compact(kt)
                self._ensure_flush_timer(timers, now)
            elif timestamp < END_OF_INPUT_MS:
                self._evict(key, kt, timestamp, ctx)
            else:
                self._flush_all()
            self.m.maybe_write()
            return iter(())

        def _evict(self, key: str, kt: KeyTiles, watermark: int, ctx: Any) -> None:
            if kt.expiring(watermark):
                # Flush and compact first: a dropped period is neither flushed nor rebuilt from pending rows.
                if kt.dirty:
                    self._flush_all()
                self._compact(kt)
            gone = kt.expired(watermark)
            for pk in gone:
                self.state.remove(pk)
            if gone:
                self.m.inc("periods_evicted", len(gone))
            if self.evict_at.get(key, watermark) <= watermark:
                self.evict_at.pop(key, None)
            nxt = kt.next_expiry()
            if nxt is not None and key not in self.evict_at:
                at = -(-nxt // EVICT_GRANULARITY_MS) * EVICT_GRANULARITY_MS
                ctx.timer_service().register_event_time_timer(at)
                self.evict_at[key] = at

    return ParseFunction, TileFunction


def _batch_functions() -> tuple[Any, Any]:
    """The batch path's operators: ParseBatchFunction (one call per micro-batch of records) and
    BucketTileFunction (one call per hash bucket's rows of a micro-batch)."""
    from pyflink.common import Types
    from pyflink.datastream import KeyedProcessFunction, ProcessFunction, RuntimeContext
    from pyflink.datastream.state import MapStateDescriptor

    class ParseBatchFunction(_ParseOperator, ProcessFunction):
        """A micro-batch of raw records -> per hash bucket one ``(bucket, watermark, source, rows)`` element."""

        extra_counts = ("batches",)

        def process_element(self, value: Any, ctx: ProcessFunction.Context) -> Iterator[Any]:
            markers = self.parser.counts["end_markers"]
            out, dead, late, wm = self.parser.parse(value)
            self.m.values["batches"] += 1
            for d in dead:
                yield self.dlq_tag, d
            for raw in late:
                yield self.late_tag, raw
            source = self.source
            for b, rows in out.items():
                yield b, wm, source, rows
            self.m.maybe_write(force=self.parser.counts["end_markers"] > markers)

    class BucketTileFunction(_TileTimers, KeyedProcessFunction):
        """Per hash bucket: its keys' tiles in memory (:class:`BucketTiles`); keyed state holds the keys' period
        values as of the bucket's last compaction (an entry each, and an index per key) plus the batches applied
        since."""

        def __init__(self, plan_json: str, names: list[str], settings: dict[str, Any]) -> None:
            self.plan_json = plan_json
            self.names = names
            self.settings = settings

        def open(self, runtime_context: RuntimeContext) -> None:
            from kvstore.memcached import MemcachedStore

            s = self.settings
            _tile_operator_setup(self, MemcachedStore)
            self.time_cols = [c.time_col for c in self.codecs]
            self.compact_rows = int(s.get("compact_rows", COMPACT_BUCKET_ROWS))
            self.compact_periods = int(s.get("compact_periods", COMPACT_BUCKET_PERIODS))
            self.open_lead_ms = int(s.get("open_tile_lead_ms", OPEN_TILE_LEAD_MS))
            self.flush_cost_ms = 0.0  # smoothed CPU time of a flush (FLUSH_COST_SMOOTHING)
            self.upstreams = int(s.get("upstreams", 1))
            self.n_buckets = int(s.get("buckets", BUCKETS))
            # Strings (latin-1) rather than byte arrays: one JVM call per value (see TileFunction).
            self.values = runtime_context.get_map_state(
                MapStateDescriptor("period-values", Types.STRING(), Types.STRING())
            )
            self.pending = runtime_context.get_map_state(
                MapStateDescriptor("pending-batches", Types.STRING(), Types.STRING())
            )
            self.buckets: dict[int, BucketTiles] = {}
            self.fresh: dict[int, bool] = {}  # bucket -> its state held no key when loaded (no lookups)
            self.unflushed: dict[int, BucketTiles] = {}
            self.flush_timer_at: int | None = None
            self.timer_at: dict[int, int] = {}
            self.entities: dict[str, bytes] = {}  # key -> encoded entity
            self.upstream_wm: dict[int, int] = {}  # parse subtask -> the watermark of its last batch seen
            self.next_flush = 0
            self.m = _Metrics(
                runtime_context,
                "tiles",
                [
                    "applied",
                    "late_at_tiler",
                    "flushes",
                    "values_flushed",
                    "flush_errors",
                    "periods_evicted",
                    "batches",
                    "compactions",
                    "replayed",
                ],
                s.get("metrics_dir"),
            )
            self.latency = self.m.group.distribution("flush_latency_us")
            self._profile = _start_profile()

        def close(self) -> None:
            _stop_profile(self._profile, "tiles")
            self._flush_all(force=True)
            self.m.maybe_write(force=True)
            self.store.close()

        def _state_value(self, entry: str) -> bytes | None:
            """One entry of the bucket's ``period-values`` (a key's index or one of its period values)."""
            v = self.values.get(entry)
            return None if v is None else v.encode("latin-1")

        def _write_state(self, puts: dict[str, bytes], removes: Iterable[str]) -> None:
            for entry, v in puts.items():
                self.values.put(entry, v.decode("latin-1"))
            for entry in removes:
                self.values.remove(entry)

        def _bucket(self, b: int) -> BucketTiles:
            """The bucket's tiles (current key = ``b``); the first touch since open() replays its batches."""
            bt = self.buckets.get(b)
            if bt is None:
                self.fresh[b] = self.values.is_empty()
                if not self.fresh[b]:
                    held = self.values.get(BUCKETS_STATE_KEY)
                    if held is not None and int(held) != self.n_buckets:
                        # Keys would sit in the wrong buckets: their values would be rebuilt from nothing.
                        raise ValueError(
                            f"the checkpoint was taken with --buckets {held}, not {self.n_buckets}: restore with"
                            f" --buckets {held}, or start fresh"
                        )
                self.values.put(BUCKETS_STATE_KEY, str(self.n_buckets))
                bt = self.buckets[b] = BucketTiles(self.codecs, self.retention, COMPACT_SLICES)
                n = bt.replay(
                    [(k, v.encode("latin-1")) for k, v in self.pending.items()],
                    None if self.fresh[b] else self._state_value,
                )
                if n:  # rows replayed from state (after a restore): flush them again (idempotent)
                    self.m.inc("replayed", n)
                    self.unflushed[b] = bt
                if not self.fresh[b] and bt.stored_since is not None:
                    # Values a flush deferred before the last compaction may be missing from memcached: write
                    # again every period of the bucket's keys that ends at or after the earliest of them (reads
                    # the keys' index entries: a restore costs a pass over the bucket's state).
                    indexes = [
                        (k, parse_flink_key(k)[0], v.encode("latin-1"))
                        for k, v in self.values.items()
                        if PERIOD_SEP not in k and not k.startswith("#")
                    ]
                    if bt.restore_deferred(indexes, self._state_value):
                        self.unflushed[b] = bt
            return bt

        def _safe_watermark(self) -> int | None:
            """The watermark every later record is at or past: the smallest over the parse subtasks of the
            watermark of their last batch seen (``None`` until each has been seen)."""
            if len(self.upstream_wm) < self.upstreams:
                return None
            return min(self.upstream_wm.values())

        def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
            b, wm, src, rows = value
            timers = ctx.timer_service()
            bt = self._bucket(b)
            safe = self._safe_watermark()
            if safe is not None:
                lateness, time_cols = self.lateness, self.time_cols
                on_time = [r for r in rows if r[2][time_cols[r[0]]] >= safe - lateness[r[0]]]
                if len(on_time) != len(rows):  # never expected: the parse operator saw a later watermark
                    self.m.inc("late_at_tiler", len(rows) - len(on_time))
                    rows = on_time
            if wm is not None and wm > self.upstream_wm.get(src, LONG_MIN):
                self.upstream_wm[src] = wm
            self.m.inc("batches")
            if rows:
                if bt.compaction_due(self.compact_rows, self.compact_periods) and not bt.dirty:
                    # every row so far has been flushed (or deferred): a slice's key values may go to state
                    self._compact(bt, bt.next_part)
                k, v = bt.apply(rows, None if self.fresh[b] else self._state_value)
                self.pending.put(k, v.decode("latin-1"))  # state = key values + batches since: restorable
                self.unflushed[b] = bt
                self.m.inc("applied", len(rows))
            self._maybe_evict(bt)
            self._after_element(bt, b, timers)
            return iter(())

        def _maybe_evict(self, bt: BucketTiles) -> None:
            safe = self._safe_watermark()
            if not bt.eviction_due(safe, EVICT_GRANULARITY_MS):
                return
            assert safe is not None
            if bt.dirty:
                self._flush_all()
            self._compact(bt)
            puts, removes, dropped = bt.expire(safe)
            self._write_state(puts, removes)
            for entry in removes:
                self.entities.pop(entry, None)  # (a key gone from state: its encoded entity too)
            if dropped:
                self.m.inc("periods_evicted", dropped)

        def _compact(self, bt: BucketTiles, part: int | None = None) -> None:
            """Write the current bucket's period values changed since their last compaction (and new key indexes)
            to state, of one slice of its keys (``part``) or all, and drop the pending batches every slice is past."""
            puts, removes, pending = bt.compact(part)
            self._write_state(puts, removes)
            for k in pending:
                self.pending.remove(k)
            self.m.inc("compactions")

        def _deferred_due(self) -> int | None:
            if self.open_lead_ms < 0:
                return None
            dues = [d for d in (bt.next_due() for bt in self.buckets.values()) if d is not None]
            return min(dues) - self.open_lead_ms if dues else None

        def _flush_all(self, now_ms: int | None = None, force: bool = False) -> None:
            """Encode every changed period of every bucket that is due (once, however many rows it took) ->
            memcached; ``force``: every changed period (open tiles too, see OPEN_TILE_LEAD_MS)."""
            now = int(time.time() * 1000) if now_ms is None else now_ms
            self.next_flush = now + self.flush_ms
            horizon = None if force else flush_horizon(now, self._safe_watermark(), self.open_lead_ms)
            visit = dict(self.unflushed)
            for b, bt in self.buckets.items():
                due = bt.next_due()
                if due is not None and (horizon is None or due <= horizon):
                    visit[b] = bt
            if not visit:
                return
            c0 = time.thread_time()
            items: dict[str, dict[bytes, bytes]] = {}
            entities = self.entities
            for bt in visit.values():
                for gi, key, size, ps, v in bt.flush(horizon):
                    ent = entities.get(key)
                    if ent is None:
                        ent = entities[key] = encode_entity(list(parse_flink_key(key)[1]))
                    out = items.get(self.datasets[gi])
                    if out is None:
                        out = items[self.datasets[gi]] = {}
                    out[self.layouts[gi].key(ent, tile_suffix(size, ps))] = v
            self.unflushed.clear()
            for dataset, batch in items.items():
                if batch:
                    self._put(dataset, batch)
            # As in the per-element path, under load flushes are spaced to FLUSH_COST_SHARE x their cost, but of
            # the CPU they cost this thread (smoothed), not their wall time: on busy cores (the broker and a load
            # generator on the same 2 cores, the parse thread holding the GIL) a flush's wall time was 2-5x its CPU
            # (seen: 36 ms for 7 ms of work at 1,000 events/s of `card`), and spacing by it delayed every next flush
            # by that starvation - it made the freshness tail. One stretched flush must not hold the next one back.
            cost_ms = (time.thread_time() - c0) * 1000
            self.flush_cost_ms += FLUSH_COST_SMOOTHING * (cost_ms - self.flush_cost_ms)
            self.next_flush = now + max(self.flush_ms, int(self.flush_cost_ms * self.flush_cost_share))

        def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
            b = ctx.get_current_key()
            bt = self._bucket(b)
            self._timer_fired(b, timestamp)
            timers = ctx.timer_service()
            now = timers.current_processing_time()
            if now >= self.next_flush:
                self._flush_all(now)
            if bt.dirty:
                self._ensure_unit_timer(b, timers, now)
            elif bt.compaction_due(self.compact_rows, self.compact_periods):
                self._compact(bt, bt.next_part)
            self._maybe_evict(bt)
            self._ensure_flush_timer(timers, now)
            self.m.maybe_write()
            return iter(())

    return ParseBatchFunction, BucketTileFunction


# ---- the record batcher (Java) ---------------------------------------------------------------------------

BATCHER_SOURCE = Path(__file__).resolve().parent / "java" / "tessera" / "flink" / "RecordBatcher.java"
BATCHER_JAR = ROOT / "build" / "jars" / "tessera-batcher.jar"


def batcher_jar(jar: Path = BATCHER_JAR) -> Path:
    """The jar of ``tessera.flink.RecordBatcher``, compiled (``javac``, against PyFlink's ``flink-dist``) when it
    is missing or older than its source. A few seconds, once."""
    if jar.exists() and jar.stat().st_mtime >= BATCHER_SOURCE.stat().st_mtime:
        return jar
    import shutil
    import subprocess
    import tempfile
    import zipfile

    import pyflink

    javac = shutil.which("javac")
    if javac is None:
        raise FileNotFoundError(
            "javac not found: the batch path compiles flink_jobs/java (a JDK 17 is needed)"
        )
    dist = sorted((Path(pyflink.__file__).parent / "lib").glob("flink-dist*.jar"))
    if not dist:
        raise FileNotFoundError("flink-dist jar not found in the PyFlink installation")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [javac, "--release", "17", "-nowarn", "-cp", str(dist[0]), "-d", tmp, str(BATCHER_SOURCE)],
            check=True,
            capture_output=True,
        )
        jar.parent.mkdir(parents=True, exist_ok=True)
        part = jar.with_name(f"{jar.name}.{os.getpid()}.tmp")  # (two jobs may build it at once)
        with zipfile.ZipFile(part, "w") as z:
            for f in sorted(Path(tmp).rglob("*.class")):
                z.write(f, f.relative_to(tmp).as_posix())
        os.replace(part, jar)
    return jar


def batch_records(raw: Any, batch_ms: int, max_records: int) -> Any:
    """``raw`` (a DataStream of record values) -> a DataStream of record batches (lists of strings, see
    :data:`_REC_SEP`), by the Java operator ``tessera.flink.RecordBatcher`` chained to the source."""
    from pyflink.common import Types
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway

    out_type = Types.OBJECT_ARRAY(Types.STRING())
    op = get_gateway().jvm.tessera.flink.RecordBatcher(batch_ms, max_records)
    j_ds = raw._j_data_stream.transform("batch-records", out_type.get_java_type_info(), op)
    return DataStream(j_ds)


# ---- the job graph ---------------------------------------------------------------------------------------


def build(plan: Plan, gbs: list[GroupByPlan], settings: JobSettings) -> Any:
    """The StreamExecutionEnvironment with the job's graph (not yet executed)."""
    from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
    from pyflink.common.serialization import SimpleStringSchema
    from pyflink.datastream import OutputTag, StreamExecutionEnvironment
    from pyflink.datastream.connectors.base import DeliveryGuarantee
    from pyflink.datastream.connectors.kafka import (
        KafkaOffsetsInitializer,
        KafkaRecordSerializationSchema,
        KafkaSink,
        KafkaSource,
    )

    if settings.execution_mode == "thread":
        # Thread mode runs Python inside the JVM (pemja) on the base interpreter: give it this venv's packages
        # and the repo (the JVM inherits the environment when the gateway starts it).
        import site

        paths = [*site.getsitepackages(), str(ROOT), os.environ.get("PYTHONPATH", "")]
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    jars = [settings.jars_dir / n for n in JAR_NAMES]
    missing = [str(j) for j in jars if not j.exists()]
    if missing:
        raise FileNotFoundError(f"missing {missing}; run scripts/setup-streaming.sh")

    config = Configuration()
    config.set_string("python.executable", sys.executable)
    config.set_string("python.client.executable", sys.executable)
    config.set_string("rest.bind-address", "127.0.0.1")
    config.set_string("rest.address", "127.0.0.1")
    config.set_string("taskmanager.host", "127.0.0.1")
    config.set_string("python.fn-execution.bundle.size", str(settings.bundle_size))
    config.set_string("python.fn-execution.bundle.time", str(settings.bundle_time_ms))
    config.set_string("python.execution-mode", settings.execution_mode)
    config.set_string("python.state.cache-size", str(settings.state_cache_size))
    config.set_string("python.map-state.read-cache-size", str(settings.state_cache_size))
    config.set_string("python.map-state.write-cache-size", str(settings.state_cache_size))
    config.set_string("python.metric.enabled", "true")
    config.set_string("pipeline.auto-watermark-interval", f"{settings.watermark_interval_ms} ms")
    if settings.checkpoint_dir is not None:
        uri = settings.checkpoint_dir.resolve().as_uri()
        settings.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        config.set_string("execution.checkpointing.interval", f"{settings.checkpoint_interval_ms} ms")
        config.set_string("execution.checkpointing.dir", uri)
        config.set_string("state.checkpoints.dir", uri)
        config.set_string("execution.checkpointing.num-retained", "3")
        config.set_string(
            "execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION"
        )
        config.set_string("execution.checkpointing.checkpoints-after-tasks-finish", "true")
    if settings.restore:
        path = settings.restore
        if path == "latest":
            if settings.checkpoint_dir is None:
                raise ValueError("--restore latest needs --checkpoint-dir")
            found = latest_checkpoint(settings.checkpoint_dir)
            path = str(found) if found else ""
        if path:
            config.set_string("execution.state-recovery.path", Path(path).resolve().as_uri())
            config.set_string("execution.savepoint.path", Path(path).resolve().as_uri())
            print(f"tessera stream: restoring from {path}", file=sys.stderr)
        else:
            print("tessera stream: no complete checkpoint found; starting fresh", file=sys.stderr)
    config.set_string("restart-strategy.type", "fixed-delay")
    config.set_string("restart-strategy.fixed-delay.attempts", "3")
    config.set_string("restart-strategy.fixed-delay.delay", "1 s")

    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(settings.parallelism)
    env.set_buffer_timeout(settings.buffer_timeout_ms)
    env.add_jars(*(j.as_uri() for j in jars))

    plan_json = plan.to_json(indent=None)
    by_topic: dict[str, list[int]] = {}
    for i, gb in enumerate(gbs):
        by_topic.setdefault(gb.source.topic, []).append(i)
    batched = settings.batch_ms > 0
    if batched and settings.parallelism != 1:
        # The watermark carried by the batches is exact only when one batcher sees one source subtask's
        # records in order (see the module docstring); beyond that, the per-element path.
        print("tessera stream: parallelism > 1: the per-element path (no micro-batches)", file=sys.stderr)
        batched = False
    if batched:
        env.add_jars(batcher_jar().as_uri())
        ParseFunction, TileFunction = _batch_functions()
    else:
        ParseFunction, TileFunction = _functions()
    metrics_dir = str(settings.metrics_dir) if settings.metrics_dir else None
    keyed_inputs = []
    starting = {
        "earliest": KafkaOffsetsInitializer.earliest,
        "latest": KafkaOffsetsInitializer.latest,
    }[settings.starting_offsets]()

    def sink(topic: str) -> Any:
        return (
            KafkaSink.builder()
            .set_bootstrap_servers(settings.bootstrap)
            .set_property("enable.metrics.push", "false")  # (as the source's)
            .set_record_serializer(
                KafkaRecordSerializationSchema.builder()
                .set_topic(topic)
                .set_value_serialization_schema(SimpleStringSchema())
                .build()
            )
            .set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE)
            .build()
        )

    for ti, (topic, idx) in enumerate(by_topic.items()):
        src_plan = gbs[idx[0]].source
        builder = (
            KafkaSource.builder()
            .set_bootstrap_servers(settings.bootstrap)
            .set_topics(topic)
            .set_group_id(f"{settings.group_id}-{topic}")
            .set_client_id_prefix(f"{settings.group_id}-{topic}")
            .set_starting_offsets(starting)
            .set_value_only_deserializer(SimpleStringSchema())
            # The consumer's default (500 ms) is how long a fetch may wait for new records: it bounds freshness
            # from below on a quiet topic (the broker may hold the fetch that long).
            .set_property("fetch.max.wait.ms", str(settings.fetch_max_wait_ms))
            # Kafka clients >= 3.7 push their own metrics to the broker every few seconds (KIP-714) when it
            # offers a subscription: requests and log lines for nothing; the job's metrics are Flink's.
            .set_property("enable.metrics.push", "false")
        )
        if settings.bounded:
            builder = builder.set_bounded(KafkaOffsetsInitializer.latest())
        source = builder.build()
        # Record timestamps (set by the producer to the event time) drive per-partition watermarks.
        wms = WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(settings.out_of_orderness_ms))
        raw = env.from_source(source, wms, f"kafka-{topic}").uid(f"source-{topic}")
        late_tag = OutputTag(f"late-{topic}", Types.STRING())
        dlq_tag = OutputTag(f"dlq-{topic}", Types.STRING())
        if batched:
            # Java only until a batch is complete: each record as one string with its Kafka timestamp and the
            # source's watermark as it passed (tessera.flink.RecordBatcher, chained to the source).
            batches = batch_records(raw, settings.batch_ms, settings.batch_max_records)
            parse_fn = ParseFunction(
                plan_json,
                [gbs[i].name for i in idx],
                idx,
                late_tag,
                dlq_tag,
                metrics_dir,
                buckets=settings.buckets,
                source=ti,
            )
            parsed = batches.process(parse_fn, output_type=Types.PICKLED_BYTE_ARRAY()).uid(f"parse-{topic}")
            batches.uid(f"batch-{topic}")
        else:
            parsed = raw.process(
                ParseFunction(plan_json, [gbs[i].name for i in idx], idx, late_tag, dlq_tag, metrics_dir),
                output_type=Types.PICKLED_BYTE_ARRAY(),
            ).uid(f"parse-{topic}")
        parsed.get_side_output(late_tag).sink_to(sink(src_plan.late_topic)).uid(f"late-sink-{topic}")
        parsed.get_side_output(dlq_tag).sink_to(sink(src_plan.dead_letter_topic)).uid(f"dlq-sink-{topic}")
        keyed_inputs.append(parsed)

    merged = keyed_inputs[0] if len(keyed_inputs) == 1 else keyed_inputs[0].union(*keyed_inputs[1:])
    tile_settings = {
        "memcached": settings.memcached,
        "ttl_s": settings.ttl_s,
        "flush_interval_ms": settings.flush_interval_ms,
        "flush_cost_share": settings.flush_cost_share,
        "full_gc_s": settings.full_gc_s,
        "metrics_dir": metrics_dir,
        "upstreams": len(by_topic),
        "buckets": settings.buckets,
        "compact_rows": settings.compact_rows,
        "compact_periods": settings.compact_periods,
        "open_tile_lead_ms": settings.open_tile_lead_ms,
    }
    if batched:
        keyed = merged.key_by(lambda r: r[0], key_type=Types.INT())
    else:
        keyed = merged.key_by(lambda r: r[1], key_type=Types.STRING())
    # The two paths' tile operators keep different state: distinct uids, so that restoring one path's checkpoint
    # into the other fails (unclaimed state) instead of starting from empty tiles at restored offsets. The same for
    # a change of layout: "-2" since period values became entries of their own (a checkpoint of the one value per
    # key layout fails to restore, it is not misread).
    (
        keyed.process(TileFunction(plan_json, [gb.name for gb in gbs], tile_settings))
        .uid("bucket-tiles-2" if batched else "tiles")
        .name("tiles")
    )
    return env


def run(plan: Plan, gbs: list[GroupByPlan], settings: JobSettings) -> None:
    env = build(plan, gbs, settings)
    env.execute(settings.job_name)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flink_jobs.job", description=__doc__.split("\n")[0])
    p.add_argument("--plan", type=Path, required=True, help="a compiled plan (tessera plan PATH --json)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--group-by", action="append", help="a GroupBy to run (repeatable)")
    g.add_argument("--all", action="store_true", help="every online GroupBy of the plan")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--memcached", required=True, help="host:port,host:port,...")
    p.add_argument("--checkpoint-dir", type=Path, default=None)
    p.add_argument("--checkpoint-interval-ms", type=int, default=1000)
    p.add_argument("--restore", default=None, help="'latest' (under --checkpoint-dir) or a chk-N path")
    p.add_argument("--group-id", default="tessera-stream")
    p.add_argument("--bounded", action="store_true", help="stop at the topics' end offsets as of the start")
    p.add_argument("--starting-offsets", choices=["earliest", "latest"], default="earliest")
    p.add_argument("--out-of-orderness-ms", type=int, default=0)
    p.add_argument("--flush-interval-ms", type=int, default=None, help="default: the plan's; 0: at once")
    p.add_argument(
        "--flush-cost-share",
        type=float,
        default=FLUSH_COST_SHARE,
        help="under load, space flushes to this many times the last flush's duration (0: fixed interval)",
    )
    p.add_argument(
        "--full-gc-s",
        type=float,
        default=FULL_GC_S,
        help="seconds between the tile operator's full garbage collections (0: Python's automatic ones)",
    )
    p.add_argument("--fetch-max-wait-ms", type=int, default=10, help="Kafka consumer fetch.max.wait.ms")
    p.add_argument("--bundle-size", type=int, default=1000)
    p.add_argument("--bundle-time-ms", type=int, default=10)
    p.add_argument("--buffer-timeout-ms", type=int, default=5)
    p.add_argument("--execution-mode", choices=["process", "thread"], default="process")
    p.add_argument("--parallelism", type=int, default=1)
    p.add_argument("--ttl-s", type=int, default=40 * 24 * 3600)
    p.add_argument("--metrics-dir", type=Path, default=None)
    p.add_argument("--jars", type=Path, default=DEFAULT_JARS)
    p.add_argument("--job-name", default="tessera-stream")
    p.add_argument(
        "--batch-ms",
        type=int,
        default=BATCH_MS,
        help="processing-time window collecting records into one Python call (0: one call per record)",
    )
    p.add_argument(
        "--batch-max-records", type=int, default=BATCH_MAX_RECORDS, help="records per batch at most"
    )
    p.add_argument(
        "--buckets", type=int, default=BUCKETS, help="hash buckets of the keys (keep it for a restore)"
    )
    p.add_argument(
        "--compact-rows",
        type=int,
        default=COMPACT_BUCKET_ROWS,
        help="a bucket's pending rows before its key values are rewritten (restore replays at most this many)",
    )
    p.add_argument(
        "--compact-periods",
        type=int,
        default=COMPACT_BUCKET_PERIODS,
        help="a bucket's changed period values before they are rewritten (bounds a compaction's pause)",
    )
    p.add_argument(
        "--open-tile-lead-ms",
        type=int,
        default=OPEN_TILE_LEAD_MS,
        help="write an open tile of a larger level this long before it ends (negative: at every flush)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    plan = Plan.from_json(args.plan.read_text())
    gbs = select_group_bys(plan, None if args.all else args.group_by)
    if not gbs:
        print("tessera stream: no online GroupBy with a stream plan", file=sys.stderr)
        return 2
    settings = JobSettings(
        bootstrap=args.bootstrap,
        memcached=[s for s in args.memcached.split(",") if s],
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_interval_ms=args.checkpoint_interval_ms,
        restore=args.restore,
        group_id=args.group_id,
        bounded=args.bounded,
        starting_offsets=args.starting_offsets,
        out_of_orderness_ms=args.out_of_orderness_ms,
        flush_interval_ms=args.flush_interval_ms,
        flush_cost_share=args.flush_cost_share,
        full_gc_s=args.full_gc_s,
        fetch_max_wait_ms=args.fetch_max_wait_ms,
        bundle_size=args.bundle_size,
        bundle_time_ms=args.bundle_time_ms,
        buffer_timeout_ms=args.buffer_timeout_ms,
        execution_mode=args.execution_mode,
        parallelism=args.parallelism,
        ttl_s=args.ttl_s,
        metrics_dir=args.metrics_dir,
        jars_dir=args.jars,
        job_name=args.job_name,
        batch_ms=args.batch_ms,
        batch_max_records=args.batch_max_records,
        compact_rows=args.compact_rows,
        compact_periods=args.compact_periods,
        buckets=args.buckets,
        open_tile_lead_ms=args.open_tile_lead_ms,
    )
    print(
        f"tessera stream: {', '.join(gb.name for gb in gbs)} from "
        f"{sorted({gb.source.topic for gb in gbs})} -> memcached {settings.memcached}",
        file=sys.stderr,
    )
    run(plan, gbs, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
