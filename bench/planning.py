"""Computed tokens per real token of the scorer's batch planning, without running a model.

For the benchmark's MS MARCO-shaped pairs, prints how much padding ``plan_batches`` leaves
for a range of call sizes (pairs per ``Scorer.score`` call; the Spark job's calls are
Arrow batches of up to 10000 rows) and micro-batch settings. Counts include the one
pooling token that index-227 pooling adds per pair.

Example:
    python bench/planning.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.data import generate  # noqa: E402

SETTINGS: list[tuple[int, int | None]] = [(128, None), (64, None), (32, None), (128, 8192), (128, 4096)]


def computed_per_real(ids: list[list[int]], pool: list[int], *, batch_size: int, max_tokens: int | None) -> tuple[float, int]:
    """Computed/real token ratio and number of micro-batches of one scorer call."""
    from dear_udf.scorer import plan_batches

    batches = plan_batches(ids, pool, batch_size=batch_size, max_tokens=max_tokens)
    width = [len(ids[i]) + (1 if pool[i] >= len(ids[i]) else 0) for i in range(len(ids))]
    computed = sum(len(b) * max(width[i] for i in b) for b in batches)
    return computed / sum(len(x) for x in ids), len(batches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", default="5,10,20,100", help="call sizes, in queries of 100 candidates")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from dear_udf.tokenization import Layout, PairEncoder
    from dear_udf.testing import build_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(tmp)
    encoder = PairEncoder(tokenizer, Layout(), pool_pad_id=0, pad_id=tokenizer.eos_token_id)
    names = [f"b{b}" + (f"/t{t}" if t else "") for b, t in SETTINGS]
    print(f"{'pairs':>6} " + " ".join(f"{n:>14}" for n in names))
    for n_queries in (int(q) for q in args.queries.split(",")):
        pairs = generate(n_queries=n_queries, docs_per_query=100, seed=args.seed, tokenizer=tokenizer)
        ids, pool, _ = encoder.encode(pairs.queries, pairs.titles, pairs.texts)
        cells = []
        for batch_size, max_tokens in SETTINGS:
            ratio, batches = computed_per_real(ids, pool, batch_size=batch_size, max_tokens=max_tokens)
            cells.append(f"{ratio:.3f} ({batches:>3})")
        print(f"{len(ids):>6} " + " ".join(f"{c:>14}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
