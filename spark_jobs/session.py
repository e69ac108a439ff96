"""The SparkSession every tessera Spark job runs in: local mode here, a cluster unchanged via ``spark-submit``.

Always applies :data:`features.sql.SPARK_CONF` (ANSI off, UTC), under which the plan's compiled Spark SQL means
what the Python row functions do. Workers run this interpreter (``PYSPARK_PYTHON``) and bind to loopback in
local mode (``SPARK_LOCAL_IP``), see PLATFORM_NOTES.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from features.sql import SPARK_CONF


def submitted() -> bool:
    """True in a driver started by ``spark-submit`` (its JVM is already up and gave us its gateway)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def spark_session(
    master: str | None = None,
    app_name: str = "tessera",
    *,
    shuffle_partitions: int | None = None,
    conf: Mapping[str, str] | None = None,
) -> Any:
    """Get or create a SparkSession with tessera's SQL settings.

    ``master`` None: the master ``spark-submit --master`` gave (when this process is a ``spark-submit``
    driver), else ``$TESSERA_SPARK_MASTER``, else ``local[*]``. ``conf`` adds or overrides settings
    (SPARK_CONF always wins: the row logic is only correct under it).
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    # Under spark-submit (and no explicit master) its JVM already holds spark.master and the driver's address.
    if master is not None or not submitted():
        master = master or os.environ.get("TESSERA_SPARK_MASTER") or "local[*]"
        if master.startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            builder = builder.config("spark.driver.bindAddress", "127.0.0.1").config(
                "spark.driver.host", "127.0.0.1"
            )
        builder = builder.master(master)
    builder = builder.config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
    if shuffle_partitions is not None:
        builder = builder.config("spark.sql.shuffle.partitions", str(shuffle_partitions))
    for key, value in {**(conf or {}), **SPARK_CONF}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    for key, value in SPARK_CONF.items():  # an existing session: make sure the SQL settings hold
        session.conf.set(key, value)
    session.sparkContext.setLogLevel("ERROR")
    return session
