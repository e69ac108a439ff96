"""The ``spark-submit`` entry of tessera's Spark jobs: the local commands' functions, on whatever master is given.

::

    spark-submit --master spark://HOST:7077 --py-files tessera.zip spark_jobs/submit.py upload REPO \\
        --date 2026-11-24 --store /shared/bulk --data /shared/offline [--result upload.json]
    spark-submit ... spark_jobs/submit.py backfill REPO --join fraud_v1 --left /shared/labels.parquet \\
        --out /shared/training --data /shared/offline [--serving-delay 150ms]
    spark-submit ... spark_jobs/submit.py consistency REPO --join fraud_v1 --date 2026-11-24 \\
        --log-dir /shared/feature_log --out /shared/reports --data /shared/offline

``tessera.zip`` holds the packages the executors import (``features``, ``kvstore``, ``spark_jobs``):
:func:`build_py_files` writes it, :func:`submit_argv` builds the whole command. The session comes from
:func:`spark_jobs.session.spark_session`, which keeps the master ``spark-submit`` set. Paths are made absolute
before anything runs: executors resolve them in their own working directories. The bulk store is written by
the driver only (rows reach it with ``toLocalIterator``); offline tables, the backfill's output and the
consistency job's inputs must be on storage every node reads. Exit codes: 0 done, 1 a consistency threshold
exceeded, 2 bad arguments or inputs, 3 the job failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

#: The packages a Spark job imports on the driver and the executors (not serving, not the CLI).
PACKAGES = ("features", "kvstore", "spark_jobs")
ROOT = Path(__file__).resolve().parent.parent


def build_py_files(out: str | Path, root: str | Path = ROOT) -> Path:
    """Zip the ``.py`` files of :data:`PACKAGES` under ``root`` into ``out`` (for ``--py-files``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for package in PACKAGES:
            for f in sorted((Path(root) / package).rglob("*.py")):
                z.write(f, f.relative_to(root).as_posix())
    tmp.replace(out)
    return out


def submit_argv(
    master: str,
    job: str,
    args: Sequence[str],
    py_files: str | Path,
    *,
    conf: Mapping[str, str] | None = None,
    app_name: str | None = None,
) -> list[str]:
    """The ``spark-submit`` command running ``job`` (upload, backfill, consistency) with ``args`` on ``master``."""
    from spark_jobs.standalone import spark_home

    argv = [str(spark_home() / "bin" / "spark-submit"), "--master", master, "--py-files", str(py_files)]
    argv += ["--name", app_name or f"tessera-{job}"]
    for key, value in (conf or {}).items():
        argv += ["--conf", f"{key}={value}"]
    return [*argv, str(Path(__file__).resolve()), job, *args]


def _abs(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def _tables(specs: Sequence[str], data_dir: str | None) -> dict[str, str]:
    tables: dict[str, str] = {}
    if data_dir:
        for p in sorted(Path(data_dir).glob("*.parquet")):
            tables[p.stem] = _abs(p)
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(
                f"--table {spec!r} must look like NAME=PATH (e.g. payments=data/payments.parquet)"
            )
        tables[name] = _abs(path)
    return tables


def _open_store(spec: str) -> Any:
    """``postgres:DSN``, ``embedded:PATH`` or a plain folder (the embedded store)."""
    if spec.startswith("postgres:"):
        from kvstore.postgres import PostgresBulkStore

        return PostgresBulkStore(spec.removeprefix("postgres:"))
    from kvstore.embedded import EmbeddedBulkStore

    path = Path(spec.removeprefix("embedded:"))
    path.mkdir(parents=True, exist_ok=True)
    return EmbeddedBulkStore(_abs(path))


def _write_result(path: str | None, result: Any) -> None:
    text = json.dumps(result, indent=1, default=str, allow_nan=True)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    print(text)


def load_plan(spec: str | Path) -> Any:
    """A plan JSON file (``tessera plan PATH --json``) or a feature repository folder, compiled here."""
    path = Path(spec)
    if path.is_file() and path.suffix == ".json":
        from features.plan import Plan

        return Plan.from_json(path.read_text())
    from features.compile import compile_repo

    return compile_repo(_abs(path))


def _upload(args: argparse.Namespace, spark: Any) -> int:
    from spark_jobs.upload import run_upload

    plan = load_plan(args.repo)
    store = _open_store(args.store)
    try:
        result = run_upload(
            plan,
            args.date,
            _tables(args.table, args.data),
            store,
            spark=spark,
            group_bys=args.group_by,
            publish=not args.no_publish,
        )
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
    _write_result(args.result, asdict(result))
    return 0


def _backfill(args: argparse.Namespace, spark: Any) -> int:
    import time

    from features.windows import parse_duration_ms
    from spark_jobs.backfill import training_set

    plan = load_plan(args.repo)
    left = _abs(args.left)
    tables = _tables(args.table, args.data or str(Path(left).parent))
    started = time.perf_counter()
    training_set(
        plan,
        args.join,
        left,
        tables,
        spark=spark,
        serving_delay_ms=parse_duration_ms(args.serving_delay, what="serving delay"),
        out=_abs(args.out),
    )
    _write_result(
        args.result, {"join": args.join, "out": _abs(args.out), "seconds": time.perf_counter() - started}
    )
    return 0


def _consistency(args: argparse.Namespace, spark: Any) -> int:
    from spark_jobs.consistency import Thresholds, run_consistency
    from spark_jobs.consistency_report import write_report

    plan = load_plan(args.repo)
    tables = _tables(args.table, args.data)
    out: dict[str, Any] = {"date": args.date, "checks": {}}
    for join in args.join:
        summary = run_consistency(
            plan,
            join,
            args.date,
            _abs(args.log_dir),
            tables,
            spark=spark,
            thresholds=Thresholds(args.max_unexplained, args.max_mismatch_rate),
        )
        html_path, json_path = write_report(summary, Path(_abs(args.out)) / join / args.date)
        out["checks"][join] = {
            **{k: summary[k] for k in ("rows", "inconsistent", "unexplained", "exceeded", "reasons")},
            "report": str(html_path),
            "summary": str(json_path),
        }
    out["exceeded"] = any(c["exceeded"] for c in out["checks"].values())
    _write_result(args.result, out)
    return 1 if out["exceeded"] else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spark-submit … spark_jobs/submit.py", description=__doc__.split("\n")[0]
    )
    jobs = p.add_subparsers(dest="job", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("repo", help="plan JSON (`tessera plan PATH --json`) or a feature repository folder")
        sp.add_argument("--data", help="folder of <table>.parquet offline tables")
        sp.add_argument(
            "--table", action="append", default=[], help="NAME=PATH of an offline table (repeatable)"
        )
        sp.add_argument("--result", help="also write the result JSON here")

    up = jobs.add_parser("upload", help="the daily batch upload (spark_jobs.upload.run_upload)")
    common(up)
    up.add_argument("--date", required=True, help="the day to upload (YYYY-MM-DD)")
    up.add_argument("--store", required=True, help="bulk store: a folder, embedded:PATH or postgres:DSN")
    up.add_argument("--group-by", action="append", help="upload only this GroupBy (repeatable)")
    up.add_argument("--no-publish", action="store_true", help="upload the versions but do not publish them")

    bf = jobs.add_parser("backfill", help="a training set (spark_jobs.backfill.run_backfill)")
    common(bf)
    bf.add_argument("--join", required=True)
    bf.add_argument(
        "--left", required=True, help="parquet of labeled requests (tables default to its folder)"
    )
    bf.add_argument("--out", required=True, help="output parquet folder")
    bf.add_argument("--serving-delay", default="0ms")

    cs = jobs.add_parser("consistency", help="logged vectors vs offline (spark_jobs.consistency)")
    common(cs)
    cs.add_argument("--join", action="append", required=True, help="a Join to check (repeatable)")
    cs.add_argument("--date", required=True, help="the UTC day (YYYY-MM-DD)")
    cs.add_argument("--log-dir", required=True, help="feature log root (date=…/hour=…/part-*.parquet)")
    cs.add_argument("--out", required=True, help="report folder (<out>/<join>/<date>/)")
    cs.add_argument("--max-unexplained", type=int, default=0)
    cs.add_argument("--max-mismatch-rate", type=float, default=1.0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    from spark_jobs.session import spark_session

    spark = spark_session(app_name=f"tessera-{args.job}")
    try:
        job = {"upload": _upload, "backfill": _backfill, "consistency": _consistency}[args.job]
        try:
            return job(args, spark)
        except (ValueError, KeyError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except Exception:  # a failed job must not look like "threshold exceeded" (1) to a scheduler
            traceback.print_exc()
            return 3
    finally:
        spark.stop()


if __name__ == "__main__":
    raise SystemExit(main())
