"""``dear-rerank score``: score a file of pairs with the scoring core, no Spark.

For people debugging a model, for checks outside the test suite, and for batches like the
DeAR model cards' script (``queries_docs.csv`` in, ``reranked.csv`` out). On a terminal,
stderr shows a progress bar with pairs/s and the time left; redirected, it stays clean.

    dear-rerank score --model PATH [--adapter PATH] --pairs IN --out OUT \\
        [--dtype float32|bfloat16|float16] [--device cpu|cuda|cuda:N] [--batch-size N] \\
        [--pooling first-pad|last-non-pad] [--special-tokens split|parse]

``--pairs`` is Parquet, CSV (``.csv``, ``.csv.gz``; RFC 4180 with a header row) or JSON
Lines, told by its name, in one of two layouts:

- **long**: one row per pair, ``query_id, doc_id, query, text[, title]``. The output has one
  row per input row, in input order: ``query_id, doc_id, score``.
- **wide** (the model cards' ``queries_docs.csv``): one row per query, ``query_id, query,
  documents``, where ``documents`` is a JSON list of texts or of ``[title, text]`` pairs (in
  Parquet also a list column). The output has one row per (query, document), queries in
  input order and each query's documents best first: ``query_id, doc_index`` (the
  document's place in the list, from 0), ``rank`` (from 1; equal scores keep list order)
  and ``score``.

``--out`` ending in ``.csv`` (or ``.csv.gz``) is written as CSV, anything else as Parquet;
either appears whole or not at all (written beside it, then renamed). Scores are the job's:
the same ``Scorer``, fed whole queries per call as the Spark job feeds it, so pairs DeAR
ties get one score.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Any

from . import schema as S
from .config import SCORER_SETTINGS, JobConfig
from .exceptions import InputError
from .model import ModelSpec
from .model.spec import model_flag_values
from .paths import location
from .settings import add_flags, flag_values
from .tokenization import Layout

CHUNK_ROWS = 4096  # pairs per call of the scorer (a progress step; see main)
DOCUMENTS = "documents"  # the wide layout's column: a JSON list of texts or [title, text] pairs
LONG_COLUMNS = (S.QUERY_ID, S.DOC_ID, S.QUERY, S.TEXT)
WIDE_COLUMNS = (S.QUERY_ID, S.QUERY, DOCUMENTS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pairs", required=True,
        help="Parquet, CSV or JSON Lines: query_id, doc_id, query, text[, title] (a row per pair), "
        "or query_id, query, documents (a row per query; documents a JSON list of texts or [title, text] pairs)",
    )
    parser.add_argument(
        "--out", required=True,
        help="file to write, CSV when named .csv[.gz], else Parquet: query_id, doc_id, score "
        "(query_id, doc_index, rank, score for a row per query)",
    )
    add_flags(parser, JobConfig, only=SCORER_SETTINGS)  # the job's own flags; unset, Scorer's defaults are the job's
    add_flags(parser, ModelSpec)
    add_flags(parser, Layout)


@dataclass(frozen=True)
class Pairs:
    """The pairs to score, one row each: ``query_id``, ``doc_id`` (long layout) or
    ``doc_index`` (wide layout), ``query``, ``text`` and, when given, ``title``."""

    table: Any  # pyarrow.Table
    wide: bool


def read_pairs(path: str) -> Pairs:
    """Read a pairs file in either layout (see the module's docstring) and check it.

    Raises:
        InputError: no such file, a format other than Parquet, CSV or JSON Lines, missing
            columns, a malformed CSV record or JSON line, or (wide layout) an empty or
            repeated ``query_id`` or a ``documents`` cell that is not a list of texts or
            ``[title, text]`` pairs, named by file and line (Parquet: row, from 1).

    Example:
        >>> read_pairs("queries_docs.csv").table.column_names  # doctest: +SKIP
        ['query_id', 'doc_index', 'query', 'title', 'text']
    """
    from .io.formats import infer_format

    where = location(path)
    if not where.is_local:
        raise InputError(f"{path}: score reads a local file; copy the pairs to this machine.")
    if not os.path.isfile(where.local):
        raise InputError(f"{path}: no such file.")
    try:
        fmt = infer_format(where.local)
    except InputError:
        fmt = "parquet"  # a name that says nothing: Parquet, as before CSV and JSON Lines were read
    if fmt == "csv":
        table, places = _read_csv(where.local)
    elif fmt == "jsonl":
        table, places = _read_jsonl(where.local)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(where.local)
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputError(f"{path}: score reads Parquet, CSV (.csv) or JSON Lines (.jsonl) pairs; cannot read this as Parquet ({exc}).") from None
        places = [f"row {n}" for n in range(1, table.num_rows + 1)]
    if DOCUMENTS in table.column_names:
        _require(path, table, WIDE_COLUMNS)
        return Pairs(_expand(path, table, places), wide=True)
    _require(path, table, LONG_COLUMNS)
    return Pairs(table, wide=False)


def _require(path: str, table: Any, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: missing columns {missing}; has {table.column_names}.")


def _read_csv(path: str) -> tuple[Any, list[str]]:
    """Every column as text, and each record's place (``line n``), by the readers' CSV parser."""
    import pyarrow as pa

    from .io import text

    with open(path, "rb") as fh:
        data = fh.read()
    try:
        header, records, starts = text.csv_records(data, gz=path.endswith(".gz"))
    except text.RecordError as exc:
        raise text.line_error(path, exc.line, exc.reason) from None
    if len(set(header)) < len(header):
        raise InputError(f"{path}: the header names a column twice: {header}.")
    columns = {name: pa.array([r[i] for r in records], pa.string()) for i, name in enumerate(header)}
    return pa.table(columns), [f"line {n}" for n in starts]


def _read_jsonl(path: str) -> tuple[Any, list[str]]:
    """Every key as text (arrays as their JSON), and each record's place (``line n``)."""
    import pyarrow as pa

    from .io import rules, text
    from .io.formats import read_lines

    lines = list(read_lines(path))
    keys, bad, reason = text.json_keys(lines)
    if bad is not None:
        raise text.line_error(path, bad + 1, reason)
    batch, _, _ = text.json_batch(lines, {key: pa.string() for key in sorted(keys)})
    places = [f"line {n}" for n, line in enumerate(lines, 1) if not rules.is_blank(line)]
    return pa.Table.from_batches([batch]), places


def _documents(value: Any) -> list[tuple[Any, Any]]:
    """A ``documents`` cell as ``(title, text)`` pairs; ValueError says what is wrong."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"documents is not JSON ({exc})") from None
    if not isinstance(value, list):
        raise ValueError(f"documents must be a JSON list of texts or [title, text] pairs, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            out.append((None, item))
        elif isinstance(item, list) and len(item) == 2 and all(part is None or isinstance(part, str) for part in item):
            out.append((item[0], item[1]))
        else:
            raise ValueError(f"documents[{i}] must be a text or a [title, text] pair, got {json.dumps(item)[:100]}")
    return out


def _expand(path: str, table: Any, places: list[str]) -> Any:
    """The wide layout's rows as one row per (query, document), queries in input order."""
    import pyarrow as pa

    qids = table.column(S.QUERY_ID).cast(pa.string()).to_pylist()
    queries = table.column(S.QUERY).cast(pa.string()).to_pylist()
    cells = table.column(DOCUMENTS).to_pylist()
    seen: dict[str, str] = {}
    columns: dict[str, list] = {S.QUERY_ID: [], S.DOC_INDEX: [], S.QUERY: [], S.TITLE: [], S.TEXT: []}
    for qid, query, cell, place in zip(qids, queries, cells, places):
        qid = None if qid is None else qid.strip(" ")
        if not qid:
            raise InputError(f"{path}, {place}: query_id is empty.")
        if qid in seen:
            raise InputError(f"{path}, {place}: query_id {qid!r} again (first at {seen[qid]}); give each query one row.")
        seen[qid] = place
        if cell is None or cell == "":
            raise InputError(f"{path}, {place}: documents is empty; write [] for a query without documents.")
        try:
            documents = _documents(cell)
        except ValueError as exc:
            raise InputError(f"{path}, {place}: {exc}.") from None
        for index, (title, text) in enumerate(documents):
            for name, value in ((S.QUERY_ID, qid), (S.DOC_INDEX, index), (S.QUERY, query), (S.TITLE, title), (S.TEXT, text)):
                columns[name].append(value)
    types = {S.DOC_INDEX: pa.int32()}
    return pa.table({name: pa.array(values, type=types.get(name, pa.string())) for name, values in columns.items()})


def _chunks(table, rows: int):
    from .spark.udf import whole_queries

    for batch in whole_queries(iter(table.to_batches(max_chunksize=rows))):
        yield (
            None,
            batch.column(S.QUERY).to_pylist(),
            batch.column(S.TITLE).to_pylist() if S.TITLE in batch.schema.names else None,
            batch.column(S.TEXT).to_pylist(),
        )


def main(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from .io.staged import StagedFile

    pairs = read_pairs(args.pairs)
    spec = ModelSpec(**{"model": None, **model_flag_values(args)})
    scoring = {name: getattr(args, name) for name in SCORER_SETTINGS if getattr(args, name) is not None}
    layout = Layout(**flag_values(args, Layout))
    with StagedFile(args.out) as staged:  # the folder is checked before the model is loaded
        models = _models(spec)
        outs, summary = [], {"pairs": pairs.table.num_rows, "layout": "wide" if pairs.wide else "long", "out": args.out}
        for name, loaded in models.items():
            scores, stats = _score_all(loaded, pairs.table, layout=layout, scoring=scoring, what=name)
            out = _ranked(pairs.table, scores) if pairs.wide else _scored(pairs.table, scores)
            if name is not None:  # side by side: one ranking per adapter, told apart by its column
                out = out.add_column(0, pa.field(S.ADAPTER, pa.string()), pa.array([name] * out.num_rows, pa.string()))
                summary.setdefault("adapters", {})[name] = {"model": loaded.label, **stats}
            else:
                summary.update(model=loaded.label, **stats)
            outs.append(out)
        write_scores(pa.concat_tables(outs), staged.tmp, csv=_is_csv(args.out))
        staged.publish()
    print(json.dumps(summary))
    return 0


def _models(spec: ModelSpec) -> dict[str | None, Any]:
    """The model to score with, or with named adapters each adapter over one loaded base
    (``model.adapters``): every pair is scored under each, side by side, as the job's
    ``--side-by-side`` does."""
    if not spec.adapters:
        from .model import load_model

        return {None: load_model(spec)}
    from .model.adapters import load_adapters

    return dict(load_adapters(spec.each_adapter()).loaded)


def _score_all(loaded: Any, table: Any, *, layout: Layout, scoring: dict[str, Any], what: str | None) -> tuple[Any, dict[str, Any]]:
    """Every pair's score under ``loaded``, in input order, and the scorer's counts."""
    import numpy as np
    import pyarrow.compute as pc

    from .console import progress_bar
    from .scorer import Scorer

    scorer = Scorer(loaded, layout=layout, **scoring)
    # Chunks as the Spark job's Arrow batches, whole queries each (see whole_queries): the
    # bar moves, and on a GPU the next chunk is tokenized while the current one is scored.
    order = pc.sort_indices(table, sort_keys=[(S.QUERY_ID, "ascending")])  # stable
    positions = order.to_numpy()
    scores = np.empty(table.num_rows, dtype=np.float32)
    done = 0
    with progress_bar(table.num_rows, desc="scoring" if what is None else f"scoring ({what})", unit="pairs") as bar:
        for _, _, chunk_scores in scorer.score_stream(_chunks(table.take(order), CHUNK_ROWS)):
            scores[positions[done : done + len(chunk_scores)]] = chunk_scores
            done += len(chunk_scores)
            bar.update(len(chunk_scores))
    return scores, scorer.stats.as_dict()


def _scored(table: Any, scores: Any) -> Any:
    """The long layout's output: one score per input row, in input order."""
    import pyarrow as pa

    return pa.table(
        {
            S.QUERY_ID: table.column(S.QUERY_ID).cast(pa.string()),
            S.DOC_ID: table.column(S.DOC_ID).cast(pa.string()),
            S.SCORE: pa.array(scores, type=pa.float32()),
        },
        schema=S.SCORE_FILE_SCHEMA,
    )


def _ranked(table: Any, scores: Any) -> Any:
    """The wide layout's output: each query's documents best first, equal scores in list order."""
    import numpy as np
    import pyarrow as pa

    qids = table.column(S.QUERY_ID).to_numpy(zero_copy_only=False)
    # A query's rows are contiguous (``_expand``); its documents are ranked among themselves.
    starts = np.flatnonzero(np.r_[True, qids[1:] != qids[:-1]]) if len(qids) else np.array([], dtype=np.int64)
    order = np.empty(len(qids), dtype=np.int64)
    ranks = np.empty(len(qids), dtype=np.int32)
    for start, end in zip(starts, [*starts[1:], len(qids)]):
        best_first = start + np.argsort(-scores[start:end], kind="stable")
        order[start:end] = best_first
        ranks[start:end] = np.arange(1, end - start + 1)
    return pa.table(
        {
            S.QUERY_ID: table.column(S.QUERY_ID).take(order),
            S.DOC_INDEX: table.column(S.DOC_INDEX).take(order),
            S.RANK: pa.array(ranks, type=pa.int32()),
            S.SCORE: pa.array(scores[order], type=pa.float32()),
        },
        schema=S.RANKED_FILE_SCHEMA,
    )


def _is_csv(path: str) -> bool:
    return path.lower().removesuffix(".gz").endswith(".csv")


def write_scores(table: Any, path: str, *, csv: bool) -> None:
    """Write the scores as CSV (a header row, RFC 4180 quoting, ``\\n`` line ends; gzip for a
    ``.gz`` name; a float32 score as the shortest text that reads back to it) or Parquet."""
    if not csv:
        import pyarrow.parquet as pq

        pq.write_table(table, path)
        return
    import csv as csv_module
    import gzip

    import numpy as np

    columns = [table.column(name).to_pylist() for name in table.column_names]
    if S.SCORE in table.column_names:
        at = table.column_names.index(S.SCORE)
        columns[at] = [str(np.float32(v)) for v in table.column(S.SCORE).to_numpy()]
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8", newline="") as fh:
        writer = csv_module.writer(fh, lineterminator="\n")
        writer.writerow(table.column_names)
        writer.writerows(zip(*columns))
