"""Online/offline consistency: the feature-log schema, value comparison and root-cause hints. Pure Python.

Shared by the fetcher's logger (``serving.feature_log`` writes rows with :data:`LOG_SCHEMA`'s columns) and the
consistency job (``spark_jobs.consistency`` reads them, recomputes offline, compares), so neither layer imports
the other.

**Comparison** (:func:`compare`): per value pair, one of both-null, online-only-null, offline-only-null, match
or mismatch. Aggregate features use their op's tolerance (``op.agrees``: exact for counts, relative 1e-9 for
float sums, the stated error bound for sketches); other columns (request columns, derivations) compare floats
within a relative 1e-9.

**Causes** (:func:`classify_part`): for a mismatching (row, Join part) the reference fold
(:class:`features.reference.GroupByIndex`) is re-run over the entity's events as the online path could have
seen them. The first counterfactual under which every mismatching feature of the part agrees with the logged
online value names the cause:

1. ``stream_lag``: drop the events past the batch boundary that had not arrived (``arrival_ts``) by the request
   time, or by any processing frontier within :data:`STREAM_LAG_BUDGET_MS` before it (events that reached Kafka
   a moment before the request but were not yet tiled and flushed: the stream's freshness, not a bug).
2. ``late_event``: additionally drop events past the boundary that arrived later than the allowed lateness
   (the stream routes them to the late topic; the next batch upload corrects them).
3. ``window_edge``: the offline value one ms or one hop either side of the request time (an event on a window
   edge or hop the two paths put on different sides).
4. ``stale_batch``: the logged batch boundary is older than expected (the day's upload was late).
0. ``sketch_error``: (first) approximate features that differ only within their sketch's error bound, judged
   against the exact values of the window.
5. ``unexplained``: none of the above, a semantic bug. ``degraded`` marks parts the fetcher could not serve.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from features.ops.base import AggOp, results_close
from features.plan import GroupByPlan
from features.reference import GroupByIndex
from features.windows import DAY_MS, align

# ---- the feature log ---------------------------------------------------------------------------------------
LOG_ID = "log_id"
LOG_COLUMNS: dict[str, str] = {
    LOG_ID: "string",  # unique per logged fetch
    "join": "string",
    "plan_hash": "string",
    "at_ms": "long",  # the request time the features were computed at
    "logged_at_ms": "long",  # wall clock when the fetch returned
    "sample_key": "string",  # the (JSON) key value the sampling hashed
    "keys": "string",  # JSON {group_by: [key values]}
    "request": "string",  # JSON {request column: value}
    "values": "string",  # JSON {output column: value}; maps as objects, lists as arrays
    "errors": "string",  # JSON {part or derivation: reason}
    "degraded": "boolean",
    "stale": "boolean",
    "batch": "string",  # JSON {group_by: {"version": name, "boundary_ms": ms}}
    "fetch_ms": "double",
}
"""Every column of a feature-log row, with its (Spark-style) type."""

# ---- causes -------------------------------------------------------------------------------------------------
LAG = "stream_lag"
#: How far behind the stream may be and still count as lag (its p99 freshness with headroom).
STREAM_LAG_BUDGET_MS = 2_000
LATE = "late_event"
EDGE = "window_edge"
STALE = "stale_batch"
DEGRADED = "degraded"
UNEXPLAINED = "unexplained"
SKETCH = "sketch_error"
CAUSES = (LAG, LATE, EDGE, STALE, DEGRADED, UNEXPLAINED)

# ---- outcomes of one comparison ------------------------------------------------------------------------------
BOTH_NULL = "both_null"
ONLINE_NULL = "online_only_null"
OFFLINE_NULL = "offline_only_null"
MATCH = "match"
MISMATCH = "mismatch"


def expected_boundary(at_ms: int) -> int:
    """The batch boundary a healthy deployment serves at ``at_ms``: the end of the previous UTC day."""
    return align(at_ms, DAY_MS)


def normalize(value: Any) -> Any:
    """A value as JSON would carry it: maps (dicts or Arrow's key/value pairs) as dicts with string keys."""
    if isinstance(value, dict):
        return {str(k): normalize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if value and all(isinstance(x, tuple) and len(x) == 2 for x in value):
            return {str(k): normalize(v) for k, v in value}
        return [normalize(x) for x in value]
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def compare(online: Any, offline: Any, op: AggOp | None) -> str:
    """One of :data:`BOTH_NULL`, :data:`ONLINE_NULL`, :data:`OFFLINE_NULL`, :data:`MATCH`, :data:`MISMATCH`."""
    if online is None and offline is None:
        return BOTH_NULL
    if online is None:
        return ONLINE_NULL
    if offline is None:
        return OFFLINE_NULL
    if op is not None:
        try:
            same = op.agrees(online, offline)
        except Exception:
            same = False
    else:
        same = results_close(online, offline)
    return MATCH if same else MISMATCH


def smape(online: float, offline: float) -> float:
    """Symmetric absolute percentage error of one pair, in [0, 2] (0 when both are 0)."""
    denom = (abs(online) + abs(offline)) / 2
    if denom == 0 or math.isnan(denom):
        return 0.0 if online == offline else 2.0
    return min(2.0, abs(online - offline) / denom)


def collection_diff(online: Any, offline: Any) -> dict[str, int]:
    """What differs between two lists (as multisets) or two maps (keys, and values of shared keys)."""
    if isinstance(online, dict) and isinstance(offline, dict):
        shared = set(online) & set(offline)
        return {
            "only_online": len(set(online) - shared),
            "only_offline": len(set(offline) - shared),
            "changed": sum(1 for k in shared if not results_close(online[k], offline[k])),
        }
    if isinstance(online, list) and isinstance(offline, list):
        a = Counter(repr(x) for x in online)
        b = Counter(repr(x) for x in offline)
        return {
            "only_online": sum((a - b).values()),
            "only_offline": sum((b - a).values()),
            "changed": int(online != offline and a == b),  # same items, other order
        }
    return {"only_online": 0, "only_offline": 0, "changed": 1}


# ---- root causes ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PartContext:
    """What the online path served one Join part from, as logged."""

    at_ms: int
    key: tuple[Any, ...]
    boundary_ms: int | None
    stale_flag: bool = False


def _arrival(row: Mapping[str, Any], time_col: str, arrival_col: str | None) -> int:
    if arrival_col is not None:
        a = row.get(arrival_col)
        if a is not None:
            return int(a)
    return int(row[time_col])


def _agrees(
    gb: GroupByPlan,
    events: Sequence[Mapping[str, Any]],
    ctx: PartContext,
    t: int,
    online: Mapping[str, Any],
    features: Sequence[str],
) -> bool:
    index = GroupByIndex(gb, events)
    values = index.features_at(ctx.key, t)
    for f in features:
        op = index.ops[gb.feature(f).agg_index]
        o, w = online.get(f), normalize(values[f])
        if compare(o, w, op) in (MATCH, BOTH_NULL):
            continue
        if not op.is_exact and o is not None and w is not None:
            # Two sketches of the same events may differ (KLL compaction is randomized): judge both against
            # the exact values of the window, within the sketch's published error.
            try:
                if op.agrees(o, w, _window_values(index, gb, f, ctx.key, t)):
                    continue
            except Exception:
                pass
        return False
    return True


def _window_values(
    index: GroupByIndex, gb: GroupByPlan, feature: str, key: Sequence[Any], t: int
) -> list[Any]:
    """The non-null values of ``feature``'s column in its window at ``t`` for entity ``key``."""
    f = gb.feature(feature)
    agg = gb.aggregations[f.agg_index]
    rows = index.window_rows(key, agg.windows[f.window_index], t)
    return [r[agg.column] for r in rows if r.get(agg.column) is not None]


def _op_of(gb: GroupByPlan, feature: str) -> AggOp:
    from features.reference import agg_op

    agg = gb.aggregations[gb.feature(feature).agg_index]
    return agg_op(agg, gb.row_logic.output_schema.get(agg.bucket or "", "string"))


def classify_part(
    gb: GroupByPlan,
    ctx: PartContext,
    online: Mapping[str, Any],
    mismatching: Sequence[str],
    events: Iterable[Mapping[str, Any]],
    *,
    arrival_column: str | None = "arrival_ts",
) -> str:
    """The likely cause of the mismatches of ``gb``'s features ``mismatching`` (feature names of the GroupBy)
    for one logged request: ``online`` maps those names to the logged values, ``events`` are the raw source
    rows of the request's entity (with their arrival column when the source has one)."""
    time_col = gb.source.time_column
    arrival_col = arrival_column if arrival_column in gb.source.schema else None
    rows = [r for r in events if r.get(time_col) is not None and int(r[time_col]) < ctx.at_ms]
    boundary = ctx.boundary_ms if ctx.boundary_ms is not None else ctx.at_ms
    lateness = gb.source.allowed_lateness_ms
    flush = gb.stream.flush_interval_ms if gb.stream is not None else 0
    t = ctx.at_ms

    def streamed(r: Mapping[str, Any]) -> bool:
        return int(r[time_col]) >= boundary

    if any(not _op_of(gb, f).is_exact for f in mismatching) and _agrees(
        gb, rows, ctx, t, online, mismatching
    ):
        return SKETCH
    # The stream's processing frontier may be anywhere within the lag budget: try each arrival time there.
    recent = sorted(
        {
            a
            for r in rows
            if streamed(r) and t - STREAM_LAG_BUDGET_MS <= (a := _arrival(r, time_col, arrival_col)) < t
        },
        reverse=True,
    )[:64]
    for cutoff in (t, t - flush, *recent, t - STREAM_LAG_BUDGET_MS):
        seen = [r for r in rows if not streamed(r) or _arrival(r, time_col, arrival_col) < cutoff]
        if len(seen) < len(rows) and _agrees(gb, seen, ctx, t, online, mismatching):
            return LAG
    on_time = [
        r
        for r in rows
        if not streamed(r)
        or (
            _arrival(r, time_col, arrival_col) < t
            and _arrival(r, time_col, arrival_col) - int(r[time_col]) <= lateness
        )
    ]
    if len(on_time) < len(rows) and _agrees(gb, on_time, ctx, t, online, mismatching):
        return LATE
    hops = sorted(
        {
            gb.aggregations[gb.feature(f).agg_index].windows[gb.feature(f).window_index].hop_ms
            for f in mismatching
        }
    )
    for dt in (-1, 1, *(s * h for h in hops for s in (-1, 1))):
        if _agrees(gb, rows, ctx, t + dt, online, mismatching):
            return EDGE
    if ctx.stale_flag or (ctx.boundary_ms is not None and ctx.boundary_ms < expected_boundary(t)):
        return STALE
    return UNEXPLAINED


def worst(causes: Iterable[str]) -> str | None:
    """The most serious of some causes (unexplained first), None when there are none."""
    order = {c: i for i, c in enumerate((UNEXPLAINED, DEGRADED, STALE, LATE, LAG, EDGE, SKETCH))}
    found = sorted(set(causes), key=lambda c: order.get(c, -1))
    return found[0] if found else None
