"""The reference computation of a Join, straight from the plan: row logic, then a direct fold per window.

No tiles, no stores: for each request it folds exactly the events each window covers, with the shared ops and
the Python row function compiled from the plan's SQL. It is slow by design (per request, per window) and is
what the tiled paths (stream + batch + fetcher, backfill) must equal; tests also check it against the
independent DuckDB oracle.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from features.fold import fold_sorted
from features.ops import AggOp, OpParams, get_op
from features.ops.bucketed import Bucketed
from features.plan import AggregationPlan, GroupByPlan, JoinPlan, WindowPlan
from features.sql import compile_expression, compile_row_logic
from features.windows import window_interval

Row = Mapping[str, Any]


def row_function(gb: GroupByPlan) -> Callable[[Row], dict[str, Any] | None]:
    """The Python row logic of a GroupBy, compiled from the plan's normalized SQL."""
    logic = compile_row_logic(
        gb.row_logic.selects, gb.row_logic.where, gb.source.schema, passthrough=gb.row_logic.passthrough
    )
    return logic.python_fn


def agg_op(agg: AggregationPlan, bucket_type: str = "string") -> AggOp:
    """The shared op for one aggregation of the plan (bucketed when the aggregation has buckets)."""
    params = OpParams(k=agg.k, percentiles=agg.percentiles)
    op = get_op(agg.op, params, input_type=agg.input_type)
    return Bucketed(op, bucket_type=bucket_type) if agg.bucket else op


def project_by_key(gb: GroupByPlan, events: Iterable[Row]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """The GroupBy's row logic applied to raw ``events``, grouped by entity key, in input order. Rows the where
    filters out and rows with a null key or time are dropped, as every engine drops them."""
    fn = row_function(gb)
    time_col = gb.source.time_column
    grouped: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for raw in events:
        row = fn(raw)
        if row is None or row.get(time_col) is None:
            continue
        key = tuple(row.get(k) for k in gb.keys)
        if any(k is None for k in key):
            continue
        grouped[key].append(row)
    return grouped


@dataclass
class _KeyEvents:
    ts: list[int]
    rows: list[dict[str, Any]]


class GroupByIndex:
    """A GroupBy's projected events, per entity key, sorted by (ts, tie-break)."""

    def __init__(self, gb: GroupByPlan, events: Iterable[Row]):
        self.gb = gb
        time_col = gb.source.time_column
        tie_col = gb.source.tie_break
        grouped = project_by_key(gb, events)
        self.by_key: dict[tuple[Any, ...], _KeyEvents] = {}
        for key, rows in grouped.items():
            rows.sort(key=lambda r: (r[time_col], r.get(tie_col, 0) if tie_col else 0))
            self.by_key[key] = _KeyEvents([r[time_col] for r in rows], rows)
        schema = gb.row_logic.output_schema
        self.ops = [agg_op(a, schema.get(a.bucket or "", "string")) for a in gb.aggregations]

    def window_rows(self, key: Sequence[Any], window: WindowPlan, t_ms: int) -> Sequence[Row]:
        """Entity ``key``'s projected rows that ``window`` covers at ``t_ms``, in (ts, tie) order."""
        events = self.by_key.get(tuple(key))
        if events is None:
            return []
        start, end = window_interval(t_ms, window.length_ms, window.hop_ms, window.offset_ms)
        return events.rows[bisect.bisect_left(events.ts, start) : bisect.bisect_left(events.ts, end)]

    def features_at(self, key: Sequence[Any], t_ms: int) -> dict[str, Any]:
        """Every feature of the GroupBy for entity ``key`` at query time ``t_ms``: each window's rows folded
        with the shared op (bucketed aggregations: per bucket, through ``Bucketed``)."""
        gb = self.gb
        time_col, tie_col = gb.source.time_column, gb.source.tie_break
        out: dict[str, Any] = {}
        for f in gb.features:
            agg = gb.aggregations[f.agg_index]
            op = self.ops[f.agg_index]
            rows = self.window_rows(key, agg.windows[f.window_index], t_ms)
            ts = [r[time_col] for r in rows]
            tie = [int(r.get(tie_col) or 0) if tie_col else 0 for r in rows]
            values = [r.get(agg.column) for r in rows]
            if agg.bucket:
                ir = op.init()
                for t, ti, bucket, value in zip(ts, tie, (r.get(agg.bucket) for r in rows), values):
                    if bucket is not None and value is not None:
                        ir = op.update_bucket(ir, bucket, value, t, ti)  # type: ignore[attr-defined]
                out[f.name] = op.finalize(ir)
            else:
                out[f.name] = fold_sorted(op, ts, tie, values)
        return out


def join_features(
    join: JoinPlan,
    indexes: Mapping[str, GroupByIndex],
    requests: Iterable[Row],
) -> list[dict[str, Any]]:
    """The Join's output row for each request (the request's columns, every part's features, derivations)."""
    derivations = [
        (d.name, compile_expression(d.expression, _scalar_schema(join, d.name), kind="derivation"))
        for d in join.derivations
    ]
    t_col = join.left.time_column
    out = []
    for req in requests:
        row: dict[str, Any] = {c: req.get(c) for c in join.left.schema}
        for part in join.parts:
            key = [req.get(part.key_map[k]) for k in indexes[part.group_by].gb.keys]
            values = indexes[part.group_by].features_at(key, int(req[t_col]))
            for out_name, feature in part.features.items():
                row[out_name] = values[feature]
        for name, fn in derivations:
            row[name] = fn(row)
        out.append(row)
    return out


def _scalar_schema(join: JoinPlan, upto: str) -> dict[str, str]:
    schema: dict[str, str] = {}
    for col, typ in join.output_schema.items():
        if col == upto:
            break
        if not typ.startswith(("map<", "array<")):
            schema[col] = typ
    return schema
