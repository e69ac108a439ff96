"""Start and stop the real servers kvstore talks to, on loopback, for tests, benchmarks and local runs.

Where a Docker engine is reachable (``docker_available``) and ``TESSERA_SERVICES`` is not ``process``, the same
servers run as containers through testcontainers; otherwise (these machines) they run as child processes on
127.0.0.1 and are tracked by PID. Either way a :class:`Service` is returned only once it answers.

Command line (used by ``make`` targets)::

    python -m kvstore.services start memcached --nodes 3 --port 11311 --state-dir .data/services
    python -m kvstore.services start postgres --port 55432 --state-dir .data/services
    python -m kvstore.services stop --state-dir .data/services
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvstore.errors import KVStoreError

HOST = "127.0.0.1"


class ServiceError(KVStoreError):
    """A server could not be started (binary missing, did not become ready)."""


def docker_available() -> bool:
    """True if a Docker engine answers (through the ``docker`` client library that testcontainers uses)."""
    if os.environ.get("TESSERA_SERVICES", "auto") == "process":
        return False
    if not (os.environ.get("DOCKER_HOST") or os.path.exists("/var/run/docker.sock")):
        return False
    try:
        # By name: the repository's own docker/ folder (images, compose) must not shadow the client library.
        docker: Any = importlib.import_module("docker")
        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


try:
    _LIBC: Any = ctypes.CDLL(None, use_errno=True)
except OSError:  # not Linux/glibc: servers then outlive a killed test run, as they would anyway
    _LIBC = None


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGKILL it when the starting process dies (no leaked servers).

    Only a call into an already-loaded C function: nothing here may import or allocate much after fork.
    """
    if _LIBC is not None:
        _LIBC.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    """A running server: where it listens and how to stop, kill, pause or resume it."""

    kind: str
    host: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    container: Any = None
    workdir: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # memcached holds nothing worth a graceful exit (its SIGTERM path takes up to ~2 s); PostgreSQL's SIGINT is
    # its "fast" shutdown (SIGTERM would wait for every client to disconnect).
    stop_signal: signal.Signals = signal.SIGKILL

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL (a crash)."""
        if self.container is not None:
            self.container.get_wrapped_container().kill()
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it accepts connections but never answers — a hung node."""
        if self.container is not None:
            self.container.get_wrapped_container().pause()
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.container is not None:
            self.container.get_wrapped_container().unpause()
        self._signal(signal.SIGCONT)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop (``stop_signal``, then SIGKILL after ``timeout_s``) and remove its working directory."""
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.stop()
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGCONT)
            self._signal(self.stop_signal)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout=timeout_s)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _wait_ready(check: Any, what: str, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise ServiceError(
                f"{what} exited with code {proc.returncode} while starting: {err.strip()[-800:]}"
            )
        if check():
            return
        time.sleep(0.02)
    raise ServiceError(f"{what} did not become ready within {timeout_s} s")


def _memcached_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"version\r\n")
            return s.recv(64).startswith(b"VERSION")
    except OSError:
        return False


def start_memcached(
    port: int | None = None,
    memory_mb: int = 64,
    item_size_max: str = "1m",
    ready_timeout_s: float = 10.0,
    die_with_parent: bool = True,
) -> Service:
    """Start one memcached on loopback (``-l 127.0.0.1``) and return it once it answers ``version``.

    With ``die_with_parent`` (tests, benchmarks) the server is killed if the starting process dies.
    """
    if docker_available():
        from testcontainers.core.container import DockerContainer

        c = DockerContainer("memcached:1.6").with_exposed_ports(11211)
        c.with_command(f"-m {memory_mb} -I {item_size_max}")
        c.start()
        host, cport = c.get_container_host_ip(), int(c.get_exposed_port(11211))
        _wait_ready(lambda: _memcached_answers(host, cport), "memcached container", None, ready_timeout_s)
        return Service("memcached", host, cport, container=c)
    binary = shutil.which("memcached")
    if binary is None:
        raise ServiceError("memcached is not installed: run `make system` (apt-get install memcached)")
    port = port or free_port()
    cmd = [
        binary,
        "-l",
        HOST,
        "-p",
        str(port),
        "-U",
        "0",
        "-m",
        str(memory_mb),
        "-I",
        item_size_max,
        "-t",
        "2",
    ]
    proc = subprocess.Popen(
        cmd,
        # As root, drop to nobody before exec (not with memcached's -u, which would reset the death signal).
        user="nobody" if os.geteuid() == 0 else None,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_die_with_parent if die_with_parent else None,
    )
    _wait_ready(lambda: _memcached_answers(HOST, port), f"memcached on {HOST}:{port}", proc, ready_timeout_s)
    return Service("memcached", HOST, port, proc=proc)


def start_memcached_cluster(nodes: int = 3, **kwargs: Any) -> list[Service]:
    """Start ``nodes`` memcached servers; stop the ones started if any fails."""
    started: list[Service] = []
    try:
        for _ in range(nodes):
            started.append(start_memcached(**kwargs))
    except BaseException:
        for s in started:
            s.stop()
        raise
    return started


def postgres_bin_dir() -> str | None:
    """Directory of the newest installed PostgreSQL server binaries, or None."""
    initdb = shutil.which("initdb")
    if initdb and os.path.exists(os.path.join(os.path.dirname(os.path.realpath(initdb)), "pg_isready")):
        return os.path.dirname(os.path.realpath(initdb))
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(found[-1]) if found else None


def _remove_orphaned_pg_dirs(min_age_s: float = 3600.0) -> None:
    """Delete working directories left by killed runs: older than ``min_age_s`` and with no live server."""
    for d in glob.glob(os.path.join(tempfile.gettempdir(), "tessera-pg-*")):
        try:
            if time.time() - os.path.getmtime(d) < min_age_s:
                continue
            pidfile = os.path.join(d, "data", "postmaster.pid")
            if os.path.exists(pidfile):
                with open(pidfile) as f:
                    os.kill(int(f.readline()), 0)
                continue  # its server is alive
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue
        shutil.rmtree(d, ignore_errors=True)


def _pg_answers(bindir: str, port: int) -> bool:
    r = subprocess.run(
        [f"{bindir}/pg_isready", "-q", "-h", HOST, "-p", str(port), "-U", "tessera", "-d", "postgres"],
        check=False,
    )
    return r.returncode == 0


def start_postgres(
    port: int | None = None, ready_timeout_s: float = 60.0, die_with_parent: bool = True
) -> Service:
    """Start a throw-away PostgreSQL on loopback (trust auth, user ``tessera``); ``extra["dsn"]`` connects.

    The cluster lives in a temporary directory removed by ``stop``. fsync is off: it is for tests and
    benchmarks, not for data worth keeping. As root the server runs as the ``postgres`` user (PostgreSQL
    refuses root).
    """
    if docker_available():
        from testcontainers.core.container import DockerContainer

        c = DockerContainer("postgres:16").with_exposed_ports(5432)
        c.with_env("POSTGRES_USER", "tessera").with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
        c.start()
        host, cport = c.get_container_host_ip(), int(c.get_exposed_port(5432))
        dsn = f"postgresql://tessera@{host}:{cport}/postgres"
        _wait_ready(lambda: _tcp_open(host, cport), "postgres container", None, ready_timeout_s)
        return Service("postgres", host, cport, container=c, extra={"dsn": dsn})
    bindir = postgres_bin_dir()
    if bindir is None:
        raise ServiceError(
            "PostgreSQL is not installed: apt-get install postgresql (see scripts/install-system.sh)"
        )
    user = "postgres" if os.geteuid() == 0 else None
    _remove_orphaned_pg_dirs()
    workdir = tempfile.mkdtemp(prefix="tessera-pg-")
    if user:
        shutil.chown(workdir, user)
    data = os.path.join(workdir, "data")
    init = subprocess.run(
        [
            f"{bindir}/initdb",
            "-D",
            data,
            "-U",
            "tessera",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ],
        user=user,
        capture_output=True,
        check=False,
    )
    if init.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        raise ServiceError(f"initdb failed: {init.stderr.decode(errors='replace')[-800:]}")
    port = port or free_port()
    settings = {
        "listen_addresses": HOST,
        "port": str(port),
        "unix_socket_directories": "",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "60",
        "shared_buffers": "256MB",
        "maintenance_work_mem": "256MB",
        "max_wal_size": "4GB",
        "wal_level": "minimal",
        "max_wal_senders": "0",
    }
    cmd = [f"{bindir}/postgres", "-D", data] + [a for k, v in settings.items() for a in ("-c", f"{k}={v}")]
    proc = subprocess.Popen(
        cmd,
        user=user,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_die_with_parent if die_with_parent else None,
    )
    try:
        _wait_ready(lambda: _pg_answers(bindir, port), f"postgres on {HOST}:{port}", proc, ready_timeout_s)
    except BaseException:
        Service("postgres", HOST, port, proc=proc, workdir=workdir, stop_signal=signal.SIGINT).stop()
        raise
    dsn = f"postgresql://tessera@{HOST}:{port}/postgres"
    return Service(
        "postgres", HOST, port, proc=proc, workdir=workdir, extra={"dsn": dsn}, stop_signal=signal.SIGINT
    )


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# -- command line: long-lived servers for `make`, tracked by PID files -------------------------------------
def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kvstore.services", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("start", help="start servers in the background")
    st.add_argument("kind", choices=["memcached", "postgres"])
    st.add_argument("--nodes", type=int, default=3)
    st.add_argument("--port", type=int, default=0, help="first port (0 = any free port)")
    st.add_argument("--memory-mb", type=int, default=256)
    for name in ("stop", "status"):
        sub.add_parser(name)
    for p in sub.choices.values():
        p.add_argument("--state-dir", default=".data/services")
    args = ap.parse_args(argv)
    state = Path(args.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    if args.cmd == "start":
        started = (
            [
                start_memcached(args.port + i if args.port else None, args.memory_mb, die_with_parent=False)
                for i in range(args.nodes)
            ]
            if args.kind == "memcached"
            else [start_postgres(args.port or None, die_with_parent=False)]
        )
        for s in started:
            record = {"kind": s.kind, "address": s.address, "pid": s.pid, "workdir": s.workdir, **s.extra}
            (state / f"{s.kind}-{s.port}.json").write_text(json.dumps(record))
            print(json.dumps(record))
        return 0
    for f in sorted(state.glob("*.json")):
        rec = json.loads(f.read_text())
        if args.cmd == "status":
            print(json.dumps(rec))
            continue
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(rec["pid"], signal.SIGINT if rec["kind"] == "postgres" else signal.SIGKILL)
        if rec.get("workdir"):
            time.sleep(0.5)
            shutil.rmtree(rec["workdir"], ignore_errors=True)
        f.unlink()
        print(f"stopped {rec['kind']} {rec['address']} (pid {rec['pid']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
