"""An independent SQL implementation of the window semantics, the oracle the Python fold is checked against.

It deliberately shares no code with ``features.ops`` or ``features.fold``: every aggregate is a DuckDB SQL
aggregate over a range join, written from DESIGN.md ("One semantics") alone. A window of length ``L``, hop
``h`` and offset ``D`` at query time ``t`` covers the events of the query's key with ``ts`` in
``[align(t - D - L, h), end)``, ``end = t`` when ``D = 0`` else ``align(t - D, h)``, ``align(x, h) =
floor(x / h) * h``. Lifetime windows have no start. The event at exactly ``t`` is never included.

What each op means here (nulls are ignored everywhere; the value column is ``v``):

======================  ==========================================================================
count                   ``count(v)`` (0 on empty)
sum, avg, min, max      the SQL aggregates (NULL on empty); integer sums stay BIGINT
variance, stddev        ``var_pop``, ``stddev_pop`` (population)
first, last             the least / greatest row by ``(ts, tie, v)``
first_k, last_k         ``list(v ORDER BY ts, tie, v)[1:k]``; last_k newest first ([] on empty)
top_k, bottom_k         ``list(v ORDER BY v DESC / ASC)[1:k]``, duplicates kept
histogram               ``histogram(v)``: value -> count ({} on empty)
approx_unique_count     exact ``count(DISTINCT v)`` (0 on empty)
approx_percentile       exact inverse-CDF quantiles: the sorted value at 1-based rank
                        ``max(1, ceil(p * n))`` in double arithmetic (the DataSketches inclusive rank)
======================  ==========================================================================

A bucketed feature (``bucket`` set) gives, per query, a map ``bucket -> the op over that bucket's rows``; rows
with a null bucket or a null value are skipped, so only buckets with a value appear ({} on empty).

Specs are duck-typed: anything with ``name, column, op, length_ms, hop_ms, offset_ms, k, percentiles, bucket``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import duckdb
import pyarrow as pa


class SpecLike(Protocol):
    """What the oracle reads from a feature spec (``features.fold.FeatureSpec`` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def column(self) -> str: ...
    @property
    def op(self) -> str: ...
    @property
    def length_ms(self) -> int | None: ...
    @property
    def hop_ms(self) -> int: ...
    @property
    def offset_ms(self) -> int: ...
    @property
    def k(self) -> int | None: ...
    @property
    def percentiles(self) -> tuple[float, ...]: ...
    @property
    def bucket(self) -> str | None: ...


def _q(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _align(expr: str, hop_ms: int) -> str:
    """``floor(x / h) * h`` in integers; DuckDB's ``%`` truncates toward zero, so fix the sign."""
    return f"(({expr}) - ((({expr}) % {hop_ms}) + {hop_ms}) % {hop_ms})"


def _window_bounds(spec: SpecLike, t: str) -> tuple[str | None, str]:
    """SQL for the window start (None for lifetime) and end at query time column ``t``."""
    d, h = spec.offset_ms, spec.hop_ms
    end = t if d == 0 else _align(f"{t} - {d}", h)
    if spec.length_ms is None:
        return None, end
    start = _align(f"{t} - {d} - {spec.length_ms}", h)
    # An offset window whose end aligns below its start is empty; greatest() keeps [start, end) well formed.
    return start, f"greatest({start}, {end})"


def _agg_sql(spec: SpecLike, v: str, ts: str, tie: str, integer: bool) -> str:
    """One SQL aggregate expression for ``spec.op`` over value ``v``."""
    nn = f"FILTER (WHERE {v} IS NOT NULL)"
    k = spec.k
    op = spec.op
    if op == "count":
        return f"count({v})"
    if op == "sum":
        return f"CAST(sum({v}) AS BIGINT)" if integer else f"sum({v})"
    if op == "avg":
        return f"avg({v})"
    if op in ("min", "max"):
        return f"{op}({v})"
    if op == "variance":
        return f"var_pop({v})"
    if op == "stddev":
        return f"stddev_pop({v})"
    if op == "first":
        return f"first({v} ORDER BY {ts}, {tie}, {v}) {nn}"
    if op == "last":
        return f"first({v} ORDER BY {ts} DESC, {tie} DESC, {v} DESC) {nn}"
    if op in ("first_k", "last_k", "top_k", "bottom_k"):
        if not k or k < 1:
            raise ValueError(f"{spec.name}: op {op} needs k >= 1, got {k!r}")
        order = {
            "first_k": f"{ts}, {tie}, {v}",
            "last_k": f"{ts} DESC, {tie} DESC, {v} DESC",
            "top_k": f"{v} DESC",
            "bottom_k": f"{v} ASC",
        }[op]
        return f"coalesce(list({v} ORDER BY {order}) {nn}[1:{k}], [])"
    if op == "histogram":
        return f"coalesce(histogram({v}) {nn}, MAP {{}})"
    if op == "approx_unique_count":
        return f"count(DISTINCT {v})"
    if op == "approx_percentile":
        if not spec.percentiles:
            raise ValueError(f"{spec.name}: approx_percentile needs percentiles")
        n = f"count({v})"
        ranked = f"list_sort(list({v}) {nn})"
        items = ", ".join(
            f"{ranked}[greatest(1, CAST(ceil({float(p)!r}::DOUBLE * {n}) AS BIGINT))]"
            for p in spec.percentiles
        )
        return f"CASE WHEN {n} = 0 THEN NULL ELSE [{items}] END"
    raise ValueError(f"{spec.name}: the oracle does not know op {op!r}")


def oracle_features(
    events: pa.Table,
    queries: pa.Table,
    specs: Sequence[SpecLike],
    *,
    key_cols: Sequence[str],
    time_col: str,
    tie_col: str,
    query_time_col: str = "t",
    query_id_col: str = "query_id",
) -> pa.Table:
    """Every feature of ``specs`` at every query, as a table ``query_id, <spec.name>...`` ordered by query id.

    ``queries`` holds ``key_cols``, ``query_time_col`` (epoch ms) and a unique ``query_id_col``.
    """
    con = duckdb.connect()
    try:
        con.register("ev", events)
        con.register("q", queries)
        integer_cols = {f.name for f in events.schema if pa.types.is_integer(f.type)}
        groups: dict[tuple[Any, ...], list[SpecLike]] = {}
        for s in specs:
            # Bucketed specs also group by value column: a bucket exists where its column has a value.
            col = s.column if s.bucket is not None else None
            groups.setdefault((s.length_ms, s.hop_ms, s.offset_ms, s.bucket, col), []).append(s)
        qids = con.sql(f"SELECT {_q(query_id_col)} FROM q ORDER BY 1").to_arrow_table().column(0)
        out: dict[str, pa.ChunkedArray] = {query_id_col: qids}
        for (_, _, _, bucket, _), group in groups.items():
            table = con.sql(
                _group_sql(
                    group, bucket, key_cols, time_col, tie_col, query_time_col, query_id_col, integer_cols
                )
            ).to_arrow_table()
            if not table.column("qid").equals(qids):
                raise AssertionError("oracle: a window query lost or duplicated query ids")
            for s in group:
                out[s.name] = table.column(s.name)
        return pa.table({name: out[name] for name in [query_id_col, *(s.name for s in specs)]})
    finally:
        con.close()


def _group_sql(
    group: Sequence[SpecLike],
    bucket: str | None,
    key_cols: Sequence[str],
    time_col: str,
    tie_col: str,
    query_time_col: str,
    query_id_col: str,
    integer_cols: set[str],
) -> str:
    """One range join for all specs sharing a window (and bucket column)."""
    start, end = _window_bounds(group[0], f"q.{_q(query_time_col)}")
    keys = ", ".join(f"q.{_q(c)} AS {_q('k_' + c)}" for c in key_cols)
    qw = f"SELECT q.{_q(query_id_col)} AS qid, {keys}, {start or 'NULL'} AS w_start, {end} AS w_end FROM q"
    on = [f"ev.{_q(c)} = qw.{_q('k_' + c)}" for c in key_cols]
    on.append(f"ev.{_q(time_col)} < qw.w_end")
    if start is not None:
        on.append(f"ev.{_q(time_col)} >= qw.w_start")
    join = f"FROM qw LEFT JOIN ev ON {' AND '.join(on)}"
    ts, tie = f"ev.{_q(time_col)}", f"ev.{_q(tie_col)}"

    def agg(s: SpecLike) -> str:
        return _agg_sql(s, f"ev.{_q(s.column)}", ts, tie, s.column in integer_cols)

    if bucket is None:
        cols = ", ".join(f"{agg(s)} AS {_q(s.name)}" for s in group)
        return f"WITH qw AS ({qw}) SELECT qw.qid, {cols} {join} GROUP BY qw.qid ORDER BY qw.qid"
    b = f"ev.{_q(bucket)}"
    # Per (query, bucket); a bucket exists only where it has a non-null value (the group shares the column).
    inner_cols = ", ".join(f"{agg(s)} AS {_q(s.name)}" for s in group)
    per_bucket = (
        f"SELECT qw.qid, {b} AS b, count(ev.{_q(group[0].column)}) AS nonnull, {inner_cols} "
        f"FROM qw JOIN ev ON {' AND '.join(on)} WHERE {b} IS NOT NULL GROUP BY qw.qid, {b}"
    )
    outer = ", ".join(
        f"coalesce(map_from_entries(list(struct_pack(k := pb.b, v := pb.{_q(s.name)})) "
        f"FILTER (WHERE pb.nonnull > 0)), MAP {{}}) AS {_q(s.name)}"
        for s in group
    )
    return (
        f"WITH qw AS ({qw}), pb AS ({per_bucket}) SELECT qw.qid, {outer} "
        f"FROM qw LEFT JOIN pb ON pb.qid = qw.qid GROUP BY qw.qid ORDER BY qw.qid"
    )
