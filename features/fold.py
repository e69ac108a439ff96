"""The reference fold: a feature's value at query time ``t``, computed the slow, obvious way.

This is what every engine (stream tiles, batch upload, backfill, fetcher) is checked against: take the key's
events, keep those whose ``ts`` lies in ``window.interval(t)`` (DESIGN.md, "One semantics"), and fold them with
the op, in ``(ts, tie)`` order. No tiles, no sketches merged across tiles, no caching.

>>> from features.windows import WindowSpec, MINUTE_MS
>>> rows = [(0, 0, 1.0), (30_000, 1, 2.0), (60_000, 2, 4.0)]   # (ts_ms, tie, value)
>>> fold_window(get_op("sum", OpParams(), input_type="double"), rows, 60_000, WindowSpec(MINUTE_MS, 1_000))
3.0
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyarrow as pa

from features.ops import OpParams, fold, get_op
from features.windows import WindowSpec, default_hop_ms, format_duration, parse_duration_ms

__all__ = [
    "FeatureSpec",
    "feature_spec",
    "fold_features",
    "fold_sorted",
    "fold_window",
    "fold_window_bucketed",
    "input_type_of",
    "to_arrow_column",
]

Row = tuple[int, Any, Any]  # (ts_ms, tie, value)
BucketedRow = tuple[int, Any, Hashable, Any]  # (ts_ms, tie, bucket, value)


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One windowed aggregation of one column, with every duration resolved to ms.

    ``length_ms`` None is a lifetime window. ``bucket`` names a column: the feature is then a map
    ``bucket value -> op over that bucket's rows``.
    """

    name: str
    column: str
    op: str
    length_ms: int | None
    hop_ms: int
    offset_ms: int = 0
    k: int | None = None
    percentiles: tuple[float, ...] = ()
    bucket: str | None = None

    @property
    def window(self) -> WindowSpec:
        return WindowSpec(self.length_ms, self.hop_ms, self.offset_ms)

    @property
    def params(self) -> OpParams:
        kwargs: dict[str, Any] = {}
        if self.k is not None:
            kwargs["k"] = self.k
        if self.percentiles:
            kwargs["percentiles"] = self.percentiles
        return OpParams(**kwargs)


def feature_spec(
    column: str,
    op: str,
    window: str | int | timedelta | None = None,
    *,
    hop: str | int | timedelta | None = None,
    offset: str | int | timedelta | None = None,
    k: int | None = None,
    percentiles: Sequence[float] = (),
    bucket: str | None = None,
    name: str | None = None,
) -> FeatureSpec:
    """Build a :class:`FeatureSpec` from durations like ``"1h"``; the hop defaults to ``default_hop_ms``.

    A lifetime window with an offset needs an explicit hop (its end aligns to it); it defaults to 1 day.

    >>> s = feature_spec("amount", "sum", "1d", offset="1h")
    >>> s.name, s.hop_ms, s.offset_ms
    ('amount_sum_1d_off1h', 300000, 3600000)
    """
    length_ms = None if window is None else parse_duration_ms(window, what="window")
    offset_ms = 0 if offset is None else parse_duration_ms(offset, what="offset")
    if hop is not None:
        hop_ms = parse_duration_ms(hop, what="hop")
    elif length_ms is not None:
        hop_ms = default_hop_ms(length_ms)
    else:
        hop_ms = parse_duration_ms("1d")
    if hop_ms <= 0:
        raise ValueError(f"hop {hop!r} must be positive")
    if name is None:
        w = WindowSpec(length_ms, hop_ms, offset_ms)
        suffix = w.suffix or ("lifetime" if not offset_ms else f"lifetime_off{format_duration(offset_ms)}")
        if hop is not None:
            suffix += f"_hop{format_duration(hop_ms)}"
        parts = [column, op, *([f"by_{bucket}"] if bucket else []), suffix]
        name = "_".join(parts)
    return FeatureSpec(
        name=name,
        column=column,
        op=op,
        length_ms=length_ms,
        hop_ms=hop_ms,
        offset_ms=offset_ms,
        k=k,
        percentiles=tuple(percentiles),
        bucket=bucket,
    )


