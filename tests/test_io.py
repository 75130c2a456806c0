"""Reading without Spark (the ``eval`` and ``report`` commands' qrels and runs), format
inference, and the TREC writer. The parser itself is tested in ``test_parsers.py``."""

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
from dear_udf.io import infer_format, read_local, read_run, write_trec_run
from dear_udf.io.formats import check_input


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


# ----------------------------------------------------------------------------- text files


def test_trec_run_as_candidates_and_as_run(tmp_path):
    path = _write(tmp_path / "bm25.trec.gz", "q1 Q0 d1 1 12.5 bm25\r\nq1 Q0 d2 2 11 bm25\n\nq2\tQ0\td\xe9\t1\t-3e0\tbm25")
    cand = read_local(InputSpec(path), "candidates")
    assert cand.schema.field("first_stage_rank").type == pa.int32()
    assert cand.schema.field("first_stage_score").type == pa.float64()
    assert cand.to_pylist() == [
        {"query_id": "q1", "doc_id": "d1", "first_stage_rank": 1, "first_stage_score": 12.5},
        {"query_id": "q1", "doc_id": "d2", "first_stage_rank": 2, "first_stage_score": 11.0},
        {"query_id": "q2", "doc_id": "d\xe9", "first_stage_rank": 1, "first_stage_score": -3.0},
    ]
    assert read_run(path).to_pylist() == [
        {"query_id": "q1", "doc_id": "d1", "score": 12.5},
        {"query_id": "q1", "doc_id": "d2", "score": 11.0},
        {"query_id": "q2", "doc_id": "d\xe9", "score": -3.0},
    ]


def test_invalid_utf8_becomes_replacement_character(tmp_path):
    path = _write(tmp_path / "qrels.txt", b"q1 0 caf\xe9 1\nq1 0 truncated\xe2\x82 0\n")
    assert read_local(InputSpec(path), "qrels").column("doc_id").to_pylist() == ["caf\ufffd", "truncated\ufffd"]


def test_a_bad_line_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bm25.trec", "q1 Q0 d1 1 10.0 bm25\n\nq1 Q0 d3 third 9.0 bm25\n")
    with pytest.raises(InputError, match=rf"^{path}, line 3: rank must be an integer, got 'third'\.$"):
        read_run(path)
    qrels = _write(tmp_path / "qrels.txt", "1 0 7 1\n1 0 8\n")
    with pytest.raises(InputError, match=r"qrels\.txt, line 2: expected 4 fields \(query_id iteration doc_id relevance\), got 3"):
        read_local(InputSpec(qrels), "qrels")


def test_trec_qrels_and_beir_qrels(tmp_path, beir):
    trec = _write(tmp_path / "qrels.dev.txt", "1 0 7 1\n1 0 8 0\n2\t0\t9\t2\n")
    table = read_local(InputSpec(trec), "qrels")
    assert table.schema == pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("relevance", pa.int32())])
    assert table.to_pylist() == [
        {"query_id": "1", "doc_id": "7", "relevance": 1},
        {"query_id": "1", "doc_id": "8", "relevance": 0},
        {"query_id": "2", "doc_id": "9", "relevance": 2},
    ]
    expected = [{"query_id": "10", "doc_id": "d1", "relevance": 1}, {"query_id": "10", "doc_id": "2", "relevance": 0}]
    assert read_local(InputSpec(str(beir)), "qrels").to_pylist() == expected
    assert read_local(InputSpec(str(beir / "qrels" / "test.tsv")), "qrels").to_pylist() == expected
    assert read_local(InputSpec(f"file:{beir}"), "qrels").to_pylist() == expected  # a file: URI is a local path


def test_inputs_that_cannot_be_read_as_asked_are_refused(tmp_path, beir):
    path = _write(tmp_path / "qrels.txt", "1 0 7 1\n")
    with pytest.raises(InputError, match=r"columns \{'query_id': 'qid'\} given, but 'qrels' files have a fixed layout"):
        check_input(InputSpec(path, columns={"query_id": "qid"}), "qrels")
    with pytest.raises(InputError, match=r"fixed layout"):
        check_input(InputSpec(str(beir), columns={"query_id": "qid"}), "qrels")
    with pytest.raises(InputError, match="a BEIR folder holds no first-stage candidates; give a run file"):
        read_run(str(beir))
    (beir / "qrels" / "test.tsv").unlink()
    with pytest.raises(InputError, match=r"scifact: this BEIR folder has no qrels/test\.tsv, needed for qrels\."):
        read_local(InputSpec(str(beir)), "qrels")
    for where in ("prod.search.judgements", "s3://bucket/qrels.txt"):
        with pytest.raises(InputError, match="catalog tables and remote paths need a Spark session"):
            read_local(InputSpec(where), "qrels")


# ----------------------------------------------------------------------------- Parquet, Delta


