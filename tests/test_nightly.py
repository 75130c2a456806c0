"""Nights through the whole Spark job with a score cache (issue 10).

Every expectation here is counted from the inputs the test wrote, not from the job's code:
which (query, document) pairs a night's changes touch, and what an uncached run outputs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dear_udf import schema as S
from dear_udf.testing.faults import DIR_ENV, ENV, armed

from .jobdata import job_config, write_inputs

pytestmark = [pytest.mark.spark]

SCORE_TOL = 1e-6


def _run(spark, paths, model_dir, output, **extra):
    from dear_udf.spark.job import run_job

    return run_job(job_config(paths, model_dir, output, **extra), spark=spark)


def _output(path, run_id):
    """The night's rows as {(query, doc): (rank, score)}."""
    from deltalake import DeltaTable

    rows = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
    return {(r[S.QUERY_ID], r[S.DOC_ID]): (r[S.RANK], r[S.SCORE]) for r in rows if r[S.RUN_ID] == run_id}


def _assert_same_output(got, want, tol=SCORE_TOL):
    assert got.keys() == want.keys()
    for key, (rank, score) in want.items():
        assert got[key][0] == rank, key
        assert abs(got[key][1] - score) <= tol, (key, got[key][1], score)


def _cache_rows(path):
    from deltalake import DeltaTable

    return DeltaTable(str(path)).to_pyarrow_table()


def _appends(path):
    """The cache's commits that added rows (one per chunk)."""
    from deltalake import DeltaTable

    return [h for h in DeltaTable(str(path)).history() if h.get("operation") == "WRITE"]


# -- three nights --------------------------------------------------------------------------


def _night3_inputs(directory: Path, night1: dict) -> tuple[dict, set]:
    """Night 1's inputs with 10% of documents' texts changed, new documents, and a new
    query; returns the paths and the (query, doc) pairs those changes touch."""
    corpus = night1["corpus"].to_pylist()
    changed = {r["doc_id"] for i, r in enumerate(corpus) if i % 10 == 3}
    for r in corpus:
        if r["doc_id"] in changed:
            r["text"] = r["text"] + " changed tonight"
    new_docs = [{"doc_id": f"new{i}", "title": None, "text": f"a new document number {i} about llamas"} for i in range(6)]
    queries = night1["queries"].to_pylist() + [{"query_id": "qnew", "query": "where do llamas live"}]
    candidates = night1["candidates"].to_pylist()
    # New documents join the lists of two old queries, and the new query gets old and new ones.
    for i, doc in enumerate(new_docs[:4]):
        candidates.append({"query_id": f"q{i % 2}", "doc_id": doc["doc_id"], "first_stage_rank": 20 + i, "first_stage_score": 1.0})
    for rank, doc in enumerate(["d1", "d2", "d3", "new4", "new5"], start=1):
        candidates.append({"query_id": "qnew", "doc_id": doc, "first_stage_rank": rank, "first_stage_score": 10.0 - rank})
    touched = {
        (c["query_id"], c["doc_id"])
        for c in candidates
        if c["doc_id"] in changed or c["doc_id"].startswith("new") or c["query_id"] == "qnew"
    }
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    schemas = {"candidates": night1["candidates"].schema, "queries": night1["queries"].schema, "corpus": night1["corpus"].schema}
    for name, rows in (("queries", queries), ("corpus", corpus + new_docs), ("candidates", candidates)):
        paths[name] = str(directory / f"{name}.parquet")
        pq.write_table(pa.Table.from_pylist(rows, schema=schemas[name]), paths[name])
    return paths, touched


@pytest.fixture(scope="module")
def night1(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("night1"), queries=12, docs=150, per_query=12)


