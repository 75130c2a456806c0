"""``--mode nightly``: what the score cache saves on a night where few pairs changed (issue 10).

On the tiny model, ``--pairs`` candidate pairs (default 100k) are written as night 1; night
2 changes the text of every document whose id hashes into ``--changed`` of them (default
10%), so about that share of pairs miss the cache. In one Spark session:

1. ``no cache``: night 2 as a plain run (its scratch cache starts empty): everything is scored;
2. ``fill``: night 1 with ``--cache``: fills the cache (reported, not compared);
3. ``cached``: night 2 with the same ``--cache``: only the changed documents' pairs are scored.

Reported: wall and stage times, pairs scored, hits and misses, and the ratios no cache /
cached of the score stage (target >= 5x) and end to end (target >= 3x); then the two
night-2 outputs are compared row by row (same top-k, scores within 1e-6).

Example:
    python bench/run.py --mode nightly --pairs 100000 --changed 0.1
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import cores, finish_cpu_args, job_config, load_average, new_report, print_header
from bench.scaling import write_inputs

MODES = ("nightly",)
SCORE_TARGET = 5.0
END_TO_END_TARGET = 3.0


def _changed(doc_id: str, share: float) -> bool:
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def night2_inputs(night1: dict[str, str], directory: Path, share: float) -> tuple[dict[str, str], int]:
    """Night 1 with the texts of a ``share`` of documents changed; returns the paths and the
    number of candidate pairs whose document changed (the misses expected)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    corpus = pq.read_table(night1["corpus"])
    changed = [_changed(d, share) for d in corpus.column("doc_id").to_pylist()]
    texts = [t + " (updated)" if c else t for t, c in zip(corpus.column("text").to_pylist(), changed)]
    corpus = corpus.set_column(corpus.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
    paths = dict(night1, corpus=str(directory / "corpus.parquet"))
    pq.write_table(corpus, paths["corpus"])
    changed_ids = pa.array([d for d, c in zip(corpus.column("doc_id").to_pylist(), changed) if c], pa.string())
    candidates = pq.read_table(night1["candidates"], columns=["doc_id"])
    return paths, int(pc.sum(pc.is_in(candidates.column("doc_id"), value_set=changed_ids)).as_py() or 0)


def _job(args: argparse.Namespace, paths: dict[str, str], model: Path, output: Path, cache: Path | None, run_id: str) -> Any:
    return job_config(paths, model, output, master=args.spark_master, depth=args.docs_per_query, run_id=run_id,
                      where="bench nightly", chunk_pairs=args.chunk_pairs, cache=str(cache) if cache is not None else None)


def _rows(path: Path, run_id: str) -> dict[tuple[str, str], tuple[int, float]]:
    from deltalake import DeltaTable

    rows = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
    return {(r["query_id"], r["doc_id"]): (r["rank"], r["score"]) for r in rows if r["run_id"] == run_id}


def run_nights(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from dear_udf.spark.job import run_job
    from dear_udf.spark.session import get_session
    from dear_udf.testing import build_tiny_dear

    with tempfile.TemporaryDirectory(prefix="dear-nightly-") as tmp:
        work = Path(tmp)
        model = build_tiny_dear(work / "model", pooling="index227", seed=0)
        tokenizer = AutoTokenizer.from_pretrained(str(model))
        night1 = write_inputs(work / "night1", pairs=args.pairs, docs_per_query=args.docs_per_query, seed=args.seed, tokenizer=tokenizer)
        night2, expected_misses = night2_inputs(night1, work / "night2", args.changed)
        n = cores(args.spark_master)
        spark = get_session(master=args.spark_master, conf={"spark.sql.shuffle.partitions": str(n)}, arrow_batch_size=10000)
        runs: dict[str, Any] = {}
        try:
            # A short warm-up so both timed runs find started Python workers with the model loaded.
            plan = [
                ("warm-up", night1, None, "warm"),
                ("no cache", night2, None, "night-2"),
                ("fill", night1, work / "cache", "night-1"),
                ("cached", night2, work / "cache", "night-2"),
            ]
            for label, paths, cache, run_id in plan:
                if label == "warm-up":
                    paths = dict(paths, candidates=_head(paths["candidates"], work / "warm.parquet", 1000))
                print(f"  {label}: running ...", flush=True)
                with contextlib.redirect_stdout(io.StringIO()):
                    summary = run_job(_job(args, paths, model, work / f"out-{label.replace(' ', '-')}", cache, run_id), spark=spark)
                runs[label] = _run_record(summary)
                print(f"  {label}: {_describe(runs[label])}", flush=True)
            same = _compare(_rows(work / "out-no-cache", "night-2"), _rows(work / "out-cached", "night-2"))
        finally:
            spark.stop()
    del runs["warm-up"]
    return {"pairs": args.pairs, "changed_share": args.changed, "expected_misses": expected_misses, "runs": runs, "outputs": same}


def _head(path: str, target: Path, rows: int) -> str:
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(path).slice(0, rows), target)
    return str(target)


def _run_record(summary: Any) -> dict[str, Any]:
    keys = ("pairs_scored", "cache_hits", "cache_misses", "cache_hit_rate", "model_loads", "wall_seconds", "stage_seconds", "chunks", "output_rows")
    return {k: getattr(summary, k) for k in keys}


def _describe(r: dict[str, Any]) -> str:
    return (
        f"scored {r['pairs_scored']}, hits {r['cache_hits']}, wall {r['wall_seconds']:.1f} s, "
        f"score stage {r['stage_seconds']['score']:.1f} s, model loads {r['model_loads']}"
    )


def _compare(want: dict, got: dict) -> dict[str, Any]:
    same_rows = want.keys() == got.keys() and all(want[k][0] == got[k][0] for k in want)
    diffs = [abs(want[k][1] - got[k][1]) for k in want if k in got]
    return {"rows": len(want), "same_top_k_and_ranks": same_rows, "max_abs_score_diff": max(diffs) if diffs else None}


def analyse(nights: dict[str, Any]) -> dict[str, Any]:
    plain, cached = nights["runs"]["no cache"], nights["runs"]["cached"]
    score = plain["stage_seconds"]["score"] / cached["stage_seconds"]["score"]
    wall = plain["wall_seconds"] / cached["wall_seconds"]
    return {
        "score_stage_speedup": round(score, 2),
        "end_to_end_speedup": round(wall, 2),
        "score_target": SCORE_TARGET,
        "end_to_end_target": END_TO_END_TARGET,
        "score_target_met": score >= SCORE_TARGET,
        "end_to_end_target_met": wall >= END_TO_END_TARGET,
        "misses_as_expected": cached["cache_misses"] == nights["expected_misses"] == cached["pairs_scored"],
    }


def print_nightly(report: dict[str, Any]) -> None:
    nights, a = report["nightly"], report["nightly"]["analysis"]
    print_header(f"nightly: {nights['pairs']} pairs, {nights['changed_share']:.0%} of documents changed")
    print("| run | pairs scored | cache hits | wall s | read | join | score | topk | write |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in nights["runs"].items():
        s = r["stage_seconds"]
        print(
            f"| {label} | {r['pairs_scored']} | {r['cache_hits']} | {r['wall_seconds']:.1f} | {s['read']:.1f} | "
            f"{s['join']:.1f} | {s['score']:.1f} | {s['topk']:.1f} | {s['write']:.1f} |"
        )
    print(
        f"\nscore stage {a['score_stage_speedup']}x (target >= {a['score_target']}x: {'met' if a['score_target_met'] else 'NOT met'}); "
        f"end to end {a['end_to_end_speedup']}x (target >= {a['end_to_end_target']}x: {'met' if a['end_to_end_target_met'] else 'NOT met'}); "
        f"misses {nights['runs']['cached']['cache_misses']} (expected {nights['expected_misses']}); outputs {nights['outputs']}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("nightly mode (bench/nightly.py)")
    group.add_argument("--pairs", type=int, default=100_000, help="candidate pairs per night (default: %(default)s)")
    group.add_argument("--changed", type=float, default=0.1, help="share of documents whose text changes on night 2 (default: %(default)s)")
    group.add_argument("--chunk-pairs", type=int, default=500_000, help="the job's --chunk-pairs (default: %(default)s)")


def finish_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    finish_cpu_args(args, parser, "nightly-cpu")


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    report = new_report(args, command, "cpu")
    start = time.perf_counter()
    nights = run_nights(args)
    nights["analysis"] = analyse(nights)
    nights["bench_seconds"] = round(time.perf_counter() - start, 1)
    report["nightly"] = nights
    report["machine"]["load_average_end"] = load_average()
    print_nightly(report)
    return report
