#!/usr/bin/env bash
# Create .venv-feast, idempotently (fast when already done): Feast from PyPI, pinned, in its own environment.
# Feast pins pyarrow/pandas/numpy differently from tessera's .venv, so (like .venv-flink for PyFlink) it lives
# apart; bench/bench_feast.py runs from .venv and drives Feast through this venv's python and `feast` CLI.
# Online stores: Feast's SQLite store (built in) and its Redis store (the `redis` extra, plus the Debian
# redis-server, installed with apt-get only when missing; the bench starts its own server on a free port).
# Nothing here is committed (.venv-feast/ is gitignored). Usage: scripts/setup-feast.sh [--force]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
FEAST_VENV="${FEAST_VENV:-$ROOT/.venv-feast}"
FEAST_PKG="feast[redis]==0.67.0"

FORCE=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        *) echo "usage: $0 [--force]" >&2; exit 2 ;;
    esac
done

log() { printf '[setup-feast] %s\n' "$*" >&2; }

if ! command -v redis-server >/dev/null 2>&1; then
    SUDO=""
    [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
    log "installing the redis-server Debian package (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq redis-server >/dev/null
    # The package may start a server on 6379; the bench starts its own on a free loopback port.
    if command -v systemctl >/dev/null 2>&1; then
        $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
    fi
fi
# This machine's pip config names local find-links folders that may not exist; drop pip's noise about them.
pip_quiet() { "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }

STAMP="$FEAST_VENV/.installed-$(echo "$FEAST_PKG" | cksum | cut -d' ' -f1)"
FPY="$FEAST_VENV/bin/python"
if [[ $FORCE == 0 && -f "$STAMP" && -x "$FPY" ]]; then
    log "feast venv: present ($FEAST_VENV)"
else
    [[ -x "$FPY" ]] || { log "feast venv: creating $FEAST_VENV"; "$PYTHON" -m venv "$FEAST_VENV"; }
    log "feast venv: installing $FEAST_PKG (first time ~2 min)"
    pip_quiet "$FPY" -m pip install -q --disable-pip-version-check --upgrade pip
    pip_quiet "$FPY" -m pip install -q --disable-pip-version-check "$FEAST_PKG"
    rm -f "$FEAST_VENV"/.installed-*
    touch "$STAMP"
fi

# Verify every time: cheap, and catches a broken tree early.
"$FPY" - <<'PY'
import importlib.metadata as md
import sys

import feast  # noqa: F401
from feast.infra.online_stores.redis import RedisOnlineStore  # noqa: F401  the online stores the bench uses
from feast.infra.online_stores.sqlite import SqliteOnlineStore  # noqa: F401

print(
    f"[setup-feast] feast venv ok: feast {md.version('feast')}, pyarrow {md.version('pyarrow')}, "
    f"pandas {md.version('pandas')}, redis-py {md.version('redis')}, python {sys.version.split()[0]}",
    file=sys.stderr,
)
PY
[[ -x "$FEAST_VENV/bin/feast" ]] || { log "no feast CLI in $FEAST_VENV/bin"; exit 1; }
log "done"
