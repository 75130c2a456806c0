"""Bad input gets a defined outcome, counted in the run summary (issue 4).

One input set holds every kind of bad row at once (``bad_run``); the targeted tests below it
cover what cannot share that set (integer ids everywhere, conflicting duplicates, missing
paths and columns, malformed JSON, untrusted model files).

Outcomes checked (docs/reliability.md has the table):

- null, empty or whitespace-only ids: candidate dropped as ``null_id``; a query or document
  row without an id is ignored and counted in ``rows_without_id``;
- empty query text: ``empty_query_text``; empty text and empty title: ``empty_document``;
  empty text with a title, or a null title, is scored;
- unknown query or doc ids: ``query_id_not_in_queries`` / ``doc_id_not_in_corpus``;
- the same (query, doc) twice: ``duplicate_candidate`` (the best rank is kept);
- ids repeated in queries/corpus: identical rows collapsed and counted, differing rows refused;
- NaN or null first-stage rank/score: read as missing, counted, ranked last in first-stage
  order (a missing rank becomes the candidate's position);
- megabyte documents, special-token strings, invalid UTF-8: scored exactly as the core does.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dear_udf import schema as S
from dear_udf.exceptions import InputError, ModelLoadError
from dear_udf.testing import BOS, EOS, vocabulary

from .jobdata import job_config, write_inputs

pytestmark = [pytest.mark.spark]

TOL = 1e-4  # job vs core scores, float32 (different micro-batches pad differently)
MEGABYTE = (" ".join(vocabulary()) + " ") * 400  # > 1 MB of words
assert len(MEGABYTE) > 1_000_000


def _config(paths, model_dir, output, **extra):
    return job_config(paths, model_dir, output, **{"run_id": "bad-1", "top_k": 20, "depth": 10, **extra})


# -- one input set holding every kind of bad row ----------------------------------------

# Queries: MS MARCO TSV. Text after the first tab; bytes, so one holds invalid UTF-8.
QUERIES_TSV = b"".join(
    [
        b"q1\twhat is a llama\n",
        b"q2\t\n",  # empty text
        b"q3\t \t \n",  # whitespace only
        b"q4\tcaf\xff latte\n",  # invalid UTF-8
        f"q5\tllama {EOS} query\n".encode(),  # special-token string
        b"q6\tnever retrieved\n",  # no candidates
        b"q7\tall documents missing\n",
        b"q1\twhat is a llama\n",  # identical duplicate
        b" \tno id here\n",  # no id
        b"q8\tdeep list\n",
    ]
)
QUERY_TEXT = {
    "q1": "what is a llama",
    "q4": "caf\ufffd latte",
    "q5": f"llama {EOS} query",
    "q8": "deep list",
}

# Corpus: JSON Lines with title and text; a number as an id; one line with invalid UTF-8.
CORPUS_JSONL = [
    {"doc_id": "d1", "title": "Llama", "text": "The llama is a domesticated camelid."},
    {"doc_id": "d2", "title": None, "text": "A document without a title."},
    {"doc_id": "d3", "title": "Only a title", "text": ""},
    {"doc_id": "d4", "title": "", "text": None},  # empty document
    {"doc_id": "d5", "text": " \n\t\u00a0"},  # no title key, whitespace text: empty document
    b'{"doc_id": "d6", "title": "bad", "text": "bad \xff byte"}',
    {"doc_id": "d7", "title": "big", "text": MEGABYTE},
    {"doc_id": "d8", "title": "", "text": f"{BOS} injected {EOS} control {EOS}"},
    {"doc_id": 17, "title": "int id", "text": "a document with an integer id"},
    {"doc_id": "d1", "title": "Llama", "text": "The llama is a domesticated camelid."},  # identical duplicate
    {"title": "orphan", "text": "a row without an id"},
    *({"doc_id": f"d{i}", "title": f"t{i}", "text": " ".join(vocabulary()[i : i + 20])} for i in range(9, 14)),
]
DOCS = {
    r["doc_id"] if isinstance(r["doc_id"], str) else str(r["doc_id"]): (r.get("title"), r.get("text"))
    for r in CORPUS_JSONL
    if isinstance(r, dict) and "doc_id" in r
}
DOCS["d6"] = ("bad", "bad \ufffd byte")

NAN = float("nan")
# (query_id, doc_id, first_stage_rank as a double column, first_stage_score)
CANDIDATES = [
    ("q1", "d1", 1.0, 10.0),
    ("q1", "d2", 2.0, 9.0),  # null title: scored
    ("q1", "d3", 3.0, 8.0),  # title only: scored
    ("q1", "d4", 4.0, 7.0),  # empty_document
    ("q1", "d5", 5.0, 6.0),  # empty_document (whitespace)
    ("q1", "d6", NAN, 5.0),  # NaN rank -> missing; invalid UTF-8 text
    ("q1", "d7", None, NAN),  # null rank, NaN score; megabyte text
    ("q1", "d8", 8.0, None),  # null score; special tokens in text
    ("q1", "17", 9.0, 2.0),  # the corpus gave this id as a number
    ("q1", "d-missing", 10.0, 1.0),  # doc_id_not_in_corpus
    ("q1", "d1", 11.0, 0.5),  # duplicate_candidate (rank 1 kept)
    ("q1", None, 12.0, 0.1),  # null_id
    ("q2", "d1", 1.0, 3.0),  # empty_query_text
    ("q2", "d2", 2.0, 2.0),  # empty_query_text
    ("q3", "d1", 1.0, 3.0),  # empty_query_text (whitespace)
    ("q4", "d1", 1.0, 3.0),
    ("q4", "d6", 2.0, 2.0),
    ("q5", "d1", 1.0, 3.0),
    ("q5", "d8", 2.0, 2.0),
    ("q7", "d-missing", 1.0, 3.0),  # doc_id_not_in_corpus
    ("q7", "d4", 2.0, 2.0),  # empty_document -> q7 has nothing to rank
    ("q-unknown", "d1", 1.0, 1.0),  # query_id_not_in_queries
    (None, "d1", 1.0, 1.0),  # null_id
    ("  ", "d2", 1.0, 1.0),  # null_id (blank)
    *(("q8", d, float(r), 20.0 - r) for r, d in enumerate(["d1", "d2", "d3", "d6", "d7", "d8", "17", "d9", "d10", "d11", "d12", "d13"], start=1)),
]
EXPECTED_DROPPED = {
    "null_id": 3,
    "duplicate_candidate": 1,
    "beyond_depth": 2,  # q8's d12, d13 (depth 10)
    "query_id_not_in_queries": 1,
    "empty_query_text": 3,
    "doc_id_not_in_corpus": 2,
    "empty_document": 3,
}
EXPECTED_SCORED = {
    "q1": {"d1", "d2", "d3", "d6", "d7", "d8", "17"},
    "q4": {"d1", "d6"},
    "q5": {"d1", "d8"},
    "q8": {"d1", "d2", "d3", "d6", "d7", "d8", "17", "d9", "d10", "d11"},
}


def _write_bad_inputs(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "queries.tsv").write_bytes(QUERIES_TSV)
    lines = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in CORPUS_JSONL]
    (root / "corpus.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    q, d, r, s = zip(*CANDIDATES)
    table = pa.table(
        {
            "query_id": pa.array(q, pa.string()),
            "doc_id": pa.array(d, pa.string()),
            "first_stage_rank": pa.array(r, pa.float64()),
            "first_stage_score": pa.array(s, pa.float64()),
        }
    )
    pq.write_table(table, root / "candidates.parquet")
    return {name: str(root / f) for name, f in (("queries", "queries.tsv"), ("corpus", "corpus.jsonl"), ("candidates", "candidates.parquet"))}


@pytest.fixture(scope="module")
def bad_run(spark, tiny_models, tmp_path_factory):
    from deltalake import DeltaTable

    from dear_udf.spark.job import run_job

    root = tmp_path_factory.mktemp("bad")
    paths = _write_bad_inputs(root / "inputs")
    summary = run_job(_config(paths, tiny_models["index227"], root / "out"), spark=spark)
    rows = DeltaTable(str(root / "out")).to_pyarrow_table().to_pylist()
    written = json.loads((root / "out.bad-1.summary.json").read_text())
    return summary, rows, written


@pytest.fixture(scope="module")
def core(tiny_models):
    from dear_udf.model import ModelSpec, load_model
    from dear_udf.scorer import Scorer

    return Scorer(load_model(ModelSpec(model=str(tiny_models["index227"]))), batch_size=16)


def test_every_candidate_is_scored_or_dropped_with_its_reason(bad_run):
    summary, rows, written = bad_run
    assert summary.candidates_read == len(CANDIDATES) == 36
    assert summary.dropped == EXPECTED_DROPPED
    assert summary.pairs_scored == sum(len(v) for v in EXPECTED_SCORED.values()) == 21
    assert summary.candidates_read == summary.pairs_scored + sum(summary.dropped.values())
    assert written["accounted"] is True and written["queries_accounted"] is True
    assert written["candidates_dropped"] == 15
    got: dict[str, set] = {}
    for r in rows:
        got.setdefault(r[S.QUERY_ID], set()).add(r[S.DOC_ID])
    assert got == EXPECTED_SCORED  # top_k=20 keeps every scored pair
    assert len(rows) == len({(r[S.QUERY_ID], r[S.DOC_ID]) for r in rows})


def test_every_query_of_the_candidates_is_output_or_has_nothing_to_rank(bad_run):
    summary, rows, _ = bad_run
    output = {r[S.QUERY_ID] for r in rows}
    nothing = set(summary.queries_with_nothing_to_rank)
    assert nothing == {"q2", "q3", "q7", "q-unknown"}
    assert output.isdisjoint(nothing)
    assert output | nothing == {q for q, *_ in CANDIDATES if q and q.strip()}
    assert summary.queries_in_candidates == 8
    assert summary.queries_with_nothing_to_rank_count == 4
    assert summary.output_queries == 4


def test_rows_that_are_not_candidates_are_counted(bad_run):
    summary, _, _ = bad_run
    assert summary.rows_read == {"queries": 10, "corpus": 16, "candidates": 36}
    assert summary.duplicate_ids_collapsed == {"queries": 1, "corpus": 1}
    assert summary.texts_with_invalid_utf8 == {"queries": 1, "corpus": 1}
    assert summary.rows_without_id == {"queries": 1, "corpus": 1}
    assert summary.queries_without_candidates == 1  # q6
    # Ranks: d6 (NaN), d7 (null); scores: d7 (NaN), d8 (null).
    assert summary.first_stage_missing == {"rank": 2, "score": 2}


def test_missing_ranks_become_positions_after_the_ranked_candidates(bad_run):
    _, rows, _ = bad_run
    by = {(r[S.QUERY_ID], r[S.DOC_ID]): r for r in rows}
    # q1's first-stage order: ranks 1..5, 8, 9, 10 first, then the unranked by score
    # (d6 at 5.0, then d7 whose NaN score is missing). They rank after the largest rank,
    # 10: their positions, 9 and 10, would tie with the real ranks 9 and 10.
    assert by[("q1", "d6")][S.FIRST_STAGE_RANK] == 11
    assert by[("q1", "d7")][S.FIRST_STAGE_RANK] == 12
    assert by[("q1", "d2")][S.FIRST_STAGE_RANK] == 2
    assert by[("q1", "d7")][S.FIRST_STAGE_SCORE] is None  # NaN is written as null
    assert by[("q1", "d8")][S.FIRST_STAGE_SCORE] is None
    assert by[("q1", "d1")][S.FIRST_STAGE_RANK] == 1  # the duplicate at rank 11 was dropped


def test_a_missing_rank_sorts_after_every_real_rank_of_its_query(spark):
    """Ranks 1, 5, 100 and a missing one: the missing one is 101 (its position, 4, would
    put it ahead of 5 and 100) in the output, the tie-breaks and the first-stage metrics."""
    from pyspark.sql import functions as F

    from dear_udf.spark.stages import DROP_REASON, candidate_status, top_k

    candidates = spark.createDataFrame(
        [("q", "a", 1, None), ("q", "b", 5, None), ("q", "c", 100, None), ("q", "x", None, None), ("r", "y", None, 2.0), ("r", "z", None, 1.0)],
        "query_id string, doc_id string, first_stage_rank int, first_stage_score double",
    )
    queries = spark.createDataFrame([("q", "a query"), ("r", "another")], "query_id string, query string")
    corpus = spark.createDataFrame([(d, None, "text " + d) for d in "abcxyz"], "doc_id string, title string, text string")
    status = candidate_status(candidates, queries, corpus, depth=10)
    ranks = {r[S.DOC_ID]: r[S.FIRST_STAGE_RANK] for r in status.collect()}
    assert ranks == {"a": 1, "b": 5, "c": 100, "x": 101, "y": 1, "z": 2}  # no rank at all: the position
    # Equal scores: the tie-break follows the first-stage rank, so x comes last.
    scored = status.filter(status[DROP_REASON].isNull()).drop(DROP_REASON).withColumn(S.SCORE, F.lit(0.5))
    top = top_k(scored.filter(scored[S.QUERY_ID] == "q"), k=4, run_id="r", model="m").orderBy(S.RANK).collect()
    assert [(r[S.DOC_ID], r[S.FIRST_STAGE_RANK]) for r in top] == [("a", 1), ("b", 5), ("c", 100), ("x", 101)]


def test_scores_equal_the_core_for_every_awkward_row(bad_run, core):
    """Null titles, title-only docs, a megabyte text (cut in Spark), special-token strings
    and U+FFFD all score exactly as the core scores the full, uncut texts."""
    _, rows, _ = bad_run
    rows = sorted(rows, key=lambda r: (r[S.QUERY_ID], r[S.DOC_ID]))
    expected = core.score(
        [QUERY_TEXT[r[S.QUERY_ID]] for r in rows],
        [DOCS[r[S.DOC_ID]][0] for r in rows],
        [DOCS[r[S.DOC_ID]][1] for r in rows],
    )
    got = np.array([r[S.SCORE] for r in rows], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=TOL)
    # Ranks follow the scores within each query.
    for qid in EXPECTED_SCORED:
        ranked = sorted((r for r in rows if r[S.QUERY_ID] == qid), key=lambda r: r[S.RANK])
        assert [r[S.RANK] for r in ranked] == list(range(1, len(ranked) + 1))
        assert all(a[S.SCORE] >= b[S.SCORE] for a, b in zip(ranked, ranked[1:]))


def test_special_token_strings_are_plain_text(bad_run, core, tiny_models):
    """``<|end_of_text|>`` in a document is tokenized as text, not as the EOS id."""
    from dear_udf.tokenization import Layout
    from dear_udf.scorer import Scorer

    _, rows, _ = bad_run
    ids = core.encoder.encode([QUERY_TEXT["q5"]], [""], [DOCS["d8"][1]]).ids
    tok = core.loaded.tokenizer
    assert ids[0].count(tok.bos_token_id) == 2  # only the layout's own two
    assert tok.eos_token_id not in ids[0]
    parsing = Scorer(core.loaded, layout=Layout(special_tokens="parse"), batch_size=16)
    job = next(r[S.SCORE] for r in rows if (r[S.QUERY_ID], r[S.DOC_ID]) == ("q5", "d8"))
    split = float(core.score([QUERY_TEXT["q5"]], [""], [DOCS["d8"][1]])[0])
    parsed = float(parsing.score([QUERY_TEXT["q5"]], [""], [DOCS["d8"][1]])[0])
    assert abs(job - split) <= TOL
    assert abs(job - parsed) > 10 * TOL  # the test can tell the two modes apart


def test_output_records_the_model_and_its_fingerprint(bad_run, tiny_models):
    from dear_udf.model import ModelSpec, inspect_model

    summary, rows, written = bad_run
    info = inspect_model(ModelSpec(model=str(tiny_models["index227"])))
    assert summary.settings["model_fingerprint"] == info.fingerprint
    assert written["settings"]["model_revision"] is None  # a local folder has no revision
    assert {r[S.MODEL] for r in rows} == {f"{tiny_models['index227']}#{info.fingerprint[:16]}"} == {summary.model}


# -- targeted --------------------------------------------------------------------------


def test_texts_are_cut_to_the_char_cap_before_python(spark):
    from dear_udf.spark.stages import DROP_REASON, kept_pairs

    status = spark.createDataFrame(
        [("q", "d", "x" * 5000, "t" * 3000, MEGABYTE, 1, 1.0, None)],
        f"query_id string, doc_id string, query string, title string, text string, "
        f"first_stage_rank int, first_stage_score double, {DROP_REASON} string",
    )
    row = kept_pairs(status, char_cap=2048).collect()[0]
    assert (len(row[S.QUERY]), len(row[S.TITLE]), len(row[S.TEXT])) == (2048, 2048, 2048)
    assert row[S.TEXT] == MEGABYTE[:2048]


def test_integer_ids_everywhere_are_strings(spark, tiny_models, tmp_path):
    from deltalake import DeltaTable

    from dear_udf.spark.job import run_job

    pq.write_table(pa.table({"qid": pa.array([1, 2], pa.int64()), "query": ["llama", "coffee"]}), tmp_path / "q.parquet")
    pq.write_table(pa.table({"pid": pa.array([10, 20, 30], pa.int32()), "text": ["a llama", "coffee beans", "rivers"]}), tmp_path / "c.parquet")
    pq.write_table(
        pa.table({"qid": [1, 1, 2, 2], "pid": pa.array([10, 30, 20, 30], pa.int64()), "rank": [1, 2, 1, 2]}),
        tmp_path / "r.parquet",
    )
    paths = {"queries": str(tmp_path / "q.parquet"), "corpus": str(tmp_path / "c.parquet"), "candidates": str(tmp_path / "r.parquet")}
    summary = run_job(_config(paths, tiny_models["index227"], tmp_path / "out"), spark=spark)
    assert summary.pairs_scored == summary.candidates_read == 4 and summary.dropped == {}
    table = DeltaTable(str(tmp_path / "out")).to_pyarrow_table()
    assert table.schema.field(S.QUERY_ID).type == pa.string()
    assert sorted((r[S.QUERY_ID], r[S.DOC_ID]) for r in table.to_pylist()) == [("1", "10"), ("1", "30"), ("2", "20"), ("2", "30")]


def test_conflicting_duplicate_ids_are_refused_by_name(spark, tiny_models, tmp_path):
    from dear_udf.spark.job import run_job
    from dear_udf.spark.counts import collect_row, duplicate_ids, refuse_conflicts

    data = write_inputs(tmp_path / "inputs", queries=3, docs=10, per_query=3)
    corpus = data["corpus"].to_pylist()
    corpus += [dict(corpus[1]), dict(corpus[2], text="another text"), dict(corpus[3], title="another title")]
    bad = tmp_path / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(corpus, schema=data["corpus"].schema), bad)
    paths = dict(data["paths"], corpus=str(bad))
    with pytest.raises(InputError, match=r"corpus\.parquet: 2 doc_id\(s\) appear with different contents, e\.g\. \['d2', 'd3'\]"):
        run_job(_config(paths, tiny_models["index227"], tmp_path / "out"), spark=spark)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.bad-1.summary.json").exists()
    # The identical repeat alone is collapsed and counted; rows without an id are left out.
    df = spark.createDataFrame([("a", "x"), ("a", "x"), ("b", "y"), (None, "p"), (None, "q"), (" ", "r")], "query_id string, query string")
    counts = collect_row([duplicate_ids(df, "queries", S.QUERY_ID, [S.QUERY])])
    assert counts == {"queries_collapsed": 1, "queries_conflicts": 0}
    refuse_conflicts(df, S.QUERY_ID, [S.QUERY], conflicts=counts["queries_conflicts"], path="queries")  # no error


@pytest.mark.parametrize(
    "which, content, message",
    [
        ("candidates", None, r"nope\.parquet: no such file"),
        ("corpus", {"doc_id": ["d1"], "body_text": ["x"]}, r"corpus\.parquet: missing required column\(s\) \['text'\] for corpus; columns present: \['doc_id', 'body_text'\]"),
        ("queries", {"query": ["x"]}, r"queries\.parquet: missing required column\(s\) \['query_id'\] for queries"),
        ("candidates", {"query_id": ["q1"], "doc_id": ["d1"]}, r"candidates\.parquet: candidates need a first-stage rank or score column"),
    ],
)
def test_missing_paths_and_columns_fail_before_scoring(spark, tiny_models, tmp_path, which, content, message):
    from dear_udf.spark.job import run_job

    data = write_inputs(tmp_path / "inputs", queries=2, docs=5, per_query=2)
    path = tmp_path / ("nope.parquet" if content is None else f"{which}.parquet")
    if content is not None:
        pq.write_table(pa.table(content), path)
    paths = dict(data["paths"], **{which: str(path)})
    with pytest.raises(InputError, match=message):
        run_job(_config(paths, tiny_models["index227"], tmp_path / "out"), spark=spark)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.bad-1.summary.json").exists()


def test_malformed_json_line_is_named(spark, tiny_models, tmp_path):
    from dear_udf.spark.job import run_job

    data = write_inputs(tmp_path / "inputs", queries=2, docs=5, per_query=2)
    bad = tmp_path / "queries.jsonl"
    bad.write_text('{"query_id": "q0", "query": "fine"}\n\n{"query_id": "q1", "query": "cut off\n')
    paths = dict(data["paths"], queries=str(bad))
    with pytest.raises(InputError) as info:
        run_job(_config(paths, tiny_models["index227"], tmp_path / "out"), spark=spark)
    # The local reader's message, word for word.
    assert str(info.value) == f"{bad}, line 3: not a JSON object: " + repr('{"query_id": "q1", "query": "cut off') + "."


def test_invalid_utf8_in_jsonl_keeps_the_record(spark, tmp_path):
    """Spark's own JSON reader would null the whole record (id included)."""
    from dear_udf.config import InputSpec
    from dear_udf.spark.read import read_input

    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"doc_id": "a", "text": "ok"}\n{"doc_id": "b", "text": "bad \xff byte"}\n{"doc_id": "c", "text": "cut \xe2\x82"}\n')
    rows = sorted((r[S.DOC_ID], r[S.TEXT]) for r in read_input(spark, InputSpec(str(path)), "corpus").collect())
    assert rows == [("a", "ok"), ("b", "bad \ufffd byte"), ("c", "cut \ufffd")]


