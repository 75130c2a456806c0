"""One PNG for a run: per-query nDCG@10 first stage vs reranked, and the reranked scores.

Left: each judged query is a point (first-stage nDCG@10, reranked nDCG@10); points above the
diagonal are queries the reranker improved. Right: the histogram of reranked scores, where a
collapsed or saturated score distribution (a broken model or layout) shows at a glance.

Subcommand::

    dear-rerank report --run out/reranked --run-id 2024-05-01 --first-stage bm25.trec \\
        --qrels qrels.dev.tsv --out report.png
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

MEASURE = "nDCG@10"


def write_report(first_stage_run: Any, reranked_run: Any, qrels: Any, path_png: str | Path) -> dict[str, Any]:
    """Plot per-query nDCG@10 (first stage vs reranked) and the reranked score histogram.

    Args:
        first_stage_run: candidates as the first stage ranked them (see ``evaluate.compare``).
        reranked_run: the reranked top-k (``query_id``, ``doc_id``, ``score``).
        qrels: ``query_id``, ``doc_id``, ``relevance``.
        path_png: where to write the figure.

    Returns:
        What the figure shows: ``queries``, ``improved``, ``hurt``, ``tied`` and the mean
        nDCG@10 of each run.

    Example:
        >>> write_report(bm25, reranked, qrels, "report.png")  # doctest: +SKIP
        {'queries': 43, 'improved': 25, 'hurt': 6, 'tied': 12, ...}
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .evaluate import compare
    from .io.runs import as_run

    result = compare(first_stage_run, reranked_run, qrels, k=10, measures=[MEASURE], per_query=True)
    before, after = result["per_query"]["first_stage"], result["per_query"]["reranked"]
    queries = sorted(before)
    x = [before[q][MEASURE] for q in queries]
    y = [after.get(q, {}).get(MEASURE, 0.0) for q in queries]
    stats = {
        "queries": len(queries),
        "improved": sum(b > a for a, b in zip(x, y)),
        "hurt": sum(b < a for a, b in zip(x, y)),
        "tied": sum(b == a for a, b in zip(x, y)),
        "first_stage": result["first_stage"][MEASURE],
        "reranked": result["reranked"][MEASURE],
    }
    scores = as_run(reranked_run, what="reranked_run").column("score").to_pylist()

    # Figure + Agg canvas, not pyplot: no global backend state, safe on a headless driver.
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    left.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--", label="no change")
    left.scatter(x, y, s=14, alpha=0.6)
    left.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel=f"first stage {MEASURE}", ylabel=f"reranked {MEASURE}")
    left.set_title(
        f"{MEASURE} per query ({stats['queries']} queries): "
        f"{stats['improved']} up, {stats['hurt']} down, {stats['tied']} same\n"
        f"mean {_fmt(stats['first_stage'])} -> {_fmt(stats['reranked'])}",
        fontsize=10,
    )
    left.legend(loc="lower right", fontsize=8)
    right.hist(scores, bins=50)
    right.set(xlabel="reranked score", ylabel="rows")
    right.set_title(f"reranked score distribution ({len(scores)} rows)", fontsize=10)
    Path(path_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path_png, dpi=100)
    return stats


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# -- command line ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="reranked run: output table (Delta/Parquet) or TREC run")
    parser.add_argument("--run-id", dest="run_id", help="which run of an output table holding several")
    parser.add_argument("--first-stage", dest="first_stage", required=True, help="first-stage candidates: TREC run, Parquet, Delta")
    parser.add_argument("--qrels", required=True, help="TREC qrels, BEIR folder or qrels TSV, Parquet, Delta")
    parser.add_argument("--out", required=True, help="PNG file to write")


def main(args: argparse.Namespace) -> int:
    """Write the PNG and print where, with the counts it shows."""
    from .evaluate import load_qrels
    from .io.runs import read_run

    reranked = read_run(args.run, run_id=args.run_id)
    first = read_run(args.first_stage)
    stats = write_report(first, reranked, load_qrels(args.qrels), args.out)
    print(
        f"wrote {args.out}: {stats['queries']} queries, {stats['improved']} improved, {stats['hurt']} hurt, "
        f"{MEASURE} {_fmt(stats['first_stage'])} -> {_fmt(stats['reranked'])}"
    )
    return 0
