"""Local readers and the TREC writer: every format, malformed input, ids, renames, UTF-8."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake

from dear_udf.config import InputSpec
from dear_udf.exceptions import InputError, OutputError
from dear_udf.io import (
    infer_format,
    read_candidates,
    read_corpus,
    read_qrels,
    read_queries,
    read_run,
    read_trec_run,
    write_trec_run,
)
from dear_udf.io import rules


def _write(path: Path, content: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    if path.name.endswith(".gz"):
        content = gzip.compress(content)
    path.write_bytes(content)
    return str(path)


@pytest.fixture
def beir(tmp_path) -> Path:
    root = tmp_path / "scifact"
    _write(root / "corpus.jsonl", '{"_id": "d1", "title": "T1", "text": "one"}\n{"_id": 2, "text": "two"}\n')
    _write(root / "queries.jsonl", '{"_id": 10, "text": "what?", "metadata": {}}\n')
    _write(root / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\n10\td1\t1\n10\t2\t0\n")
    return root


# ----------------------------------------------------------------------------- infer_format


def test_infer_format_by_layout_and_name(tmp_path, beir):
    delta = tmp_path / "delta"
    write_deltalake(str(delta), pa.table({"x": [1]}))
    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    pq.write_table(pa.table({"x": [1]}), pq_dir / "part-0.parquet")
    files = {
        "a.parquet": "parquet",
        "q.jsonl": "jsonl",
        "q.json": "jsonl",
        "q.jsonl.gz": "jsonl",
        "collection.tsv": "tsv",
        "queries.txt": "tsv",
        "c.tsv.gz": "tsv",
        "bm25.trec": "trec",
        "bm25.run": "trec",
        "qrels.dev.tsv": "qrels",
        "2019qrels-pass.txt": "qrels",
    }
    for name, fmt in files.items():
        assert infer_format(_write(tmp_path / name, "")) == fmt, name
    assert infer_format(str(delta)) == "delta"
    assert infer_format(str(beir)) == "beir"
    assert infer_format(str(beir / "qrels" / "test.tsv")) == "qrels"
    assert infer_format(str(pq_dir)) == "parquet"
    assert infer_format("prod.search.bm25_top100") == "table"
    assert infer_format("s3://bucket/runs/bm25.trec") == "trec"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.tsv", "missing.tsv: no such file or folder"),
        ("nested/missing.b.c", "no such file or folder"),
        ("s3://bucket/folder", "cannot tell the format of a remote path"),
    ],
)
def test_infer_format_refuses_missing_or_unknown(tmp_path, name, message):
    path = name if "://" in name else str(tmp_path / name)
    with pytest.raises(InputError, match=message):
        infer_format(path)


def test_infer_format_refuses_unknown_file_and_folder(tmp_path):
    odd = _write(tmp_path / "data.xyz", "x")
    with pytest.raises(InputError, match=r"data\.xyz: cannot tell the format"):
        infer_format(odd)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: cannot tell the folder's format"):
        infer_format(str(tmp_path / "empty"))


# ----------------------------------------------------------------------------- text formats


def test_tsv_queries_and_corpus(tmp_path):
    q = _write(tmp_path / "queries.tsv", "1\twhat is dear?\n 2 \tsecond\twith a tab\n\n")
    assert read_queries(InputSpec(q)).to_pylist() == [
        {"query_id": "1", "query": "what is dear?"},
        {"query_id": "2", "query": "second\twith a tab"},  # text is all after the first tab
    ]
    c = _write(tmp_path / "collection.tsv.gz", "7\tpassage seven\r\n8\tpassage eight\r\n")
    table = read_corpus(InputSpec(c))
    assert table.schema == pa.schema([("doc_id", pa.string()), ("title", pa.string()), ("text", pa.string())])
    assert table.to_pylist() == [
        {"doc_id": "7", "title": None, "text": "passage seven"},
        {"doc_id": "8", "title": None, "text": "passage eight"},
    ]


def test_tsv_line_without_tab_names_file_and_line(tmp_path):
    path = _write(tmp_path / "collection.tsv", "1\tok\n\n2 no tab here\n")
    with pytest.raises(InputError, match=r"collection\.tsv, line 3: expected 2 fields \(id<TAB>text\), found no tab"):
        read_corpus(InputSpec(path))


def test_invalid_utf8_becomes_replacement_character(tmp_path):
    path = _write(tmp_path / "collection.tsv", b"1\tcaf\xe9 au lait\n2\ttruncated \xe2\x82\n")
    texts = read_corpus(InputSpec(path)).column("text").to_pylist()
    assert texts == ["caf\ufffd au lait", "truncated \ufffd"]


def test_trec_run_as_candidates_and_as_run(tmp_path):
    path = _write(tmp_path / "bm25.trec", "q1 Q0 d1 1 12.5 bm25\nq1 Q0 d2 2 11 bm25\n\nq2\tQ0\td9\t1\t-3e0\tbm25\n")
    cand = read_candidates(InputSpec(path))
    assert cand.schema.field("first_stage_rank").type == pa.int32()
    assert cand.schema.field("first_stage_score").type == pa.float64()
    assert cand.to_pylist() == [
        {"query_id": "q1", "doc_id": "d1", "first_stage_rank": 1, "first_stage_score": 12.5},
        {"query_id": "q1", "doc_id": "d2", "first_stage_rank": 2, "first_stage_score": 11.0},
        {"query_id": "q2", "doc_id": "d9", "first_stage_rank": 1, "first_stage_score": -3.0},
    ]
    run = read_trec_run(path)
    assert run.column_names == ["query_id", "doc_id", "rank", "score"]
    assert run.column("rank").to_pylist() == [1, 2, 1]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("q1 Q0 d3 3 9.0", r"line 2: expected 6 fields \(query_id q0 doc_id rank score tag\), got 5"),
        ("q1 Q0 d3 third 9.0 bm25", r"line 2: rank must be an integer, got 'third'"),
        ("q1 Q0 d3 3 high bm25", r"line 2: score must be a number, got 'high'"),
        ("q1\u00a0Q0 d3 3 9.0 bm25", r"line 2: expected 6 fields"),  # NBSP is no separator, as in Spark
    ],
)
def test_malformed_trec_run_names_file_and_line(tmp_path, line, message):
    path = _write(tmp_path / "bm25.trec", f"q1 Q0 d1 1 10.0 bm25\n{line}\n")
    with pytest.raises(InputError, match=rf"bm25\.trec, {message}"):
        read_candidates(InputSpec(path))
    with pytest.raises(InputError, match=rf"bm25\.trec, {message}"):
        read_trec_run(path)


def test_trec_qrels_and_beir_qrels(tmp_path, beir):
    trec = _write(tmp_path / "qrels.dev.txt", "1 0 7 1\n1 0 8 0\n2\t0\t9\t2\n")
    table = read_qrels(InputSpec(trec))
    assert table.schema == pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("relevance", pa.int32())])
    assert table.to_pylist() == [
        {"query_id": "1", "doc_id": "7", "relevance": 1},
        {"query_id": "1", "doc_id": "8", "relevance": 0},
        {"query_id": "2", "doc_id": "9", "relevance": 2},
    ]
    expected = [{"query_id": "10", "doc_id": "d1", "relevance": 1}, {"query_id": "10", "doc_id": "2", "relevance": 0}]
    assert read_qrels(InputSpec(str(beir))).to_pylist() == expected
    assert read_qrels(InputSpec(str(beir / "qrels" / "test.tsv"))).to_pylist() == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1 0 7 1\n1 0 8\n", r"line 2: expected 4 fields \(query_id iteration doc_id relevance\), got 3"),
        ("1 0 7 1\n\n1 0 8 yes\n", r"line 3: relevance must be an integer, got 'yes'"),
        ("query-id\tcorpus-id\tscore\n1\t7\n", r"line 2: expected 3 fields \(query-id corpus-id score\), got 2"),
    ],
)
def test_malformed_qrels_names_file_and_line(tmp_path, content, message):
    path = _write(tmp_path / "qrels.txt", content)
    with pytest.raises(InputError, match=rf"qrels\.txt, {message}"):
        read_qrels(InputSpec(path))


def test_fixed_layout_refuses_column_mapping(tmp_path):
    path = _write(tmp_path / "queries.tsv", "1\tq\n")
    with pytest.raises(InputError, match="fixed layout"):
        read_queries(InputSpec(path, columns={"query_id": "qid"}))


def test_format_that_holds_no_such_input(tmp_path, beir):
    with pytest.raises(InputError, match="holds no first-stage candidates"):
        read_candidates(InputSpec(str(beir)))
    run = _write(tmp_path / "bm25.trec", "q1 Q0 d1 1 1.0 t\n")
    with pytest.raises(InputError, match="format 'trec' holds no queries"):
        read_queries(InputSpec(run))
    with pytest.raises(InputError, match="catalog tables need a Spark session"):
        read_queries(InputSpec("prod.search.queries"))


# ----------------------------------------------------------------------------- JSON Lines


def test_beir_folder_queries_and_corpus(beir):
    assert read_queries(InputSpec(str(beir))).to_pylist() == [{"query_id": "10", "query": "what?"}]
    corpus = read_corpus(InputSpec(str(beir)))
    assert corpus.to_pylist() == [
        {"doc_id": "d1", "title": "T1", "text": "one"},
        {"doc_id": "2", "title": None, "text": "two"},  # integer id -> "2", absent title -> null
    ]


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = _write(tmp_path / "corpus.jsonl", '{"doc_id": "a", "text": "x"}\n{"doc_id": "b", "text": \n')
    with pytest.raises(InputError, match=r"corpus\.jsonl, line 2: not a JSON object: "):
        read_corpus(InputSpec(path))
    path = _write(tmp_path / "c2.jsonl", '{"doc_id": "a", "text": "x"}\n["b", "y"]\n')
    with pytest.raises(InputError, match=r"c2\.jsonl, line 2: not a JSON object: '\["):
        read_corpus(InputSpec(path))


def test_jsonl_record_without_id_keeps_a_null_id(tmp_path):
    # As the Spark reader does: the job counts such rows (rows_without_id), never loses them.
    path = _write(tmp_path / "corpus.jsonl", '{"doc_id": "a", "text": "x"}\n\n{"text": "y"}\n')
    assert read_corpus(InputSpec(path)).select(["doc_id", "text"]).to_pylist() == [
        {"doc_id": "a", "text": "x"},
        {"doc_id": None, "text": "y"},
    ]


def test_jsonl_invalid_utf8_is_replaced(tmp_path):
    path = _write(tmp_path / "queries.jsonl", b'{"query_id": "1", "query": "na\xefve"}\n')
    assert read_queries(InputSpec(path)).column("query").to_pylist() == ["na\ufffdve"]


# ----------------------------------------------------------------------------- Parquet, Delta


def test_parquet_integer_ids_are_cast_to_string_and_columns_renamed(tmp_path):
    path = tmp_path / "cands.parquet"
    pq.write_table(
        pa.table({"qid": [1, 1, 2], "pid": [10, 20, 30], "rank": pa.array([1, 2, 1], pa.int64()), "extra": [0, 0, 0]}),
        path,
    )
    table = read_candidates(InputSpec(str(path), columns={"query_id": "qid", "doc_id": "pid"}))
    assert table.schema.names == ["query_id", "doc_id", "first_stage_rank", "first_stage_score"]
    assert table.column("query_id").to_pylist() == ["1", "1", "2"]
    assert table.column("doc_id").to_pylist() == ["10", "20", "30"]
    assert table.column("first_stage_rank").type == pa.int32()  # "rank" taken as first_stage_rank
    assert table.column("first_stage_score").null_count == 3


def test_parquet_folder_written_by_spark(tmp_path):
    folder = tmp_path / "queries"
    folder.mkdir()
    pq.write_table(pa.table({"query_id": ["a"], "query": ["x"]}), folder / "part-00000.parquet")
    pq.write_table(pa.table({"query_id": ["b"], "query": ["y"]}), folder / "part-00001.parquet")
    (folder / "_SUCCESS").write_text("")
    assert sorted(read_queries(InputSpec(str(folder))).column("query_id").to_pylist()) == ["a", "b"]


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"docnum": ["1"], "body_html": ["x"]}), path)
    with pytest.raises(
        InputError,
        match=r"corpus\.parquet: missing required column\(s\) \['doc_id', 'text'\] for corpus; columns present: \['docnum', 'body_html'\]",
    ):
        read_corpus(InputSpec(str(path)))
    with pytest.raises(InputError, match=r"mapped column\(s\) \['passage_text'\] not found"):
        read_corpus(InputSpec(str(path), columns={"doc_id": "docnum", "text": "passage_text"}))
    with pytest.raises(InputError, match=r"unknown canonical name\(s\) \['docid'\]"):
        read_corpus(InputSpec(str(path), columns={"docid": "docnum"}))
    assert read_corpus(InputSpec(str(path), columns={"doc_id": "docnum", "text": "body_html"})).num_rows == 1


def test_aliases_of_other_tools_are_accepted(tmp_path):
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"pid": [3], "contents": ["x"]}), path)  # Pyserini's names
    assert read_corpus(InputSpec(str(path))).to_pylist() == [{"doc_id": "3", "title": None, "text": "x"}]


def test_candidates_need_rank_or_score(tmp_path):
    path = tmp_path / "cands.parquet"
    pq.write_table(pa.table({"query_id": ["1"], "doc_id": ["2"]}), path)
    with pytest.raises(InputError, match="candidates need a first-stage rank or score column"):
        read_candidates(InputSpec(str(path)))


def test_nan_first_stage_score_reads_null(tmp_path):
    path = tmp_path / "cands.parquet"
    pq.write_table(pa.table({"query_id": ["1", "1"], "doc_id": ["2", "3"], "score": [float("nan"), 1.0]}), path)
    assert read_candidates(InputSpec(str(path))).column("first_stage_score").to_pylist() == [None, 1.0]


def test_null_ids_are_kept_and_evaluation_drops_them(tmp_path, caplog):
    from dear_udf.evaluate import load_qrels

    path = tmp_path / "q.parquet"
    pq.write_table(pa.table({"query_id": ["1", None], "query": ["a", "b"]}), path)
    assert read_queries(InputSpec(str(path))).column("query_id").to_pylist() == ["1", None]
    qrels = tmp_path / "qrels.parquet"
    pq.write_table(pa.table({"query_id": ["1", None, " "], "doc_id": ["d", "e", "f"], "relevance": [1, 1, 1]}), qrels)
    with caplog.at_level("WARNING"):
        assert load_qrels(str(qrels)).to_pylist() == [{"query_id": "1", "doc_id": "d", "relevance": 1}]
    assert "2 rows without a query_id or doc_id" in caplog.text


def test_bad_column_type_is_named(tmp_path):
    path = tmp_path / "qrels.parquet"
    pq.write_table(pa.table({"query_id": ["1"], "doc_id": ["2"], "relevance": ["very"]}), path)
    with pytest.raises(InputError, match=r"column 'relevance' of type string cannot be read as int32"):
        read_qrels(InputSpec(str(path)))


def test_delta_table_with_renamed_columns(tmp_path):
    uri = tmp_path / "qrels_delta"
    write_deltalake(str(uri), pa.table({"q": [5, 6], "d": ["a", "b"], "label": [1.0, 0.0]}))
    table = read_qrels(InputSpec(str(uri), columns={"query_id": "q", "doc_id": "d"}))
    assert table.to_pylist() == [
        {"query_id": "5", "doc_id": "a", "relevance": 1},
        {"query_id": "6", "doc_id": "b", "relevance": 0},
    ]


def test_readers_import_no_spark_or_deltalake():
    code = (
        "import sys, dear_udf.io, dear_udf.evaluate, dear_udf.report; "
        "print(sorted(m for m in ('pyspark', 'deltalake', 'pandas', 'ir_measures', 'matplotlib', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- TREC writer


def test_write_trec_run_sorts_and_round_trips(tmp_path):
    df = pd.DataFrame(
        {
            "query_id": ["q2", "q1", "q1", "q10"],
            "doc_id": ["d5", "d2", "d1", "d7"],
            "rank": [1, 2, 1, 1],
            "score": [0.5, 0.1, 0.30000001192092896, -2.0],
        }
    )
    path = tmp_path / "out.trec"
    assert write_trec_run(df, path, tag="dear-test") == 4
    lines = path.read_text().splitlines()
    assert lines == [
        "q1 Q0 d1 1 0.30000001192092896 dear-test",
        "q1 Q0 d2 2 0.1 dear-test",
        "q10 Q0 d7 1 -2.0 dear-test",
        "q2 Q0 d5 1 0.5 dear-test",
    ]
    back = read_trec_run(path)
    assert back.column("score").to_pylist() == [0.30000001192092896, 0.1, -2.0, 0.5]
    assert back.column("doc_id").to_pylist() == ["d1", "d2", "d7", "d5"]


def test_write_trec_run_refuses_bad_input(tmp_path):
    base = {"query_id": ["q 1"], "doc_id": ["d1"], "rank": [1], "score": [1.0]}
    with pytest.raises(OutputError, match=r"ids must hold no whitespace.*query_id='q 1'"):
        write_trec_run(pa.table(base), tmp_path / "a.trec")
    with pytest.raises(OutputError, match=r"missing column\(s\) \['score'\]"):
        write_trec_run(pa.table({k: v for k, v in base.items() if k != "score"}), tmp_path / "b.trec")
    with pytest.raises(OutputError, match="tag must be a non-empty word"):
        write_trec_run(pa.table(base), tmp_path / "c.trec", tag="two words")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


# ----------------------------------------------------------------------------- runs


def test_read_run_picks_one_run_of_the_output_table(tmp_path):
    path = tmp_path / "out.parquet"
    pq.write_table(
        pa.table(
            {
                "query_id": ["q", "q", "q"],
                "doc_id": ["a", "b", "a"],
                "rank": [1, 2, 1],
                "score": [2.0, 1.0, 5.0],
                "run_id": ["r1", "r1", "r2"],
            }
        ),
        path,
    )
    with pytest.raises(InputError, match=r"holds 2 runs \['r1', 'r2'\]; choose one with run_id"):
        read_run(str(path))
    assert read_run(str(path), run_id="r2").to_pylist() == [{"query_id": "q", "doc_id": "a", "score": 5.0}]
    with pytest.raises(InputError, match="run_id 'r3' not found"):
        read_run(str(path), run_id="r3")


def test_read_run_from_rank_only_candidates_orders_by_rank(tmp_path):
    path = tmp_path / "cands.parquet"
    pq.write_table(pa.table({"query_id": ["q", "q"], "doc_id": ["a", "b"], "first_stage_rank": [2, 1]}), path)
    assert read_run(str(path)).column("score").to_pylist() == [-2.0, -1.0]


def test_shared_rules_match_spark_split_semantics():
    # The Spark reader trims spaces then splits at \s+: a leading tab makes an empty field.
    assert rules.split_trec("  q1 Q0 d1 1 2.0 t ") == ["q1", "Q0", "d1", "1", "2.0", "t"]
    assert rules.split_trec("\tq1 Q0 d1 1 2.0 t")[0] == ""
    assert rules.is_blank("   ") and not rules.is_blank("\t")
