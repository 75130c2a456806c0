"""The reranking job: read -> join -> score -> top-k -> write -> summary.

Run it as ``dear-rerank run ...``, as ``spark-submit jobs/rerank.py ...`` with the same
flags, or from a Databricks wheel task (entry point ``dear-rerank``, parameters
``["run", ...]``). Flags override the optional ``--config`` YAML file.

Example:
    >>> summary = run_job(build_job_config({...}))
    >>> summary.accounted
    True
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from .. import schema as S
from .. import tracking
from ..config import JobConfig, add_layout_arguments, build_job_config, expand_shorthand, layout_values, load_yaml, merge
from ..summary import RunSummary

log = logging.getLogger(__name__)

NOTHING_TO_RANK_LISTED = 1000  # queries listed by id in the summary; all are counted


@contextmanager
def _stage(summary: RunSummary, name: str):
    from . import progress

    progress.set_step(name)
    start = time.perf_counter()
    try:
        yield
    finally:
        summary.stage_seconds[name] = round(time.perf_counter() - start, 3)
    log.info("%s done in %.1fs", name, summary.stage_seconds[name])


def _profile(df: Any, *, text_columns: Sequence[str] = (), id_column: str | None = None, first_stage: bool = False) -> dict[str, int]:
    """Counts of one input, in one pass: rows, rows holding U+FFFD (invalid UTF-8
    replaced, or a U+FFFD already in the text), rows without an id, and for candidates
    rows without a first-stage rank or score (null, NaN or unreadable)."""
    from pyspark.sql import functions as F

    from .stages import has_id

    def count(condition: Any) -> Any:
        return F.sum(F.when(condition, 1).otherwise(0))

    measures = {"rows": F.count(F.lit(1))}
    present = [c for c in text_columns if c in df.columns]
    if present:
        hit = None
        for c in present:
            cond = F.coalesce(F.col(c).contains("\ufffd"), F.lit(False))
            hit = cond if hit is None else hit | cond
        measures["invalid_utf8"] = count(hit)
    if id_column:
        measures["without_id"] = count(~has_id(F.col(id_column)))
    if first_stage:
        measures["rank"] = count(F.col(S.FIRST_STAGE_RANK).isNull())
        measures["score"] = count(F.col(S.FIRST_STAGE_SCORE).isNull())
    row = df.agg(*[m.alias(name) for name, m in measures.items()]).collect()[0]
    return {name: int(row[name] or 0) for name in measures}


def run_job(config: JobConfig, *, spark: Any = None) -> RunSummary:
    """Run one reranking job and return its summary (also written as JSON and printed).

    Raises:
        OutputError: before reading anything, when the output folder, the summary or the
            TREC file is refused (``preflight.py``); or when the commit fails.
        InputError: before any scoring, when an input is missing, unreadable or lacks
            columns, or has conflicting duplicate ids.
        ModelLoadError: when the model cannot be resolved or is refused.
        RunRefusedError: before writing, when the run is empty, drops too much, or has
            non-finite scores (``guards.py``).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from .. import guards
    from ..model import check_device, inspect_model
    from .. import hooks
    from . import preflight, read, stages
    from .progress import StageProgress
    from .session import executors_on_this_machine, get_session
    from .udf import CounterParam, ScoringSettings, score_pairs, worker_errors

    started = time.perf_counter()
    spark = spark or get_session(master=config.master, conf=config.spark_conf, arrow_batch_size=config.arrow_batch_size)
    preflight.check_paths(config, spark=spark)  # seconds, before any input is read or model loaded
    report_png = tracking.report_path(config.summary_path) if config.mlflow is not None else None
    info = inspect_model(config.model, config.layout)
    summary = RunSummary(run_id=config.run_id, model=info.label, output=config.output, format=config.format)
    summary.settings = {
        "top_k": config.top_k,
        "depth": config.depth,
        "batch_size": config.batch_size,
        "max_tokens": config.max_tokens,
        "pooling": config.layout.pooling,
        "special_tokens": config.layout.special_tokens,
        "dtype": config.model.dtype,
        "device": config.model.device or "auto",
        "model_fingerprint": info.fingerprint,
        "model_revision": info.revision,
        "max_drop_share": config.max_drop_share,
        "allow_empty": config.allow_empty,
    }

    if executors_on_this_machine(spark):  # else only the executors can tell, when they load
        check_device(config.model.device)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(config.arrow_batch_size))
    injected = hooks.setting() or spark.sparkContext.environment.get(hooks.ENV)
    if injected:  # tests only: a run with injected faults says so
        summary.settings["fault_injection"] = injected
    persisted: list[Any] = []
    reporter = StageProgress(spark).start()

    try:
        with _stage(summary, "read"):
            queries = read.read_input(spark, config.queries, "queries")
            corpus = read.read_input(spark, config.corpus, "corpus")
            candidates = read.read_input(spark, config.candidates, "candidates")
            for name, df, text_cols, id_col in (
                ("queries", queries, (S.QUERY,), S.QUERY_ID),
                ("corpus", corpus, (S.TITLE, S.TEXT), S.DOC_ID),
            ):
                counts = _profile(df, text_columns=text_cols, id_column=id_col)
                summary.rows_read[name] = counts["rows"]
                summary.texts_with_invalid_utf8[name] = counts["invalid_utf8"]
                summary.rows_without_id[name] = counts["without_id"]
            counts = _profile(candidates, first_stage=True)
            summary.rows_read["candidates"] = counts["rows"]
            summary.first_stage_missing = {"rank": counts["rank"], "score": counts["score"]}
            summary.duplicate_ids_collapsed["queries"] = stages.check_unique_ids(queries, S.QUERY_ID, [S.QUERY], config.queries.path)
            summary.duplicate_ids_collapsed["corpus"] = stages.check_unique_ids(corpus, S.DOC_ID, [S.TITLE, S.TEXT], config.corpus.path)
            summary.candidates_read = summary.rows_read["candidates"]

        with _stage(summary, "join"):
            status = stages.candidate_status(candidates, queries, corpus, depth=config.depth).persist(StorageLevel.MEMORY_AND_DISK)
            persisted.append(status)
            for row in status.groupBy(stages.DROP_REASON).count().collect():
                reason, count = row[stages.DROP_REASON], int(row["count"])
                if reason is None:
                    summary.candidates_kept = count
                else:
                    summary.dropped[reason] = count
        guards.check_kept(summary, max_drop_share=config.max_drop_share, allow_empty=config.allow_empty)

        with _stage(summary, "score"):
            partitions = config.scoring_partitions or spark.sparkContext.defaultParallelism
            pairs = stages.pairs_to_score(status, partitions=partitions, char_cap=info.char_cap)
            counters = spark.sparkContext.accumulator({}, CounterParam())
            settings = ScoringSettings(
                spec=config.model,
                layout=config.layout,
                batch_size=config.batch_size,
                max_tokens=config.max_tokens,
                expected_fingerprint=info.fingerprint,
            )
            scored = score_pairs(pairs, settings, counters).persist(StorageLevel.MEMORY_AND_DISK)
            persisted.append(scored)
            with worker_errors():  # a worker's refusal (no CUDA there, other files) in one line
                counts = stages.score_counts(scored)
            examples = counts.pop("non_finite_examples")
            for name, value in counts.items():
                setattr(summary, name, value)
            _warn_pooled_in_query(summary, config.layout.pooling)
            stats = counters.value
            summary.model_loads = int(stats.get("model_loads", 0))
            summary.oom_splits = int(stats.get("oom_splits", 0))
            summary.real_tokens = int(stats.get("real_tokens", 0))
            summary.computed_tokens = int(stats.get("computed_tokens", 0))
        score_seconds = summary.stage_seconds["score"]
        summary.pairs_per_second = round(summary.pairs_scored / score_seconds, 2) if score_seconds else 0.0
        guards.check_scored(summary, examples=examples)

        with _stage(summary, "topk"):
            top = stages.top_k(scored, k=config.top_k, run_id=config.run_id, model=info.label).persist(StorageLevel.MEMORY_AND_DISK)
            persisted.append(top)
            row = top.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct(S.QUERY_ID).alias("queries")).collect()[0]
            summary.output_rows, summary.output_queries = int(row["rows"]), int(row["queries"])
            all_queries = candidates.select(S.QUERY_ID).where(stages.has_id(F.col(S.QUERY_ID))).distinct()
            summary.queries_in_candidates = all_queries.count()
            # Queries with no candidate row at all: nothing to rerank, so nothing is written
            # for them; they are counted, not listed (first-stage misses are normal).
            known = queries.select(S.QUERY_ID).where(stages.has_id(F.col(S.QUERY_ID))).distinct()
            summary.queries_without_candidates = known.join(all_queries, S.QUERY_ID, "left_anti").count()
            nothing = all_queries.join(scored.select(S.QUERY_ID).distinct(), S.QUERY_ID, "left_anti")
            summary.queries_with_nothing_to_rank_count = nothing.count()
            summary.queries_with_nothing_to_rank = sorted(
                r[S.QUERY_ID] for r in nothing.limit(NOTHING_TO_RANK_LISTED).collect()
            )

        guards.check_accounted(summary)

        if config.qrels is not None:
            with _stage(summary, "evaluate"):
                summary.metrics = _evaluate(spark, config, status, top, report_png=report_png)
        _write_last(config, summary, top, started)
    finally:
        reporter.stop()
        for df in persisted:
            df.unpersist()
    print(summary.render())
    if config.mlflow is not None:
        tracking.log_run(config.mlflow, summary=summary, params=tracking.run_params(config, summary),
                         summary_path=config.summary_path, report_png=report_png)
    return summary


