"""The SparkSession a reranking run uses, with the settings scoring relies on."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

# Settings every scoring run needs, whatever the environment:
# - speculation would score a partition twice on the GPU;
# - worker reuse keeps the per-worker model cache alive across tasks;
# - Arrow batches bound the rows one call of the scoring function sees.
REQUIRED_CONF = {
    "spark.speculation": "false",
    "spark.python.worker.reuse": "true",
}


def scoring_conf(arrow_batch_size: int) -> dict[str, str]:
    """Session settings for scoring, applied on top of the user's."""
    return {
        **REQUIRED_CONF,
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(arrow_batch_size),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }


def _local_defaults() -> dict[str, str]:
    # Keep Spark's scratch space, warehouse and Ivy cache out of the working tree.
    scratch = os.environ.get("DEAR_SPARK_TMP") or os.path.join(tempfile.gettempdir(), "dear-rerank-spark")
    return {
        "spark.local.dir": os.path.join(scratch, "local"),
        "spark.sql.warehouse.dir": os.path.join(scratch, "warehouse"),
        "spark.jars.ivy": os.path.join(scratch, "ivy"),
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "4",
        "spark.sql.session.timeZone": "UTC",
    }


def get_session(
    *,
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
    arrow_batch_size: int = 10000,
    app_name: str = "dear-rerank",
) -> Any:
    """Return the active SparkSession, or build one.

    Under spark-submit or on Databricks a session (or its master) already exists and
    ``master`` stays None. Locally, ``master`` is e.g. ``"local[2]"`` and scratch
    directories go under the system temp directory.

    Example:
        >>> spark = get_session(master="local[2]")
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    settings = {**(conf or {}), **scoring_conf(arrow_batch_size)}
    if active is not None:
        for key, value in settings.items():
            try:
                active.conf.set(key, value)
            except Exception:  # noqa: BLE001 - static confs cannot change on a live session
                pass
        return active
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
        if master.startswith("local") or "127.0.0.1" in master:
            settings = {**_local_defaults(), **settings}
            # Workers on this machine must run this interpreter (and its packages).
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def executors_on_this_machine(spark: Any) -> bool:
    """True in local mode (``local[...]``, ``local-cluster[...]``): the executors are this
    machine, so what it lacks (e.g. CUDA) they lack too. Elsewhere the driver of a GPU
    cluster may well have no GPU, and only the executors can tell."""
    return str(spark.sparkContext.master).startswith("local")


def has_spark_delta(spark: Any) -> bool:
    """True when the session can read and write Delta through Spark (Databricks, --packages)."""
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return True
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if "DeltaSparkSessionExtension" not in extensions:
        return False
    try:
        spark._jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")
        return True
    except Exception:  # noqa: BLE001 - class missing: Delta jars are not on the classpath
        return False