def _in_window(rows: Iterable[tuple[Any, ...]], t_ms: int, window: WindowSpec) -> list[tuple[Any, ...]]:
    """The rows with ``start <= ts < end``, sorted by ``(ts, tie)``."""
    start, end = window.interval(t_ms)
    kept = [r for r in rows if start <= r[0] < end]
    kept.sort(key=lambda r: (r[0], r[1]))
    return kept


def fold_window(op: Any, rows: Sequence[Row], t_ms: int, window: WindowSpec) -> Any:
    """The finalized value of ``op`` over the ``(ts_ms, tie, value)`` rows that ``window`` covers at ``t_ms``.

    Rows need not be sorted; None values are ignored (the op sees only values).
    """
    kept = _in_window(rows, t_ms, window)
    return op.finalize(fold(op, ((v, ts, tie) for ts, tie, v in kept)))


def fold_window_bucketed(
    op: Any, rows: Sequence[BucketedRow], t_ms: int, window: WindowSpec
) -> dict[Any, Any]:
    """``{bucket: finalized op}`` over the ``(ts_ms, tie, bucket, value)`` rows ``window`` covers at ``t_ms``.

    Rows with a None bucket or a None value are skipped, so a bucket appears only if it has a value.
    """
    kept = _in_window(rows, t_ms, window)
    return fold_sorted(
        op, [r[0] for r in kept], [r[1] for r in kept], [r[3] for r in kept], [r[2] for r in kept]
    )


def fold_sorted(
    op: Any,
    ts: Sequence[int],
    tie: Sequence[Any],
    values: Sequence[Any],
    buckets: Sequence[Any] | None = None,
) -> Any:
    """The finalized ``op`` over rows already in ``(ts, tie)`` order, given as parallel columns; None values are
    skipped. With ``buckets``: ``{bucket: finalized op over that bucket's rows}``, None buckets skipped, so a
    bucket appears only if it has a value."""
    if buckets is None:
        return op.finalize(fold(op, zip(values, ts, tie)))
    per_bucket: dict[Any, list[tuple[Any, int, Any]]] = {}
    for t, ti, bucket, value in zip(ts, tie, buckets, values):
        if bucket is not None and value is not None:
            per_bucket.setdefault(bucket, []).append((value, t, ti))
    return {b: op.finalize(fold(op, vals)) for b, vals in per_bucket.items()}


_INPUT_TYPES: tuple[tuple[Any, str], ...] = (
    (pa.types.is_boolean, "boolean"),
    (pa.types.is_integer, "long"),
    (pa.types.is_floating, "double"),
    (pa.types.is_string, "string"),
    (pa.types.is_large_string, "string"),
)


def input_type_of(arrow_type: pa.DataType) -> str:
    """The ops' input type name for an Arrow column type (``long``, ``double``, ``string``, ``boolean``)."""
    for test, name in _INPUT_TYPES:
        if test(arrow_type):
            return name
    raise TypeError(f"no op input type for Arrow type {arrow_type}; use a numeric, string or boolean column")


@dataclass
class _KeyIndex:
    """One key's events sorted by ``(ts, tie)``: parallel lists, searched with bisect."""

    ts: list[int]
    tie: list[Any]
    columns: dict[str, list[Any]]


