"""The SparkSession a reranking run uses, with the settings scoring relies on."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

from ..config import JobConfig
from ..settings import default_of

# Settings every scoring run needs, whatever the environment, applied when the session is
# built (a cluster whose session exists first must carry them: databricks.yml does):
# - speculation would score a partition twice on the GPU;
# - worker reuse keeps the per-worker model cache alive across tasks.
# Arrow batches bound the rows one call of the scoring function sees (``scoring_conf``).
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
    arrow_batch_size: int = default_of(JobConfig, "arrow_batch_size"),
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
        apply_conf(active, settings)
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
    if master and _quiet_launch_wanted():
        _launch_quiet_driver(settings, master=master, app_name=app_name)
    return builder.getOrCreate()


def apply_conf(spark: Any, settings: Mapping[str, str]) -> None:
    """Set ``settings`` on a live session; those fixed when it was built stay as they are."""
    for key, value in settings.items():
        try:
            spark.conf.set(key, value)
        except Exception:  # noqa: BLE001 - static confs cannot change on a live session
            pass


def executors_on_this_machine(spark: Any) -> bool:
    """True in local mode (``local[...]``, ``local-cluster[...]``): the executors are this
    machine, so what it lacks (e.g. CUDA) they lack too. Elsewhere the driver of a GPU
    cluster may well have no GPU, and only the executors can tell."""
    return str(spark.sparkContext.master).startswith("local")


def _quiet_launch_wanted() -> bool:
    from pyspark import SparkContext

    from .. import console

    # Only a JVM this process starts itself for a master it was given: never under
    # spark-submit or on Databricks, whose driver and logging belong to the cluster.
    # SparkContext._gateway is set once a JVM runs in this process (no public accessor).
    return (
        console.QUIET
        and "PYSPARK_GATEWAY_PORT" not in os.environ
        and not os.environ.get("DATABRICKS_RUNTIME_VERSION")
        and getattr(SparkContext, "_gateway", None) is None
    )


def _launch_quiet_driver(settings: Mapping[str, str], *, master: str | None, app_name: str) -> None:
    """Start the driver JVM for ``dear-rerank`` without ``-v``: log4j at ERROR, and its
    stderr copied line by line without the JDK's "WARNING: Using incubator modules" notice
    (Spark 4 always adds ``--add-modules=jdk.incubator.vector``; no JVM flag silences it).
    Everything else the JVM and its Python workers write still reaches stderr."""
    import threading
    from importlib.resources import files
    from subprocess import PIPE

    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway

    log4j = files("dear_udf") / "conf" / "log4j2-quiet.properties"
    conf = SparkConf(loadDefaults=False).setAll(list(settings.items())).setAppName(app_name)
    if master:
        conf.setMaster(master)
    java_options = " ".join(filter(None, [conf.get("spark.driver.extraJavaOptions"), f"-Dlog4j2.configurationFile={log4j}"]))
    conf.set("spark.driver.extraJavaOptions", java_options)
    # launch_gateway's popen_kwargs exist for this: "capturing stdout/stderr" of the JVM.
    gateway = launch_gateway(conf, popen_kwargs={"stderr": PIPE})

    def copy_stderr(stream: Any) -> None:
        for line in iter(stream.readline, b""):
            if not line.startswith(b"WARNING: Using incubator modules"):
                os.write(2, line)

    threading.Thread(target=copy_stderr, args=(gateway.proc.stderr,), name="dear-jvm-stderr", daemon=True).start()
    SparkContext(conf=conf, gateway=gateway)


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
