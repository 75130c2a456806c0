"""Scoring through the score cache, in chunks that each commit their scores.

The score step of every run goes through a cache: the one given as ``--cache``, or a
scratch cache beside the output (``scratch_cache_path``) that the job removes once the
output is committed. So a night that dies part-way resumes where it stopped, cache or not.

1. ``lookup``: the kept pairs are split into hits (the cache holds a score for the same
   texts under the same scorer key) and misses. Both are materialized before anything is
   committed, so this run's own commits never turn up among its hits.
2. ``score_misses``: the misses are cut into ``chunk_count(misses, chunk_pairs)`` chunks by
   their query hash (``cache.keys``), so all the misses of a query are scored in one call
   of one task, as without a cache; each chunk is scored in tasks of about ``task_pairs``
   pairs and its scores are appended to the cache as ONE Delta transaction; then one log
   line gives the chunk's pace and the time left. A rerun finds the committed chunks'
   pairs among its hits and scores only the rest. With no misses no model is loaded.
3. The hits and the new scores are returned together, for the top-k.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import schema as S
from ..cache.keys import chunk_count
from ..cache.table import PAIR_KEY
from ..paths import location

log = logging.getLogger(__name__)


def scratch_cache_path(output: str, run_id: str) -> str:
    """The scratch cache of a run without ``--cache``: ``.<output name>.<run id>.score-cache``
    in the output's parent folder, beside the table, never inside it; written the way the
    output is (a local path absolute, a URI as a URI: ``paths.Location.sibling``).

    Example:
        >>> scratch_cache_path("/tables/reranked", "2026-11-24")
        '/tables/.reranked.2026-11-24.score-cache'
        >>> scratch_cache_path("dbfs:/tables/reranked", "2026-11-24")
        'dbfs:/tables/.reranked.2026-11-24.score-cache'
    """
    where = location(output)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)
    return where.sibling(f".{where.name}.{safe}.score-cache").text


def remove_cache(spark: Any, uri: str) -> None:
    """Delete a scratch cache; a failure is a warning (the output is committed already)."""
    from . import hadoop

    where = location(uri)
    try:
        if where.is_local:
            shutil.rmtree(where.local)
        else:
            hadoop.delete(spark, where.text)
    except FileNotFoundError:
        pass
    except Exception as exc:  # noqa: BLE001 - the night's output is committed; say what is left
        log.warning("could not remove the scratch score cache %s (%s: %s); delete it by hand.", uri, type(exc).__name__, exc)


@dataclass(frozen=True)
class CacheTarget:
    """Where a run's scores are cached, and under which scorer key.

    ``scorer_key`` is the key the driver expects the executors to score under (lookups use
    it); ``scorer`` what it hashes (JSON). ``transaction_id`` names this run's appends, so
    that a retried chunk append never lands twice (Delta's idempotent-write marker).
    """

    uri: str
    scorer_key: str
    scorer: str
    scratch: bool  # removed once the output is committed
    spark_delta: bool  # read and written through Spark's Delta, else deltalake
    transaction_id: str

    @property
    def model_fields(self) -> dict[str, Any]:
        """What the scorer key covers of the model and settings: the executors add their
        own environment to it."""
        import json

        return {k: v for k, v in json.loads(self.scorer).items() if k != "environment"}


def cache_target(config: Any, scorer_fields: dict[str, Any], *, spark_delta: bool) -> CacheTarget:
    """The run's cache: ``--cache`` (a local path made absolute), or the scratch cache."""
    import json
    import uuid

    from ..cache.keys import scorer_key

    scratch = config.cache is None
    where = location(scratch_cache_path(config.output, config.run_id) if scratch else config.cache)
    return CacheTarget(
        uri=where.local or where.text,
        scorer_key=scorer_key(scorer_fields),
        scorer=json.dumps(scorer_fields, sort_keys=True),
        scratch=scratch,
        spark_delta=spark_delta,
        transaction_id=f"dear-rerank/{config.run_id}/{uuid.uuid4().hex}",
    )


def keyed_pairs(status: Any, *, char_cap: int | None) -> Any:
    """The kept pairs (texts cut at ``char_cap``) with their ``pair_key``."""
    from .cache import with_pair_key
    from .stages import kept_pairs

    return with_pair_key(kept_pairs(status, char_cap=char_cap))


def scored_columns(df: Any) -> Any:
    """The columns the top-k reads, in the scoring stage's order, plus ``pair_key``."""
    return df.select(*S.SCORED_PAIRS_SCHEMA.names, PAIR_KEY)


@dataclass
class Split:
    hits: Any  # scored_columns, from the cache
    misses: Any  # keyed pairs with texts
    hit_count: int
    miss_count: int


def lookup(run: Any, pairs: Any, target: CacheTarget) -> Split:
    """Hits and misses, persisted and counted before any chunk commits."""
    from pyspark.sql import functions as F

    from .cache import lookup as cache_lookup
    from .profile import collect_row

    found = cache_lookup(pairs, uri=target.uri, scorer_key=target.scorer_key, spark_delta=target.spark_delta)
    hits = run.keep(scored_columns(found.hits.withColumn(S.SCORER_KEY, F.lit(target.scorer_key))))
    misses = run.keep(found.misses)
    counts = collect_row([hits.agg(F.count(F.lit(1)).alias("hits")), misses.agg(F.count(F.lit(1)).alias("misses"))])
    return Split(hits=hits, misses=misses, hit_count=counts["hits"], miss_count=counts["misses"])


def check_hits(run: Any, split: Split, pairs: Any, target: CacheTarget, scoring: Any) -> dict[str, Any] | None:
    """Score again a deterministic sample of the cache's hits (the ``HIT_CHECK_PAIRS``
    lowest pair keys) before the first chunk, and compare (``cache.check``). Only a night
    that loads a model anyway (it has misses) pays for it; a disagreeing cache stops the
    night before any scoring work or commit.

    Returns:
        The summary's ``hit_check`` (None when the night has no hits or no misses).

    Raises:
        CacheError: the sample disagrees beyond the dtype's tolerance.
    """
    from pyspark.sql import functions as F

    from ..cache.check import HIT_CHECK_PAIRS, compare_hits
    from .udf import worker_errors

    if split.hit_count == 0 or split.miss_count == 0:
        return None
    picked = split.hits.select(PAIR_KEY, S.SCORE).dropDuplicates([PAIR_KEY]).orderBy(PAIR_KEY).limit(HIT_CHECK_PAIRS).collect()
    cached = {r[PAIR_KEY]: r[S.SCORE] for r in picked}
    sample = pairs.where(F.col(PAIR_KEY).isin(list(cached))).dropDuplicates([PAIR_KEY])
    sample = sample.repartition(1).sortWithinPartitions(S.QUERY_ID, S.DOC_ID)
    with worker_errors():
        rows = scoring(sample).select(PAIR_KEY, S.SCORE, S.SCORER_KEY).collect()
    # A task that scored under another key (another device, other libraries) is not the
    # scorer the cached scores claim to be: comparing them would prove nothing.
    fresh = {r[PAIR_KEY]: r[S.SCORE] for r in rows if r[S.SCORER_KEY] == target.scorer_key}
    return compare_hits(cached, fresh, dtype=run.config.model.dtype, scorer_key=target.scorer_key, uri=target.uri)


def _eta(seconds: float) -> str:
    from .progress import _duration

    return _duration(seconds)


def score_misses(run: Any, split: Split, target: CacheTarget, scoring: Any, scorers: Any) -> list[Any]:
    """Score the misses chunk by chunk, committing each chunk to the cache; returns the
    chunks' scored DataFrames (persisted). ``scoring(pairs) -> scored DataFrame``;
    ``scorers``: the accumulator of the scorer keys the tasks scored under."""
    from pyspark.sql import functions as F

    from .. import hooks
    from .cache import QUERY_HASH, append_chunk, chunk_col
    from .udf import worker_errors

    config, summary = run.config, run.summary
    if split.miss_count == 0:
        return []
    chunks = chunk_count(split.miss_count, config.chunk_pairs)
    per_chunk = math.ceil(split.miss_count / chunks)
    partitions = config.scoring_partitions or max(run.spark.sparkContext.defaultParallelism, math.ceil(per_chunk / config.task_pairs))
    which = chunk_col(chunks, QUERY_HASH)
    parts, done, started = [], 0, time.perf_counter()
    for index in range(chunks):
        begun = time.perf_counter()
        pairs = split.misses.where(which == F.lit(index))
        pairs = pairs.repartition(partitions, S.QUERY_ID).sortWithinPartitions(S.QUERY_ID, S.DOC_ID)
        scored = run.keep(scoring(pairs))
        with worker_errors():
            count = scored.count()
        append_chunk(
            scored,
            uri=target.uri,
            scorer_key=target.scorer_key,
            scorers={target.scorer_key: target.scorer, **scorers.value},
            run_id=config.run_id,
            transaction=(target.transaction_id, index),
            spark_delta=target.spark_delta,
        )
        seconds = time.perf_counter() - begun
        done += count
        summary.chunks.append({"chunk": index + 1, "pairs": count, "seconds": round(seconds, 3)})
        hooks.at("chunk-committed", chunk=index + 1, chunks=chunks, uri=target.uri)
        pace = done / (time.perf_counter() - started)
        left = split.miss_count - done
        log.info(
            "score: chunk %d/%d committed to the cache: %d pairs in %.1fs (%.1f pairs/s); %d pairs left, ETA %s",
            index + 1, chunks, count, seconds, count / seconds if seconds else 0.0, left, _eta(left / pace if pace else 0.0),
        )
        parts.append(scored)
    return parts


def union_all(frames: list[Any]) -> Any:
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result
