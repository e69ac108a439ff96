"""The fold of one hash bucket: every feature of one GroupBy at every query of the bucket, sort/scan, no join.

Input: the bucket's projected events (``__key``, ``__ts``, ``__tie`` and the aggregated columns, after the
plan's row logic) and its queries (``__qid``, ``__key``, ``__t``). Output: ``__qid`` plus one column per
feature of the GroupBy. Pure numpy/pyarrow plus :mod:`features.ops`, so it runs inside a Spark Python worker
(``applyInArrow``) and in plain tests alike.

How (all vectorised over the bucket's queries):

1. Keys are dictionary-encoded to codes; events sorted by ``(code, ts, tie)``; each event gets the composite
   ``code * span + (ts - base)``, which is ascending, so one ``searchsorted`` finds, for every query and window,
   the index range ``[lo, hi)`` of its key's events in ``[start, end)``.
2. Per aggregation, rows with a null value (or null bucket) are dropped first, so ``hi - lo`` is the count.
3. Per op: count = ``hi - lo``; integer sum/avg = prefix sums (exact in int64); double sum/avg and min/max =
   ``ufunc.reduceat`` over the ranges (C loops; double sums whose rounding-error bound could exceed 1e-11
   relative, or that hold inf/NaN, are refolded exactly with the shared op in one sliding pass); first/last/first_k/last_k =
   index arithmetic on the sorted rows. Every other op (sketches, variance, top_k, histogram, bucketed) goes
   through :func:`spark_jobs.sliding.sliding_fold`: one pass over the ranges sorted by ``(lo, hi)`` — running
   add/remove for invertible ops, two-stack sliding-window aggregation (suffix snapshots ⊕ a forward prefix)
   for the rest — so each event is folded a bounded number of times and each query costs at most one copy,
   merge and finalize of the shared op, whatever the window length: O(events + queries) per window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.ops import AggOp
from features.ops.base import INTEGER_TYPES
from features.plan import AggregationPlan, GroupByPlan, WindowPlan
from features.reference import agg_op
from features.windows import LIFETIME_START_MS
from spark_jobs.sliding import Fold, sliding_fold

QID, KEY, TS, TIE, T = "__qid", "__key", "__ts", "__tie", "__t"

_U = 2.0**-52  # unit roundoff bound (generous: 2u)
_SUM_RTOL = 1e-11  # double sums whose error bound exceeds this (relative) are refolded exactly

_SCALAR_ARROW = {
    "long": pa.int64(),
    "bigint": pa.int64(),
    "int": pa.int32(),
    "integer": pa.int32(),
    "smallint": pa.int16(),
    "tinyint": pa.int8(),
    "double": pa.float64(),
    "float": pa.float32(),
    "string": pa.string(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
}


def arrow_type(spark_type: str) -> pa.DataType:
    """The Arrow type of a Spark type name from the plan (``long``, ``array<double>``, ``map<string,long>``)."""
    t = spark_type.strip().lower()
    if t.startswith("array<") and t.endswith(">"):
        return pa.list_(arrow_type(t[6:-1]))
    if t.startswith("map<") and t.endswith(">"):
        inner = t[4:-1]
        depth = 0
        for i, ch in enumerate(inner):
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "," and depth == 0:
                return pa.map_(arrow_type(inner[:i]), arrow_type(inner[i + 1 :]))
    if t.startswith("decimal"):
        return pa.float64()
    try:
        return _SCALAR_ARROW[t]
    except KeyError:
        raise ValueError(f"no Arrow type for Spark type {spark_type!r}") from None


def to_arrow(values: list[Any], typ: pa.DataType) -> pa.Array:
    """Finalized op values as an Arrow array of ``typ`` (dicts become map entries)."""
    if pa.types.is_map(typ):
        return pa.array([None if v is None else list(v.items()) for v in values], type=typ)
    return pa.array(values, type=typ)


def needed_columns(gb: GroupByPlan) -> list[str]:
    """The projected columns the aggregations read (values and buckets), in a stable order."""
    cols: list[str] = []
    for a in gb.aggregations:
        for c in (a.column, a.bucket):
            if c is not None and c not in cols:
                cols.append(c)
    return cols


def window_bounds(t: np.ndarray, w: WindowPlan, delay_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """``[start, end)`` per query time (DESIGN.md semantics), the end clipped to ``t - delay_ms``."""
    end = t.copy() if w.offset_ms == 0 else np.floor_divide(t - w.offset_ms, w.hop_ms) * w.hop_ms
    if w.length_ms is None:
        start = np.full_like(t, LIFETIME_START_MS)
    else:
        start = np.floor_divide(t - w.offset_ms - w.length_ms, w.hop_ms) * w.hop_ms
    if delay_ms:
        end = np.minimum(end, t - delay_ms)
    return start, np.maximum(start, end)


@dataclass
class _Rows:
    """One aggregation's non-null rows, sorted by (key code, ts, tie)."""

    comp: np.ndarray
    ts: np.ndarray
    tie: np.ndarray
    values: pa.Array
    buckets: pa.Array | None


