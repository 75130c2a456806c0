"""The local and Spark readers share one parser per text format (``io/text.py``): the same
malformed and edge-case files give the same rows, the same errors and the same line numbers.
JSON Lines too: both paths use ``text.json_keys`` and ``text.json_batch``.
"""

from __future__ import annotations

import gzip

import pytest

from dear_udf.config import InputSpec
from dear_udf.exceptions import InputError
from dear_udf.io import formats

pytestmark = [pytest.mark.spark]

LOCAL = {"queries": formats.read_queries, "corpus": formats.read_corpus, "candidates": formats.read_candidates, "qrels": formats.read_qrels}

# (file name, bytes, kind, expected rows or the expected error's text after "<path>, ")
CASES = [
    (
        "queries.tsv",
        b"1\thow do llamas sleep\r\n\r\n   \n 2 \tcaf\xe9 \tau lait\n3\ta\rbare CR stays\n",
        "queries",
        [("1", "how do llamas sleep"), ("2", "caf\ufffd \tau lait"), ("3", "a\rbare CR stays")],
    ),
    ("collection.tsv", b"d1\tfirst\n\nd2 no tab here\nd3\tthird\n", "corpus", "line 3: expected 2 fields (id<TAB>text), found no tab."),
    (
        "run.trec",
        b"q1 Q0 d1 1 12.5 bm25\nq1\tQ0\td2  2 11 bm25\n\nq2 Q0 d9 1 -3e0 bm25\n",
        "candidates",
        [("q1", "d1", 1, 12.5), ("q1", "d2", 2, 11.0), ("q2", "d9", 1, -3.0)],
    ),
    ("short.trec", b"q1 Q0 d1 1 12.5 bm25\n\n\nq1 Q0 d2 2 bm25\n", "candidates", "line 4: expected 6 fields (query_id q0 doc_id rank score tag), got 5."),
    ("score.trec", b"q1 Q0 d1 1 high bm25\n", "candidates", "line 1: score must be a number, got 'high'."),
    ("run.trec.gz", gzip.compress(b"q1 Q0 d1 1 2 t\nq1 Q0 d2 2 1 t\n"), "candidates", [("q1", "d1", 1, 2.0), ("q1", "d2", 2, 1.0)]),
    ("qrels.txt", b"q1 0 d1 1\nq1 0 d2 0\r\n\nq2 0 d9 2\n", "qrels", [("q1", "d1", 1), ("q1", "d2", 0), ("q2", "d9", 2)]),
    ("bad-qrels.txt", b"q1 0 d1 1\nq1 0 d2 maybe\n", "qrels", "line 2: relevance must be an integer, got 'maybe'."),
    ("beir.tsv", b"\nquery-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t0\n", "qrels", [("q1", "d1", 1), ("q2", "d2", 0)]),
    (
        "queries.jsonl",
        b'{"query_id": "q1", "query": "caf\xc3\xa9"}\r\n\n{"query_id": 7, "query": "seven"}\n{"query": "no id"}\n',
        "queries",
        [("q1", "caf\u00e9"), ("7", "seven"), (None, "no id")],
    ),
    ("corpus.jsonl", b'{"doc_id": "a", "text": "x"}\n\n{"doc_id": "b", "text": \n', "corpus", "line 3: not a JSON object: '{\"doc_id\": \"b\", \"text\": '."),
    (
        "candidates.jsonl",
        b'{"qid": 1, "pid": "d1", "rank": "2", "score": 1.5, "extra": {"a": [1]}}\n'
        b'{"qid": 1, "pid": "d2", "rank": 3000000000, "score": "high"}\n{"qid": true, "pid": "d3", "rank": 4.0}\n',
        "candidates",
        [("1", "d1", 2, 1.5), ("1", "d2", None, None), ("true", "d3", 4, None)],
    ),
    ("beir-bad.tsv", b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\n", "qrels", "line 3: expected 3 fields (query-id corpus-id score), got 2."),
]


COLUMNS = {"queries": ("query_id", "query"), "corpus": ("doc_id", "text"), "candidates": ("query_id", "doc_id", "first_stage_rank", "first_stage_score"), "qrels": ("query_id", "doc_id", "relevance")}


def _rows(table, kind):
    return sorted((tuple(r[c] for c in COLUMNS[kind]) for r in table.to_pylist()), key=repr)


@pytest.mark.parametrize("name,content,kind,expected", CASES, ids=[c[0] for c in CASES])
def test_local_and_spark_readers_agree(spark, tmp_path, name, content, kind, expected):
    from dear_udf.spark.read import read_input

    path = tmp_path / name
    path.write_bytes(content)
    spec = InputSpec(str(path), format="qrels" if kind == "qrels" else None)
    if isinstance(expected, str):
        with pytest.raises(InputError) as local:
            LOCAL[kind](spec)
        with pytest.raises(InputError) as remote:
            read_input(spark, spec, kind)
        assert str(local.value) == str(remote.value) == f"{path}, {expected}"
        return
    local_rows = _rows(LOCAL[kind](spec), kind)
    spark_rows = _rows(read_input(spark, spec, kind).toArrow(), kind)
    assert local_rows == spark_rows == sorted(expected, key=repr)
