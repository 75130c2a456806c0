"""Scenario ``quick``/``full``: the scoring core against DeAR's official loop and the model card's fast_rerank.

Same model, same pairs, same machine, one process. Prints a table and writes JSON to
``bench/results/<name>.json``.

- ``--mode quick`` (CPU, minutes): a small Llama classifier built offline by
  ``dear_udf.testing.build_tiny_dear`` (hidden 256, 4 layers, intermediate 688), large
  enough that the forward pass, not Python, dominates; saved and loaded like a real model.
  Checks issue 2's CPU target: scorer >= 2.5x the padded-to-228 loop's pairs/s with at
  most 1.1 computed tokens per real token.
- ``--mode full`` (GPU): Llama-3.2-3B- and Llama-3.1-8B-shaped classifiers with random
  weights, built directly in bf16 on the GPU (no download), plus model FLOP utilisation.
  Needs torch + transformers only: no pyspark.

- ``--spark`` (quick mode): also the whole job on local Spark (``run_job``) on the same
  pairs, Parquet in and out; skipped where pyspark is missing.

- Few candidates (both modes, ``--few-candidates``): the per-query cost of queries with
  1, 2, 3, 5 candidates, with a query's prefix computed once (forced), computed whole, and
  as the product decides (``PREFIX_MIN_PAIRS``), for MS MARCO-long and one-word queries.

Contestants (``dear_udf.testing.baselines``):
- ``scorer``: ``dear_udf.scorer.Scorer``, batch 128, real tokens only, sorted batches, each
  query's shared prefix computed once;
- ``scorer_whole``: the same without prefix reuse (every pair computed whole);
- ``official``: DeAR's ``inference.py``: padded to 228, batch 64, fp16 autocast on GPU;
- ``fast_rerank``: the model card's loop: ``padding=True``, unsorted batches of 128.

Run it through ``bench/run.py`` (examples there).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import SHAPES, PeakRSS, load_average, new_report, print_header
from bench.data import QUERY_WORDS, Pairs, generate, job_tables, length_summary

H100_BF16_DENSE_FLOPS = 989e12
CPU_TARGET_RATIO = 2.5
CPU_TARGET_COMPUTED_PER_REAL = 1.1
MODES = ("quick", "full")


@dataclass
class BenchModel:
    """A model under test and how it came to be."""

    name: str
    loaded: Any  # dear_udf.model.LoadedModel
    load_seconds: float
    load_kind: str  # "load_model" (from disk) or "random-init" (built on the device)
    params_non_embedding: int
    path: Path | None = None  # saved model directory (quick mode), for the Spark section


def non_embedding_params(model: Any) -> int:
    # Embedding lookups cost no FLOPs; the classifier head (hidden x 1) is counted.
    embed = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not embed)


def quick_model(workdir: Path, device: str) -> BenchModel:
    """Build the CPU benchmark model on disk, then load it the way the job does."""
    from dear_udf.model import ModelSpec, load_model
    from dear_udf.testing import build_tiny_dear

    shape = SHAPES["quick"]
    path = build_tiny_dear(workdir / "quick-model", pooling="index227", seed=0, **shape)
    loaded = load_model(ModelSpec(model=str(path), dtype="float32", device=device, local_files_only=True))
    return BenchModel(
        name="quick-llama-h256-l4",
        loaded=loaded,
        load_seconds=loaded.load_seconds,
        load_kind="load_model",
        params_non_embedding=non_embedding_params(loaded.model),
        path=path,
    )


def random_model(shape_name: str, workdir: Path, *, device: str, dtype: str) -> BenchModel:
    """A Llama sequence classifier of a real model's shape with random weights.

    Built directly on ``device`` in ``dtype`` (nothing saved or downloaded). Pooling is
    DeAR's: ``config.pad_token_id = 0`` with EOS padding, so every pair pools index 227.
    """
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from dear_udf.model import loaded_from_objects, torch_dtype
    from dear_udf.testing import build_tokenizer

    shape = SHAPES[shape_name]
    tokenizer = build_tokenizer(workdir / f"tokenizer-{shape_name}")
    tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(
        vocab_size=shape["vocab_size"],
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=8192,
        rope_theta=500000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=0,
        num_labels=1,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    start = time.perf_counter()
    default_dtype = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        # Default dtype + device context: weights are created in place on the GPU in bf16,
        # never materialised in fp32 on the host (an 8B model would need 32 GB there).
        torch.set_default_dtype(torch_dtype(dtype))
        with torch.device(device):
            model = LlamaForSequenceClassification(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.eval().requires_grad_(False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    loaded = loaded_from_objects(model, tokenizer, name=f"random-{shape_name}", dtype=dtype, device=device, load_seconds=seconds)
    return BenchModel(f"random-llama-{shape_name}", loaded, seconds, "random-init", non_embedding_params(model))


# -- contestants ---------------------------------------------------------------------------

Contestant = Callable[[Any, Pairs], "tuple[Any, int]"]


def run_scorer(loaded: Any, pairs: Pairs, batch_size: int = 128, max_tokens: int | None = None, **options: Any) -> tuple[Any, int]:
    """The product's scorer with its defaults: batch 128, the device's token budget, a
    query's prefix computed once; ``options`` go to ``Scorer`` (``prefix_min_pairs``)."""
    from dear_udf.scorer import Scorer

    scorer = Scorer(loaded, batch_size=batch_size, max_tokens=max_tokens, **options)
    scores = scorer.score(pairs.queries, pairs.titles, pairs.texts)
    return scores, scorer.stats.computed_tokens