def _ranges(
    rows: _Rows, qcomp_base: np.ndarray, start: np.ndarray, end: np.ndarray, base: int, span: int
) -> tuple[np.ndarray, np.ndarray]:
    s = qcomp_base + np.clip(start - base, 0, span - 1)
    e = qcomp_base + np.clip(end - base, 0, span - 1)
    return np.searchsorted(rows.comp, s, "left"), np.searchsorted(rows.comp, e, "left")


def _reduceat(ufunc: Any, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, fill: Any) -> np.ndarray:
    """``ufunc.reduce(x[lo:hi])`` per range (``fill`` where empty); ranges visited by ascending ``lo`` so the
    gaps between ranges cost O(len(x)) in all."""
    n = len(lo)
    if n == 0:
        return np.empty(0, dtype=x.dtype)
    perm = np.argsort(lo, kind="stable")
    idx = np.empty(2 * n, dtype=np.int64)
    idx[0::2] = lo[perm]
    idx[1::2] = hi[perm]
    xs = np.append(x, np.zeros(1, dtype=x.dtype))
    red = ufunc.reduceat(xs, idx)[0::2]
    out = np.empty(n, dtype=x.dtype)
    out[perm] = red
    out[hi <= lo] = fill
    return out


def _range_extreme(ufunc: Any, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, fill: Any) -> np.ndarray:
    """``ufunc.reduce(x[lo:hi])`` per range (``fill`` where empty) for an idempotent ``ufunc`` (min/max):
    a sparse table answered level by level. A range of length ``m`` with ``2**j <= m < 2**(j+1)`` is
    ``ufunc(level_j[lo], level_j[hi - 2**j])``, where ``level_j[i]`` reduces ``x[i : i + 2**j]``; the two
    halves overlap, which idempotence allows (NaN propagation of ``maximum`` and NaN skipping of ``fmin``
    are kept too). O(len(x) · log(longest range) + ranges), one level in memory at a time — not the
    O(range length) per range of ``reduceat``, which made long windows over hot keys quadratic."""
    n = len(lo)
    out = np.full(n, fill, dtype=x.dtype)
    length = hi - lo
    live = np.flatnonzero(length > 0)
    if len(live) == 0:
        return out
    level_of = np.zeros(n, dtype=np.int64)
    level_of[live] = np.frexp(length[live].astype(np.float64))[1] - 1  # floor(log2(m)), exact for m < 2**53
    order = live[np.argsort(level_of[live], kind="stable")]
    cuts = np.searchsorted(level_of[order], np.arange(int(level_of[order[-1]]) + 2))
    table = x
    for j in range(len(cuts) - 1):
        if j:
            h = 1 << (j - 1)
            table = ufunc(table[:-h], table[h:])
        sel = order[cuts[j] : cuts[j + 1]]
        if len(sel):
            out[sel] = ufunc(table[lo[sel]], table[hi[sel] - (1 << j)])
    return out


def _numpy_values(values: pa.Array, input_type: str) -> np.ndarray | None:
    if input_type in INTEGER_TYPES and input_type != "boolean":
        return np.asarray(values.to_numpy(zero_copy_only=False)).astype(np.int64)
    if input_type == "double":
        return np.asarray(values.to_numpy(zero_copy_only=False)).astype(np.float64)
    return None