def test_three_nights_score_only_what_changed(spark, tiny_models, night1, tmp_path):
    model, cache, out = tiny_models["index227"], tmp_path / "cache", tmp_path / "reranked"
    pairs = night1["candidates"].num_rows  # every candidate has its query and document

    # Night 1 scores everything, in three chunks, each its own cache commit.
    first = _run(spark, night1["paths"], model, out, cache=str(cache), chunk_pairs=50, run_id="n1")
    assert (first.pairs_scored, first.cache_hits, first.cache_misses) == (pairs, 0, pairs)
    assert len(first.chunks) == 3
    assert sum(c["pairs"] for c in first.chunks) == pairs
    assert len(_appends(cache)) == 3
    assert _cache_rows(cache).num_rows == pairs
    assert first.cache == str(cache) and not first.cache_scratch

    # Night 2, same inputs: nothing scored, no model loaded, the same output. Any scoring
    # task would leave an "attempt" marker (and fail its first attempt): the night passes
    # only if no task ever starts to load a model.
    faults = tmp_path / "faults"
    with armed(spark, "fail-first-attempt", faults):
        second = _run(spark, night1["paths"], model, out, cache=str(cache), chunk_pairs=50, run_id="n2")
    assert not list(faults.glob("attempt-*"))
    assert (second.pairs_scored, second.cache_hits, second.cache_misses) == (0, pairs, 0)
    assert second.model_loads == 0 and second.chunks == [] and second.cache_hit_rate == 1.0
    assert second.accounted
    assert len(_appends(cache)) == 3  # nothing new committed
    _assert_same_output(_output(out, "n2"), _output(out, "n1"))

    # Night 3: 10% of documents changed, new documents, a new query: exactly those pairs scored.
    paths3, touched = _night3_inputs(tmp_path / "night3", night1)
    total3 = pq.read_table(paths3["candidates"]).num_rows
    third = _run(spark, paths3, model, out, cache=str(cache), chunk_pairs=50, run_id="n3")
    assert 0 < len(touched) < total3
    assert third.pairs_scored == len(touched)
    assert third.cache_hits == total3 - len(touched)
    assert _cache_rows(cache).num_rows == pairs + len(touched)
    # ... and its output equals a run without any cache.
    clean = _run(spark, paths3, model, tmp_path / "clean", run_id="n3")
    assert clean.cache_hits == 0 and clean.pairs_scored == total3
    _assert_same_output(_output(out, "n3"), _output(tmp_path / "clean", "n3"))


# -- what invalidates an entry ---------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("small"), queries=4, docs=30, per_query=5, seed=3)


@pytest.fixture(scope="module")
def filled(spark, tiny_models, small, tmp_path_factory):
    """A cache filled by one night of the base scorer (an adapter over the tiny model)."""
    tmp = tmp_path_factory.mktemp("filled")
    cache, pairs = tmp / "cache", small["candidates"].num_rows
    adapters = {"first": tiny_models["index227-lora"]}

    def night(output, adapter="first", dtype="float32", **layout):
        model = {"model": str(tiny_models["index227"]), "adapter": str(adapters[adapter]), "dtype": dtype, "device": "cpu"}
        return _run(spark, small["paths"], None, tmp / output, cache=str(cache), model=model, layout=layout)

    base = night("base")
    assert (base.pairs_scored, base.cache_hits) == (pairs, 0)
    again = night("again")
    assert (again.pairs_scored, again.cache_hits) == (0, pairs)  # the same scorer hits
    return {"night": night, "adapters": adapters, "base": base, "cache": cache, "pairs": pairs}


@pytest.mark.parametrize(
    "change",
    [{"adapter": "second"}, {"dtype": "bfloat16"}, {"pooling": "last-non-pad"}, {"special_tokens": "parse"}],
    ids=["adapter", "dtype", "pooling", "special-tokens"],
)
def test_a_scorer_change_gets_no_hits(tiny_models, filled, tmp_path, change):
    from .cachedata import read_entries

    if "adapter" in change:  # another adapter over the same base
        from dear_udf.testing import build_lora_adapter

        filled["adapters"]["second"] = build_lora_adapter(tiny_models["index227"], tmp_path / "second-lora", seed=7)
    changed = filled["night"](f"changed-{tmp_path.name}", **change)
    assert (changed.cache_hits, changed.pairs_scored) == (0, filled["pairs"])
    assert changed.scorer_key != filled["base"].scorer_key
    assert read_entries(str(filled["cache"]), changed.scorer_key).num_rows == filled["pairs"]
    assert read_entries(str(filled["cache"]), filled["base"].scorer_key).num_rows == filled["pairs"]


