"""The score step: every kept pair gets its score, from the score cache or from the model.

Every run scores through a cache: the one given as ``--cache``, or a scratch cache beside
the output (``scratch_cache_path``) that the job removes once the output is committed. So
a night that dies part-way resumes where it stopped, cache or not.

1. ``cache_target``: where the cache is, and the scorer key the executors are expected to
   score under (``cache.keys``: the model's files and settings, and the environment).
2. the lookup (``score_cache.lookup``): the kept pairs are split into hits (the cache holds
   a score for the same texts under that scorer key) and misses. Both are materialized
   before anything is committed, so this run's own commits never turn up among its hits.
3. ``check_hits``: a night that loads a model anyway scores a sample of its hits again and
   stops before any commit when they disagree (``cache.check``).
4. ``score_misses``: the misses are cut into ``chunk_count(misses, chunk_pairs)`` chunks by
   their query hash (``cache.keys``), so all the misses of a query are scored in one call
   of one task, as without a cache; each chunk is scored in tasks of about ``task_pairs``
   pairs and its scores are appended to the cache as ONE Delta transaction; then one log
   line gives the chunk's pace and the time left. A rerun finds the committed chunks'
   pairs among its hits and scores only the rest. With no misses no model is loaded.
5. ``score``: the hits and the new scores together, and the pairs of a query that DeAR ties
   (one ``computed_key``) given one score (``stages.tie_computed``), for the top-k.

The Spark half of the cache (key expressions, reading, appending) is ``score_cache.py``;
the scoring function the tasks run is ``udf.py``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import schema as S
from ..cache.keys import chunk_count
from ..cache.table import PAIR_KEY
from ..paths import location
from ..summary import AdapterCounts, JoinCounts, ScoreCounts

if TYPE_CHECKING:
    from .score_cache import Lookup

log = logging.getLogger(__name__)


# -- where scores are cached -----------------------------------------------------------------


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
    it); ``fields`` what it hashes. ``transaction_id`` names this run's appends, so that a
    retried chunk append never lands twice (Delta's idempotent-write marker).
    """

    uri: str
    fields: dict[str, Any]
    scratch: bool  # removed once the output is committed
    spark_delta: bool  # read and written through Spark's Delta, else deltalake
    transaction_id: str

    @property
    def scorer_key(self) -> str:
        from ..cache.keys import scorer_key

        return scorer_key(self.fields)

    @property
    def model_fields(self) -> dict[str, Any]:
        """What the scorer key covers of the model and settings: each task adds its own
        environment to it."""
        return {k: v for k, v in self.fields.items() if k != "environment"}


def cache_target(config: Any, info: Any, spark: Any, *, spark_delta: bool, spec: Any = None) -> CacheTarget:
    """The run's cache (``--cache``, a local path made absolute, or the scratch cache) and
    the scorer key it is looked up under; a path holding anything but a score cache is
    refused now, before any input is read. ``spec``: the adapter's own single-adapter spec
    when the run has named adapters (each has its own scorer key), else ``config.model``."""
    import uuid

    from ..cache.keys import environment, model_fields_of, scorer_fields
    from ..cache.table import check_cache

    uri, scratch = cache_location(config)
    fields = scorer_fields(model_fields_of(info, config.layout), environment(_expected_device(config, spark), adapter=(spec or config.model).adapter is not None))
    target = CacheTarget(uri=uri, fields=fields, scratch=scratch, spark_delta=spark_delta,
                         transaction_id=f"dear-rerank/{config.run_id}/{uuid.uuid4().hex}")
    if not spark_delta:  # Spark's Delta checks the table when it reads it
        check_cache(target.uri)
    return target


def cache_location(config: Any) -> tuple[str, bool]:
    """The run's cache and whether it is the scratch one: ``--cache`` (a local path made
    absolute, a URI as written), else ``scratch_cache_path`` beside the output."""
    scratch = config.cache is None
    where = location(scratch_cache_path(config.output, config.run_id) if scratch else config.cache)
    return where.local or where.text, scratch