def _warn_pooled_in_query(summary: RunSummary, pooling: str) -> None:
    if summary.queries_pooled_in_query:
        log.warning(
            "%d queries are pooled inside the query under pooling=%s (e.g. %s): their candidates "
            "all get one score, so reranking keeps the first-stage order; --pooling last-non-pad avoids it.",
            summary.queries_pooled_in_query,
            pooling,
            ", ".join(summary.queries_pooled_in_query_examples),
        )


def _write_last(config: JobConfig, summary: RunSummary, top: Any, started: float) -> None:
    """Commit the table as the last step that can fail.

    The TREC run is written, and the summary's file created, beside their targets before
    the commit; after it they are only renamed into place. A run that fails before its
    commit leaves the table, the TREC file and the summary as they were.
    """
    from ..io.staged import StagedFile
    from ..io.trec import write_trec_run
    from .write import write_output

    with ExitStack() as stack:
        summary_file = stack.enter_context(StagedFile(config.summary_path))
        trec_file = stack.enter_context(StagedFile(config.trec_out)) if config.trec_out else None
        if trec_file is not None:
            # A TREC tag is one word; a run id may hold spaces.
            tag = "dear-" + re.sub(r"\s", "_", config.run_id)
            write_trec_run(top.select(S.QUERY_ID, S.DOC_ID, S.RANK, S.SCORE).toArrow(), trec_file.tmp, tag=tag)
        with _stage(summary, "write"):
            summary.write = write_output(top, output=config.output, fmt=config.format, run_id=config.run_id)
        if trec_file is not None:
            trec_file.publish()
        summary.wall_seconds = round(time.perf_counter() - started, 3)
        summary_file.write_text(summary.to_json())
        summary_file.publish()


