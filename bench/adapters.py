"""``--mode adapters``: three adapters over one base in one process, against one process
per adapter (issue 23).

A tiny-shaped Llama base large enough that its weights dominate a process's memory
(``--adapter-shape``: hidden 512, 8 layers by default, about 100 MB in float32) and three
LoRA adapters over it (``dear_udf.testing.build_lora_adapter``: rank 4 on every linear
layer, and a score head) are built offline. Then, each in a fresh Python process on
``--threads`` threads (default 2), on the same ``--adapter-pairs`` pairs:

- ``separate``: three processes, one per adapter, each loading base + adapter merged
  (``load_model``) and scoring the pairs: what three single-adapter runs cost;
- ``together``: one process loading the base once and the three adapters over it
  (``model.adapters.load_adapters``) and scoring the pairs under each in turn: what one
  side-by-side run costs per worker.

Reported per process: wall seconds (start to end, imports included), load and scoring
seconds, and the peak resident memory (``ru_maxrss``). Each process also checks that its
scores are the same bits: ``together``'s scores equal each ``separate`` process's.

Example:
    python bench/run.py --mode adapters --adapter-pairs 400 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import finish_cpu_args, load_average, new_report, print_header

MODES = ("adapters",)
ADAPTERS = ("medical", "legal", "general")
DEFAULT_SHAPE = "hidden_size=512,intermediate_size=1408,layers=8,heads=8,kv_heads=8"
ROOT = Path(__file__).resolve().parent.parent


def _shape(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (item.split("=") for item in text.split(",") if item)}


def child(job: dict[str, Any]) -> dict[str, Any]:
    """One measured process: load (one adapter, or all over one base), score, report."""
    import resource

    import numpy as np
    import torch

    from dear_udf.model import ModelSpec, load_model
    from dear_udf.model.adapters import load_adapters
    from dear_udf.scorer import Scorer

    torch.set_num_threads(job["threads"])
    pairs = json.loads(Path(job["pairs"]).read_text())
    specs = {name: ModelSpec(model=job["base"], adapter=path, device="cpu") for name, path in job["adapters"].items()}
    start = time.perf_counter()
    if job["kind"] == "together":
        bank = load_adapters(specs)
        scorers = {name: Scorer(bank.loaded[name]) for name in specs}
        extra = bank.extra_bytes()
    else:
        scorers = {name: Scorer(load_model(spec)) for name, spec in specs.items()}
        extra = 0
    loaded = time.perf_counter()
    scores = {name: scorer.score(pairs["queries"], None, pairs["texts"]).tolist() for name, scorer in scorers.items()}
    done = time.perf_counter()
    model = next(iter(scorers.values())).model
    return {
        "kind": job["kind"],
        "adapters": list(specs),
        "load_seconds": round(loaded - start, 3),
        "score_seconds": round(done - loaded, 3),
        "base_weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "merged_tensor_bytes_beside_base": extra,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "scores": scores,
        "finite": bool(all(np.isfinite(v).all() for v in scores.values())),
    }


def _run_child(job: dict[str, Any], work: Path) -> dict[str, Any]:
    spec = work / f"job-{job['kind']}-{'-'.join(job['adapters'])}.json"
    spec.write_text(json.dumps(job))
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "bench.adapters", str(spec)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"bench child failed:\n{out.stderr[-3000:]}")
    record = json.loads(out.stdout.strip().splitlines()[-1])
    record["wall_seconds"] = round(time.perf_counter() - start, 3)
    return record


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from bench.data import generate
    from dear_udf.testing import build_lora_adapter, build_tiny_dear

    with tempfile.TemporaryDirectory(prefix="dear-adapters-") as tmp:
        work = Path(tmp)
        base = build_tiny_dear(work / "base", pooling="index227", seed=0, **_shape(args.adapter_shape))
        adapters = {name: str(build_lora_adapter(base, work / name, seed=20 + i)) for i, name in enumerate(ADAPTERS)}
        queries = max(1, args.adapter_pairs // args.docs_per_query)
        pairs = generate(n_queries=queries, docs_per_query=min(args.docs_per_query, args.adapter_pairs), seed=args.seed,
                         tokenizer=AutoTokenizer.from_pretrained(str(base)))
        (work / "pairs.json").write_text(json.dumps({"queries": pairs.queries, "texts": pairs.texts}))
        common = {"base": str(base), "pairs": str(work / "pairs.json"), "threads": args.threads}
        separate = []
        for name, path in adapters.items():
            separate.append(_run_child({**common, "kind": "separate", "adapters": {name: path}}, work))
            print(f"  separate {name}: {separate[-1]['wall_seconds']:.1f}s, peak {separate[-1]['peak_rss_mb']:.0f} MB", flush=True)
        together = _run_child({**common, "kind": "together", "adapters": adapters}, work)
        print(f"  together: {together['wall_seconds']:.1f}s, peak {together['peak_rss_mb']:.0f} MB", flush=True)
    same = all(together["scores"][r["adapters"][0]] == r["scores"][r["adapters"][0]] for r in separate)
    for record in (*separate, together):
        record.pop("scores")
    return {
        "pairs": len(pairs),
        "shape": _shape(args.adapter_shape),
        "threads": args.threads,
        "separate": separate,
        "together": together,
        "scores_bitwise_equal": same,
        "summary": {
            "separate_wall_seconds_total": round(sum(r["wall_seconds"] for r in separate), 3),
            "together_wall_seconds": together["wall_seconds"],
            "separate_load_seconds_total": round(sum(r["load_seconds"] for r in separate), 3),
            "together_load_seconds": together["load_seconds"],
            "separate_score_seconds_total": round(sum(r["score_seconds"] for r in separate), 3),
            "together_score_seconds": together["score_seconds"],
            "separate_peak_rss_mb_sum": round(sum(r["peak_rss_mb"] for r in separate), 1),
            "separate_peak_rss_mb_max": max(r["peak_rss_mb"] for r in separate),
            "together_peak_rss_mb": together["peak_rss_mb"],
        },
    }


def print_adapters(report: dict[str, Any]) -> None:
    result = report["adapters"]
    print(f"\n{result['pairs']} pairs x {len(ADAPTERS)} adapters, {result['threads']} threads, scores bitwise equal: {result['scores_bitwise_equal']}")
    print_header(f"{'':<22} {'wall s':>8} {'load s':>8} {'score s':>8} {'peak MB':>9}")
    for r in result["separate"]:
        print(f"{'separate ' + r['adapters'][0]:<22} {r['wall_seconds']:>8.2f} {r['load_seconds']:>8.2f} {r['score_seconds']:>8.2f} {r['peak_rss_mb']:>9.0f}")
    s = result["summary"]
    print(f"{'separate, 3 processes':<22} {s['separate_wall_seconds_total']:>8.2f} {s['separate_load_seconds_total']:>8.2f} "
          f"{s['separate_score_seconds_total']:>8.2f} {s['separate_peak_rss_mb_sum']:>9.0f}")
    t = result["together"]
    print(f"{'together, 1 process':<22} {t['wall_seconds']:>8.2f} {t['load_seconds']:>8.2f} {t['score_seconds']:>8.2f} {t['peak_rss_mb']:>9.0f}")
    print(f"base weights {t['base_weight_bytes'] / 2**20:.1f} MB; merged tensors beside it {t['merged_tensor_bytes_beside_base'] / 2**20:.1f} MB")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("adapters mode (bench/adapters.py)")
    group.add_argument("--adapter-pairs", type=int, default=400, help="pairs scored under each adapter (default: %(default)s)")
    group.add_argument("--adapter-shape", default=DEFAULT_SHAPE, help="the base's shape, key=value,... (default: %(default)s)")


def finish_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    finish_cpu_args(args, parser, "adapters-cpu")
    args.threads = args.threads or 2  # --threads (scoring.py's flag): torch threads per process


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    report = new_report(args, command, "cpu")
    start = time.perf_counter()
    report["adapters"] = measure(args)
    report["adapters"]["bench_seconds"] = round(time.perf_counter() - start, 1)
    report["machine"]["load_average_end"] = load_average()
    print_adapters(report)
    return report


if __name__ == "__main__":  # a measured child process: python -m bench.adapters <job.json>
    print(json.dumps(child(json.loads(Path(sys.argv[1]).read_text()))))
