"""The steps of one run, in the order the data flows: read, join, [score], top-k, evaluate, write.

The score step has a module of its own (``score_step.py``). Each step takes the ``Run``
(settings, session, model facts) and the DataFrames of the steps before it, and returns
what the next step needs with its part of the summary (``summary.py``); ``job.run_job``
chains them, and ``write_last`` makes the summary from the parts.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from .. import schema as S
from ..config import JobConfig
from ..model import ModelInfo
from ..summary import JoinCounts, OutputCounts, ReadCounts, RunHead, RunSummary, ScoreCounts

log = logging.getLogger(__name__)

NOTHING_TO_RANK_LISTED = 1000  # queries listed by id in the summary; all are counted


@dataclass
class Run:
    """One run in progress: its settings, session, model facts and what it is (``head``)."""

    config: JobConfig
    spark: Any
    info: ModelInfo
    head: RunHead
    cache: Any  # score_step.CacheTarget: where scores are cached, under which scorer key
    spark_delta: bool  # Delta through Spark (Databricks, --packages), else deltalake: decided once
    started: float
    report_png: str | None = None  # the report figure, when the run is tracked
    stage_seconds: dict[str, float] = field(default_factory=dict)
    persisted: list[Any] = field(default_factory=list)
    # Name (None without named adapters) -> what is scored under it: one entry per
    # adapter of the run, each with its own model facts and scorer key.
    adapters: dict[str | None, AdapterTarget] = field(default_factory=dict)

    def persist(self, df: Any) -> Any:
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
        """Time a step into ``stage_seconds`` and name it in progress lines."""
        from . import progress

        progress.set_step(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[name] = round(time.perf_counter() - start, 3)
        log.info("%s done in %.1fs", name, self.stage_seconds[name])


@dataclass(frozen=True)
class AdapterTarget:
    """One adapter of the run (or the run's one model, ``name`` None): its single-adapter
    spec, the facts the driver knows of it, and the cache target of its scorer key."""

    name: str | None
    spec: Any  # ModelSpec
    info: ModelInfo
    cache: Any  # score_step.CacheTarget


# The queries' routing value (--adapter-column), carried through the join to the pairs.
ROUTE = "_adapter_route"


@dataclass(frozen=True)
class Inputs:
    queries: Any
    corpus: Any
    candidates: Any


def start(config: JobConfig, spark: Any = None) -> Run:
    """The session, the refusals that need no input, and the model's facts (not its weights)."""
    from .. import tracking
    from ..model import check_device, inspect_model, resolve_device
    from . import preflight, score_step
    from .session import apply_conf, executors_on_this_machine, get_session, has_spark_delta, scoring_conf

    started = time.perf_counter()
    spark = spark or get_session(master=config.master, conf=config.spark_conf, arrow_batch_size=config.arrow_batch_size)
    spark_delta = has_spark_delta(spark)
    preflight.check_paths(config, spark=spark, spark_delta=spark_delta)  # seconds, before any input is read or model loaded
    if executors_on_this_machine(spark):  # local mode: this machine's device; else the executors decide
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, device=resolve_device(config.model.device)))
        check_device(config.model.device)
    specs = adapter_specs(config.model, with_base=config.side_by_side_base)
    infos = {name: inspect_model(spec, config.layout) for name, spec in specs.items()}
    apply_conf(spark, scoring_conf(config.arrow_batch_size))  # also on a session given, not built here
    targets = {
        name: AdapterTarget(name, spec, infos[name], score_step.cache_target(config, infos[name], spark, spark_delta=spark_delta, spec=spec))
        for name, spec in specs.items()
    }
    first = next(iter(targets.values()))
    # Texts are cut once for every adapter: at the largest cap any of their layouts reads.
    info = dataclasses.replace(first.info, char_cap=max(i.char_cap for i in infos.values()))
    cache = first.cache
    named = None not in targets
    head = RunHead(
        run_id=config.run_id, output=config.output, format=config.format,
        model="; ".join(f"{n}={t.info.label}" for n, t in targets.items()) if named else info.label,
        settings=_settings(config, info, spark, targets), cache=cache.uri, cache_scratch=cache.scratch,
        scorer_key=", ".join(t.cache.scorer_key for t in targets.values()),
        scorer={n: t.cache.fields for n, t in targets.items()} if named else cache.fields,
    )
    report_png = tracking.report_path(config.summary_path) if config.mlflow is not None else None
    return Run(config=config, spark=spark, info=info, head=head, cache=cache, spark_delta=spark_delta,
               started=started, report_png=report_png, adapters=targets)


