"""Commit one run's Parquet files to a Delta table as ONE transaction, without a JVM.

The Spark job's executors write Parquet files (``schema.OUTPUT_ARROW_SCHEMA``) under
``<table>/run_id=<id>/``; nothing is visible to Delta readers until the driver calls
``commit_run``, which writes a single commit that removes that partition's old files and
adds the new ones. Readers see the old run or the new run, never a mix; files written by a
job that died before committing are never read (Delta reads the log, not the folder) and
are left for ``VACUUM`` to delete.

deltalake (delta-rs) calls used, checked against deltalake 1.6.6:

- new table: ``deltalake.transaction.create_table_with_add_actions(uri, Schema.from_arrow(
  OUTPUT_ARROW_SCHEMA), adds, mode="error", partition_by=["run_id"], commit_properties=...)``
- existing table: ``DeltaTable(uri).create_write_transaction(adds, mode="overwrite",
  schema=OUTPUT_ARROW_SCHEMA, partition_by=["run_id"], partition_filters=[("run_id", "=",
  run_id)], commit_properties=...)``; delta-rs derives the remove actions of the replaced
  partition itself. Beware: with ``mode="overwrite"`` it silently replaces the table's
  schema with the one given, so ``commit_run`` compares schemas first and refuses.
- ``AddAction.path`` is the plain relative path; delta-rs percent-encodes it in the log.
- ``CommitProperties(app_transactions=[Transaction(app_id, version)])`` records an
  idempotency marker that ``DeltaTable.transaction_version(app_id)`` reads back.
- Concurrent runs: delta-rs treats a partition overwrite as reading the whole table, so a
  commit fails with ``CommitFailedError`` ("a concurrent transaction deleted data this
  operation read") when another run replaced *another* partition meanwhile. ``commit_run``
  then compares this partition's files before and after; if they are unchanged it retries
  from the new snapshot (what a serial commit would have done), else it refuses: another
  run of the same night committed, and retrying would silently replace its rows.
"""

from __future__ import annotations

import json
import posixpath
import random
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

import pyarrow as pa

from .. import schema as S
from ..exceptions import ConfigError, OutputError

PARTITION_BY = [S.RUN_ID]
# Attempts of one commit while other runs commit to other partitions at the same moment.
COMMIT_ATTEMPTS = 8


def _check_arguments(run_id: str, files: Sequence[str], app_id: str | None, version: int | None) -> list[str]:
    S.check_run_id(run_id)
    if isinstance(files, str):
        raise ConfigError(f"files must be a list of paths, got the single string {files!r}.")
    if (app_id is None) != (version is None):
        raise ConfigError(f"app_id and version go together, got app_id={app_id!r} version={version!r}.")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 0):
        raise ConfigError(f"version must be a non-negative integer, got {version!r}.")
    cleaned = []
    for path in files:
        norm = posixpath.normpath(str(path))
        first = norm.split("/", 1)[0]
        if "://" in norm or norm.startswith("/") or norm == ".." or norm.startswith("../"):
            raise ConfigError(f"files must be paths relative to the table root, got {path!r}.")
        # The partition value comes from the folder name; Spark percent-escapes some
        # characters there (e.g. ':' -> '%3A'), hence unquote before comparing.
        if not first.startswith(f"{S.RUN_ID}=") or unquote(first[len(S.RUN_ID) + 1 :]) != run_id or "/" not in norm:
            raise ConfigError(f"file {path!r} is not inside the partition folder '{S.RUN_ID}={run_id}/'.")
        cleaned.append(norm)
    if len(set(cleaned)) != len(cleaned):
        raise ConfigError(f"files holds duplicate paths: {sorted(p for p in set(cleaned) if cleaned.count(p) > 1)}.")
    return cleaned


