"""Checks on the driver before a run reads an input or loads a model: every path it will use.

A night of scoring must not end in a refusal that could have been made in a second, and a
run must never write into a folder it would damage. Before anything else the job checks:

- the output folder: absent, empty, or this job's table in the run's format, with the
  output schema and ``run_id`` partitions. A Parquet run into a Delta table would delete
  the Delta files of its partition; a Delta run into a Parquet table would show Parquet
  readers the run twice; any other folder is someone else's. A file is refused too.
- the files it will write (summary, TREC run): a local file path, not a folder, not inside
  the table, in a folder that exists or can be created, writable;
- the inputs it will read: the paths exist, and a BEIR folder holds the file needed.

Local paths (``paths.location``: plain paths, ``file:`` URIs, ``/Volumes/...``) are checked
on the local disk; other URIs (``dbfs:/``, ``s3a://``, ``abfss://``...) through Spark's
Hadoop file systems, their Delta schema by Spark's Delta at write.

Example:
    >>> check_paths(config, spark=spark)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from .. import schema as S
from ..config import JobConfig
from ..exceptions import OutputError
from ..io.formats import check_input
from ..io.rules import DELTA_LOG_DIR
from ..paths import location

TableKind = Literal["none", "delta", "parquet", "uncommitted"]
_WRITE_ID = re.compile(r"[0-9a-f]{32}")  # spark/write.py's folder per Delta write


def check_paths(config: JobConfig, *, spark: Any = None, spark_delta: bool = False) -> None:
    """Refuse, before any input is read, a run whose outputs or inputs cannot work.

    ``spark_delta``: the session writes Delta through Spark (else through ``deltalake``,
    which commits local tables only).

    Raises:
        OutputError: the output folder or a file to write is refused (named, with why).
        InputError: an input path is missing, or a BEIR folder lacks the file needed.
    """
    check_output(config.output, fmt=config.format, run_id=config.run_id, spark=spark)
    if config.format == "delta" and not spark_delta and not location(config.output).is_local:
        raise OutputError(
            f"{config.output}: a remote Delta table is committed through Spark's Delta, which this session lacks; "
            "run where Delta is in the session (Databricks, or spark-submit --packages io.delta:delta-spark_2.13), "
            "or write to a local path."
        )
    from ..config import trec_paths

    trec = list(trec_paths(config).values())
    for setting, path in (("summary", config.summary_path), *(("trec_out", p) for p in trec)):
        if path:
            check_file_target(path, setting=setting, output=config.output, spark=spark)
    for path in trec:
        if location(path) == location(config.summary_path):
            raise OutputError(f"trec_out and summary are the same file, {path}; give them different paths.")
    for kind in ("queries", "corpus", "candidates", "qrels"):
        spec = getattr(config, kind)
        if spec is not None:
            check_input(spec, kind)


class _Folder:
    """Lists a folder: on the local disk, or through Spark's Hadoop file system for URIs."""

    def __init__(self, path: str, spark: Any) -> None:
        self.where = location(path)
        self.path, self.local, self.spark = path, self.where.is_local, spark

    def entries(self, sub: str = "") -> list[tuple[str, bool]] | None:
        """(name, is folder) of the entries of ``path/sub``; None when it does not exist."""
        where = self.where.join(sub) if sub else self.where
        if self.local:
            path = where.local
            if not os.path.lexists(path):
                return None
            if not os.path.isdir(path):
                raise OutputError(f"{where.text}: is a file; output must be a table folder (new, empty, or this job's table).")
            with os.scandir(path) as found:
                return [(e.name, e.is_dir()) for e in found]
        if self.spark is None:
            return None  # a URI and no Spark session: left to the writer
        from . import hadoop

        try:
            found = hadoop.entries(self.spark, where.text)
        except Exception as exc:  # noqa: BLE001 - Py4JJavaError: no file system for the scheme, no access
            raise OutputError(f"{where.text}: cannot list the output folder ({hadoop.reason(exc)}).") from exc
        if found == [("", False)]:
            raise OutputError(f"{where.text}: is a file; output must be a table folder (new, empty, or this job's table).")
        return found


def _hidden(name: str) -> bool:
    # Spark's and Hadoop's convention: _SUCCESS, .crc files, .spark-staging-*, _committed_*.
    return name.startswith(("_", "."))


def _foreign(path: str, names: list[str]) -> OutputError:
    return OutputError(
        f"{path}: is neither empty nor a table of this job (found {names[:5]}); refusing to write into it. "
        "Give a new or empty folder."
    )


