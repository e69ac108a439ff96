"""``tessera consistency``: logged online vectors vs the offline recomputation of the same requests.

1. The day's feature-log rows of one Join (``<log>/date=D/hour=*/part-*.parquet``, :data:`LOG_COLUMNS`) become
   the backfill's left side: the logged request columns, the Join's time column set to the logged request time
   and the log id passed through.
2. :func:`spark_jobs.backfill.training_set` recomputes every column (the same job that builds training sets).
3. Rows are joined on the log id and every column compared (:func:`features.consistency.compare`): per column
   and per hour, totals, both-null, online-only-null, offline-only-null, mismatches, SMAPE and the
   (online - offline) distribution for numbers, item/key differences for lists and maps.
4. Each mismatching (row, part) gets a likely cause (:func:`features.consistency.classify_part`) from the
   entity's events (read with Spark, only the keys that mismatched, at most ``max_classified`` rows).

The logged rows are a sample, so comparison and classification run on the driver; the recomputation runs in Spark.
The result is a JSON-able summary (:func:`run_consistency`); ``spark_jobs.consistency_report`` renders it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from features.consistency import (
    BOTH_NULL,
    DEGRADED,
    LOG_COLUMNS,
    LOG_ID,
    MATCH,
    MISMATCH,
    OFFLINE_NULL,
    ONLINE_NULL,
    UNEXPLAINED,
    PartContext,
    classify_part,
    collection_diff,
    compare,
    is_number,
    normalize,
    smape,
    worst,
)
from features.ops.base import AggOp
from features.plan import GroupByPlan, JoinPlan, Plan
from features.reference import agg_op
from spark_jobs.backfill import Source, training_set
from spark_jobs.bucket_fold import arrow_type

log = logging.getLogger("tessera.consistency")

LEFT_LOG_ID = "__log_id"
SCATTER_POINTS = 400
EXAMPLES = 50


@dataclass(frozen=True)
class Thresholds:
    """When the check fails (the CLI exits non-zero): more unexplained mismatches than ``max_unexplained``, or a
    feature whose mismatch rate (all causes) exceeds ``max_mismatch_rate``."""

    max_unexplained: int = 0
    max_mismatch_rate: float = 1.0


def read_log(root: str | Path, date: str, join: str | None = None) -> pa.Table:
    """The logged rows of one UTC day (``YYYY-MM-DD``), optionally of one Join, each log id once."""
    schema = pa.schema([(n, arrow_type(t)) for n, t in LOG_COLUMNS.items()])
    files = sorted((Path(root) / f"date={date}").glob("hour=*/part-*.parquet"))
    if not files:
        return schema.empty_table()
    import pyarrow.compute as pc

    table = pa.concat_tables([pq.read_table(f, schema=schema) for f in files])
    if join is not None:
        table = table.filter(pc.equal(table["join"], join))
    ids = table[LOG_ID].to_pylist()
    if len(set(ids)) < len(ids):  # a row landed twice from a topic (at-least-once): keep its first copy
        seen: set[str] = set()
        keep = []
        for i in ids:
            keep.append(i not in seen)
            seen.add(i)
        table = table.filter(pa.array(keep, pa.bool_()))
    return table


def left_of(join: JoinPlan, logged: list[dict[str, Any]]) -> pa.Table:
    """The backfill's left side of logged rows: the request columns (the time column = the logged request
    time) and the log id."""
    requests = [json.loads(r["request"]) for r in logged]
    cols: dict[str, pa.Array] = {}
    for col, typ in join.left.schema.items():
        if col == join.left.time_column:
            vals: list[Any] = [int(r["at_ms"]) for r in logged]
        else:
            vals = [q.get(col) for q in requests]
        cols[col] = pa.array(vals, type=arrow_type(typ))
    cols[LEFT_LOG_ID] = pa.array([r[LOG_ID] for r in logged], pa.string())
    return pa.table(cols)


def _column_ops(plan: Plan, join: JoinPlan) -> dict[str, tuple[GroupByPlan, str, AggOp]]:
    """Output column -> (its GroupBy, the GroupBy's feature name, the op)."""
    out: dict[str, tuple[GroupByPlan, str, AggOp]] = {}
    for part in join.parts:
        gb = plan.group_by(part.group_by)
        schema = gb.row_logic.output_schema
        ops = [agg_op(a, schema.get(a.bucket or "", "string")) for a in gb.aggregations]
        for name, feat in part.features.items():
            out[name] = (gb, feat, ops[gb.feature(feat).agg_index])
    return out


class _Stats:
    """Running statistics of one output column."""

    def __init__(self, name: str, kind: str, part: str | None, op: str | None) -> None:
        self.name, self.kind, self.part, self.op = name, kind, part, op
        self.outcomes: Counter[str] = Counter()
        self.causes: Counter[str] = Counter()
        self.by_hour: dict[int, Counter[str]] = defaultdict(Counter)
        self.diffs: list[float] = []
        self.smapes: list[float] = []
        self.scatter: list[tuple[float, float, bool]] = []
        self.collection: Counter[str] = Counter()

    def summary(self) -> dict[str, Any]:
        total = sum(self.outcomes.values())
        bad = self.outcomes[MISMATCH] + self.outcomes[ONLINE_NULL] + self.outcomes[OFFLINE_NULL]
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "part": self.part,
            "op": self.op,
            "total": total,
            "both_null": self.outcomes[BOTH_NULL],
            "online_only_null": self.outcomes[ONLINE_NULL],
            "offline_only_null": self.outcomes[OFFLINE_NULL],
            "match": self.outcomes[MATCH],
            "mismatch": self.outcomes[MISMATCH],
            "inconsistent": bad,
            "mismatch_rate": bad / total if total else 0.0,
            "causes": dict(self.causes),
            "by_hour": {
                f"{h:02d}": {"total": c["n"], "inconsistent": c["bad"]} for h, c in self.by_hour.items()
            },
        }
        if self.kind == "number":
            d = sorted(self.diffs)
            out["smape_mean"] = sum(self.smapes) / len(self.smapes) if self.smapes else 0.0
            out["diff"] = _distribution(d)
            out["scatter"] = self.scatter[:SCATTER_POINTS]
        if self.kind in ("list", "map"):
            out["collection_diff"] = dict(self.collection)
        return out