def _expected_device(config: Any, spark: Any) -> str:
    """The device the executors will score on, as far as the driver can tell: the one
    asked for (in local mode resolved on this machine), else a GPU when Spark gives tasks
    GPUs. A task that ends up elsewhere tags its scores with its own scorer key."""
    if config.model.device:
        return config.model.device
    amount = spark.conf.get("spark.task.resource.gpu.amount", None)
    try:
        return "cuda" if amount is not None and float(amount) > 0 else "cpu"
    except ValueError:
        return "cpu"


# -- the step ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scoring:
    """How this run scores a DataFrame of pairs (``udf.score_pairs`` with its settings and
    accumulators): ``scoring(pairs)`` gives the scored pairs, ``pair_key`` passed through."""

    settings: Any  # udf.ScoringSettings
    counters: Any  # accumulator of udf.CounterParam
    scorers: Any  # accumulator of udf.ScorersParam: the scorer keys tasks scored under

    def __call__(self, pairs: Any) -> Any:
        from .udf import score_pairs

        return score_pairs(pairs, self.settings, self.counters, pass_through=(PAIR_KEY,), scorers=self.scorers)


def _scoring(run: Any, adapter: Any, counters: Any, scorers: Any) -> Scoring:
    """How ``adapter`` (a ``steps.AdapterTarget``) scores; with named adapters every
    adapter of the run rides along (``bank``), so a worker loads the base once for all."""
    from .udf import ScoringSettings

    config = run.config
    named = None not in run.adapters
    settings = ScoringSettings(
        spec=adapter.spec,
        layout=config.layout,
        batch_size=config.batch_size,
        max_tokens=config.max_tokens,
        expected_fingerprint=adapter.info.fingerprint,
        model_fields=adapter.cache.model_fields,
        bank=tuple((n, t.spec, t.info.fingerprint) for n, t in run.adapters.items()) if named else None,
        adapter=adapter.name,
    )
    return Scoring(settings, counters, scorers)


def adapter_pairs(run: Any, pairs: Any, name: str | None) -> Any:
    """The kept pairs adapter ``name`` ranks: all of them (one model, or side by side), or
    under routing those of the queries routed to it (``steps.ROUTE``)."""
    from pyspark.sql import functions as F

    from .steps import ROUTE

    if name is None or not run.config.adapter_column:
        return pairs
    return pairs.where(F.col(ROUTE) == F.lit(name))


