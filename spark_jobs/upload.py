"""The daily batch upload: each online GroupBy's batch state as of a day boundary, bulk-uploaded as a new version.

For a date ``D`` the boundary ``B`` is the UTC midnight after ``D``. Per online GroupBy:

1. Read its offline table (parquet), apply the plan's row logic as Spark SQL (``where`` before ``selects``, the
   same sqlglot AST the stream's Python row function comes from), keep events with ``ts < B`` and non-null keys.
2. Co-partition by the key columns (hash), sort each partition by ``(key, ts)`` and scan it in Arrow batches
   (``mapInArrow``): one :func:`features.tiles.batch_state` per key, with the shared
   :class:`~features.tiles.StateCodec`, encoded to ``(key bytes, value bytes)``. Memory per task is one key's
   events, never a partition.
3. Sort by key bytes and stream the rows to the driver partition by partition (``toLocalIterator``, never a
   ``collect``) into ``store.bulk_upload(gb.batch.dataset, version, ...)``, then ``publish``.

The first key of every version is a small metadata record (:func:`kvstore.meta.meta_key`: the empty entity, which
sorts before every entity): the boundary and validity, so a reader knows the boundary even for entities that have no
batch value. Version names start with the date (``2026-11-24``; a re-run of the same date uploads
``2026-11-24.r2``...), so a re-run is idempotent: the published values are the same, switched atomically.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from features.plan import GroupByPlan, Plan
from features.sql import compile_row_logic
from features.tiles import StateCodec, batch_state
from features.windows import DAY_MS
from kvstore.base import KVStore
from kvstore.codec import KeyLayout, encode_entity
from kvstore.meta import encode_meta, meta_key
from spark_jobs.catalog import CatalogError, SparkTable, parse_table_flags, read_source, resolve_sources

log = logging.getLogger("tessera.upload")

_OUT_SCHEMA = pa.schema([("k", pa.binary()), ("v", pa.binary())])


def boundary_of(date: str) -> int:
    """The batch boundary of an upload for ``date`` (``YYYY-MM-DD``): the UTC midnight after it, in epoch ms.

    >>> boundary_of("1970-01-01")
    86400000
    """
    try:
        day = dt.date.fromisoformat(date)
    except ValueError:
        raise ValueError(f"date {date!r} is not YYYY-MM-DD (e.g. 2026-11-24)") from None
    midnight = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return int(midnight.timestamp() * 1000) + DAY_MS


def date_of_version(version: str) -> str:
    """The date a version name was made for (``2026-11-24.r2`` → ``2026-11-24``)."""
    return version.split(".", 1)[0]


def batch_meta_key(gb: GroupByPlan) -> bytes:
    """The key of the metadata record of ``gb``'s batch dataset (sorts before every entity key)."""
    assert gb.batch is not None
    return meta_key(gb.batch.dataset, gb.semantic_hash)


def batch_meta(boundary_ms: int, validity_ms: int, date: str, gb: GroupByPlan) -> bytes:
    """The metadata record of one GroupBy's batch version (read by the fetcher: :mod:`kvstore.meta`)."""
    return encode_meta(
        {
            "boundary_ms": boundary_ms,
            "validity_ms": validity_ms,
            "date": date,
            "group_by": gb.name,
            "semantic_hash": gb.semantic_hash,
        }
    )


def entity_columns(gb: GroupByPlan) -> list[str]:
    """The projected columns the batch state needs: keys, time, tie-break, aggregated values and buckets."""
    cols: list[str] = []
    wanted: list[str | None] = [*gb.keys, gb.source.time_column, gb.source.tie_break]
    for agg in gb.aggregations:
        wanted += [agg.column, agg.bucket]
    for c in wanted:
        if c is not None and c not in cols:
            cols.append(c)
    return cols


