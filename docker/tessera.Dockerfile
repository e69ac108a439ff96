# syntax=docker/dockerfile:1.7
# The tessera image: the CLI, the HTTP API (`tessera serve`) and the Spark client + Spark standalone master/worker
# (the pyspark wheel ships Spark's jars and `spark-class`), so drivers and executors run the very same Python,
# pyspark and tessera code. Everything but the Flink job (that one needs pyarrow < 17: docker/flink.Dockerfile).
#
#   docker build -f docker/tessera.Dockerfile -t tessera:dev .        # context = the repository root
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    JAVA_HOME=/opt/java \
    PYSPARK_PYTHON=/usr/local/bin/python \
    PYSPARK_DRIVER_PYTHON=/usr/local/bin/python

# Java 17 for Spark, from Debian. The man-page folder must exist for the JRE's post-install on slim images;
# procps gives Spark's scripts `ps`. JAVA_HOME is a fixed symlink so it is the same on amd64 and arm64.
RUN set -eux; \
    mkdir -p /usr/share/man/man1; \
    apt-get update; \
    apt-get install -y --no-install-recommends openjdk-17-jre-headless procps; \
    rm -rf /var/lib/apt/lists/*; \
    ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java; \
    java -version

WORKDIR /opt/tessera

# Dependencies first (their own layer, rebuilt only when pyproject.toml changes): the core + the `main` extra.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['main']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code and the feature repository (features/fraud is the default TESSERA_REPO).
COPY features ./features
COPY kvstore ./kvstore
COPY flink_jobs ./flink_jobs
COPY spark_jobs ./spark_jobs
COPY serving ./serving
COPY tessera ./tessera
RUN pip install --no-deps . && tessera --help >/dev/null

# A non-root user; /data (TESSERA_DATA_DIR) and /plans exist and are owned by it, so named volumes mounted there
# inherit that ownership on first use.
RUN set -eux; \
    groupadd --system --gid 10001 tessera; \
    useradd --system --uid 10001 --gid tessera --home-dir /home/tessera --create-home tessera; \
    mkdir -p /data /plans; \
    chown tessera:tessera /data /plans
USER tessera

ENV TESSERA_REPO=/opt/tessera/features/fraud \
    TESSERA_DATA_DIR=/data \
    TESSERA_API_HOST=0.0.0.0 \
    TESSERA_API_PORT=8000

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TESSERA_API_PORT', '8000') + '/healthz', timeout=2)"]
CMD ["tessera", "serve"]
