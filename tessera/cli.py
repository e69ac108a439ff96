"""The ``tessera`` command: one entry point for every part of the platform."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from features.compile import compile_repo, validate_repo
from features.discovery import load_repo
from features.plan import Plan
from features.windows import format_duration

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="tessera: streaming features for payment-fraud ML. One definition; stream, batch, backfill and serving agree.",
)
# Piped output (CI logs, `| less`) keeps long names and SQL on one line instead of wrapping at 80 columns.
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(width=_WIDTH)
err = Console(stderr=True, soft_wrap=True)


@app.command()
def validate(path: Path = typer.Argument(..., help="folder (or file) of feature definitions")) -> None:
    """Check every definition; print all problems (file:line, what, fix). Exit 1 on any error."""
    repo = load_repo(path)
    diagnostics = validate_repo(repo)
    for d in diagnostics:
        err.print(d.render(str(path)), markup=False, highlight=False)
        err.print()
    errors = sum(1 for d in diagnostics if d.severity == "error")
    if errors:
        err.print(f"[bold red]{errors} error(s)[/] in {path}")
        raise typer.Exit(1)
    console.print(
        f"[green]ok[/]: {len(repo.sources)} sources, {len(repo.group_bys)} GroupBys, {len(repo.joins)} Joins in {path}"
    )


def _plan_or_exit(path: Path) -> Plan:
    repo = load_repo(path)
    diagnostics = validate_repo(repo)
    if any(d.severity == "error" for d in diagnostics):
        for d in diagnostics:
            err.print(d.render(str(path)), markup=False, highlight=False)
        err.print(f"[bold red]{len(diagnostics)} problem(s)[/]: run `tessera validate {path}`")
        raise typer.Exit(1)
    return compile_repo(repo)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n //= 1024
    return f"{n} TiB"


@app.command()
def plan(
    path: Path = typer.Argument(..., help="folder (or file) of feature definitions"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON (what the jobs read)"),
) -> None:
    """Show what will run: per GroupBy the row logic, windows and hops, tiles, KV datasets, state size."""
    p = _plan_or_exit(path)
    if as_json:
        sys.stdout.write(p.to_json() + "\n")
        return
    console.print(f"[bold]plan[/] {p.plan_hash}  ({len(p.group_bys)} GroupBys, {len(p.joins)} Joins)\n")
    for gb in p.group_bys:
        console.print(
            f"[bold cyan]GroupBy {gb.name}[/]  keys={list(gb.keys)}  source={gb.source.table} "
            f"(topic {gb.source.topic})  {gb.defined_at}  hash {gb.semantic_hash}"
        )
        if gb.row_logic.selects:
            for name, sql in gb.row_logic.selects.items():
                console.print(f"    select {name} = {sql}", markup=False, highlight=False)
        if gb.row_logic.where:
            console.print(f"    where {gb.row_logic.where}", markup=False, highlight=False)
        table = Table(show_edge=False, pad_edge=False, box=None)
        for col in ("feature", "op", "window", "hop", "offset", "type"):
            table.add_column(col)
        for f in gb.features:
            a = gb.aggregations[f.agg_index]
            w = a.windows[f.window_index]
            table.add_row(
                f.name,
                a.op,
                format_duration(w.length_ms) if w.length_ms else "lifetime",
                format_duration(w.hop_ms) if w.length_ms else "-",
                format_duration(w.offset_ms) if w.offset_ms else "-",
                f.type,
            )
        console.print(table)
        if gb.stream and gb.batch:
            sizes = ", ".join(
                f"{format_duration(lv.size_ms)} (kept {format_duration(lv.retention_ms)})"
                for lv in gb.stream.levels
            )
            console.print(
                f"    stream: tiles {sizes}; flush every {gb.stream.flush_interval_ms} ms -> "
                f"memcached dataset {gb.stream.dataset}"
            )
            console.print(
                f"    batch:  daily upload -> bulk dataset {gb.batch.dataset}; "
                f"state per busy key <= {_bytes(gb.state_bytes_per_key)}"
            )
            console.print(
                f"    late events -> {gb.source.late_topic}; malformed -> {gb.source.dead_letter_topic}"
            )
        else:
            console.print("    offline only (backfill)")
        console.print()
    for j in p.joins:
        n_features = sum(len(part.features) for part in j.parts) + len(j.derivations)
        console.print(f"[bold magenta]Join {j.name}[/]  {n_features} features  {j.defined_at}")
        for part in j.parts:
            keys = ", ".join(f"{k}<-{c}" for k, c in part.key_map.items())
            console.print(
                f"    {part.group_by}: {len(part.features)} features as {part.prefix}_*  (keys {keys})"
            )
        for d in j.derivations:
            console.print(f"    derive {d.name} = {d.expression}", markup=False, highlight=False)
        console.print()


@app.command()
def backfill(
    path: Path = typer.Argument(..., help="folder of feature definitions"),
    join: str = typer.Option(..., "--join", help="the Join to build a training set for"),
    left: str = typer.Option(
        ..., "--left", help="parquet of labeled requests (keys + ts + label columns), or table:NAME"
    ),
    out: Path | None = typer.Option(None, "--out", help="where to write the training set (parquet folder)"),
    out_table: str | None = typer.Option(
        None, "--out-table", help="also/instead write a Spark table (external at --out when both are given)"
    ),
    catalog: Path | None = typer.Option(
        None, "--catalog", help="TOML file: source table name -> parquet path or Spark table"
    ),
    table: list[str] = typer.Option(
        [], "--table", help="NAME=PATH or NAME=table:DB.NAME, overrides the catalog (repeatable)"
    ),
    serving_delay: str = typer.Option("0ms", help="model online lag: an event counts only if ts < t - delay"),
    keep_order: bool = typer.Option(
        False, "--keep-order", help="write rows in the left's order (a global sort)"
    ),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="progress bar (default: when stderr is a terminal)"
    ),
) -> None:
    """Point-in-time-correct training set: every feature of the Join as the fetcher would have served it."""
    import logging

    from spark_jobs.backfill import run_backfill
    from spark_jobs.catalog import CatalogError, parse_table_flags

    if out is None and out_table is None:
        err.print("give --out DIR and/or --out-table NAME")
        raise typer.Exit(2)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        flags = parse_table_flags(table)
        stats = run_backfill(
            path,
            join,
            left,
            out,
            serving_delay=serving_delay,
            sources=flags,
            catalog=catalog,
            out_table=out_table,
            keep_order=keep_order,
            progress=sys.stderr.isatty() if progress is None else progress,
        )
    except (CatalogError, FileNotFoundError) as e:
        err.print(f"error: {e}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    target = " + ".join(x for x in (str(out) if out else "", f"table {out_table}" if out_table else "") if x)
    console.print(
        f"{stats['rows']:,} rows in {stats['seconds']:.1f} s ({stats['rows_per_s']:,.0f} rows/s) -> {target}",
        markup=False,
        highlight=False,
    )


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False
)
def broker(ctx: typer.Context) -> None:
    """Start/stop the local Kafka-protocol broker, create topics (`tessera broker start --port 9092`)."""
    from flink_jobs.broker import main as broker_main

    raise typer.Exit(broker_main(list(ctx.args)))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False
)
def replay(ctx: typer.Context) -> None:
    """Replay a parquet of events into a topic at a chosen rate (`tessera replay FILE --topic payments --rate 1000`)."""
    from flink_jobs.replay import main as replay_main

    raise typer.Exit(replay_main(list(ctx.args)))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def stream(
    ctx: typer.Context,
    path: Path | None = typer.Argument(None, help="feature repo (default: $TESSERA_REPO)"),
    group_by: list[str] = typer.Option([], "--group-by", help="a GroupBy to run (repeatable); default: all"),
) -> None:
    """The PyFlink tiling job (Kafka -> row logic -> tiles -> memcached), in the Flink environment.

    Extra options go to the job (`python -m flink_jobs.job --help`), e.g. `--restore latest` after a crash.
    """
    import os
    import subprocess

    settings = _settings()
    p = _plan_or_exit(path or settings.repo)
    root = Path(__file__).resolve().parent.parent
    flink_python = root / ".venv-flink" / "bin" / "python"
    if not flink_python.exists():
        err.print("the Flink environment is missing: run `make streaming`")
        raise typer.Exit(1)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    plan_file = settings.data_dir / f"plan-{p.plan_hash}.json"
    plan_file.write_text(p.to_json())
    selection = [a for g in group_by for a in ("--group-by", g)] or ["--all"]
    cmd = [
        str(flink_python),
        "-m",
        "flink_jobs.job",
        "--plan",
        str(plan_file),
        *selection,
        "--bootstrap",
        settings.kafka_bootstrap,
        "--memcached",
        ",".join(settings.memcached),
        "--checkpoint-dir",
        settings.checkpoint_dir,
        *ctx.args,
    ]
    raise typer.Exit(subprocess.call(cmd, env={**os.environ, "PYTHONPATH": str(root)}))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False
)
def upload(ctx: typer.Context) -> None:
    """Daily batch upload (Spark): window state up to a day boundary, as a new bulk-store version."""
    from spark_jobs.upload import main as upload_main

    raise typer.Exit(upload_main(list(ctx.args)))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False
)
def train(ctx: typer.Context) -> None:
    """Train the fraud model (xgboost) on a backfilled training set; report PR-AUC/ROC-AUC and thresholds."""
    from serving.scoring import main as train_main

    raise typer.Exit(train_main(list(ctx.args)))


@app.command()
def serve(
    path: Path | None = typer.Argument(None, help="feature repo (default: $TESSERA_REPO)"),
    host: str | None = typer.Option(None, help="bind address (default: $TESSERA_API_HOST, 127.0.0.1)"),
    port: int | None = typer.Option(None, help="port (default: $TESSERA_API_PORT, 8000)"),
    model_dir: Path | None = typer.Option(None, help="fraud model (default: $TESSERA_MODEL_DIR)"),
    rules: Path | None = typer.Option(None, help="rules file (TOML); default: the built-in rules"),
    decide_join: str = typer.Option("fraud_v1", help="the Join /v1/decide scores"),
    workers: int = typer.Option(
        1,
        min=1,
        help="server processes (uvicorn workers) sharing the port; each has its own fetcher and caches, "
        "and /metrics sums them (prometheus_client multiprocess mode)",
    ),
    blocking: str = typer.Option(
        "inline", help="where fetch and decision run: inline (the event loop's thread) or threads (a pool)"
    ),
    threads: int = typer.Option(4, min=1, help="with --blocking threads: worker threads per process"),
) -> None:
    """The HTTP API: POST /v1/features/{join}, POST /v1/decide, GET /healthz, GET /metrics."""
    import uvicorn

    from serving.http_protocol import http_protocol

    if blocking not in ("inline", "threads"):
        raise typer.BadParameter(f"{blocking!r}: expected inline or threads", param_hint="--blocking")
    settings = _settings()
    repo = path or settings.repo
    p = _plan_or_exit(repo)  # checked once here, so a broken repo fails before any worker starts
    bind = host or settings.api_host
    bind_port = port or settings.api_port
    os.environ.update(
        {
            _SERVE_REPO: str(repo),
            _SERVE_MODEL: str(model_dir or settings.model_dir),
            _SERVE_RULES: str(rules or ""),
            _SERVE_JOIN: decide_join,
            _SERVE_BLOCKING: blocking,
            _SERVE_THREADS: str(threads),
        }
    )
    console.print(f"tessera API on http://{bind}:{bind_port} (plan {p.plan_hash}, {workers} worker(s))")
    if workers == 1:
        uvicorn.run(
            serve_app(),
            host=bind,
            port=bind_port,
            log_level="warning",
            access_log=False,  # (at log level warning never written, but its arguments were built per request)
            http=http_protocol(),
        )
        return
    import tempfile

    # Metrics from every worker: prometheus_client reads this before the workers import it.
    metrics_dir = Path(
        os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="tessera-metrics-")
    )
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):  # values of an earlier run's workers
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    uvicorn.run(
        "tessera.cli:serve_app",
        factory=True,
        workers=workers,
        host=bind,
        port=bind_port,
        log_level="warning",
        access_log=False,
        http=http_protocol(),  # uvicorn's own socket for workers leaves Nagle on (serving/http_protocol.py)
    )


def _settings() -> Any:
    """``Settings.from_env()``, or exit 2 with the variable that is wrong and how to fix it."""
    from tessera.config import Settings

    try:
        return Settings.from_env()
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


_SERVE_REPO, _SERVE_MODEL = "TESSERA_SERVE_REPO", "TESSERA_SERVE_MODEL_DIR"
_SERVE_RULES, _SERVE_JOIN = "TESSERA_SERVE_RULES", "TESSERA_SERVE_DECIDE_JOIN"
_SERVE_BLOCKING, _SERVE_THREADS = "TESSERA_SERVE_BLOCKING", "TESSERA_SERVE_THREADS"


def serve_app() -> Any:
    """The API app of ``tessera serve`` (each worker process builds its own from the environment ``serve``
    set): the plan, the stores of ``Settings``, the rules and the model (inline when fast, see
    :class:`serving.scoring.Decider`)."""
    from features.gcpolicy import quiet_full_collections
    from serving.api import create_app
    from serving.feature_log import FeatureLogger
    from serving.fetcher import Fetcher
    from serving.rules import Rules
    from serving.scoring import Decider
    from tessera.stores import open_bulk, open_stream

    settings = _settings()
    p = compile_repo(load_repo(Path(os.environ.get(_SERVE_REPO) or settings.repo)))
    logger = None
    if settings.feature_log_sample > 0:  # served vectors for the consistency check, off the request path
        logger = FeatureLogger(settings.feature_log, sample_rate=settings.feature_log_sample)
    fetcher = Fetcher(p, (open_bulk(settings.bulk_store), open_stream(settings.memcached)), logger=logger)
    decide_join = os.environ.get(_SERVE_JOIN) or "fraud_v1"
    decider = None
    if decide_join in {j.name for j in p.joins}:
        schema = p.join(decide_join).output_schema
        rules = os.environ.get(_SERVE_RULES)
        rule_set = Rules.load(Path(rules), schema) if rules else Rules.default(schema)
        model = Path(os.environ.get(_SERVE_MODEL) or settings.model_dir)
        decider = Decider(model if model.exists() else None, rule_set, placement="auto")
    blocking = os.environ.get(_SERVE_BLOCKING) or "inline"
    if blocking not in ("inline", "threads"):
        raise ValueError(f"--blocking {blocking!r}: expected inline or threads")
    api = create_app(
        p,
        fetcher,
        decider,
        token=settings.api_token,
        decide_join=decide_join,
        blocking="threads" if blocking == "threads" else "inline",
        threads=int(os.environ.get(_SERVE_THREADS) or 4),
        otel=os.environ.get("TESSERA_API_OTEL", "") == "1",
    )
    if logger is not None:  # write what is queued before the process exits
        api.router.on_shutdown.append(logger.close)
    # What exists now lives as long as the process: frozen; full collections from a timer, not whenever the old
    # generation grew by a quarter (each one paused the worker ~0.1-0.25 s: features/gcpolicy.py).
    quiet_full_collections(float(os.environ.get("TESSERA_API_FULL_GC_S") or 600))
    return api


@app.command()
def demo(
    data_dir: Path = typer.Option(
        Path(".data/demo"), help="the one folder everything the demo makes goes to"
    ),
    days: int = typer.Option(3, help="days of synthetic payments"),
    events_per_day: int = typer.Option(8_000, help="payments per day"),
    live: int = typer.Option(150, help="live payments scored through the API while they stream"),
) -> None:
    """The whole story on embedded defaults, step by step (what `make demo` runs)."""
    from tessera.demo import run_demo

    run_demo(data_dir, days=days, events_per_day=events_per_day, live=live)


def _register_nightly() -> None:
    """``consistency``, ``nightly`` and ``dag`` (tessera.nightly)."""
    from tessera.nightly import consistency_command, dag_command, nightly_command

    app.command("consistency")(consistency_command)
    app.command("nightly")(nightly_command)
    app.command("dag")(dag_command)


_register_nightly()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
