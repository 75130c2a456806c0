"""The score cache on local Spark (deltalake underneath): key expressions, lookup, chunk commits."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from dear_udf import schema as S

from dear_udf.cache import CacheError, append_entries, chunk_of, doc_hash, entries_table, pair_key, query_hash
from dear_udf.spark import score_cache as C
from tests.cachedata import read_entries
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
    """Kept pairs as the score step looks them up: ids, first-stage columns, pair key."""
    return spark.createDataFrame(
        [(f"q{i}", f"d{i}", i + 1, 1.0, k) for i, k in enumerate(keys)],
        "query_id string, doc_id string, first_stage_rank int, first_stage_score double, pair_key string",
    )


def _lookup(pairs, uri):
    return C.lookup(pairs, uri=uri, scorer_key=KEY, spark_delta=False)


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
    found = _lookup(pairs, uri)
    hits = sorted((r.query_id, r.pair_key, r.score, r.pooled_early, r.scorer_key) for r in found.hits.collect())
    # a: earliest entry (7.0 at T0, not 5.0 a day later); b: at T0 the lowest score (2.0).
    assert hits == [("q0", "a", 7.0, True, KEY), ("q1", "b", 2.0, None, KEY), ("q4", "a", 7.0, True, KEY)]
    assert sorted(r.query_id for r in found.misses.collect()) == ["q2", "q3", "q5"]
    assert found.misses.columns == pairs.columns
    assert found.hits.columns == [*S.SCORED_PAIRS_SCHEMA.names, "pair_key"]  # the scored pairs' columns, as the model's
    assert C.read_cache(spark, uri, scorer_key=KEY, spark_delta=False).count() == 2  # one row per pair key (e has no computed key)
    counted = found.counted(lambda df: df.cache())
    assert (counted.hit_count, counted.miss_count) == (3, 3) and (found.hit_count, found.miss_count) == (None, None)


def test_every_reader_picks_the_same_duplicate_whatever_the_order_of_the_commits(spark, tmp_path):
    def entries(keys, values, at, run_id, **extra):
        scores = pa.table({"pair_key": keys, "score": pa.array(values, pa.float32()), "computed_key": ["c"] * len(keys), **extra})
        return entries_table(scores, scorer_key=KEY, run_id=run_id, scored_at=at)

    later = T0 + dt.timedelta(days=1)
    batches = [
        entries(["a", "b", "c"], [5.0, 3.0, 1.0], later, "r2"),
        entries(["a", "b"], [7.0, 4.0], T0, "r1"),
        entries(["b", "c"], [2.0, 0.5], T0, "r3", pooled_early=[True, None]),
    ]
    picks = []
    for name, order in (("forward", batches), ("backward", batches[::-1])):
        uri = str(tmp_path / name)
        for batch in order:
            append_entries(uri, batch)
        picks.append(sorted((r.pair_key, r.score, r.pooled_early) for r in C.read_cache(spark, uri, scorer_key=KEY, spark_delta=False).collect()))
    # a: the earliest entry (7.0 at T0 beats 5.0 a day later); b: at T0, the lowest score
    # (2.0); c: at T0 the only one (0.5): first committed wins, then the lowest score.
    assert picks[0] == picks[1] == [("a", 7.0, None), ("b", 2.0, True), ("c", 0.5, None)]


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
        with pytest.raises(CacheError, match=rf"{uri}: deltalake cannot open a Delta table there; .* through Spark's Delta"):
            _lookup(_pairs(spark, ["a"]), uri)


def test_lookup_on_a_cache_not_yet_made_misses_everything(spark, tmp_path):
    found = _lookup(_pairs(spark, ["a", "b"]), str(tmp_path / "new"))
    assert found.hits.count() == 0 and found.misses.count() == 2
    assert not (tmp_path / "new").exists()  # reading creates nothing


def test_lookup_refuses_a_table_of_another_schema(spark, tmp_path):
    other = tmp_path / "reranked"
    write_deltalake(str(other), pa.table({"query_id": ["q"], "score": [1.0]}))
    with pytest.raises(CacheError, match=rf"{other}: not a score cache"):
        _lookup(_pairs(spark, ["a"]), str(other))


def test_append_chunk_commits_one_transaction_that_the_next_lookup_hits(spark, tmp_path):
    uri = str(tmp_path / "cache")
    rows = [(f"q{i}", f"d{i}", 1, 1.0, pair_key(f"q{i}", None, f"d{i}", char_cap=None), float(i) / 4, i % 2 == 0, False, f"c{i}") for i in range(40)]
    rows.append(("qn", "dn", 1, 1.0, "f" * 32, float("nan"), False, False, "cn"))
    scored = spark.createDataFrame(rows, "query_id string, doc_id string, first_stage_rank int, first_stage_score double, pair_key string, "
                                         "score float, pooled_early boolean, pooled_in_query boolean, computed_key string")
    chunks = 3
    counts = {}
    for chunk in range(chunks):
        part = scored.where(C.chunk_col(chunks) == chunk)
        result = C.append_chunk(part, uri=uri, scorer_key=KEY, run_id="2026-11-22", scored_at=T0, spark_delta=False)
        assert result["writer"] == "deltalake"
        counts[chunk] = result["rows"]
        assert result["rows"] == sum(chunk_of(r[4], chunks) == chunk for r in rows[:40])
        assert DeltaTable(uri).version() == result["version"]
    assert DeltaTable(uri).version() == chunks  # creation, then one commit per chunk
    assert sum(counts.values()) == 40  # the NaN score is not cached
    stored = read_entries(uri, KEY)
    assert sorted(stored.column("query_id").to_pylist()) == sorted(f"q{i}" for i in range(40))
    assert set(stored.column("run_id").to_pylist()) == {"2026-11-22"}
    assert stored.column("scored_at").to_pylist() == [T0] * 40
    found = _lookup(scored.select("query_id", "doc_id", "first_stage_rank", "first_stage_score", "pair_key"), uri)
    assert sorted((r.pair_key, r.score, r.pooled_early) for r in found.hits.collect()) == sorted((r[4], r[5], r[6]) for r in rows[:40])
    assert [r.query_id for r in found.misses.collect()] == ["qn"]


def test_pick_one_puts_nulls_first_in_every_column_whatever_the_order(spark):
    for rows in (RAW_DUPLICATES, RAW_DUPLICATES[::-1]):
        entries = spark.createDataFrame(raw_entries(rows).drop_columns(["scorer_key"]))
        got = sorted((r.pair_key, r.score, r.pooled_early, r.pooled_in_query) for r in C.pick_one(entries).collect())
        assert got == RAW_PICKS


def _commits_of(uri, batches):
    for batch in batches:
        append_entries(uri, batch)


def test_compaction_keeps_every_pick(spark, tmp_path):
    from dear_udf.cache import cache_compact

    uri = str(tmp_path / "cache")
    # Each duplicate in its own commit (its own file), in both orders: the pick must not
    # depend on which file a row sits in, before or after the files are merged.
    rows = RAW_DUPLICATES + RAW_DUPLICATES[::-1]
    _commits_of(uri, [raw_entries([row]).set_column(0, "scorer_key", pa.array([KEY], pa.string())) for row in rows])
    before = sorted(tuple(r) for r in C.read_cache(spark, uri, scorer_key=KEY, spark_delta=False).collect())
    assert cache_compact(uri)["files_after"] == 1
    after = sorted(tuple(r) for r in C.read_cache(spark, uri, scorer_key=KEY, spark_delta=False).collect())
    assert after == before and sorted((r[0], r[1], r[2], r[3]) for r in before) == RAW_PICKS


def test_a_lookup_pinned_before_a_compaction_still_reads_its_snapshot(spark, tmp_path):
    from dear_udf.cache import cache_compact

    uri = str(tmp_path / "cache")
    def scores(keys, values):
        return entries_table(pa.table({"pair_key": keys, "score": pa.array(values, pa.float32()), "computed_key": ["c"] * len(keys)}),
                             scorer_key=KEY, run_id="r1", scored_at=T0)

    _commits_of(uri, [scores([k], [float(i)]) for i, k in enumerate("abc")])
    found = _lookup(_pairs(spark, ["a", "b", "c", "d"]), uri)  # lists the table's files now, reads them later
    # Meanwhile the night commits d, and `cache compact` folds every file, d's too, into one.
    _commits_of(uri, [scores(["d"], [9.0])])
    assert cache_compact(uri)["files_after"] == 1
    assert sorted((r.pair_key, r.score) for r in found.hits.collect()) == [("a", 0.0), ("b", 1.0), ("c", 2.0)]
    assert [r.pair_key for r in found.misses.collect()] == ["d"]  # the snapshot's miss, not the later commit's hit
    assert sorted(r.pair_key for r in _lookup(_pairs(spark, ["a", "d"]), uri).hits.collect()) == ["a", "d"]