def encode_partition(
    gb: GroupByPlan, boundary_ms: int, validity_ms: int, batches: Iterable[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """``(key, value)`` batches of one partition whose rows are sorted by key (all of a key's rows adjacent).

    Pure pyarrow + :mod:`features`: it runs inside a Spark Python worker (``mapInArrow``) and in plain tests.
    """
    assert gb.batch is not None
    codec = StateCodec(gb)
    layout = KeyLayout(gb.batch.dataset, gb.semantic_hash)
    key_cols = list(gb.keys)
    out_k: list[bytes] = []
    out_v: list[bytes] = []
    current: tuple[Any, ...] | None = None
    rows: list[dict[str, Any]] = []

    def flush() -> None:
        if current is None or not rows:
            return
        state = batch_state(codec, rows, boundary_ms, validity_ms)
        out_k.append(layout.key(encode_entity(list(current))))
        out_v.append(codec.encode_batch(state))

    for batch in batches:
        for row in batch.to_pylist():
            key = tuple(row[c] for c in key_cols)
            if key != current:
                flush()
                current, rows = key, []
                if len(out_k) >= 1024:
                    yield pa.RecordBatch.from_arrays(
                        [pa.array(out_k, pa.binary()), pa.array(out_v, pa.binary())], schema=_OUT_SCHEMA
                    )
                    out_k, out_v = [], []
            rows.append(row)
    flush()
    if out_k:
        yield pa.RecordBatch.from_arrays(
            [pa.array(out_k, pa.binary()), pa.array(out_v, pa.binary())], schema=_OUT_SCHEMA
        )


def state_frame(
    spark: Any, gb: GroupByPlan, table_path: Any, boundary_ms: int, *, partitions: int | None = None
) -> Any:
    """The DataFrame of ``(k, v)`` (key bytes, encoded batch state) of every entity of ``gb``, unsorted."""
    assert gb.batch is not None
    from pyspark.sql import functions as F

    logic = compile_row_logic(
        gb.row_logic.selects, gb.row_logic.where, gb.source.schema, passthrough=gb.row_logic.passthrough
    )
    df = read_source(spark, table_path)  # a parquet path or a catalog SparkTable
    if logic.spark_where:
        df = df.where(logic.spark_where)
    df = df.selectExpr(*logic.spark_selects)
    time_col = gb.source.time_column
    cond = F.col(time_col).isNotNull() & (F.col(time_col) < F.lit(boundary_ms))
    for k in gb.keys:
        cond = cond & F.col(k).isNotNull()
    df = df.where(cond).select(*entity_columns(gb))
    n = partitions or int(spark.conf.get("spark.sql.shuffle.partitions"))
    order = [*gb.keys, time_col] + ([gb.source.tie_break] if gb.source.tie_break else [])
    df = df.repartition(n, *gb.keys).sortWithinPartitions(*order)
    validity = gb.batch.validity_ms

    def encode(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return encode_partition(gb, boundary_ms, validity, batches)

    return df.mapInArrow(encode, "k binary, v binary")


def _sorted_items(frame: Any, first: tuple[bytes, bytes]) -> Iterator[tuple[bytes, bytes]]:
    """The metadata record, then every ``(k, v)`` of ``frame`` sorted by key, fetched one partition at a time."""
    yield first
    for row in frame.orderBy("k").toLocalIterator(prefetchPartitions=True):
        yield bytes(row["k"]), bytes(row["v"])


def next_version(store: KVStore, dataset: str, date: str) -> str:
    """``date`` if no version of it exists yet, else ``date.rN`` for the next free N."""
    existing = set(store.versions(dataset))
    if date not in existing:
        return date
    n = 2
    while f"{date}.r{n}" in existing:
        n += 1
    return f"{date}.r{n}"


@dataclass
class GroupByUpload:
    group_by: str
    dataset: str
    version: str
    keys: int
    seconds: float
    published: bool


@dataclass
class UploadResult:
    date: str
    boundary_ms: int
    uploads: list[GroupByUpload] = field(default_factory=list)


def run_upload(
    plan: Plan,
    date: str,
    sources: Mapping[str, str | os.PathLike[str] | SparkTable],
    store: KVStore,
    *,
    spark: Any = None,
    group_bys: Sequence[str] | None = None,
    publish: bool = True,
    partitions: int | None = None,
) -> UploadResult:
    """Upload the batch state of every online GroupBy (or those named in ``group_bys``) as of the end of ``date``.

    ``sources`` maps offline table names (``GroupBy.source.table``) to parquet paths. Each GroupBy gets a new
    version of ``gb.batch.dataset`` in ``store``, published unless ``publish`` is False (then the caller
    publishes the returned versions). Returns what was uploaded.
    """
    boundary = boundary_of(date)
    selected = [
        gb
        for gb in plan.group_bys
        if gb.online and gb.batch is not None and (group_bys is None or gb.name in group_bys)
    ]
    if group_bys is not None:
        unknown = set(group_bys) - {gb.name for gb in selected}
        if unknown:
            raise ValueError(f"no online GroupBy with batch state named {sorted(unknown)} in the plan")
    missing = sorted({gb.source.table for gb in selected} - set(sources))
    if missing:
        raise ValueError(
            f"no offline table path for {missing}; pass them as sources (e.g. --table payments=PATH)"
        )
    if spark is None:
        from spark_jobs.session import spark_session

        spark = spark_session(app_name="tessera-upload")
    result = UploadResult(date, boundary)
    for gb in selected:
        assert gb.batch is not None
        started = time.perf_counter()
        source = sources[gb.source.table]
        source = source if isinstance(source, SparkTable) else str(source)
        frame = state_frame(spark, gb, source, boundary, partitions=partitions)
        frame = frame.persist()  # the sort samples its input: encode once
        try:
            version = next_version(store, gb.batch.dataset, date)
            meta = (batch_meta_key(gb), batch_meta(boundary, gb.batch.validity_ms, date, gb))
            count = store.bulk_upload(gb.batch.dataset, version, _sorted_items(frame, meta))
        finally:
            frame.unpersist()
        if publish:
            store.publish(gb.batch.dataset, version)
        seconds = time.perf_counter() - started
        log.info(
            "%s: %d keys uploaded to %s version %s in %.1f s",
            gb.name,
            count - 1,
            gb.batch.dataset,
            version,
            seconds,
        )
        result.uploads.append(GroupByUpload(gb.name, gb.batch.dataset, version, count - 1, seconds, publish))
    return result


def _parse_tables(specs: Sequence[str], data_dir: str | None, catalog: str | None = None) -> dict[str, Any]:
    """Offline tables: ``--data DIR``'s parquet files, overridden by the catalog file, overridden by ``--table``."""
    tables: dict[str, Any] = {}
    if data_dir:
        for p in sorted(Path(data_dir).glob("*.parquet")):
            tables[p.stem] = str(p)
    try:
        return resolve_sources(catalog, parse_table_flags(list(specs)), tables)
    except CatalogError as e:
        raise SystemExit(f"error: {e}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``tessera upload PATH --date D --store DIR [--data DIR | --table NAME=PATH ...] [--group-by NAME ...]``."""
    from features.compile import compile_repo
    from kvstore.embedded import EmbeddedBulkStore

    parser = argparse.ArgumentParser(prog="tessera upload", description=__doc__.split("\n", 1)[0])
    parser.add_argument("path", help="feature repository (directory of definitions)")
    parser.add_argument(
        "--date", required=True, help="the day to upload (YYYY-MM-DD); boundary = its end, UTC"
    )
    parser.add_argument("--store", required=True, help="root directory of the embedded bulk store")
    parser.add_argument("--data", help="directory holding <table>.parquet offline tables")
    parser.add_argument(
        "--table", action="append", default=[], help="NAME=PATH of an offline table (repeatable)"
    )
    parser.add_argument(
        "--catalog", help="TOML catalog: source table name -> parquet path or Spark table (flags override)"
    )
    parser.add_argument("--group-by", action="append", help="upload only this GroupBy (repeatable)")
    parser.add_argument(
        "--no-publish", action="store_true", help="upload the versions but do not publish them"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        boundary_of(args.date)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plan = compile_repo(args.path)
    tables = _parse_tables(args.table, args.data, args.catalog)
    with EmbeddedBulkStore(args.store) as store:
        try:
            result = run_upload(
                plan, args.date, tables, store, group_bys=args.group_by, publish=not args.no_publish
            )
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    for u in result.uploads:
        state = "published" if u.published else "uploaded (not published)"
        print(f"{u.group_by}: {u.keys} keys -> {u.dataset} version {u.version} {state} ({u.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