def _add_actions(table_uri: str, run_id: str, files: list[str], storage_options: dict[str, str] | None) -> list:
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    from deltalake.fs import DeltaStorageHandler
    from deltalake.transaction import AddAction

    if not files:
        return []
    # deltalake's own object store, so the same storage_options reach files and log alike.
    try:
        fs = pafs.PyFileSystem(DeltaStorageHandler(table_uri, storage_options))
    except Exception as exc:  # deltalake raises its own error types per store
        raise OutputError(f"{table_uri}: cannot open the table location ({exc}).") from exc
    # Data files hold every output column except, usually, the partition column (Spark
    # leaves it to the folder name); a file that holds it too reads the same.
    data_schema = S.OUTPUT_ARROW_SCHEMA.remove(S.OUTPUT_ARROW_SCHEMA.get_field_index(S.RUN_ID))
    adds = []
    for path, info in zip(files, fs.get_file_info(files)):
        if info.type != pafs.FileType.File:
            raise OutputError(f"{table_uri}: file {path!r} to commit does not exist (is {info.type.name}).")
        try:
            meta = pq.read_metadata(path, filesystem=fs)
        except (OSError, pa.ArrowInvalid) as exc:
            raise OutputError(f"{table_uri}: file {path!r} is not readable Parquet ({exc}).") from exc
        file_schema = meta.schema.to_arrow_schema()
        if S.RUN_ID in file_schema.names:
            file_schema = file_schema.remove(file_schema.get_field_index(S.RUN_ID))
        diff = S.schema_difference(file_schema, data_schema)
        if diff:
            raise OutputError(f"{table_uri}: file {path!r} does not hold the output schema: {diff}.")
        adds.append(
            AddAction(
                path=path,
                size=info.size,
                partition_values={S.RUN_ID: run_id},
                modification_time=info.mtime_ns // 1_000_000,
                data_change=True,
                # numRecords from the footer: exact, and enough for counts without a scan.
                stats=json.dumps({"numRecords": meta.num_rows}),
            )
        )
    return adds