# -- model files are untrusted input (SECURITY.md) ---------------------------------------


def test_executor_refuses_model_files_the_driver_did_not_fingerprint(spark, tiny_models):
    from dear_udf.tokenization import Layout
    from dear_udf.model import ModelSpec
    from dear_udf.spark.udf import ScoringSettings, score_pairs

    pairs = spark.createDataFrame(
        [("q", "d", "a query", "", "a text", 1, 1.0)],
        "query_id string, doc_id string, query string, title string, text string, first_stage_rank int, first_stage_score double",
    )
    settings = ScoringSettings(spec=ModelSpec(model=str(tiny_models["index227"])), layout=Layout(), batch_size=16, max_tokens=None,
                               expected_fingerprint="0" * 64)
    with pytest.raises(Exception, match=r"fingerprint .* the driver saw 0000000000000000"):
        score_pairs(pairs, settings).collect()


@pytest.mark.parametrize("bad", ["two-labels", "custom-code", "cuda-without-cuda"])
def test_bad_models_are_refused_before_any_executor_loads_one(spark, tiny_models, tmp_path, monkeypatch, bad):
    """Issue 13, case 10: refused on the driver in one line, before Spark scores anything
    (these were a wall of worker tracebacks)."""
    import torch

    from dear_udf.spark import udf
    from dear_udf.spark.job import run_job
    from dear_udf.testing import build_broken_model

    def never(*args, **kwargs):
        raise AssertionError("the scoring function was built: executors would load the model")

    monkeypatch.setattr(udf, "make_scoring_function", never)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the driver is the local executor
    data = write_inputs(tmp_path / "inputs", queries=2, docs=5, per_query=2)
    model, device = tiny_models["index227"], "cuda"
    if bad != "cuda-without-cuda":
        model, device = build_broken_model(model, tmp_path / bad, bad), "cpu"
    config = _config(data["paths"], model, tmp_path / "out", model={"model": str(model), "device": device})
    with pytest.raises(ModelLoadError) as info:
        run_job(config, spark=spark)
    message = str(info.value)
    assert "\n" not in message
    assert {"two-labels": "num_labels is 2", "custom-code": "custom code", "cuda-without-cuda": "device 'cuda': CUDA is not available"}[bad] in message
    assert not (tmp_path / "out").exists()


