"""Point-in-time backfill of training sets: every feature of a Join, as the fetcher would have returned it.

For every row of the left side (labeled payments: request columns + ts) this computes every feature of the Join
at the row's ts with DESIGN.md's window semantics, then the Join's derivations. Design (issue 6), never a range
join of events to labels, and one shuffle of events for the whole Join:

1. Per Join part, the GroupBy's source goes through the plan's row logic in Spark SQL (``where`` before
   ``selects``) and becomes rows ``(__g, __key, __ts, __tie, __e<g>)``: the part's index, a string key, the
   time and tie-break, and a struct of the aggregated columns. The parts' rows are unioned (sources are read
   once per part, in one stage), and so are the queries ``(__g, __qid, __key, __t)`` (the left rows keyed
   through each part's ``key_map``).
2. Both are hash-partitioned on ``pmod(hash(__g, __key), n)`` and cogrouped: one Python call per bucket
   (``applyInArrow``), not per key and not per part; ``spark.sql.shuffle.partitions`` is the bucket count.
3. Inside a bucket :func:`spark_jobs.bucket_fold.fold_bucket` folds each part's rows: sorts by (key, ts, tie),
   then the shared ops, vectorised (prefix sums, ``reduceat``, index arithmetic; the generic ops in one sliding
   pass per window, :mod:`spark_jobs.sliding`). It emits ``(__qid, __f<g>)``: a struct of the part's features.
4. One aggregation by ``__qid`` puts each left row (as a struct) and its parts' feature structs back together;
   the derivations are Spark SQL compiled from the same sqlglot AST as the fetcher's Python (under
   :data:`features.sql.SPARK_CONF`). No global sort unless asked (``keep_order``).

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
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.plan import GroupByPlan, JoinPlan, Plan
from features.sql import compile_row_logic
from features.sql.analyze import analyze_expression
from spark_jobs.bucket_fold import KEY, QID, TIE, TS, T, arrow_type, fold_bucket, needed_columns
from spark_jobs.catalog import SparkTable, read_source

log = logging.getLogger("tessera.backfill")

BUCKET = "__b"
PART = "__g"
LEFT = "__l"
ROWS_PER_BUCKET = 200_000
"""Target event + query rows per hash bucket: what one Python worker holds at once."""
OUT_BATCH_ROWS = 2_048
"""Rows per Arrow batch a bucket hands back to the JVM. A bucket's output is one row per query with every part's
feature struct (~1 KiB a row for fraud_v1); sent as one batch, a bucket of 100 k queries needed a 130 MB buffer
of the JVM's (1 GiB) direct memory and failed with 1 M labels. Batches of this size keep it to a few MB."""

Source = Any  # a parquet path (str | Path), a catalog SparkTable, or a Spark DataFrame


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _ev(i: int) -> str:
    return f"__e{i}"


def _ft(i: int) -> str:
    return f"__f{i}"


def _rows_of(source: Any) -> int | None:
    if isinstance(source, pa.Table):
        return source.num_rows
    if isinstance(source, str | Path) and not isinstance(source, SparkTable):
        path = Path(source)
        files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return None


def _read(spark: Any, source: Source) -> Any:
    return read_source(spark, source)


def _key_expr(columns: list[str]) -> str:
    """A string key: NULL when any part is NULL, else the parts joined with \\x1f."""
    parts = [f"CAST({_quote(c)} AS STRING)" for c in columns]
    if len(parts) == 1:
        return parts[0]
    nulls = " OR ".join(f"{_quote(c)} IS NULL" for c in columns)
    return f"CASE WHEN {nulls} THEN NULL ELSE concat_ws('\\u001f', {', '.join(parts)}) END"


def _part_events(spark: Any, gb: GroupByPlan, source: Source, index: int) -> Any:
    """Part ``index``'s projected events: ``__g, __key, __ts, __tie`` and ``__e<index>`` (the aggregated
    columns as one struct, absent when no column is aggregated)."""
    df = _read(spark, source)
    logic = compile_row_logic(
        gb.row_logic.selects, gb.row_logic.where, gb.source.schema, passthrough=gb.row_logic.passthrough
    )
    if logic.spark_where is not None:
        df = df.where(logic.spark_where)
    df = df.selectExpr(*logic.spark_selects)
    time_col, tie_col = gb.source.time_column, gb.source.tie_break
    df = df.where(" AND ".join(f"{_quote(c)} IS NOT NULL" for c in (*gb.keys, time_col)))
    needed = needed_columns(gb)
    cols = [
        f"CAST({index} AS INT) AS {PART}",
        f"{_key_expr(list(gb.keys))} AS {KEY}",
        f"CAST({_quote(time_col)} AS BIGINT) AS {TS}",
        f"CAST({_quote(tie_col)} AS BIGINT) AS {TIE}" if tie_col else f"CAST(0 AS BIGINT) AS {TIE}",
    ]
    if needed:
        fields = ", ".join(f"'{c}', {_quote(c)}" for c in needed)
        cols.append(f"named_struct({fields}) AS {_ev(index)}")
    return df.selectExpr(*cols)


