"""The benchmark runner: picks a scenario, runs it, prints its table, writes its JSON.

Scenarios, one module each:

- ``--mode quick`` (CPU, minutes) and ``--mode full`` (GPU): the scoring core against
  DeAR's padded loop and the model card's fast_rerank on the same model and pairs
  (``bench/scoring.py``);
- ``--mode scaling`` (CPU, needs pyspark): the whole job at several sizes, time against
  pairs and Python worker memory, Spark against the core on the same cores
  (``bench/scaling.py``);
- ``--mode nightly`` (CPU, needs pyspark): a night where 10% of the pairs changed, with and
  without the score cache (``bench/nightly.py``);
- ``--mode overhead`` (CPU, needs pyspark): the fixed cost of one run of a small night:
  wall, seconds per step and Spark jobs (``bench/overhead.py``);
- ``--mode noise``: how far the batch alone moves one scorer's scores, per dtype: the
  ground of the score cache's check of hits (``bench/noise.py``);
- ``--mode serve`` (CPU, needs the serve extra): ``dear-rerank serve`` under 1, 4 and 16
  concurrent clients against the in-process scorer on the same pairs (``bench/serve.py``);
- ``--mode cachegrowth`` (CPU, needs pyspark): nights against score caches of 10^5 to 10^7
  entries filled over a month of commits: the lookup's time, files and memory, and the
  lookup after ``cache compact`` against a cache written in one commit (``bench/cachegrowth.py``).
- ``--mode adapters`` (CPU): three LoRA adapters over one base in one process against one
  process per adapter: time, peak memory, and the scores' bits (``bench/adapters.py``).

A scenario module has ``MODES``, ``add_arguments(parser)``, ``finish_args(args, parser)``
and ``run(args, command) -> report``; adding one is one line in ``SCENARIOS``. Shared
helpers live in ``bench/common.py``; the pairs in ``bench/data.py``.

Examples:
    python bench/run.py --mode quick
    python bench/run.py --mode quick --threads 1 --spark
    python bench/run.py --mode full --device cuda --shapes 3b,8b
    python bench/run.py --mode full --device cpu --shapes smoke   # exercises the full path
    python bench/run.py --mode scaling --sizes 20000,80000,320000
    python bench/run.py --mode nightly --pairs 100000 --changed 0.1
    python bench/run.py --mode overhead --overhead-pairs 1000 --runs 8
    python bench/run.py --mode noise
    python bench/run.py --mode serve --clients 1,4,16 --serve-requests 48 --threads 1
    python bench/run.py --mode cachegrowth --cache-entries 100000,1000000 --night-pairs 100000,1000000
    python bench/run.py --mode adapters --adapter-pairs 400 --threads 2
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/run.py` runs from bench/

from bench import adapters, cachegrowth, common, nightly, noise, overhead, scaling, scoring, serve  # noqa: E402

SCENARIOS = {mode: module for module in (scoring, scaling, nightly, overhead, noise, serve, cachegrowth, adapters) for mode in module.MODES}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(SCENARIOS), default="quick")
    parser.add_argument("--name", help="results file name (default: <mode>-<device>)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cpu, cuda for full)")
    parser.add_argument("--docs-per-query", type=int, default=100, help="candidates per query (BM25 top-100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spark-master", default=f"local[{os.cpu_count() or 2}]", help="Spark master (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write bench/results/<name>.json")
    for module in dict.fromkeys(SCENARIOS.values()):
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    SCENARIOS[args.mode].finish_args(args, parser)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = "python bench/run.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    report = SCENARIOS[args.mode].run(args, command)
    if not args.no_write:
        print(f"\nwrote {common.write_json(report, args.name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