def test_a_worker_refusal_reaches_the_driver_in_one_line(spark, tiny_models):
    """Where only the executors can tell (a cluster whose driver has no GPU), their refusal
    is re-raised on the driver as the worker's own error, not as a Java traceback."""
    from dear_udf.tokenization import Layout
    from dear_udf.model import ModelSpec
    from dear_udf.spark.udf import ScoringSettings, score_pairs, worker_errors

    pairs = spark.createDataFrame(
        [("q", "d", "a query", "", "a text", 1, 1.0)],
        "query_id string, doc_id string, query string, title string, text string, first_stage_rank int, first_stage_score double",
    )
    settings = ScoringSettings(spec=ModelSpec(model=str(tiny_models["index227"]), device="cuda:99"), layout=Layout(), batch_size=16, max_tokens=None)
    with pytest.raises(ModelLoadError, match=r"^device 'cuda:99': ") as info:
        with worker_errors():
            score_pairs(pairs, settings).count()
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
    with pytest.raises(ZeroDivisionError):  # other errors pass through unchanged
        with worker_errors():
            1 / 0


def test_model_code_shipped_with_the_weights_never_runs(tiny_models, tmp_path):
    from dear_udf.model import ModelSpec, load_model

    model = tmp_path / "with-code"
    shutil.copytree(tiny_models["index227"], model)
    marker = tmp_path / "code-ran"
    (model / "custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForSequenceClassification\n"
        "class C(LlamaConfig):\n    pass\n"
        "class M(LlamaForSequenceClassification):\n    pass\n"
    )
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.C", "AutoModelForSequenceClassification": "custom.M"}
    (model / "config.json").write_text(json.dumps(config))
    # A built-in architecture loads with the library's own class, ignoring the code.
    loaded = load_model(ModelSpec(model=str(model)))
    assert type(loaded.model).__name__ == "LlamaForSequenceClassification"
    # An architecture only the shipped code knows is refused.
    config["model_type"] = "custom-llama"
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"with-code.*custom code"):
        load_model(ModelSpec(model=str(model)))
    assert not marker.exists()

