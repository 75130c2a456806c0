"""Small synthetic inputs for job tests, written as Parquet with the canonical columns."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dear_udf.testing import vocabulary


def write_inputs(directory: Path, *, queries: int = 12, docs: int = 150, per_query: int = 12, seed: int = 0) -> dict:
    """Clean inputs: every candidate has its query and document, no duplicates."""
    rng = random.Random(seed)
    words = vocabulary()
    directory.mkdir(parents=True, exist_ok=True)
    q = pa.table({"query_id": [f"q{i}" for i in range(queries)], "query": [" ".join(rng.choices(words, k=rng.randint(2, 8))) for _ in range(queries)]})
    d = pa.table(
        {
            "doc_id": [f"d{i}" for i in range(docs)],
            "title": [None if i % 4 == 0 else " ".join(rng.choices(words, k=2)) for i in range(docs)],
            "text": [" ".join(rng.choices(words, k=rng.randint(3, 160))) for _ in range(docs)],
        }
    )
    rows = []
    for i in range(queries):
        for rank, doc in enumerate(rng.sample(range(docs), per_query), start=1):
            rows.append((f"q{i}", f"d{doc}", rank, float(100 - rank)))
    c = pa.table(
        {
            "query_id": [r[0] for r in rows],
            "doc_id": [r[1] for r in rows],
            "first_stage_rank": pa.array([r[2] for r in rows], pa.int32()),
            "first_stage_score": [r[3] for r in rows],
        }
    )
    paths = {}
    for name, table in (("queries", q), ("corpus", d), ("candidates", c)):
        paths[name] = str(directory / f"{name}.parquet")
        pq.write_table(table, paths[name])
    return {"paths": paths, "queries": q, "corpus": d, "candidates": c}


def job_values(paths: dict, model_dir, output, **extra) -> dict:
    """Plain job settings over ``paths`` with the tiny model on CPU; ``extra`` overrides."""
    values = {
        "queries": paths["queries"],
        "corpus": paths["corpus"],
        "candidates": paths["candidates"],
        "output": str(output),
        "model": {"model": str(model_dir), "device": "cpu"},
        "run_id": "night-1",
        "top_k": 5,
        "depth": 100,
        "batch_size": 16,
    }
    values.update(extra)
    return values


def job_config(paths: dict, model_dir, output, **extra):
    """``job_values`` built into a ``JobConfig``."""
    from dear_udf.config import build_job_config

    return build_job_config(job_values(paths, model_dir, output, **extra))


def a_summary(**fields):
    """A finished run's summary with zero counts, ``fields`` overriding any part's field
    (``candidates_read=3``, ``dropped={...}``)."""
    import dataclasses

    from dear_udf.summary import PARTS, RunSummary

    zero = {dict: {}, list: [], int: 0, float: 0.0, bool: False, str: ""}

    def part(cls):
        values = {}
        for f in dataclasses.fields(cls):
            base = str(f.type).split("[")[0].split(" |")[0]
            empty = None if "None" in str(f.type) else zero.get({"dict": dict, "list": list, "int": int, "float": float, "bool": bool, "str": str}.get(base))
            if f.default is not dataclasses.MISSING:  # a field with a default (adapters_per_pair=1) keeps it
                empty = f.default
            values[f.name] = fields.get(f.name, empty)
        return cls(**values)

    head, read, join, score, output = (part(cls) for cls in PARTS)
    defaults = {"run_id": "night-1", "model": "m", "output": "out", "format": "delta"}
    head = dataclasses.replace(head, **{k: fields.get(k, v) for k, v in defaults.items()})
    return RunSummary(head=head, read_counts=read, join_counts=join, score_counts=score, output_counts=output,
                      write=fields.get("write", {}), metrics=fields.get("metrics"))