def test_parquet_integer_ids_are_cast_to_string_and_columns_renamed(tmp_path):
    path = tmp_path / "cands.parquet"
    pq.write_table(
        pa.table({"qid": [1, 1, 2], "pid": [10, 20, 30], "rank": pa.array([1, 2, 1], pa.int64()), "extra": [0, 0, 0]}),
        path,
    )
    table = read_local(InputSpec(str(path), columns={"query_id": "qid", "doc_id": "pid"}), "candidates")
    assert table.schema.names == ["query_id", "doc_id", "first_stage_rank", "first_stage_score"]
    assert table.column("query_id").to_pylist() == ["1", "1", "2"]
    assert table.column("doc_id").to_pylist() == ["10", "20", "30"]
    assert table.column("first_stage_rank").type == pa.int32()  # "rank" taken as first_stage_rank
    assert table.column("first_stage_score").null_count == 3


def test_parquet_folder_written_by_spark(tmp_path):
    folder = tmp_path / "qrels"
    folder.mkdir()
    pq.write_table(pa.table({"query_id": ["a"], "doc_id": ["x"], "relevance": [1]}), folder / "part-00000.parquet")
    pq.write_table(pa.table({"query_id": ["b"], "doc_id": ["y"], "relevance": [0]}), folder / "part-00001.parquet")
    (folder / "_SUCCESS").write_text("")
    assert sorted(read_local(InputSpec(str(folder)), "qrels").column("query_id").to_pylist()) == ["a", "b"]


def test_missing_columns_are_named_with_the_path(tmp_path):
    path = tmp_path / "qrels.parquet"
    pq.write_table(pa.table({"qid": ["1"], "docnum": ["2"], "grade": [1]}), path)
    with pytest.raises(
        InputError,
        match=r"qrels\.parquet: missing required column\(s\) \['doc_id', 'relevance'\] for qrels; columns present: \['qid', 'docnum', 'grade'\]",
    ):
        read_local(InputSpec(str(path)), "qrels")
    mapped = read_local(InputSpec(str(path), columns={"doc_id": "docnum", "relevance": "grade"}), "qrels")
    assert mapped.to_pylist() == [{"query_id": "1", "doc_id": "2", "relevance": 1}]  # qid: an alias of query_id


def test_nan_first_stage_score_reads_null(tmp_path):
    path = tmp_path / "cands.parquet"
    pq.write_table(pa.table({"query_id": ["1", "1"], "doc_id": ["2", "3"], "score": [float("nan"), 1.0]}), path)
    assert read_local(InputSpec(str(path)), "candidates").column("first_stage_score").to_pylist() == [None, 1.0]


def test_null_ids_are_kept_and_evaluation_drops_them(tmp_path, caplog):
    from dear_udf.evaluate import load_qrels

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"query_id": ["1", None], "doc_id": ["a", "b"], "rank": [1, 1]}), path)
    assert read_local(InputSpec(str(path)), "candidates").column("query_id").to_pylist() == ["1", None]
    qrels = tmp_path / "qrels.parquet"
    pq.write_table(pa.table({"query_id": ["1", None, " "], "doc_id": ["d", "e", "f"], "relevance": [1, 1, 1]}), qrels)
    with caplog.at_level("WARNING"):
        assert load_qrels(str(qrels)).to_pylist() == [{"query_id": "1", "doc_id": "d", "relevance": 1}]
    assert "2 rows without a query_id or doc_id" in caplog.text


def test_bad_column_type_is_named(tmp_path):
    path = tmp_path / "qrels.parquet"
    pq.write_table(pa.table({"query_id": ["1"], "doc_id": ["2"], "relevance": ["very"]}), path)
    with pytest.raises(InputError, match=r"column 'relevance' of type string cannot be read as int32"):
        read_local(InputSpec(str(path)), "qrels")


def test_delta_table_with_renamed_columns(tmp_path):
    uri = tmp_path / "qrels_delta"
    write_deltalake(str(uri), pa.table({"q": [5, 6], "d": ["a", "b"], "label": [1.0, 0.0]}))
    table = read_local(InputSpec(str(uri), columns={"query_id": "q", "doc_id": "d"}), "qrels")
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
    back = read_run(str(path))
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


def test_read_run_of_a_delta_output_table_partitioned_by_run(tmp_path):
    path = tmp_path / "reranked"
    rows = {"query_id": ["q", "q", "q"], "doc_id": ["a", "b", "a"], "rank": [1, 2, 1], "score": [2.0, 1.0, 5.0], "run_id": ["r1", "r1", "r2"]}
    write_deltalake(str(path), pa.table(rows), partition_by=["run_id"])
    assert read_run(str(path), run_id="r1").to_pylist() == [
        {"query_id": "q", "doc_id": "a", "score": 2.0},
        {"query_id": "q", "doc_id": "b", "score": 1.0},
    ]
    with pytest.raises(InputError, match=r"holds 2 runs \['r1', 'r2'\]"):
        read_run(f"file://{path}")