def _feature_values(
    agg: AggregationPlan,
    op: AggOp,
    rows: _Rows,
    lo: np.ndarray,
    hi: np.ndarray,
    cache: dict[str, Any],
    typ: pa.DataType,
) -> pa.Array:
    n = hi - lo
    empty = n <= 0
    name = agg.op
    itype = op.input_type
    if agg.bucket is None:
        if name == "count":
            return pa.array(n.astype(np.int64), type=typ)
        x = cache.get("np")
        if x is None and name in ("sum", "avg", "min", "max"):
            x = cache["np"] = _numpy_values(rows.values, itype)
        if name in ("sum", "avg") and x is not None:
            if itype in INTEGER_TYPES:
                pre = cache.get("prefix")
                if pre is None:
                    pre = cache["prefix"] = np.concatenate([[0], np.cumsum(x, dtype=np.int64)])
                s = pre[hi] - pre[lo]
                if name == "sum":
                    return pa.array(s, mask=empty, type=typ)
                big = np.abs(s) >= 2**53
                avg = s.astype(np.float64) / np.maximum(n, 1)
                for j in np.flatnonzero(big & ~empty).tolist():
                    avg[j] = int(s[j]) / int(n[j])
                return pa.array(avg, mask=empty, type=typ)
            s = _reduceat(np.add, x, lo, hi, 0.0)
            if "abs" not in cache:
                cache["abs"] = np.abs(x)
                cache["nonfinite"] = np.concatenate([[0], np.cumsum(~np.isfinite(x))])
            a = _reduceat(np.add, cache["abs"], lo, hi, 0.0)
            nf = cache["nonfinite"][hi] - cache["nonfinite"][lo]
            with np.errstate(invalid="ignore", over="ignore"):
                risky = ~empty & ((nf > 0) | ~np.isfinite(a) | (n * _U * a > _SUM_RTOL * np.abs(s)))
            vals: list[Any] = (s / np.maximum(n, 1) if name == "avg" else s).tolist()
            if risky.any():
                # Refold the risky ranges exactly in one sliding pass (running add/remove of the exact sum,
                # which is invertible without error): O(events + queries), not O(window) per query.
                which = np.flatnonzero(risky)
                folds = cache.get("folds")
                if folds is None:
                    folds = cache["folds"] = _range_folds(op, rows)
                exact = sliding_fold(op, lo[which], hi[which], folds[0], folds[1])
                for j, v in zip(which.tolist(), exact):
                    vals[j] = v
            for j in np.flatnonzero(empty).tolist():
                vals[j] = None
            return pa.array(vals, type=typ)
        if name in ("min", "max") and x is not None:
            uf: Any
            if itype == "double":
                uf = np.fmin if name == "min" else np.maximum
            else:
                uf = np.minimum if name == "min" else np.maximum
            r = _range_extreme(uf, x, lo, hi, 0)
            if itype == "double":
                r = r + 0.0  # -0.0 -> 0.0, as the op's coercion does
            return pa.array(r, mask=empty, type=typ)
        if name in ("first", "last", "first_k", "last_k"):
            lst = cache.get("list")
            if lst is None:
                lst = cache["list"] = [None if v is None else op.coerce(v) for v in rows.values.to_pylist()]
            if name == "first":
                out = [None if e else lst[a] for e, a in zip(empty.tolist(), lo.tolist())]
            elif name == "last":
                out = [None if e else lst[b - 1] for e, b in zip(empty.tolist(), hi.tolist())]
            elif name == "first_k":
                k = op.k
                out = [lst[a : min(b, a + k)] for a, b in zip(lo.tolist(), hi.tolist())]
            else:
                k = op.k
                out = [lst[max(a, b - k) : b][::-1] for a, b in zip(lo.tolist(), hi.tolist())]
            return pa.array(out, type=typ)
    folds = cache.get("folds")
    if folds is None:
        folds = cache["folds"] = _range_folds(op, rows)
    add, remove = folds
    return to_arrow(sliding_fold(op, lo, hi, add, remove if op.has_inverse else None), typ)


_SMALL = 16  # ranges shorter than this are folded with update() one by one (update_many has fixed costs)


