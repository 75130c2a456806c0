"""Inputs as Spark DataFrames with the canonical columns of ``schema``.

Formats: Parquet, Delta (Spark's reader when the session has Delta, else the files
``deltalake`` lists, read by Spark), catalog tables, JSON Lines, CSV (``_read_csv``: one
task per file), MS MARCO TSV
(``id<TAB>text``), TREC run files, TREC qrels and BEIR folders. The format is inferred from
the path (``io.formats.infer_format``) unless given, and ``io.formats.check_input`` checks
the input before anything is read.

Text files, JSON Lines included, are decoded as UTF-8 with invalid bytes replaced by U+FFFD
(Spark's text reader does this; ``io.rules.decode_line`` does the same without Spark), and
the job counts such texts. Their lines end at ``\\n`` only (``_lines``). Malformed lines
(a TREC line without six fields, a TSV line without a tab, a JSON line that is not an
object) stop the run before scoring, naming the file and the line, and so does a Parquet
file that cannot be read (``_read_parquet``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from .. import schema as S
from ..config import InputSpec
from ..exceptions import InputError
from ..io import rules, text
from ..io.formats import beir_file, check_input
from ..paths import location

Kind = Literal["queries", "corpus", "candidates", "qrels"]


def _lines(spark: Any, path: str) -> Any:
    """The lines of text files as ``value``, split as ``rules.decode_line`` splits them.

    Spark's text reader splits at ``\\r``, ``\\r\\n`` and ``\\n`` by default, so a bare CR
    inside a TSV text would cut the text and start a phantom record. Lines end at ``\\n``
    only, and one trailing ``\\r`` (of a CRLF ending) is dropped.
    """
    from pyspark.sql import functions as F

    lines = spark.read.text(path, lineSep="\n")
    return lines.withColumn("value", F.regexp_replace(F.col("value"), "\r\\z", ""))


def _line_number(spark: Any, file_name: str, value: str) -> int:
    """The 1-based number of the first line of ``file_name`` equal to ``value``."""
    numbered = _lines(spark, file_name).rdd.zipWithIndex()
    return numbered.filter(lambda pair: pair[0][0] == value).map(lambda pair: pair[1]).min() + 1


def _shown(path: str, file_name: str) -> str:
    """The file named in an error: the path given when it is the file, else the file read."""
    local = location(path).local
    if local is not None and os.path.isfile(local):
        return path
    return location(file_name).local or file_name  # Spark names a local file by its file: URI


_BAD, _BAD_FILE, _BAD_LINE = "_bad_reason", "_bad_file", "_bad_line"
_MARKS = [(_BAD, "string"), (_BAD_FILE, "string"), (_BAD_LINE, "string")]


def _with_marks(batch: Any, schema: Any) -> Any:
    """``batch`` with the bad-line columns, all null."""
    import pyarrow as pa

    return pa.RecordBatch.from_arrays([*batch.columns, *(pa.nulls(batch.num_rows, pa.string()) for _ in _MARKS)], schema=schema)


def _mark(batch: Any, values: list, bad: int, reason: str, schema: Any) -> Any:
    """One row naming a bad line: its reason, its file and its text; the driver numbers it."""
    import pyarrow as pa

    data = [pa.nulls(1, f.type) for f in schema][: len(schema) - len(_MARKS)]
    where = [pa.array([reason]), pa.array([batch.column("_file")[bad].as_py()]), pa.array([values[bad]])]
    return pa.RecordBatch.from_arrays([*data, *where], schema=schema)


def _raise_first_bad(spark: Any, path: str, bad: list) -> None:
    """Raise the error of the first bad line in file order, as the local readers word it."""
    if bad:
        number, file_name, reason = min((_line_number(spark, r[_BAD_FILE], r[_BAD_LINE]), r[_BAD_FILE], r[_BAD]) for r in bad)
        raise text.line_error(_shown(path, file_name), number, reason)


def _read_text(spark: Any, path: str, kind: str, fmt: str) -> Any:
    """TSV, TREC runs and qrels: ``io.text.parse_lines``, the local readers' parser, applied
    to each Arrow batch of lines. A line that does not parse stops the run with the local
    readers' message and line number."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    from ..schema import spark_schema

    lines = _lines(spark, path).withColumn("_file", F.input_file_name())
    head = lines.filter(F.trim(F.col("value")) != "").limit(1).collect()
    layout = text.layout_for(kind, fmt, head[0]["value"] if head else None, path=path)
    out_schema = pa.schema([*layout.schema, *_MARKS])

    def parse(batches: Any) -> Any:
        from pyspark import TaskContext

        at_start = TaskContext.get().partitionId() == 0  # the file's first lines: a header may lead
        for batch in batches:
            values = batch.column("value").to_pylist()
            parsed, bad, reason = text.parse_lines(values, layout, first=at_start)
            at_start = False
            yield _with_marks(parsed, out_schema)
            if bad is not None:
                yield _mark(batch, values, bad, reason, out_schema)

    parsed = lines.mapInArrow(parse, spark_schema(out_schema))
    _raise_first_bad(spark, path, parsed.filter(F.col(_BAD).isNotNull()).select(*[n for n, _ in _MARKS]).collect())
    return parsed.drop(*[n for n, _ in _MARKS])


