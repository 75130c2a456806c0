"""Write a ranked run as a TREC run file (``qid Q0 docid rank score tag``), for trec_eval."""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from .. import schema as S
from ..exceptions import OutputError

_RUN_COLUMNS = (S.QUERY_ID, S.DOC_ID, S.RANK, S.SCORE)
_WHITESPACE = re.compile(r"\s")


def to_arrow(table_or_df: Any, *, what: str = "table") -> pa.Table:
    """Return an Arrow table for an Arrow table or a pandas DataFrame (index dropped)."""
    if isinstance(table_or_df, pa.Table):
        return table_or_df
    if hasattr(table_or_df, "columns") and hasattr(table_or_df, "iloc"):
        return pa.Table.from_pandas(table_or_df, preserve_index=False)
    raise TypeError(f"{what} must be a pyarrow.Table or a pandas.DataFrame, got {type(table_or_df).__name__}.")


def write_trec_run(table_or_df: Any, path: str | os.PathLike[str], *, tag: str = "dear") -> int:
    """Write ``(query_id, doc_id, rank, score)`` rows as a TREC run, sorted by query then rank.

    The file is written beside its final name and renamed into place, so a reader never sees
    half a run. A ``.gz`` name is gzip-compressed. Scores are written with ``repr`` so they
    read back to the same float (trec_eval orders by score, not by rank).

    Args:
        table_or_df: Arrow table or pandas DataFrame holding the four columns.
        path: the file to write.
        tag: the run tag of the sixth field; no whitespace.

    Returns:
        The number of lines written.

    Raises:
        OutputError: a column is missing, a value is null, or an id holds whitespace.

    Example:
        >>> import pyarrow as pa
        >>> run = pa.table({"query_id": ["q1"], "doc_id": ["d7"], "rank": [1], "score": [3.5]})
        >>> write_trec_run(run, "/tmp/example.trec")
        1
    """
    table = _run_columns(to_arrow(table_or_df, what="table_or_df"), path)
    return write_trec_batches([table.sort_by([(S.QUERY_ID, "ascending"), (S.RANK, "ascending")])], path, tag=tag)


def _run_columns(table: pa.Table, path: Any) -> pa.Table:
    missing = [c for c in _RUN_COLUMNS if c not in table.column_names]
    if missing:
        raise OutputError(f"{path}: cannot write a TREC run, missing column(s) {missing}; got {table.column_names}.")
    return table.select(list(_RUN_COLUMNS))


def _lines(table: pa.Table, path: Any, tag: str) -> list[str]:
    table = _run_columns(table, path)
    for name in _RUN_COLUMNS:
        if table.column(name).null_count:
            raise OutputError(f"{path}: column {name!r} holds {table.column(name).null_count} null(s); a TREC line needs every field.")
    lines = []
    for qid, docid, rank, score in zip(*(table.column(c).to_pylist() for c in _RUN_COLUMNS)):
        qid, docid = str(qid), str(docid)
        if _WHITESPACE.search(qid) or _WHITESPACE.search(docid):
            # Whitespace would shift the fields and trec_eval would read another run.
            raise OutputError(f"{path}: ids must hold no whitespace for a TREC run, got query_id={qid!r} doc_id={docid!r}.")
        lines.append(f"{qid} Q0 {docid} {int(rank)} {float(score)!r} {tag}\n")
    return lines


def write_trec_batches(batches: Iterable[pa.Table], path: str | os.PathLike[str], *, tag: str = "dear") -> int:
    """Write a TREC run from Arrow tables already in run order (query, then rank), one at a
    time: the whole run is never held in memory (the Spark job streams its top-k here).

    Same file handling, checks and return value as ``write_trec_run``.
    """
    if not tag or _WHITESPACE.search(tag):
        raise OutputError(f"tag must be a non-empty word without whitespace, got {tag!r}.")
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    opener = gzip.open if path.endswith(".gz") else open
    written = 0
    try:
        with opener(tmp, "wt", encoding="utf-8", newline="\n") as fh:
            for table in batches:
                lines = _lines(table, path, tag)
                fh.writelines(lines)
                written += len(lines)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write TREC run ({exc}).") from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return written
