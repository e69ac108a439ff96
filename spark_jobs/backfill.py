"""Point-in-time backfill of training sets: every feature of a Join, as the fetcher would have returned it.

For every row of the left side (labeled payments: request columns + ts) this computes every feature of the Join
at the row's ts with DESIGN.md's window semantics, then the Join's derivations. Design (issue 6), never a range
join of events to labels:

1. Per Join part, the GroupBy's source goes through the plan's row logic in Spark SQL (``where`` before
   ``selects``), keeps the key, ts, tie-break and aggregated columns, and gets a string ``__key``.
2. Events and queries (left rows, keyed through the part's ``key_map``) are co-partitioned into hash buckets,
   ``pmod(hash(__key), n)``, and cogrouped: one Python call per bucket (``applyInArrow``), not per key.
3. Inside a bucket :func:`spark_jobs.bucket_fold.fold_bucket` sorts by (key, ts, tie) and folds with the
   shared ops, vectorised (prefix sums, ``reduceat``, index arithmetic; the generic ops in one sliding pass
   per window, :mod:`spark_jobs.sliding`).
4. The parts' outputs are equi-joined back to the left rows on a row id; derivations run row-wise in Python
   with the same compiled expressions the fetcher uses; rows come out in the left's order.

Serving delay (``serving_delay_ms = d``): an event counts at query time ``t`` only if it is in the window AND
``ts < t - d``, i.e. it had happened at least ``d`` ms before the request (events are assumed to reach the
fetcher ``d`` after their ``ts``). Window bounds are still computed from ``t``. ``d = 0`` is DESIGN.md exactly.
A source arrival column (``arrival_ts``) is not used yet.

Outputs: the left's columns, then one column per feature (named as the plan's Join says), then the derivations.
Maps are Arrow/Spark maps, lists Arrow/Spark arrays.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from features.plan import GroupByPlan, JoinPartPlan, JoinPlan, Plan
from features.sql import compile_expression, compile_row_logic
from spark_jobs.bucket_fold import KEY, QID, TIE, TS, T, arrow_type, fold_bucket, needed_columns

log = logging.getLogger("tessera.backfill")

BUCKET = "__b"
ROWS_PER_BUCKET = 200_000
"""Target events + queries per hash bucket: what one Python worker holds at once."""

Source = Any  # a parquet path (str | Path) or a Spark DataFrame


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _rows_of(source: Any) -> int | None:
    if isinstance(source, pa.Table):
        return source.num_rows
    if isinstance(source, str | Path):
        path = Path(source)
        files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return None


def _read(spark: Any, source: Source) -> Any:
    if isinstance(source, str | Path):
        return spark.read.parquet(str(source))
    return source


def _key_expr(columns: list[str]) -> str:
    """A string key: NULL when any part is NULL, else the parts joined with \\x1f."""
    parts = [f"CAST({_quote(c)} AS STRING)" for c in columns]
    if len(parts) == 1:
        return parts[0]
    nulls = " OR ".join(f"{_quote(c)} IS NULL" for c in columns)
    return f"CASE WHEN {nulls} THEN NULL ELSE concat_ws('\\u001f', {', '.join(parts)}) END"


def _events(spark: Any, gb: GroupByPlan, source: Source, n_buckets: int) -> Any:
    """The GroupBy's projected events: ``__b, __key, __ts, __tie`` and the aggregated columns."""
    df = _read(spark, source)
    logic = compile_row_logic(
        gb.row_logic.selects, gb.row_logic.where, gb.source.schema, passthrough=gb.row_logic.passthrough
    )
    if logic.spark_where is not None:
        df = df.where(logic.spark_where)
    df = df.selectExpr(*logic.spark_selects)
    time_col, tie_col = gb.source.time_column, gb.source.tie_break
    df = df.where(" AND ".join(f"{_quote(c)} IS NOT NULL" for c in (*gb.keys, time_col)))
    cols = [
        f"{_key_expr(list(gb.keys))} AS {KEY}",
        f"CAST({_quote(time_col)} AS BIGINT) AS {TS}",
        f"CAST({_quote(tie_col)} AS BIGINT) AS {TIE}" if tie_col else f"CAST(0 AS BIGINT) AS {TIE}",
        *(_quote(c) for c in needed_columns(gb)),
    ]
    return df.selectExpr(*cols).selectExpr(f"pmod(hash({KEY}), {n_buckets}) AS {BUCKET}", "*")