def _read_jsonl(spark: Any, path: str, kind: str, mapping: Mapping[str, str], carry: tuple[str, ...] = ()) -> Any:
    """JSON Lines with ``io.text.json_keys`` and ``json_batch``, the local reader's
    functions, applied to each Arrow batch of lines: the same rows, values and errors.

    Lines are read as text (invalid UTF-8 becomes U+FFFD): Spark's JSON reader would turn
    a record with undecodable bytes into a ``_corrupt_record`` with null fields.
    """
    import pyarrow as pa
    from pyspark.sql import functions as F

    from ..schema import spark_schema

    lines = _lines(spark, path).withColumn("_file", F.input_file_name())
    key_schema = pa.schema([("key", pa.string()), *_MARKS])

    def keys_of(batches: Any) -> Any:
        for batch in batches:
            values = batch.column("value").to_pylist()
            keys, bad, reason = text.json_keys(values)
            yield _with_marks(pa.RecordBatch.from_arrays([pa.array(sorted(keys), pa.string())], names=["key"]), key_schema)
            if bad is not None:
                yield _mark(batch, values, bad, reason, key_schema)

    found = lines.mapInArrow(keys_of, spark_schema(key_schema)).dropDuplicates().collect()
    _raise_first_bad(spark, path, [r for r in found if r[_BAD] is not None])
    try:
        chosen = rules.resolve_columns(kind, sorted({r["key"] for r in found if r["key"] is not None}), dict(mapping))
    except rules.ColumnError as exc:
        raise InputError(f"{path}: {exc}") from exc
    types = {source: S.INPUT_SCHEMAS[kind].field(canonical).type for canonical, source in chosen.items()}
    types.update((name, pa.string()) for name in carry if name in {r["key"] for r in found})
    value_schema = pa.schema(list(types.items()))

    def values_of(batches: Any) -> Any:
        for batch in batches:
            parsed, _, _ = text.json_batch(batch.column("value").to_pylist(), types)
            yield parsed

    return lines.mapInArrow(values_of, spark_schema(value_schema))


def _read_csv(spark: Any, path: str, kind: str, mapping: Mapping[str, str]) -> Any:
    """CSV files, each read whole and parsed by ``io.text.parse_csv``, the local reader's
    parser: the same rows, values and errors (``io.formats.csv_error``).

    A quoted CSV field may hold newlines, so a file cannot be split at lines: Spark reads
    each file as one ``binaryFile`` row (gunzipped here, for a ``.gz`` name) and one task
    parses it. So one CSV file is one task, and at most 2 GiB (Spark's limit for a
    ``binaryFile`` row): split a big CSV into several files to read it in parallel. A
    folder's files are all read (Spark leaves out names starting with ``.`` or ``_``);
    each file's header names its own columns. A bad record or header stops the run before
    scoring, naming the file and the record's first line.
    """
    import pyarrow as pa
    from pyspark.sql import functions as F

    from ..io.formats import csv_error
    from ..schema import spark_schema

    mapping = dict(mapping)
    out_schema = pa.schema([*S.INPUT_SCHEMAS[kind], *_MARKS])
    width = len(S.INPUT_SCHEMAS[kind])

    def parse(batches: Any) -> Any:
        for batch in batches:
            for name, data in zip(batch.column("path").to_pylist(), batch.column("content").to_pylist()):
                try:
                    yield _with_marks(text.parse_csv(data, kind, mapping, gz=name.endswith(".gz")), out_schema)
                    continue
                except text.RecordError as exc:
                    where = (exc.reason, name, str(exc.line))
                except rules.ColumnError as exc:
                    where = (str(exc), name, None)
                data_columns = [pa.nulls(1, f.type) for f in out_schema][:width]
                yield pa.RecordBatch.from_arrays([*data_columns, *(pa.array([v], pa.string()) for v in where)], schema=out_schema)

    files = spark.read.format("binaryFile").load(path).select("path", "content")
    parsed = files.mapInArrow(parse, spark_schema(out_schema))
    bad = parsed.filter(F.col(_BAD).isNotNull()).select(*[n for n, _ in _MARKS]).collect()
    if bad:
        first = min(bad, key=lambda r: (r[_BAD_FILE], int(r[_BAD_LINE] or 0)))
        line = None if first[_BAD_LINE] is None else int(first[_BAD_LINE])
        raise csv_error(_shown(path, first[_BAD_FILE]), line, first[_BAD])
    return parsed.drop(*[n for n, _ in _MARKS])


