"""Several adapters over one base: exact scores, flags and refusals, side by side and
routing through the whole job, the cache per adapter, and per-adapter metrics."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dear_udf import schema as S
from dear_udf.exceptions import ConfigError, InputError, ModelLoadError

from .jobdata import job_config, write_inputs

QUERIES = ["what is a llama", "how tall are giraffes", "a", "what is a llama"]
TEXTS = ["The llama is a camelid.", "Giraffes are tall animals with long necks.", "b", "Llamas hum."]


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory):
    """Two more adapters over the tiny index227 base (seeds other than the fixture's)."""
    from dear_udf.testing import build_lora_adapter

    root = tmp_path_factory.mktemp("adapters")
    base = tiny_models["index227"]
    return {
        "base_dir": base,
        "med": tiny_models["index227-lora"],
        "law": build_lora_adapter(base, root / "law", seed=7),
        "news": build_lora_adapter(base, root / "news", seed=11),
    }


def _spec(adapters, name=None, **extra):
    from dear_udf.model import ModelSpec

    return ModelSpec(model=str(adapters["base_dir"]), adapter=str(adapters[name]) if name else None, **extra)


# -- the model: one base, adapters swapped in, scores exact ------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_each_adapter_scores_bitwise_as_a_single_adapter_run(adapters, dtype):
    from dear_udf.model import load_model
    from dear_udf.model.adapters import load_adapters
    from dear_udf.scorer import Scorer

    specs = {name: _spec(adapters, name, dtype=dtype) for name in ("med", "law")}
    specs["base"] = _spec(adapters, dtype=dtype)
    bank = load_adapters(specs)
    scorers = {name: Scorer(bank.loaded[name]) for name in specs}
    got = {}
    for name in ["law", "med", "base", "law"]:  # any order: each call swaps its adapter in
        got[name] = scorers[name].score(QUERIES, None, TEXTS)
        single = load_model(specs[name])
        assert np.array_equal(got[name], Scorer(single).score(QUERIES, None, TEXTS)), name
        assert bank.loaded[name].fingerprint == single.fingerprint and bank.loaded[name].label == single.label
    assert not np.allclose(got["law"], got["med"]) and not np.allclose(got["med"], got["base"])
    # Only the adapted tensors are held twice: the base's embeddings and norms are shared.
    assert 0 < bank.extra_bytes() < 2 * sum(p.numel() * p.element_size() for p in bank.model.parameters())
    assert not any("embed" in name or "norm" in name for name in bank.swapped)


def test_adapter_scores_match_deAR_reference(adapters):
    from dear_udf.model.adapters import load_adapters
    from dear_udf.scorer import Scorer
    from dear_udf.testing.reference import DearReference

    bank = load_adapters({name: _spec(adapters, name) for name in ("med", "law")})
    for name in ("med", "law"):
        reference = DearReference.load(str(adapters["base_dir"]), str(adapters[name])).score(QUERIES, None, TEXTS)
        np.testing.assert_allclose(Scorer(bank.loaded[name]).score(QUERIES, None, TEXTS), reference, atol=1e-5, rtol=0)


def test_an_adapter_that_does_not_fit_the_base_is_refused_before_loading(adapters, tmp_path):
    from dear_udf.model import ModelSpec, inspect_model
    from dear_udf.testing import build_tiny_dear

    wide = build_tiny_dear(tmp_path / "wide", hidden_size=96, intermediate_size=128)
    with pytest.raises(ModelLoadError, match=rf"{adapters['law']}: the adapter does not fit the base model {wide}: .*lora_.*does not fit"):
        inspect_model(ModelSpec(model=str(wide), adapter=str(adapters["law"])))


# -- settings ----------------------------------------------------------------------------------


def _parse(*argv):
    import argparse

    from dear_udf.config import add_job_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_job_arguments(parser)
    base = ["--queries", "q.parquet", "--corpus", "c.parquet", "--candidates", "r.parquet", "--output", "out"]
    return config_from_args(parser.parse_args([*base, *argv]))


def test_adapter_flags_name_several_and_one_unnamed_keeps_working():
    config = _parse("--model", "/m", "--adapter", "med=/a/med", "--adapter", "law=/a/law", "--side-by-side", "--side-by-side-base")
    assert config.model.adapters == (("med", "/a/med"), ("law", "/a/law")) and config.model.adapter is None
    assert config.adapter_names == ("med", "law", "base")
    assert {n: s.adapter for n, s in config.model.each_adapter().items()} == {"med": "/a/med", "law": "/a/law"}
    single = _parse("--model", "/m", "--adapter", "/a/med")
    assert single.model.adapter == "/a/med" and single.model.adapters == () and single.adapter_names == ()
    routed = _parse("--model", "/m", "--adapter", "med=/a/med", "--adapter", "law=/a/law", "--adapter-column", "domain", "--default-adapter", "law")
    assert (routed.adapter_column, routed.default_adapter, routed.side_by_side) == ("domain", "law", False)


def test_yaml_names_adapters_under_model(tmp_path):
    import argparse

    from dear_udf.config import add_job_arguments, config_from_args

    (tmp_path / "job.yaml").write_text(
        "queries: q.parquet\ncorpus: c.parquet\ncandidates: r.parquet\noutput: out\n"
        "model:\n  model: /m\n  adapters:\n    med: /a/med\n    law: /a/law\nside_by_side: true\n"
    )
    parser = argparse.ArgumentParser()
    add_job_arguments(parser)
    config = config_from_args(parser.parse_args(["--config", str(tmp_path / "job.yaml")]))
    assert config.model.adapter_names == ("med", "law") and config.side_by_side


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--adapter", "med=/a", "--adapter", "med=/b", "--side-by-side"], r"adapter name\(s\) \['med'\] used twice"),
        (["--adapter", "/a", "--adapter", "law=/b"], r"one unnamed --adapter PATH, or name each one"),
        (["--adapter", "/a", "--side-by-side"], r"--side-by-side need named adapters"),
        (["--adapter-column", "domain"], r"--adapter-column need named adapters"),
        (["--adapter", "a=/a", "--adapter", "b=/b", "--side-by-side", "--adapter-column", "d"], "exclude each other"),
        (["--adapter", "a=/a", "--adapter", "b=/b"], r"2 named adapters \['a', 'b'\]: say how to use them"),
        (["--adapter", "a=/a", "--adapter-column", "d", "--default-adapter", "z"], r"default_adapter 'z' is not a named adapter; named: \['a'\]"),
        (["--adapter", "base=/a", "--adapter", "b=/b", "--side-by-side", "--side-by-side-base"], "an adapter is named 'base'"),
        (["--adapter", "a=/a", "--side-by-side-base"], "side_by_side_base .* needs side_by_side"),
    ],
)
def test_adapter_settings_are_refused_by_name(argv, message):
    with pytest.raises(ConfigError, match=message):
        _parse("--model", "/m", *argv)


