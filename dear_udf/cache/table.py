"""The score cache's Delta table, through ``deltalake`` (no JVM).

One row per scored pair: ``CACHE_ARROW_SCHEMA``, partitioned by ``scorer_key`` so that a
run reads only its own scorer's files and ``cache vacuum`` drops a whole model's entries
by partition. Rows are only ever appended (or deleted by ``cache vacuum``), never
updated: a chunk's scores are one append commit.

Concurrency: appends are blind (they read nothing), so two runs appending at the same
moment do not conflict in Delta's sense; delta-rs retries a lost commit race itself, and
``append_entries`` retries again from a fresh snapshot (``io.delta_writer.append``; also
when two runs create the table at once: one wins version 0, the other appends after it).
Both runs' rows land. The same pair scored by two runs gives two rows; the reader picks
one deterministically (``spark.score_cache.pick_one``), so every reader of one table
version sees the same score.

The Spark side (key expressions, the lookup, chunk appends through Spark's Delta) is
``dear_udf.spark.score_cache``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from .. import schema as S
from ..exceptions import DearRerankError
from ..io.delta_writer import deltalake_uri, open_table
from ..paths import location

SCORER_KEY = S.SCORER_KEY
PAIR_KEY = "pair_key"
SCORED_AT = "scored_at"
SCORER = "scorer"  # what the scorer key hashes, as JSON: for ``cache stats``

CACHE_ARROW_SCHEMA = pa.schema(
    [
        (SCORER_KEY, pa.string()),
        (PAIR_KEY, pa.string()),
        (S.SCORE, pa.float32()),
        # What the run summary counts per pair (tokenization.Encoded), so a night served
        # from the cache reports the same pooling warnings as the night that scored it.
        (S.POOLED_EARLY, pa.bool_()),
        (S.POOLED_IN_QUERY, pa.bool_()),
        # What the forward pass computed: the job ties a query's pairs that share it.
        (S.COMPUTED_KEY, pa.string()),
        # For people who inspect the cache; lookups read none of these.
        (S.QUERY_ID, pa.string()),
        (S.DOC_ID, pa.string()),
        (S.RUN_ID, pa.string()),
        (SCORED_AT, pa.timestamp("us", tz="UTC")),
        (SCORER, pa.string()),
    ]
)
# Columns a cache written before format 2 lacks. Such a cache is still a score cache: its
# entries are under format-1 scorer keys, which no run asks for any more, and the first
# append adds the columns (schema evolution; no rewrite).
ADDED_IN_FORMAT_2 = (S.COMPUTED_KEY, SCORER)
PARTITION_BY = [SCORER_KEY]
# What a lookup returns per pair key, in the order ``pick_one`` breaks ties.
ENTRY_COLUMNS = (S.SCORE, S.POOLED_EARLY, S.POOLED_IN_QUERY, S.COMPUTED_KEY)
APPEND_ATTEMPTS = 10


class CacheError(DearRerankError):
    """The score cache's path holds something else, or it could not be read or written."""


