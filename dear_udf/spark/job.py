"""The reranking job: read -> join -> score -> top-k -> write -> summary.

The steps are ``steps.py``'s functions and ``score_step.score``; each returns its part of
the summary, and the summary is made from the parts once the table is committed.

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
from typing import Any

from .. import tracking
from ..config import JobConfig, add_job_arguments, config_from_args
from ..summary import RunSummary

log = logging.getLogger(__name__)


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
    from . import score_step, steps
    from .progress import StageProgress

    run = steps.start(config, spark)
    reporter = StageProgress(run.spark).start()
    try:
        inputs, read = steps.read_inputs(run)
        status, joined = steps.join(run, inputs, read)
        scored, score, adapters = score_step.score(run, status, joined)
        top, output = steps.top_k(run, inputs, scored, read=read, join=joined, score=score)
        metrics = steps.evaluate(run, status, top) if config.qrels is not None else None
        summary = steps.write_last(run, top, parts={
            "read_counts": read, "join_counts": joined, "score_counts": score, "output_counts": output, "metrics": metrics,
            "adapter_counts": adapters,
        })
    finally:
        reporter.stop()
        run.release()
    print(summary.render())
    if config.mlflow is not None:
        tracking.log_run(config.mlflow, summary=summary, params=tracking.run_params(run.config, summary),
                         summary_path=config.summary_path, report_png=run.report_png)
    return summary


# -- the ``dear-rerank run`` command (``cli.py``; ``jobs/rerank.py`` goes through it too) --


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)


def main(args: argparse.Namespace) -> int:
    run_job(config_from_args(args))
    return 0
