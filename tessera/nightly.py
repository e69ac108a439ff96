"""``tessera consistency``, ``tessera nightly`` and ``tessera dag``: the nightly proof that online and offline agree.

* ``consistency --join NAME --date D``: the day's feature log vs the offline recomputation
  (:mod:`spark_jobs.consistency`), ``report.html`` + ``summary.json`` under ``--out``; exit 1 when a threshold
  is exceeded (so a scheduler alerts).
* ``nightly [--date D]``: the batch upload of day D (default: yesterday, UTC) then ``consistency`` of every
  online Join (or ``--join``) for the same day.
* ``dag``: an Airflow DAG file (``BashOperator`` tasks running the same two commands) for a cluster.

Defaults come from :class:`tessera.config.Settings`: the repo, ``<data dir>/feature_log``, ``<data dir>/reports``,
offline tables in ``TESSERA_OFFLINE_DIR`` and the bulk store ``TESSERA_BULK_STORE``.
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
) -> dict[str, Any]:
    """The batch upload of ``date`` into ``store``, then the consistency check of ``date`` for each Join."""
    from spark_jobs.upload import run_upload

    if spark is None:
        from spark_jobs.session import spark_session

        spark = spark_session(app_name="tessera-nightly")
    upload = run_upload(plan, date, {k: str(v) for k, v in sources.items()}, store, spark=spark)
    names = list(joins) if joins else [j.name for j in plan.joins if j.online]
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
        "uploads": [{"group_by": u.group_by, "version": u.version, "keys": u.keys} for u in upload.uploads],
        "checks": {
            j: {k: s[k] for k in ("rows", "inconsistent", "unexplained", "exceeded", "report")}
            for j, s in checks.items()
        },
        "exceeded": any(s["exceeded"] for s in checks.values()),
    }


def airflow_dag(
    joins: Sequence[str],
    *,
    dag_id: str = "tessera_nightly",
    schedule: str = "30 1 * * *",
    repo: str = "features/fraud",
    tessera: str = "tessera",
    env: Mapping[str, str] | None = None,
) -> str:
    """Python source of an Airflow DAG: ``upload`` of the logical day, then one ``consistency`` task per Join.

    Airflow's ``{{ ds }}`` is the start of the daily interval, i.e. yesterday when the run fires after
    midnight. ``consistency`` exits 1 when a threshold is exceeded: the task fails and Airflow alerts.
    """
    env_literal = repr(dict(env or {}))
    tasks = [
        "    upload = BashOperator(\n"
        '        task_id="upload",\n'
        f'        bash_command="{tessera} upload {repo} --date {{{{ ds }}}} '
        '--store ${TESSERA_BULK_STORE#embedded:} --data ${TESSERA_OFFLINE_DIR}",\n'
        "        env=ENV,\n"
        "        append_env=True,\n"
        "    )"
    ]
    for j in joins:
        ident = "".join(ch if ch.isalnum() else "_" for ch in j)
        tasks.append(
            f"    consistency_{ident} = BashOperator(\n"
            f'        task_id="consistency_{ident}",\n'
            f'        bash_command="{tessera} consistency --join {j} --date {{{{ ds }}}}",\n'
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
def consistency_command(
    join: str = typer.Option(..., "--join", help="the Join whose logged vectors to check"),
    date: str = typer.Option(None, "--date", help="the UTC day (YYYY-MM-DD); default: yesterday"),
    repo: Path | None = typer.Option(None, help="feature repo (default: $TESSERA_REPO)"),
    log_dir: Path | None = typer.Option(None, help="feature log root (default: <data dir>/feature_log)"),
    out: Path | None = typer.Option(None, help="report folder (default: <data dir>/reports)"),
    max_unexplained: int = typer.Option(0, help="fail when more unexplained mismatches than this"),
    max_mismatch_rate: float = typer.Option(
        1.0, help="fail when a feature's inconsistency rate is above this"
    ),
) -> None:
    """Online/offline consistency of one day's logged vectors: HTML report + JSON; exit 1 over a threshold."""
    from features.compile import compile_repo
    from tessera.config import Settings

    s = Settings.from_env()
    plan = compile_repo(repo or s.repo)
    day = date or yesterday()
    summary = check_join(
        plan,
        join,
        day,
        log_dir or s.data_dir / "feature_log",
        out or s.data_dir / "reports",
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
    log_dir: Path | None = typer.Option(None, help="feature log root (default: <data dir>/feature_log)"),
    out: Path | None = typer.Option(None, help="report folder (default: <data dir>/reports)"),
    max_unexplained: int = typer.Option(0, help="fail when more unexplained mismatches than this"),
) -> None:
    """Nightly: batch upload of yesterday, then the consistency check of yesterday; exit 1 over a threshold."""
    from features.compile import compile_repo
    from tessera.config import Settings
    from tessera.stores import open_bulk

    s = Settings.from_env()
    plan = compile_repo(repo or s.repo)
    day = date or yesterday()
    joins = join or [j.name for j in plan.joins if j.online]
    store = open_bulk(s.bulk_store)
    try:
        result = run_nightly(
            plan,
            day,
            offline_sources(plan, s.offline_dir, joins),
            store,
            log_dir or s.data_dir / "feature_log",
            out or s.data_dir / "reports",
            joins=joins,
            max_unexplained=max_unexplained,
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
) -> None:
    """Write the Airflow DAG of the nightly upload + consistency check."""
    from features.compile import compile_repo
    from tessera.config import Settings

    s = Settings.from_env()
    plan = compile_repo(repo or s.repo)
    joins = join or [j.name for j in plan.joins if j.online]
    out.write_text(airflow_dag(joins, schedule=schedule, repo=str(repo or s.repo)))
    typer.echo(f"DAG with {len(joins)} consistency task(s) -> {out}")