def _refuse_foreign_folder(uri: str) -> None:
    """A local path that cannot be a cache: a file, or a folder of other things."""
    local = location(uri).local
    if local is None or not os.path.exists(local):
        return
    if not os.path.isdir(local):
        raise CacheError(f"{uri}: the score cache path is a file, not a Delta table folder.")
    entries = sorted(os.listdir(local))
    if entries and "_delta_log" not in entries:
        shown = ", ".join(repr(e) for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise CacheError(
            f"{uri}: the score cache path is a folder that is not a Delta table (no _delta_log; it holds "
            f"{shown}). Give a new or empty folder, or an existing score cache."
        )


def cache_schema_difference(schema: pa.Schema) -> str | None:
    """None for the cache's schema, or for a cache of format 1 (``ADDED_IN_FORMAT_2``
    missing); else what differs from the current schema."""
    diff = S.schema_difference(schema, CACHE_ARROW_SCHEMA)
    older = pa.schema([f for f in CACHE_ARROW_SCHEMA if f.name not in ADDED_IN_FORMAT_2])
    return None if diff is None or S.schema_difference(schema, older) is None else diff


def check_cache(uri: str):
    """The cache's ``DeltaTable``, or None where there is none yet; refuses anything else.

    Raises:
        CacheError: the path is a file, a folder holding something other than a Delta
            table, or a Delta table of another schema or partitioning. The message names
            the path and what differs.

    Example:
        >>> check_cache("/tables/score-cache")  # doctest: +SKIP
        DeltaTable(...)
    """
    _refuse_foreign_folder(uri)
    try:
        table = open_table(uri, error=CacheError)
    except CacheError:
        raise
    except Exception as exc:  # deltalake raises its own error types per store
        raise CacheError(f"{uri}: cannot open the score cache ({' '.join(str(exc).split()[:40])}).") from exc
    if table is None:
        return None
    diff = cache_schema_difference(pa.schema(table.schema().to_arrow()))
    if diff:
        raise CacheError(f"{uri}: not a score cache: the Delta table's schema differs from the cache's: {diff}.")
    partitions = list(table.metadata().partition_columns)
    if partitions != PARTITION_BY:
        raise CacheError(f"{uri}: not a score cache: the Delta table is partitioned by {partitions}, expected {PARTITION_BY}.")
    return table


def open_cache(uri: str):
    """The cache's ``DeltaTable``, created empty when absent (after ``check_cache``'s checks).

    Two processes creating it at once both end up with the one table.

    Example:
        >>> open_cache("/tables/score-cache").version()  # doctest: +SKIP
        0
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    table = check_cache(uri)
    if table is not None:
        return table
    try:
        DeltaTable.create(deltalake_uri(uri, error=CacheError), CACHE_ARROW_SCHEMA, mode="error", partition_by=PARTITION_BY)
    except DeltaError:  # another process created it first: use theirs, after the checks
        pass
    table = check_cache(uri)
    if table is None:
        raise CacheError(f"{uri}: could not create the score cache table.")
    return table


def entries_table(
    scores: pa.Table,
    *,
    run_id: str,
    scorer_key: str | None = None,
    scorers: Mapping[str, str] | None = None,
    scored_at: dt.datetime | None = None,
) -> pa.Table:
    """Cache rows from scores: ``pair_key, score`` and optionally ``pooled_early``,
    ``pooled_in_query``, ``computed_key``, ``query_id``, ``doc_id``.

    The scorer key is each row's ``scorer_key`` (the key of the process that scored it),
    else ``scorer_key``; ``scorers`` maps a scorer key to what it hashes (JSON, the
    ``scorer`` column). Rows whose score is NaN or infinite are left out: a cache never
    serves a score the run would refuse.
    """
    import pyarrow.compute as pc

    S.check_run_id(run_id)
    missing = [c for c in (PAIR_KEY, S.SCORE) if c not in scores.column_names]
    if missing:
        raise CacheError(f"scores to cache lack the column(s) {missing}; they have {scores.column_names}.")
    if SCORER_KEY not in scores.column_names and not scorer_key:
        raise CacheError("scores to cache need a scorer_key column or the scorer_key argument.")
    when = scored_at or dt.datetime.now(dt.timezone.utc)
    if when.tzinfo is None:
        raise CacheError(f"scored_at must be timezone-aware, got {when!r}.")
    n = scores.num_rows
    keys = scores.column(SCORER_KEY).cast(pa.string()) if SCORER_KEY in scores.column_names else pa.chunked_array([pa.array([scorer_key] * n, pa.string())])
    constant = {
        SCORER_KEY: keys,
        S.RUN_ID: pa.array([run_id] * n, pa.string()),
        SCORED_AT: pa.array([when] * n, pa.timestamp("us", tz="UTC")),
        SCORER: _scorer_column(keys, scorers or {}),
    }
    columns = []
    for field in CACHE_ARROW_SCHEMA:
        if field.name in constant:
            columns.append(constant[field.name])
        elif field.name in scores.column_names:
            columns.append(scores.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(n, field.type))
    table = pa.Table.from_arrays(columns, schema=CACHE_ARROW_SCHEMA)
    finite = pc.and_(pc.is_finite(table.column(S.SCORE)), pc.is_valid(table.column(PAIR_KEY)))
    return table.filter(pc.fill_null(finite, False))


def _scorer_column(keys: Any, scorers: Mapping[str, str]) -> Any:
    import pyarrow.compute as pc

    known = sorted(scorers)
    where = pc.index_in(keys, value_set=pa.array(known, pa.string()))
    return pc.take(pa.array([scorers[k] for k in known], pa.string()), where)


def append_entries(uri: str, entries: pa.Table, *, transaction: tuple[str, int] | None = None) -> int | None:
    """Append cache rows (``CACHE_ARROW_SCHEMA``) as ONE Delta commit; returns the table
    version read right after it (a concurrent writer's later commit may be in it already).

    Nothing is committed for no rows (returns None). Concurrent appends all land. With
    ``transaction`` (an application id and a version, Delta's idempotent-write marker) a
    retry whose failed attempt landed after all writes nothing (``io.delta_writer.append``).
    A cache of format 1 gains the new columns.

    Raises:
        CacheError: the path is not a score cache (``check_cache``), the rows are off-schema,
            or the commit still failed after ``APPEND_ATTEMPTS`` attempts.
    """
    from ..io.delta_writer import append

    diff = S.schema_difference(entries.schema, CACHE_ARROW_SCHEMA)
    if diff:
        raise CacheError(f"{uri}: rows to append are not cache rows: {diff}.")
    if entries.num_rows == 0:
        return None
    open_cache(uri)
    return append(uri, entries.cast(CACHE_ARROW_SCHEMA), partition_by=PARTITION_BY, transaction=transaction,
                  attempts=APPEND_ATTEMPTS, error=CacheError)
