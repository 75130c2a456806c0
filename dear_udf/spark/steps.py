"""The steps of one run, in the order the data flows: read, join, score, top-k, evaluate, write.

Each step takes the ``Run`` (settings, session, summary) and the DataFrames of the steps
before it, fills its part of the summary, and returns what the next step needs
(``job.run_job`` chains them). A new step, such as a score cache in front of ``score``,
is one more function of this shape.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from .. import schema as S
from ..config import JobConfig
from ..model import ModelInfo
from ..summary import RunSummary

log = logging.getLogger(__name__)

NOTHING_TO_RANK_LISTED = 1000  # queries listed by id in the summary; all are counted


@dataclass
class Run:
    """One run in progress: its settings, session, model facts and summary."""

    config: JobConfig
    spark: Any
    info: ModelInfo
    summary: RunSummary
    started: float
    cache: Any = None  # chunks.CacheTarget: where scores are cached, under which scorer key
    spark_delta: bool = False  # Delta through Spark (Databricks, --packages), else deltalake: decided once
    report_png: str | None = None  # the report figure, when the run is tracked
    persisted: list[Any] = field(default_factory=list)

    def keep(self, df: Any) -> Any:
        """Persist ``df`` for the steps after this one; released when the run ends."""
        from pyspark import StorageLevel

        df = df.persist(StorageLevel.MEMORY_AND_DISK)
        self.persisted.append(df)
        return df

    def release(self) -> None:
        for df in self.persisted:
            df.unpersist()

    @contextmanager
    def stage(self, name: str):
        """Time a step into ``summary.stage_seconds`` and name it in progress lines."""
        from . import progress

        progress.set_step(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.summary.stage_seconds[name] = round(time.perf_counter() - start, 3)
        log.info("%s done in %.1fs", name, self.summary.stage_seconds[name])


@dataclass(frozen=True)
class Inputs:
    queries: Any
    corpus: Any
    candidates: Any


def start(config: JobConfig, spark: Any = None) -> Run:
    """The session, the refusals that need no input, and the model's facts (not its weights)."""
    from .. import hooks, tracking
    from ..model import check_device, inspect_model, resolve_device
    from . import preflight
    from .session import apply_conf, executors_on_this_machine, get_session, has_spark_delta, scoring_conf

    started = time.perf_counter()
    spark = spark or get_session(master=config.master, conf=config.spark_conf, arrow_batch_size=config.arrow_batch_size)
    spark_delta = has_spark_delta(spark)
    preflight.check_paths(config, spark=spark, spark_delta=spark_delta)  # seconds, before any input is read or model loaded
    if executors_on_this_machine(spark):  # local mode: this machine's device; else the executors decide
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, device=resolve_device(config.model.device)))
        check_device(config.model.device)
    info = inspect_model(config.model, config.layout)
    summary = RunSummary(run_id=config.run_id, model=info.label, output=config.output, format=config.format)
    summary.settings = _settings(config, info)
    apply_conf(spark, scoring_conf(config.arrow_batch_size))  # also on a session given, not built here
    injected = hooks.setting() or spark.sparkContext.environment.get(hooks.ENV)
    if injected:  # tests only: a run with injected faults says so
        summary.settings["fault_injection"] = injected
    report_png = tracking.report_path(config.summary_path) if config.mlflow is not None else None
    cache = _cache_target(config, info, spark, summary, spark_delta=spark_delta)
    return Run(config=config, spark=spark, info=info, summary=summary, started=started, cache=cache,
               report_png=report_png, spark_delta=spark_delta)


def _cache_target(config: JobConfig, info: ModelInfo, spark: Any, summary: RunSummary, *, spark_delta: bool) -> Any:
    """Where this run caches its scores, under the scorer key the executors are expected to
    score under; a path holding anything but a score cache is refused now."""
    import json

    from ..cache.keys import environment, model_fields_of, scorer_fields
    from ..cache.table import check_cache
    from .chunks import cache_target

    fields = scorer_fields(model_fields_of(info, config.layout), environment(_expected_device(config, spark), adapter=config.model.adapter is not None))
    target = cache_target(config, fields, spark_delta=spark_delta)
    if not spark_delta:  # Spark's Delta checks the table when it reads it
        check_cache(target.uri)
    summary.cache, summary.cache_scratch, summary.scorer_key = target.uri, target.scratch, target.scorer_key
    summary.scorer = json.loads(target.scorer)
    return target


