"""The Spark reader, what a night runs (``spark/read.py``): what Spark adds to the shared parser.

The parser's rows and reasons are checked without Spark (``tests/test_parsers.py``); here,
what only the Spark side does: splitting a file into lines (``\\n`` only) and decoding
them, numbering a bad line across Arrow batches, telling a header in the file's first
batch, JSON Lines in two passes, BEIR folders, gzip, Parquet footers, catalog tables, and
Delta tables read without Spark's Delta.
"""

from __future__ import annotations

import gzip
import re
import json

import pyarrow as pa
import pytest

from dear_udf.config import InputSpec
from dear_udf.exceptions import InputError

pytestmark = [pytest.mark.spark]

COLUMNS = {
    "queries": ("query_id", "query"),
    "corpus": ("doc_id", "title", "text"),
    "candidates": ("query_id", "doc_id", "first_stage_rank", "first_stage_score"),
    "qrels": ("query_id", "doc_id", "relevance"),
}


def _read(spark, path, kind, **spec):
    from dear_udf.spark.read import read_input

    rows = read_input(spark, InputSpec(str(path), **spec), kind).collect()
    return sorted((tuple(r[c] for c in COLUMNS[kind]) for r in rows), key=repr)


def _error(spark, path, kind, **spec) -> str:
    from dear_udf.spark.read import read_input

    with pytest.raises(InputError) as info:
        read_input(spark, InputSpec(str(path), **spec), kind)
    return str(info.value)


def test_tsv_lines_end_at_newlines_only_and_decode_as_utf8(spark, tmp_path):
    """200 lines (more than one Arrow batch of the test session) with CRLF endings, a bare CR
    inside a text, blank and space-only lines, spaces around ids and invalid UTF-8. Spark's
    default line reader would split at the bare CR: 201 rows, a phantom id."""
    lines = [f"d{i}\ttext {i}".encode() + (b"\r\n" if i % 3 == 0 else b"\n") for i in range(200)]
    lines[7] = b"d7\tbefore\rd-phantom\tafter\n"
    lines[8] = b"d8\tends in a bare cr\r\r\n"  # only the CR of the CRLF ending is dropped
    lines[9] = b" d9 \tcaf\xe9 \ttab\n"  # a lone Latin-1 byte
    lines[10] = b"d10\ttruncated \xe2\x82\n\n   \n"  # a cut multi-byte sequence, then blank lines
    path = tmp_path / "collection.tsv"
    path.write_bytes(b"".join(lines))
    texts = {doc_id: (title, text) for doc_id, title, text in _read(spark, path, "corpus")}
    assert len(texts) == 200
    assert texts["d7"] == (None, "before\rd-phantom\tafter")
    assert texts["d8"] == (None, "ends in a bare cr\r")
    assert texts["d9"] == (None, "caf\ufffd \ttab")
    assert texts["d10"] == (None, "truncated \ufffd")
    assert texts["d0"] == (None, "text 0") and texts["d199"] == (None, "text 199")


def test_a_bad_line_is_named_by_file_and_line(spark, tmp_path):
    """Lines are counted over the whole file, blank ones too; a bare CR ends no line."""
    lines = [f"d{i}\ttext {i}\n".encode() for i in range(150)]
    lines[0] = b"d0\tone\rmore\n\n"
    lines[120] = b"d120 no tab here\n"  # line 122, in another Arrow batch than the first
    path = tmp_path / "collection.tsv"
    path.write_bytes(b"".join(lines))
    assert _error(spark, path, "corpus") == f"{path}, line 122: expected 2 fields (id<TAB>text), found no tab."
    broken = tmp_path / "corpus.jsonl"
    broken.write_bytes(b'{"doc_id": "a", "text": "x"}\n\n{"doc_id": "b", "text": \n')
    assert _error(spark, broken, "corpus") == f"{broken}, line 3: not a JSON object: '{{\"doc_id\": \"b\", \"text\": '."


def test_gzip_trec_run_and_beir_qrels_header(spark, tmp_path):
    run = tmp_path / "run.trec.gz"
    run.write_bytes(gzip.compress(b"q1 Q0 d1 1 12.5 bm25\r\nq1\tQ0\td2  2 11 bm25\n\nq2 Q0 d9 1 -3e0 bm25\n"))
    assert _read(spark, run, "candidates") == [("q1", "d1", 1, 12.5), ("q1", "d2", 2, 11.0), ("q2", "d9", 1, -3.0)]
    qrels = tmp_path / "beir.tsv"
    qrels.write_bytes(b"\nquery-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t0\n")  # the header after a blank line
    assert _read(spark, qrels, "qrels", format="qrels") == [("q1", "d1", 1), ("q2", "d2", 0)]


