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
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import schema as S
from ..cache.keys import chunk_count
from ..cache.table import PAIR_KEY

log = logging.getLogger(__name__)


def scratch_cache_path(output: str, run_id: str) -> str:
    """The scratch cache of a run without ``--cache``: ``.<output name>.<run id>.score-cache``
    in the output's parent folder, beside the table, never inside it.

    Example:
        >>> scratch_cache_path("/tables/reranked", "2026-11-24")
        '/tables/.reranked.2026-11-24.score-cache'
    """
    head, _, name = output.rstrip("/").rpartition("/")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)
    return f"{head}/.{name}.{safe}.score-cache" if head or output.startswith("/") else f".{name}.{safe}.score-cache"


def remove_cache(spark: Any, uri: str) -> None:
    """Delete a scratch cache; a failure is a warning (the output is committed already)."""
    try:
        if "://" not in uri or uri.startswith("file://"):
            shutil.rmtree(uri[len("file://"):] if uri.startswith("file://") else uri, ignore_errors=False)
        else:
            path = spark._jvm.org.apache.hadoop.fs.Path(uri)
            path.getFileSystem(spark._jsc.hadoopConfiguration()).delete(path, True)
    except FileNotFoundError:
        pass
    except Exception as exc:  # noqa: BLE001 - the night's output is committed; say what is left
        log.warning("could not remove the scratch score cache %s (%s: %s); delete it by hand.", uri, type(exc).__name__, exc)


@dataclass(frozen=True)
class CacheTarget:
    """Where a run's scores are cached, and under which scorer key."""

    uri: str
    scorer_key: str
    scratch: bool  # removed once the output is committed


def cache_target(config: Any, info: Any) -> CacheTarget:
    from ..cache.keys import scorer_key_of

    scratch = config.cache is None
    uri = scratch_cache_path(config.output, config.run_id) if scratch else config.cache
    if "://" not in uri:
        uri = os.path.abspath(uri)
    return CacheTarget(uri=uri, scorer_key=scorer_key_of(info, config.layout), scratch=scratch)


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

    found = cache_lookup(pairs, uri=target.uri, scorer_key=target.scorer_key)
    hits = run.keep(scored_columns(found.hits))
    misses = run.keep(found.misses)
    counts = collect_row([hits.agg(F.count(F.lit(1)).alias("hits")), misses.agg(F.count(F.lit(1)).alias("misses"))])
    return Split(hits=hits, misses=misses, hit_count=counts["hits"], miss_count=counts["misses"])


def _eta(seconds: float) -> str:
    from .progress import _duration

    return _duration(seconds)


def score_misses(run: Any, split: Split, target: CacheTarget, scoring: Any) -> list[Any]:
    """Score the misses chunk by chunk, committing each chunk to the cache; returns the
    chunks' scored DataFrames (persisted). ``scoring(pairs) -> scored DataFrame``."""
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
        append_chunk(scored, uri=target.uri, scorer_key=target.scorer_key, run_id=config.run_id)
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