def _part_queries(left: Any, join: JoinPlan, index: int, gb: GroupByPlan) -> Any:
    part = join.parts[index]
    request_cols = [part.key_map[k] for k in gb.keys]
    return left.selectExpr(
        f"CAST({index} AS INT) AS {PART}",
        QID,
        f"{_key_expr(request_cols)} AS {KEY}",
        f"CAST({_quote(join.left.time_column)} AS BIGINT) AS {T}",
    )


def _struct_ddl(gb: GroupByPlan) -> str:
    return "struct<" + ",".join(f"{_quote(f.name)}:{f.type}" for f in gb.features) + ">"


@dataclass(frozen=True)
class _PartFold:
    gb: GroupByPlan
    needed: tuple[str, ...]
    struct: pa.StructType


def _fold_fn(parts: list[_PartFold], delay_ms: int) -> Callable[[pa.Table, pa.Table], pa.Table]:
    """The cogroup function: every part's features for every query of one bucket, as ``(__qid, __f<i>...)``."""

    def fold(events: pa.Table, queries: pa.Table) -> pa.Table:
        n_parts = len(parts)
        qg = queries.column(PART).to_numpy(zero_copy_only=False) if queries.num_rows else np.zeros(0)
        eg = (
            events.column(PART).to_numpy(zero_copy_only=False)
            if events.num_rows and PART in events.column_names
            else np.zeros(0)
        )
        qids: list[pa.Array] = []
        pieces: list[tuple[int, int, pa.StructArray]] = []
        for i, pf in enumerate(parts):
            qmask = qg == i
            if not qmask.any():
                continue
            q = queries.filter(pa.array(qmask))
            emask = eg == i
            ev_cols: dict[str, Any] = {}
            if emask.any():
                e = events.filter(pa.array(emask))
                ev_cols = {KEY: e.column(KEY), TS: e.column(TS), TIE: e.column(TIE)}
                if pf.needed:
                    children = e.column(_ev(i)).combine_chunks().flatten()
                    ev_cols.update(zip(pf.needed, children))
            else:
                ev_cols = {KEY: pa.array([], pa.string()), TS: pa.array([], pa.int64())}
                ev_cols[TIE] = pa.array([], pa.int64())
                for c in pf.needed:
                    ev_cols[c] = pa.nulls(0)
            res = fold_bucket(pa.table(ev_cols), q, pf.gb, delay_ms)
            feats = [res.column(f.name).combine_chunks() for f in pf.gb.features]
            struct = pa.StructArray.from_arrays(feats, fields=list(pf.struct))
            qids.append(res.column(QID).combine_chunks())
            pieces.append((i, res.num_rows, struct))
        columns: dict[str, Any] = {QID: pa.concat_arrays(qids) if qids else pa.array([], pa.int64())}
        for j in range(n_parts):
            chunks = [s if i == j else pa.nulls(n, parts[j].struct) for i, n, s in pieces]
            columns[_ft(j)] = pa.concat_arrays(chunks) if chunks else pa.array([], parts[j].struct)
        table = pa.table(columns)
        # Spark sends each chunk as its own Arrow batch: slices (no copy) bound the JVM's buffer per batch.
        return pa.Table.from_batches(table.to_batches(max_chunksize=OUT_BATCH_ROWS), schema=table.schema)

    return fold


def _derivation_exprs(join: JoinPlan) -> list[str]:
    """``expr AS name`` per derivation, Spark SQL from the same analysis as the fetcher's compiled Python."""
    exprs = []
    for d in join.derivations:
        schema: dict[str, str] = {}
        for col, typ in join.output_schema.items():
            if col == d.name:
                break
            if not typ.startswith(("map<", "array<")):
                schema[col] = typ
        sql = analyze_expression(d.expression, schema, kind="derivation").spark_sql
        exprs.append(f"CAST(({sql}) AS {d.type}) AS {_quote(d.name)}")
    return exprs


def _default_buckets(spark: Any, left: Any, sources: Mapping[str, Source], join: JoinPlan, plan: Plan) -> int:
    left_rows = _rows_of(left)
    total: int | None = None
    if left_rows is not None:
        total = len(join.parts) * left_rows
        for part in join.parts:
            rows = _rows_of(sources[plan.group_by(part.group_by).source.table])
            if rows is None:
                total = None
                break
            total += rows
    parallelism = int(spark.sparkContext.defaultParallelism)
    return max(2 * parallelism, math.ceil(total / ROWS_PER_BUCKET) if total else 64)


