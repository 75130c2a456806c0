"""Scenario ``noise``: how far one scorer's scores of the same pairs move with the batch.

The score cache's check of hits (``dear_udf/cache/check.py``) scores a sample of cached
pairs again and refuses the night when they moved beyond a tolerance per dtype. Its
tolerances must sit well above what the batch alone moves a score (another night's
micro-batches, a retried task, an OOM split), and well below what another scorer moves it.
This measures the first: the same pairs (``bench/data.py``, MS MARCO-shaped) scored with
micro-batches of 128 pairs, 7 pairs, a 2048-token budget and one pair at a time, per dtype
and model shape; it reports the largest difference from the first and, for scale, the
spread of the scores.

Example:
    python bench/run.py --mode noise                                   # CPU: tiny and quick shapes
    python bench/run.py --mode noise --device cuda --noise-shapes quick,3b   # a GPU, real shapes
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench.common import new_report, print_header

MODES = ("noise",)
BATCHINGS = (("batch 128", 128, None), ("batch 7", 7, None), ("2048-token budget", 32, 2048), ("one at a time", 1, None))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("noise")
    group.add_argument("--noise-pairs", type=int, default=400, help="pairs scored under each batching (default 400)")
    group.add_argument("--dtypes", default="float32,bfloat16,float16", help="comma-separated dtypes")
    group.add_argument("--noise-shapes", default=None, help="model shapes (bench/common.SHAPES; default tiny,quick on CPU, quick,3b on GPU)")


def finish_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    args.device = args.device or "cpu"
    args.noise_shapes = args.noise_shapes or ("tiny,quick" if args.device == "cpu" else "quick,3b")
    args.name = args.name or f"noise-{args.device.split(':')[0]}"


def _model(shape: str, workdir: Path, device: str, dtype: str) -> Any:
    from bench.common import SHAPES
    from bench.scoring import random_model
    from dear_udf.model import ModelSpec, load_model
    from dear_udf.testing import build_tiny_dear

    if "vocab_size" in SHAPES[shape]:  # real shapes: random weights built on the device
        return random_model(shape, workdir, device=device, dtype=dtype).loaded
    path = workdir / f"model-{shape}"
    if not path.exists():
        build_tiny_dear(path, **SHAPES[shape])
    return load_model(ModelSpec(model=str(path), dtype=dtype, device=device, local_files_only=True))


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    import numpy as np
    import torch

    from bench.data import generate
    from dear_udf.scorer import Scorer

    torch.set_num_threads(getattr(args, "threads", None) or torch.get_num_threads())
    report = new_report(args, command, args.device)
    report["rows"] = []
    workdir = Path(tempfile.mkdtemp(prefix="dear-bench-noise-"))
    per_query = min(args.docs_per_query, args.noise_pairs)
    pairs = generate(n_queries=max(1, args.noise_pairs // per_query), docs_per_query=per_query, seed=args.seed)
    print_header(f"{'shape':<8} {'dtype':<9} {'score range':>18}  largest difference from batch 128")
    for shape in args.noise_shapes.split(","):
        for dtype in args.dtypes.split(","):
            loaded = _model(shape, workdir, args.device, dtype)
            scores = [Scorer(loaded, batch_size=b, max_tokens=t).score(pairs.queries, pairs.titles, pairs.texts) for _, b, t in BATCHINGS]
            diffs = {name: float(np.max(np.abs(s - scores[0]))) for (name, _, _), s in zip(BATCHINGS[1:], scores[1:])}
            row = {"shape": shape, "dtype": dtype, "pairs": len(pairs), "min_score": float(scores[0].min()),
                   "max_score": float(scores[0].max()), "max_difference": max(diffs.values()), "by_batching": diffs}
            report["rows"].append(row)
            print(f"{shape:<8} {dtype:<9} {row['min_score']:>8.3f} .. {row['max_score']:<7.3f}  {row['max_difference']:.3g}")
    return report
