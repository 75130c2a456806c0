"""``dear-rerank demo``: the whole job on this machine, with nothing downloaded.

It builds a tiny DeAR-shaped model (``standin``) and trains it for a few seconds
(``train``) on a synthetic collection (``collection``); the model is a stand-in, not DeAR.
It writes that collection in the formats the job reads (MS MARCO TSV queries, BEIR JSON
Lines corpus, a noisy TREC run, TREC qrels), runs the reranking job on local Spark, writes
a Delta table through ``deltalake``, and prints the run summary, the metrics before and
after reranking, and a few top results.

Example:
    dear-rerank demo --workdir /tmp/dear-demo
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "dear-rerank-demo"),
        help="where the model, the inputs and the output table go (default: %(default)s)",
    )
    parser.add_argument("--master", default="local[2]", help="Spark master (default: %(default)s)")
    parser.add_argument("--train-seconds", type=float, default=30.0, help="CPU seconds of training for the stand-in model")
    parser.add_argument("--train-steps", type=int, help="train exactly this many steps instead (the same model on any machine)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--show", type=int, default=3, help="queries whose top results are printed")


def run_demo(
    workdir: str | Path,
    *,
    master: str = "local[2]",
    train_seconds: float = 30.0,
    train_steps: int | None = None,
    top_k: int = 10,
    spark=None,
):
    """Build the stand-in model and the collection, run the job, return (summary, collection)."""
    from ..config import build_job_config
    from ..spark.job import run_job
    from .collection import make_collection, write_collection
    from .train import build_demo_model

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    collection = make_collection(with_bad_rows=True)
    paths = write_collection(collection, workdir / "inputs", formats="mixed")
    model_dir = workdir / "model"
    if not (model_dir / "config.json").exists():
        budget = f"{train_steps} steps" if train_steps else f"{train_seconds:.0f}s"
        print(f"training the stand-in model for {budget} (a tiny random Llama, not DeAR) ...")
        build_demo_model(model_dir, collection, seconds=train_seconds, steps=train_steps)
    config = build_job_config(
        {
            "queries": {"path": str(paths["queries"]), "format": "tsv"},
            "corpus": {"path": str(paths["corpus"]), "format": "jsonl"},
            "candidates": {"path": str(paths["candidates"]), "format": "trec"},
            "qrels": {"path": str(paths["qrels"]), "format": "qrels"},
            "output": str(workdir / "reranked"),
            "format": "delta",
            "run_id": "demo",
            "top_k": top_k,
            "depth": 100,
            "model": {"model": str(model_dir), "device": "cpu"},
            "master": master,
            "trec_out": str(workdir / "reranked.trec"),
            "spark_conf": {"spark.sql.shuffle.partitions": "4"},
        },
        where="demo",
    )
    return run_job(config, spark=spark), collection


def main(args: argparse.Namespace) -> int:
    summary, collection = run_demo(
        args.workdir, master=args.master, train_seconds=args.train_seconds, train_steps=args.train_steps, top_k=args.top_k
    )
    _show_metrics(summary.metrics)
    _show_top(collection, Path(summary.output), args.show)
    from ..config import default_summary_path

    where = default_summary_path(summary.output, summary.run_id)
    print(f"\ntable: {summary.output} (Delta, partition run_id={summary.run_id}); summary: {where}")
    return 0


def _show_metrics(metrics: dict | None) -> None:
    if not metrics:
        return
    print("\nmeasure      first stage   reranked")
    for name in metrics.get("measures", []):
        before = metrics["first_stage"].get(name)
        after = metrics["reranked"].get(name)
        print(f"{name:<12} {before:>11.4f} {after:>10.4f}")


def _show_top(collection, output: Path, show: int) -> None:
    from ..io.delta_writer import read_table

    table = read_table(str(output)).to_pylist()
    queries = {r["query_id"]: r["query"] for r in collection.queries.to_pylist()}
    docs = {r["doc_id"]: r["text"] for r in collection.corpus.to_pylist()}
    relevant = {(r["query_id"], r["doc_id"]) for r in collection.qrels.to_pylist() if r["relevance"] > 0}
    for qid in sorted({r["query_id"] for r in table})[:show]:
        print(f"\n{qid}: {queries.get(qid)!r}")
        for row in sorted((r for r in table if r["query_id"] == qid), key=lambda r: r["rank"])[:5]:
            mark = "*" if (qid, row["doc_id"]) in relevant else " "
            text = (docs.get(row["doc_id"]) or "")[:60]
            print(f"  {row['rank']:>2} {mark} {row['doc_id']:<6} {row['score']:8.3f}  (first stage {row['first_stage_rank']:>3})  {text}")
