"""Delta tables written from the driver without a JVM (``deltalake``): the one Delta writer.

The job writes two Delta tables. Where the Spark session has Delta (Databricks,
``--packages``) Spark writes both (``spark/write.py``); elsewhere the driver commits them
here, each change ONE Delta transaction:

- ``replace_partition``: the output table. The executors write a run's Parquet files
  (``schema.OUTPUT_ARROW_SCHEMA``) under ``<table>/run_id=<id>/<write id>/``; one commit then
  removes that partition's old files and adds the new ones. Readers see the old run or the
  new run, never a mix; files of a run that died before its commit are never read (Delta
  reads the log, not the folder) and are left for ``VACUUM``.
- ``append``: the score cache. A blind append (it reads nothing, so appends of concurrent
  runs never conflict), optionally with Delta's idempotent-write marker (an application id
  and a version: ``CommitProperties(app_transactions=...)``): a retry first reads the marker
  back and writes nothing when the failed attempt's commit landed after all.

Both go through ``open_table`` (the one way to open a table: a location ``paths`` says
deltalake can open) and ``retrying`` (the one retry loop: a lost commit race is retried from
a fresh snapshot, with a random backoff).

deltalake calls used, checked against deltalake 1.6.6:

- new output table: ``deltalake.transaction.create_table_with_add_actions(uri,
  Schema.from_arrow(OUTPUT_ARROW_SCHEMA), adds, mode="error", partition_by=["run_id"], ...)``;
- existing output table: ``DeltaTable(uri).create_write_transaction(adds, mode="overwrite",
  schema=OUTPUT_ARROW_SCHEMA, partition_by=["run_id"], partition_filters=[("run_id", "=",
  run_id)], ...)``; delta-rs derives the remove actions of the replaced partition itself.
  Beware: with ``mode="overwrite"`` it silently replaces the table's schema with the one
  given, so ``replace_partition`` compares schemas first and refuses.
- ``AddAction.path`` is the plain relative path; delta-rs percent-encodes it in the log.
- Concurrent runs: delta-rs treats a partition overwrite as reading the whole table, so a
  commit fails with ``CommitFailedError`` ("a concurrent transaction deleted data this
  operation read") when another run replaced *another* partition meanwhile.
  ``replace_partition`` then compares this partition's files before and after; if they are
  unchanged it retries from the new snapshot (what a serial commit would have done), else
  it refuses: another run of the same night committed, and retrying would silently
  replace its rows.
"""

from __future__ import annotations

import json
import posixpath
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote

import pyarrow as pa

from .. import schema as S
from ..exceptions import ConfigError, DearRerankError, OutputError
from ..paths import location

PARTITION_BY = [S.RUN_ID]
# Attempts of one commit while other runs commit to the same table at the same moment.
COMMIT_ATTEMPTS = 8
T = TypeVar("T")


def deltalake_uri(uri: str, *, error: type[Exception] = OutputError) -> str:
    """What ``deltalake`` is given for ``uri``; refuses a store it cannot open (``dbfs:``)."""
    found = location(uri).for_deltalake
    if found is None:
        raise error(
            f"{uri}: deltalake cannot open a Delta table there; a {location(uri).scheme}: table is read and written "
            "through Spark's Delta (Databricks has it; spark-submit adds --packages io.delta:delta-spark_2.13)."
        )
    return found


def open_table(uri: str, *, error: type[Exception] = OutputError):
    """The ``DeltaTable`` at ``uri``, or None where there is none yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(deltalake_uri(uri, error=error))
    except TableNotFoundError:
        return None


def retrying(attempt: Callable[[int], T], *, attempts: int, recover: Callable[[Exception, int], None]) -> T:
    """Call ``attempt(n)`` until it returns; on a ``DeltaError`` (a lost commit race, a
    conflict) ``recover(exc, n)`` decides: it raises to stop, or returns to retry after a
    random backoff. It must raise on the last attempt.
    """
    from deltalake.exceptions import DeltaError

    for n in range(1, attempts + 1):
        try:
            return attempt(n)
        except DeltaError as exc:
            recover(exc, n)
            if n == attempts:
                break
            time.sleep(random.uniform(0.02, 0.2) * n)
    raise AssertionError("recover() must raise on the last attempt")


def reason(exc: Exception) -> str:
    """An error's text on one line, at most 40 words."""
    return " ".join(str(exc).split()[:40])


# -- appends (the score cache) --------------------------------------------------------------