def _queries(left: Any, join: JoinPlan, part: JoinPartPlan, gb: GroupByPlan, n_buckets: int) -> Any:
    request_cols = [part.key_map[k] for k in gb.keys]
    return left.selectExpr(
        QID, f"{_key_expr(request_cols)} AS {KEY}", f"CAST({_quote(join.left.time_column)} AS BIGINT) AS {T}"
    ).selectExpr(f"pmod(hash({KEY}), {n_buckets}) AS {BUCKET}", "*")


def _part_schema(gb: GroupByPlan) -> str:
    return ", ".join([f"{QID} bigint", *(f"{_quote(f.name)} {f.type}" for f in gb.features)])


def _part_features(
    spark: Any,
    left: Any,
    join: JoinPlan,
    part: JoinPartPlan,
    plan: Plan,
    source: Source,
    n_buckets: int,
    delay_ms: int,
) -> Any:
    gb = plan.group_by(part.group_by)
    events = _events(spark, gb, source, n_buckets)
    queries = _queries(left, join, part, gb, n_buckets)

    def fold(ev: pa.Table, q: pa.Table) -> pa.Table:
        return fold_bucket(ev, q, gb, delay_ms)

    out = events.groupBy(BUCKET).cogroup(queries.groupBy(BUCKET)).applyInArrow(fold, _part_schema(gb))
    return out.selectExpr(QID, *(f"{_quote(feat)} AS {_quote(name)}" for name, feat in part.features.items()))


