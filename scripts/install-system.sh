#!/usr/bin/env bash
# Installs the Debian packages tessera needs (memcached, Java, PostgreSQL), only when something is missing.
set -euo pipefail
need=()
command -v memcached >/dev/null 2>&1 || need+=(memcached)
# A JDK: Flink and Spark run on Java 17, and the stream job's record batcher (flink_jobs/java) is built with javac.
command -v javac >/dev/null 2>&1 || need+=(openjdk-17-jdk-headless)
# PostgreSQL: the distributed bulk-store option, tested against a real server started by the tests.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# --browser: headless Chromium, to check the consistency report renders (the slow suite).
if [ "${1:-}" = "--browser" ]; then command -v chromium >/dev/null 2>&1 || need+=(chromium); fi
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "tessera: installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${need[@]}" >/dev/null
# The Debian package starts a memcached on 11211; tessera starts its own servers on other ports.
if command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now memcached >/dev/null 2>&1 || true
  $SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true
fi
