"""A local Kafka-protocol broker for development and tests, started as a process on loopback.

The broker is tansu (a Kafka-wire-compatible broker, one binary; ``scripts/setup-streaming.sh`` fetches it to
``.tools/bin/tansu``). Nothing in tessera depends on tansu itself: everything talks the Kafka protocol, so on a
real deployment the same code points at Apache Kafka. Runs in the main environment (kafka-python); it never
imports pyflink.

    with local_broker() as b:
        create_topics(b.bootstrap, {"payments": 4})
        ...

Command line (what ``make`` uses)::

    python -m flink_jobs.broker start [--port 9092] [--pid-file .data/broker/tansu.pid]
    python -m flink_jobs.broker topics --bootstrap 127.0.0.1:9092 payments=4 payments-dlq=1
    python -m flink_jobs.broker stop [--pid-file ...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TANSU = ROOT / ".tools" / "bin" / "tansu"
DEFAULT_STATE_DIR = ROOT / ".data" / "broker"
LOOPBACK = "127.0.0.1"


class BrokerError(RuntimeError):
    """The broker could not be found, started or reached."""


def tansu_binary() -> Path:
    """The broker binary: ``$TESSERA_TANSU``, else ``.tools/bin/tansu``, else ``tansu`` on PATH."""
    env = os.environ.get("TESSERA_TANSU")
    if env:
        return Path(env)
    if DEFAULT_TANSU.exists():
        return DEFAULT_TANSU
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerError(f"no tansu binary at {DEFAULT_TANSU}; run scripts/setup-streaming.sh")


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` right now (the usual bind-to-0 trick; racy only in theory)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until_ready(
    bootstrap: str, timeout_s: float = 15.0, process: subprocess.Popen[bytes] | None = None
) -> float:
    """Block until a Kafka metadata request to ``bootstrap`` succeeds; returns the seconds waited.

    Raises BrokerError on timeout or if ``process`` (the broker we started) exits meanwhile.
    """
    from kafka import KafkaAdminClient

    t0 = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - t0 < timeout_s:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"broker exited with code {process.returncode} before it was ready")
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id="tessera-ready-probe",
                request_timeout_ms=2000,
                bootstrap_timeout_ms=2000,
                reconnect_backoff_max_ms=200,
            )
            try:
                admin.describe_cluster()  # a Metadata request
            finally:
                admin.close()
            return time.monotonic() - t0
        except Exception as exc:  # NoBrokersAvailable, timeouts, connection refused ...
            last = exc
            time.sleep(0.05)
    raise BrokerError(f"broker at {bootstrap} not ready after {timeout_s:.0f} s: {last!r}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _pid_is_tansu(pid: int) -> bool:
    """Guard against PID reuse: only signal a process whose command line names the broker binary."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return _pid_alive(pid)  # no /proc: trust the PID file
    return b"tansu" in cmdline


def stop_pid(pid: int, grace_s: float = 5.0) -> bool:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL. Returns True if the process was running."""
    if not _pid_alive(pid) or not _pid_is_tansu(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


@dataclass
class LocalBroker:
    """A running tansu broker started by this module (see :func:`start_broker`)."""

    host: str
    port: int
    pid: int
    pid_file: Path
    log_file: Path
    startup_s: float
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def running(self) -> bool:
        return _pid_alive(self.pid)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop by PID (SIGTERM, then SIGKILL) and remove the PID file."""
        stop_pid(self.pid, grace_s)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)  # reap our child
        with contextlib.suppress(FileNotFoundError):
            if self.pid_file.read_text().strip() == str(self.pid):
                self.pid_file.unlink()

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_broker(
    port: int | None = None,
    *,
    host: str = LOOPBACK,
    pid_file: Path | str | None = None,
    log_file: Path | str | None = None,
    cluster_id: str = "tessera",
    binary: Path | str | None = None,
    timeout_s: float = 15.0,
) -> LocalBroker:
    """Start tansu (memory storage) listening on ``host:port`` only; return once it answers Metadata.

    ``port=None`` picks a free port. The PID goes to ``pid_file`` (default ``.data/broker/tansu-<port>.pid``),
    the broker's output to ``log_file`` (default next to it). The process gets its own session, so it outlives a
    Ctrl-C in the shell that started it; stop it with :meth:`LocalBroker.stop` or :func:`stop_broker`.
    """
    if host not in (LOOPBACK, "localhost", "::1"):
        raise BrokerError(f"refusing to bind the development broker to {host!r}: loopback only")
    exe = Path(binary) if binary else tansu_binary()
    port = port or free_port(host)
    pid_path = Path(pid_file) if pid_file else DEFAULT_STATE_DIR / f"tansu-{port}.pid"
    log_path = Path(log_file) if log_file else pid_path.with_suffix(".log")
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if pid_path.exists():
        old = pid_path.read_text().strip()
        if old.isdigit() and _pid_alive(int(old)) and _pid_is_tansu(int(old)):
            raise BrokerError(f"a broker is already running with PID {old} ({pid_path}); stop it first")

    url = f"tcp://{host}:{port}"
    cmd = [
        str(exe),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
        "--cluster-id",
        cluster_id,
    ]
    # tansu also reads its settings from the environment; drop those so the flags above are the whole story.
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "CLUSTER_ID",
            "LISTENER_URL",
            "ADVERTISED_LISTENER_URL",
            "STORAGE_ENGINE",
            "SCHEMA_REGISTRY",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        }
    }
    t0 = time.monotonic()
    log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    finally:
        log.close()
    pid_path.write_text(f"{proc.pid}\n")
    broker = LocalBroker(host, port, proc.pid, pid_path, log_path, 0.0, proc)
    try:
        wait_until_ready(broker.bootstrap, timeout_s, proc)
    except BaseException:
        broker.stop(grace_s=1.0)
        tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        raise BrokerError(f"tansu did not become ready on {broker.bootstrap}; log tail:\n{tail}") from None
    broker.startup_s = time.monotonic() - t0
    return broker


