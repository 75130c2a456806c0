"""Load a ranked run (TREC file, Parquet, Delta, candidates) as ``(query_id, doc_id, score)``.

A run here is what ir-measures ranks: it orders each query's documents by score, highest
first. Inputs that hold ranks but no scores (first-stage candidates from an MS MARCO TSV,
``first_stage_score`` null) get ``score = -rank`` so that order is the ranked order.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .. import schema as S
from ..config import InputSpec
from ..exceptions import InputError
from ..paths import location
from .formats import check_input, open_table, read_local
from .trec import to_arrow

log = logging.getLogger(__name__)


def drop_rows_without_ids(table: pa.Table, *, what: str) -> pa.Table:
    """Rows whose query or doc id is null or blank cannot be evaluated: drop them, saying how many.

    The readers keep such rows (so the job can count them); evaluation is where they go.
    """
    keep = None
    for name in (S.QUERY_ID, S.DOC_ID):
        has = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(table.column(name).cast(pa.string()))), 0), False)
        keep = has if keep is None else pc.and_(keep, has)
    dropped = table.num_rows - pc.sum(keep.cast(pa.int64())).as_py() if table.num_rows else 0
    if dropped:
        log.warning("%s: %d rows without a query_id or doc_id are not evaluated.", what, dropped)
        table = table.filter(keep)
    return table

RUN_SCHEMA = pa.schema([(S.QUERY_ID, pa.string()), (S.DOC_ID, pa.string()), (S.SCORE, pa.float64())])
# Where a run's score and rank may be found: reranked output first, then first-stage names.
_SCORE_NAMES = (S.SCORE, S.FIRST_STAGE_SCORE)
_RANK_NAMES = (S.RANK, S.FIRST_STAGE_RANK)


def _first(table: pa.Table, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in table.column_names), None)


def as_run(table_or_df: Any, *, what: str = "run") -> pa.Table:
    """Normalise a ranked table to ``(query_id, doc_id, score float64)``.

    Takes ``score`` (or ``first_stage_score``); when that is absent or holds any null, the
    whole run is ordered by ``-rank`` (or ``-first_stage_rank``) instead, since mixing given
    and derived scores in one run would interleave two scales.

    Example:
        >>> import pyarrow as pa
        >>> as_run(pa.table({"query_id": [1], "doc_id": [2], "first_stage_rank": [3]})).to_pylist()
        [{'query_id': '1', 'doc_id': '2', 'score': -3.0}]
    """
    table = to_arrow(table_or_df, what=what)
    missing = [c for c in (S.QUERY_ID, S.DOC_ID) if c not in table.column_names]
    if missing:
        raise InputError(f"{what}: missing column(s) {missing}; got {table.column_names}.")
    table = drop_rows_without_ids(table, what=what)
    score_name, rank_name = _first(table, _SCORE_NAMES), _first(table, _RANK_NAMES)
    if score_name is not None and table.column(score_name).null_count == 0:
        score = table.column(score_name).cast(pa.float64())
    elif rank_name is not None and table.column(rank_name).null_count == 0:
        score = pc.negate(table.column(rank_name).cast(pa.float64()))
    else:
        raise InputError(
            f"{what}: needs a complete score column {_SCORE_NAMES} or rank column {_RANK_NAMES} "
            f"(no nulls) to order documents; got {table.column_names}."
        )
    return pa.Table.from_arrays(
        [table.column(S.QUERY_ID).cast(pa.string()), table.column(S.DOC_ID).cast(pa.string()), score],
        schema=RUN_SCHEMA,
    )


# Formats a run can be read from: a TREC run file, or candidates or reranked rows in a table.
_RUN_FORMATS = ("trec", "tsv", "jsonl", "csv", "parquet", "delta")


def read_run(path: str, *, format: str | None = None, run_id: str | None = None) -> pa.Table:
    """Read a ranked run from a TREC run file, a TSV run, JSON Lines, CSV, Parquet or a Delta table.

    The job's output table holds every night's run in the ``run_id`` partition column; pick
    one with ``run_id``. A table holding several runs and no ``run_id`` is refused rather
    than evaluated as one mixed run. Anything else is read as first-stage candidates
    (``formats.read_local``).

    Args:
        path: a local file or folder.
        format: one of ``trec``, ``tsv``, ``parquet``, ``delta``, ``jsonl``, ``csv``; None infers it.
        run_id: keep only these rows of a table with a ``run_id`` column.

    Returns:
        ``(query_id, doc_id, score)``, see ``as_run``.

    Example:
        >>> read_run("out/reranked", run_id="2024-05-01")  # doctest: +SKIP
    """
    spec = InputSpec(path, format=format)
    fmt = check_input(spec, "candidates")
    if fmt not in _RUN_FORMATS:
        raise InputError(f"{path}: a run must be a TREC run, TSV run, JSON Lines, CSV, Parquet or Delta table, got format {fmt!r}.")
    where = location(path)
    dataset = open_table(where.local, fmt) if fmt in ("parquet", "delta") and where.is_local else None
    if dataset is None or not {S.SCORE, S.RANK} & set(dataset.schema.names):
        return as_run(read_local(spec, "candidates"), what=path)
    return as_run(_one_run(dataset, path, run_id), what=path)


def _one_run(dataset: Any, path: str, run_id: str | None) -> pa.Table:
    """The reranked rows of one run of an output table (``run_id``, or its only run)."""
    import pyarrow.dataset as ds

    if S.RUN_ID not in dataset.schema.names:
        if run_id is not None:
            raise InputError(f"{path}: run_id {run_id!r} given but the table has no {S.RUN_ID!r} column.")
        return dataset.to_table()
    runs = sorted(v for v in pc.unique(dataset.to_table(columns=[S.RUN_ID]).column(S.RUN_ID)).to_pylist() if v is not None)
    if run_id is None and len(runs) > 1:
        raise InputError(f"{path}: holds {len(runs)} runs {runs}; choose one with run_id.")
    if run_id is None:
        return dataset.to_table()
    if run_id not in runs:
        raise InputError(f"{path}: run_id {run_id!r} not found; runs present: {runs}.")
    return dataset.to_table(filter=ds.field(S.RUN_ID) == run_id)