def _distribution(d: list[float]) -> dict[str, float]:
    if not d:
        return {}
    d = [x for x in d if not math.isnan(x)]
    if not d:
        return {}

    def q(p: float) -> float:
        return d[min(len(d) - 1, int(p * (len(d) - 1) + 0.5))]

    return {
        "n": len(d),
        "mean": sum(d) / len(d),
        "min": d[0],
        "p01": q(0.01),
        "p50": q(0.5),
        "p99": q(0.99),
        "max": d[-1],
        "nonzero": sum(1 for x in d if x != 0),
    }


def _kind(typ: str) -> str:
    if typ.startswith("map<"):
        return "map"
    if typ.startswith("array<"):
        return "list"
    if typ in ("long", "int", "double", "float", "bigint", "integer", "short"):
        return "number"
    return "other"


def _events_of(
    spark: Any, gb: GroupByPlan, source: Source, keys: set[tuple[Any, ...]]
) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """The raw source rows of the given entity keys, grouped by key (key columns read raw from the source)."""
    from pyspark.sql import functions as F

    from features.reference import row_function

    df = spark.read.parquet(str(source)) if isinstance(source, str | Path) else source
    raw_keys = all(k in df.columns for k in gb.keys)
    if raw_keys and len(gb.keys) == 1:
        df = df.where(F.col(gb.keys[0]).isin([k[0] for k in keys]))
    rows = df.toArrow().to_pylist()
    fn = row_function(gb)
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if raw_keys:
            key = tuple(r.get(k) for k in gb.keys)
        else:
            p = fn(r)
            key = tuple(p.get(k) for k in gb.keys) if p is not None else ()
        if key in keys:
            out[key].append(r)
    return out


