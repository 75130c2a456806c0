"""One parser per text format (``io/text.py``) and the shared rules (``io/rules.py``), without Spark.

Both readers hand these functions decoded lines: the Spark reader a batch of a file's lines
(``tests/test_spark_read.py`` checks what Spark adds: splitting, decoding, numbering lines
across batches), the reader without Spark a whole file. So the rows, types and reasons
checked here are what either reader gives.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from dear_udf import schema as S
from dear_udf.exceptions import InputError
from dear_udf.io import rules, text


def _parse(kind: str, fmt: str, lines: list[str], *, first: bool = True):
    """Rows as tuples, and (index, reason) of the first bad line or None."""
    head = next((line for line in lines if not rules.is_blank(line)), None)
    batch, bad, reason = text.parse_lines(lines, text.layout_for(kind, fmt, head, path="f"), first=first)
    rows = [tuple(row.values()) for row in batch.to_pylist()]
    return rows, (None if bad is None else (bad, reason))


# -- MS MARCO TSV ------------------------------------------------------------------------


def test_tsv_queries_keep_tabs_and_carriage_returns_in_the_text():
    lines = ["1\thow do llamas sleep", "", "   ", " 2 \tcaf\ufffd \tau lait", "3\ta\rbare CR stays", "4\t"]
    rows, bad = _parse("queries", "tsv", lines)
    assert bad is None
    # Ids lose their surrounding spaces; the text is everything after the first tab, as is.
    assert rows == [("1", "how do llamas sleep"), ("2", "caf\ufffd \tau lait"), ("3", "a\rbare CR stays"), ("4", "")]


def test_tsv_passages_have_no_title():
    batch, bad, _ = text.parse_lines(["7\tpassage seven", "8\t tabbed\tmore"], text.layout_for("corpus", "tsv", None, path="c"), first=True)
    assert bad is None and batch.schema == S.CORPUS_SCHEMA
    assert batch.to_pylist() == [
        {"doc_id": "7", "title": None, "text": "passage seven"},
        {"doc_id": "8", "title": None, "text": " tabbed\tmore"},
    ]


def test_a_bad_line_stops_the_parse_with_its_index_and_reason():
    rows, bad = _parse("corpus", "tsv", ["d1\tfirst", "", "d2 no tab here", "d3\tthird"])
    assert rows == [("d1", None, "first")]  # the rows before it; none after
    assert bad == (2, "expected 2 fields (id<TAB>text), found no tab")
    # Both readers word it so, the index counted from 1 over every line of the file.
    assert str(text.line_error("/data/collection.tsv", bad[0] + 1, bad[1])) == "/data/collection.tsv, line 3: expected 2 fields (id<TAB>text), found no tab."


# -- TREC runs and qrels ------------------------------------------------------------------


def test_trec_run_as_candidates():
    lines = ["q1 Q0 d1 1 12.5 bm25", "q1\tQ0\td2  2 11 bm25", "", "  q2 Q0 d9 1 -3e0 bm25 "]
    head = text.layout_for("candidates", "trec", lines[0], path="run.trec")
    batch, bad, _ = text.parse_lines(lines, head, first=True)
    assert bad is None and batch.schema == S.CANDIDATES_SCHEMA  # rank int32, score float64
    assert [tuple(r.values()) for r in batch.to_pylist()] == [("q1", "d1", 1, 12.5), ("q1", "d2", 2, 11.0), ("q2", "d9", 1, -3.0)]


@pytest.mark.parametrize(
    ("kind", "line", "reason"),
    [
        ("candidates", "q1 Q0 d3 3 9.0", "expected 6 fields (query_id q0 doc_id rank score tag), got 5"),
        ("candidates", "q1 Q0 d3 third 9.0 bm25", "rank must be an integer, got 'third'"),
        ("candidates", "q1 Q0 d3 3 high bm25", "score must be a number, got 'high'"),
        ("candidates", "q1\u00a0Q0 d3 3 9.0 bm25", "expected 6 fields (query_id q0 doc_id rank score tag), got 5"),  # NBSP: no separator, as in Spark
        ("candidates", "\tq1 Q0 d3 3 9.0 bm25", "expected 6 fields (query_id q0 doc_id rank score tag), got 7"),  # a leading tab: an empty field
        ("qrels", "q1 0 d2", "expected 4 fields (query_id iteration doc_id relevance), got 3"),
        ("qrels", "q1 0 d2 maybe", "relevance must be an integer, got 'maybe'"),
    ],
)
def test_malformed_trec_lines(kind, line, reason):
    good = "q1 Q0 d1 1 10.0 bm25" if kind == "candidates" else "q1 0 d1 1"
    rows, bad = _parse(kind, "trec", [good, "", line])
    assert len(rows) == 1 and bad == (2, reason)


def test_trec_and_beir_qrels():
    trec = ["1 0 7 1", "1 0 8 0", "2\t0\t9\t2"]
    assert _parse("qrels", "qrels", trec) == ([("1", "7", 1), ("1", "8", 0), ("2", "9", 2)], None)
    # BEIR's TSV is told by its header, which may follow blank lines at the start.
    beir = ["", "query-id\tcorpus-id\tscore", "q1\td1\t1", "q2\td2\t0"]
    assert _parse("qrels", "tsv", beir) == ([("q1", "d1", 1), ("q2", "d2", 0)], None)
    assert _parse("qrels", "qrels", ["query-id\tcorpus-id\tscore", "q1\td1"]) == ([], (1, "expected 3 fields (query-id corpus-id score), got 2"))


def test_a_header_is_skipped_only_at_the_start_of_the_file():
    layout = text.layout_for("qrels", "qrels", "query-id\tcorpus-id\tscore", path="qrels.tsv")
    later = ["q1\td1\t1", "query-id\tcorpus-id\tscore"]
    # A Spark batch that does not start the file passes first=False: a header there is a bad line.
    assert text.parse_lines(later[1:], layout, first=False)[1:] == (0, "relevance must be an integer, got 'score'")
    assert text.parse_lines(later, layout, first=True)[1:] == (1, "relevance must be an integer, got 'score'")


def test_a_format_that_holds_no_such_input_is_refused():
    with pytest.raises(InputError, match=r"bm25\.trec: format 'trec' holds no queries\."):
        text.layout_for("queries", "trec", "q1 Q0 d1 1 1.0 t", path="bm25.trec")
    with pytest.raises(InputError, match=r"format 'tsv' holds no candidates\."):
        text.layout_for("candidates", "tsv", "q1\td1", path="run.tsv")


def test_trec_fields_split_as_spark_splits_them():
    # Spark trims spaces, then splits at \s+ (ASCII whitespace only).
    assert rules.split_trec("  q1 Q0 d1 1 2.0 t ") == ["q1", "Q0", "d1", "1", "2.0", "t"]
    assert rules.split_trec("\tq1 Q0 d1 1 2.0 t")[0] == ""
    assert rules.is_blank("   ") and not rules.is_blank("\t")


# -- JSON Lines ----------------------------------------------------------------------------


def test_json_keys_are_the_union_of_the_records():
    keys, bad, _ = text.json_keys(['{"qid": 1, "pid": "d1"}', "", None, '{"qid": 2, "score": 1.5, "extra": {"a": [1]}}'])
    assert keys == {"qid", "pid", "score", "extra"} and bad is None


@pytest.mark.parametrize(
    ("line", "shown"),
    [('{"doc_id": "b", "text": ', "'{\"doc_id\": \"b\", \"text\": '"), ('["b", "y"]', "'[\"b\", \"y\"]'"), ("7", "'7'")],
)
def test_a_line_that_is_not_a_json_object(line, shown):
    lines = ['{"doc_id": "a", "text": "x"}', "", line, '{"doc_id": "c", "text": "z"}']
    for parse in (text.json_keys, lambda ls: text.json_batch(ls, {"doc_id": pa.string()})):
        assert parse(lines)[1:] == (2, f"not a JSON object: {shown}")


def test_json_values_are_typed_as_the_column_holds_them():
    types = {"qid": pa.string(), "pid": pa.string(), "rank": pa.int32(), "score": pa.float64()}
    lines = [
        '{"qid": 1, "pid": "d1", "rank": "2", "score": 1.5, "extra": {"a": [1]}}',
        '{"qid": 1, "pid": "d2", "rank": 3000000000, "score": "high"}',
        '{"qid": true, "pid": ["x", 1], "rank": 4.0, "score": "2e1"}',
        '{"pid": {"n": "é"}, "rank": 4.5, "score": false}',
    ]
    batch, bad, _ = text.json_batch(lines, types)
    assert bad is None and batch.schema == pa.schema(list(types.items()))
    # Text as is, other JSON as its text; numbers from numbers or numeric text; anything
    # else (beyond 32 bits, not whole, not a number, a boolean) missing; absent keys null.
    assert [tuple(r.values()) for r in batch.to_pylist()] == [
        ("1", "d1", 2, 1.5),
        ("1", "d2", None, None),
        ("true", '["x", 1]', 4, 20.0),
        (None, '{"n": "é"}', None, None),
    ]


# -- lines and columns -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        (b"1\tplain\n", "1\tplain"),
        (b"1\tcrlf\r\n", "1\tcrlf"),
        (b"1\tends in a bare cr\r\r\n", "1\tends in a bare cr\r"),  # only the CR of the ending goes
        (b"1\tno ending", "1\tno ending"),
        (b"1\tcaf\xe9 au lait\n", "1\tcaf\ufffd au lait"),  # a lone Latin-1 byte
        (b"1\ttruncated \xe2\x82\n", "1\ttruncated \ufffd"),  # a cut multi-byte sequence
    ],
)
def test_a_line_is_decoded_as_spark_decodes_it(raw, line):
    assert rules.decode_line(raw) == line


@pytest.mark.parametrize(
    ("kind", "present", "mapping", "chosen"),
    [
        ("corpus", ["pid", "contents"], {}, {"doc_id": "pid", "text": "contents"}),  # Pyserini's names
        ("corpus", ["_id", "title", "text"], {}, {"doc_id": "_id", "title": "title", "text": "text"}),  # BEIR's
        ("queries", ["id", "text"], {}, {"query_id": "id", "query": "text"}),
        ("candidates", ["qid", "docid", "rank", "score"], {}, {"query_id": "qid", "doc_id": "docid", "first_stage_rank": "rank", "first_stage_score": "score"}),
        ("qrels", ["q", "d", "label"], {"query_id": "q", "doc_id": "d"}, {"query_id": "q", "doc_id": "d", "relevance": "label"}),
        ("corpus", ["doc_id", "docnum", "body"], {"doc_id": "docnum"}, {"doc_id": "docnum", "text": "body"}),  # a mapping wins
    ],
)
def test_columns_are_found_by_name_alias_or_mapping(kind, present, mapping, chosen):
    assert rules.resolve_columns(kind, present, mapping) == chosen


@pytest.mark.parametrize(
    ("kind", "present", "mapping", "message"),
    [
        ("corpus", ["docnum", "body_html"], {}, r"missing required column\(s\) \['doc_id', 'text'\] for corpus; columns present: \['docnum', 'body_html'\]"),
        ("corpus", ["docnum", "body_html"], {"doc_id": "docnum", "text": "passage_text"}, r"mapped column\(s\) \['passage_text'\] not found"),
        ("corpus", ["docnum", "body_html"], {"docid": "docnum"}, r"unknown canonical name\(s\) \['docid'\]"),
        ("queries", ["id"], {}, r"missing required column\(s\) \['query'\]"),  # "id" never names the query's text
        ("candidates", ["query_id", "doc_id"], {}, "candidates need a first-stage rank or score column"),
    ],
)
def test_missing_or_misnamed_columns_are_named(kind, present, mapping, message):
    with pytest.raises(rules.ColumnError, match=message):
        rules.resolve_columns(kind, present, mapping)


# -- CSV -------------------------------------------------------------------------------------
# Parsed a file at a time (``text.parse_csv``); the Spark reader hands it each file's bytes
# in one task. ``read_local`` adds only opening the files and wording the errors.


def _local(path, kind, **spec):
    from dear_udf.config import InputSpec
    from dear_udf.io import read_local

    return read_local(InputSpec(str(path), **spec), kind).to_pylist()


def _local_error(path, kind, **spec) -> str:
    with pytest.raises(InputError) as info:
        _local(path, kind, **spec)
    return str(info.value)


def test_csv_quoting_newlines_bom_and_record_lines():
    data = (
        "\ufeffquery_id,query\r\n"  # a BOM, CRLF endings
        '1,"a, b"\r\n'  # a comma inside quotes
        "\r\n"  # a blank line: no record
        '2,"she said ""hi""\nand left"\n'  # doubled quotes, a newline inside quotes
        " 3 ,  spaces kept in the text  \n"
        '4,""\n'  # an empty text stays empty
    ).encode()
    header, records, starts = text.csv_records(data)
    assert header == ["query_id", "query"]
    assert records == [["1", "a, b"], ["2", 'she said "hi"\nand left'], [" 3 ", "  spaces kept in the text  "], ["4", ""]]
    assert starts == [2, 4, 6, 7]  # each record by its first line, blank lines counted
    assert text.parse_csv(data, "queries", {}).to_pylist() == [
        {"query_id": "1", "query": "a, b"},
        {"query_id": "2", "query": 'she said "hi"\nand left'},
        {"query_id": "3", "query": "  spaces kept in the text  "},  # ids lose their spaces
        {"query_id": "4", "query": ""},
    ]


def test_csv_invalid_utf8_becomes_replacement_characters():
    assert text.parse_csv(b"doc_id,text\nd1,caf\xe9 \xe2\x82\n", "corpus", {}).to_pylist() == [
        {"doc_id": "d1", "title": None, "text": "caf\ufffd \ufffd"}
    ]


@pytest.mark.parametrize(
    ("kind", "data", "rows"),
    [
        # Pyserini's and BEIR's names; a title column is optional.
        ("corpus", b"pid,title,contents\nd1,T,one\nd2,,two\n", [("d1", "T", "one"), ("d2", "", "two")]),
        ("corpus", b"_id,text\n7,seven\n", [("7", None, "seven")]),
        ("queries", b"id,text\n10,what?\n", [("10", "what?")]),
        # An empty or unreadable rank or score is missing, as in JSON Lines.
        ("candidates", b"qid,docid,rank,score\nq1,d1,1,12.5\nq1,d2,,11\nq1,d3,third,x\n",
         [("q1", "d1", 1, 12.5), ("q1", "d2", None, 11.0), ("q1", "d3", None, None)]),
        ("qrels", b"query-id,corpus-id,score\nq1,d1,2\n", [("q1", "d1", 2)]),
    ],
)
def test_csv_columns_by_name_and_alias(kind, data, rows):
    batch = text.parse_csv(data, kind, {})
    assert batch.schema == S.INPUT_SCHEMAS[kind]
    assert [tuple(r.values()) for r in batch.to_pylist()] == rows


def test_csv_columns_mapped_by_the_inputs_columns_setting():
    batch = text.parse_csv(b"doc_id,docnum,body\nx,d1,one\n", "corpus", {"doc_id": "docnum"})
    assert batch.to_pylist() == [{"doc_id": "d1", "title": None, "text": "one"}]


@pytest.mark.parametrize(
    ("data", "line", "reason"),
    [
        (b"doc_id,text\nd1,one\nd2,two,three\n", 3, "expected 2 fields (doc_id,text), got 3"),
        (b"doc_id,text\nd1,\"one\nline two\"\nd2\n", 4, "expected 2 fields (doc_id,text), got 1"),  # after a 2-line record
        (b"doc_id,text\nd1,one\nd2,\"never closed\nd3,three\n", 3, "a quoted field is not closed before the end of the file"),
        (b"doc_id,text\nd1,\"quoted\"tail\n", 2, "not valid CSV (',' expected after '\"')"),
        (b"doc_id,text\nd1,a bare\rCR\n", 2, "not valid CSV (new-line character seen in unquoted field - do you need to open the file in universal-newline mode?)"),
        (b"doc_id,text\nd1,one\n  ,two\n", 3, "doc_id is empty"),  # an id of spaces names nothing
        (b"\n\n", 1, "no header row (a CSV input starts with its column names)"),
    ],
)
def test_malformed_csv_records_are_named_by_their_first_line(tmp_path, data, line, reason):
    with pytest.raises(text.RecordError) as info:
        text.parse_csv(data, "corpus", {})
    assert (info.value.line, info.value.reason) == (line, reason)
    path = tmp_path / "collection.csv"
    path.write_bytes(data)
    assert _local_error(path, "corpus") == f"{path}, line {line}: {reason}."


def test_csv_header_without_the_columns_a_kind_needs(tmp_path):
    path = tmp_path / "queries.csv"
    path.write_bytes(b"qid,question\n1,x\n")
    assert _local_error(path, "queries") == f"{path}: missing required column(s) ['query'] for queries; columns present: ['qid', 'question']. Map other names with the input's columns setting, e.g. {{'doc_id': 'pid'}}."
    path.write_bytes(b"qid,text,text\n1,x,y\n")
    assert _local_error(path, "queries") == f"{path}: the header names a column twice: ['qid', 'text', 'text']."


def test_csv_files_gzip_and_folders_read_without_spark(tmp_path):
    import gzip

    from dear_udf.io import infer_format

    run = tmp_path / "bm25.csv.gz"
    run.write_bytes(gzip.compress("\ufeffquery_id,doc_id,first_stage_rank\nq1,d1,1\nq1,d2,2\n".encode()))
    (tmp_path / "qrels.dev.csv").write_bytes(b"query_id,doc_id,relevance\n")
    assert infer_format(str(run)) == "csv" and infer_format(str(tmp_path / "qrels.dev.csv")) == "csv"
    assert _local(run, "candidates") == [
        {"query_id": "q1", "doc_id": "d1", "first_stage_rank": 1, "first_stage_score": None},
        {"query_id": "q1", "doc_id": "d2", "first_stage_rank": 2, "first_stage_score": None},
    ]
    # A folder of CSV files: each file's header names its own columns; hidden files are left out.
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "part-0.csv").write_bytes(b"doc_id,text\nd1,one\n")
    (folder / "part-1.csv.gz").write_bytes(gzip.compress(b"pid,title,passage\nd2,T,two\n"))
    (folder / "_SUCCESS").write_bytes(b"")
    assert infer_format(str(folder)) == "csv"
    assert _local(folder, "corpus") == [{"doc_id": "d1", "title": None, "text": "one"}, {"doc_id": "d2", "title": "T", "text": "two"}]
    (folder / "part-2.csv").write_bytes(b"doc_id,text\nd3\n")
    assert _local_error(folder, "corpus") == f"{folder / 'part-2.csv'}, line 2: expected 2 fields (doc_id,text), got 1."