@contextmanager
def _progress(spark: Any, description: str, enabled: bool) -> Iterator[None]:
    """A rich progress bar over the Spark tasks of the running jobs (stderr), while the block runs."""
    if not enabled:
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tracker = spark.sparkContext.statusTracker()
    stop = threading.Event()
    seen: dict[int, tuple[int, int]] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(f"{description} (Spark tasks)", total=None)

        def poll() -> None:
            while not stop.wait(0.5):
                for sid in tracker.getActiveStageIds():
                    info = tracker.getStageInfo(sid)
                    if info is not None:
                        seen[sid] = (info.numCompletedTasks, info.numTasks)
                done = sum(c for c, _ in seen.values())
                bar.update(task, completed=done, total=max(sum(n for _, n in seen.values()), 1))

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            total = sum(n for _, n in seen.values())
            bar.update(task, completed=total, total=max(total, 1))


def _frames(
    spark: Any,
    plan: Plan,
    join: JoinPlan,
    ldf: Any,
    left_cols: list[str],
    sources: Mapping[str, Source],
    n_buckets: int,
    delay_ms: int,
) -> dict[str, Any]:
    """The backfill's DataFrames, stage by stage: ``events`` and ``queries`` (bucketed, before the shuffle),
    ``folded`` (the cogroup's per-part feature structs) and ``result`` (left columns, features, derivations)."""
    from pyspark.sql import functions as F

    folds, events, queries = [], None, None
    for i, part in enumerate(join.parts):
        gb = plan.group_by(part.group_by)
        struct = pa.struct([pa.field(f.name, arrow_type(f.type)) for f in gb.features])
        folds.append(_PartFold(gb, tuple(needed_columns(gb)), struct))
        ev = _part_events(spark, gb, sources[gb.source.table], i)
        q = _part_queries(ldf, join, i, gb)
        events = ev if events is None else events.unionByName(ev, allowMissingColumns=True)
        queries = q if queries is None else queries.unionByName(q)
    assert events is not None and queries is not None
    bucket = f"pmod(hash({PART}, {KEY}), {n_buckets}) AS {BUCKET}"
    events = events.selectExpr(bucket, "*")
    queries = queries.selectExpr(bucket, "*")
    schema = ", ".join([f"{QID} bigint", *(f"{_ft(i)} {_struct_ddl(pf.gb)}" for i, pf in enumerate(folds))])
    folded = (
        events.groupBy(BUCKET)
        .cogroup(queries.groupBy(BUCKET))
        .applyInArrow(_fold_fn(folds, delay_ms), schema)
    )
    left_struct = F.struct(*(F.col(_quote(c)) for c in left_cols)).alias(LEFT)
    combined = ldf.select(QID, left_struct).unionByName(folded, allowMissingColumns=True)
    aggs = [F.first(LEFT, ignorenulls=True).alias(LEFT)]
    aggs += [F.first(_ft(i), ignorenulls=True).alias(_ft(i)) for i in range(len(folds))]
    wide = combined.groupBy(QID).agg(*aggs)
    body = [F.col(LEFT).getField(c).alias(c) for c in left_cols]
    for i, part in enumerate(join.parts):
        body += [F.col(_ft(i)).getField(feat).alias(name) for name, feat in part.features.items()]
    result = wide.select(QID, *body)
    if join.derivations:
        result = result.selectExpr("*", *_derivation_exprs(join))
    return {"events": events, "queries": queries, "folded": folded, "result": result}


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
    out_table: str | None = None,
    keep_order: bool | None = None,
    progress: bool = False,
) -> pa.Table | None:
    """The training set of Join ``join_name`` for every row of ``left`` (a pyarrow Table, a parquet path, a
    catalog :class:`~spark_jobs.catalog.SparkTable` or a Spark DataFrame); ``sources`` maps each GroupBy
    source's table name to a parquet path, SparkTable or DataFrame.

    Returns a pyarrow Table (rows in the left's order), or, when ``out`` and/or ``out_table`` is given, writes
    parquet to ``out`` (a directory) and/or the Spark table ``out_table`` (external at ``out`` when both are
    given) and returns None. Written rows are in the left's order only with ``keep_order=True`` (a global
    sort); a returned Table is always in order (sorted on the driver). ``n_buckets`` defaults to enough hash
    buckets for ~200 k event + query rows each. ``progress`` shows a rich progress bar of the Spark tasks.
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
        n_buckets = _default_buckets(spark, left, sources, join, plan)

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
    previous_partitions = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", str(n_buckets))
    ldf = ldf.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        frames = _frames(spark, plan, join, ldf, left_cols, sources, n_buckets, serving_delay_ms)
        result = frames["result"]
        final_cols = [
            *left_cols,
            *(c for p in join.parts for c in p.features),
            *(d.name for d in join.derivations),
        ]
        rows = _rows_of(left)
        started = time.perf_counter()
        with _progress(spark, f"backfill {join_name}", progress):
            if out is None and out_table is None:
                table: pa.Table = result.toArrow()
                table = (
                    table.take(pc.sort_indices(table, [(QID, "ascending")]))
                    if keep_order is not False
                    else table
                )
                table = table.select(final_cols)
                rows = table.num_rows
                ret: pa.Table | None = table
            else:
                if keep_order:
                    result = result.orderBy(QID)
                writer = result.select(*(F.col(_quote(c)) for c in final_cols)).write.mode("overwrite")
                if out_table is not None:
                    if out is not None:
                        writer = writer.option("path", str(out))
                    writer.format("parquet").saveAsTable(out_table)
                else:
                    writer.parquet(str(out))
                ret = None
        seconds = time.perf_counter() - started
        if rows is not None:
            log.info(
                "backfill %s: %d rows, %d buckets, in %.1f s (%.0f rows/s)",
                join_name,
                rows,
                n_buckets,
                seconds,
                rows / seconds if seconds > 0 else float("inf"),
            )
        return ret
    finally:
        ldf.unpersist()
        spark.conf.set("spark.sql.shuffle.partitions", previous_partitions)


def run_backfill(
    repo_path: str | Path,
    join: str,
    left_path: str | Path,
    out_path: str | Path | None,
    serving_delay: str | int = 0,
    sources: Mapping[str, Source] | None = None,
    spark: Any = None,
    *,
    catalog: str | Path | None = None,
    out_table: str | None = None,
    keep_order: bool = False,
    progress: bool = False,
    n_buckets: int | None = None,
) -> dict[str, Any]:
    """``tessera backfill PATH --join NAME --left FILE --out DIR [--out-table NAME] [--catalog FILE]``.

    Sources, later ones overriding: ``<table>.parquet`` next to the left file (as ``features.synthetic``
    writes them), the ``catalog`` file's entries (:mod:`spark_jobs.catalog`), then ``sources``. The left may
    be ``table:NAME`` for a Spark table. Writes parquet to ``out_path`` and/or the Spark table ``out_table``.
    Logs and returns rows, seconds and rows/s.
    """
    from features.compile import compile_repo
    from features.windows import parse_duration_ms
    from spark_jobs.catalog import resolve_sources

    if out_path is None and out_table is None:
        raise ValueError("give an output: out_path (parquet) and/or out_table (a Spark table)")
    plan = compile_repo(repo_path)
    jp = plan.join(join)
    delay_ms = parse_duration_ms(serving_delay, what="serving delay")
    tables = sorted({plan.group_by(p.group_by).source.table for p in jp.parts})
    left: Any = left_path
    if isinstance(left_path, str) and left_path.startswith("table:"):
        left = SparkTable(left_path[6:])
        defaults: dict[str, Source] = {}
    else:
        folder = Path(left_path).parent
        defaults = {t: str(folder / f"{t}.parquet") for t in tables if (folder / f"{t}.parquet").exists()}
    resolved = resolve_sources(catalog, sources, defaults)
    missing = [t for t in tables if t not in resolved]
    if missing:
        raise FileNotFoundError(
            f"no source for table(s) {', '.join(missing)}: put {missing[0]}.parquet next to the left file, "
            f"or declare it in a catalog file (--catalog) or with --table {missing[0]}=PATH"
        )
    for t in tables:
        src = resolved[t]
        if isinstance(src, str | Path) and not os.path.exists(src):
            raise FileNotFoundError(
                f"source table {t!r}: {src} does not exist; fix its path (catalog or --table)"
            )
    rows = _rows_of(left) or 0
    started = time.perf_counter()
    training_set(
        plan,
        join,
        left,
        {t: resolved[t] for t in tables},
        spark=spark,
        serving_delay_ms=delay_ms,
        out=out_path,
        out_table=out_table,
        keep_order=keep_order,
        progress=progress,
        n_buckets=n_buckets,
    )
    seconds = time.perf_counter() - started
    rate = rows / seconds if seconds > 0 else float("inf")
    target = " + ".join(
        x for x in (str(out_path) if out_path else "", f"table {out_table}" if out_table else "") if x
    )
    log.info("backfill %s: %d rows in %.1f s (%.0f rows/s) -> %s", join, rows, seconds, rate, target)
    return {
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rate,
        "out": str(out_path) if out_path else None,
        "out_table": out_table,
    }