def adapter_specs(spec: Any, *, with_base: bool) -> dict[str | None, Any]:
    """The run's adapters as single-adapter specs (``ModelSpec.each_adapter``), and with
    ``with_base`` the base model alone, last, as ``base``. Named adapters must sit on one
    base: refused, naming the bases, before anything is read."""
    from ..exceptions import ModelLoadError
    from ..model.files import resolve_model_files
    from ..model.spec import BASE_ADAPTER

    specs = spec.each_adapter()
    if None in specs:
        return specs
    bases = {name: resolve_model_files(each).base_dir for name, each in specs.items()}
    if len({str(b.resolve()) for b in bases.values()}) > 1:
        shown = ", ".join(f"{name}: {base}" for name, base in bases.items())
        raise ModelLoadError(f"the named adapters sit on different base models ({shown}); a run loads one base. Give --model, or run each base apart.")
    if with_base:
        base = spec.model or str(next(iter(bases.values())))
        specs[BASE_ADAPTER] = dataclasses.replace(spec, model=base, adapter=None, adapters=())
    return specs


def _settings(config: JobConfig, info: ModelInfo, spark: Any, targets: dict[str | None, AdapterTarget]) -> dict[str, Any]:
    from .. import hooks

    settings = {
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
    if None not in targets:  # named adapters: each one's files, and how they are used
        settings["adapters"] = {n: {"path": t.spec.adapter, "fingerprint": t.info.fingerprint} for n, t in targets.items()}
        settings["adapter_mode"] = adapter_mode(config)
        settings["adapter_column"] = config.adapter_column
        settings["default_adapter"] = config.default_adapter
    injected = hooks.setting() or spark.sparkContext.environment.get(hooks.ENV)
    if injected:  # tests only: a run with injected faults says so
        settings["fault_injection"] = injected
    return settings


def adapter_mode(config: JobConfig) -> str:
    """``side-by-side``, ``routing``, or ``single`` (one adapter for every query)."""
    return "side-by-side" if config.side_by_side else "routing" if config.adapter_column else "single"


def read_inputs(run: Run) -> tuple[Inputs, ReadCounts]:
    """Read the three inputs and count what they hold; conflicting duplicate ids are refused."""
    from . import read
    from .counts import collect_row, duplicate_ids, input_counts, refuse_conflicts

    config = run.config
    with run.stage("read"):
        # Each input is read (and a text format parsed) once: the counts below, the
        # duplicate-id checks, the join and the top-k's query counts all reuse it.
        inputs = Inputs(
            queries=run.persist(read.read_input(run.spark, config.queries, "queries", spark_delta=run.spark_delta,
                                                carry=(config.adapter_column,) if config.adapter_column else ())),
            corpus=run.persist(read.read_input(run.spark, config.corpus, "corpus", spark_delta=run.spark_delta)),
            candidates=run.persist(read.read_input(run.spark, config.candidates, "candidates", spark_delta=run.spark_delta)),
        )
        # A query id repeated with two routing values would be routed at random: a conflict too.
        routed = [config.adapter_column] if config.adapter_column else []
        unique = {"queries": (S.QUERY_ID, [S.QUERY, *routed]), "corpus": (S.DOC_ID, [S.TITLE, S.TEXT])}
        counts = collect_row([  # one Spark action for every count of the three inputs
            input_counts(inputs.queries, "queries", text_columns=(S.QUERY,), id_column=S.QUERY_ID),
            input_counts(inputs.corpus, "corpus", text_columns=(S.TITLE, S.TEXT), id_column=S.DOC_ID),
            input_counts(inputs.candidates, "candidates", first_stage=True),
            *[duplicate_ids(getattr(inputs, name), name, *unique[name]) for name in unique],
        ])
        for name in unique:
            refuse_conflicts(getattr(inputs, name), *unique[name], conflicts=counts[f"{name}_conflicts"], path=getattr(config, name).path)
    return inputs, ReadCounts(
        rows_read={name: counts[f"{name}_rows"] for name in ("queries", "corpus", "candidates")},
        duplicate_ids_collapsed={name: counts[f"{name}_collapsed"] for name in unique},
        texts_with_invalid_utf8={name: counts[f"{name}_invalid_utf8"] for name in unique},
        rows_without_id={name: counts[f"{name}_without_id"] for name in unique},
        first_stage_missing={"rank": counts["candidates_rank"], "score": counts["candidates_score"]},
        candidates_read=counts["candidates_rows"],
    )


def join(run: Run, inputs: Inputs, read: ReadCounts) -> tuple[Any, JoinCounts]:
    """Every candidate kept or dropped with a reason; refuses a run that keeps too little."""
    from .. import guards
    from . import stages
    from .score_cache import DOC_HASH, QUERY_HASH, with_doc_hash, with_query_hash

    cap = run.info.char_cap
    with run.stage("join"):
        # Each query and each document is hashed once for the score cache, before the join.
        queries, corpus = with_query_hash(inputs.queries, char_cap=cap), with_doc_hash(inputs.corpus, char_cap=cap)
        carry = (QUERY_HASH, DOC_HASH)
        if run.config.adapter_column:
            queries, carry = with_route(queries, run.config), carry + (ROUTE,)
        status = stages.candidate_status(inputs.candidates, queries, corpus, depth=run.config.depth, carry=carry)
        status = run.persist(status)
        by_reason = {row[stages.DROP_REASON]: int(row["count"]) for row in status.groupBy(stages.DROP_REASON).count().collect()}
    counts = JoinCounts(candidates_kept=by_reason.pop(None, 0), dropped=by_reason)
    guards.check_kept(read, counts, run_id=run.config.run_id, max_drop_share=run.config.max_drop_share, allow_empty=run.config.allow_empty)
    if run.config.adapter_column:
        check_routes(run, status)
    return status, counts


ROUTES_LISTED = 5  # query ids named per bad routing value


def with_route(queries: Any, config: JobConfig) -> Any:
    """The queries with ``ROUTE``: their ``--adapter-column`` value, trimmed; empty or null
    takes ``--default-adapter`` (null without one, refused by ``check_routes``)."""
    from pyspark.sql import functions as F

    value = F.trim(F.col(f"`{config.adapter_column}`"))
    value = F.when(value.isNull() | (value == ""), F.lit(config.default_adapter).cast("string")).otherwise(value)
    return queries.withColumn(ROUTE, value)


def check_routes(run: Run, status: Any) -> None:
    """Refuse, before any scoring, kept pairs whose query routes to no named adapter: a
    value naming none (which values, and some of their queries), or no value and no
    ``--default-adapter`` (some of those queries). Nothing is silently left unranked."""
    from pyspark.sql import functions as F

    from ..exceptions import InputError
    from . import stages

    config, names = run.config, list(run.config.model.adapter_names)
    kept = status.where(F.col(stages.DROP_REASON).isNull())
    found = {r[ROUTE]: int(r["queries"]) for r in kept.groupBy(ROUTE).agg(F.countDistinct(S.QUERY_ID).alias("queries")).collect()}
    bad = {value: n for value, n in found.items() if value not in names}
    if not bad:
        return
    problems = []
    for value, n in sorted(bad.items(), key=lambda item: (item[0] is not None, item[0] or "")):
        which = F.col(ROUTE).isNull() if value is None else F.col(ROUTE) == value
        ids = [r[S.QUERY_ID] for r in kept.where(which).select(S.QUERY_ID).distinct().orderBy(S.QUERY_ID).limit(ROUTES_LISTED).collect()]
        shown = ", ".join(ids) + (", ..." if n > len(ids) else "")
        if value is None:
            problems.append(f"{n} queries have no {config.adapter_column!r} value and there is no --default-adapter (e.g. {shown})")
        else:
            problems.append(f"{n} queries name adapter {value!r}, which is not a named adapter (e.g. {shown})")
    raise InputError(
        f"{config.queries.path}: routing by column {config.adapter_column!r} over adapters {names}: "
        + "; ".join(problems) + ". Nothing was scored."
    )


def top_k(run: Run, inputs: Inputs, scored: Any, *, read: ReadCounts, join: JoinCounts, score: ScoreCounts) -> tuple[Any, OutputCounts]:
    """The best ``top_k`` per query; every query of the candidates is accounted for."""
    from .. import guards
    from . import stages
    from .counts import collect_row

    with run.stage("topk"):
        top = run.persist(stages.top_k(scored, k=run.config.top_k, run_id=run.config.run_id))
        # One Spark action. Queries with no candidate row at all have nothing to rerank, so
        # nothing is written for them: they are counted, not listed (first-stage misses are normal).
        counts = collect_row([stages.query_counts(top, candidates=inputs.candidates, queries=inputs.queries, scored=scored)])
        nothing = counts["queries_with_nothing_to_rank"]
        listed = stages.queries_with_nothing_to_rank(inputs.candidates, scored, limit=NOTHING_TO_RANK_LISTED) if nothing else []
    output = OutputCounts(
        output_rows=counts["output_rows"],
        output_queries=counts["output_queries"],
        queries_in_candidates=counts["queries_in_candidates"],
        queries_without_candidates=counts["queries_without_candidates"],
        queries_with_nothing_to_rank=listed,
        queries_with_nothing_to_rank_count=nothing,
    )
    guards.check_accounted(read, join, score, output)
    return top, output


def evaluate(run: Run, status: Any, top: Any) -> dict[str, Any]:
    """First stage (to depth) vs reranked, on the queries that have judgements, and the figure."""
    from pyspark.sql import functions as F

    from . import read, stages

    with run.stage("evaluate"):
        qrels = read.read_input(run.spark, run.config.qrels, "qrels", spark_delta=run.spark_delta)
        judged = qrels.select(S.QUERY_ID).distinct()
        first = (
            stages.within_depth(status)
            .join(judged, S.QUERY_ID, "left_semi")
            .select(S.QUERY_ID, S.DOC_ID, (-F.col(S.FIRST_STAGE_RANK).cast("double")).alias(S.SCORE))
        )
        reranked = top.join(judged, S.QUERY_ID, "left_semi").select(S.QUERY_ID, S.DOC_ID, S.SCORE, S.ADAPTER)
        first, reranked, qrels = first.toArrow(), reranked.toArrow(), qrels.toArrow()
        metrics, reranked = _adapter_metrics(run, first, reranked, qrels)
        if run.report_png and reranked is not None:
            try:
                from ..report import write_report

                write_report(first, reranked, qrels, run.report_png)
            except Exception as exc:  # noqa: BLE001 - the figure is extra; the run goes on
                log.warning("could not write the report figure %s (%s: %s)", run.report_png, type(exc).__name__, exc)
    return metrics


def _adapter_metrics(run: Run, first: Any, reranked: Any, qrels: Any) -> tuple[dict[str, Any], Any]:
    """The run's metrics, and with named adapters each adapter's beside the first stage's
    (``adapters``: name -> ``compare``'s result). Under routing an adapter is measured on
    its own queries and the top-level ``reranked`` is the whole run; side by side, every
    adapter is measured on every judged query and the top-level ``reranked`` and ``delta``
    are None (no one run is "the" reranked one). Returns the reranked run of the figure
    (None side by side)."""
    import pyarrow.compute as pc

    from ..evaluate import compare

    k = run.config.top_k
    if None in run.adapters:
        return compare(first, reranked, qrels, k=k), reranked
    each = {}
    for name in run.adapters:
        mine = reranked.filter(pc.equal(reranked[S.ADAPTER], name))
        base = first
        if run.config.adapter_column:  # this adapter's queries only
            base = first.filter(pc.is_in(first[S.QUERY_ID], value_set=pc.unique(mine[S.QUERY_ID])))
        each[name] = compare(base, mine, qrels, k=k)
    if run.config.side_by_side:
        metrics = compare(first, reranked.slice(0, 0), qrels, k=k)
        metrics.update(reranked=None, delta=None)
        shown = None
    else:
        metrics, shown = compare(first, reranked, qrels, k=k), reranked
    metrics["adapters"] = each
    return metrics, shown


def write_last(run: Run, top: Any, *, parts: dict[str, Any]) -> RunSummary:
    """Commit the table as the last step that can fail; return the run's summary.

    The TREC run is written, and the summary's file created, beside their targets before
    the commit; after it they are only renamed into place. A run that fails before its
    commit leaves the table, the TREC file and the summary as they were. ``parts``: the
    steps' parts (``read_counts``, ``join_counts``, ``score_counts``, ``output_counts``,
    ``metrics``), of which the summary is made.
    """
    from functools import partial

    from ..io.staged import StagedFile
    from ..io.trec import write_trec_batches
    from . import hadoop
    from .score_step import remove_cache
    from .write import write_output

    from ..config import trec_paths

    config = run.config
    upload = partial(hadoop.upload, run.spark)  # for a summary or TREC file at a remote location
    with ExitStack() as stack:
        summary_file = stack.enter_context(StagedFile(config.summary_path, upload=upload))
        trec_files = {name: stack.enter_context(StagedFile(path, upload=upload)) for name, path in trec_paths(config).items()}
        for name, trec_file in trec_files.items():
            tag = "dear-" + re.sub(r"\s", "_", config.run_id)  # a TREC tag is one word; a run id may hold spaces
            if name is None:
                write_trec_batches(_in_run_order(top), trec_file.tmp, tag=tag)
            else:  # side by side: this adapter's run, tagged with its name
                from pyspark.sql import functions as F

                write_trec_batches(_in_run_order(top.where(F.col(S.ADAPTER) == name)), trec_file.tmp, tag=f"{tag}-{name}")
        with run.stage("write"):
            written = write_output(top, output=config.output, fmt=config.format, run_id=config.run_id, spark_delta=run.spark_delta)
        if run.cache.scratch:  # the output holds the night now; a rerun has nothing to resume
            remove_cache(run.spark, run.cache.uri)
        for trec_file in trec_files.values():
            trec_file.publish()
        summary = RunSummary(head=run.head, write=written, stage_seconds=dict(run.stage_seconds),
                             wall_seconds=round(time.perf_counter() - run.started, 3), **parts)
        summary_file.write_text(summary.to_json())
        summary_file.publish()
    return summary


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