def _read_parquet(spark: Any, path: str) -> Any:
    """Parquet files, with every file's footer read now (``mergeSchema``).

    Spark otherwise reads one footer for the schema and meets a corrupt or non-Parquet file
    of a folder only at the first action, as a Java error. Here it is named at once.
    """
    try:
        return spark.read.option("mergeSchema", "true").parquet(path)
    except Exception as exc:  # noqa: BLE001 - Py4JJavaError: SparkException FAILED_READ_FILE.*
        bad = _unreadable_file(exc)
        if bad is None:
            raise
        raise InputError(f"{bad}: not a readable Parquet file (corrupt, truncated or another format); remove or replace it.") from None


def _unreadable_file(exc: Exception) -> str | None:
    """The file a Spark ``FAILED_READ_FILE`` error names, or None for any other error."""
    error = getattr(exc, "java_exception", exc)  # Py4JJavaError wraps the SparkException
    try:
        if str(error.getCondition()).startswith("FAILED_READ_FILE"):
            return str(error.getMessageParameters()["path"])
    except Exception:  # noqa: BLE001 - not a SparkThrowable, or no path parameter
        pass
    return None


def _read_delta(spark: Any, path: str, spark_delta: bool) -> Any:
    if spark_delta:
        return spark.read.format("delta").load(path)
    return _read_delta_files(spark, path)


# Reader features that change nothing about which rows a table's data files hold: its files
# read as Parquet are its rows. Others (deletion vectors, column mapping) need Spark's Delta.
_FILE = "_dear_file"


def _read_delta_files(spark: Any, path: str) -> Any:
    """A Delta table read without Spark's Delta: ``deltalake`` lists the current data files
    and Spark reads them, with the Delta schema given (columns added later read as null).

    Partition values come from the Delta log, joined to each file by its name, not from the
    folder names: Spark would read ``007`` as 7, and a value ``deltalake`` percent-encodes
    (``é`` as ``%C3%A9``) as other characters.
    """
    import pyarrow as pa
    from pyspark.sql import functions as F

    table = _delta_table(path)
    schema = pa.schema(table.schema().to_arrow())
    partitions = table.metadata().partition_columns
    data = pa.schema([f for f in schema if f.name not in partitions])
    uris = table.file_uris()
    if not uris:
        return spark.createDataFrame([], S.spark_schema(schema))
    files = spark.read.schema(S.spark_schema(data)).parquet(*uris)
    if not partitions:
        return files
    actions = pa.table(table.get_add_actions(flatten=True))
    names = [p.rsplit("/", 1)[-1] for p in actions.column("path").to_pylist()]
    if len(set(names)) < len(names):
        raise InputError(f"{path}: data files of different partitions share a name; read this table with Spark's Delta.")
    values = {c: actions.column(f"partition.{c}").cast(schema.field(c).type) for c in partitions}
    by_file = spark.createDataFrame(pa.table({_FILE: names, **values}))
    return files.withColumn(_FILE, F.col("_metadata.file_name")).join(F.broadcast(by_file), _FILE).drop(_FILE)


def _delta_table(path: str) -> Any:
    """``deltalake``'s view of the table, refused where its data files are not its rows."""
    from deltalake import DeltaTable

    from ..io.delta_writer import check_plain

    where = location(path).for_deltalake
    if where is None:
        raise InputError(f"{path}: deltalake cannot open this store; read it in a session with Spark's Delta (Databricks, or --packages io.delta:delta-spark_2.13).")
    table = DeltaTable(where)
    check_plain(table, path)
    return table


