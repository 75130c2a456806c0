"""Metrics through ir-measures: a run against qrels, and first stage vs reranked.

Every number comes from ``ir_measures``; this module only shapes inputs and outputs. Measure
names are ir-measures' own (``nDCG@10``, ``RR@10`` i.e. MRR@10, ``R@100``). ir-measures
ranks each query's documents by ``score``, highest first, and averages over the queries in
the qrels: a judged query the run lacks counts as 0 (checked with ir-measures 0.4.3).

Subcommand::

    dear-rerank eval --run reranked.trec --qrels qrels.dev.tsv --measures nDCG@10 RR@10
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from . import schema as S
from .exceptions import ConfigError, InputError

DEFAULT_MEASURES = ("nDCG@10", "RR@10", "R@100")


def _measures(names: Sequence[str]) -> list[Any]:
    import ir_measures

    if isinstance(names, str):
        names = [names]
    if not names:
        raise ConfigError("measures must name at least one measure, got none.")
    parsed = []
    for name in names:
        try:
            parsed.append(ir_measures.parse_measure(name))
        except (ValueError, NameError) as exc:
            raise ConfigError(f"measures: {name!r} is not an ir-measures measure ({exc}); e.g. nDCG@10, RR@10, R@100.") from None
    return parsed


def _qrels_frame(qrels: Any):
    from .io.trec import to_arrow

    table = to_arrow(qrels, what="qrels")
    missing = [c for c in (S.QUERY_ID, S.DOC_ID, S.RELEVANCE) if c not in table.column_names]
    if missing:
        raise InputError(f"qrels: missing column(s) {missing}; got {table.column_names}.")
    columns = {}
    for name, type_ in ((S.QUERY_ID, pa.string()), (S.DOC_ID, pa.string()), (S.RELEVANCE, pa.int32())):
        column = table.column(name)
        if column.null_count:
            raise InputError(f"qrels: column {name!r} holds {column.null_count} null(s); every judgement needs one.")
        try:
            columns[name] = column.cast(type_)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InputError(f"qrels: column {name!r} of type {column.type} cannot be read as {type_} ({exc}).") from exc
    return pa.table(columns).to_pandas()


def _run_frame(run: Any, what: str):
    from .io.runs import as_run

    return as_run(run, what=what).to_pandas()


def _number(value: Any) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _evaluate_frames(run_frame, qrels_frame, measures: list[Any]) -> dict[str, Any]:
    import ir_measures

    aggregate = ir_measures.calc_aggregate(measures, qrels_frame, run_frame)
    per_query: dict[str, dict[str, float]] = {}
    for metric in ir_measures.iter_calc(measures, qrels_frame, run_frame):
        per_query.setdefault(metric.query_id, {})[str(metric.measure)] = float(metric.value)
    return {
        # NaN (no judged query to average) would make the summary invalid JSON: None instead.
        "aggregate": {str(m): _number(aggregate.get(m)) for m in measures},
        "per_query": dict(sorted(per_query.items())),
    }


def evaluate(run: Any, qrels: Any, measures: Sequence[str] = DEFAULT_MEASURES) -> dict[str, Any]:
    """Evaluate a run against qrels with ir-measures.

    Args:
        run: Arrow table or DataFrame with ``query_id``, ``doc_id`` and ``score`` (or only a
            ``rank``: scored ``-rank``; see ``io.runs.as_run``).
        qrels: Arrow table or DataFrame with ``query_id``, ``doc_id``, ``relevance``.
        measures: ir-measures names.

    Returns:
        ``{"aggregate": {measure: value}, "per_query": {query_id: {measure: value}}}``.

    Example:
        >>> import pyarrow as pa
        >>> run = pa.table({"query_id": ["1", "1"], "doc_id": ["a", "b"], "score": [2.0, 1.0]})
        >>> qrels = pa.table({"query_id": ["1"], "doc_id": ["b"], "relevance": [1]})
        >>> evaluate(run, qrels, ["RR@10"])["aggregate"]
        {'RR@10': 0.5}
    """
    return _evaluate_frames(_run_frame(run, "run"), _qrels_frame(qrels), _measures(measures))


def compare(
    first_stage_run: Any,
    reranked_run: Any,
    qrels: Any,
    *,
    k: int,
    measures: Sequence[str] | None = None,
    per_query: bool = False,
) -> dict[str, Any]:
    """First stage vs reranked on the same queries: the judged queries the first stage ranked.

    Queries the first stage never ranked are left out of both (the reranker had no chance at
    them); a judged query the reranked run lacks counts 0 there, as in ir-measures. The
    reranked run holds only the top ``k``, so measures deeper than ``k`` favour the first
    stage; the default measures stop at ``k`` or 10.

    Args:
        first_stage_run: the candidates as ranked by the first stage (``score``,
            ``first_stage_score``, or ranks only).
        reranked_run: the top-k after reranking (``query_id``, ``doc_id``, ``score``).
        qrels: ``query_id``, ``doc_id``, ``relevance``.
        k: the job's ``top_k``; the default measures are nDCG@10, RR@10 and R@k.
        measures: other ir-measures names instead.
        per_query: also return each run's per-query values.

    Returns:
        ``{"measures", "queries", "first_stage", "reranked", "delta"}``; the last three map
        measure -> value (``delta`` = reranked - first stage), None when no query is judged.

    Example:
        >>> summary = compare(bm25, reranked, qrels, k=10)  # doctest: +SKIP
        >>> summary["delta"]["nDCG@10"]  # doctest: +SKIP
        0.1534
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}.")
    parsed = _measures(measures if measures is not None else list(dict.fromkeys(["nDCG@10", "RR@10", f"R@{k}"])))
    first = _run_frame(first_stage_run, "first_stage_run")
    reranked = _run_frame(reranked_run, "reranked_run")
    qrels_frame = _qrels_frame(qrels)
    qrels_frame = qrels_frame[qrels_frame[S.QUERY_ID].isin(set(first[S.QUERY_ID]))]
    before = _evaluate_frames(first, qrels_frame, parsed)
    after = _evaluate_frames(reranked, qrels_frame, parsed)
    result: dict[str, Any] = {
        "measures": [str(m) for m in parsed],
        "queries": int(qrels_frame[S.QUERY_ID].nunique()),
        "first_stage": before["aggregate"],
        "reranked": after["aggregate"],
        "delta": {
            m: None if before["aggregate"][m] is None or after["aggregate"][m] is None else after["aggregate"][m] - before["aggregate"][m]
            for m in before["aggregate"]
        },
    }
    if per_query:
        result["per_query"] = {"first_stage": before["per_query"], "reranked": after["per_query"]}
    return result