def score(run: Any, status: Any, join: JoinCounts) -> tuple[Any, ScoreCounts, AdapterCounts | None]:
    """Score the kept pairs the cache lacks, chunk by chunk, and return them with the cached
    ones, the pairs of a query that DeAR ties given one score; refuses non-finite scores.

    With named adapters this is done per adapter, each under its own scorer key: its own
    lookup, hit check and chunks, so a night that adds an adapter scores only that
    adapter's pairs and one whose files changed rescores only its own. The scored pairs
    carry ``adapter`` and ``model`` (the adapter's label) for the top-k.
    """
    from pyspark.sql import functions as F

    from .. import guards
    from . import stages
    from .steps import adapter_mode
    from .udf import CounterParam, ScorersParam, worker_errors

    context = run.spark.sparkContext
    counters, scorers = context.accumulator({}, CounterParam()), context.accumulator({}, ScorersParam())
    with run.stage("score"):
        pairs = keyed_pairs(status, char_cap=run.info.char_cap)
        frames, each = [], {}
        for name, adapter in run.adapters.items():
            scoring = _scoring(run, adapter, counters, scorers)
            done = _score_adapter(run, adapter_pairs(run, pairs, name), adapter, scoring)
            frames.append(done.pop("scored").withColumn(S.ADAPTER, F.lit(name).cast("string")).withColumn(S.MODEL, F.lit(adapter.info.label)))
            each[name] = done
        scored = union_all(frames)
        with worker_errors():  # a worker's refusal (no CUDA there, other files) in one line
            counts = stages.score_counts(scored)
        scored = stages.tie_computed(scored)  # DeAR's ties stay ties across cached and new scores
    examples = counts.pop("non_finite_examples")
    hits, misses = sum(e["cache_hits"] for e in each.values()), sum(e["cache_misses"] for e in each.values())
    chunks = [chunk for e in each.values() for chunk in e["chunks"]]
    seconds = sum(chunk["seconds"] for chunk in chunks)
    pairs_scored = counts.pop("pairs_scored") - hits  # the hits are not scored again
    used = counters.value
    expected = {t.cache.scorer_key for t in run.adapters.values()}
    result = ScoreCounts(
        pairs_scored=pairs_scored,
        cache_hits=hits,
        cache_misses=misses,
        cache_hit_rate=round(hits / (hits + misses), 6) if hits + misses else 0.0,
        cache_lookup_seconds=round(sum(e["lookup_seconds"] for e in each.values()), 3),
        chunks=chunks,
        hit_check=_hit_checks({n: e["hit_check"] for n, e in each.items()}),
        scored_under_other_keys={k: json.loads(v) for k, v in scorers.value.items() if k not in expected},
        **counts,
        **{name: int(used.get(name, 0)) for name in ("model_loads", "oom_splits", "tasks_without_gpu", "real_tokens", "computed_tokens")},
        pairs_per_second=round(pairs_scored / seconds, 2) if seconds else 0.0,
        adapters_per_pair=len(run.adapters) if run.config.side_by_side else 1,
    )
    _warn_about_scoring(result, expected=", ".join(sorted(expected)), pooling=run.config.layout.pooling)
    guards.check_scored(join, result, run_id=run.config.run_id, examples=examples)
    per_adapter = None
    if None not in run.adapters:
        per_adapter = AdapterCounts(mode=adapter_mode(run.config), adapters={
            name: {
                "model": run.adapters[name].info.label,
                "scorer_key": run.adapters[name].cache.scorer_key,
                "pairs": e["cache_hits"] + e["cache_misses"],
                "cache_hits": e["cache_hits"],
                "cache_misses": e["cache_misses"],
                "pairs_scored": e["cache_misses"],
            }
            for name, e in each.items()
        })
    return scored, result, per_adapter


def _score_adapter(run: Any, pairs: Any, adapter: Any, scoring: Scoring) -> dict[str, Any]:
    """One adapter's (or the one model's) lookup, hit check and chunks, under its scorer key."""
    from .score_cache import lookup

    target = adapter.cache
    begun = time.perf_counter()
    split = lookup(pairs, uri=target.uri, scorer_key=target.scorer_key, spark_delta=target.spark_delta).counted(run.persist)
    lookup_seconds = round(time.perf_counter() - begun, 3)
    which = "" if adapter.name is None else f" (adapter {adapter.name})"
    log.info("score%s: cache lookup: %d hits, %d misses in %.1fs", which, split.hit_count, split.miss_count, lookup_seconds)
    hit_check = check_hits(run, split, pairs, target, scoring)
    parts, chunks = score_misses(run, split, target, scoring)
    if adapter.name is not None:
        chunks = [{"adapter": adapter.name, **chunk} for chunk in chunks]
    return {
        "scored": union_all([split.hits, *parts]),
        "cache_hits": split.hit_count,
        "cache_misses": split.miss_count,
        "lookup_seconds": lookup_seconds,
        "hit_check": hit_check,
        "chunks": chunks,
    }


def _hit_checks(checks: dict[str | None, dict[str, Any] | None]) -> dict[str, Any] | None:
    """The summary's ``hit_check``: the one model's, or over named adapters the pairs
    compared and the largest difference of all, and each adapter's."""
    done = {name: check for name, check in checks.items() if check is not None}
    if None in checks:
        return checks[None]
    if not done:
        return None
    return {
        "pairs": sum(c["pairs"] for c in done.values()),
        "max_difference": max(c["max_difference"] for c in done.values()),
        "adapters": done,
    }