def test_json_lines_and_beir_folders(spark, tmp_path):
    queries = tmp_path / "queries.jsonl"
    queries.write_bytes(b'{"qid": "q1", "text": "caf\xc3\xa9"}\r\n\n{"qid": 7, "text": "na\xefve"}\n{"text": "no id"}\n')
    # Aliases (qid, text), an integer id as text, invalid UTF-8 as U+FFFD, a record without an id kept.
    assert _read(spark, queries, "queries") == [("7", "na\ufffdve"), ("q1", "caf\u00e9"), (None, "no id")]
    beir = tmp_path / "scifact"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "title": "T1", "text": "one"}\n{"_id": 2, "text": "two"}\n')
    (beir / "queries.jsonl").write_text('{"_id": 10, "text": "what?", "metadata": {}}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n10\td1\t1\n10\t2\t0\n")
    assert _read(spark, beir, "corpus") == [("2", None, "two"), ("d1", "T1", "one")]
    assert _read(spark, beir, "queries") == [("10", "what?")]
    assert _read(spark, beir, "qrels") == [("10", "2", 0), ("10", "d1", 1)]


def test_integer_ids_are_cast_to_strings(spark, tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"qid": [1, 2], "pid": [10, 20], "rank": [1, 1]}), tmp_path / "c.parquet")
    assert _read(spark, tmp_path / "c.parquet", "candidates") == [("1", "10", 1, None), ("2", "20", 1, None)]


def test_catalog_table_is_read_by_name(spark, tmp_path):
    from dear_udf.spark.read import read_input

    spark.createDataFrame([("1", "what is a llama"), ("2", "coffee")], "qid string, query string").write.mode(
        "overwrite"
    ).saveAsTable("default.dear_test_queries")
    try:
        rows = read_input(spark, InputSpec("default.dear_test_queries"), "queries").collect()
        assert sorted((r["query_id"], r["query"]) for r in rows) == [("1", "what is a llama"), ("2", "coffee")]
        with pytest.raises(InputError, match="default.no_such_table"):
            read_input(spark, InputSpec("default.no_such_table"), "queries")
    finally:
        spark.sql("DROP TABLE IF EXISTS default.dear_test_queries")


def test_corrupt_parquet_file_in_a_folder_is_named(spark, tmp_path):
    """One line naming the file, when the input is read: not a Java error at the first action;
    and the same file named when read without Spark (``eval``'s qrels or runs)."""
    import pyarrow.parquet as pq

    from dear_udf.io.formats import read_local

    folder = tmp_path / "candidates"
    folder.mkdir()
    pq.write_table(pa.table({"query_id": ["q"], "doc_id": ["d"], "rank": [1]}), folder / "part-0.parquet")
    (folder / "part-1.parquet").write_bytes(b"PAR1" + b"not parquet at all" * 10)
    message = _error(spark, folder, "candidates")
    assert message.endswith("part-1.parquet: not a readable Parquet file (corrupt, truncated or another format); remove or replace it.")
    assert "\n" not in message
    with pytest.raises(InputError, match=r"part-1\.parquet"):
        read_local(InputSpec(str(folder)), "candidates")


def test_jsonl_text_over_20_million_characters_is_read(spark, tmp_path):
    """Jackson's default limit (20,000,000 characters per string) made this 'not a JSON object'."""
    from dear_udf.spark.read import read_input

    size = 21_000_000
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"doc_id": "a", "text": "short"}) + "\n" + json.dumps({"doc_id": "big", "text": "x" * size}) + "\n")
    rows = read_input(spark, InputSpec(str(path)), "corpus").selectExpr("doc_id", "length(text) AS n").collect()
    assert {r["doc_id"]: r["n"] for r in rows} == {"a": 5, "big": size}