def stop_broker(pid_file: Path | str) -> bool:
    """Stop the broker whose PID is in ``pid_file``; True if one was running. Removes the file."""
    path = Path(pid_file)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return False
    stopped = text.isdigit() and stop_pid(int(text))
    path.unlink(missing_ok=True)
    return stopped


@contextlib.contextmanager
def local_broker(port: int | None = None, **kwargs: Any) -> Iterator[LocalBroker]:
    """Start a broker for the ``with`` block; always stopped at the end."""
    broker = start_broker(port, **kwargs)
    try:
        yield broker
    finally:
        broker.stop()


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    replication_factor: int = 1,
    exist_ok: bool = True,
    timeout_s: float = 15.0,
) -> dict[str, int]:
    """Create ``{name: partitions}`` and wait until every partition has a leader.

    Returns ``{name: partitions}`` as the broker describes them afterwards. With ``exist_ok`` an existing topic
    is left as it is (its partition count is reported, not changed).
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tessera-admin", request_timeout_ms=10000)
    try:
        existing = set(admin.list_topics())
        clash = sorted(set(topics) & existing)
        if clash and not exist_ok:
            raise BrokerError(f"topics already exist: {clash}")
        new = [
            NewTopic(name=name, num_partitions=int(n), replication_factor=replication_factor)
            for name, n in topics.items()
            if name not in existing
        ]
        if new:
            admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
        admin.wait_for_topics(list(topics), timeout_ms=int(timeout_s * 1000))
        described = admin.describe_topics(list(topics))
        return {t.get("name", t.get("topic")): len(t["partitions"]) for t in described}
    finally:
        admin.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flink_jobs.broker", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start tansu on loopback, write a PID file, print the bootstrap address")
    s.add_argument("--port", type=int, default=9092)
    s.add_argument("--pid-file", type=Path, default=DEFAULT_STATE_DIR / "tansu.pid")
    s.add_argument("--log-file", type=Path, default=None)
    s.add_argument("--topics", nargs="*", default=[], metavar="NAME=PARTITIONS")
    t = sub.add_parser("stop", help="stop the broker named by the PID file")
    t.add_argument("--pid-file", type=Path, default=DEFAULT_STATE_DIR / "tansu.pid")
    c = sub.add_parser("topics", help="create topics NAME=PARTITIONS ...")
    c.add_argument("--bootstrap", default=f"{LOOPBACK}:9092")
    c.add_argument("topics", nargs="+", metavar="NAME=PARTITIONS")
    args = p.parse_args(argv)

    def parse_topics(specs: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for spec in specs:
            name, _, n = spec.partition("=")
            out[name] = int(n or 1)
        return out

    if args.cmd == "start":
        b = start_broker(args.port, pid_file=args.pid_file, log_file=args.log_file)
        if args.topics:
            create_topics(b.bootstrap, parse_topics(args.topics))
        print(f"broker ready on {b.bootstrap} in {b.startup_s:.2f} s (pid {b.pid}, pid file {b.pid_file})")
        return 0
    if args.cmd == "stop":
        stopped = stop_broker(args.pid_file)
        print("broker stopped" if stopped else f"no broker running for {args.pid_file}")
        return 0
    made = create_topics(args.bootstrap, parse_topics(args.topics))
    print(" ".join(f"{k}={v}" for k, v in made.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