def run_official(loaded: Any, pairs: Pairs) -> tuple[Any, int]:
    from dear_udf.testing.baselines import official_loop

    return official_loop(loaded, pairs.queries, pairs.titles, pairs.texts, batch_size=64)


def run_fast_rerank(loaded: Any, pairs: Pairs) -> tuple[Any, int]:
    from dear_udf.testing.baselines import fast_rerank_loop

    return fast_rerank_loop(loaded, pairs.queries, pairs.titles, pairs.texts, batch_size=128)


CONTESTANTS: dict[str, Contestant] = {
    "scorer": run_scorer,
    # The scorer without prefix reuse: every pair computed whole, as before issue 24.
    "scorer_whole": functools.partial(run_scorer, prefix_min_pairs=None),
    "official": run_official,
    "fast_rerank": run_fast_rerank,
    # Not in the default set: the scorer with smaller micro-batches, to measure how much
    # of the padding left at batch 128 is the batch planning's (see RESULTS.md).
    "scorer_flat128": functools.partial(run_scorer, batch_size=128, max_tokens=128 * 228),  # 128 pairs, never capped
    "scorer_b64": functools.partial(run_scorer, batch_size=64),
    "scorer_b32": functools.partial(run_scorer, batch_size=32),
    "scorer_t4096": functools.partial(run_scorer, batch_size=128, max_tokens=4096),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def measure(
    bench_model: BenchModel,
    pairs: Pairs,
    real_tokens: int,
    *,
    contestants: list[str],
    repeats: int,
    device: str,
    peak_flops: float | None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Time each contestant ``repeats`` times, interleaved so drifting machine load hits all.

    Returns per-contestant results and the scores of each contestant's last run.
    """
    import torch

    loaded = bench_model.loaded
    warm = pairs.subset(list(range(min(len(pairs), 64))))
    for name in contestants:  # first-call costs (kernels, allocator, tokenizer caches)
        CONTESTANTS[name](loaded, warm)
    _sync(device)

    times: dict[str, list[float]] = {n: [] for n in contestants}
    cpu_times: dict[str, list[float]] = {n: [] for n in contestants}
    rss: dict[str, int] = {n: 0 for n in contestants}
    gpu: dict[str, int] = {n: 0 for n in contestants}
    computed: dict[str, int] = {}
    scores: dict[str, Any] = {}
    for _ in range(repeats):
        for name in contestants:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            with PeakRSS() as peak:
                _sync(device)
                start, cpu_start = time.perf_counter(), time.process_time()
                scores[name], computed[name] = CONTESTANTS[name](loaded, pairs)
                _sync(device)
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
            rss[name] = max(rss[name], peak.peak)
            if device.startswith("cuda"):
                gpu[name] = max(gpu[name], torch.cuda.max_memory_allocated())

    results: dict[str, dict[str, Any]] = {}
    for name in contestants:
        median = statistics.median(times[name])
        best = min(times[name])
        row: dict[str, Any] = {
            "seconds": times[name],
            "seconds_median": median,
            # CPU seconds of this process (all threads): on a shared machine, other
            # people's jobs inflate wall time; with --threads 1 this tracks the work done.
            "cpu_seconds": cpu_times[name],
            "pairs_per_cpu_s": len(pairs) / statistics.median(cpu_times[name]),
            "pairs_per_s": len(pairs) / median,
            "pairs_per_s_best": len(pairs) / best,
            "real_tokens_per_s": real_tokens / median,
            "computed_tokens": computed[name],
            "computed_per_real_token": computed[name] / real_tokens,
            "peak_rss_mib": rss[name] / 2**20,
            "peak_gpu_mib": gpu[name] / 2**20 if device.startswith("cuda") else None,
        }
        if peak_flops:
            # Useful work only: 2 FLOPs per parameter per real token (attention and padding
            # excluded), so padding shows up as lost utilisation.
            row["mfu"] = 2 * bench_model.params_non_embedding * real_tokens / median / peak_flops
        results[name] = row
    return results, scores


def fidelity(loaded: Any, pairs: Pairs, scores: dict[str, Any], reference_pairs: int) -> dict[str, Any]:
    """Max |score difference| between contestants and against the padded-alone reference.

    On CPU every contestant runs in fp32, so scorer vs official/reference checks the
    layout (expected ~1e-5). On GPU the scorer runs the model's bf16 and the official loop
    fp16 autocast, so their difference also holds precision (FIELD-NOTES 2: ~0.25-0.4 on a
    tiny bf16 model); the reference there is the bf16 model padded alone.
    """
    import numpy as np

    from dear_udf.testing.reference import DearReference

    out: dict[str, Any] = {}
    if "scorer" in scores and "official" in scores:
        out["max_abs_scorer_vs_official"] = float(np.max(np.abs(scores["scorer"] - scores["official"])))
    if reference_pairs > 0:
        # Spread over all queries: every k-th pair, not the first query's candidates only.
        step = max(1, len(pairs) // reference_pairs)
        rows = list(range(0, len(pairs), step))[:reference_pairs]
        sub = pairs.subset(rows)
        reference = DearReference(loaded.model, loaded.tokenizer, special_tokens="split")
        ref = reference.score(sub.queries, sub.titles, sub.texts)
        out["reference_pairs"] = len(rows)
        # A max difference means little if the model's scores barely vary (random weights).
        out["reference_score_std"] = float(np.std(ref))
        for name, values in scores.items():
            out[f"max_abs_{name}_vs_reference"] = float(np.max(np.abs(values[rows] - ref)))
    return out


# -- Spark end to end ----------------------------------------------------------------------


def write_job_inputs(pairs: Pairs, directory: Path) -> dict[str, str]:
    """The pairs as the job's three Parquet inputs: queries, corpus, candidates."""
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, table in job_tables(pairs).items():
        paths[name] = str(directory / f"{name}.parquet")
        pq.write_table(table, paths[name])
    return paths


def bench_spark(
    args: argparse.Namespace,
    pairs: Pairs,
    workdir: Path,
    *,
    model_path: Path | None,
    core_scores: Any | None,
) -> dict[str, Any] | None:
    """The whole job on local Spark (read -> join -> score -> top-k -> write) on the same pairs.

    Uses ``dear_udf.spark.job.run_job`` with the quick model saved on disk, Parquet in and
    out, ``local[<cpus>]`` (each task scores with one torch thread per task CPU). Reports
    the session start, the job's wall time and stage times, pairs/s end to end and in the
    score stage, and the largest |score| difference of the written top-k against the
    in-process scorer. Returns None when skipped: not asked (``--spark``), no pyspark
    (the GPU machine), no ``run_job``, or no saved model (full mode's random weights).
    """
    if not args.spark or model_path is None:
        return None
    try:
        import pyspark  # noqa: F401

        from dear_udf.spark.job import run_job
    except ImportError:
        return None
    import numpy as np
    import pyarrow.dataset as ds

    from dear_udf.config import build_job_config
    from dear_udf.spark.session import get_session

    paths = write_job_inputs(pairs, workdir / "job-inputs")
    output = workdir / "job-output"
    master = args.spark_master
    start = time.perf_counter()
    spark = get_session(master=master, conf={"spark.sql.shuffle.partitions": str(os.cpu_count() or 2)})
    session_seconds = time.perf_counter() - start
    config = build_job_config(
        {
            "queries": {"path": paths["queries"], "format": "parquet"},
            "corpus": {"path": paths["corpus"], "format": "parquet"},
            "candidates": {"path": paths["candidates"], "format": "parquet"},
            "output": str(output),
            "format": "parquet",
            "run_id": "bench",
            "top_k": 10,
            "depth": args.docs_per_query,
            "batch_size": 128,
            "model": {"model": str(model_path), "device": "cpu"},
            "master": master,
        },
        where="bench",
    )
    try:
        runs = []
        for _ in range(args.spark_runs):
            summary = run_job(config, spark=spark)
            runs.append(summary.as_dict())
    finally:
        spark.stop()
    last = runs[-1]
    out: dict[str, Any] = {
        "master": master,
        "session_start_seconds": session_seconds,
        "runs": [
            {
                "wall_seconds": r["wall_seconds"],
                "stage_seconds": r["stage_seconds"],
                "score_stage_pairs_per_s": r["pairs_per_second"],
                "end_to_end_pairs_per_s": r["pairs_scored"] / r["wall_seconds"] if r["wall_seconds"] else None,
                "model_loads": r["model_loads"],
            }
            for r in runs
        ],
        "pairs_scored": last["pairs_scored"],
        "output_rows": last["output_rows"],
        "computed_per_real_token": last["computed_tokens"] / last["real_tokens"] if last["real_tokens"] else None,
    }
    if core_scores is not None:
        table = ds.dataset(str(output), format="parquet", partitioning="hive").to_table().to_pylist()
        index = {(q, d): i for i, (q, d) in enumerate(zip(pairs.query_ids, pairs.doc_ids))}
        diffs = [abs(float(r["score"]) - float(core_scores[index[(r["query_id"], r["doc_id"])]])) for r in table]
        out["max_abs_topk_vs_scorer"] = float(np.max(diffs)) if diffs else None
    return out


# -- queries with few candidates: where computing the prefix once cannot pay ------------------

# Query shapes of the few-candidates section: MS MARCO's, and one word (the shortest prefix).
FEW_QUERY_SHAPES = {"msmarco": QUERY_WORDS, "one-word": (1, 1)}


def few_candidates(bench_model: BenchModel, args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """Per-query cost of queries with few candidates, with and without prefix reuse.

    For each query shape and each count ``k`` of ``--few-candidates``, about
    ``--few-pairs`` pairs (``--few-pairs // k`` queries of ``k`` candidates) are scored
    in one call three ways, interleaved, ``--repeats`` times: ``whole`` (every pair
    computed whole, ``prefix_min_pairs=None``), ``reuse`` (every query's prefix computed
    once, even for one pair: ``prefix_min_pairs=1``) and ``default`` (the product's
    ``PREFIX_MIN_PAIRS``). Reports the median CPU (on CPU) or wall (on CUDA) milliseconds
    per query, positions computed per real id, and the largest |reuse - whole| score.
    Returns None when ``--few-candidates`` is empty.
    """
    if not args.few_candidates:
        return None
    import numpy as np
    import torch

    from dear_udf.scorer import PREFIX_MIN_PAIRS, Scorer

    loaded = bench_model.loaded
    settings = {"whole": None, "reuse": 1, "default": PREFIX_MIN_PAIRS}
    on_cuda = args.device.startswith("cuda")
    rows: list[dict[str, Any]] = []
    for shape, words in FEW_QUERY_SHAPES.items():
        for k in (int(x) for x in args.few_candidates.split(",")):
            pairs = generate(
                n_queries=max(1, args.few_pairs // k), docs_per_query=k, seed=args.seed + 1, tokenizer=loaded.tokenizer, query_words=words
            )
            n_queries = len(set(pairs.query_ids))
            seconds: dict[str, list[float]] = {name: [] for name in settings}
            stats: dict[str, Any] = {}
            scores: dict[str, Any] = {}
            for name, min_pairs in settings.items():  # warm-up
                Scorer(loaded, prefix_min_pairs=min_pairs).score(pairs.queries[:8], pairs.titles[:8], pairs.texts[:8])
            for _ in range(args.repeats):
                for name, min_pairs in settings.items():
                    scorer = Scorer(loaded, prefix_min_pairs=min_pairs)
                    _sync(args.device)
                    start, cpu_start = time.perf_counter(), time.process_time()
                    scores[name] = scorer.score(pairs.queries, pairs.titles, pairs.texts)
                    _sync(args.device)
                    seconds[name].append((time.perf_counter() - start) if on_cuda else (time.process_time() - cpu_start))
                    stats[name] = scorer.stats
            encoded = Scorer(loaded).encoder.encode(pairs.queries, pairs.titles, pairs.texts)
            row: dict[str, Any] = {
                "query_shape": shape,
                "query_words": list(words),
                "candidates": k,
                "queries": n_queries,
                "pairs": len(pairs),
                "query_ids_mean": sum(s + 1 for s in encoded.doc_start) / len(pairs),  # [bos] q [bos]
                "ids_mean": sum(len(x) for x in encoded.ids) / len(pairs),
                "clock": "wall" if on_cuda else "cpu",
                "max_abs_reuse_vs_whole": float(np.max(np.abs(scores["reuse"] - scores["whole"]))),
            }
            for name in settings:
                median = statistics.median(seconds[name])
                row[name] = {
                    "seconds": seconds[name],
                    "ms_per_query": 1000 * median / n_queries,
                    "pairs_per_s": len(pairs) / median,
                    "computed_per_real_token": stats[name].computed_tokens / stats[name].real_tokens,
                    "shared_prefixes": stats[name].shared_prefixes,
                }
            row["reuse_over_whole"] = row["reuse"]["ms_per_query"] / row["whole"]["ms_per_query"]
            rows.append(row)
            del pairs, scores
            if on_cuda:
                torch.cuda.empty_cache()
    return rows


def print_few_candidates(rows: list[dict[str, Any]]) -> None:
    clock = "wall" if rows[0]["clock"] == "wall" else "CPU"
    print(f"\n  queries with few candidates ({clock} ms per query, median; reuse = prefix computed once, forced):")
    header = (
        f"  {'query':<9} {'cands':>5} {'queries':>7} {'q ids':>6} {'ids':>6} {'whole':>8} {'reuse':>8} {'default':>8} "
        f"{'reuse/whole':>11} {'comp/real whole':>15} {'reuse':>6} {'max |diff|':>10}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for r in rows:
        print(
            f"  {r['query_shape']:<9} {r['candidates']:>5} {r['queries']:>7} {r['query_ids_mean']:>6.1f} {r['ids_mean']:>6.1f} "
            f"{r['whole']['ms_per_query']:>8.2f} {r['reuse']['ms_per_query']:>8.2f} {r['default']['ms_per_query']:>8.2f} "
            f"{r['reuse_over_whole']:>11.3f} {r['whole']['computed_per_real_token']:>15.3f} "
            f"{r['reuse']['computed_per_real_token']:>6.3f} {r['max_abs_reuse_vs_whole']:>10.2g}"
        )


# -- report --------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(report: dict[str, Any]) -> None:
    """Print one table per model, then ratios, fidelity and the target check."""
    data = report["data"]
    print(
        f"\n{report['name']}: {data['pairs']} pairs ({data['queries']} queries x {data['docs_per_query']}), "
        f"{data['real_tokens']} real tokens (mean {data['lengths']['mean']:.1f} ids/pair), "
        f"repeats {report['repeats']} (median shown), device {report['device']}"
    )
    for model in report["models"]:
        print(
            f"\n[{model['model']}] {model['params_non_embedding'] / 1e6:.1f}M non-embedding params, "
            f"{model['load_kind']} {model['load_seconds']:.2f} s"
        )
        header = (
            f"{'contestant':<12} {'pairs/s':>9} {'best':>9} {'pairs/CPUs':>10} {'real tok/s':>11} "
            f"{'comp/real':>9} {'RSS MiB':>8} {'GPU MiB':>8} {'MFU':>6}"
        )
        print_header(header)
        for name, row in model["contestants"].items():
            print(
                f"{name:<12} {row['pairs_per_s']:>9.1f} {row['pairs_per_s_best']:>9.1f} {row['pairs_per_cpu_s']:>10.1f} "
                f"{row['real_tokens_per_s']:>11.0f} {row['computed_per_real_token']:>9.3f} "
                f"{row['peak_rss_mib']:>8.0f} {_fmt(row['peak_gpu_mib'], '8.0f'):>8} "
                f"{_fmt(row.get('mfu'), '6.1%'):>6}"
            )
        for key, value in model["ratios"].items():
            print(f"  {key}: {value:.2f}x")
        for key, value in model["fidelity"].items():
            print(f"  {key}: {value:.3g}" if isinstance(value, float) else f"  {key}: {value}")
        if model.get("target"):
            t = model["target"]
            print(
                f"  CPU target (scorer >= {CPU_TARGET_RATIO}x official, <= {CPU_TARGET_COMPUTED_PER_REAL} "
                f"computed/real): ratio {t['ratio']:.2f}, computed/real {t['computed_per_real']:.3f} -> "
                f"{'MET' if t['met'] else 'NOT MET'}"
            )
        if model.get("few_candidates"):
            print_few_candidates(model["few_candidates"])
    spark = report.get("spark")
    if spark is None:
        print("\nspark end to end: not run (needs --spark, quick mode, pyspark and dear_udf.spark.job.run_job)")
        return
    print(f"\nspark end to end ({spark['master']}, session start {spark['session_start_seconds']:.1f} s):")
    for i, run in enumerate(spark["runs"], start=1):
        stages = ", ".join(f"{k} {v:.1f}" for k, v in run["stage_seconds"].items())
        print(
            f"  run {i}: wall {run['wall_seconds']:.1f} s ({stages}); {run['end_to_end_pairs_per_s']:.1f} pairs/s "
            f"end to end, {run['score_stage_pairs_per_s']:.1f} in the score stage; model loads {run['model_loads']}"
        )
    print(
        f"  pairs {spark['pairs_scored']}, output rows {spark['output_rows']}, computed/real "
        f"{_fmt(spark['computed_per_real_token'], '.3f')}, max |top-k score - scorer| {_fmt(spark.get('max_abs_topk_vs_scorer'), '.3g')}"
    )


# -- the scenario ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("quick and full modes (bench/scoring.py)")
    group.add_argument("--dtype", default=None, help="full mode weights dtype (default bfloat16)")
    group.add_argument("--shapes", default="3b,8b", help="full mode shapes, comma-separated: 3b, 8b, smoke")
    group.add_argument("--queries", type=int, default=None, help="queries (default 20 quick, 50 full)")
    group.add_argument("--repeats", type=int, default=None, help="timed runs per contestant, median reported (default 2 quick, 3 full)")
    group.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    group.add_argument("--contestants", default="scorer,scorer_whole,official,fast_rerank")
    group.add_argument("--reference-pairs", type=int, default=None, help="pairs checked against the batch-1 reference (default 100)")
    group.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default 989 on CUDA = H100/H200 bf16 dense)")
    group.add_argument("--spark", action="store_true", help="also run the whole job on local Spark (quick mode; needs pyspark)")
    group.add_argument("--spark-runs", type=int, default=2, help="job runs for --spark; the first pays Python worker and model start-up")
    group.add_argument(
        "--few-candidates", default="1,2,3,5",
        help="candidates per query for the few-candidates section (prefix reuse's per-query cost), comma-separated; '' skips it",
    )
    group.add_argument("--few-pairs", type=int, default=300, help="pairs per count in the few-candidates section")


def finish_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    args.device = args.device or ("cpu" if args.mode == "quick" else "cuda")
    args.dtype = args.dtype or ("float32" if args.mode == "quick" else "bfloat16")
    # 20 x 100 = 2000 pairs: one scorer call of that size leaves ~6% padding at batch 128
    # (the Spark job's calls are up to 10000 rows, ~2%); see RESULTS.md.
    args.queries = args.queries or (20 if args.mode == "quick" else 50)
    args.repeats = args.repeats or (2 if args.mode == "quick" else 3)
    args.reference_pairs = 100 if args.reference_pairs is None else args.reference_pairs
    args.name = args.name or f"{args.mode}-{args.device.split(':')[0]}"
    unknown = [c for c in args.contestants.split(",") if c not in CONTESTANTS]
    if unknown:
        parser.error(f"--contestants: unknown {unknown}; choose from {list(CONTESTANTS)}")


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Build each model, time the contestants on the same pairs, check fidelity; the report."""
    import torch

    from dear_udf.tokenization import Layout, PairEncoder

    if args.threads:
        torch.set_num_threads(args.threads)
    contestants = args.contestants.split(",")
    peak_flops = args.peak_tflops * 1e12 if args.peak_tflops else (H100_BF16_DENSE_FLOPS if args.device.startswith("cuda") else None)

    report: dict[str, Any] = {**new_report(args, command, args.device), "repeats": args.repeats, "models": [], "spark": None}
    with tempfile.TemporaryDirectory(prefix="dear-bench-") as tmp:
        workdir = Path(tmp)
        if args.mode == "quick":
            builders = [lambda: quick_model(workdir, args.device)]
        else:
            builders = [
                (lambda s=s: random_model(s, workdir, device=args.device, dtype=args.dtype))
                for s in args.shapes.split(",")
            ]
        pairs: Pairs | None = None
        spark_model: Path | None = None
        spark_core_scores: Any | None = None
        for build in builders:
            bench_model = build()
            loaded = bench_model.loaded
            if pairs is None:
                # Every model in a run shares one tokenizer (same training text and seed),
                # so the pairs and their token lengths are the same for all of them.
                pairs = generate(
                    n_queries=args.queries, docs_per_query=args.docs_per_query, seed=args.seed, tokenizer=loaded.tokenizer
                )
                encoder = PairEncoder(loaded.tokenizer, Layout(), pool_pad_id=loaded.pool_pad_id, pad_id=loaded.pad_id)
                ids = encoder.encode(pairs.queries, pairs.titles, pairs.texts).ids
                real_tokens = sum(len(x) for x in ids)
                report["data"] = {
                    "generator": "bench/data.py (MS MARCO-like token lengths)",
                    "seed": args.seed,
                    "pairs": len(pairs),
                    "queries": args.queries,
                    "docs_per_query": args.docs_per_query,
                    "real_tokens": real_tokens,
                    "lengths": length_summary(ids),
                }
            results, scores = measure(
                bench_model,
                pairs,
                real_tokens,
                contestants=contestants,
                repeats=args.repeats,
                device=args.device,
                peak_flops=peak_flops,
            )
            entry: dict[str, Any] = {
                "model": bench_model.name,
                "dtype": loaded.dtype,
                "params_non_embedding": bench_model.params_non_embedding,
                "load_seconds": bench_model.load_seconds,
                "load_kind": bench_model.load_kind,
                "contestants": results,
                "ratios": {
                    **{
                        f"scorer/{other} pairs/s": results["scorer"]["pairs_per_s"] / results[other]["pairs_per_s"]
                        for other in contestants
                        if other != "scorer" and "scorer" in results
                    },
                    **{
                        f"scorer/{other} pairs per CPU s": results["scorer"]["pairs_per_cpu_s"] / results[other]["pairs_per_cpu_s"]
                        for other in contestants
                        if other != "scorer" and "scorer" in results and args.device == "cpu"
                    },
                },
                "fidelity": fidelity(loaded, pairs, scores, args.reference_pairs),
                "few_candidates": few_candidates(bench_model, args),
            }
            if args.device == "cpu" and "scorer" in results and "official" in results:
                ratio = entry["ratios"]["scorer/official pairs/s"]
                per_real = results["scorer"]["computed_per_real_token"]
                entry["target"] = {
                    "ratio": ratio,
                    "computed_per_real": per_real,
                    "met": ratio >= CPU_TARGET_RATIO and per_real <= CPU_TARGET_COMPUTED_PER_REAL,
                }
            report["models"].append(entry)
            if bench_model.path is not None and spark_model is None:
                spark_model, spark_core_scores = bench_model.path, scores.get("scorer")
            del bench_model, loaded, scores
            gc.collect()  # drop the model before the next shape is built on the same GPU
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        assert pairs is not None
        report["spark"] = bench_spark(args, pairs, workdir, model_path=spark_model, core_scores=spark_core_scores)
    report["machine"]["load_average_end"] = load_average()
    print_table(report)
    return report