def _range_folds(op: AggOp, rows: _Rows) -> tuple[Fold, Fold]:
    """``add(ir, a, b)`` / ``remove(ir, a, b)``: fold the sorted rows ``a .. b-1`` into / out of ``ir`` with
    the shared op (``update_bucket`` for bucketed ops, ``update_many`` for long scalar ranges)."""
    ts_l, tie_l = rows.ts.tolist(), rows.tie.tolist()
    if rows.buckets is not None:
        blist = rows.buckets.to_pylist()
        vlist = rows.values.to_pylist()
        upd = op.update_bucket  # type: ignore[attr-defined]
        inv = op.inverse

        def add_bucketed(ir: Any, a: int, b: int) -> Any:
            for j in range(a, b):
                ir = upd(ir, blist[j], vlist[j], ts_l[j], tie_l[j])
            return ir

        def remove_bucketed(ir: Any, a: int, b: int) -> Any:
            for j in range(a, b):
                ir = inv(ir, (blist[j], vlist[j]), ts_l[j], tie_l[j])
            return ir

        return add_bucketed, remove_bucketed
    arr = _numpy_values(rows.values, op.input_type)
    vals: Any = arr if arr is not None else rows.values.to_pylist()
    vlist = vals.tolist() if arr is not None else vals
    update, update_many, inverse = op.update, op.update_many, op.inverse
    ts, tie = rows.ts, rows.tie

    def add(ir: Any, a: int, b: int) -> Any:
        if b - a < _SMALL:
            for j in range(a, b):
                ir = update(ir, vlist[j], ts_l[j], tie_l[j])
            return ir
        return update_many(ir, vals[a:b], ts[a:b], tie[a:b])

    def remove(ir: Any, a: int, b: int) -> Any:
        for j in range(a, b):
            ir = inverse(ir, vlist[j], ts_l[j], tie_l[j])
        return ir

    return add, remove


def fold_bucket(events: pa.Table, queries: pa.Table, gb: GroupByPlan, delay_ms: int = 0) -> pa.Table:
    """Every feature of ``gb`` at every query of the bucket: ``__qid`` then the features, in plan order."""
    feature_types = [arrow_type(f.type) for f in gb.features]
    nq = queries.num_rows
    schema = pa.schema([(QID, pa.int64()), *((f.name, t) for f, t in zip(gb.features, feature_types))])
    if nq == 0:
        return schema.empty_table()
    ne = events.num_rows
    keys = (
        pa.chunked_array(
            [c for c in (*events.column(KEY).chunks, *queries.column(KEY).chunks) if len(c)], type=pa.string()
        ).combine_chunks()
        if ne + nq
        else pa.array([], pa.string())
    )
    codes = keys.dictionary_encode().indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    ecode, qcode = codes[:ne], codes[ne:]
    ets = events.column(TS).to_numpy().astype(np.int64) if ne else np.zeros(0, np.int64)
    etie = events.column(TIE).fill_null(0).to_numpy().astype(np.int64) if ne else np.zeros(0, np.int64)
    order = np.lexsort((etie, ets, ecode))
    base = int(ets.min()) if ne else 0
    span = (int(ets.max()) - base + 2) if ne else 2
    comp_all = ecode[order] * span + (ets[order] - base)
    qt = queries.column(T).to_numpy(zero_copy_only=False).astype(np.int64)
    qbase = qcode * span
    sorted_events = events.take(pa.array(order)) if ne else events

    columns: dict[str, pa.Array] = {QID: queries.column(QID).combine_chunks().cast(pa.int64())}
    bounds: dict[WindowPlan, tuple[np.ndarray, np.ndarray]] = {}
    results: dict[str, pa.Array] = {}
    by_agg: dict[int, list[int]] = {}
    for fi, f in enumerate(gb.features):
        by_agg.setdefault(f.agg_index, []).append(fi)
    for agg_index, fis in by_agg.items():
        agg = gb.aggregations[agg_index]
        op = agg_op(agg)
        vcol = sorted_events.column(agg.column).combine_chunks() if ne else pa.array([], pa.null())
        mask = vcol.is_valid()
        bcol = None
        if agg.bucket is not None:
            bcol = sorted_events.column(agg.bucket).combine_chunks() if ne else pa.array([], pa.string())
            mask = pc.and_(mask, bcol.is_valid())
        keep = np.flatnonzero(mask.to_numpy(zero_copy_only=False)) if ne else np.zeros(0, np.int64)
        take = pa.array(keep, pa.int64())
        rows = _Rows(
            comp=comp_all[keep],
            ts=ets[order][keep],
            tie=etie[order][keep],
            values=vcol.take(take),
            buckets=None if bcol is None else bcol.take(take),
        )
        cache: dict[str, Any] = {}
        for fi in fis:
            f = gb.features[fi]
            w = agg.windows[f.window_index]
            if w not in bounds:
                bounds[w] = window_bounds(qt, w, delay_ms)
            start, end = bounds[w]
            lo, hi = _ranges(rows, qbase, start, end, base, span)
            results[f.name] = _feature_values(agg, op, rows, lo, hi, cache, feature_types[fi])
    for f in gb.features:
        columns[f.name] = results[f.name]
    return pa.table(columns, schema=schema)


FoldFn = Callable[[pa.Table, pa.Table], pa.Table]
