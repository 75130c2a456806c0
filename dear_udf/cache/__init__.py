"""The score cache: scores keyed by what determines them, kept in a Delta table.

Pure Python, pyarrow and deltalake; no pyspark. ``keys`` says what a key hashes,
``table`` how entries are stored and appended, ``check`` how a night's hits are checked,
``upkeep`` the stats, compaction and vacuum behind ``dear-rerank cache``. The Spark side (key expressions, lookup, chunk commits)
is ``dear_udf.spark.score_cache``.
"""

from __future__ import annotations

from .keys import (
    FORMAT_VERSION,
    chunk_count,
    chunk_of,
    combine,
    doc_hash,
    pair_key,
    query_hash,
    environment,
    model_fields,
    model_fields_of,
    scorer_fields,
    scorer_key,
)
from .table import (
    CACHE_ARROW_SCHEMA,
    PAIR_KEY,
    SCORED_AT,
    SCORER_KEY,
    CacheError,
    append_entries,
    check_cache,
    entries_table,
    open_cache,

)
from .upkeep import cache_compact, cache_stats, cache_vacuum, format_stats

__all__ = [
    "CACHE_ARROW_SCHEMA",
    "FORMAT_VERSION",
    "PAIR_KEY",
    "SCORED_AT",
    "SCORER_KEY",
    "CacheError",
    "append_entries",
    "cache_compact",
    "cache_stats",
    "cache_vacuum",
    "check_cache",
    "chunk_count",
    "chunk_of",
    "combine",
    "doc_hash",
    "entries_table",
    "format_stats",
    "open_cache",
    "pair_key",
    "query_hash",
    "environment",
    "model_fields",
    "model_fields_of",
    "scorer_fields",
    "scorer_key",
]