def run_consistency(
    plan: Plan,
    join_name: str,
    date: str,
    log_root: str | Path,
    sources: Mapping[str, Source],
    *,
    spark: Any = None,
    thresholds: Thresholds | None = None,
    max_classified: int = 2_000,
    arrival_column: str = "arrival_ts",
) -> dict[str, Any]:
    """Compare the day's logged vectors of ``join_name`` with their offline recomputation; return the summary
    (JSON-able: totals, per column, per hour, causes, examples, whether a threshold was exceeded)."""
    started = time.perf_counter()
    thresholds = thresholds or Thresholds()
    join = plan.join(join_name)
    logged = read_log(log_root, date, join_name).to_pylist()
    summary: dict[str, Any] = {
        "join": join_name,
        "date": date,
        "plan_hash": plan.plan_hash,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "rows": len(logged),
        "thresholds": {
            "max_unexplained": thresholds.max_unexplained,
            "max_mismatch_rate": thresholds.max_mismatch_rate,
        },
    }
    if not logged:
        summary.update(
            columns=[], hours=[], causes={}, examples=[], compared=0, inconsistent=0, unexplained=0
        )
        summary.update(
            exceeded=False, reasons=["no logged rows for this day"], seconds=time.perf_counter() - started
        )
        return summary
    plan_hashes = Counter(r["plan_hash"] for r in logged)
    summary["logged_plan_hashes"] = dict(plan_hashes)

    offline = training_set(plan, join_name, left_of(join, logged), sources, spark=spark)
    assert offline is not None
    off_rows = {r[LEFT_LOG_ID]: r for r in offline.to_pylist()}

    col_ops = _column_ops(plan, join)
    part_of_col = {c: part.group_by for part in join.parts for c in part.features}
    stats = {
        c: _Stats(c, _kind(t), part_of_col.get(c), col_ops[c][2].name if c in col_ops else None)
        for c, t in join.output_schema.items()
    }
    hours: dict[int, Counter[str]] = defaultdict(Counter)

    # ---- compare ----------------------------------------------------------------------------------------------
    bad_cells: list[
        tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]
    ] = []  # (log row, online, offline, col)
    parsed: dict[str, dict[str, Any]] = {}
    for r in logged:
        online = json.loads(r["values"])
        parsed[r[LOG_ID]] = online
        off = off_rows.get(r[LOG_ID])
        hour = dt.datetime.fromtimestamp(r["at_ms"] / 1000, tz=dt.UTC).hour
        hours[hour]["rows"] += 1
        for col, st in stats.items():
            o: Any = normalize(online.get(col))
            f: Any = normalize(off.get(col)) if off is not None else None
            outcome = compare(o, f, col_ops[col][2] if col in col_ops else None)
            st.outcomes[outcome] += 1
            st.by_hour[hour]["n"] += 1
            hours[hour]["compared"] += 1
            if outcome not in (MATCH, BOTH_NULL):
                st.by_hour[hour]["bad"] += 1
                hours[hour]["inconsistent"] += 1
                bad_cells.append((r, online, off or {}, col))
            if st.kind == "number" and is_number(o) and is_number(f):
                st.diffs.append(float(o) - float(f))
                st.smapes.append(smape(float(o), float(f)))
                if len(st.scatter) < SCATTER_POINTS or outcome == MISMATCH:
                    st.scatter.append((float(f), float(o), outcome == MISMATCH))
            elif outcome == MISMATCH and st.kind in ("list", "map"):
                st.collection["rows"] += 1
                for k, v in collection_diff(o, f).items():
                    st.collection[k] += v

    # ---- classify ----------------------------------------------------------------------------------------------
    by_row_part: dict[tuple[str, str], list[str]] = defaultdict(
        list
    )  # (log id, group_by) -> GroupBy features
    for r, _, _, col in bad_cells:
        if col in col_ops:
            by_row_part[(r[LOG_ID], col_ops[col][0].name)].append(col_ops[col][1])
    rows_by_id = {r[LOG_ID]: r for r in logged}
    classified: dict[tuple[str, str], str] = {}
    pending = list(by_row_part.items())[:max_classified]
    wanted: dict[str, set[tuple[Any, ...]]] = defaultdict(set)
    for (lid, gb_name), _ in pending:
        key = tuple(json.loads(rows_by_id[lid]["keys"]).get(gb_name) or ())
        wanted[gb_name].add(key)
    events: dict[str, dict[tuple[Any, ...], list[dict[str, Any]]]] = {}
    for gb_name, keys in wanted.items():
        gb = plan.group_by(gb_name)
        events[gb_name] = _events_of(spark, gb, sources[gb.source.table], keys)
    for (lid, gb_name), feats in pending:
        r = rows_by_id[lid]
        gb = plan.group_by(gb_name)
        errors = json.loads(r["errors"])
        if gb_name in errors:
            classified[(lid, gb_name)] = DEGRADED
            continue
        key = tuple(json.loads(r["keys"]).get(gb_name) or ())
        batch = json.loads(r["batch"]).get(gb_name) or {}
        ctx = PartContext(int(r["at_ms"]), key, batch.get("boundary_ms"), bool(r["stale"]))
        part = next(p for p in join.parts if p.group_by == gb_name)
        inverse = {feat: out for out, feat in part.features.items()}
        online = {f: normalize(parsed[lid].get(inverse[f])) for f in feats}
        classified[(lid, gb_name)] = classify_part(
            gb, ctx, online, feats, events[gb_name].get(key, []), arrival_column=arrival_column
        )
    summary["unclassified"] = len(by_row_part) - len(pending)

    causes: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    row_parts: dict[str, list[str]] = defaultdict(list)
    for (lid, _), cause in classified.items():
        row_parts[lid].append(cause)
    for r, online, off, col in bad_cells:
        lid = r[LOG_ID]
        if col in col_ops:
            cause = classified.get((lid, col_ops[col][0].name), "unclassified")
        else:  # a request column or a derivation: what its inputs' parts say, else a bug of its own
            cause = worst(row_parts.get(lid, [])) or UNEXPLAINED
        stats[col].causes[cause] += 1
        causes[cause] += 1
        hours[dt.datetime.fromtimestamp(r["at_ms"] / 1000, tz=dt.UTC).hour][f"cause:{cause}"] += 1
        if len(examples) < EXAMPLES or (
            cause == UNEXPLAINED and sum(e["cause"] == UNEXPLAINED for e in examples) < 10
        ):
            examples.append(
                {
                    "log_id": lid,
                    "at_ms": r["at_ms"],
                    "column": col,
                    "online": normalize(online.get(col)),
                    "offline": normalize(off.get(col)),
                    "cause": cause,
                }
            )

    columns = [st.summary() for st in stats.values()]
    compared = sum(c["total"] for c in columns)
    inconsistent = sum(c["inconsistent"] for c in columns)
    reasons = []
    if causes[UNEXPLAINED] > thresholds.max_unexplained:
        reasons.append(f"{causes[UNEXPLAINED]} unexplained mismatches > {thresholds.max_unexplained}")
    for c in columns:
        if c["mismatch_rate"] > thresholds.max_mismatch_rate:
            reasons.append(
                f"{c['name']}: mismatch rate {c['mismatch_rate']:.4f} > {thresholds.max_mismatch_rate}"
            )
    summary.update(
        compared=compared,
        inconsistent=inconsistent,
        mismatch_rate=inconsistent / compared if compared else 0.0,
        unexplained=causes[UNEXPLAINED],
        causes=dict(causes),
        columns=columns,
        hours=[
            {
                "hour": f"{h:02d}",
                "rows": c["rows"],
                "compared": c["compared"],
                "inconsistent": c["inconsistent"],
                "mismatch_rate": c["inconsistent"] / c["compared"] if c["compared"] else 0.0,
                "causes": {k[6:]: v for k, v in c.items() if k.startswith("cause:")},
            }
            for h, c in sorted(hours.items())
        ],
        examples=examples,
        exceeded=bool(reasons),
        reasons=reasons,
        seconds=time.perf_counter() - started,
    )
    log.info(
        "consistency %s %s: %d rows, %d/%d inconsistent, causes %s",
        join_name,
        date,
        len(logged),
        inconsistent,
        compared,
        dict(causes),
    )
    return summary
