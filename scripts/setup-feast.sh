#!/usr/bin/env bash
# Create .venv-feast, idempotently (fast when already done): Feast from PyPI, pinned, in its own environment.
# Feast pins pyarrow/pandas/numpy differently from tessera's .venv, so (like .venv-flink for PyFlink) it lives
# apart; bench/bench_feast.py runs from .venv and drives Feast through this venv's python and `feast` CLI.
# The online store is Feast's SQLite store (built in: no extra, no system package).
# Nothing here is committed (.venv-feast/ is gitignored). Usage: scripts/setup-feast.sh [--force]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
FEAST_VENV="${FEAST_VENV:-$ROOT/.venv-feast}"
FEAST_PKG="feast==0.67.0"

FORCE=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        *) echo "usage: $0 [--force]" >&2; exit 2 ;;
    esac
done

log() { printf '[setup-feast] %s\n' "$*" >&2; }
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
from feast.infra.online_stores.sqlite import SqliteOnlineStore  # noqa: F401  the online store the bench uses

print(
    f"[setup-feast] feast venv ok: feast {md.version('feast')}, pyarrow {md.version('pyarrow')}, "
    f"pandas {md.version('pandas')}, python {sys.version.split()[0]}",
    file=sys.stderr,
)
PY
[[ -x "$FEAST_VENV/bin/feast" ]] || { log "no feast CLI in $FEAST_VENV/bin"; exit 1; }
log "done"