def append(
    uri: str,
    rows: pa.Table,
    *,
    partition_by: list[str],
    transaction: tuple[str, int] | None = None,
    attempts: int = 10,
    error: type[Exception] = OutputError,
) -> int | None:
    """Append ``rows`` as ONE Delta commit (schema evolution on: new columns are added);
    returns the table version read right after it.

    ``transaction`` (application id, version) records Delta's idempotent-write marker: a
    retry whose failed attempt landed after all (a lost reply) writes nothing.

    Raises:
        ``error``: the table refused the rows' schema, or the commit still failed after
        ``attempts`` attempts.
    """
    from deltalake import CommitProperties, Transaction, write_deltalake
    from deltalake.exceptions import SchemaMismatchError

    from .. import hooks

    target = deltalake_uri(uri, error=error)
    marker = None if transaction is None else CommitProperties(app_transactions=[Transaction(*transaction)])
    landed: list[int] = []

    def attempt(n: int) -> int | None:
        if landed:
            return landed[0]
        write_deltalake(target, rows, mode="append", partition_by=partition_by, schema_mode="merge", commit_properties=marker)
        hooks.at("cache-appended", uri=uri, attempt=n)
        table = open_table(uri, error=error)
        return None if table is None else table.version()

    def recover(exc: Exception, n: int) -> None:
        if isinstance(exc, SchemaMismatchError):
            raise error(f"{uri}: the table refused the rows' schema ({reason(exc)}).") from exc
        table = open_table(uri, error=error)
        if transaction is not None and table is not None and (table.transaction_version(transaction[0]) or -1) >= transaction[1]:
            landed.append(table.version())  # the commit landed before the error: never write it twice
            return
        if n == attempts:
            raise error(f"{uri}: appending failed after {n} attempts ({reason(exc)}).") from exc

    return retrying(attempt, attempts=attempts, recover=recover)


# -- partition replacement (the output table) ------------------------------------------------


def _check_files(run_id: str, files: Sequence[str]) -> list[str]:
    S.check_run_id(run_id)
    if isinstance(files, str):
        raise ConfigError(f"files must be a list of paths, got the single string {files!r}.")
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


def _add_actions(table_uri: str, run_id: str, files: list[str]) -> list:
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    from deltalake.transaction import AddAction

    if not files:
        return []
    try:
        fs = table_file_system(table_uri)
    except DearRerankError:
        raise
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


def replace_partition(table_uri: str, run_id: str, files: Sequence[str]) -> int:
    """Replace partition ``run_id`` of the output table with ``files``, in one commit.

    Creates the table (partitioned by ``run_id``, schema ``OUTPUT_ARROW_SCHEMA``) when absent.
    Rows of other runs are untouched; rerunning a night replaces that night's rows, so the
    row count does not grow. An empty ``files`` empties the partition.

    Args:
        table_uri: the table's root (a location deltalake can open).
        run_id: the partition to replace.
        files: Parquet files relative to the table root, all under ``run_id=<run_id>/``.

    Returns:
        The table version after the commit (if another writer commits at the same moment,
        this may be theirs: delta-rs does not return the version it wrote).

    Raises:
        ConfigError: bad ``run_id`` or ``files``.
        OutputError: a file is missing or off-schema, the table's schema or partitioning
            differs from the output's, another run committed the same ``run_id`` at the same
            moment, or the commit failed.
    """
    from deltalake import CommitProperties

    files = _check_files(run_id, files)
    props = CommitProperties(custom_metadata={"dear_rerank.run_id": run_id})
    adds = _add_actions(table_uri, run_id, files)
    seen: list[tuple[int, list[str]]] = []

    def attempt(n: int) -> int:
        table = open_table(table_uri)
        seen[:] = [_partition_state(table, run_id)]
        _replace(table_uri, table, run_id, adds, props)
        return open_table(table_uri).version()

    def recover(exc: Exception, n: int) -> None:
        _retry_or_raise(table_uri, run_id, seen[0], _partition_state(open_table(table_uri), run_id), exc, n)

    return retrying(attempt, attempts=COMMIT_ATTEMPTS, recover=recover)


def _replace(table_uri: str, table: Any, run_id: str, adds: list, props: Any) -> None:
    """One attempt: create the table with ``adds``, or overwrite partition ``run_id`` with them."""
    if table is None:
        from deltalake import Schema
        from deltalake.transaction import create_table_with_add_actions

        # mode="error": if another driver created the table meanwhile, this fails and the
        # retry commits into that table instead of overwriting its first commit.
        create_table_with_add_actions(
            deltalake_uri(table_uri), Schema.from_arrow(S.OUTPUT_ARROW_SCHEMA), adds, mode="error",
            partition_by=PARTITION_BY, commit_properties=props,
        )
        return
    check_table(table_uri, table=table)
    # The output's schema: a table written before a column was added (ADDED_OUTPUT_COLUMNS)
    # gains it here, null in its older rows.
    table.create_write_transaction(
        adds,
        mode="overwrite",
        schema=S.OUTPUT_ARROW_SCHEMA,
        partition_by=PARTITION_BY,
        partition_filters=[(S.RUN_ID, "=", run_id)],
        commit_properties=props,
    )


def _partition_state(table: Any, run_id: str) -> tuple[int, list[str]]:
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
    if now[0] == seen[0]:
        raise OutputError(f"{table_uri}: commit of run_id={run_id!r} failed ({reason(exc)}).") from exc
    if now[1] != seen[1]:
        raise OutputError(
            f"{table_uri}: another run committed run_id={run_id!r} at the same time (table version {now[0]}); "
            "this run's commit was not applied. Rerun it if its rows should replace the other run's."
        ) from exc
    if attempt >= COMMIT_ATTEMPTS:
        raise OutputError(
            f"{table_uri}: commit of run_id={run_id!r} still conflicted with other runs' commits after "
            f"{attempt} attempts ({reason(exc)})."
        ) from exc


