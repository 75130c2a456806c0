"""``dear-rerank score``: score a Parquet file of pairs with the scoring core, no Spark.

For people debugging a model and for checks outside the test suite. On a terminal, stderr
shows a progress bar with pairs/s and the time left; redirected, it stays clean.

    dear-rerank score --model PATH [--adapter PATH] --pairs IN.parquet --out OUT.parquet \\
        [--dtype float32|bfloat16|float16] [--device cpu|cuda|cuda:N] [--batch-size N] \\
        [--pooling first-pad|last-non-pad] [--special-tokens split|parse]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from . import schema as S
from .config import SCORER_SETTINGS, JobConfig
from .exceptions import InputError
from .model import ModelSpec
from .model.spec import model_flag_values
from .paths import location
from .settings import add_flags, flag_values
from .tokenization import Layout

CHUNK_ROWS = 4096  # pairs per call of the scorer (a progress step; see main)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", required=True, help="Parquet with query_id, doc_id, query, text[, title]")
    parser.add_argument("--out", required=True, help="Parquet to write: query_id, doc_id, score")
    add_flags(parser, JobConfig, only=SCORER_SETTINGS)  # the job's own flags; unset, Scorer's defaults are the job's
    add_flags(parser, ModelSpec)
    add_flags(parser, Layout)


def read_pairs(path: str):
    """Read the pairs table and check its columns; returns a pyarrow Table."""
    import pyarrow.parquet as pq

    where = location(path)
    if not where.is_local:
        raise InputError(f"{path}: score reads a local Parquet file; copy the pairs to this machine.")
    if not os.path.isfile(where.local):
        raise InputError(f"{path}: no such file.")
    table = pq.read_table(where.local)
    missing = [c for c in (S.QUERY_ID, S.DOC_ID, S.QUERY, S.TEXT) if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: missing columns {missing}; has {table.column_names}.")
    return table


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
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from .console import progress_bar
    from .model import load_model
    from .scorer import Scorer

    table = read_pairs(args.pairs)
    loaded = load_model(ModelSpec(**{"model": None, **model_flag_values(args)}))
    scoring = {name: getattr(args, name) for name in SCORER_SETTINGS if getattr(args, name) is not None}
    scorer = Scorer(loaded, layout=Layout(**flag_values(args, Layout)), **scoring)
    # Chunks as the Spark job's Arrow batches, whole queries each (see whole_queries): the
    # bar moves, and on a GPU the next chunk is tokenized while the current one is scored.
    order = pc.sort_indices(table, sort_keys=[(S.QUERY_ID, "ascending")])  # stable
    positions = order.to_numpy()
    scores = np.empty(table.num_rows, dtype=np.float32)
    done = 0
    with progress_bar(table.num_rows, desc="scoring", unit="pairs") as bar:
        for _, _, chunk_scores in scorer.score_stream(_chunks(table.take(order), CHUNK_ROWS)):
            scores[positions[done : done + len(chunk_scores)]] = chunk_scores
            done += len(chunk_scores)
            bar.update(len(chunk_scores))
    out = pa.table(
        {
            S.QUERY_ID: table.column(S.QUERY_ID).cast(pa.string()),
            S.DOC_ID: table.column(S.DOC_ID).cast(pa.string()),
            S.SCORE: pa.array(scores, type=pa.float32()),
        },
        schema=S.SCORE_FILE_SCHEMA,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(out, args.out)
    print(json.dumps({"pairs": len(scores), "out": args.out, "model": loaded.label, **scorer.stats.as_dict()}))
    return 0
