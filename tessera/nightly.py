"""``tessera consistency``, ``tessera nightly`` and ``tessera dag``: the nightly proof that online and offline agree.

* ``consistency --join NAME --date D``: the day's feature log vs the offline recomputation
  (:mod:`spark_jobs.consistency`), ``report.html`` + ``summary.json`` under ``--out``; exit 1 when a threshold
  is exceeded (so a scheduler alerts).
* ``nightly [--date D]``: the batch upload of day D (default: yesterday, UTC) then ``consistency`` of every
  online Join (or ``--join``) for the same day.
* ``dag``: an Airflow DAG file (``BashOperator`` tasks running the same two commands) for a cluster.

With a cluster master (``--spark-master spark://…`` or ``TESSERA_SPARK_MASTER``; anything but ``local…``) the
Spark work goes through ``spark-submit`` (:func:`submit_nightly`, :mod:`spark_jobs.submit`): the plan as JSON
and the packages the executors import as a zip, written under ``<data dir>/submit``; the offline tables, the
feature log and the reports must then be on storage every Spark node reads.

Defaults come from :class:`tessera.config.Settings`: the repo, the feature log ``TESSERA_FEATURE_LOG`` (a
``kafka://`` topic is landed into ``<data dir>/feature_log`` first), ``<data dir>/reports``, offline tables in
``TESSERA_OFFLINE_DIR`` and the bulk store ``TESSERA_BULK_STORE``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import typer

from features.plan import Plan


def yesterday() -> str:
    return (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()


def offline_sources(plan: Plan, offline_dir: Path, joins: Sequence[str]) -> dict[str, str]:
    tables = {plan.group_by(p.group_by).source.table for j in joins for p in plan.join(j).parts}
    return {t: str(offline_dir / f"{t}.parquet") for t in sorted(tables)}


def check_join(
    plan: Plan,
    join: str,
    date: str,
    log_dir: Path,
    out_dir: Path,
    sources: Mapping[str, Any],
    *,
    spark: Any = None,
    max_unexplained: int = 0,
    max_mismatch_rate: float = 1.0,
) -> dict[str, Any]:
    """Run the consistency job of one Join and day, write its report; return the summary with the paths."""
    from spark_jobs.consistency import Thresholds, run_consistency
    from spark_jobs.consistency_report import write_report

    if spark is None:
        from spark_jobs.session import spark_session

        spark = spark_session(app_name=f"tessera-consistency-{join}")
    summary = run_consistency(
        plan,
        join,
        date,
        log_dir,
        sources,
        spark=spark,
        thresholds=Thresholds(max_unexplained, max_mismatch_rate),
    )
    html_path, json_path = write_report(summary, out_dir / join / date)
    summary["report"], summary["summary"] = str(html_path), str(json_path)
    return summary


def run_nightly(
    plan: Plan,
    date: str,
    sources: Mapping[str, Any],
    store: Any,
    log_dir: Path,
    out_dir: Path,
    *,
    joins: Sequence[str] | None = None,
    spark: Any = None,
    max_unexplained: int = 0,
    max_mismatch_rate: float = 1.0,
    upload: bool = True,
    check: bool = True,
) -> dict[str, Any]:
    """The batch upload of ``date`` into ``store``, then the consistency check of ``date`` for each Join
    (``upload`` / ``check`` False: skip that step)."""
    from spark_jobs.upload import UploadResult, boundary_of, run_upload

    if spark is None:
        from spark_jobs.session import spark_session

        spark = spark_session(app_name="tessera-nightly")
    uploaded = (
        run_upload(plan, date, {k: str(v) for k, v in sources.items()}, store, spark=spark)
        if upload
        else UploadResult(date, boundary_of(date))
    )
    names = (list(joins) if joins else [j.name for j in plan.joins if j.online]) if check else []
    checks = {
        j: check_join(
            plan,
            j,
            date,
            log_dir,
            out_dir,
            sources,
            spark=spark,
            max_unexplained=max_unexplained,
            max_mismatch_rate=max_mismatch_rate,
        )
        for j in names
    }
    return {
        "date": date,
        "uploads": [{"group_by": u.group_by, "version": u.version, "keys": u.keys} for u in uploaded.uploads],
        "checks": {
            j: {k: s[k] for k in ("rows", "inconsistent", "unexplained", "exceeded", "report")}
            for j, s in checks.items()
        },
        "exceeded": any(s["exceeded"] for s in checks.values()),
    }


def is_cluster(master: str | None) -> bool:
    """A master that needs ``spark-submit`` (a ``spark://``, ``yarn`` or ``k8s://`` URL), not local mode."""
    return bool(master) and not str(master).startswith("local")


def _run_submit(argv: list[str], result: Path) -> tuple[int, dict[str, Any]]:
    import subprocess

    from spark_jobs.standalone import spark_env

    result.unlink(missing_ok=True)
    code = subprocess.call(argv, env=spark_env())
    if not result.exists():
        raise RuntimeError(f"spark-submit failed (exit {code}): {' '.join(argv)}")
    out: dict[str, Any] = json.loads(result.read_text())
    return code, out


def submit_nightly(
    master: str,
    plan: Plan,
    date: str,
    offline_dir: Path,
    bulk_store: str,
    log_dir: Path,
    out_dir: Path,
    work_dir: Path,
    *,
    joins: Sequence[str] | None = None,
    upload: bool = True,
    check: bool = True,
    max_unexplained: int = 0,
    max_mismatch_rate: float = 1.0,
) -> dict[str, Any]:
    """:func:`run_nightly` through ``spark-submit --master MASTER`` (one submit for the upload, one for every
    check); returns the same summary."""
    from spark_jobs.submit import build_py_files, submit_argv

    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    plan_file = work_dir / f"plan-{plan.plan_hash}.json"
    plan_file.write_text(plan.to_json())
    py_files = build_py_files(work_dir / "tessera.zip")
    common = [str(plan_file), "--data", str(offline_dir.resolve())]
    summary: dict[str, Any] = {"date": date, "uploads": [], "checks": {}, "exceeded": False}
    if upload:
        store = bulk_store if bulk_store.startswith(("postgres:", "embedded:")) else f"embedded:{bulk_store}"
        if store.startswith("embedded:"):
            store = f"embedded:{Path(store.removeprefix('embedded:')).resolve()}"
        result = work_dir / f"upload-{date}.json"
        argv = [*common, "--date", date, "--store", store, "--result", str(result)]
        code, up = _run_submit(submit_argv(master, "upload", argv, py_files), result)
        if code != 0:
            raise RuntimeError(f"the upload of {date} failed on {master} (exit {code})")
        summary["uploads"] = [
            {"group_by": u["group_by"], "version": u["version"], "keys": u["keys"]} for u in up["uploads"]
        ]
    names = list(joins) if joins else [j.name for j in plan.joins if j.online]
    if check and names:
        result = work_dir / f"consistency-{date}.json"
        argv = [*common, *(a for j in names for a in ("--join", j)), "--date", date]
        argv += [
            "--log-dir",
            str(log_dir.resolve()),
            "--out",
            str(out_dir.resolve()),
            "--result",
            str(result),
        ]
        argv += ["--max-unexplained", str(max_unexplained), "--max-mismatch-rate", str(max_mismatch_rate)]
        code, checked = _run_submit(submit_argv(master, "consistency", argv, py_files), result)
        if code not in (0, 1):
            raise RuntimeError(f"the consistency check of {date} failed on {master} (exit {code})")
        summary["checks"] = {
            j: {k: c[k] for k in ("rows", "inconsistent", "unexplained", "exceeded", "report", "reasons")}
            for j, c in checked["checks"].items()
        }
        summary["exceeded"] = bool(checked["exceeded"])
    return summary


def airflow_dag(
    joins: Sequence[str],
    *,
    dag_id: str = "tessera_nightly",
    schedule: str = "30 1 * * *",
    repo: str = "features/fraud",
    tessera: str = "tessera",
    env: Mapping[str, str] | None = None,
    spark_master: str | None = None,
) -> str:
    """Python source of an Airflow DAG: ``upload`` of the logical day, then one ``consistency`` task per Join.

    Airflow's ``{{ ds }}`` is the start of the daily interval, i.e. yesterday when the run fires after
    midnight. ``consistency`` exits 1 when a threshold is exceeded: the task fails and Airflow alerts.
    With a cluster ``spark_master`` both steps run through ``spark-submit`` (``tessera nightly --no-check``
    for the upload, ``tessera consistency`` per Join, each with ``--spark-master``).
    """
    env_literal = repr(dict(env or {}))
    if is_cluster(spark_master):
        submit = f" --repo {repo} --spark-master {spark_master}"
        upload_cmd = f"{tessera} nightly --date {{{{ ds }}}} --no-check{submit}"
    else:
        submit = ""
        upload_cmd = (
            f"{tessera} upload {repo} --date {{{{ ds }}}} "
            "--store ${TESSERA_BULK_STORE#embedded:} --data ${TESSERA_OFFLINE_DIR}"
        )
    tasks = [
        "    upload = BashOperator(\n"
        '        task_id="upload",\n'
        f'        bash_command="{upload_cmd}",\n'
        "        env=ENV,\n"
        "        append_env=True,\n"
        "    )"
    ]
    for j in joins:
        ident = "".join(ch if ch.isalnum() else "_" for ch in j)
        tasks.append(
            f"    consistency_{ident} = BashOperator(\n"
            f'        task_id="consistency_{ident}",\n'
            f'        bash_command="{tessera} consistency --join {j} --date {{{{ ds }}}}{submit}",\n'
            "        env=ENV,\n"
            "        append_env=True,\n"
            "    )\n"
            f"    upload >> consistency_{ident}"
        )
    body = "\n".join(tasks)
    return f'''"""Generated by `tessera dag`: the nightly batch upload and online/offline consistency check."""

import datetime

from airflow import DAG
from airflow.operators.bash import BashOperator

ENV = {env_literal}

with DAG(
    dag_id={dag_id!r},
    schedule={schedule!r},
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={{"retries": 1, "retry_delay": datetime.timedelta(minutes=10)}},
    tags=["tessera"],
) as dag:
{body}
'''


# ---- the commands (registered on tessera.cli.app) -------------------------------------------------------------
def feature_log_dir(settings: Any, log_dir: Path | None) -> Path:
    """The parquet feature log a check reads: ``log_dir``, else ``TESSERA_FEATURE_LOG``'s directory; when that
    setting is a ``kafka://`` topic, its new records are landed first (into ``log_dir`` or
    ``<data dir>/feature_log``)."""
    spec = settings.feature_log
    if not str(spec).startswith("kafka://"):
        return log_dir or Path(spec)
    from serving.feature_log import land_topic

    root = log_dir or settings.data_dir / "feature_log"
    counts = land_topic(spec, root)
    typer.echo(f"feature log {spec}: {counts['landed']} rows landed in {root} ({counts['skipped']} skipped)")
    return root


def _submit(
    settings: Any, master: str, plan: Plan, day: str, logs: Path, reports: Path, **options: Any
) -> dict[str, Any]:
    """:func:`submit_nightly` with the offline data, bulk store and work folder of ``settings``."""
    return submit_nightly(
        master,
        plan,
        day,
        settings.offline_dir,
        settings.bulk_store,
        logs,
        reports,
        settings.data_dir / "submit",
        **options,
    )


_MASTER_HELP = "Spark master; a cluster URL (spark://, yarn, k8s://) runs through spark-submit (default: $TESSERA_SPARK_MASTER)"


def consistency_command(
    join: str = typer.Option(..., "--join", help="the Join whose logged vectors to check"),
    date: str = typer.Option(None, "--date", help="the UTC day (YYYY-MM-DD); default: yesterday"),
    repo: Path | None = typer.Option(None, help="feature repo (default: $TESSERA_REPO)"),
    log_dir: Path | None = typer.Option(None, help="feature log root (default: $TESSERA_FEATURE_LOG)"),
    out: Path | None = typer.Option(None, help="report folder (default: <data dir>/reports)"),
    max_unexplained: int = typer.Option(0, help="fail when more unexplained mismatches than this"),
    max_mismatch_rate: float = typer.Option(
        1.0, help="fail when a feature's inconsistency rate is above this"
    ),
    spark_master: str | None = typer.Option(None, "--spark-master", help=_MASTER_HELP),
) -> None:
    """Online/offline consistency of one day's logged vectors: HTML report + JSON; exit 1 over a threshold."""
    from features.compile import compile_repo
    from tessera.config import Settings

    s = Settings.from_env()
    plan = compile_repo(repo or s.repo)
    day = date or yesterday()
    logs = feature_log_dir(s, log_dir)
    reports = out or s.data_dir / "reports"
    master = spark_master or s.spark_master
    if is_cluster(master):
        result = _submit(
            s,
            master,
            plan,
            day,
            logs,
            reports,
            joins=[join],
            upload=False,
            max_unexplained=max_unexplained,
            max_mismatch_rate=max_mismatch_rate,
        )
        check = result["checks"][join]
        typer.echo(
            f"{join} {day}: {check['rows']} logged rows, {check['inconsistent']} inconsistent cells "
            f"(on {master}) -> {check['report']}"
        )
        for reason in check["reasons"]:
            typer.echo(f"  {reason}", err=True)
        if result["exceeded"]:
            raise typer.Exit(1)
        return
    summary = check_join(
        plan,
        join,
        day,
        logs,
        reports,
        offline_sources(plan, s.offline_dir, [join]),
        max_unexplained=max_unexplained,
        max_mismatch_rate=max_mismatch_rate,
    )
    typer.echo(
        f"{join} {day}: {summary['rows']} logged rows, {summary['inconsistent']} inconsistent cells, "
        f"causes {json.dumps(summary['causes'])} -> {summary['report']}"
    )
    for reason in summary["reasons"]:
        typer.echo(f"  {reason}", err=True)
    if summary["exceeded"]:
        raise typer.Exit(1)


def nightly_command(
    date: str = typer.Option(None, "--date", help="the UTC day (default: yesterday)"),
    join: list[str] = typer.Option(None, "--join", help="check only these Joins (default: every online one)"),
    repo: Path | None = typer.Option(None, help="feature repo (default: $TESSERA_REPO)"),
    log_dir: Path | None = typer.Option(None, help="feature log root (default: $TESSERA_FEATURE_LOG)"),
    out: Path | None = typer.Option(None, help="report folder (default: <data dir>/reports)"),
    max_unexplained: int = typer.Option(0, help="fail when more unexplained mismatches than this"),
    spark_master: str | None = typer.Option(None, "--spark-master", help=_MASTER_HELP),
    upload: bool = typer.Option(True, "--upload/--no-upload", help="run the batch upload"),
    check: bool = typer.Option(True, "--check/--no-check", help="run the consistency checks"),
) -> None:
    """Nightly: batch upload of yesterday, then the consistency check of yesterday; exit 1 over a threshold."""
    from features.compile import compile_repo
    from tessera.config import Settings
    from tessera.stores import open_bulk

    s = Settings.from_env()
    plan = compile_repo(repo or s.repo)
    day = date or yesterday()
    joins = join or [j.name for j in plan.joins if j.online]
    logs = feature_log_dir(s, log_dir) if check else log_dir or s.data_dir / "feature_log"
    reports = out or s.data_dir / "reports"
    master = spark_master or s.spark_master
    if is_cluster(master):
        result = _submit(
            s,
            master,
            plan,
            day,
            logs,
            reports,
            joins=joins,
            upload=upload,
            check=check,
            max_unexplained=max_unexplained,
        )
    else:
        store = open_bulk(s.bulk_store)
        try:
            result = run_nightly(
                plan,
                day,
                offline_sources(plan, s.offline_dir, joins),
                store,
                logs,
                reports,
                joins=joins,
                max_unexplained=max_unexplained,
                upload=upload,
                check=check,
            )
        finally:
            close = getattr(store, "close", None)
            if close is not None:
                close()
    typer.echo(json.dumps(result, indent=1))
    if result["exceeded"]:
        raise typer.Exit(1)


def dag_command(
    out: Path = typer.Option(Path("tessera_nightly_dag.py"), "--out", help="where to write the DAG file"),
    join: list[str] = typer.Option(None, "--join", help="Joins to check (default: every online one)"),
    repo: Path | None = typer.Option(None, help="feature repo (default: $TESSERA_REPO)"),
    schedule: str = typer.Option("30 1 * * *", help="cron schedule (UTC)"),
    spark_master: str | None = typer.Option(
        None, "--spark-master", help="run the tasks through spark-submit on this master (default: local mode)"
    ),
) -> None:
    """Write the Airflow DAG of the nightly upload + consistency check."""
    from features.compile import compile_repo
    from tessera.config import Settings

    s = Settings.from_env()
    plan = compile_repo(repo or s.repo)
    joins = join or [j.name for j in plan.joins if j.online]
    out.write_text(airflow_dag(joins, schedule=schedule, repo=str(repo or s.repo), spark_master=spark_master))
    typer.echo(f"DAG with {len(joins)} consistency task(s) -> {out}")
