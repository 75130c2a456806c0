"""The score cache on Spark: key expressions, lookups, and one commit per chunk.

The keys are the Spark SQL twins of ``dear_udf.cache.keys`` (same bytes hashed, same hex
out; the tests compare them): hash each query and each document once, on the queries and
corpus DataFrames before the join (``with_query_hash``, ``with_doc_hash``), then combine
the two per pair (``with_pair_key``). ``char_cap`` must be the cap the job gives
``stages.kept_pairs`` (``ModelInfo.char_cap``), so the keys cover exactly the texts
the scorer reads.

Reading (``read_cache``, ``lookup``) and appending (``append_chunk``) go through Spark's
Delta when the session has it (``spark_delta``, decided once per run), else through
``deltalake``:

- reading: deltalake lists the scorer key's files (partition pruning in the Delta log),
  local or remote, and Spark reads those Parquet files itself, in parallel; nothing goes
  through the driver's memory. Where that is impossible (a ``dbfs:`` or ``hdfs:`` cache,
  which deltalake cannot open, or a table using reader features a plain Parquet reader
  cannot honour) the run is refused in words: it needs Spark's Delta;
- appending: the chunk's rows are collected to the driver as Arrow (one chunk bounds what
  the driver holds) and committed by deltalake as one append.

Either way a chunk's scores are ONE Delta transaction, and duplicates of a pair key are
resolved by ``pick_one``'s rule (earliest ``scored_at``, then lowest score, then flags;
nulls first).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from .. import schema as S
from ..cache.keys import CHUNK_HEX_DIGITS, DOC_TAG, KEY_HEX_CHARS, PAIR_TAG, QUERY_TAG
from ..cache.table import (
    CACHE_ARROW_SCHEMA,
    ENTRY_COLUMNS,
    PAIR_KEY,
    PARTITION_BY,
    SCORED_AT,
    SCORER,
    SCORER_KEY,
    CacheError,
    append_entries,
    cache_schema_difference,
    check_cache,
    entries_table,
)
from ..paths import Location, location

QUERY_HASH = "query_hash"
DOC_HASH = "doc_hash"


# -- keys ----------------------------------------------------------------------------------


def _field(F: Any, column: Any, char_cap: int | None) -> Any:
    """``N`` for null, else ``S<utf-8 bytes>:<text>``, after the cap (keys._field)."""
    text = F.substring(column, 1, char_cap) if char_cap else column
    return F.when(text.isNull(), F.lit("N")).otherwise(F.concat(F.lit("S"), F.octet_length(text).cast("string"), F.lit(":"), text))


def query_hash_col(column: str = S.QUERY, *, char_cap: int | None) -> Any:
    """64 hex characters per query: ``keys.query_hash`` as a Spark expression."""
    from pyspark.sql import functions as F

    return F.sha2(F.concat(F.lit(QUERY_TAG), _field(F, F.col(column), char_cap)), 256)


def doc_hash_col(title: str = S.TITLE, text: str = S.TEXT, *, char_cap: int | None) -> Any:
    """64 hex characters per document: ``keys.doc_hash`` as a Spark expression."""
    from pyspark.sql import functions as F

    return F.sha2(F.concat(F.lit(DOC_TAG), _field(F, F.col(title), char_cap), _field(F, F.col(text), char_cap)), 256)


def pair_key_col(query_hash: str = QUERY_HASH, doc_hash: str = DOC_HASH) -> Any:
    """32 hex characters per pair: ``keys.combine`` as a Spark expression."""
    from pyspark.sql import functions as F

    return F.substring(F.sha2(F.concat(F.lit(PAIR_TAG), F.col(query_hash), F.col(doc_hash)), 256), 1, KEY_HEX_CHARS)


def with_query_hash(queries: Any, *, char_cap: int | None) -> Any:
    """``queries`` plus ``query_hash``; do this on the queries, once, before the join."""
    return queries.withColumn(QUERY_HASH, query_hash_col(char_cap=char_cap))


def with_doc_hash(corpus: Any, *, char_cap: int | None) -> Any:
    """``corpus`` plus ``doc_hash``; do this on the corpus, once, before the join."""
    return corpus.withColumn(DOC_HASH, doc_hash_col(char_cap=char_cap))


def with_pair_key(pairs: Any) -> Any:
    """``pairs`` (holding ``query_hash`` and ``doc_hash``) plus ``pair_key``.

    Example:
        >>> q = with_query_hash(queries, char_cap=info.char_cap)  # doctest: +SKIP
        >>> d = with_doc_hash(corpus, char_cap=info.char_cap)
        >>> pairs = with_pair_key(candidates.join(q, "query_id").join(d, "doc_id"))
    """
    missing = [c for c in (QUERY_HASH, DOC_HASH) if c not in pairs.columns]
    if missing:
        raise CacheError(f"pairs lack {missing}: add them with with_query_hash / with_doc_hash before the join.")
    return pairs.withColumn(PAIR_KEY, pair_key_col())


def chunk_col(chunks: int, column: str = PAIR_KEY) -> Any:
    """The chunk (0..chunks-1) of each pair: ``keys.chunk_of`` as a Spark expression."""
    from pyspark.sql import functions as F

    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1:
        raise CacheError(f"chunks must be a positive integer, got {chunks!r}.")
    high = F.conv(F.substring(F.col(column), 1, CHUNK_HEX_DIGITS), 16, 10).cast("long")
    return (high % F.lit(chunks)).cast("int")


# -- reading -------------------------------------------------------------------------------


def _spark_type(field: Any) -> Any:
    return S.spark_schema(CACHE_ARROW_SCHEMA)[field].dataType


def _spark_delta_table(spark: Any, uri: str) -> bool:
    """True when ``uri`` holds a Delta table (checked against the cache's schema); False
    when nothing or an empty folder is there; refuses anything else."""
    from delta.tables import DeltaTable

    from . import hadoop

    if not DeltaTable.isDeltaTable(spark, uri):
        entries = hadoop.entries(spark, uri)
        if entries is not None and entries:
            raise CacheError(f"{uri}: the score cache path holds something that is not a Delta table.")
        return False
    table = spark.read.format("delta").load(uri)
    diff = cache_schema_difference(pa.schema([pa.field(f.name, _arrow_type(f.dataType)) for f in table.schema]))
    if diff:
        raise CacheError(f"{uri}: not a score cache: the Delta table's schema differs from the cache's: {diff}.")
    return True


def _arrow_type(spark_type: Any) -> Any:
    from pyspark.sql.pandas.types import to_arrow_type

    return to_arrow_type(spark_type)


def _entry_schema(spark: Any) -> Any:
    """The cache's columns but ``scorer_key`` (the partition column, not in the files)."""
    from pyspark.sql.types import StructType

    return StructType([f for f in S.spark_schema(CACHE_ARROW_SCHEMA) if f.name != SCORER_KEY])


def _files(table: Any, where: Location, scorer_key: str) -> list[str]:
    """The files of one scorer key, as Spark must be given them: written the way the user
    wrote the cache's location (deltalake may spell a URI's scheme its own way)."""
    try:
        found = table.file_uris(file_pruning_predicate=[(SCORER_KEY, "=", scorer_key)])
    except TypeError:  # deltalake before 1.6
        found = table.file_uris(partition_filters=[(SCORER_KEY, "=", scorer_key)])
    if where.is_local:
        return found
    root = table.table_uri.rstrip("/") + "/"
    return [where.join(f[len(root):]).text if f.startswith(root) else f for f in found]


def read_entries(spark: Any, uri: str, *, scorer_key: str, spark_delta: bool) -> Any:
    """Every cache row of one scorer key, duplicates included (all columns but
    ``scorer_key``), read by Spark in parallel; never through the driver's memory.

    With Spark's Delta (``spark_delta``) the table is
    read at the version current now. Else ``deltalake`` lists the scorer key's files (its
    partition, from the Delta log) and Spark reads those Parquet files; columns a cache of
    format 1 lacks read as nulls. An absent cache reads as no rows.

    Raises:
        CacheError: the path holds something other than a score cache, or the cache
            cannot be read without Spark's Delta (a ``dbfs:`` or ``hdfs:`` location, or a
            table using Delta features a plain Parquet reader cannot honour).
    """
    from pyspark.sql import functions as F

    where = location(uri)
    columns = [f.name for f in CACHE_ARROW_SCHEMA if f.name != SCORER_KEY]
    empty = spark.createDataFrame([], _entry_schema(spark))
    if spark_delta:
        if not _spark_delta_table(spark, where.for_spark):
            return empty
        # Pinned to the version read now, as the file list below is: re-evaluated later,
        # the lookup must not see chunks this run committed since.
        from delta.tables import DeltaTable

        version = DeltaTable.forPath(spark, where.for_spark).history(1).select("version").collect()[0][0]
        table = spark.read.format("delta").option("versionAsOf", version).load(where.for_spark)
        present = set(table.columns)
        picked = [F.col(c) if c in present else F.lit(None).cast(_spark_type(c)).alias(c) for c in columns]
        return table.where(F.col(SCORER_KEY) == scorer_key).select(*picked)
    table = check_cache(uri)
    if table is None:
        return empty
    protocol = table.protocol()
    if protocol.min_reader_version >= 2 or protocol.reader_features:
        raise CacheError(
            f"{uri}: the score cache uses Delta reader features ({protocol.reader_features or 'reader version ' + str(protocol.min_reader_version)}) "
            "that only Spark's Delta reads; run with a Spark session that has Delta (Databricks, or --packages io.delta:delta-spark_2.13)."
        )
    files = _files(table, where, scorer_key)
    if not files:
        return empty
    return spark.read.schema(_entry_schema(spark)).parquet(*files).select(*columns)


def pick_one(entries: Any) -> Any:
    """One row per pair key (``pair_key`` + ``ENTRY_COLUMNS``): the earliest ``scored_at``,
    then the lowest score, then the other columns, nulls first (Spark's struct order).
    Deterministic whatever the file order, so every reader of one table version sees the
    same score for a pair scored twice (two runs at once)."""
    from pyspark.sql import functions as F

    best = F.min(F.struct(F.col(SCORED_AT), *[F.col(c) for c in ENTRY_COLUMNS])).alias("_best")
    return entries.groupBy(PAIR_KEY).agg(best).select(PAIR_KEY, *[F.col(f"_best.{c}").alias(c) for c in ENTRY_COLUMNS])


def read_cache(spark: Any, uri: str, *, scorer_key: str, spark_delta: bool) -> Any:
    """The cached scores of one scorer key: one row per ``pair_key`` with ``ENTRY_COLUMNS``.
    Entries without a ``computed_key`` (written before format 2) are left out: they cannot
    be tied with tonight's scores, so they count as misses.

    Example:
        >>> read_cache(spark, "/tables/score-cache", scorer_key=key, spark_delta=False).count()  # doctest: +SKIP
        1200000
    """
    from pyspark.sql import functions as F

    entries = read_entries(spark, uri, scorer_key=scorer_key, spark_delta=spark_delta)
    return pick_one(entries.where(F.col(S.COMPUTED_KEY).isNotNull()))


@dataclass(frozen=True)
class Lookup:
    """Pairs split by the cache. ``hits``: the pairs found, as scored pairs
    (``schema.SCORED_PAIRS_SCHEMA`` and ``pair_key``: the score, pooling flags and
    ``computed_key`` from the cache, ``scorer_key`` the key looked up); ``misses``: the
    pairs not found, columns unchanged. The counts are None until ``counted``.

    The reader fixes the table version at the call (the file list, or Spark's Delta
    ``versionAsOf``), so a re-evaluated lookup never finds this run's own chunk commits
    among its hits; ``counted`` persists both so the cache is not read twice.
    """

    hits: Any
    misses: Any
    hit_count: int | None = None
    miss_count: int | None = None

    def counted(self, persist: Callable[[Any], Any]) -> Lookup:
        """Both sides persisted (``persist(df)``) and counted, in one Spark action."""
        from pyspark.sql import functions as F

        from .counts import collect_row

        hits, misses = persist(self.hits), persist(self.misses)
        counts = collect_row([hits.agg(F.count(F.lit(1)).alias("hits")), misses.agg(F.count(F.lit(1)).alias("misses"))])
        return Lookup(hits, misses, counts["hits"], counts["misses"])


def lookup(pairs: Any, *, uri: str, scorer_key: str, spark_delta: bool) -> Lookup:
    """Split ``pairs`` (kept pairs with ``pair_key`` and the first-stage columns) into cache
    hits and misses.

    Example:
        >>> found = lookup(pairs, uri="/tables/score-cache", scorer_key=key, spark_delta=False)  # doctest: +SKIP
        >>> found.hits.count(), found.misses.count()
        (900000, 100000)
    """
    from pyspark.sql import functions as F

    if PAIR_KEY not in pairs.columns:
        raise CacheError(f"pairs lack the column {PAIR_KEY!r}: add it with with_pair_key.")
    clash = [c for c in (*ENTRY_COLUMNS, SCORER_KEY) if c in pairs.columns]
    if clash:
        raise CacheError(f"pairs already hold {clash}; a lookup adds them from the cache.")
    cached = read_cache(pairs.sparkSession, uri, scorer_key=scorer_key, spark_delta=spark_delta)
    hits = pairs.join(cached, PAIR_KEY, "inner").withColumn(SCORER_KEY, F.lit(scorer_key))
    misses = pairs.join(cached.select(PAIR_KEY), PAIR_KEY, "left_anti").select(*pairs.columns)
    return Lookup(hits.select(*S.SCORED_PAIRS_SCHEMA.names, PAIR_KEY), misses)


# -- appending -----------------------------------------------------------------------------


def _spark_delta_append(scored: Any, uri: str, *, scorer_key: str, scorers: dict[str, str], run_id: str,
                        when: dt.datetime, transaction: tuple[str, int] | None) -> None:
    from pyspark.sql import functions as F

    _spark_delta_table(scored.sparkSession, uri)  # refuses a path holding something else
    key = F.col(SCORER_KEY) if SCORER_KEY in scored.columns else F.lit(scorer_key)
    described = F.create_map(*[F.lit(x) for pair in sorted(scorers.items()) for x in pair]) if scorers else None
    constants = {
        SCORER_KEY: key,
        S.RUN_ID: F.lit(run_id),
        SCORED_AT: F.lit(when),
        SCORER: described[key] if described is not None else F.lit(None),
    }
    columns = [
        (constants[f.name] if f.name in constants else F.col(f.name) if f.name in scored.columns else F.lit(None))
        .cast(_spark_type(f.name)).alias(f.name)
        for f in CACHE_ARROW_SCHEMA
    ]
    from .write import append_delta

    score = F.col(S.SCORE)
    finite = score.isNotNull() & ~F.isnan(score) & (F.abs(score) != float("inf")) & F.col(PAIR_KEY).isNotNull()
    append_delta(scored.select(*columns).where(finite), uri, partition_by=PARTITION_BY, transaction=transaction)


def append_chunk(
    scored: Any,
    *,
    uri: str,
    scorer_key: str,
    run_id: str,
    scorers: dict[str, str] | None = None,
    transaction: tuple[str, int] | None = None,
    scored_at: dt.datetime | None = None,
    spark_delta: bool,
) -> dict[str, Any]:
    """Commit one chunk's new scores to the cache as ONE Delta transaction: through Spark's
    Delta (``spark_delta``), else ``deltalake`` from the driver.

    ``scored`` holds ``pair_key`` and ``score``, and optionally ``pooled_early``,
    ``pooled_in_query``, ``computed_key``, ``query_id``, ``doc_id`` (null when absent) and
    ``scorer_key`` (the key of the process that scored each row; else ``scorer_key``).
    ``scorers`` maps scorer keys to what they hash (JSON), kept for ``cache stats``.
    ``transaction`` (application id, version) makes the append idempotent: a retry of a
    commit that landed writes nothing. Evaluating ``scored`` is what runs the chunk's
    scoring. Rows with a NaN or infinite score are not cached.

    Returns:
        ``writer`` (``"spark-delta"`` or ``"deltalake"``) and, for deltalake, ``rows``
        committed, ``skipped_non_finite`` and the table ``version`` after the commit.

    Example:
        >>> append_chunk(score_pairs(misses.where(chunk_col(n) == 3), settings),  # doctest: +SKIP
        ...              uri="/tables/score-cache", scorer_key=key, run_id="2026-11-22", spark_delta=False)
        {'writer': 'deltalake', 'rows': 250000, 'skipped_non_finite': 0, 'version': 12}
    """
    missing = [c for c in (PAIR_KEY, S.SCORE) if c not in scored.columns]
    if missing:
        raise CacheError(f"scores to cache lack {missing}; they have {scored.columns}.")
    S.check_run_id(run_id)
    when = scored_at or dt.datetime.now(dt.timezone.utc)
    scorers = dict(scorers or {})
    if spark_delta:
        _spark_delta_append(scored, location(uri).for_spark, scorer_key=scorer_key, scorers=scorers, run_id=run_id,
                            when=when, transaction=transaction)
        return {"writer": "spark-delta"}
    wanted = [c for c in (PAIR_KEY, S.SCORE, S.POOLED_EARLY, S.POOLED_IN_QUERY, S.COMPUTED_KEY, S.QUERY_ID, S.DOC_ID, SCORER_KEY) if c in scored.columns]
    arrow = scored.select(*wanted).toArrow()
    entries = entries_table(arrow, scorer_key=scorer_key, scorers=scorers, run_id=run_id, scored_at=when)
    version = append_entries(uri, entries, transaction=transaction)
    return {"writer": "deltalake", "rows": entries.num_rows, "skipped_non_finite": arrow.num_rows - entries.num_rows, "version": version}