def test_serve_takes_one_adapter_only():
    from dear_udf.serve.settings import build_serve_config

    with pytest.raises(ConfigError, match="serve scores with one model"):
        build_serve_config({}, {"model": {"model": "/m", "adapters": [("a", "/a"), ("b", "/b")]}})


# -- the job -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = write_inputs(tmp_path_factory.mktemp("inputs"), queries=6, docs=40, per_query=6, seed=3)
    # A routing column on the queries: q0..q2 med, q3 law, q4 empty (the default), q5 med.
    domains = ["med", "med", "med", "law", "  ", "med"]
    routed = d["queries"].append_column("domain", pa.array(domains))
    d["paths"]["routed"] = str(d["paths"]["queries"]).replace("queries.parquet", "routed.parquet")
    pq.write_table(routed, d["paths"]["routed"])
    qrels = [(r["query_id"], r["doc_id"], 1 if r["first_stage_rank"] in (2, 5) else 0) for r in d["candidates"].to_pylist()]
    d["paths"]["qrels"] = str(d["paths"]["queries"]).replace("queries.parquet", "qrels.tsv")
    with open(d["paths"]["qrels"], "w") as handle:
        handle.writelines(f"{q} 0 {doc} {rel}\n" for q, doc, rel in qrels)
    return d


