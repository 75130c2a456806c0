"""Spark readers agree with the local readers on every text format, and fail the same way."""

from __future__ import annotations

import json

import pytest

from dear_udf.config import InputSpec
from dear_udf.exceptions import InputError
from dear_udf.io import formats

pytestmark = [pytest.mark.spark]


def _rows(table, columns):
    return sorted(tuple(r[c] for c in columns) for r in table.to_pylist())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    (root / "collection.tsv").write_bytes("7\tcaf\xc3\xa9 text\n8\tbad \xff byte\n\n9\t tabbed\tmore\n".encode("latin-1"))
    (root / "queries.tsv").write_text("1\twhat is a llama\n2\tcoffee diet\n")
    (root / "run.trec").write_text("1 Q0 7 1 12.5 bm25\n1 Q0 8 2 11.0 bm25\n2  Q0\t9 1 3 bm25\n")
    (root / "qrels.txt").write_text("1 0 7 2\n1 0 8 0\n2 0 9 1\n")
    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(
        "\n".join(json.dumps(d) for d in [{"_id": "7", "title": "T", "text": "x"}, {"_id": 8, "title": "", "text": "y"}]) + "\n"
    )
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "1", "text": "q one"}) + "\n")
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\t7\t1\n")
    (root / "broken.trec").write_text("1 Q0 7 1 12.5 bm25\n1 Q0 8 two 11.0 bm25\n")
    return root


@pytest.mark.parametrize(
    "name, kind, reader, columns",
    [
        ("collection.tsv", "corpus", formats.read_corpus, ("doc_id", "title", "text")),
        ("queries.tsv", "queries", formats.read_queries, ("query_id", "query")),
        ("run.trec", "candidates", formats.read_candidates, ("query_id", "doc_id", "first_stage_rank", "first_stage_score")),
        ("qrels.txt", "qrels", formats.read_qrels, ("query_id", "doc_id", "relevance")),
        ("beir", "corpus", formats.read_corpus, ("doc_id", "title", "text")),
        ("beir", "queries", formats.read_queries, ("query_id", "query")),
        ("beir", "qrels", formats.read_qrels, ("query_id", "doc_id", "relevance")),
        ("beir/qrels/test.tsv", "qrels", formats.read_qrels, ("query_id", "doc_id", "relevance")),
    ],
)
def test_spark_and_local_readers_agree(spark, files, name, kind, reader, columns):
    from dear_udf.spark.read import read_input

    spec = InputSpec(str(files / name))
    spark_rows = _rows(read_input(spark, spec, kind).toArrow(), columns)
    local_rows = _rows(reader(spec), columns)
    assert spark_rows == local_rows
    assert spark_rows  # something was read


def test_invalid_utf8_becomes_replacement_character(spark, files):
    from dear_udf.spark.read import read_input

    rows = {r["doc_id"]: r["text"] for r in read_input(spark, InputSpec(str(files / "collection.tsv")), "corpus").collect()}
    assert rows["8"] == "bad \ufffd byte"
    assert rows["7"] == "café text"
    assert rows["9"] == " tabbed\tmore"


def test_bare_cr_inside_a_tsv_text_stays_in_the_text(spark, tmp_path):
    """200 lines, one text holding a bare CR and some CRLF endings: 200 rows in both readers,
    the text whole (Spark's default line reader splits at the CR: 201 rows, a phantom id)."""
    from dear_udf.spark.read import read_input

    lines = [f"d{i}\ttext {i}".encode() + (b"\r\n" if i % 3 == 0 else b"\n") for i in range(200)]
    lines[7] = b"d7\tbefore\rd-phantom\tafter\n"
    lines[8] = b"d8\tends in a bare cr\r\r\n"  # only the CR of the CRLF ending is dropped
    path = tmp_path / "collection.tsv"
    path.write_bytes(b"".join(lines))
    columns = ("doc_id", "title", "text")
    spark_rows = _rows(read_input(spark, InputSpec(str(path)), "corpus").toArrow(), columns)
    assert spark_rows == _rows(formats.read_corpus(InputSpec(str(path))), columns)
    assert len(spark_rows) == 200
    texts = {r[0]: r[2] for r in spark_rows}
    assert texts["d7"] == "before\rd-phantom\tafter"
    assert texts["d8"] == "ends in a bare cr\r"
    assert texts["d0"] == "text 0" and texts["d199"] == "text 199"
    # Line numbers count the same lines: the bad line is line 2, not 3.
    path.write_bytes(b"d1\tone\rmore\nno tab here\n")
    for read in (lambda spec: read_input(spark, spec, "corpus"), formats.read_corpus):
        with pytest.raises(InputError, match=r"collection\.tsv(:|,) line 2"):
            read(InputSpec(str(path)))


def test_malformed_trec_line_names_file_and_line(spark, files):
    from dear_udf.spark.read import read_input

    from dear_udf.io.formats import read_candidates

    path = str(files / "broken.trec")
    with pytest.raises(InputError) as spark_error:
        read_input(spark, InputSpec(path), "candidates")
    with pytest.raises(InputError) as local_error:
        read_candidates(InputSpec(path))
    assert str(spark_error.value) == str(local_error.value) == f"{path}, line 2: rank must be an integer, got 'two'."


def test_integer_ids_are_cast_to_strings(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dear_udf.spark.read import read_input

    pq.write_table(pa.table({"qid": [1, 2], "pid": [10, 20], "rank": [1, 1]}), tmp_path / "c.parquet")
    rows = read_input(spark, InputSpec(str(tmp_path / "c.parquet")), "candidates").collect()
    assert sorted((r["query_id"], r["doc_id"]) for r in rows) == [("1", "10"), ("2", "20")]


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
    """One line naming the file, when the input is read: not a Java error at the first action."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dear_udf.spark.read import read_input

    folder = tmp_path / "candidates"
    folder.mkdir()
    pq.write_table(pa.table({"query_id": ["q"], "doc_id": ["d"], "rank": [1]}), folder / "part-0.parquet")
    (folder / "part-1.parquet").write_bytes(b"PAR1" + b"not parquet at all" * 10)
    spec = InputSpec(str(folder))
    with pytest.raises(InputError) as info:
        read_input(spark, spec, "candidates")
    message = str(info.value)
    assert message.endswith("part-1.parquet: not a readable Parquet file (corrupt, truncated or another format); remove or replace it.")
    assert "\n" not in message
    with pytest.raises(InputError, match=r"part-1\.parquet"):
        formats.read_candidates(spec)


def test_jsonl_text_over_20_million_characters_is_read(spark, tmp_path):
    """Jackson's default limit (20,000,000 characters per string) made this 'not a JSON object'."""
    from dear_udf.spark.read import read_input

    size = 21_000_000
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"doc_id": "a", "text": "short"}) + "\n" + json.dumps({"doc_id": "big", "text": "x" * size}) + "\n")
    spark_rows = {r["doc_id"]: len(r["text"]) for r in read_input(spark, InputSpec(str(path)), "corpus").collect()}
    local_rows = dict(zip(*[formats.read_corpus(InputSpec(str(path))).column(c).to_pylist() for c in ("doc_id", "text")]))
    assert spark_rows == {"a": 5, "big": size} == {k: len(v) for k, v in local_rows.items()}
