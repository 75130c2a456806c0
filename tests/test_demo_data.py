"""The demo's synthetic collection: shape, determinism, bad rows, and the files it writes."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dear_udf.demo.collection import (
    RUN_TAG,
    make_collection,
    write_collection,
)
from dear_udf.schema import CANDIDATES_SCHEMA, CORPUS_SCHEMA, QRELS_SCHEMA, QUERIES_SCHEMA
from dear_udf.exceptions import ConfigError
from dear_udf.testing import vocabulary


@pytest.fixture(scope="module")
def clean():
    return make_collection(with_bad_rows=False)


@pytest.fixture(scope="module")
def dirty():
    return make_collection()


def _nested_candidates(collection):
    out: dict[str, list[tuple[str, int, float]]] = {}
    for row in collection.candidates.to_pylist():
        out.setdefault(row["query_id"], []).append(
            (row["doc_id"], row["first_stage_rank"], row["first_stage_score"])
        )
    return out


def test_clean_collection_shape(clean):
    assert clean.queries.schema == QUERIES_SCHEMA
    assert clean.corpus.schema == CORPUS_SCHEMA
    assert clean.qrels.schema == QRELS_SCHEMA
    assert clean.candidates.schema == CANDIDATES_SCHEMA
    assert clean.queries.column("query_id").to_pylist() == [f"q{i}" for i in range(1, 41)]
    assert clean.corpus.column("doc_id").to_pylist() == [f"d{i}" for i in range(1, 2001)]
    assert clean.qrels.num_rows == 40 * 3
    assert set(clean.qrels.column("relevance").to_pylist()) == {1}
    ranked = _nested_candidates(clean)
    assert sorted(ranked, key=lambda q: int(q[1:])) == [f"q{i}" for i in range(1, 41)]
    for rows in ranked.values():
        assert [rank for _, rank, _ in rows] == list(range(1, 51))
        scores = [score for _, _, score in rows]
        assert scores == sorted(scores, reverse=True)
        assert len({doc for doc, _, _ in rows}) == 50


def test_relevant_documents_share_the_query_terms_and_are_candidates(clean):
    words = set(vocabulary())
    queries = dict(zip(clean.queries.column("query_id").to_pylist(), clean.queries.column("query").to_pylist()))
    docs = {row["doc_id"]: f"{row['title']} {row['text']}".split() for row in clean.corpus.to_pylist()}
    ranked = _nested_candidates(clean)
    for text in queries.values():
        assert set(text.split()) <= words  # the tiny tokenizer knows every word
    for row in clean.qrels.to_pylist():
        prefix_words = {"what", "is", "how", "does", "why", "did", "where"}
        query_terms = [w for w in queries[row["query_id"]].split() if w not in prefix_words]
        assert set(query_terms) <= set(docs[row["doc_id"]])
        assert row["doc_id"] in {doc for doc, _, _ in ranked[row["query_id"]]}


def test_first_stage_is_mediocre(clean):
    ir_measures = pytest.importorskip("ir_measures")
    qrels = [ir_measures.Qrel(r["query_id"], r["doc_id"], r["relevance"]) for r in clean.qrels.to_pylist()]
    run = [
        ir_measures.ScoredDoc(r["query_id"], r["doc_id"], r["first_stage_score"])
        for r in clean.candidates.to_pylist()
    ]
    ndcg = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run)[ir_measures.nDCG @ 10]
    # Room for a reranker to show an effect, but not a random first stage.
    assert 0.3 <= ndcg <= 0.55


def test_deterministic_per_seed(clean):
    again = make_collection(with_bad_rows=False)
    for name in ("queries", "corpus", "qrels", "candidates"):
        assert getattr(again, name).equals(getattr(clean, name)), name
    other = make_collection(seed=1, with_bad_rows=False)
    assert not other.corpus.equals(clean.corpus)
    assert not other.candidates.equals(clean.candidates)


def test_bad_rows_present_when_asked(dirty):
    corpus_ids = set(dirty.corpus.column("doc_id").to_pylist())
    rows = dirty.candidates.to_pylist()
    missing = [r for r in rows if r["doc_id"] not in corpus_ids]
    assert [(r["query_id"], r["doc_id"]) for r in missing] == [("q2", "d2001"), ("q2", "d2002")]
    # The missing documents sit inside the ranking, not after it.
    assert [r["first_stage_rank"] for r in missing] == [3, 8]
    pairs = Counter((r["query_id"], r["doc_id"]) for r in rows)
    q3_top = next(r for r in rows if r["query_id"] == "q3")
    assert {pair: n for pair, n in pairs.items() if n > 1} == {("q3", q3_top["doc_id"]): 2}
    assert sum(r == q3_top for r in rows) == 2  # an exact copy of the row, rank included
    queries = dirty.queries.to_pylist()
    empty = [q["query_id"] for q in queries if not q["query"].strip()]
    assert empty == ["q41"]
    assert sum(r["query_id"] == "q41" for r in rows) == 5
    # q2's list stays ranked 1..52 with scores in rank order.
    q2 = [r for r in rows if r["query_id"] == "q2"]
    assert [r["first_stage_rank"] for r in q2] == list(range(1, 53))
    scores = [r["first_stage_score"] for r in q2]
    assert scores == sorted(scores, reverse=True)


def test_bad_rows_absent_otherwise_and_clean_part_unchanged(clean, dirty):
    corpus_ids = set(clean.corpus.column("doc_id").to_pylist())
    rows = clean.candidates.to_pylist()
    assert all(r["doc_id"] in corpus_ids for r in rows)
    assert len({(r["query_id"], r["doc_id"]) for r in rows}) == len(rows)
    assert all(q.strip() for q in clean.queries.column("query").to_pylist())
    # The bad rows are added on top: everything else is the same collection.
    assert dirty.corpus.equals(clean.corpus)
    assert dirty.qrels.equals(clean.qrels)
    assert dirty.queries.slice(0, 40).equals(clean.queries)
    ranked_clean, ranked_dirty = _nested_candidates(clean), _nested_candidates(dirty)
    for qid in ranked_clean:
        if qid not in ("q2", "q3"):
            assert ranked_dirty[qid] == ranked_clean[qid], qid
    assert [d for d, _, _ in ranked_dirty["q2"] if d in corpus_ids] == [d for d, _, _ in ranked_clean["q2"]]


def test_small_collection_and_size_errors():
    small = make_collection(n_queries=5, n_docs=300, depth=20, docs_per_query_relevant=2, with_bad_rows=False)
    assert small.qrels.num_rows == 10
    assert small.candidates.num_rows == 5 * 20
    with pytest.raises(ConfigError, match=r"depth must be at least docs_per_query_relevant \+ 8 = 11, got 5\."):
        make_collection(depth=5)
    with pytest.raises(ConfigError, match=r"n_queries must be a positive integer, got 0\."):
        make_collection(n_queries=0)
    with pytest.raises(ConfigError, match=r"n_docs must be at least .* got 100\."):
        make_collection(n_docs=100)


def test_write_parquet_round_trips(dirty, tmp_path):
    paths = write_collection(dirty, tmp_path / "pq")
    assert sorted(paths) == ["candidates", "corpus", "qrels", "queries"]
    for name, path in paths.items():
        assert path.suffix == ".parquet"
        assert pq.read_table(path).equals(getattr(dirty, name)), name


def test_write_mixed_formats(dirty, tmp_path):
    paths = write_collection(dirty, tmp_path / "mixed", formats="mixed")
    assert {name: p.name for name, p in paths.items()} == {
        "queries": "queries.tsv",
        "corpus": "corpus.jsonl",
        "candidates": "candidates.trec",
        "qrels": "qrels.txt",
    }

    # MS MARCO queries: id<TAB>text, no header; the empty query keeps its tab.
    lines = paths["queries"].read_text(encoding="utf-8").splitlines()
    assert [tuple(line.split("\t")) for line in lines] == [
        (q["query_id"], q["query"]) for q in dirty.queries.to_pylist()
    ]
    assert lines[-1] == "q41\t"

    # BEIR corpus: one JSON object per line with _id, title, text.
    docs = [json.loads(line) for line in paths["corpus"].read_text(encoding="utf-8").splitlines()]
    assert list(docs[0]) == ["_id", "title", "text"]
    assert docs == [{"_id": r["doc_id"], "title": r["title"], "text": r["text"]} for r in dirty.corpus.to_pylist()]

    # TREC run: qid Q0 docid rank score tag, the bad rows included.
    run = [line.split(" ") for line in paths["candidates"].read_text(encoding="utf-8").splitlines()]
    assert all(len(f) == 6 and f[1] == "Q0" and f[5] == RUN_TAG for f in run)
    assert [(f[0], f[2], int(f[3]), float(f[4])) for f in run] == [
        (r["query_id"], r["doc_id"], r["first_stage_rank"], r["first_stage_score"])
        for r in dirty.candidates.to_pylist()
    ]

    # TREC qrels: qid 0 docid rel.
    qrels = [line.split(" ") for line in paths["qrels"].read_text(encoding="utf-8").splitlines()]
    assert all(len(f) == 4 and f[1] == "0" for f in qrels)
    assert [(f[0], f[2], int(f[3])) for f in qrels] == [
        (r["query_id"], r["doc_id"], r["relevance"]) for r in dirty.qrels.to_pylist()
    ]


def test_write_refuses_unknown_format(clean, tmp_path):
    with pytest.raises(ConfigError, match=r"formats must be 'parquet' or 'mixed', got 'csv'\."):
        write_collection(clean, tmp_path, formats="csv")


def test_tables_are_arrow(clean):
    assert all(isinstance(getattr(clean, n), pa.Table) for n in ("queries", "corpus", "qrels", "candidates"))