def _evaluate(spark: Any, config: JobConfig, status: Any, top: Any, *, report_png: str | None = None) -> dict[str, Any]:
    """First stage vs reranked, on the queries that have judgements (and their figure)."""
    from pyspark.sql import functions as F

    from ..evaluate import compare
    from . import read, stages

    qrels = read.read_input(spark, config.qrels, "qrels")
    judged = qrels.select(S.QUERY_ID).distinct()
    # The first-stage run as reranked: the candidates kept to depth, before text joins.
    first = (
        status.filter(F.col(stages.DROP_REASON).isNull() | F.col(stages.DROP_REASON).isin("query_id_not_in_queries", "empty_query_text", "doc_id_not_in_corpus", "empty_document"))
        .join(judged, S.QUERY_ID, "left_semi")
        .select(S.QUERY_ID, S.DOC_ID, (-F.col(S.FIRST_STAGE_RANK).cast("double")).alias(S.SCORE))
    )
    reranked = top.join(judged, S.QUERY_ID, "left_semi").select(S.QUERY_ID, S.DOC_ID, S.SCORE)
    first, reranked, qrels = first.toArrow(), reranked.toArrow(), qrels.toArrow()
    metrics = compare(first, reranked, qrels, k=config.top_k)
    if report_png:
        try:
            from ..report import write_report

            write_report(first, reranked, qrels, report_png)
        except Exception as exc:  # noqa: BLE001 - the figure is extra; the run goes on
            log.warning("could not write the report figure %s (%s: %s)", report_png, type(exc).__name__, exc)
    return metrics