def _read_raw(spark: Any, spec: InputSpec, kind: Kind, spark_delta: bool, carry: tuple[str, ...] = ()) -> Any:
    fmt = check_input(spec, kind)
    if fmt == "table":
        try:
            return spark.table(spec.path)
        except Exception as exc:  # noqa: BLE001 - AnalysisException: no such table
            raise InputError(f"{spec.path}: no such table in this Spark session ({exc}).") from exc
    path = location(spec.path).for_spark
    if fmt == "beir":
        inner = beir_file(spec.path, kind).for_spark
        if kind == "qrels":
            return _read_text(spark, inner, kind, "qrels")
        return _read_jsonl(spark, inner, kind, spec.columns, carry)
    if fmt == "parquet":
        return _read_parquet(spark, path)
    if fmt == "delta":
        return _read_delta(spark, path, spark_delta)
    if fmt == "jsonl":
        return _read_jsonl(spark, path, kind, spec.columns, carry)
    if fmt == "csv":
        return _read_csv(spark, path, kind, spec.columns)
    return _read_text(spark, path, kind, fmt)


def _canonical(df: Any, spec: InputSpec, kind: Kind, carry: tuple[str, ...] = ()) -> Any:
    """Rename to canonical columns, cast ids to string, and check required columns; the
    ``carry`` columns come along as strings, under their own names."""
    from pyspark.sql import functions as F

    # CSV's parser has applied the mapping already, file by file (each has its own header).
    mapping = {} if check_input(spec, kind) == "csv" else dict(spec.columns)
    try:
        chosen = rules.resolve_columns(kind, df.columns, mapping)
    except rules.ColumnError as exc:
        raise InputError(f"{spec.path}: {exc}") from exc
    absent = [name for name in carry if name not in df.columns]
    if absent:
        raise InputError(f"{spec.path}: no column {absent[0]!r} (asked for by --adapter-column) in the {kind}; columns present: {df.columns}.")
    selected = [F.col(f"`{source}`").alias(canonical) for canonical, source in chosen.items()]
    selected += [F.col(f"`{name}`").cast("string").alias(name) for name in carry if name not in chosen]
    out = df.select(*selected)
    for id_col in (S.QUERY_ID, S.DOC_ID):
        if id_col in out.columns:
            out = out.withColumn(id_col, F.trim(F.col(id_col).cast("string")))
    if kind == "candidates":
        # try_cast: under ANSI mode (Spark 4's default) a NaN, an overflowing or a
        # non-numeric rank would fail the whole job at its first action; such a value
        # carries no first-stage evidence, so it reads as missing (null), like a NaN score.
        for col, typ in ((S.FIRST_STAGE_RANK, "int"), (S.FIRST_STAGE_SCORE, "double")):
            out = out.withColumn(col, F.col(col).try_cast(typ) if col in out.columns else F.lit(None).cast(typ))
        # NaN scores order unpredictably; they carry no first-stage evidence.
        out = out.withColumn(S.FIRST_STAGE_SCORE, F.when(F.isnan(S.FIRST_STAGE_SCORE), None).otherwise(F.col(S.FIRST_STAGE_SCORE)))
    if kind == "corpus" and S.TITLE not in out.columns:
        out = out.withColumn(S.TITLE, F.lit(None).cast("string"))
    for col in (S.QUERY, S.TITLE, S.TEXT):
        if col in out.columns:
            out = out.withColumn(col, F.col(col).cast("string"))
    return out


def read_input(spark: Any, spec: InputSpec, kind: Kind, *, spark_delta: bool | None = None, carry: tuple[str, ...] = ()) -> Any:
    """Read one input as a DataFrame with the canonical columns of ``kind``, and the
    ``carry`` columns of the table as strings (the routing column of the queries).

    Raises:
        InputError: the path does not exist, the format is unknown, a line is malformed,
            or required columns are missing (named, with the columns the table has).

    Example:
        >>> corpus = read_input(spark, InputSpec("collection.tsv"), "corpus")
    """
    if spark_delta is None:
        from .session import has_spark_delta

        spark_delta = has_spark_delta(spark)
    try:
        df = _read_raw(spark, spec, kind, spark_delta, carry)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - Spark's AnalysisException and friends
        raise InputError(f"{spec.path}: cannot read as {kind} ({type(exc).__name__}: {str(exc)[:500]}).") from exc
    return _canonical(df, spec, kind, carry)