def check_table(table_uri: str, *, table: Any = None) -> None:
    """Refuse a Delta table this job did not make (other partitioning or schema).

    A partition overwrite with delta-rs would silently rewrite the table's schema, so the
    job checks before scoring (``spark/preflight.py``) and again at commit. A folder
    without a table passes.

    Raises:
        OutputError: naming the partition columns or the schema difference.
    """
    table = table if table is not None else open_table(table_uri)
    if table is None:
        return
    partitions = list(table.metadata().partition_columns)
    if partitions != PARTITION_BY:
        raise OutputError(f"{table_uri}: table is partitioned by {partitions}, expected {PARTITION_BY}.")
    diff = S.output_schema_difference(pa.schema(table.schema().to_arrow()))
    if diff:
        raise OutputError(f"{table_uri}: table schema differs from the output schema: {diff}.")


def read_table(uri: str) -> pa.Table:
    """Read a whole Delta table (its current version) into Arrow.

    Example:
        >>> read_table("out/reranked").num_rows  # doctest: +SKIP
        12000
    """
    from ..exceptions import InputError

    table = open_table(uri, error=InputError)
    if table is None:
        raise InputError(f"{uri}: not a Delta table (no _delta_log).")
    return as_dataset(table).to_table()


# Reader features under which a table's data files are exactly its rows.
PLAIN_READER_FEATURES = frozenset({"timestampNtz", "v2Checkpoint", "vacuumProtocolCheck"})


def check_plain(table: Any, shown: str | None = None) -> None:
    """Refuse a table whose data files are not its rows (deletion vectors, column mapping):
    reading its files would bring back deleted rows or misname columns."""
    from ..exceptions import InputError

    protocol = table.protocol()
    needs = sorted(set(protocol.reader_features or ()) - PLAIN_READER_FEATURES)
    if protocol.min_reader_version == 2 and table.metadata().configuration.get("delta.columnMapping.mode", "none") != "none":
        needs.append("columnMapping")
    if needs:
        raise InputError(
            f"{shown or table.table_uri}: this Delta table uses {needs}, which only Spark's Delta reads correctly; "
            "read it in a session with Spark's Delta (Databricks, or --packages io.delta:delta-spark_2.13)."
        )


def table_file_system(table_uri: str) -> Any:
    """A pyarrow file system on which a table's files are opened by their paths relative to
    the table: pyarrow's own where the table is local (see ``as_dataset``), else deltalake's
    object store, so remote files and log are reached the same way (its credentials)."""
    import pyarrow.fs as pafs
    from deltalake.fs import DeltaStorageHandler

    where = location(table_uri)
    if where.is_local:
        return pafs.SubTreeFileSystem(where.local, pafs.LocalFileSystem())
    return pafs.PyFileSystem(DeltaStorageHandler(deltalake_uri(table_uri)))


def as_dataset(table: Any, shown: str | None = None) -> Any:
    """A ``DeltaTable``'s current version as a ``pyarrow.dataset.Dataset`` (no data read yet).

    A local table's data files (``file_uris``) are read by pyarrow's own file system, with the
    Delta schema (a column added later reads as null in older files) and each file's partition
    values from the Delta log. deltalake's ``to_pyarrow_dataset`` reads through a Python file
    system over its object store instead, and a process that used it sometimes aborts at exit
    ("terminate called without an active exception": 2 of 12 plain reads here, deltalake
    1.6.6 with pyarrow 26; delta-io/delta-rs#2184): the night's table was written, but the
    job's exit status said it failed. A remote table keeps deltalake's reader (its
    credentials are deltalake's).
    """
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    check_plain(table, shown)
    uris = table.file_uris()
    if not all(u.startswith("/") for u in uris):
        return table.to_pyarrow_dataset()
    from urllib.parse import urlparse

    schema = pa.schema(table.schema().to_arrow())
    columns = list(table.metadata().partition_columns)
    actions = pa.table(table.get_add_actions(flatten=True))
    values = {c: actions.column(f"partition.{c}").to_pylist() for c in columns}
    root = unquote(urlparse(table.table_uri).path)
    paths = [posixpath.join(root, unquote(p)) for p in actions.column("path").to_pylist()]  # the log's paths are encoded
    partitions = []
    for i in range(len(paths)):
        expression = ds.scalar(True)
        for c in columns:
            value = values[c][i]
            is_value = ds.field(c).is_null() if value is None else ds.field(c) == pa.scalar(value).cast(schema.field(c).type)
            expression = expression & is_value
        partitions.append(expression)
    return ds.FileSystemDataset.from_paths(
        paths, schema=schema, format=ds.ParquetFileFormat(), filesystem=pafs.LocalFileSystem(), partitions=partitions
    )
