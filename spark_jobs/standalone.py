"""A real Spark standalone cluster on loopback: one Master and one Worker, started from the pyspark wheel.

Both are the daemons a cluster runs (``spark-class org.apache.spark.deploy.master.Master`` / ``…worker.Worker``),
here as local processes on free 127.0.0.1 ports, tracked by PID, logging to a folder. Jobs reach it with
``spark-submit --master spark://127.0.0.1:PORT`` (:mod:`spark_jobs.submit`); executors run in the Worker's own
JVMs and Python workers, so a job that works here does not rely on the driver's process.

Command line::

    python -m spark_jobs.standalone start --state-dir .data/spark-cluster [--cores 1 --memory 2g]
    python -m spark_jobs.standalone status --state-dir .data/spark-cluster
    python -m spark_jobs.standalone stop --state-dir .data/spark-cluster

``start`` prints the master URL (also in ``<state dir>/cluster.json``) once the Worker has registered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kvstore.services import free_port

HOST = "127.0.0.1"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


class ClusterError(RuntimeError):
    """The cluster did not come up (the message names the log to read)."""


def spark_home() -> Path:
    """The Spark distribution inside the pyspark wheel (its ``bin/spark-class`` and ``jars/``)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def spark_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a Spark daemon or ``spark-submit``: loopback, this interpreter for Python workers."""
    import sys

    env = dict(os.environ if base is None else base)
    env["SPARK_HOME"] = str(spark_home())
    env["SPARK_LOCAL_IP"] = HOST
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    env.setdefault("SPARK_DAEMON_MEMORY", "256m")
    return env


@dataclass
class StandaloneCluster:
    """A running Master + Worker. ``master_url`` is what ``spark-submit --master`` takes."""

    master_url: str
    master_pid: int
    worker_pid: int
    master_ui: str
    state_dir: str

    def workers(self) -> list[dict[str, Any]]:
        """The Master's view of its Workers (its JSON status page)."""
        with urllib.request.urlopen(f"{self.master_ui}/json/", timeout=5) as r:
            workers: list[dict[str, Any]] = json.loads(r.read()).get("workers", [])
        return workers

    def applications(self) -> list[dict[str, Any]]:
        """Finished and running applications, as the Master lists them."""
        with urllib.request.urlopen(f"{self.master_ui}/json/", timeout=5) as r:
            status = json.loads(r.read())
        return [*status.get("activeapps", []), *status.get("completedapps", [])]

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the Worker (it kills its executors), then the Master; SIGKILL what is left after the timeout."""
        for pid in (self.worker_pid, self.master_pid):
            _stop_pid(pid, timeout_s)
        with contextlib.suppress(FileNotFoundError):
            (Path(self.state_dir) / "cluster.json").unlink()

    def __enter__(self) -> StandaloneCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _is_spark_daemon(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return MASTER_CLASS in cmdline or WORKER_CLASS in cmdline


def _stop_pid(pid: int, timeout_s: float) -> None:
    if not _is_spark_daemon(pid):  # gone already, or the PID now belongs to something else
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if not _is_spark_daemon(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _launch(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def start_cluster(
    state_dir: str | Path,
    *,
    cores: int = 1,
    memory: str = "2g",
    timeout_s: float = 90.0,
) -> StandaloneCluster:
    """Start a Master and one Worker (``cores``, ``memory``) on free loopback ports; return once the Worker is
    ALIVE at the Master. Logs: ``<state_dir>/master.log``, ``worker.log``; executors' work dirs: ``work/``."""
    state = Path(state_dir).resolve()
    (state / "work").mkdir(parents=True, exist_ok=True)
    env = spark_env()
    spark_class = str(spark_home() / "bin" / "spark-class")
    port, ui = free_port(), free_port()
    master = _launch(
        [spark_class, MASTER_CLASS, "--host", HOST, "--port", str(port), "--webui-port", str(ui)],
        state / "master.log",
        env,
    )
    cluster = StandaloneCluster(f"spark://{HOST}:{port}", master.pid, -1, f"http://{HOST}:{ui}", str(state))
    try:
        _wait(lambda: cluster.workers() is not None, master, state / "master.log", timeout_s, "the Master")
        worker = _launch(
            [
                spark_class,
                WORKER_CLASS,
                cluster.master_url,
                "--host",
                HOST,
                "--port",
                str(free_port()),
                "--webui-port",
                str(free_port()),
                "--cores",
                str(cores),
                "--memory",
                memory,
                "--work-dir",
                str(state / "work"),
            ],
            state / "worker.log",
            env,
        )
        cluster.worker_pid = worker.pid
        _wait(
            lambda: any(w.get("state") == "ALIVE" for w in cluster.workers()),
            worker,
            state / "worker.log",
            timeout_s,
            "the Worker",
        )
    except BaseException:
        cluster.stop()
        raise
    (state / "cluster.json").write_text(json.dumps(asdict(cluster)))
    return cluster


def _wait(ready: Any, proc: subprocess.Popen[bytes], log: Path, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"{what} exited with code {proc.returncode}; see {log}")
        with contextlib.suppress(OSError, ValueError):
            if ready():
                return
        time.sleep(0.25)
    raise ClusterError(f"{what} not ready after {timeout_s:.0f} s; see {log}")


def running_cluster(state_dir: str | Path) -> StandaloneCluster | None:
    """The cluster ``start`` recorded in ``state_dir``, if its processes are still Spark daemons."""
    path = Path(state_dir) / "cluster.json"
    if not path.exists():
        return None
    cluster = StandaloneCluster(**json.loads(path.read_text()))
    if not (_is_spark_daemon(cluster.master_pid) or _is_spark_daemon(cluster.worker_pid)):
        return None
    return cluster


@contextlib.contextmanager
def standalone_cluster(state_dir: str | Path, **kwargs: Any) -> Iterator[StandaloneCluster]:
    """``with standalone_cluster(dir) as c: ... c.master_url ...`` — stopped on exit, whatever happens."""
    cluster = start_cluster(state_dir, **kwargs)
    try:
        yield cluster
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spark_jobs.standalone", description=__doc__.split("\n")[0]
    )
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--state-dir", default=".data/spark-cluster", help="logs, work dirs and cluster.json")
    parser.add_argument("--cores", type=int, default=1, help="the Worker's cores")
    parser.add_argument("--memory", default="2g", help="the Worker's memory for executors")
    args = parser.parse_args(argv)
    current = running_cluster(args.state_dir)
    if args.action == "start":
        if current is not None:
            print(f"already running: {current.master_url} (stop it first)")
            return 1
        cluster = start_cluster(args.state_dir, cores=args.cores, memory=args.memory)
        print(cluster.master_url)
        return 0
    if args.action == "stop":
        if current is None:
            print("no cluster running")
            return 0
        current.stop()
        print(f"stopped {current.master_url}")
        return 0
    if current is None:
        print("no cluster running")
        return 1
    alive = sum(w.get("state") == "ALIVE" for w in current.workers())
    print(f"{current.master_url}: {alive} worker(s) alive, UI {current.master_ui}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