def test_partitioned_delta_table_without_sparks_delta(spark, tmp_path):
    """Partition values as the Delta log holds them, typed by the Delta schema: ``007`` stays
    ``007`` (Spark's inference from folder names reads 7), ``é`` stays ``é`` (``deltalake``
    writes it as ``%C3%A9``), a null stays null; a column added later reads null in older files."""
    from deltalake import DeltaTable, write_deltalake

    from dear_udf.spark.session import has_spark_delta

    assert not has_spark_delta(spark)  # the test session reads Delta through deltalake's file list
    path = tmp_path / "candidates"
    first = {"query_id": ["007", "007", "é%=", None, "a b"], "doc_id": ["d1", "d2", "d3", "d4", "d5"], "rank": pa.array([1, 2, 1, 1, 1], pa.int32())}
    write_deltalake(str(path), pa.table({**first, "day": pa.array([1, 1, 2, 3, None], pa.int32())}), partition_by=["query_id", "day"])
    later = pa.table({"query_id": ["10"], "doc_id": ["d6"], "rank": pa.array([1], pa.int32()), "day": pa.array([4], pa.int32()), "score": [0.5]})
    write_deltalake(str(path), later, partition_by=["query_id", "day"], mode="append", schema_mode="merge")
    reference = DeltaTable(str(path)).to_pyarrow_table().to_pylist()  # deltalake's own reading
    expected = sorted(((r["query_id"], r["doc_id"], r["rank"], r["score"]) for r in reference), key=repr)
    assert ("007", "d1", 1, None) in expected and ("10", "d6", 1, 0.5) in expected
    assert _read(spark, path, "candidates") == expected
    days = _read(spark, path, "candidates", columns={"first_stage_rank": "day"})  # the integer partition column
    assert sorted((r[1], r[2]) for r in days) == [("d1", 1), ("d2", 1), ("d3", 2), ("d4", 3), ("d5", None), ("d6", 4)]


def test_delta_table_whose_files_are_not_its_rows_is_refused(spark, tmp_path):
    """Deletion vectors hide rows of a data file: read as Parquet, deleted rows would return."""
    from deltalake import write_deltalake

    path = tmp_path / "queries"
    write_deltalake(str(path), pa.table({"query_id": ["q1"], "query": ["x"]}))
    protocol = {"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": ["deletionVectors"], "writerFeatures": ["deletionVectors"]}
    (path / "_delta_log" / f"{1:020d}.json").write_text(json.dumps({"protocol": protocol}) + "\n")
    assert _error(spark, path, "queries") == (
        f"{path}: this Delta table uses ['deletionVectors'], which only Spark's Delta reads correctly; "
        "read it in a session with Spark's Delta (Databricks, or --packages io.delta:delta-spark_2.13)."
    )


def _local_rows(path, kind, **spec):
    from dear_udf.io import read_local

    table = read_local(InputSpec(str(path), **spec), kind)
    return sorted((tuple(r[c] for c in COLUMNS[kind]) for r in table.to_pylist()), key=repr)


def test_csv_files_are_read_whole_as_without_spark(spark, tmp_path):
    """A folder of CSV files: quoted newlines (a file is not split at lines), a BOM, CRLF,
    gzip, a header per file with other names; the rows equal the local reader's."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    body = "".join(f'd{i},"text {i}\r\nline two of {i}, with ""quotes"""\r\n' for i in range(150))  # > one Arrow batch of lines
    (folder / "part-0.csv").write_bytes(("\ufeffdoc_id,text\r\n" + body).encode())
    (folder / "part-1.csv.gz").write_bytes(gzip.compress(b"pid,title,contents\n x ,T,caf\xe9\n"))
    rows = _read(spark, folder, "corpus")
    assert len(rows) == 151 and rows == _local_rows(folder, "corpus")
    assert ("d7", None, 'text 7\r\nline two of 7, with "quotes"') in rows and ("x", "T", "caf\ufffd") in rows
    queries = tmp_path / "queries.csv"
    queries.write_bytes(b"query_id,question,query\n1,what?,not this\n")
    assert _read(spark, queries, "queries", columns={"query": "question"}) == [("1", "what?")]


def test_a_bad_csv_record_is_named_as_without_spark(spark, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "a.csv").write_bytes(b"qid,docid,rank\nq1,d1,1\n")
    (folder / "b.csv").write_bytes(b'qid,docid,rank\nq1,"d\n2",2\nq1,d3\n')  # line 4, after a 2-line record
    message = f"{folder / 'b.csv'}, line 4: expected 3 fields (qid,docid,rank), got 2."
    assert _error(spark, folder, "candidates") == message
    with pytest.raises(InputError, match="^" + re.escape(message) + "$"):
        _local_rows(folder, "candidates")
    one = tmp_path / "queries.csv"
    one.write_bytes(b"qid,question\n1,x\n")
    assert _error(spark, one, "queries") == f"{one}: missing required column(s) ['query'] for queries; columns present: ['qid', 'question']. Map other names with the input's columns setting, e.g. {{'doc_id': 'pid'}}."