def _core_scores(data, spec):
    """What a single-adapter scorer gives each candidate: (query, doc) -> score."""
    from dear_udf.model import load_model
    from dear_udf.scorer import Scorer

    cands = data["candidates"].to_pylist()
    queries = {r["query_id"]: r["query"] for r in data["queries"].to_pylist()}
    docs = {r["doc_id"]: r for r in data["corpus"].to_pylist()}
    scores = Scorer(load_model(spec), batch_size=16).score(
        [queries[c["query_id"]] for c in cands], [docs[c["doc_id"]]["title"] for c in cands], [docs[c["doc_id"]]["text"] for c in cands]
    )
    return {(c["query_id"], c["doc_id"]): float(s) for c, s in zip(cands, scores)}


def _topk(scores, k):
    by_query: dict[str, list] = {}
    for (q, d), s in scores.items():
        by_query.setdefault(q, []).append((-s, d))
    return {q: [d for _, d in sorted(rows)[:k]] for q, rows in by_query.items()}


def _rows(path):
    from deltalake import DeltaTable

    return DeltaTable(str(path)).to_pyarrow_table().to_pylist()


def _named(adapters, *names):
    return {"model": str(adapters["base_dir"]), "device": "cpu", "adapters": {n: str(adapters[n]) for n in names}}


@pytest.mark.spark
def test_side_by_side_ranks_every_query_under_each_adapter_and_the_base(spark, adapters, data, tmp_path):
    from dear_udf.spark.job import run_job

    out, trec = tmp_path / "reranked", tmp_path / "runs" / "night.trec"
    config = job_config(data["paths"], adapters["base_dir"], out, model=_named(adapters, "med", "law"), side_by_side=True,
                        side_by_side_base=True, cache=str(tmp_path / "cache"), qrels=data["paths"]["qrels"], trec_out=str(trec), top_k=3)
    summary = run_job(config, spark=spark)
    rows = _rows(out)
    kept = data["candidates"].num_rows
    assert summary.accounted and summary.adapters_per_pair == 3 and summary.pairs_scored == 3 * kept
    assert {r[S.ADAPTER] for r in rows} == {"med", "law", "base"}
    for name in ("med", "law", "base"):
        spec = _spec(adapters, None if name == "base" else name)
        want = _core_scores(data, spec)
        mine = [r for r in rows if r[S.ADAPTER] == name]
        got = {q: [r[S.DOC_ID] for r in sorted(mine, key=lambda r: r[S.RANK]) if r[S.QUERY_ID] == q] for q in {r[S.QUERY_ID] for r in mine}}
        assert got == _topk(want, 3), name
        for r in mine:
            assert abs(r[S.SCORE] - want[(r[S.QUERY_ID], r[S.DOC_ID])]) <= 1e-5
        assert {r[S.MODEL] for r in mine} == {summary.adapters[name]["model"]}
        assert (summary.adapters[name]["pairs"], summary.adapters[name]["cache_misses"]) == (kept, kept)
        # One TREC run per adapter, tagged with its name, as trec_eval compares runs file by file.
        lines = (tmp_path / "runs" / f"night.{name}.trec").read_text().splitlines()
        assert len(lines) == len(mine) and all(line.endswith(f"dear-night-1-{name}") for line in lines)
    assert len({summary.adapters[n]["scorer_key"] for n in ("med", "law", "base")}) == 3
    # With qrels: each adapter's metrics beside the first stage's.
    metrics = summary.metrics
    assert set(metrics["adapters"]) == {"med", "law", "base"} and metrics["reranked"] is None
    for name, each in metrics["adapters"].items():
        assert each["first_stage"] == metrics["first_stage"] and set(each["reranked"]) == set(metrics["measures"])
    assert "adapter   law (side-by-side): pairs=36" in summary.render()
    saved = json.loads((tmp_path / "reranked.night-1.summary.json").read_text())
    assert saved["adapters"]["med"]["cache_misses"] == kept and saved["adapter_mode"] == "side-by-side"

    # Another night adds an adapter: only its pairs are scored, the others come from the cache.
    config = job_config(data["paths"], adapters["base_dir"], out, model=_named(adapters, "med", "law", "news"), side_by_side=True,
                        cache=str(tmp_path / "cache"), run_id="night-2")
    again = run_job(config, spark=spark)
    assert {n: (a["cache_hits"], a["pairs_scored"]) for n, a in again.adapters.items()} == {"med": (kept, 0), "law": (kept, 0), "news": (0, kept)}
    assert again.pairs_scored == kept and again.accounted

    # A night where one adapter's files changed rescores only that adapter.
    from dear_udf.testing import build_lora_adapter

    changed = tmp_path / "law-v2"
    shutil.copytree(adapters["law"], changed)
    build_lora_adapter(adapters["base_dir"], changed, seed=99)
    models = _named(adapters, "med", "news") | {"adapters": {"med": str(adapters["med"]), "law": str(changed), "news": str(adapters["news"])}}
    config = job_config(data["paths"], adapters["base_dir"], out, model=models, side_by_side=True, cache=str(tmp_path / "cache"), run_id="night-3")
    third = run_job(config, spark=spark)
    assert {n: a["pairs_scored"] for n, a in third.adapters.items()} == {"med": 0, "law": kept, "news": 0}
    from dear_udf.model import ModelSpec

    want = _core_scores(data, ModelSpec(model=str(adapters["base_dir"]), adapter=str(changed)))
    law = [r for r in _rows(out) if r[S.RUN_ID] == "night-3" and r[S.ADAPTER] == "law"]
    assert law and all(abs(r[S.SCORE] - want[(r[S.QUERY_ID], r[S.DOC_ID])]) <= 1e-5 for r in law)