def _index_events(
    events: pa.Table, key_cols: Sequence[str], time_col: str, tie_col: str, columns: Iterable[str]
) -> dict[tuple[Any, ...], _KeyIndex]:
    ordered = events.sort_by(
        [*((c, "ascending") for c in key_cols), (time_col, "ascending"), (tie_col, "ascending")]
    )
    keys = list(zip(*(ordered.column(c).to_pylist() for c in key_cols)))
    ts = ordered.column(time_col).to_pylist()
    tie = ordered.column(tie_col).to_pylist()
    cols = {c: ordered.column(c).to_pylist() for c in columns}
    index: dict[tuple[Any, ...], _KeyIndex] = {}
    lo = 0
    for hi in range(1, len(keys) + 1):
        if hi == len(keys) or keys[hi] != keys[lo]:
            if not any(k is None for k in keys[lo]):
                index[keys[lo]] = _KeyIndex(ts[lo:hi], tie[lo:hi], {c: v[lo:hi] for c, v in cols.items()})
            lo = hi
    return index


def fold_features(
    events: pa.Table,
    queries: pa.Table,
    specs: Sequence[FeatureSpec],
    *,
    key_cols: Sequence[str],
    time_col: str,
    tie_col: str,
    query_time_col: str = "t",
    query_id_col: str = "query_id",
) -> pa.Table:
    """Every feature of ``specs`` at every query, as ``query_id, <spec.name>...`` ordered by query id.

    ``queries`` holds ``key_cols``, ``query_time_col`` (epoch ms) and a unique ``query_id_col``. Events are
    indexed once per key (sorted by ``(ts, tie)``); each query bisects to its window and folds that slice.
    """
    needed = {s.column for s in specs} | {s.bucket for s in specs if s.bucket is not None}
    index = _index_events(events, key_cols, time_col, tie_col, sorted(needed))
    ops = {
        s.name: get_op(s.op, s.params, input_type=input_type_of(events.schema.field(s.column).type))
        for s in specs
    }
    q = queries.sort_by(query_id_col)
    qids = q.column(query_id_col).to_pylist()
    q_keys = list(zip(*(q.column(c).to_pylist() for c in key_cols)))
    q_ts = q.column(query_time_col).to_pylist()
    results: dict[str, list[Any]] = {s.name: [] for s in specs}
    empty = _KeyIndex([], [], {c: [] for c in needed})
    for key, t in zip(q_keys, q_ts):
        entry = index.get(key, empty)
        for s in specs:
            start, end = s.window.interval(t)
            lo = bisect.bisect_left(entry.ts, start)
            hi = bisect.bisect_left(entry.ts, end)
            buckets = None if s.bucket is None else entry.columns[s.bucket][lo:hi]
            value = fold_sorted(
                ops[s.name], entry.ts[lo:hi], entry.tie[lo:hi], entry.columns[s.column][lo:hi], buckets
            )
            results[s.name].append(value)
    columns: dict[str, pa.Array] = {query_id_col: pa.array(qids, q.schema.field(query_id_col).type)}
    for s in specs:
        columns[s.name] = to_arrow_column(results[s.name])
    return pa.table(columns)


def _infer_type(values: list[Any]) -> pa.DataType:
    """An Arrow type for Python values that may be dicts (maps) or lists, nested."""
    present = [v for v in values if v is not None]
    if not present:
        return pa.null()
    if any(isinstance(v, dict) for v in present):
        keys = [k for d in present for k in d]
        key_type = _infer_type(keys)
        return pa.map_(
            pa.string() if key_type == pa.null() else key_type,
            _infer_type([x for d in present for x in d.values()]),
        )
    if any(isinstance(v, list | tuple) for v in present):
        return pa.list_(_infer_type([x for v in present for x in v]))
    return pa.array(present).type


def _to_arrow_value(value: Any) -> Any:
    if isinstance(value, dict):
        return [(k, _to_arrow_value(v)) for k, v in value.items()]
    if isinstance(value, list | tuple):
        return [_to_arrow_value(v) for v in value]
    return value


def to_arrow_column(values: list[Any]) -> pa.Array:
    """Finalized feature values as one Arrow array: dicts become maps, lists lists, scalars their own type."""
    return pa.array([_to_arrow_value(v) for v in values], type=_infer_type(values))
