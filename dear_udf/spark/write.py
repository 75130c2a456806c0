"""Writing the top-k table: Parquet, or Delta partitioned by ``run_id``.

Both keep one promise: a run replaces its own ``run_id`` partition and nothing else, and
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
        .partitionBy(S.RUN_ID)
        .save(output)
    )
    return {"writer": "spark-delta"}


def _deltalake(df: Any, output: str, run_id: str) -> dict[str, Any]:
    from ..io.delta_commit import commit_run
    from .. import hooks

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
        version = commit_run(root, run_id, files)
    except Exception:
        # Never referenced by the log, so invisible to readers; but a refused run leaves
        # nothing behind in someone else's folder.
        shutil.rmtree(os.path.join(root, relative_dir), ignore_errors=True)
        with contextlib.suppress(OSError):  # the partition folder, if this run made it
            os.rmdir(os.path.join(root, relative_dir.split("/")[0]))
        raise
    return {"writer": "deltalake", "delta_version": version, "files": len(files)}


def write_output(df: Any, *, output: str, fmt: str, run_id: str) -> dict[str, Any]:
    """Write the top-k DataFrame (``schema.OUTPUT_COLUMNS``) for one run.

    Returns:
        What was done: the writer used and, for deltalake, the new table version.
    """
    from .session import has_spark_delta

    if fmt == "parquet":
        return _parquet(df, location(output).for_spark)
    if fmt != "delta":
        raise OutputError(f"format must be 'delta' or 'parquet', got {fmt!r}.")
    if has_spark_delta(df.sparkSession):
        return _spark_delta(df, location(output).for_spark, run_id)
    return _deltalake(df, output, run_id)