@pytest.mark.spark
def test_routing_reranks_each_query_with_its_own_adapter(spark, adapters, data, tmp_path):
    from dear_udf.spark.job import run_job

    out = tmp_path / "reranked"
    paths = dict(data["paths"], queries=data["paths"]["routed"])
    config = job_config(paths, adapters["base_dir"], out, model=_named(adapters, "med", "law"), adapter_column="domain",
                        default_adapter="law", qrels=data["paths"]["qrels"], top_k=4)
    summary = run_job(config, spark=spark)
    rows = _rows(out)
    route = {"q0": "med", "q1": "med", "q2": "med", "q3": "law", "q4": "law", "q5": "med"}
    assert {r[S.QUERY_ID]: r[S.ADAPTER] for r in rows} == route and len(rows) == 6 * 4
    scores = {name: _core_scores(data, _spec(adapters, name)) for name in ("med", "law")}
    for r in rows:
        assert abs(r[S.SCORE] - scores[route[r[S.QUERY_ID]]][(r[S.QUERY_ID], r[S.DOC_ID])]) <= 1e-5
    assert summary.accounted and summary.adapters_per_pair == 1
    assert {n: a["pairs"] for n, a in summary.adapters.items()} == {"med": 4 * 6, "law": 2 * 6}
    assert set(summary.metrics["adapters"]) == {"med", "law"} and summary.metrics["reranked"] is not None
    assert summary.metrics["adapters"]["law"]["queries"] <= 2