def commit_run(
    table_uri: str,
    run_id: str,
    files: Sequence[str],
    *,
    app_id: str | None = None,
    version: int | None = None,
    storage_options: dict[str, str] | None = None,
) -> int:
    """Replace partition ``run_id`` of a Delta table with ``files``, in one commit.

    Creates the table (partitioned by ``run_id``, schema ``OUTPUT_ARROW_SCHEMA``) when absent.
    Rows of other runs are untouched; rerunning a night replaces that night's rows, so the
    row count does not grow. An empty ``files`` empties the partition.

    Idempotency is the caller's to decide: with ``app_id`` and ``version`` the commit records
    the pair, and ``committed_version(table_uri, app_id)`` reads it back for comparison.

    Args:
        table_uri: the table's root (local path or a URI deltalake understands).
        run_id: the partition to replace; no ``/`` or ``=``.
        files: Parquet files relative to the table root, all under ``run_id=<run_id>/``.
        app_id: application id of the idempotency marker (with ``version``).
        version: the marker's version, a non-negative integer (with ``app_id``).
        storage_options: passed to deltalake for remote stores.

    Returns:
        The table version after the commit (if another writer commits at the same moment,
        this may be theirs: delta-rs does not return the version it wrote).

    Raises:
        ConfigError: bad ``run_id``, ``files``, ``app_id``/``version``.
        OutputError: a file is missing or off-schema, the table's schema or partitioning
            differs from the output's, another run committed the same ``run_id`` at the same
            moment, or the commit failed.
    """
    from deltalake import CommitProperties, Transaction
    from deltalake.exceptions import DeltaError

    files = _check_arguments(run_id, files, app_id, version)
    props = CommitProperties(
        app_transactions=[Transaction(app_id, version)] if app_id is not None else None,
        custom_metadata={"dear_rerank.run_id": run_id},
    )
    adds = _add_actions(table_uri, run_id, files, storage_options)
    table = _open(table_uri, storage_options)
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        seen = _partition_state(table, run_id)
        try:
            _replace_partition(table_uri, table, run_id, adds, props, storage_options)
            return _open(table_uri, storage_options).version()
        except DeltaError as exc:
            table = _open(table_uri, storage_options)
            _retry_or_raise(table_uri, run_id, seen, _partition_state(table, run_id), exc, attempt)
            time.sleep(random.uniform(0.02, 0.1) * attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _replace_partition(table_uri: str, table: Any, run_id: str, adds: list, props: Any, storage_options: dict[str, str] | None) -> None:
    """One attempt: create the table with ``adds``, or overwrite partition ``run_id`` with them."""
    if table is None:
        _create(table_uri, adds, props, storage_options)
        return
    check_table(table_uri, table=table)
    table.create_write_transaction(
        adds,
        mode="overwrite",
        schema=S.OUTPUT_ARROW_SCHEMA,
        partition_by=PARTITION_BY,
        partition_filters=[(S.RUN_ID, "=", run_id)],
        commit_properties=props,
    )


def _open(table_uri: str, storage_options: dict[str, str] | None):
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(table_uri, storage_options=storage_options)
    except TableNotFoundError:
        return None


def _create(table_uri: str, adds: list, props, storage_options: dict[str, str] | None) -> None:
    from deltalake import Schema
    from deltalake.transaction import create_table_with_add_actions

    # mode="error": if another driver created the table meanwhile, this fails and the
    # retry commits into that table instead of overwriting its first commit.
    create_table_with_add_actions(
        table_uri,
        Schema.from_arrow(S.OUTPUT_ARROW_SCHEMA),
        adds,
        mode="error",
        partition_by=PARTITION_BY,
        storage_options=storage_options,
        commit_properties=props,
    )


def _partition_state(table, run_id: str) -> tuple[int, list[str]]:
    """The table's version and the files of partition ``run_id`` in it; (-1, []) for no table."""
    if table is None:
        return -1, []
    return table.version(), sorted(table.file_uris(partition_filters=[(S.RUN_ID, "=", run_id)]))


def _retry_or_raise(table_uri: str, run_id: str, seen: tuple, now: tuple, exc: Exception, attempt: int) -> None:
    """After a failed commit: retry only when other runs committed and left this partition alone.

    delta-rs reads the whole table for a partition overwrite, so a concurrent commit that
    removed files of *another* partition fails this one ("a concurrent transaction deleted
    data this operation read"). Retrying from the newer snapshot is then exactly what a
    serial commit would have done. A concurrent commit that changed *this* partition is
    another run of the same night: retrying would silently replace its rows, so refuse.
    """
    reason = " ".join(str(exc).split())
    if now[0] == seen[0]:
        raise OutputError(f"{table_uri}: commit of run_id={run_id!r} failed ({reason}).") from exc
    if now[1] != seen[1]:
        raise OutputError(
            f"{table_uri}: another run committed run_id={run_id!r} at the same time (table version {now[0]}); "
            "this run's commit was not applied. Rerun it if its rows should replace the other run's."
        ) from exc
    if attempt >= COMMIT_ATTEMPTS:
        raise OutputError(
            f"{table_uri}: commit of run_id={run_id!r} still conflicted with other runs' commits after "
            f"{attempt} attempts ({reason})."
        ) from exc


def check_table(table_uri: str, *, table=None, storage_options: dict[str, str] | None = None) -> None:
    """Refuse a Delta table this job did not make (other partitioning or schema).

    A partition overwrite with delta-rs would silently rewrite the table's schema, so the
    job checks before scoring (``spark/preflight.py``) and again at commit. A folder
    without a table passes.

    Raises:
        OutputError: naming the partition columns or the schema difference.
    """
    table = table if table is not None else _open(table_uri, storage_options)
    if table is None:
        return
    partitions = list(table.metadata().partition_columns)
    if partitions != PARTITION_BY:
        raise OutputError(f"{table_uri}: table is partitioned by {partitions}, expected {PARTITION_BY}.")
    diff = S.schema_difference(pa.schema(table.schema().to_arrow()), S.OUTPUT_ARROW_SCHEMA)
    if diff:
        raise OutputError(f"{table_uri}: table schema differs from the output schema: {diff}.")


def committed_version(table_uri: str, app_id: str, *, storage_options: dict[str, str] | None = None) -> int | None:
    """The last version recorded by ``commit_run(..., app_id=app_id)``, or None.

    None too when the table does not exist yet.

    Example:
        >>> committed_version("out/reranked", "nightly")  # doctest: +SKIP
        20240501
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(table_uri, storage_options=storage_options).transaction_version(app_id)
    except TableNotFoundError:
        return None


def read_table(uri: str, *, storage_options: dict[str, str] | None = None) -> pa.Table:
    """Read a whole Delta table (its current version) into Arrow.

    Example:
        >>> read_table("out/reranked").num_rows  # doctest: +SKIP
        12000
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from ..exceptions import InputError

    try:
        return DeltaTable(uri, storage_options=storage_options).to_pyarrow_table()
    except TableNotFoundError as exc:
        raise InputError(f"{uri}: not a Delta table ({exc}).") from exc