def load_qrels(path: str, *, format: str | None = None) -> pa.Table:
    """Read local qrels in any input format (``io.formats.read_local``), without rows lacking an id."""
    from .config import InputSpec
    from .io.formats import read_local
    from .io.runs import drop_rows_without_ids

    return drop_rows_without_ids(read_local(InputSpec(path, format=format), "qrels"), what=path)


# -- command line ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="TREC run file, Parquet or Delta table (query_id, doc_id, score)")
    parser.add_argument("--qrels", required=True, help="TREC qrels, BEIR folder or qrels TSV, Parquet, Delta")
    parser.add_argument("--measures", nargs="+", default=list(DEFAULT_MEASURES), help="ir-measures names (default: %(default)s)")
    parser.add_argument("--run-id", dest="run_id", help="which run of an output table holding several")
    parser.add_argument("--run-format", dest="run_format", help="format of --run if not inferred (trec, parquet, delta, ...)")
    parser.add_argument("--qrels-format", dest="qrels_format", help="format of --qrels if not inferred")
    parser.add_argument("--json", dest="json_out", help="also write aggregate and per-query values as JSON here")


def main(args: argparse.Namespace) -> int:
    """Print one line per measure, ``nDCG@10 0.7123``; optionally write JSON."""
    from .io.runs import read_run

    run = read_run(args.run, format=args.run_format, run_id=args.run_id)
    qrels = load_qrels(args.qrels, format=args.qrels_format)
    result = evaluate(run, qrels, args.measures)
    for name, value in result["aggregate"].items():
        print(f"{name} {value:.4f}")
    if args.json_out:
        payload = {"run": args.run, "qrels": args.qrels, "run_id": args.run_id, **result}
        Path(args.json_out).write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return 0