def _derive(join: JoinPlan, columns: list[str]) -> Any:
    """A ``mapInArrow`` function adding the Join's derivations, row by row, with the fetcher's compiled code."""
    fns = []
    for d in join.derivations:
        schema: dict[str, str] = {}
        for col, typ in join.output_schema.items():
            if col == d.name:
                break
            if not typ.startswith(("map<", "array<")):
                schema[col] = typ
        fns.append((d.name, compile_expression(d.expression, schema, kind="derivation"), arrow_type(d.type)))

    def derive(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows = batch.to_pylist()
            arrays = list(batch.columns)
            names = list(batch.schema.names)
            for name, fn, typ in fns:
                vals = []
                for row in rows:
                    v = fn(row)
                    row[name] = v
                    vals.append(v)
                arrays.append(pa.array(vals, type=typ))
                names.append(name)
            yield pa.RecordBatch.from_arrays(arrays, names=names)

    return derive


def training_set(
    plan: Plan,
    join_name: str,
    left: pa.Table | str | Path | Any,
    sources: Mapping[str, Source],
    *,
    spark: Any = None,
    serving_delay_ms: int = 0,
    out: str | Path | None = None,
    n_buckets: int | None = None,
) -> pa.Table | None:
    """The training set of Join ``join_name`` for every row of ``left`` (a pyarrow Table, a parquet path or a
    Spark DataFrame); ``sources`` maps each GroupBy source's table name to a parquet path or DataFrame.

    Returns a pyarrow Table in the left's row order, or writes parquet to ``out`` (a directory, rows ordered
    as the left's) and returns None. ``n_buckets`` defaults to enough hash buckets for ~200 k rows each.
    """
    if serving_delay_ms < 0:
        raise ValueError(f"serving_delay_ms={serving_delay_ms} must be >= 0")
    join = plan.join(join_name)
    if spark is None:
        from spark_jobs.session import spark_session

        spark = spark_session(app_name=f"tessera-backfill-{join_name}")
    missing = sorted({plan.group_by(p.group_by).source.table for p in join.parts} - set(sources))
    if missing:
        raise KeyError(f"no source given for table(s) {', '.join(missing)}; pass sources={{'table': path}}")
    if n_buckets is None:
        sizes = [_rows_of(left), *(_rows_of(s) for s in sources.values())]
        total = sum(s for s in sizes if s is not None) if all(s is not None for s in sizes) else None
        parallelism = int(spark.sparkContext.defaultParallelism)
        n_buckets = max(2 * parallelism, math.ceil(total / ROWS_PER_BUCKET) if total else 64)

    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    if isinstance(left, pa.Table):
        left_cols = left.column_names
        ldf = spark.createDataFrame(left.append_column(QID, pa.array(range(left.num_rows), pa.int64())))
    else:
        ldf = _read(spark, left)
        left_cols = list(ldf.columns)
        ldf = ldf.withColumn(QID, F.monotonically_increasing_id())
    clash = [c for c in join.output_schema if c not in join.left.schema and c in left_cols]
    if clash:
        raise ValueError(f"left columns {clash} clash with the Join's feature/derivation names; rename them")
    ldf = ldf.persist(StorageLevel.MEMORY_AND_DISK)

    result = ldf
    for part in join.parts:
        gb = plan.group_by(part.group_by)
        feats = _part_features(
            spark, ldf, join, part, plan, sources[gb.source.table], n_buckets, serving_delay_ms
        )
        result = result.join(feats, on=QID, how="left")
    feature_cols = [c for p in join.parts for c in p.features]
    body = [*left_cols, *feature_cols]
    result = result.select(QID, *(F.col(_quote(c)) for c in body))
    if join.derivations:
        out_schema = ", ".join(
            [f"{QID} bigint"]
            + [f"{_quote(f.name)} {f.dataType.simpleString()}" for f in result.schema.fields if f.name != QID]
            + [f"{_quote(d.name)} {d.type}" for d in join.derivations]
        )
        result = result.mapInArrow(_derive(join, body), out_schema)
    final_cols = [*body, *(d.name for d in join.derivations)]
    result = result.orderBy(QID).select(*(F.col(_quote(c)) for c in final_cols))
    try:
        if out is not None:
            result.write.mode("overwrite").parquet(str(out))
            return None
        table: pa.Table = result.toArrow()
        return table
    finally:
        ldf.unpersist()


def run_backfill(
    repo_path: str | Path,
    join: str,
    left_path: str | Path,
    out_path: str | Path,
    serving_delay: str | int = 0,
    sources: Mapping[str, Source] | None = None,
    spark: Any = None,
) -> dict[str, Any]:
    """``tessera backfill PATH --join NAME --left FILE --out FILE [--serving-delay 150ms]``.

    Sources: ``sources`` or, by default, ``<table>.parquet`` next to the left file (e.g. payments.parquet,
    labels.parquet as ``features.synthetic`` writes them). Logs and returns rows, seconds and rows/s.
    """
    from features.compile import compile_repo
    from features.windows import parse_duration_ms

    plan = compile_repo(repo_path)
    jp = plan.join(join)
    delay_ms = parse_duration_ms(serving_delay, what="serving delay")
    if sources is None:
        folder = Path(left_path).parent
        tables = {plan.group_by(p.group_by).source.table for p in jp.parts}
        sources = {t: folder / f"{t}.parquet" for t in tables}
        for t, p in sources.items():
            if not os.path.exists(p):
                raise FileNotFoundError(f"source table {t!r}: {p} does not exist; pass sources={{...}}")
    rows = _rows_of(left_path) or 0
    started = time.perf_counter()
    training_set(plan, join, left_path, sources, spark=spark, serving_delay_ms=delay_ms, out=out_path)
    seconds = time.perf_counter() - started
    rate = rows / seconds if seconds > 0 else float("inf")
    log.info("backfill %s: %d rows in %.1f s (%.0f rows/s) -> %s", join, rows, seconds, rate, out_path)
    return {"rows": rows, "seconds": seconds, "rows_per_s": rate, "out": str(out_path)}