def _expected_device(config: JobConfig, spark: Any) -> str:
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


def _settings(config: JobConfig, info: ModelInfo) -> dict[str, Any]:
    return {
        "top_k": config.top_k,
        "depth": config.depth,
        "batch_size": config.batch_size,
        "max_tokens": config.max_tokens,
        "pooling": config.layout.pooling,
        "special_tokens": config.layout.special_tokens,
        "dtype": config.model.dtype,
        "device": config.model.device or "the task's GPU",
        "model_fingerprint": info.fingerprint,
        "model_revision": info.revision,
        "max_drop_share": config.max_drop_share,
        "allow_empty": config.allow_empty,
        "chunk_pairs": config.chunk_pairs,
        "task_pairs": config.task_pairs,
    }


def read_inputs(run: Run) -> Inputs:
    """Read the three inputs and count what they hold; conflicting duplicate ids are refused."""
    from . import read
    from .profile import collect_row, duplicate_ids, profile, refuse_conflicts

    config, summary = run.config, run.summary
    with run.stage("read"):
        # Each input is read (and a text format parsed) once: the counts below, the
        # duplicate-id checks, the join and the top-k's query counts all reuse it.
        inputs = Inputs(
            queries=run.keep(read.read_input(run.spark, config.queries, "queries")),
            corpus=run.keep(read.read_input(run.spark, config.corpus, "corpus")),
            candidates=run.keep(read.read_input(run.spark, config.candidates, "candidates")),
        )
        unique = {"queries": (S.QUERY_ID, [S.QUERY]), "corpus": (S.DOC_ID, [S.TITLE, S.TEXT])}
        counts = collect_row([  # one Spark action for every count of the three inputs
            profile(inputs.queries, "queries", text_columns=(S.QUERY,), id_column=S.QUERY_ID),
            profile(inputs.corpus, "corpus", text_columns=(S.TITLE, S.TEXT), id_column=S.DOC_ID),
            profile(inputs.candidates, "candidates", first_stage=True),
            *[duplicate_ids(getattr(inputs, name), name, *unique[name]) for name in unique],
        ])
        for name in ("queries", "corpus", "candidates"):
            summary.rows_read[name] = counts[f"{name}_rows"]
        for name in unique:
            summary.texts_with_invalid_utf8[name] = counts[f"{name}_invalid_utf8"]
            summary.rows_without_id[name] = counts[f"{name}_without_id"]
            summary.duplicate_ids_collapsed[name] = counts[f"{name}_collapsed"]
        summary.candidates_read = counts["candidates_rows"]
        summary.first_stage_missing = {"rank": counts["candidates_rank"], "score": counts["candidates_score"]}
        for name in unique:
            refuse_conflicts(getattr(inputs, name), *unique[name], conflicts=counts[f"{name}_conflicts"], path=getattr(config, name).path)
    return inputs


def join(run: Run, inputs: Inputs) -> Any:
    """Every candidate kept or dropped with a reason; refuses a run that keeps too little."""
    from .. import guards
    from . import stages
    from .cache import DOC_HASH, QUERY_HASH, with_doc_hash, with_query_hash

    cap = run.info.char_cap
    with run.stage("join"):
        # Each query and each document is hashed once for the score cache, before the join.
        queries, corpus = with_query_hash(inputs.queries, char_cap=cap), with_doc_hash(inputs.corpus, char_cap=cap)
        status = stages.candidate_status(inputs.candidates, queries, corpus, depth=run.config.depth, carry=(QUERY_HASH, DOC_HASH))
        status = run.keep(status)
        for row in status.groupBy(stages.DROP_REASON).count().collect():
            reason, count = row[stages.DROP_REASON], int(row["count"])
            if reason is None:
                run.summary.candidates_kept = count
            else:
                run.summary.dropped[reason] = count
    guards.check_kept(run.summary, max_drop_share=run.config.max_drop_share, allow_empty=run.config.allow_empty)
    return status


