"""What format an input holds, and reading an input without Spark.

``infer_format`` and ``check_input`` serve both readers: the Spark job's (``spark/read.py``,
which reads every input of a run) and ``read_local`` here, which reads the run files and
qrels of the ``eval`` and ``report`` commands into Arrow tables on this machine. Both apply
the same parser per text format (``text.py``), the same column rules (``rules.py``) and word
their errors the same way; the Spark reader is the one a night runs.

``read_local`` returns the canonical columns of ``schema.py`` with fixed types (ids are
strings whatever the source held) and fails with ``InputError`` naming the path, and for
text files the 1-based line number, rather than skipping anything it cannot read.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from .. import schema as S
from ..config import INPUT_FORMATS, InputSpec
from ..exceptions import InputError
from ..paths import Location, location
from . import rules, text

_ID_COLUMNS = (S.QUERY_ID, S.DOC_ID)
_IDENT = re.compile(r"^`?[A-Za-z_][\w-]*`?$")

# ----------------------------------------------------------------------------- inference


def _format_from_name(path: str) -> str | None:
    """The format a file name implies, or None; ``.gz`` is looked through."""
    parts = path.replace("\\", "/").rstrip("/").split("/")
    name = parts[-1].lower()
    parent = parts[-2].lower() if len(parts) > 1 else ""
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if name.endswith(".csv"):  # before qrels: "qrels.csv" has a header, not TREC's layout
        return "csv"
    # Before .tsv/.txt: "qrels.dev.tsv" and BEIR's "qrels/test.tsv" are qrels, not passages.
    if "qrels" in name or parent == "qrels":
        return "qrels"
    if name.endswith((".tsv", ".txt")):
        return "tsv"
    if name.endswith((".trec", ".run")):
        return "trec"
    return None


def _is_table_name(path: str) -> bool:
    parts = path.split(".")
    return "/" not in path and os.sep not in path and len(parts) in (2, 3) and all(_IDENT.match(p) for p in parts)


def infer_format(path: str) -> str:
    """Tell an input's format from its path.

    Folders: ``_delta_log/`` inside -> ``delta``; ``corpus.jsonl`` inside -> ``beir``;
    Parquet files inside -> ``parquet``; CSV files inside -> ``csv``. Files, by name:
    ``.parquet``; ``.jsonl``/``.json`` -> ``jsonl``; ``.csv`` -> ``csv``; a name holding
    ``qrels`` (or inside a ``qrels/`` folder) -> ``qrels``; ``.tsv``/``.txt`` -> ``tsv``; ``.trec``/``.run`` -> ``trec`` (``.gz`` is looked through).
    ``catalog.schema.table`` (no slash, not an existing path) -> ``table``. Remote URIs
    (``s3://...``) are judged by name only; a remote folder needs an explicit format.

    Args:
        path: file, folder, remote URI or catalog table name.

    Returns:
        One of ``config.INPUT_FORMATS``.

    Raises:
        InputError: the path does not exist or its format cannot be told.

    Example:
        >>> infer_format("prod.search.bm25_top100")
        'table'
    """
    if not path:
        raise InputError("input path must be a non-empty string, got ''.")
    where = location(path)
    if not where.is_local:
        fmt = _format_from_name(path)
        if fmt is None:
            raise InputError(f"{path}: cannot tell the format of a remote path from its name; set format to one of {INPUT_FORMATS}.")
        return fmt
    p = Path(where.local)
    if not p.exists():
        if _format_from_name(path) is None and _is_table_name(path):
            return "table"
        raise InputError(f"{path}: no such file or folder.")
    if p.is_dir():
        if (p / rules.DELTA_LOG_DIR).is_dir():
            return "delta"
        if (p / rules.BEIR_CORPUS).is_file():
            return "beir"
        if any(not f.name.startswith((".", "_")) for f in p.rglob("*.parquet")):
            return "parquet"
        if any(not f.name.startswith((".", "_")) for f in [*p.rglob("*.csv"), *p.rglob("*.csv.gz")]):
            return "csv"
        raise InputError(
            f"{path}: cannot tell the folder's format (no {rules.DELTA_LOG_DIR}/, no {rules.BEIR_CORPUS}, "
            f"no .parquet or .csv files); set format to one of {INPUT_FORMATS}."
        )
    fmt = _format_from_name(path)
    if fmt is None:
        raise InputError(f"{path}: cannot tell the format from the file name; set format to one of {INPUT_FORMATS}.")
    return fmt




def check_input(spec: InputSpec, kind: str) -> str:
    """Check, without reading it, that an input can be read as ``kind``; return its format.

    Both readers start here, and the job calls it for every input before it reads any
    (``spark/preflight.py``). Catalog tables and remote paths are checked when read.

    Raises:
        InputError: the path does not exist, its format cannot be told, a BEIR folder lacks
            the file ``kind`` needs, or columns are mapped in a format with a fixed layout.

    Example:
        >>> check_input(InputSpec("bm25.trec"), "candidates")  # doctest: +SKIP
        'trec'
    """
    fmt = spec.format or infer_format(spec.path)
    if fmt == "table":
        return fmt
    where = location(spec.path)
    if where.is_local and not os.path.exists(where.local):
        raise InputError(f"{spec.path}: no such file or folder.")
    if fmt == "beir":
        beir_file(spec.path, kind)
    fixed = "qrels" if fmt == "beir" and kind == "qrels" else fmt
    if spec.columns and fixed in text.TEXT_FORMATS:
        raise InputError(f"{spec.path}: columns {dict(spec.columns)} given, but {fixed!r} files have a fixed layout without column names.")
    return fmt


def beir_file(path: str, kind: str) -> Location:
    """The file of a BEIR folder that holds ``kind`` (``rules.BEIR_FILES``).

    Raises:
        InputError: BEIR holds no such file (candidates), or this local folder lacks it.
    """
    if kind not in rules.BEIR_FILES:
        raise InputError(f"{path}: a BEIR folder holds no first-stage {kind}; give a run file.")
    inner = location(path).join(*rules.BEIR_FILES[kind].split("/"))
    if inner.is_local and not os.path.isfile(inner.local):
        raise InputError(f"{path}: this BEIR folder has no {rules.BEIR_FILES[kind]}, needed for {kind}.")
    return inner


# ----------------------------------------------------------------------------- reading without Spark


def read_local(spec: InputSpec, kind: str) -> pa.Table:
    """Read a local input as ``kind`` (``queries``, ``corpus``, ``candidates``, ``qrels``) with
    the canonical columns of ``schema.INPUT_SCHEMAS[kind]``, as the Spark reader does.

    Candidates' rank and score are nullable (a TSV run has ranks only); at least one must be
    present. Text qrels are TREC's ``qid 0 docid rel``, or BEIR's TSV when its header comes first.

    Raises:
        InputError: see ``check_input``; also a remote path or catalog table (read those
            with Spark), a malformed line (named by file and line), missing columns (named,
            with the columns present), or a column that cannot be read as its type.

    Example:
        >>> read_local(InputSpec("qrels.dev.tsv"), "qrels").column_names  # doctest: +SKIP
        ['query_id', 'doc_id', 'relevance']
    """
    fmt = check_input(spec, kind)
    where = location(spec.path)
    if fmt == "table" or not where.is_local:
        raise InputError(f"{spec.path}: catalog tables and remote paths need a Spark session; without one, only local files and folders are read.")
    path, mapping = where.local, dict(spec.columns)
    if fmt == "beir":
        path, fmt = beir_file(spec.path, kind).local, ("qrels" if kind == "qrels" else "jsonl")
    if fmt in ("parquet", "delta"):
        table = _read_columns(path, fmt, kind, mapping)
    elif fmt == "jsonl":
        table = _read_jsonl(path, kind, mapping)
    elif fmt == "csv":
        table = _read_csv(path, kind, mapping)
    else:
        table = _read_text(path, kind, fmt)
    return _conform(table, kind, path)


def read_lines(path: str) -> Iterator[str]:
    """Every line of a text file (``.gz`` too), decoded by ``rules.decode_line``: invalid
    UTF-8 becomes U+FFFD, as in Spark; lines end at ``\\n`` only."""
    opener: Callable[..., Any] = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for raw in fh:
                yield rules.decode_line(raw)
    except (OSError, EOFError) as exc:  # EOFError: a truncated gzip member
        raise InputError(f"{path}: cannot read ({exc}).") from exc


def _read_text(path: str, kind: str, fmt: str) -> pa.Table:
    """TSV, TREC runs and qrels: ``text.parse_lines`` over the file's lines."""
    lines = list(read_lines(path))
    first = next((line for line in lines if not rules.is_blank(line)), None)
    batch, bad, reason = text.parse_lines(lines, text.layout_for(kind, fmt, first, path=path), first=True)
    if bad is not None:
        raise text.line_error(path, bad + 1, reason)
    return pa.Table.from_batches([batch])


def _resolve(path: str, kind: str, present: list[str], mapping: Mapping[str, str]) -> dict[str, str]:
    try:
        return rules.resolve_columns(kind, present, mapping)
    except rules.ColumnError as exc:
        raise InputError(f"{path}: {exc}") from None


def _read_jsonl(path: str, kind: str, mapping: Mapping[str, str]) -> pa.Table:
    """JSON Lines with ``text.json_keys`` and ``text.json_batch``, as Spark does."""
    lines = list(read_lines(path))
    keys, bad, reason = text.json_keys(lines)
    if bad is not None:
        raise text.line_error(path, bad + 1, reason)
    chosen = _resolve(path, kind, sorted(keys), mapping)
    schema = S.INPUT_SCHEMAS[kind]
    batch, _, _ = text.json_batch(lines, {source: schema.field(canonical).type for canonical, source in chosen.items()})
    return pa.Table.from_batches([batch]).rename_columns(list(chosen))


def csv_files(path: str) -> list[str]:
    """A CSV input's files: the file itself, or a folder's files in name order (hidden
    ones, starting with ``.`` or ``_``, left out as Spark leaves them out)."""
    if not os.path.isdir(path):
        return [path]
    return sorted(
        str(f) for f in Path(path).rglob("*")
        if f.is_file() and not any(part.startswith((".", "_")) for part in f.relative_to(path).parts)
    )


def csv_batch(data: bytes, kind: str, mapping: Mapping[str, str], *, path: str) -> pa.RecordBatch:
    """``text.parse_csv`` of a file's bytes named ``path`` (``.gz``: gzip), with its errors
    as ``InputError``s naming ``path``: the words of both readers."""
    try:
        return text.parse_csv(data, kind, mapping, gz=path.endswith(".gz"))
    except text.RecordError as exc:
        raise csv_error(path, exc.line, exc.reason) from None
    except rules.ColumnError as exc:
        raise csv_error(path, None, str(exc)) from None


def csv_error(path: str, line: int | None, reason: str) -> InputError:
    """The error of a CSV file: a bad record by its first line, a bad header without one."""
    return InputError(f"{path}: {reason}") if line is None else text.line_error(path, line, reason)


def _read_csv(path: str, kind: str, mapping: Mapping[str, str]) -> pa.Table:
    """CSV: each file parsed whole by ``text.parse_csv``, as the Spark reader does per task."""
    batches = []
    for name in csv_files(path):
        try:
            with open(name, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise InputError(f"{name}: cannot read ({exc}).") from exc
        batches.append(csv_batch(data, kind, mapping, path=name))
    if not batches:
        raise InputError(f"{path}: the folder holds no files.")
    return pa.Table.from_batches(batches, schema=S.INPUT_SCHEMAS[kind])


def open_table(path: str, fmt: str) -> Any:
    """A local Parquet file or folder (hive partitions), or a Delta table's current version,
    as a ``pyarrow.dataset.Dataset``: its schema is known, no data is read yet.

    Raises:
        InputError: not a Delta table, or not Parquet.
    """
    import pyarrow.dataset as ds

    if fmt == "delta":
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaProtocolError, TableNotFoundError

        from .delta_writer import as_dataset

        try:
            return as_dataset(DeltaTable(path), path)
        except TableNotFoundError as exc:
            raise InputError(f"{path}: not a Delta table ({exc}).") from exc
        except DeltaProtocolError as exc:  # deletion vectors, column mapping: not read here
            raise InputError(f"{path}: this Delta table cannot be read without Spark's Delta ({exc}).") from exc
    try:
        return ds.dataset(path, format="parquet", partitioning="hive")
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{path}: cannot open as Parquet ({exc}).") from exc


def _read_columns(path: str, fmt: str, kind: str, mapping: Mapping[str, str]) -> pa.Table:
    """Parquet or Delta: the columns ``kind`` needs, chosen before any data is read."""
    dataset = open_table(path, fmt)
    chosen = _resolve(path, kind, dataset.schema.names, mapping)
    try:
        table = dataset.to_table(columns=list(chosen.values()))
    except (OSError, pa.ArrowInvalid) as exc:  # a corrupt file of a folder; the message names it
        raise InputError(f"{path}: cannot read its data files ({exc}).") from exc
    return table.rename_columns(list(chosen))


def _conform(table: pa.Table, kind: str, path: str) -> pa.Table:
    """Cast to the kind's schema (absent optional columns as nulls) and check the ids."""
    import pyarrow.compute as pc

    target = S.INPUT_SCHEMAS[kind]
    columns = []
    for field in target:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, type=field.type))
            continue
        column = table.column(field.name)
        try:
            column = column.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise InputError(f"{path}: column {field.name!r} of type {column.type} cannot be read as {field.type} ({exc}).") from exc
        if field.name in _ID_COLUMNS:
            # Null ids stay, as in the Spark readers: the job counts them, evaluation drops them.
            column = pc.utf8_trim(column, characters=" ")  # as rules.clean_id and Spark's trim
        if field.name == S.FIRST_STAGE_SCORE:
            # A NaN score carries no first-stage evidence and sorts unpredictably.
            column = pc.if_else(pc.is_nan(column), pa.scalar(None, pa.float64()), column)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=target)
