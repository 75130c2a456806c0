"""Spark's writes: the top-k table (Parquet, or Delta partitioned by ``run_id``), and the
score cache's appends through Spark's Delta (``append_delta``). Whether Spark's Delta is
there, the run decides once (``steps.start``).

The output keeps one promise: a run replaces its own ``run_id`` partition and nothing else, and
a run that fails before its commit leaves the table as it was.

- Parquet: Spark's dynamic partition overwrite; files are staged and moved into
  ``run_id=<id>/`` at job commit.
- Delta through Spark (Databricks, or spark-submit with the Delta package): ``replaceWhere``
  on the run's partition, one Delta commit.
- Delta without Spark's Delta (the embedded default): executors write Parquet files under
  ``run_id=<id>/<write id>/``, then the driver commits exactly those files as one Delta
  transaction with ``deltalake``, replacing the run's partition. Files of a run that died
  before the commit are never referenced by the log, so readers never see them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Any

from .. import schema as S
from ..exceptions import OutputError
from ..paths import location


def _parquet(df: Any, output: str) -> dict[str, Any]:
    spark = df.sparkSession
    spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
    df.write.mode("overwrite").partitionBy(S.RUN_ID).parquet(output)
    return {"writer": "spark-parquet"}


def _spark_delta(df: Any, output: str, run_id: str) -> dict[str, Any]:
    escaped = run_id.replace("'", "''")
    (
        df.write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", f"{S.RUN_ID} = '{escaped}'")
        .option("mergeSchema", "true")  # a table written before the adapter column gains it
        .partitionBy(S.RUN_ID)
        .save(output)
    )
    return {"writer": "spark-delta"}


def _deltalake(df: Any, output: str, run_id: str) -> dict[str, Any]:
    from .. import hooks
    from ..io.delta_writer import replace_partition

    root = location(output).local
    if root is None:
        raise OutputError(
            f"{output}: committing with deltalake from the driver needs a local path here; "
            "use a Spark session with Delta for remote tables."
        )
    write_id = f"{uuid.uuid4().hex}"
    relative_dir = f"{S.RUN_ID}={run_id}/{write_id}"
    df.drop(S.RUN_ID).write.mode("errorifexists").parquet(os.path.join(root, relative_dir))
    files = sorted(
        f"{relative_dir}/{name}"
        for name in os.listdir(os.path.join(root, relative_dir))
        if name.endswith(".parquet") and not name.startswith(("_", "."))
    )
    # Tests stop the driver here (files written, nothing committed); a no-op otherwise.
    hooks.at("before-commit", files=files, table=root)
    try:
        version = replace_partition(root, run_id, files)
    except Exception:
        # Never referenced by the log, so invisible to readers; but a refused run leaves
        # nothing behind in someone else's folder.
        shutil.rmtree(os.path.join(root, relative_dir), ignore_errors=True)
        with contextlib.suppress(OSError):  # the partition folder, if this run made it
            os.rmdir(os.path.join(root, relative_dir.split("/")[0]))
        raise
    return {"writer": "deltalake", "delta_version": version, "files": len(files)}


def write_output(df: Any, *, output: str, fmt: str, run_id: str, spark_delta: bool) -> dict[str, Any]:
    """Write the top-k DataFrame (``schema.OUTPUT_COLUMNS``) for one run: Delta through
    Spark's Delta when ``spark_delta``, else through ``deltalake`` from the driver.

    Returns:
        What was done: the writer used and, for deltalake, the new table version.
    """
    if fmt == "parquet":
        return _parquet(df, location(output).for_spark)
    if fmt != "delta":
        raise OutputError(f"format must be 'delta' or 'parquet', got {fmt!r}.")
    if spark_delta:
        return _spark_delta(df, location(output).for_spark, run_id)
    return _deltalake(df, output, run_id)


def append_delta(df: Any, uri: str, *, partition_by: list[str], transaction: tuple[str, int] | None) -> None:
    """Append ``df`` to the Delta table at ``uri`` through Spark's Delta, as one commit: a
    blind append (concurrent appends of other runs never conflict with it), new columns
    added (``mergeSchema``). ``transaction`` (application id, version) is Delta's
    idempotent-write marker: the write is skipped when that version is recorded already."""
    writer = df.write.format("delta").mode("append").option("mergeSchema", "true")
    if transaction is not None:
        writer = writer.option("txnAppId", transaction[0]).option("txnVersion", transaction[1])
    writer.partitionBy(*partition_by).save(uri)
