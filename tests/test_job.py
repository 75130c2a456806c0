"""The Spark job end to end on local Spark against the tiny model."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dear_udf import schema as S
from dear_udf.exceptions import InputError

from .jobdata import job_config, write_inputs

pytestmark = [pytest.mark.spark]


def _config(paths, model_dir, output, **extra):
    return job_config(paths, model_dir, output, **extra)


def core_topk(data, model_dir, k):
    """What the scoring core gives on the same pairs, ranked as the job specifies."""
    from dear_udf.model import ModelSpec, load_model
    from dear_udf.scorer import Scorer

    cands = data["candidates"].to_pylist()
    queries = {r["query_id"]: r["query"] for r in data["queries"].to_pylist()}
    docs = {r["doc_id"]: r for r in data["corpus"].to_pylist()}
    scorer = Scorer(load_model(ModelSpec(model=str(model_dir))), batch_size=16)
    scores = scorer.score(
        [queries[c["query_id"]] for c in cands],
        [docs[c["doc_id"]]["title"] for c in cands],
        [docs[c["doc_id"]]["text"] for c in cands],
    )
    by_query: dict[str, list] = {}
    for c, s in zip(cands, scores):
        by_query.setdefault(c["query_id"], []).append((-float(s), c["first_stage_rank"], c["doc_id"], float(s)))
    return {q: [(d, s) for _, _, d, s in sorted(rows)[:k]] for q, rows in by_query.items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"))


def _read_delta(path):
    from deltalake import DeltaTable

    return DeltaTable(str(path)).to_pyarrow_table()


def test_topk_equals_core_and_delta_is_readable(spark, tiny_models, data, tmp_path):
    from dear_udf.spark.job import run_job

    out = tmp_path / "reranked"
    summary = run_job(_config(data["paths"], tiny_models["index227"], out), spark=spark)
    table = _read_delta(out)
    assert table.num_rows == summary.output_rows == 12 * 5
    assert table.schema.field(S.SCORE).type == pa.float32()
    expected = core_topk(data, tiny_models["index227"], 5)
    got: dict[str, list] = {}
    for row in sorted(table.to_pylist(), key=lambda r: (r[S.QUERY_ID], r[S.RANK])):
        got.setdefault(row[S.QUERY_ID], []).append((row[S.DOC_ID], row[S.SCORE]))
    assert set(got) == set(expected)
    for qid, rows in expected.items():
        assert [d for d, _ in got[qid]] == [d for d, _ in rows], qid
        np.testing.assert_allclose([s for _, s in got[qid]], [s for _, s in rows], atol=1e-4)
    assert {r[S.RUN_ID] for r in table.to_pylist()} == {"night-1"}
    assert all(r[S.MODEL].endswith(summary.settings["model_fingerprint"][:16]) for r in table.to_pylist())
    # The summary is beside the table, not inside it, and balances.
    written = json.loads((tmp_path / "reranked.night-1.summary.json").read_text())
    assert written["accounted"] is True
    assert written["candidates_read"] == written["pairs_scored"] == 12 * 12


def test_rerun_same_run_id_replaces_only_that_run(spark, tiny_models, data, tmp_path):
    from dear_udf.spark.job import run_job

    out = tmp_path / "reranked"
    config = _config(data["paths"], tiny_models["index227"], out, top_k=3)
    run_job(config, spark=spark)
    first = _read_delta(out)
    run_job(config, spark=spark)
    again = _read_delta(out)
    assert again.num_rows == first.num_rows == 36
    assert sorted(again.to_pylist(), key=str) == sorted(first.to_pylist(), key=str)
    run_job(_config(data["paths"], tiny_models["index227"], out, top_k=3, run_id="night-2"), spark=spark)
    both = _read_delta(out)
    assert both.num_rows == 72
    assert sorted(set(both.column(S.RUN_ID).to_pylist())) == ["night-1", "night-2"]


def _as_csv(data, directory):
    """The inputs as CSV files, as a search team's export writes them: candidates under
    other names (qid, docid, rank, score), the corpus gzipped with a BOM, a title left empty."""
    import csv
    import gzip

    names = {"candidates": {"query_id": "qid", "doc_id": "docid", "first_stage_rank": "rank", "first_stage_score": "score"}}
    paths = {}
    for kind, suffix in (("queries", ".csv"), ("corpus", ".csv.gz"), ("candidates", ".csv")):
        table = data[kind]
        paths[kind] = str(directory / f"{kind}{suffix}")
        opener = gzip.open if suffix.endswith(".gz") else open
        with opener(paths[kind], "wt", encoding="utf-8-sig" if kind == "corpus" else "utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([names.get(kind, {}).get(c, c) for c in table.column_names])
            writer.writerows(("" if v is None else v for v in row.values()) for row in table.to_pylist())
    return paths


def test_parquet_output_and_rerun(spark, tiny_models, data, tmp_path):
    """Also the job over CSV inputs (the local and Spark readers' CSV tests: test_parsers.py,
    test_spark_read.py)."""
    from dear_udf.spark.job import run_job

    out = tmp_path / "parquet-out"
    config = _config(_as_csv(data, tmp_path), tiny_models["last"], out, format="parquet", top_k=4)
    run_job(config, spark=spark)
    run_job(config, spark=spark)
    table = pq.read_table(out)
    assert table.num_rows == 48
    expected = core_topk(data, tiny_models["last"], 4)
    for qid, rows in expected.items():
        got = sorted((r for r in table.to_pylist() if r[S.QUERY_ID] == qid), key=lambda r: r[S.RANK])
        assert [r[S.DOC_ID] for r in got] == [d for d, _ in rows]


def test_ties_broken_by_first_stage_rank_then_doc_id(spark):
    from dear_udf.spark.stages import top_k

    rows = [
        ("q", "d3", 2, 9.0, 1.5),
        ("q", "d1", 3, 8.0, 1.5),
        ("q", "d2", 3, 8.0, 1.5),
        ("q", "d9", 9, 1.0, 2.0),
        ("q", "d0", 1, 10.0, 0.5),
    ]
    df = spark.createDataFrame(rows, "query_id string, doc_id string, first_stage_rank int, first_stage_score double, score float")
    got = [(r[S.DOC_ID], r[S.RANK]) for r in top_k(df, k=4, run_id="r", model="m").orderBy(S.RANK).collect()]
    assert got == [("d9", 1), ("d3", 2), ("d1", 3), ("d2", 4)]


def test_depth_and_drop_reasons_are_counted(spark, tiny_models, data, tmp_path):
    from dear_udf.spark.job import run_job

    cands = data["candidates"].to_pylist()
    extra = [
        {"query_id": "q0", "doc_id": "missing-doc", "first_stage_rank": 1, "first_stage_score": 1.0},
        {"query_id": "q-unknown", "doc_id": "d1", "first_stage_rank": 1, "first_stage_score": 1.0},
        dict(cands[0]),  # a duplicate row
        {"query_id": None, "doc_id": "d2", "first_stage_rank": 1, "first_stage_score": 1.0},
    ]
    path = tmp_path / "candidates.parquet"
    pq.write_table(pa.Table.from_pylist(cands + extra, schema=data["candidates"].schema), path)
    paths = dict(data["paths"], candidates=str(path))
    summary = run_job(_config(paths, tiny_models["index227"], tmp_path / "out", depth=10), spark=spark)
    assert summary.candidates_read == len(cands) + 4
    assert summary.dropped == {
        "doc_id_not_in_corpus": 1,
        "query_id_not_in_queries": 1,
        "duplicate_candidate": 1,
        "null_id": 1,
        # q0 has 13 distinct candidates (12 + missing-doc), the others 12; depth is 10.
        "beyond_depth": 3 + 11 * 2,
    }
    assert summary.pairs_scored == 12 * 10 - 1  # q0's missing-doc used a depth slot
    assert summary.accounted
    assert summary.queries_with_nothing_to_rank == ["q-unknown"]


def test_model_loads_once_per_worker_not_per_task(spark, tiny_models, data, tmp_path):
    from dear_udf.spark.job import run_job

    summary = run_job(_config(data["paths"], tiny_models["index227"], tmp_path / "o", scoring_partitions=8), spark=spark)
    workers = int(re.match(r"local\[(\d+)", spark.sparkContext.master).group(1))  # local[2,3]: 2 cores
    # 8 scoring tasks on 2 reused Python workers; the cache of an earlier test may even
    # make this run load nothing.
    assert summary.model_loads <= workers


def test_missing_columns_fail_before_scoring(spark, tiny_models, data, tmp_path):
    from dear_udf.spark.job import run_job

    bad = tmp_path / "queries.parquet"
    pq.write_table(pa.table({"query_id": ["q1"], "question": ["x"]}), bad)
    paths = dict(data["paths"], queries=str(bad))
    with pytest.raises(InputError, match=r"queries.parquet.*missing required column.*'query'"):
        run_job(_config(paths, tiny_models["index227"], tmp_path / "o"), spark=spark)
    assert not (tmp_path / "o").exists()
    paths = dict(data["paths"], corpus=str(tmp_path / "nope.parquet"))
    with pytest.raises(InputError, match="nope.parquet: no such file"):
        run_job(_config(paths, tiny_models["index227"], tmp_path / "o"), spark=spark)


def _with_bang_queries(data, directory):
    """The inputs with a "!" in the text of q0 and q3 (id 0 in the tiny tokenizer)."""
    queries = data["queries"].to_pylist()
    for row in queries:
        if row["query_id"] in ("q0", "q3"):
            row["query"] = row["query"] + "! now"
    path = directory / "bang-queries.parquet"
    pq.write_table(pa.Table.from_pylist(queries, schema=data["queries"].schema), path)
    return {**data["paths"], "queries": str(path)}, queries


@pytest.mark.parametrize("pooling", ["first-pad", "last-non-pad"])
def test_pooling_rule_and_queries_pooled_inside_the_query(spark, tiny_models, data, tmp_path, caplog, pooling):
    from dear_udf.spark.job import run_job

    paths, queries = _with_bang_queries(data, tmp_path)
    out = tmp_path / "reranked"
    config = _config(paths, tiny_models["index227"], out, top_k=12, layout={"pooling": pooling})
    with caplog.at_level("WARNING", logger="dear_udf.spark.job"):
        summary = run_job(config, spark=spark)
    assert summary.settings["pooling"] == pooling and summary.settings["special_tokens"] == "split"
    rows = sorted(_read_delta(out).to_pylist(), key=lambda r: (r[S.QUERY_ID], r[S.RANK]))
    if pooling == "first-pad":
        # Every candidate of q0 and q3 is pooled before the query's "!": one score each,
        # so the order stays the first stage's.
        assert summary.queries_pooled_in_query == 2
        assert summary.queries_pooled_in_query_examples == ["q0", "q3"]
        assert summary.pairs_pooled_in_query == 2 * 12
        assert summary.pairs_pooled_early >= 2 * 12
        for qid in ("q0", "q3"):
            mine = [r for r in rows if r[S.QUERY_ID] == qid]
            assert len({r[S.SCORE] for r in mine}) == 1
            assert [r[S.FIRST_STAGE_RANK] for r in mine] == list(range(1, 13))
        assert "2 queries are pooled inside the query" in caplog.text and "q0, q3" in caplog.text
    else:
        assert summary.pairs_pooled_early == summary.pairs_pooled_in_query == summary.queries_pooled_in_query == 0
        assert len({r[S.SCORE] for r in rows if r[S.QUERY_ID] == "q0"}) > 1
        assert "pooled inside the query" not in caplog.text
    written = json.loads(open(config.summary_path).read())
    assert written["queries_pooled_in_query"] == summary.queries_pooled_in_query


def test_layout_flags_and_yaml_reach_the_config(tmp_path):
    import argparse

    from dear_udf.spark.job import add_arguments, config_from_args

    yaml_file = tmp_path / "conf.yaml"
    yaml_file.write_text("layout:\n  pooling: last-non-pad\n  special_tokens: parse\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--queries", "q", "--corpus", "c", "--candidates", "r", "--model", "m", "--output", "o"]
    assert config_from_args(parser.parse_args(base)).layout.pooling == "first-pad"
    from_file = config_from_args(parser.parse_args([*base, "--config", str(yaml_file)])).layout
    assert (from_file.pooling, from_file.special_tokens) == ("last-non-pad", "parse")
    flags = parser.parse_args([*base, "--config", str(yaml_file), "--pooling", "first-pad"])
    assert (config_from_args(flags).layout.pooling, config_from_args(flags).layout.special_tokens) == ("first-pad", "parse")
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--pooling", "last"])


def test_a_long_lived_session_reloads_a_model_whose_files_changed_in_place(spark, tiny_models, data, tmp_path):
    """A notebook or an all-purpose cluster keeps its Python workers, and their loaded model,
    across runs. After the model's files change in place the next run must score with the
    new files, as a fresh process would, not refuse nor use the old weights."""
    import shutil

    from dear_udf.spark.job import run_job
    from dear_udf.testing import build_tiny_dear

    model = tmp_path / "model"
    shutil.copytree(tiny_models["index227"], model)
    first = run_job(_config(data["paths"], model, tmp_path / "before"), spark=spark)
    retrained = build_tiny_dear(tmp_path / "retrained", seed=5)  # same shape, other weights
    shutil.copy(retrained / "model.safetensors", model / "model.safetensors")
    second = run_job(_config(data["paths"], model, tmp_path / "after"), spark=spark)
    assert second.settings["model_fingerprint"] != first.settings["model_fingerprint"]
    # What a fresh process gives with the new files (another path: another cache entry).
    fresh = run_job(_config(data["paths"], retrained, tmp_path / "fresh"), spark=spark)
    assert second.settings["model_fingerprint"] == fresh.settings["model_fingerprint"]
    after = {(r[S.QUERY_ID], r[S.DOC_ID]): (r[S.RANK], r[S.SCORE]) for r in _read_delta(tmp_path / "after").to_pylist()}
    want = {(r[S.QUERY_ID], r[S.DOC_ID]): (r[S.RANK], r[S.SCORE]) for r in _read_delta(tmp_path / "fresh").to_pylist()}
    assert after.keys() == want.keys() and all(after[k][0] == want[k][0] for k in want)
    np.testing.assert_allclose([after[k][1] for k in want], [want[k][1] for k in want], atol=1e-6)
    before = {(r[S.QUERY_ID], r[S.DOC_ID]): r[S.SCORE] for r in _read_delta(tmp_path / "before").to_pylist()}
    assert any(abs(before[k] - after[k][1]) > 1e-3 for k in after if k in before)  # really the new weights