def _write(paths: dict, name: str, rows: list[dict], schema: pa.Schema, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    paths[name] = str(directory / f"{name}.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), paths[name])


def _perturb_cache(cache: Path, noise) -> None:
    """Rewrite every cached score as ``score + noise(entry)``: what other batches, another
    night's micro-batch shapes or a GPU's last bits give the same pairs."""
    from deltalake import DeltaTable, write_deltalake

    table = DeltaTable(str(cache)).to_pyarrow_table()
    entries = table.to_pylist()
    for e in entries:
        e[S.SCORE] += noise(e)
    write_deltalake(str(cache), pa.Table.from_pylist(entries, schema=table.schema), mode="overwrite", partition_by=["scorer_key"])


@pytest.fixture(scope="module")
def ties(small, tmp_path_factory):
    """Night 1 and night 2 inputs where DeAR ties pairs of one query three ways:

    - q0 holds a "!" (the pad id): pooled inside the query, all its candidates read the
      same ids; night 2 changes one of its documents;
    - q1: night 1 ranks "ok1" (title "Oklahoma!", pooled before its "!"); night 2 adds
      "ok2", another text under the same title, with a better first-stage rank;
    - q2: night 1 ranks "dup1", a long document; night 2 adds "dup2", the same text with
      another ending beyond the cut, with a better first-stage rank.
    """
    from dear_udf.testing import vocabulary

    root = tmp_path_factory.mktemp("ties")
    schemas = {name: small[name].schema for name in ("queries", "corpus", "candidates")}
    long_text = " ".join(vocabulary()[i % 300] for i in range(0, 2100, 7))  # far beyond 193 tokens
    queries = small["queries"].to_pylist()
    queries[0]["query"] += "! now"
    corpus = small["corpus"].to_pylist() + [
        {"doc_id": "ok1", "title": "Oklahoma!", "text": "a musical by rodgers and hammerstein"},
        {"doc_id": "dup1", "title": None, "text": long_text},
    ]
    candidates = small["candidates"].to_pylist() + [
        {"query_id": "q1", "doc_id": "ok1", "first_stage_rank": 40, "first_stage_score": 1.0},
        {"query_id": "q2", "doc_id": "dup1", "first_stage_rank": 40, "first_stage_score": 1.0},
    ]
    night1: dict = {}
    for name, rows in (("queries", queries), ("corpus", corpus), ("candidates", candidates)):
        _write(night1, name, rows, schemas[name], root / "night1")
    q0_docs = [c["doc_id"] for c in candidates if c["query_id"] == "q0"]
    corpus2 = [dict(r, text=r["text"] + " changed tonight") if r["doc_id"] == q0_docs[-1] else r for r in corpus]
    corpus2 += [
        {"doc_id": "ok2", "title": "Oklahoma!", "text": "the film of 1955, shot in todd-ao"},
        {"doc_id": "dup2", "title": None, "text": long_text + " and another ending, far beyond the cut"},
    ]
    candidates2 = candidates + [
        {"query_id": "q1", "doc_id": "ok2", "first_stage_rank": 0, "first_stage_score": 9.0},
        {"query_id": "q2", "doc_id": "dup2", "first_stage_rank": 0, "first_stage_score": 9.0},
    ]
    night2: dict = {}
    for name, rows in (("queries", queries), ("corpus", corpus2), ("candidates", candidates2)):
        _write(night2, name, rows, schemas[name], root / "night2")
    return {"night1": night1, "night2": night2, "q0": q0_docs, "pairs2": len(candidates2), "new2": 3 * 1 + 2}


def test_a_cached_night_publishes_what_an_uncached_night_does_when_dear_ties_pairs(spark, tiny_models, ties, tmp_path):
    """Issue 20's whole-job test: night 1 caches part of each tied group; night 2 adds the
    other members (better first-stage ranks) while the cached scores carry float noise
    that would put them first. Night 2 must equal an uncached run of night 2."""
    model, cache = tiny_models["index227"], tmp_path / "cache"
    first = _run(spark, ties["night1"], model, tmp_path / "n1", cache=str(cache), run_id="n1", top_k=10)
    assert first.queries_pooled_in_query_examples == ["q0"]
    # Cached members a little higher than tonight's scores of the same ids; q0's also out of
    # first-stage order. Well inside the check of hits' tolerance (1e-3 in fp32): float noise.
    ranks = {(c["query_id"], c["doc_id"]): c["first_stage_rank"] for c in pq.read_table(ties["night1"]["candidates"]).to_pylist()}
    _perturb_cache(cache, lambda e: 2e-6 + 1e-7 * ranks[(e[S.QUERY_ID], e[S.DOC_ID])])

    cached = _run(spark, ties["night2"], model, tmp_path / "n2", cache=str(cache), run_id="n2", top_k=10)
    assert cached.cache_hits > 0 and cached.cache_misses > 0
    assert cached.hit_check["pairs"] > 0 and 1e-6 < cached.hit_check["max_difference"] < 1e-4  # the noise, seen and accepted
    uncached = _run(spark, ties["night2"], model, tmp_path / "fresh", run_id="n2", top_k=10)
    assert uncached.cache_hits == 0
    got, want = _output(tmp_path / "n2", "n2"), _output(tmp_path / "fresh", "n2")
    _assert_same_output(got, want, tol=1e-5)  # same ranks; scores within the noise put in the cache
    # The ties themselves: one score exactly, and the better first-stage rank first.
    for query, older, newer in (("q1", "ok1", "ok2"), ("q2", "dup1", "dup2")):
        assert got[(query, older)][1] == got[(query, newer)][1], query
        assert got[(query, newer)][0] + 1 == got[(query, older)][0], query  # adjacent, the new one first
    q0 = {doc: got[("q0", doc)] for doc in ties["q0"]}
    assert len({score for _, score in q0.values()}) == 1
    assert sorted(q0, key=lambda doc: q0[doc][0]) == sorted(q0, key=lambda doc: ranks[("q0", doc)])


def test_cached_scores_that_disagree_with_the_scorer_stop_the_night_before_any_commit(spark, tiny_models, ties, tmp_path):
    from deltalake import DeltaTable

    from dear_udf.cache.table import CacheError

    model, cache = tiny_models["index227"], tmp_path / "cache"
    first = _run(spark, ties["night1"], model, tmp_path / "n1", cache=str(cache), run_id="n1")
    _perturb_cache(cache, lambda e: 0.01)  # another scorer's scores under this key
    version = DeltaTable(str(cache)).version()
    with pytest.raises(CacheError) as refused:
        _run(spark, ties["night2"], model, tmp_path / "n2", cache=str(cache), run_id="n2")
    message = str(refused.value)
    assert f"entries under scorer key {first.scorer_key} disagree with tonight's scorer" in message
    assert "differ by up to 0.01" in message and "Nothing was committed" in message and "--drop-scorer-key" in message
    assert DeltaTable(str(cache)).version() == version  # no chunk committed
    assert not (tmp_path / "n2").exists()


# -- refusals and the scratch cache ---------------------------------------------------------


def test_a_cache_path_holding_another_table_is_refused(spark, tiny_models, small, tmp_path):
    from deltalake import write_deltalake

    from dear_udf.cache.table import CacheError

    other = tmp_path / "not-a-cache"
    write_deltalake(str(other), pa.table({"query_id": ["q1"], "doc_id": ["d1"]}))
    with pytest.raises(CacheError, match=f"{other}: not a score cache"):
        _run(spark, small["paths"], tiny_models["index227"], tmp_path / "out", cache=str(other))
    assert not (tmp_path / "out").exists()


def test_without_cache_a_scratch_cache_is_used_then_removed(spark, tiny_models, small, tmp_path):
    from dear_udf.spark.score_step import scratch_cache_path

    out = tmp_path / "reranked"
    summary = _run(spark, small["paths"], tiny_models["index227"], out, chunk_pairs=7, run_id="night 1")
    assert summary.cache_scratch and summary.cache == scratch_cache_path(str(out), "night 1")
    assert Path(summary.cache).parent == tmp_path  # beside the output
    assert len(summary.chunks) == 3 and summary.pairs_scored == small["candidates"].num_rows
    assert not Path(summary.cache).exists()  # removed once the output was committed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reranked", "reranked.night 1.summary.json"]


# -- two runs sharing one cache --------------------------------------------------------------


def test_two_runs_sharing_a_cache_both_finish_and_lose_nothing(spark, tiny_models, night1, tmp_path):
    from .cachedata import read_entries
    from dear_udf.spark.score_cache import read_cache

    cache, model = tmp_path / "cache", tiny_models["index227"]
    pairs = night1["candidates"].num_rows
    results, errors = {}, []

    def night(name):
        try:
            results[name] = _run(spark, night1["paths"], model, tmp_path / name, cache=str(cache), chunk_pairs=40)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=night, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    assert set(results) == {"first", "second"}
    first, second = results["first"], results["second"]
    assert first.scorer_key == second.scorer_key
    assert first.pairs_scored + first.cache_hits == second.pairs_scored + second.cache_hits == pairs
    # Every commit landed: the cache holds every score either run made, duplicates included.
    entries = read_entries(str(cache), first.scorer_key)
    assert entries.num_rows == first.pairs_scored + second.pairs_scored
    assert len(_appends(cache)) == len(first.chunks) + len(second.chunks)
    # Every pair is there, and a lookup sees each pair key once.
    assert len(set(entries.column("pair_key").to_pylist())) == pairs
    cached = read_cache(spark, str(cache), scorer_key=first.scorer_key, spark_delta=False)
    assert cached.count() == cached.select("pair_key").distinct().count() == pairs
    _assert_same_output(_output(tmp_path / "first", "night-1"), _output(tmp_path / "second", "night-1"))


# -- a night killed part-way resumes ----------------------------------------------------------


def test_a_night_killed_after_a_chunk_resumes_with_the_rest(spark, tiny_models, night1, tmp_path):
    from .test_faults import _python, _spec, _wait_for

    model, cache, faults = tiny_models["index227"], tmp_path / "cache", tmp_path / "faults"
    pairs = night1["candidates"].num_rows
    from .jobdata import job_values

    run = {"name": "killed", "config": job_values(night1["paths"], model, tmp_path / "killed", cache=str(cache), chunk_pairs=40)}
    spec = _spec(tmp_path, "local[2]", [run])
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    with open(tmp_path / "killed.log", "w") as log:
        command, options = _python(
            [str(tmp_path / "spec.json")],
            env={ENV: "kill-after-chunk:2", DIR_ENV: str(faults)},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        driver = subprocess.Popen(command, **options)
        try:
            driver.wait(timeout=400)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
            else:
                try:
                    os.killpg(driver.pid, signal.SIGKILL)  # its JVM, if it outlived the driver
                except ProcessLookupError:
                    pass
    assert driver.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    fired = _wait_for(faults, "chunk-committed-*.json", timeout=5)
    assert (fired["chunk"], fired["chunks"]) == (2, 4)
    assert not (tmp_path / "killed").exists()  # no output was committed

    # Two chunks were committed; the rerun scores exactly the pairs they lack.
    committed = set(_cache_rows(cache).column("pair_key").to_pylist())
    assert len(_appends(cache)) == 2 and 0 < len(committed) < pairs
    rerun = _run(spark, night1["paths"], model, tmp_path / "resumed", cache=str(cache), chunk_pairs=40)
    assert rerun.cache_hits == len(committed)
    assert rerun.pairs_scored == pairs - len(committed)
    clean = _run(spark, night1["paths"], model, tmp_path / "clean")
    _assert_same_output(_output(tmp_path / "resumed", "night-1"), _output(tmp_path / "clean", "night-1"))
    assert clean.pairs_scored == pairs


def test_tasks_that_score_in_another_environment_file_their_scores_under_their_own_key(spark, tiny_models, small, tmp_path, monkeypatch, caplog):
    """The driver predicts the executors' environment; a task that scores elsewhere (a CPU
    fallback, other libraries, TF32 forced by the environment) tags its scores with its
    own scorer key. Here the driver alone sees NVIDIA_TF32_OVERRIDE (set after its Spark
    session, and so its Python workers, started): it expects another key than they use."""
    from .cachedata import read_entries

    model, cache = tiny_models["index227"], tmp_path / "cache"
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    with caplog.at_level("WARNING", logger="dear_udf.spark.steps"):
        skewed = _run(spark, small["paths"], model, tmp_path / "a", cache=str(cache), run_id="n1")
    assert skewed.scorer["environment"]["matmul"]["NVIDIA_TF32_OVERRIDE"] == "0"
    (used, fields), = skewed.scored_under_other_keys.items()
    assert used != skewed.scorer_key and "NVIDIA_TF32_OVERRIDE" not in fields["environment"]["matmul"]
    assert "not the expected" in caplog.text and used in caplog.text
    pairs = small["candidates"].num_rows
    assert read_entries(str(cache), used).num_rows == pairs  # filed under the key they were scored under
    assert read_entries(str(cache), skewed.scorer_key).num_rows == 0
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE")  # the driver now expects what the executors use
    matched = _run(spark, small["paths"], model, tmp_path / "b", cache=str(cache), run_id="n2")
    assert matched.scorer_key == used and (matched.cache_hits, matched.pairs_scored) == (pairs, 0)
    assert matched.scored_under_other_keys == {}
