"""The score cache on Spark: key expressions, lookups, and one commit per chunk.

The keys are the Spark SQL twins of ``dear_udf.cache.keys`` (same bytes hashed, same hex
out; the tests compare them): hash each query and each document once, on the queries and
corpus DataFrames before the join (``with_query_hash``, ``with_doc_hash``), then combine
the two per pair (``with_pair_key``). ``char_cap`` must be the cap the job gives
``stages.pairs_to_score`` (``ModelInfo.char_cap``), so the keys cover exactly the texts
the scorer reads.

Reading (``read_cache``, ``lookup``) and appending (``append_chunk``) go through Spark's
Delta when the session has it (``session.has_spark_delta``), else through ``deltalake``:

- reading: deltalake lists the scorer key's files (partition pruning in the Delta log)
  and Spark reads those Parquet files itself, in parallel; a table using reader features
  Spark's plain Parquet reader cannot honour (deletion vectors, column mapping), or a
  remote one, is read by deltalake into Arrow on the driver instead;
- appending: the chunk's rows are collected to the driver as Arrow (one chunk bounds what
  the driver holds) and committed by deltalake as one append.

Either way a chunk's scores are ONE Delta transaction, and duplicates of a pair key are
resolved by ``pick_one``'s rule (earliest ``scored_at``, then lowest score, then flags;
nulls first).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, NamedTuple

from .. import schema as S
from ..cache.keys import CHUNK_HEX_DIGITS, DOC_TAG, KEY_HEX_CHARS, PAIR_TAG, QUERY_TAG
from ..cache.table import (
    CACHE_ARROW_SCHEMA,
    ENTRY_COLUMNS,
    PAIR_KEY,
    PARTITION_BY,
    SCORED_AT,
    SCORER_KEY,
    CacheError,
    append_entries,
    check_cache,
    entries_table,
)

QUERY_HASH = "query_hash"
DOC_HASH = "doc_hash"
CHUNK = "chunk"
Reader = Literal["auto", "spark-delta", "files", "arrow"]
Writer = Literal["auto", "spark-delta", "deltalake"]


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

    if not DeltaTable.isDeltaTable(spark, uri):
        jpath = spark._jvm.org.apache.hadoop.fs.Path(uri)
        fs = jpath.getFileSystem(spark._jsc.hadoopConfiguration())
        if fs.exists(jpath) and (not fs.getFileStatus(jpath).isDirectory() or len(fs.listStatus(jpath)) > 0):
            raise CacheError(f"{uri}: the score cache path holds something that is not a Delta table.")
        return False
    table = spark.read.format("delta").load(uri)
    want = {f.name: f.dataType.simpleString() for f in S.spark_schema(CACHE_ARROW_SCHEMA)}
    got = {f.name: f.dataType.simpleString() for f in table.schema}
    if got != want:
        raise CacheError(f"{uri}: not a score cache: the Delta table's columns are {got}, expected {want}.")
    return True


def _empty_entries(spark: Any) -> Any:
    from pyspark.sql.types import StructType

    schema = S.spark_schema(CACHE_ARROW_SCHEMA)
    return spark.createDataFrame([], StructType([f for f in schema if f.name != SCORER_KEY]))


def _file_uris(table: Any, scorer_key: str) -> list[str]:
    try:
        return table.file_uris(file_pruning_predicate=[(SCORER_KEY, "=", scorer_key)])
    except TypeError:  # deltalake before 1.6
        return table.file_uris(partition_filters=[(SCORER_KEY, "=", scorer_key)])


def read_entries(
    spark: Any,
    uri: str,
    *,
    scorer_key: str,
    reader: Reader = "auto",
    storage_options: dict[str, str] | None = None,
) -> Any:
    """Every cache row of one scorer key, duplicates included (all columns but ``scorer_key``).

    An absent cache reads as no rows. ``reader``: ``"spark-delta"`` (Spark's Delta),
    ``"files"`` (deltalake lists the files, Spark reads them), ``"arrow"`` (deltalake
    reads into Arrow on the driver); ``"auto"`` picks the first that applies.

    Raises:
        CacheError: the path holds something other than a score cache.
    """
    from pyspark.sql import functions as F

    from .session import has_spark_delta

    if reader == "auto":
        reader = "spark-delta" if has_spark_delta(spark) else "files"
    columns = [f.name for f in CACHE_ARROW_SCHEMA if f.name != SCORER_KEY]
    if reader == "spark-delta":
        if not _spark_delta_table(spark, uri):
            return _empty_entries(spark)
        # Pinned to the version read now, as the deltalake readers are: re-evaluated later,
        # the lookup must not see chunks this run committed since.
        from delta.tables import DeltaTable

        version = DeltaTable.forPath(spark, uri).history(1).select("version").collect()[0][0]
        table = spark.read.format("delta").option("versionAsOf", version).load(uri)
        return table.where(F.col(SCORER_KEY) == scorer_key).select(*columns)
    if reader not in ("files", "arrow"):
        raise CacheError(f"reader must be 'auto', 'spark-delta', 'files' or 'arrow', got {reader!r}.")
    table = check_cache(uri, storage_options=storage_options)
    if table is None:
        return _empty_entries(spark)
    protocol = table.protocol()
    plain = protocol.min_reader_version < 2 and not (protocol.reader_features or [])
    local = "://" not in uri or uri.startswith("file://")
    if reader == "files" and plain and local:
        files = _file_uris(table, scorer_key)
        if not files:
            return _empty_entries(spark)
        return spark.read.schema(_empty_entries(spark).schema).parquet(*files).select(*columns)
    arrow = table.to_pyarrow_table(partitions=[(SCORER_KEY, "=", scorer_key)], columns=columns)
    if arrow.num_rows == 0:
        return _empty_entries(spark)
    return spark.createDataFrame(arrow).select(*columns)


def pick_one(entries: Any) -> Any:
    """One row per pair key (``pair_key`` + ``ENTRY_COLUMNS``): the earliest ``scored_at``,
    then the lowest score, then the flags, nulls first (Spark's struct order);
    ``cache.table.pick_one``'s rule."""
    from pyspark.sql import functions as F

    best = F.min(F.struct(F.col(SCORED_AT), *[F.col(c) for c in ENTRY_COLUMNS])).alias("_best")
    return entries.groupBy(PAIR_KEY).agg(best).select(PAIR_KEY, *[F.col(f"_best.{c}").alias(c) for c in ENTRY_COLUMNS])


def read_cache(
    spark: Any,
    uri: str,
    *,
    scorer_key: str,
    reader: Reader = "auto",
    storage_options: dict[str, str] | None = None,
) -> Any:
    """The cached scores of one scorer key: one row per ``pair_key`` with ``ENTRY_COLUMNS``.

    Example:
        >>> read_cache(spark, "/tables/score-cache", scorer_key=key).count()  # doctest: +SKIP
        1200000
    """
    return pick_one(read_entries(spark, uri, scorer_key=scorer_key, reader=reader, storage_options=storage_options))


class Lookup(NamedTuple):
    """``hits``: the pairs found, with ``score``, ``pooled_early``, ``pooled_in_query``
    added; ``misses``: the pairs not found, columns unchanged. Both lazy: persist ``pairs``
    (and ``cached``) when both are used.

    Every reader fixes the table version at the call (the deltalake readers its files,
    Spark's Delta reader ``versionAsOf``), so a re-evaluated lookup never finds this run's
    own chunk commits among its hits; persist both so the cache is not read twice
    (``spark.chunks.lookup``)."""

    hits: Any
    misses: Any
    cached: Any


def split_hits(pairs: Any, cached: Any) -> Lookup:
    """Split ``pairs`` (holding ``pair_key``) by ``cached`` (from ``read_cache``)."""
    if PAIR_KEY not in pairs.columns:
        raise CacheError(f"pairs lack the column {PAIR_KEY!r}: add it with with_pair_key.")
    clash = [c for c in ENTRY_COLUMNS if c in pairs.columns]
    if clash:
        raise CacheError(f"pairs already hold {clash}; a lookup adds them from the cache.")
    hits = pairs.join(cached, PAIR_KEY, "inner").select(*pairs.columns, *ENTRY_COLUMNS)
    misses = pairs.join(cached.select(PAIR_KEY), PAIR_KEY, "left_anti").select(*pairs.columns)
    return Lookup(hits, misses, cached)


def lookup(
    pairs: Any,
    *,
    uri: str,
    scorer_key: str,
    reader: Reader = "auto",
    storage_options: dict[str, str] | None = None,
) -> Lookup:
    """Split ``pairs`` into cache hits (with their cached score) and misses.

    Example:
        >>> found = lookup(pairs, uri="/tables/score-cache", scorer_key=key)  # doctest: +SKIP
        >>> found.hits.count(), found.misses.count()
        (900000, 100000)
    """
    cached = read_cache(pairs.sparkSession, uri, scorer_key=scorer_key, reader=reader, storage_options=storage_options)
    return split_hits(pairs, cached)


# -- appending -----------------------------------------------------------------------------


def _spark_delta_append(scored: Any, uri: str, *, scorer_key: str, run_id: str, when: dt.datetime) -> None:
    from pyspark.sql import functions as F

    _spark_delta_table(scored.sparkSession, uri)  # refuses a path holding something else
    constants = {SCORER_KEY: F.lit(scorer_key), S.RUN_ID: F.lit(run_id), SCORED_AT: F.lit(when)}
    columns = [
        (constants.get(f.name) if f.name in constants else F.col(f.name) if f.name in scored.columns else F.lit(None))
        .cast(_spark_type(f.name)).alias(f.name)
        for f in CACHE_ARROW_SCHEMA
    ]
    score = F.col(S.SCORE)
    finite = score.isNotNull() & ~F.isnan(score) & (F.abs(score) != float("inf")) & F.col(PAIR_KEY).isNotNull()
    # A blind append: concurrent appends of other runs never conflict with it.
    scored.select(*columns).where(finite).write.format("delta").mode("append").partitionBy(*PARTITION_BY).save(uri)


def append_chunk(
    scored: Any,
    *,
    uri: str,
    scorer_key: str,
    run_id: str,
    scored_at: dt.datetime | None = None,
    writer: Writer = "auto",
    storage_options: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Commit one chunk's new scores to the cache as ONE Delta transaction.

    ``scored`` holds ``pair_key`` and ``score``, and optionally ``pooled_early``,
    ``pooled_in_query``, ``query_id``, ``doc_id`` (null when absent). Evaluating it is
    what runs the chunk's scoring. Rows with a NaN or infinite score are not cached.

    Returns:
        ``writer`` (``"spark-delta"`` or ``"deltalake"``) and, for deltalake, ``rows``
        committed, ``skipped_non_finite`` and the table ``version`` after the commit.

    Example:
        >>> append_chunk(score_pairs(misses.where(chunk_col(n) == 3), settings),  # doctest: +SKIP
        ...              uri="/tables/score-cache", scorer_key=key, run_id="2026-11-22")
        {'writer': 'deltalake', 'rows': 250000, 'skipped_non_finite': 0, 'version': 12}
    """
    from .session import has_spark_delta

    missing = [c for c in (PAIR_KEY, S.SCORE) if c not in scored.columns]
    if missing:
        raise CacheError(f"scores to cache lack {missing}; they have {scored.columns}.")
    S.check_run_id(run_id)
    when = scored_at or dt.datetime.now(dt.timezone.utc)
    if writer == "auto":
        writer = "spark-delta" if has_spark_delta(scored.sparkSession) else "deltalake"
    if writer == "spark-delta":
        _spark_delta_append(scored, uri, scorer_key=scorer_key, run_id=run_id, when=when)
        return {"writer": "spark-delta"}
    if writer != "deltalake":
        raise CacheError(f"writer must be 'auto', 'spark-delta' or 'deltalake', got {writer!r}.")
    wanted = [c for c in (PAIR_KEY, S.SCORE, S.POOLED_EARLY, S.POOLED_IN_QUERY, S.QUERY_ID, S.DOC_ID) if c in scored.columns]
    arrow = scored.select(*wanted).toArrow()
    entries = entries_table(arrow, scorer_key=scorer_key, run_id=run_id, scored_at=when)
    version = append_entries(uri, entries, storage_options=storage_options)
    return {"writer": "deltalake", "rows": entries.num_rows, "skipped_non_finite": arrow.num_rows - entries.num_rows, "version": version}
