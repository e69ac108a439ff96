"""Settings shared by every ``tessera`` command, from environment variables (then command-line flags).

Every variable has a default that works on one machine (loopback services, embedded bulk store under
``.data``); a deployment sets them (docker/compose.yaml, docs/operations.md).

| variable | default | meaning |
|---|---|---|
| ``TESSERA_REPO`` | ``features/fraud`` | the feature repository (folder of definitions) |
| ``TESSERA_DATA_DIR`` | ``.data`` | where local state lives (embedded bulk store, checkpoints, logs) |
| ``TESSERA_KAFKA_BOOTSTRAP`` | ``127.0.0.1:9092`` | Kafka bootstrap servers |
| ``TESSERA_MEMCACHED`` | ``127.0.0.1:11311`` | memcached servers, comma-separated ``host:port`` |
| ``TESSERA_BULK_STORE`` | ``embedded:<data dir>/bulk`` | ``embedded:PATH`` or ``postgres:DSN`` |
| ``TESSERA_OFFLINE_DIR`` | ``<data dir>/offline`` | offline tables as ``<table>.parquet`` |
| ``TESSERA_CHECKPOINT_DIR`` | ``<data dir>/checkpoints`` | Flink checkpoints (``file://`` or a cluster's URI) |
| ``TESSERA_API_HOST`` / ``TESSERA_API_PORT`` | ``127.0.0.1`` / ``8000`` | where the HTTP API listens |
| ``TESSERA_API_TOKEN`` | unset | when set, the API requires ``Authorization: Bearer <token>`` |
| ``TESSERA_API_FULL_GC_S`` | ``600`` | ``tessera serve``: seconds between the garbage collector's full collections (0: Python's own schedule) |
| ``TESSERA_API_OTEL`` | unset | ``1``: FastAPI's OpenTelemetry spans and metrics for ``tessera serve`` (global providers) |
| ``TESSERA_MODEL_DIR`` | ``<data dir>/model`` | the fraud model (xgboost JSON + feature order + thresholds) |
| ``TESSERA_SPARK_MASTER`` | ``local[2]`` | Spark master URL; a cluster's (``spark://…``) makes ``nightly`` and
``consistency`` use ``spark-submit`` |
| ``TESSERA_FEATURE_LOG`` | ``<data dir>/feature_log`` | where served vectors are logged: a directory (partitioned
parquet) or ``kafka://host:port/topic`` (landed into ``<data dir>/feature_log`` before a consistency check) |
| ``TESSERA_FEATURE_LOG_SAMPLE`` | ``0.01`` | share of keys whose served vectors ``tessera serve`` logs (0 turns
logging off) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    repo: Path
    data_dir: Path
    kafka_bootstrap: str
    memcached: tuple[str, ...]
    bulk_store: str
    offline_dir: Path
    checkpoint_dir: str
    api_host: str
    api_port: int
    api_token: str | None
    model_dir: Path
    spark_master: str
    feature_log: str
    feature_log_sample: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        data = Path(e.get("TESSERA_DATA_DIR", ".data"))
        return cls(
            repo=Path(e.get("TESSERA_REPO", "features/fraud")),
            data_dir=data,
            kafka_bootstrap=e.get("TESSERA_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            memcached=tuple(
                s.strip() for s in e.get("TESSERA_MEMCACHED", "127.0.0.1:11311").split(",") if s.strip()
            ),
            bulk_store=e.get("TESSERA_BULK_STORE", f"embedded:{data / 'bulk'}"),
            offline_dir=Path(e.get("TESSERA_OFFLINE_DIR", str(data / "offline"))),
            checkpoint_dir=e.get("TESSERA_CHECKPOINT_DIR", str(data / "checkpoints")),
            api_host=e.get("TESSERA_API_HOST", "127.0.0.1"),
            api_port=int(_number(e, "TESSERA_API_PORT", "8000", 1, 65535, "a TCP port, e.g. 8000")),
            api_token=e.get("TESSERA_API_TOKEN") or None,
            model_dir=Path(e.get("TESSERA_MODEL_DIR", str(data / "model"))),
            spark_master=e.get("TESSERA_SPARK_MASTER", "local[2]"),
            feature_log=e.get("TESSERA_FEATURE_LOG", str(data / "feature_log")),
            feature_log_sample=_number(
                e,
                "TESSERA_FEATURE_LOG_SAMPLE",
                "0.01",
                0.0,
                1.0,
                "the share of keys logged, e.g. 0.01 (0: off)",
            ),
        )


def _number(env: Mapping[str, str], name: str, default: str, lo: float, hi: float, what: str) -> float:
    """``env[name]`` as a number within ``[lo, hi]``; a ValueError that names the variable and the fix if not."""
    raw = env.get(name, default)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not lo <= value <= hi:  # also NaN
        raise ValueError(f"{name}={raw!r}: expected {what}, between {lo:g} and {hi:g}")
    return value


#: Every variable :meth:`Settings.from_env` reads (the deployment test checks compose sets only these).
ENV_VARS = (
    "TESSERA_REPO",
    "TESSERA_DATA_DIR",
    "TESSERA_KAFKA_BOOTSTRAP",
    "TESSERA_MEMCACHED",
    "TESSERA_BULK_STORE",
    "TESSERA_OFFLINE_DIR",
    "TESSERA_CHECKPOINT_DIR",
    "TESSERA_API_HOST",
    "TESSERA_API_PORT",
    "TESSERA_API_TOKEN",
    "TESSERA_MODEL_DIR",
    "TESSERA_SPARK_MASTER",
    "TESSERA_FEATURE_LOG",
    "TESSERA_FEATURE_LOG_SAMPLE",
)
