# syntax=docker/dockerfile:1.7
# The Flink image: the official Flink 2.x image (Java 17) + a Python 3.11 environment with apache-flink and
# tessera's pure packages (pyarrow stays at apache-flink's pin, < 17), + the Kafka connector jars in /opt/flink/lib.
# Used for the JobManager, the TaskManagers and the one-shot job submitter (`flink run -py`). The same pins as
# scripts/setup-streaming.sh (tests/deploy/test_docker_static.py checks they agree).
#
#   docker build -f docker/flink.Dockerfile -t tessera-flink:dev .    # context = the repository root
ARG FLINK_VERSION=2.3.0
ARG UV_VERSION=0.9.5

# uv only to get a portable CPython 3.11 (python-build-standalone) onto the Ubuntu-based Flink image.
FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

FROM flink:${FLINK_VERSION}-java17
ARG FLINK_VERSION
ARG PYTHON_VERSION=3.11
ARG APACHE_FLINK=apache-flink==2.3.0
ARG JARS_WHEEL=shigawire-apache-flink-libraries==2.0.0.post1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    TESSERA_VENV=/opt/tessera-venv
ENV PATH=${TESSERA_VENV}/bin:${PATH}

COPY --from=uv /uv /usr/local/bin/uv

# 1. Python 3.11 + a venv with apache-flink (it brings apache-beam and pyarrow 16.x). The installed PyFlink must be
#    the cluster's Flink version.
RUN set -eux; \
    uv python install "${PYTHON_VERSION}"; \
    uv venv --seed --python "${PYTHON_VERSION}" "${TESSERA_VENV}"; \
    "${TESSERA_VENV}/bin/python" -m pip install "${APACHE_FLINK}"; \
    test "$("${TESSERA_VENV}/bin/python" -c 'import importlib.metadata as m; print(m.version("apache-flink"))')" = "${FLINK_VERSION}"

# 2. The Kafka connector + kafka-clients jars, extracted from a PyPI wheel (the wheel itself is not installed).
RUN set -eux; \
    "${TESSERA_VENV}/bin/python" -m pip download --no-deps "${JARS_WHEEL}" -d /tmp/jars-wheel; \
    "${TESSERA_VENV}/bin/python" -c "import glob, zipfile; \
z = zipfile.ZipFile(glob.glob('/tmp/jars-wheel/*.whl')[0]); \
[open('/opt/flink/lib/' + n.rsplit('/', 1)[1], 'wb').write(z.read(n)) \
 for n in ('pyflink/lib/flink-connector-kafka.jar', 'pyflink/lib/kafka-clients.jar')]"; \
    rm -rf /tmp/jars-wheel; \
    chown flink:flink /opt/flink/lib/flink-connector-kafka.jar /opt/flink/lib/kafka-clients.jar

# 3. tessera's pure packages, resolved against what apache-flink installed (pip freeze as constraints), so its
#    own dependencies (sqlglot, datasketches, numpy) never move pyarrow past Flink's pin.
WORKDIR /opt/tessera
COPY pyproject.toml README.md ./
COPY features ./features
COPY kvstore ./kvstore
COPY flink_jobs ./flink_jobs
COPY tessera/__init__.py tessera/config.py ./tessera/
RUN set -eux; \
    "${TESSERA_VENV}/bin/python" -m pip freeze | grep '==' > /tmp/flink-constraints.txt; \
    "${TESSERA_VENV}/bin/python" -m pip install -c /tmp/flink-constraints.txt sqlglot datasketches numpy; \
    "${TESSERA_VENV}/bin/python" -m pip install --no-deps -e .; \
    rm /tmp/flink-constraints.txt; \
    "${TESSERA_VENV}/bin/python" -c "import importlib.metadata as m, sys; import features, flink_jobs, pyflink; \
v = m.version('pyarrow'); sys.exit(0 if int(v.split('.')[0]) < 17 else 'pyarrow ' + v + ' in the Flink image')"; \
    mkdir -p /flink-checkpoints /plans; \
    chown flink:flink /flink-checkpoints /plans

# The Python the Flink workers and the `flink run` client use (compose also passes -pyexec/-pyclientexec).
RUN printf '\npython.executable: %s\npython.client.executable: %s\n' \
        "${TESSERA_VENV}/bin/python" "${TESSERA_VENV}/bin/python" >> /opt/flink/conf/config.yaml
# The entrypoint (from the base image) runs `jobmanager`, `taskmanager` or any other command as user flink.
