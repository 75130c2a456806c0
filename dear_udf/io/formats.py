"""Local readers of the job's inputs (queries, corpus, candidates, qrels) into Arrow tables.

No Spark here: these read qrels for evaluation, feed the demo, and are the reference the
Spark readers follow. The per-line rules (field layouts, BEIR file names, UTF-8 handling)
live in ``rules.py`` so both sides apply the same ones.

Every reader returns the canonical columns of ``schema.py`` with fixed types (ids are
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
from . import rules
from . import text
from .text import read_text
from ..paths import location

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
    Parquet files inside -> ``parquet``. Files, by name: ``.parquet``; ``.jsonl``/``.json``
    -> ``jsonl``; a name holding ``qrels`` (or inside a ``qrels/`` folder) -> ``qrels``;
    ``.tsv``/``.txt`` -> ``tsv``; ``.trec``/``.run`` -> ``trec`` (``.gz`` is looked through).
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
        raise InputError(
            f"{path}: cannot tell the folder's format (no {rules.DELTA_LOG_DIR}/, no {rules.BEIR_CORPUS}, "
            f"no .parquet files); set format to one of {INPUT_FORMATS}."
        )
    fmt = _format_from_name(path)
    if fmt is None:
        raise InputError(f"{path}: cannot tell the format from the file name; set format to one of {INPUT_FORMATS}.")
    return fmt


# ----------------------------------------------------------------------------- text files


def iter_all_lines(path: str | os.PathLike[str]) -> Iterator[str]:
    """Every line of a text file (``.gz`` too), decoded by ``rules.decode_line``: invalid
    UTF-8 becomes U+FFFD, as in Spark; lines end at ``\\n`` only."""
    opener: Callable[..., Any] = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for raw in fh:
                yield rules.decode_line(raw)
    except (OSError, EOFError) as exc:  # EOFError: a truncated gzip member
        raise InputError(f"{path}: cannot read ({exc}).") from exc


def iter_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` of a text file, 1-based, blank lines skipped."""
    for number, line in enumerate(iter_all_lines(path), start=1):
        if not rules.is_blank(line):
            yield number, line


# ----------------------------------------------------------------------------- columnar


def _resolve(path: str, kind: str, present: list[str], mapping: Mapping[str, str]) -> dict[str, str]:
    try:
        return rules.resolve_columns(kind, present, mapping)
    except rules.ColumnError as exc:
        raise InputError(f"{path}: {exc}") from None


def _read_jsonl(path: str, kind: str, mapping: Mapping[str, str]) -> pa.Table:
    """Read JSON Lines with ``text.json_keys`` and ``text.json_batch``, as Spark does."""
    lines = list(iter_all_lines(path))
    keys, bad, reason = text.json_keys(lines)
    if bad is not None:
        raise text.line_error(path, bad + 1, reason)
    chosen = _resolve(path, kind, sorted(keys), mapping)
    schema = S.INPUT_SCHEMAS[kind]
    batch, _, _ = text.json_batch(lines, {source: schema.field(canonical).type for canonical, source in chosen.items()})
    return pa.Table.from_batches([batch]).rename_columns(list(chosen))


def _read_parquet(path: str, kind: str, mapping: Mapping[str, str]) -> pa.Table:
    import pyarrow.dataset as ds

    try:
        dataset = ds.dataset(path, format="parquet", partitioning="hive")
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{path}: cannot open as Parquet ({exc}).") from exc
    chosen = _resolve(path, kind, dataset.schema.names, mapping)  # before reading any data
    try:
        table = dataset.to_table(columns=list(chosen.values()))
    except (OSError, pa.ArrowInvalid) as exc:  # a corrupt file of a folder; the message names it
        raise InputError(f"{path}: cannot read as Parquet ({exc}).") from exc
    return table.rename_columns(list(chosen))


def _read_delta(path: str, kind: str, mapping: Mapping[str, str]) -> pa.Table:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(path)
    except TableNotFoundError as exc:
        raise InputError(f"{path}: not a Delta table ({exc}).") from exc
    chosen = _resolve(path, kind, [f.name for f in table.schema().fields], mapping)
    return table.to_pyarrow_table(columns=list(chosen.values())).rename_columns(list(chosen))


# ----------------------------------------------------------------------------- finishing


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


def _read(spec: InputSpec, kind: str) -> pa.Table:
    fmt = spec.format or infer_format(spec.path)
    path = spec.path
    mapping = dict(spec.columns)
    if fmt == "table":
        raise InputError(f"{path}: catalog tables need a Spark session; the local readers read files and Delta folders only.")
    if fmt == "beir":
        if kind not in rules.BEIR_FILES:
            raise InputError(f"{path}: a BEIR folder holds no first-stage {kind}; give a run file.")
        inner = os.path.join(path, rules.BEIR_FILES[kind])
        if not os.path.isfile(inner):
            raise InputError(f"{path}: BEIR folder lacks {rules.BEIR_FILES[kind]}.")
        path, fmt = inner, ("qrels" if kind == "qrels" else "jsonl")
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or folder.")
    if fmt == "parquet":
        table = _read_parquet(path, kind, mapping)
    elif fmt == "delta":
        table = _read_delta(path, kind, mapping)
    elif fmt == "jsonl":
        table = _read_jsonl(path, kind, mapping)
    else:
        if mapping:
            raise InputError(f"{path}: columns {mapping} given, but {fmt!r} files have a fixed layout without column names.")
        table = read_text(path, kind, fmt)
    return _conform(table, kind, path)


# ----------------------------------------------------------------------------- public readers


def read_queries(spec: InputSpec) -> pa.Table:
    """Read queries as ``(query_id, query)``.

    Example:
        >>> read_queries(InputSpec("data/queries.tsv")).column_names  # doctest: +SKIP
        ['query_id', 'query']
    """
    return _read(spec, "queries")


def read_corpus(spec: InputSpec) -> pa.Table:
    """Read documents as ``(doc_id, title, text)``; ``title`` is null where the input has none.

    Example:
        >>> read_corpus(InputSpec("beir/scifact")).column_names  # doctest: +SKIP
        ['doc_id', 'title', 'text']
    """
    return _read(spec, "corpus")


def read_candidates(spec: InputSpec) -> pa.Table:
    """Read first-stage candidates as ``(query_id, doc_id, first_stage_rank, first_stage_score)``.

    Rank and score are nullable (a TSV run has ranks only); at least one must be present.

    Example:
        >>> read_candidates(InputSpec("bm25.run")).column_names  # doctest: +SKIP
        ['query_id', 'doc_id', 'first_stage_rank', 'first_stage_score']
    """
    return _read(spec, "candidates")


def read_qrels(spec: InputSpec) -> pa.Table:
    """Read relevance judgements as ``(query_id, doc_id, relevance)``.

    Text qrels are TREC's ``qid 0 docid rel``, or BEIR's TSV when its header comes first.

    Example:
        >>> read_qrels(InputSpec("qrels.dev.tsv")).num_rows  # doctest: +SKIP
        7437
    """
    return _read(spec, "qrels")


def read_trec_run(path: str | os.PathLike[str]) -> pa.Table:
    """Read a TREC run file as ``(query_id, doc_id, rank, score)``, in file order.

    Example:
        >>> read_trec_run("reranked.trec").column_names  # doctest: +SKIP
        ['query_id', 'doc_id', 'rank', 'score']
    """
    path = str(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file.")
    return read_text(path, "run", "trec")
