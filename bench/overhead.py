"""``--mode overhead``: the fixed cost of one run, what a small night pays whatever its size.

On the tiny model, a small night (``--overhead-pairs``, default 1,000) is run ``--runs`` times
(default 8) in one Spark session after two warm-up runs, each to its own Delta table
without a cache, so every run scores all its pairs. Reported per run: wall seconds,
seconds per step (``stage_seconds``) and the Spark jobs it started; then the median and
the minimum. Every Spark action costs a query plan and its stages whatever the data's
size, so this is the floor under every night and most of the cost of every job test.

Example:
    python bench/run.py --mode overhead --overhead-pairs 1000 --runs 8
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import cores, finish_cpu_args, job_config, load_average, new_report, print_header
from bench.scaling import write_inputs

MODES = ("overhead",)
WARM_UP_RUNS = 2


def _timed_run(spark: Any, config: Any, group: str) -> dict[str, Any]:
    from dear_udf.spark.job import run_job

    spark.sparkContext.setJobGroup(group, group)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run_job(config, spark=spark)
    wall = time.perf_counter() - start
    jobs = spark.sparkContext.statusTracker().getJobIdsForGroup(group)
    return {"wall_seconds": round(wall, 3), "stage_seconds": summary.stage_seconds, "spark_jobs": len(jobs),
            "pairs_scored": summary.pairs_scored}


def run_nights(args: argparse.Namespace) -> list[dict[str, Any]]:
    from transformers import AutoTokenizer

    from dear_udf.spark.session import get_session
    from dear_udf.testing import build_tiny_dear

    with tempfile.TemporaryDirectory(prefix="dear-overhead-") as tmp:
        work = Path(tmp)
        model = build_tiny_dear(work / "model", pooling="index227", seed=0)
        paths = write_inputs(work / "inputs", pairs=args.overhead_pairs, docs_per_query=args.docs_per_query, seed=args.seed,
                             tokenizer=AutoTokenizer.from_pretrained(str(model)))
        n = cores(args.spark_master)
        spark = get_session(master=args.spark_master, conf={"spark.sql.shuffle.partitions": str(n)}, arrow_batch_size=10000)
        runs = []
        try:
            for i in range(WARM_UP_RUNS + args.runs):
                config = job_config(paths, model, work / f"out-{i}", master=args.spark_master, depth=args.docs_per_query,
                                    run_id="overhead", where="bench overhead")
                record = _timed_run(spark, config, f"overhead-{i}")
                print(f"  run {i + 1}{' (warm-up)' if i < WARM_UP_RUNS else ''}: {record['wall_seconds']:.2f}s, "
                      f"{record['spark_jobs']} Spark jobs", flush=True)
                if i >= WARM_UP_RUNS:
                    runs.append(record)
        finally:
            spark.stop()
    return runs


def analyse(runs: list[dict[str, Any]]) -> dict[str, Any]:
    steps = list(runs[0]["stage_seconds"])
    return {
        "wall_seconds_median": round(statistics.median(r["wall_seconds"] for r in runs), 3),
        "wall_seconds_min": round(min(r["wall_seconds"] for r in runs), 3),
        "spark_jobs_median": statistics.median(r["spark_jobs"] for r in runs),
        "stage_seconds_median": {s: round(statistics.median(r["stage_seconds"][s] for r in runs), 3) for s in steps},
    }


def print_overhead(report: dict[str, Any]) -> None:
    result = report["overhead"]
    a = result["analysis"]
    print(f"\n{result['pairs']} pairs, {len(result['runs'])} warm runs, master {report['spark_master']}")
    print_header(f"{'':<10} {'wall s':>8} {'jobs':>6}  steps (median s)")
    steps = ", ".join(f"{s}={v:.2f}" for s, v in a["stage_seconds_median"].items())
    print(f"{'median':<10} {a['wall_seconds_median']:>8.2f} {a['spark_jobs_median']:>6}  {steps}")
    print(f"{'min':<10} {a['wall_seconds_min']:>8.2f}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("overhead mode (bench/overhead.py)")
    group.add_argument("--overhead-pairs", type=int, default=1000, help="candidate pairs of the night (default: %(default)s)")
    group.add_argument("--runs", type=int, default=8, help="timed runs after two warm-ups (default: %(default)s)")


def finish_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    finish_cpu_args(args, parser, "overhead-cpu")


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    report = new_report(args, command, "cpu")
    report["spark_master"] = args.spark_master
    start = time.perf_counter()
    runs = run_nights(args)
    report["overhead"] = {"pairs": args.overhead_pairs, "runs": runs, "analysis": analyse(runs), "bench_seconds": round(time.perf_counter() - start, 1)}
    report["machine"]["load_average_end"] = load_average()
    print_overhead(report)
    return report
