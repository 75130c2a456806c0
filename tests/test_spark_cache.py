"""The score cache on local Spark (deltalake underneath): key expressions, lookup, chunk commits."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from dear_udf.cache import CacheError, append_entries, chunk_of, doc_hash, entries_table, pair_key, query_hash, read_entries
from dear_udf.spark import cache as C
from tests.test_cache import RAW_DUPLICATES, RAW_PICKS, raw_entries

pytestmark = pytest.mark.spark

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
CAP = 12
KEY = "a" * 32

QUERIES = [
    ("q1", "what is a llama"),
    ("q2", "naïve café 😀 résumé"),  # accents and an astral character
    ("q3", ""),
    ("q4", None),
    ("q5", "長い質問です" * 3),  # CJK, longer than the cap
    ("q6", "e\u0301" * 8),  # combining marks: the cap counts code points
    ("q7", "12345678901😀tail"),  # the astral character is the cap's last
]
DOCS = [
    ("d1", None, "Llamas are camelids."),
    ("d2", "", "Llamas are camelids."),
    ("d3", "Llama", ""),
    ("d4", "ab", "c"),
    ("d5", "a", "bc"),
    ("d6", "\ufffd broken", "text with \ufffd replacement and \u00a0 no-break space"),
    ("d7", None, None),
    ("d8", "x" * 11 + "😀", "y" * 11 + "😀 beyond the cap"),
]


def test_spark_keys_equal_the_python_keys(spark):
    queries = spark.createDataFrame(QUERIES, "query_id string, query string")
    corpus = spark.createDataFrame(DOCS, "doc_id string, title string, text string")
    q = C.with_query_hash(queries, char_cap=CAP)
    d = C.with_doc_hash(corpus, char_cap=CAP)
    pairs = C.with_pair_key(q.crossJoin(d)).withColumn("chunk", C.chunk_col(7))
    got = {(r.query_id, r.doc_id): (r.query_hash, r.doc_hash, r.pair_key, r.chunk) for r in pairs.collect()}
    assert len(got) == len(QUERIES) * len(DOCS)
    for qid, query in QUERIES:
        for did, title, text in DOCS:
            key = pair_key(query, title, text, char_cap=CAP)
            expected = (query_hash(query, char_cap=CAP), doc_hash(title, text, char_cap=CAP), key, chunk_of(key, 7))
            assert got[(qid, did)] == expected, (qid, did)
    assert len({v[2] for v in got.values()}) == len(got)  # every pair its own key here
    # Without a cap the long texts hash whole: other keys than with the cap.
    uncapped = C.with_query_hash(queries, char_cap=None).where("query_id = 'q5'").first().query_hash
    assert uncapped == query_hash(QUERIES[4][1], char_cap=None) != got[("q5", "d1")][0]


def test_with_pair_key_needs_the_hashes(spark):
    df = spark.createDataFrame([("q", "d")], "query_id string, doc_id string")
    with pytest.raises(CacheError, match=r"pairs lack \['query_hash', 'doc_hash'\]"):
        C.with_pair_key(df)


def _pairs(spark, keys):
    return spark.createDataFrame([(f"q{i}", f"d{i}", k) for i, k in enumerate(keys)], "query_id string, doc_id string, pair_key string")


def test_lookup_splits_hits_and_misses_and_picks_one_duplicate(spark, tmp_path):
    uri = str(tmp_path / "cache")
    later = T0 + dt.timedelta(days=1)
    def scores(keys, values, **extra):
        return pa.table({"pair_key": keys, "score": pa.array(values, pa.float32()), "computed_key": ["c"] * len(keys), **extra})

    append_entries(uri, entries_table(scores(["a", "b"], [5.0, 3.0]), scorer_key=KEY, run_id="r2", scored_at=later))
    append_entries(uri, entries_table(scores(["a", "b"], [7.0, 4.0], pooled_early=[True, False]), scorer_key=KEY, run_id="r1", scored_at=T0))
    append_entries(uri, entries_table(scores(["b"], [2.0]), scorer_key=KEY, run_id="r3", scored_at=T0))
    # Another scorer's entry for pair c: a miss for this scorer, never its score.
    append_entries(uri, entries_table(scores(["c"], [1.0]), scorer_key="b" * 32, run_id="r1", scored_at=T0))
    # An entry without a computed key (as format 1 wrote them) cannot be tied: a miss.
    append_entries(uri, entries_table(pa.table({"pair_key": ["e"], "score": pa.array([1.0], pa.float32())}), scorer_key=KEY, run_id="r1", scored_at=T0))
    pairs = _pairs(spark, ["a", "b", "c", "d", "a", "e"])
    found = C.lookup(pairs, uri=uri, scorer_key=KEY)
    hits = sorted((r.query_id, r.pair_key, r.score, r.pooled_early) for r in found.hits.collect())
    # a: earliest entry (7.0 at T0, not 5.0 a day later); b: at T0 the lowest score (2.0).
    assert hits == [("q0", "a", 7.0, True), ("q1", "b", 2.0, None), ("q4", "a", 7.0, True)]
    assert sorted(r.query_id for r in found.misses.collect()) == ["q2", "q3", "q5"]
    assert found.misses.columns == pairs.columns
    assert found.hits.columns == [*pairs.columns, "score", "pooled_early", "pooled_in_query", "computed_key"]
    assert found.cached.count() == 2  # one row per pair key


def test_a_remote_cache_is_read_by_spark_from_its_file_list_as_the_user_wrote_its_location():
    from dear_udf.paths import location

    class Listed:  # what deltalake says of an s3a:// table: its own spelling of the root
        table_uri = "s3://bucket/cache/"

        def file_uris(self, **_):
            return ["s3://bucket/cache/scorer_key=k/part-0.parquet", "s3://bucket/cache/scorer_key=k/part-1.parquet"]

    got = C._files(Listed(), location("s3a://bucket/cache"), "k")
    assert got == ["s3a://bucket/cache/scorer_key=k/part-0.parquet", "s3a://bucket/cache/scorer_key=k/part-1.parquet"]


def test_a_cache_deltalake_cannot_open_is_refused_in_words_without_spark_delta(spark):
    for uri in ("dbfs:/tables/score-cache", "hdfs://namenode/tables/score-cache"):
        with pytest.raises(CacheError, match=rf"{uri}: deltalake cannot open a score cache there; .* through Spark's Delta"):
            C.lookup(_pairs(spark, ["a"]), uri=uri, scorer_key=KEY, spark_delta=False)


def test_lookup_on_a_cache_not_yet_made_misses_everything(spark, tmp_path):
    found = C.lookup(_pairs(spark, ["a", "b"]), uri=str(tmp_path / "new"), scorer_key=KEY)
    assert found.hits.count() == 0 and found.misses.count() == 2
    assert not (tmp_path / "new").exists()  # reading creates nothing


def test_lookup_refuses_a_table_of_another_schema(spark, tmp_path):
    other = tmp_path / "reranked"
    write_deltalake(str(other), pa.table({"query_id": ["q"], "score": [1.0]}))
    with pytest.raises(CacheError, match=rf"{other}: not a score cache"):
        C.lookup(_pairs(spark, ["a"]), uri=str(other), scorer_key=KEY)


def test_append_chunk_commits_one_transaction_that_the_next_lookup_hits(spark, tmp_path):
    uri = str(tmp_path / "cache")
    rows = [(f"q{i}", f"d{i}", pair_key(f"q{i}", None, f"d{i}", char_cap=None), float(i) / 4, i % 2 == 0, False, f"c{i}") for i in range(40)]
    rows.append(("qn", "dn", "f" * 32, float("nan"), False, False, "cn"))
    scored = spark.createDataFrame(rows, "query_id string, doc_id string, pair_key string, score float, pooled_early boolean, pooled_in_query boolean, computed_key string")
    chunks = 3
    counts = {}
    for chunk in range(chunks):
        part = scored.where(C.chunk_col(chunks) == chunk)
        result = C.append_chunk(part, uri=uri, scorer_key=KEY, run_id="2026-11-22", scored_at=T0)
        assert result["writer"] == "deltalake"
        counts[chunk] = result["rows"]
        assert result["rows"] == sum(chunk_of(r[2], chunks) == chunk for r in rows[:40])
        assert DeltaTable(uri).version() == result["version"]
    assert DeltaTable(uri).version() == chunks  # creation, then one commit per chunk
    assert sum(counts.values()) == 40  # the NaN score is not cached
    stored = read_entries(uri, KEY)
    assert sorted(stored.column("query_id").to_pylist()) == sorted(f"q{i}" for i in range(40))
    assert set(stored.column("run_id").to_pylist()) == {"2026-11-22"}
    assert stored.column("scored_at").to_pylist() == [T0] * 40
    found = C.lookup(scored.select("query_id", "doc_id", "pair_key"), uri=uri, scorer_key=KEY)
    assert sorted((r.pair_key, r.score, r.pooled_early) for r in found.hits.collect()) == sorted((r[2], r[3], r[4]) for r in rows[:40])
    assert [r.query_id for r in found.misses.collect()] == ["qn"]


def test_spark_and_arrow_pick_the_same_duplicate_nulls_first(spark):
    for rows in (RAW_DUPLICATES, RAW_DUPLICATES[::-1]):
        entries = spark.createDataFrame(raw_entries(rows).drop_columns(["scorer_key"]))
        got = sorted((r.pair_key, r.score, r.pooled_early, r.pooled_in_query) for r in C.pick_one(entries).collect())
        assert got == RAW_PICKS