def score(run: Run, status: Any) -> Any:
    """Score the kept pairs the cache lacks, chunk by chunk (``chunks.py``), and return them
    with the cached ones, a query's pairs that DeAR ties given one score; refuses
    non-finite scores."""
    from .. import guards
    from ..cache.table import PAIR_KEY
    from . import chunks, stages
    from .udf import CounterParam, ScorersParam, ScoringSettings, score_pairs, worker_errors

    config, summary = run.config, run.summary
    with run.stage("score"):
        counters = run.spark.sparkContext.accumulator({}, CounterParam())
        scorers = run.spark.sparkContext.accumulator({}, ScorersParam())
        settings = ScoringSettings(
            spec=config.model,
            layout=config.layout,
            batch_size=config.batch_size,
            max_tokens=config.max_tokens,
            expected_fingerprint=run.info.fingerprint,
            model_fields=run.cache.model_fields,
        )

        def scoring(pairs: Any) -> Any:
            return score_pairs(pairs, settings, counters, keep=(PAIR_KEY,), scorers=scorers)

        pairs = chunks.keyed_pairs(status, char_cap=run.info.char_cap)
        split = chunks.lookup(run, pairs, run.cache)
        summary.cache_hits, summary.cache_misses = split.hit_count, split.miss_count
        kept = split.hit_count + split.miss_count
        summary.cache_hit_rate = round(split.hit_count / kept, 6) if kept else 0.0
        summary.hit_check = chunks.check_hits(run, split, pairs, run.cache, scoring)
        parts = chunks.score_misses(run, split, run.cache, scoring, scorers)
        scored = chunks.union_all([split.hits, *parts])
        with worker_errors():  # a worker's refusal (no CUDA there, other files) in one line
            counts = stages.score_counts(scored)
        examples = counts.pop("non_finite_examples")
        for name, value in counts.items():
            setattr(summary, name, value)
        scored = stages.tie_computed(scored)  # DeAR's ties stay ties across cached and new scores
        summary.pairs_scored = counts["pairs_scored"] - split.hit_count  # the hits are not scored again
        for name in ("model_loads", "oom_splits", "real_tokens", "computed_tokens", "tasks_without_gpu"):
            setattr(summary, name, int(counters.value.get(name, 0)))
        summary.scored_under_other_keys = {k: json.loads(v) for k, v in scorers.value.items() if k != run.cache.scorer_key}
    seconds = sum(chunk["seconds"] for chunk in summary.chunks)
    summary.pairs_per_second = round(summary.pairs_scored / seconds, 2) if seconds else 0.0
    _warn_about_scoring(summary, config.layout.pooling)
    guards.check_scored(summary, examples=examples)
    return scored


def _warn_about_scoring(summary: RunSummary, pooling: str) -> None:
    if summary.scored_under_other_keys:
        log.warning(
            "some scoring tasks scored under scorer key(s) %s, not the expected %s (their device or libraries differ "
            "from what the driver expects: see scored_under_other_keys in the summary); their scores are cached under "
            "their own key, so nights expecting %s will score those pairs again.",
            ", ".join(sorted(summary.scored_under_other_keys)), summary.scorer_key, summary.scorer_key,
        )
    if summary.queries_pooled_in_query:
        log.warning(
            "%d queries are pooled inside the query under pooling=%s (e.g. %s): their candidates "
            "all get one score, so reranking keeps the first-stage order; --pooling last-non-pad avoids it.",
            summary.queries_pooled_in_query,
            pooling,
            ", ".join(summary.queries_pooled_in_query_examples),
        )
    if summary.tasks_without_gpu:
        log.warning(
            "%d scoring tasks were given no GPU by Spark and ran on CPU; set "
            "spark.task.resource.gpu.amount (and the executors' GPU resources), or --device cpu to mean it.",
            summary.tasks_without_gpu,
        )