def _warn_about_scoring(counts: ScoreCounts, *, expected: str, pooling: str) -> None:
    if counts.scored_under_other_keys:
        log.warning(
            "some scoring tasks scored under scorer key(s) %s, not the expected %s (their device or libraries differ "
            "from what the driver expects: see scored_under_other_keys in the summary); their scores are cached under "
            "their own key, so nights expecting %s will score those pairs again.",
            ", ".join(sorted(counts.scored_under_other_keys)), expected, expected,
        )
    if counts.queries_pooled_in_query:
        log.warning(
            "%d queries are pooled inside the query under pooling=%s (e.g. %s): their candidates "
            "all get one score, so reranking keeps the first-stage order; --pooling last-non-pad avoids it.",
            counts.queries_pooled_in_query,
            pooling,
            ", ".join(counts.queries_pooled_in_query_examples),
        )
    if counts.tasks_without_gpu:
        log.warning(
            "%d scoring tasks were given no GPU by Spark and ran on CPU; set "
            "spark.task.resource.gpu.amount (and the executors' GPU resources), or --device cpu to mean it.",
            counts.tasks_without_gpu,
        )


# -- its parts -------------------------------------------------------------------------------


def keyed_pairs(status: Any, *, char_cap: int | None) -> Any:
    """The kept pairs (texts cut at ``char_cap``) with their ``pair_key``."""
    from .score_cache import with_pair_key
    from .stages import kept_pairs

    return with_pair_key(kept_pairs(status, char_cap=char_cap))


def check_hits(run: Any, split: Lookup, pairs: Any, target: CacheTarget, scoring: Scoring) -> dict[str, Any] | None:
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


def score_misses(run: Any, split: Lookup, target: CacheTarget, scoring: Scoring) -> tuple[list[Any], list[dict[str, Any]]]:
    """Score the misses chunk by chunk, committing each chunk to the cache; returns the
    chunks' scored DataFrames (persisted) and their pairs and seconds."""
    from pyspark.sql import functions as F

    from .. import hooks
    from .score_cache import QUERY_HASH, append_chunk, chunk_col
    from .udf import worker_errors

    config = run.config
    if split.miss_count == 0:
        return [], []
    chunks = chunk_count(split.miss_count, config.chunk_pairs)
    per_chunk = math.ceil(split.miss_count / chunks)
    partitions = config.scoring_partitions or max(run.spark.sparkContext.defaultParallelism, math.ceil(per_chunk / config.task_pairs))
    which = chunk_col(chunks, QUERY_HASH)
    parts, done, started, timings = [], 0, time.perf_counter(), []
    for index in range(chunks):
        begun = time.perf_counter()
        pairs = split.misses.where(which == F.lit(index))
        pairs = pairs.repartition(partitions, S.QUERY_ID).sortWithinPartitions(S.QUERY_ID, S.DOC_ID)
        scored = run.persist(scoring(pairs))
        with worker_errors():
            count = scored.count()
        append_chunk(
            scored,
            uri=target.uri,
            scorer_key=target.scorer_key,
            scorers={target.scorer_key: json.dumps(target.fields, sort_keys=True), **scoring.scorers.value},
            run_id=config.run_id,
            transaction=(target.transaction_id, index),
            spark_delta=target.spark_delta,
        )
        seconds = time.perf_counter() - begun
        done += count
        timings.append({"chunk": index + 1, "pairs": count, "seconds": round(seconds, 3)})
        hooks.at("chunk-committed", chunk=index + 1, chunks=chunks, uri=target.uri)
        pace = done / (time.perf_counter() - started)
        left = split.miss_count - done
        log.info(
            "score: chunk %d/%d committed to the cache: %d pairs in %.1fs (%.1f pairs/s); %d pairs left, ETA %s",
            index + 1, chunks, count, seconds, count / seconds if seconds else 0.0, left, _eta(left / pace if pace else 0.0),
        )
        parts.append(scored)
    return parts, timings


def union_all(frames: list[Any]) -> Any:
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result