# -- command line ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a packaged profile (local, gpu-cluster, databricks) or a YAML file; flags override it")
    parser.add_argument("--queries", help="queries: Parquet, Delta, table, JSONL, TSV, BEIR folder")
    parser.add_argument("--corpus", help="documents: Parquet, Delta, table, JSONL, TSV, BEIR folder")
    parser.add_argument("--candidates", help="first-stage candidates: TREC run, Parquet, Delta, table, JSONL")
    parser.add_argument("--qrels", help="optional judgements (TREC qrels, BEIR folder, Parquet) for metrics")
    parser.add_argument("--model", help="DeAR model (hub id or directory), or the base of --adapter")
    parser.add_argument("--adapter", help="PEFT LoRA adapter (hub id or directory)")
    parser.add_argument("--revision", help="revision pin for hub ids")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype (default float32)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N; default: the task's GPU, else CPU")
    parser.add_argument("--allow-pickle", action="store_true", default=None, help="accept .bin (pickle) weights")
    parser.add_argument("--output", help="output table (folder path)")
    parser.add_argument("--format", choices=["delta", "parquet"], help="output format (default delta)")
    parser.add_argument("--top-k", type=int, dest="top_k", help="rows kept per query (default 10)")
    parser.add_argument("--depth", type=int, help="first-stage candidates reranked per query (default 100)")
    parser.add_argument(
        "--run-id",
        dest="run_id",
        help="run partition; a rerun with the same id replaces it (default: today's UTC date); at most 200 "
        "characters, no %%, / or =, no control characters, no spaces at either end",
    )
    parser.add_argument("--summary", help="where to write the run summary JSON (default: <output>.<run_id>.summary.json)")
    parser.add_argument("--trec-out", dest="trec_out", help="also write the top-k as a TREC run file")
    parser.add_argument("--batch-size", type=int, dest="batch_size", help="pairs per micro-batch (default 128)")
    parser.add_argument("--max-tokens", type=int, dest="max_tokens", help="token budget per micro-batch")
    add_layout_arguments(parser)
    parser.add_argument("--master", help="Spark master, e.g. local[2]; default: the session's")
    parser.add_argument("--partitions", type=int, dest="scoring_partitions", help="scoring partitions (YAML: scoring_partitions)")
    parser.add_argument(
        "--max-drop-share",
        type=float,
        dest="max_drop_share",
        help="refuse to write when more than this share of the candidates within depth is dropped (default 0.5)",
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        default=None,
        dest="allow_empty",
        help="write even a run that scored nothing or dropped more than --max-drop-share",
    )
    parser.add_argument("--mlflow", action="store_true", default=None, help="log the run to MLflow (needs the mlflow extra)")
    parser.add_argument("--mlflow-experiment", dest="mlflow_experiment", help="MLflow experiment (implies --mlflow)")
    parser.add_argument("--mlflow-tracking-uri", dest="mlflow_tracking_uri", help="MLflow tracking URI (implies --mlflow)")


def config_from_args(args: argparse.Namespace) -> JobConfig:
    """Merge the YAML file (if any) with the flags given."""
    base = expand_shorthand(load_yaml(args.config)) if getattr(args, "config", None) else {}
    model = {
        "model": args.model,
        "adapter": args.adapter,
        "revision": args.revision,
        "dtype": args.dtype,
        "device": args.device,
        "allow_pickle": args.allow_pickle,
    }
    flags = {
        "queries": args.queries,
        "corpus": args.corpus,
        "candidates": args.candidates,
        "qrels": args.qrels,
        "output": args.output,
        "format": args.format,
        "top_k": args.top_k,
        "depth": args.depth,
        "run_id": args.run_id,
        "summary": args.summary,
        "trec_out": args.trec_out,
        "batch_size": args.batch_size,
        "max_tokens": args.max_tokens,
        "master": args.master,
        "scoring_partitions": args.scoring_partitions,
        "max_drop_share": args.max_drop_share,
        "allow_empty": args.allow_empty,
        "model": {k: v for k, v in model.items() if v is not None} or None,
        "layout": layout_values(args),
        "mlflow": _mlflow_flags(args, base.get("mlflow")),
    }
    # A path flag replaces the file's input entry's path but keeps its columns/format.
    for name in ("queries", "corpus", "candidates", "qrels"):
        if flags[name] is not None and name in base:
            flags[name] = {"path": flags[name]}
    values = merge(base, flags)
    model_values = values.get("model") or {}
    if isinstance(model_values, dict):  # anything else is refused by name below
        model_values.setdefault("device", None)
        if not model_values.get("model") and not model_values.get("adapter"):
            model_values = {}
        values["model"] = model_values or None
    return build_job_config(values, where=args.config or "flags")


def _mlflow_flags(args: argparse.Namespace, from_file: Any) -> Any:
    given = {"experiment": getattr(args, "mlflow_experiment", None), "tracking_uri": getattr(args, "mlflow_tracking_uri", None)}
    given = {k: v for k, v in given.items() if v}
    if given:
        return given
    # --mlflow alone turns tracking on, keeping the file's experiment and URI if it has them.
    return True if getattr(args, "mlflow", None) and not isinstance(from_file, dict) else None


def main(args: argparse.Namespace) -> int:
    run_job(config_from_args(args))
    return 0


def submit_main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``spark-submit jobs/rerank.py`` and Databricks wheel tasks."""
    import sys

    parser = argparse.ArgumentParser(prog="rerank", description="Rerank first-stage candidates with DeAR.")
    add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return main(args)