def top_k(run: Run, inputs: Inputs, scored: Any) -> Any:
    """The best ``top_k`` per query; every query of the candidates is accounted for."""
    from .. import guards
    from . import stages
    from .profile import collect_row

    summary = run.summary
    with run.stage("topk"):
        top = run.keep(stages.top_k(scored, k=run.config.top_k, run_id=run.config.run_id, model=run.info.label))
        # One Spark action. Queries with no candidate row at all have nothing to rerank, so
        # nothing is written for them: they are counted, not listed (first-stage misses are normal).
        counts = collect_row([stages.query_counts(top, candidates=inputs.candidates, queries=inputs.queries, scored=scored)])
        summary.output_rows, summary.output_queries = counts["output_rows"], counts["output_queries"]
        summary.queries_in_candidates = counts["queries_in_candidates"]
        summary.queries_without_candidates = counts["queries_without_candidates"]
        summary.queries_with_nothing_to_rank_count = counts["queries_with_nothing_to_rank"]
        if summary.queries_with_nothing_to_rank_count:
            summary.queries_with_nothing_to_rank = stages.queries_with_nothing_to_rank(inputs.candidates, scored, limit=NOTHING_TO_RANK_LISTED)
    guards.check_accounted(summary)
    return top


def evaluate(run: Run, status: Any, top: Any) -> None:
    """First stage (to depth) vs reranked, on the queries that have judgements, and the figure."""
    from pyspark.sql import functions as F

    from ..evaluate import compare
    from . import read, stages

    with run.stage("evaluate"):
        qrels = read.read_input(run.spark, run.config.qrels, "qrels")
        judged = qrels.select(S.QUERY_ID).distinct()
        first = (
            stages.within_depth(status)
            .join(judged, S.QUERY_ID, "left_semi")
            .select(S.QUERY_ID, S.DOC_ID, (-F.col(S.FIRST_STAGE_RANK).cast("double")).alias(S.SCORE))
        )
        reranked = top.join(judged, S.QUERY_ID, "left_semi").select(S.QUERY_ID, S.DOC_ID, S.SCORE)
        first, reranked, qrels = first.toArrow(), reranked.toArrow(), qrels.toArrow()
        run.summary.metrics = compare(first, reranked, qrels, k=run.config.top_k)
        if run.report_png:
            try:
                from ..report import write_report

                write_report(first, reranked, qrels, run.report_png)
            except Exception as exc:  # noqa: BLE001 - the figure is extra; the run goes on
                log.warning("could not write the report figure %s (%s: %s)", run.report_png, type(exc).__name__, exc)


def write_last(run: Run, top: Any) -> None:
    """Commit the table as the last step that can fail.

    The TREC run is written, and the summary's file created, beside their targets before
    the commit; after it they are only renamed into place. A run that fails before its
    commit leaves the table, the TREC file and the summary as they were.
    """
    from functools import partial

    from ..io.staged import StagedFile
    from ..io.trec import write_trec_batches
    from . import hadoop
    from .chunks import remove_cache
    from .write import write_output

    config, summary = run.config, run.summary
    upload = partial(hadoop.upload, run.spark)  # for a summary or TREC file at a remote location
    with ExitStack() as stack:
        summary_file = stack.enter_context(StagedFile(config.summary_path, upload=upload))
        trec_file = stack.enter_context(StagedFile(config.trec_out, upload=upload)) if config.trec_out else None
        if trec_file is not None:
            tag = "dear-" + re.sub(r"\s", "_", config.run_id)  # a TREC tag is one word; a run id may hold spaces
            write_trec_batches(_in_run_order(top), trec_file.tmp, tag=tag)
        with run.stage("write"):
            summary.write = write_output(top, output=config.output, fmt=config.format, run_id=config.run_id)
        if run.cache.scratch:  # the output holds the night now; a rerun has nothing to resume
            remove_cache(run.spark, run.cache.uri)
        if trec_file is not None:
            trec_file.publish()
        summary.wall_seconds = round(time.perf_counter() - run.started, 3)
        summary_file.write_text(summary.to_json())
        summary_file.publish()


TREC_ROWS_PER_BATCH = 10_000


def _in_run_order(top: Any):
    """The top-k as Arrow tables in TREC order (query, then rank), streamed to the driver
    one partition at a time: at 10^6 queries the whole run would not fit in its memory."""
    import pyarrow as pa

    columns = (S.QUERY_ID, S.DOC_ID, S.RANK, S.SCORE)
    rows = top.select(*columns).orderBy(S.QUERY_ID, S.RANK).toLocalIterator(prefetchPartitions=True)
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) == TREC_ROWS_PER_BATCH:
            yield pa.table({c: [r[i] for r in batch] for i, c in enumerate(columns)})
            batch = []
    if batch:
        yield pa.table({c: [r[i] for r in batch] for i, c in enumerate(columns)})