def table_kind(folder: _Folder) -> tuple[TableKind, str | None]:
    """What the output folder holds, and one data file of it (relative) if it is Parquet.

    ``uncommitted`` is the files of a Delta run that died before the table's first commit
    (``run_id=<id>/<write id>/``, no ``_delta_log``). Only the first partition folder that
    holds anything is looked into.

    Raises:
        OutputError: the path is a file, or the folder holds anything else.
    """
    entries = folder.entries()
    if not entries:
        return "none", None
    if any(name == DELTA_LOG_DIR and is_dir for name, is_dir in entries):
        return "delta", None
    prefix = f"{S.RUN_ID}="
    foreign = sorted(n for n, d in entries if not _hidden(n) and not (d and n.startswith(prefix)))
    if foreign:
        raise _foreign(folder.path, foreign)
    for name in sorted(n for n, d in entries if d and n.startswith(prefix)):
        inner = sorted((n, d) for n, d in folder.entries(name) or [] if not _hidden(n))
        if not inner:
            continue
        files = [n for n, d in inner if not d]
        if files:
            return "parquet", f"{name}/{files[0]}"
        if all(_WRITE_ID.fullmatch(n) for n, _ in inner):
            return "uncommitted", None
        raise _foreign(folder.path, [f"{name}/{n}" for n, _ in inner])
    return "none", None


def check_output(output: str, *, fmt: str, run_id: str, spark: Any = None) -> None:
    """Refuse an output that is a file, someone else's folder, or a table of the other format.

    Raises:
        OutputError: saying what the folder holds and why writing would damage it.
    """
    folder = _Folder(output.rstrip("/") or output, spark)
    kind, sample = table_kind(folder)
    if folder.local:
        _check_writable(folder.where.local, "output")
    if fmt == "parquet" and kind == "delta":
        raise OutputError(
            f"{output}: holds a Delta table ({DELTA_LOG_DIR}/); refusing to write format 'parquet' into it: Spark's "
            f"partition overwrite would delete the Delta files of run_id={run_id!r}. Use format 'delta' or another output."
        )
    if fmt == "parquet" and kind == "uncommitted":
        raise OutputError(
            f"{output}: holds files of a Delta run that never committed (no {DELTA_LOG_DIR}/); refusing to write "
            "format 'parquet' into it. Rerun with format 'delta', or delete the folder."
        )
    if fmt == "delta" and kind == "parquet":
        raise OutputError(
            f"{output}: holds a Parquet table (run_id= folders, no {DELTA_LOG_DIR}/); refusing to write format 'delta' "
            "into it: Parquet readers would read this run's files as more rows. Use format 'parquet' or another output."
        )
    if folder.local and kind == "delta":
        from ..io.delta_writer import check_table

        check_table(folder.where.local)
    if folder.local and kind == "parquet" and sample:
        _check_parquet_schema(folder.where.local, sample)


def _check_parquet_schema(output: str, sample: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        found = pq.read_schema(os.path.join(output, sample))
    except (OSError, pa.ArrowInvalid) as exc:
        raise OutputError(f"{output}: {sample} is not a Parquet file ({exc}); refusing to write into the folder.") from exc
    diff = S.output_schema_difference(_without_run_id(found), _without_run_id(S.OUTPUT_ARROW_SCHEMA))
    if diff:
        raise OutputError(f"{output}: its Parquet files ({sample}) do not hold the output schema: {diff}; refusing to write into it.")


def _without_run_id(schema: Any) -> Any:
    # Spark leaves the partition column to the folder name; a file may hold it too.
    return schema.remove(schema.get_field_index(S.RUN_ID)) if S.RUN_ID in schema.names else schema


def check_file_target(path: str, *, setting: str, output: str, spark: Any = None) -> None:
    """Refuse a file the run would write (summary, TREC run) that it could not write.

    A local path is checked on the disk; a remote one (written through Spark's Hadoop file
    systems at the end of the run) must name a file system the session can open.

    Raises:
        OutputError: a folder, a path inside the table, or a place that cannot be written.
    """
    where, table = location(path), location(output)
    if table.contains(where):
        raise OutputError(f"{setting}: {path}: is inside the output table folder {output}; put it beside the table.")
    if not where.is_local:
        from . import hadoop

        if spark is None:
            raise OutputError(f"{setting}: {path}: a remote file is written through Spark; no session is running.")
        try:
            found = hadoop.entries(spark, where.text)
        except Exception as exc:  # noqa: BLE001 - Py4JJavaError: no file system for the scheme, no access
            raise OutputError(f"{setting}: {path}: cannot reach its file system ({hadoop.reason(exc)}).") from exc
        if found is not None and found != [("", False)]:
            raise OutputError(f"{setting}: {path}: is a folder; give a file path.")
        return
    if os.path.isdir(where.local):
        raise OutputError(f"{setting}: {path}: is a folder; give a file path.")
    _check_writable(os.path.dirname(where.local), setting)


def _check_writable(path: str, setting: str) -> None:
    """The nearest existing folder of ``path`` must be a writable folder (the rest is created)."""
    here = os.path.abspath(path)
    while not os.path.lexists(here):
        here = os.path.dirname(here)
    if not os.path.isdir(here):
        raise OutputError(f"{setting}: {path}: {here} is a file, not a folder.")
    if not os.access(here, os.W_OK | os.X_OK):
        raise OutputError(f"{setting}: {path}: cannot write in {here} (permission denied or read-only).")
