"""The ``dear-rerank`` command: one subcommand per module.

Each subcommand module exposes ``add_arguments(parser)`` and ``main(args) -> int`` and
imports nothing heavy at module level, so ``dear-rerank --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import console
from .exceptions import DearRerankError

COMMANDS = {
    "score": ("dear_udf.score_file", "score a file of (query, document) pairs, or a row per query with its documents (Parquet, CSV, JSON Lines)"),
    "run": ("dear_udf.spark.job", "rerank first-stage candidates with Spark and write the top-k"),
    "demo": ("dear_udf.demo.command", "run the whole job locally on a tiny offline model and synthetic data"),
    "eval": ("dear_udf.evaluate", "evaluate a run against qrels with ir-measures"),
    "report": ("dear_udf.report", "plot first-stage vs reranked nDCG@10 and the score distribution"),
    "cache": ("dear_udf.cache.cli", "score cache upkeep: stats, compact, vacuum"),
    "serve": ("dear_udf.serve.cli", "online reranking over HTTP (/rerank, Cohere's and Jina's APIs) on the job's scorer"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dear-rerank", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show every library's output (Spark, Hugging Face) and log at INFO")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dear-rerank`` console script (also a Databricks wheel task).

    Returns the exit status when called with ``argv``. Called without (the console script,
    a Databricks wheel task), a failure raises ``SystemExit``: a wheel task ignores the
    entry point's return value, and a failed night must fail its task.

    Example:
        >>> main(["eval", "--run", "reranked.trec", "--qrels", "qrels.txt"])  # doctest: +SKIP
        0
    """
    args = build_parser().parse_args(argv)
    console.configure(verbose=args.verbose)
    try:
        status = int(args._module.main(args) or 0)
    except DearRerankError as exc:
        print(f"dear-rerank {args.command}: error: {exc}", file=sys.stderr)
        status = 2
    if argv is None and status:
        raise SystemExit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