@pytest.mark.spark
@pytest.mark.parametrize(
    "domains, default, message",
    [
        (["med", "legal", "med", "lgal", "med", "med"], "med", r"1 queries name adapter 'legal', which is not a named adapter \(e.g. q1\); 1 queries name adapter 'lgal'.*\(e.g. q3\)"),
        (["med", None, "med", "", "med", "med"], None, r"2 queries have no 'domain' value and there is no --default-adapter \(e.g. q1, q3\)"),
    ],
)
def test_a_routing_value_naming_no_adapter_is_refused_before_scoring(spark, adapters, data, tmp_path, domains, default, message):
    from dear_udf.spark.job import run_job

    queries = tmp_path / "queries.parquet"
    pq.write_table(data["queries"].append_column("domain", pa.array(domains, pa.string())), queries)
    paths = dict(data["paths"], queries=str(queries))
    config = job_config(paths, adapters["base_dir"], tmp_path / "out", model=_named(adapters, "med", "law"), adapter_column="domain",
                        default_adapter=default, cache=str(tmp_path / "cache"))
    with pytest.raises(InputError, match=message):
        run_job(config, spark=spark)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


@pytest.mark.spark
def test_an_output_table_written_before_the_adapter_column_keeps_working(spark, tiny_models, data, tmp_path):
    from deltalake import DeltaTable, write_deltalake

    from dear_udf.spark.job import run_job

    out = tmp_path / "reranked"
    old = S.OUTPUT_ARROW_SCHEMA.remove(S.OUTPUT_ARROW_SCHEMA.get_field_index(S.ADAPTER))
    row = {"query_id": "old", "doc_id": "d", "rank": 1, "score": 1.0, "first_stage_rank": 1, "first_stage_score": 1.0, "run_id": "night-0", "model": "m"}
    write_deltalake(str(out), pa.Table.from_pylist([row], schema=old), partition_by=["run_id"])
    run_job(job_config(data["paths"], tiny_models["index227"], out), spark=spark)
    rows = DeltaTable(str(out)).to_pyarrow_table().to_pylist()
    assert [r[S.ADAPTER] for r in rows if r[S.RUN_ID] == "night-0"] == [None]
    assert {r[S.RUN_ID] for r in rows} == {"night-0", "night-1"} and all(r[S.ADAPTER] is None for r in rows)


def test_the_score_command_scores_named_adapters_side_by_side(adapters, tmp_path):
    """`score` with named adapters: every pair under each, told apart by the `adapter`
    column, each adapter's rows what a single-adapter `score` of it writes; a single model
    load (load_model) still refuses named adapters rather than scoring the base."""
    import csv

    from dear_udf.cli import main
    from dear_udf.model import ModelSpec, load_model

    with pytest.raises(ConfigError, match=r"named adapters \['a', 'b'\] are scored by the job"):
        load_model(ModelSpec(model=str(adapters["base_dir"]), adapters={"a": str(adapters["med"]), "b": str(adapters["law"])}))
    pairs = tmp_path / "queries_docs.csv"
    with open(pairs, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["query_id", "query", "documents"])
        w.writerow(["q1", QUERIES[0], json.dumps(TEXTS)])
        w.writerow(["q2", QUERIES[1], json.dumps([["Giraffe", TEXTS[1]], TEXTS[0]])])
    base = ["score", "--model", str(adapters["base_dir"]), "--device", "cpu", "--pairs", str(pairs)]

    def rows(path):
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))

    assert main([*base, "--adapter", f"med={adapters['med']}", "--adapter", f"law={adapters['law']}", "--out", str(tmp_path / "both.csv")]) == 0
    both = rows(tmp_path / "both.csv")
    assert list(both[0]) == ["adapter", "query_id", "doc_index", "rank", "score"]
    for name in ("med", "law"):
        assert main([*base, "--adapter", str(adapters[name]), "--out", str(tmp_path / f"{name}.csv")]) == 0
        alone = rows(tmp_path / f"{name}.csv")
        mine = [{k: v for k, v in r.items() if k != "adapter"} for r in both if r["adapter"] == name]
        assert mine == alone and len(alone) == 6
    assert [r["score"] for r in both if r["adapter"] == "med"] != [r["score"] for r in both if r["adapter"] == "law"]
