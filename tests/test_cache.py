"""The score cache without Spark: keys, the Delta table through deltalake, upkeep (issue 10)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import multiprocessing
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from dear_udf import tokenization as L
from dear_udf.cache import (
    CACHE_ARROW_SCHEMA,
    CacheError,
    append_entries,
    cache_stats,
    check_cache,
    chunk_count,
    chunk_of,
    doc_hash,
    entries_table,
    keys,
    open_cache,
    pair_key,
    query_hash,
    model_fields_of,
    scorer_fields,
    scorer_key,
)
from dear_udf.cli import main

from .cachedata import read_entries
from dear_udf.tokenization import Layout

FP = "ab" * 32
UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


# -- scorer key ----------------------------------------------------------------------------

# An environment as an executor reports it (cache.keys.environment); fixed so keys pin.
ENV = {"libraries": {"torch": "2.13.0", "transformers": "5.23.0", "tokenizers": "0.23.3"}, "device": "cpu",
       "matmul": {"float32_matmul_precision": "highest", "cuda": "ieee", "cpu": "ieee"}}


def _key(*, fingerprint: str = FP, dtype: str = "float32", layout: Layout | None = None, env: dict | None = None, **model) -> str:
    fields = keys.model_fields(fingerprint=fingerprint, dtype=dtype, layout=layout or Layout(), **model)
    return scorer_key(scorer_fields(fields, env or ENV))


def _changed(field: dataclasses.Field, value):
    """Another valid value for one Layout field, chosen by the field's type."""
    if field.name == "pooling":
        return next(r for r in L.POOLING_RULES if r != value)
    if field.name == "special_tokens":
        return next(m for m in L.SPECIAL_TOKEN_MODES if m != value)
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    raise AssertionError(f"test_every_layout_field_changes_the_scorer_key does not know how to change {field.name}")


def test_every_layout_field_changes_the_scorer_key():
    base = Layout()
    seen = {_key(layout=base)}
    for field in dataclasses.fields(Layout):
        other = dataclasses.replace(base, **{field.name: _changed(field, getattr(base, field.name))})
        seen.add(_key(layout=other))
    # Lengths, templates, pooling rule and special-token mode: each its own key.
    assert len(seen) == 1 + len(dataclasses.fields(Layout))
    assert {"query_max_tokens", "doc_max_tokens", "padded_length", "query_prefix", "doc_prefix", "pooling", "special_tokens"} <= {
        f.name for f in dataclasses.fields(Layout)
    }


def test_a_layout_field_added_later_is_keyed_without_being_named():
    @dataclasses.dataclass(frozen=True)
    class Wider(Layout):
        new_setting: int = 0

    assert _key(layout=Wider(new_setting=1)) != _key(layout=Wider(new_setting=2))
    assert "new_setting" in keys.model_fields(fingerprint=FP, dtype="float32", layout=Wider())["layout"]


def test_dtype_fingerprint_attention_and_format_version_change_the_scorer_key(monkeypatch):
    found = {_key(dtype=d) for d in ("float32", "bfloat16", "float16")}
    found.add(_key(fingerprint="cd" * 32))
    found.add(_key(attn_implementation="eager"))  # sdpa and eager differ in bf16
    assert len(found) == 5
    before = _key()
    monkeypatch.setattr(keys, "FORMAT_VERSION", keys.FORMAT_VERSION + 1)
    assert _key() != before


@pytest.mark.parametrize(
    "change",
    [
        {"libraries": {**ENV["libraries"], "tokenizers": "0.24.0"}},  # other ids for the same text
        {"libraries": {**ENV["libraries"], "torch": "2.14.1"}},
        {"libraries": {**ENV["libraries"], "transformers": "5.24.0"}},
        {"libraries": {**ENV["libraries"], "peft": "0.21.2"}},  # an adapter is merged by peft
        {"device": "cuda"},  # a task given no GPU falls back to the CPU
        {"matmul": {**ENV["matmul"], "float32_matmul_precision": "high", "cuda": "tf32"}},  # TF32 on a GPU: ~1e-3 off
        {"matmul": {**ENV["matmul"], "cpu": "bf16"}},  # oneDNN's bf16 matmuls on a CPU
        {"matmul": {**ENV["matmul"], "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "1"}},
    ],
    ids=["tokenizers", "torch", "transformers", "peft", "device", "matmul-precision", "cpu-bf16", "tf32-override"],
)
def test_the_environment_that_scores_changes_the_scorer_key(change):
    assert _key(env={**ENV, **change}) != _key()


def test_the_environment_is_read_from_this_process(monkeypatch):
    import importlib.metadata

    import torch

    cpu = keys.environment("cpu", adapter=False)
    assert cpu["device"] == "cpu" and keys.environment("cuda:1", adapter=False)["device"] == "cuda"
    assert cpu["libraries"] == {name: importlib.metadata.version(name) for name in ("torch", "transformers", "tokenizers")}
    assert keys.environment("cpu", adapter=True)["libraries"]["peft"] == importlib.metadata.version("peft")
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert keys.environment("cpu", adapter=False)["matmul"] == {"float32_matmul_precision": "high", "cuda": "tf32", "cpu": "tf32"}
    finally:
        torch.set_float32_matmul_precision(before)
    # Back at full precision the process reads as one never touched: torch's new API now says
    # "ieee" where a fresh process says "none" (inherit), and both are IEEE float32.
    assert keys.environment("cpu", adapter=False) == cpu
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    assert keys.environment("cpu", adapter=False)["matmul"]["NVIDIA_TF32_OVERRIDE"] == "0"


def test_keys_are_stable_across_processes_and_releases():
    # Pinned: changing how keys are computed must come with a FORMAT_VERSION bump (and
    # these values), since every existing entry then misses.
    assert keys.FORMAT_VERSION == 2
    assert _key() == PINNED_SCORER_KEY
    assert pair_key("q", None, "text", char_cap=10) == "1b7668c9370bba3ebb4befe2a3316481"
    assert len(query_hash("q", char_cap=None)) == 64 and len(doc_hash("t", "x", char_cap=None)) == 64


PINNED_SCORER_KEY = "40b3e4fa7ca9e6f5a43c05e613857ce2"


def test_bad_scorer_key_inputs_are_refused_by_name():
    with pytest.raises(Exception, match="dtype must be one of"):
        _key(dtype="int8")
    with pytest.raises(Exception, match="fingerprint must be a non-empty string"):
        _key(fingerprint="")
    with pytest.raises(Exception, match="char_cap must be a positive integer"):
        pair_key("q", "t", "x", char_cap=0)


def test_adapter_and_its_bytes_change_the_scorer_key(tiny_models, tmp_path):
    from dear_udf.model import ModelSpec, inspect_model

    def key_of(spec):
        info = inspect_model(spec)
        return scorer_key(scorer_fields(model_fields_of(info, Layout()), ENV)), info

    base = tiny_models["index227"]
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_models["index227-lora"], adapter)
    full, full_info = key_of(ModelSpec(model=str(base)))
    with_adapter, adapter_info = key_of(ModelSpec(model=str(base), adapter=str(adapter)))
    assert full == key_of(ModelSpec(model=str(base)))[0]
    # The base's own fingerprint is the same with or without the adapter; the adapter's is its own.
    assert adapter_info.base_fingerprint == full_info.base_fingerprint and full_info.adapter_fingerprint is None
    assert adapter_info.adapter_fingerprint not in (None, adapter_info.base_fingerprint)
    weights = next(adapter.glob("adapter_model.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one adapter weight
    weights.write_bytes(bytes(data))
    retrained, retrained_info = key_of(ModelSpec(model=str(base), adapter=str(adapter)))
    assert len({full, with_adapter, retrained}) == 3
    assert retrained_info.adapter_fingerprint != adapter_info.adapter_fingerprint
    assert key_of(ModelSpec(model=str(base), dtype="bfloat16"))[0] != full


# -- pair key ------------------------------------------------------------------------------


def test_one_character_of_a_document_or_query_changes_the_pair_key():
    text = "Llamas are domesticated South American camelids. " * 20
    key = pair_key("what is a llama", "Llama", text, char_cap=4096)
    for i in (0, len(text) // 2, len(text) - 1):
        changed = text[:i] + ("X" if text[i] != "X" else "Y") + text[i + 1 :]
        assert pair_key("what is a llama", "Llama", changed, char_cap=4096) != key
    assert pair_key("what is a llama", "Llame", text, char_cap=4096) != key
    assert pair_key("what is a llamb", "Llama", text, char_cap=4096) != key
    assert pair_key("what is a llama", "Llama", text, char_cap=4096) == key


def test_null_empty_and_field_boundaries_are_told_apart():
    variants = [
        ("q", None, "x"), ("q", "", "x"), ("q", "x", None), ("q", "x", ""),
        ("q", "ab", "c"), ("q", "a", "bc"), ("q", "a b", "c"), ("q", None, None), ("q", "", ""),
        (None, "t", "x"), ("", "t", "x"),
    ]
    found = {pair_key(*v, char_cap=100) for v in variants}
    assert len(found) == len(variants)


def test_text_beyond_the_cap_is_not_read_so_it_may_hit():
    cap = 50
    head = "é" * 49 + "😀"  # the cap counts characters (code points), not bytes
    assert pair_key("q", None, head + "tail one", char_cap=cap) == pair_key("q", None, head + "tail two", char_cap=cap)
    assert pair_key("q", None, head[:-1] + "😁" + "tail", char_cap=cap) != pair_key("q", None, head + "tail", char_cap=cap)
    assert pair_key("q", None, head + "a", char_cap=None) != pair_key("q", None, head + "b", char_cap=None)


def test_chunks_are_a_pure_function_of_the_key():
    pair_keys = [pair_key(f"q{i}", None, f"d{i}", char_cap=None) for i in range(2000)]
    n = chunk_count(len(pair_keys), 250)
    assert n == 8 and chunk_count(0, 250) == 1 and chunk_count(251, 250) == 2
    chunks = [chunk_of(k, n) for k in pair_keys]
    assert chunks == [chunk_of(k, n) for k in pair_keys]
    sizes = [chunks.count(c) for c in range(n)]
    assert min(sizes) > 150 and max(sizes) < 350, sizes  # about chunk_pairs each
    assert chunk_of("0" * 14 + "f" + "0" * 17, 16) == 15
    with pytest.raises(Exception, match="chunk_pairs must be a positive integer"):
        chunk_count(10, 0)


# -- the table -----------------------------------------------------------------------------


def _scores(keys_: list[str], scores: list[float], **extra) -> pa.Table:
    cols = {"pair_key": keys_, "score": pa.array(scores, pa.float32())}
    cols.update(extra)
    return pa.table(cols)


def _entries(scorer: str, keys_: list[str], scores: list[float], *, at: dt.datetime = T0, run_id: str = "r1", scorers=None, **extra) -> pa.Table:
    return entries_table(_scores(keys_, scores, **extra), scorer_key=scorer, run_id=run_id, scored_at=at, scorers=scorers)


def test_open_creates_an_empty_cache_partitioned_by_scorer_key(tmp_path):
    uri = str(tmp_path / "cache")
    table = open_cache(uri)
    assert table.metadata().partition_columns == ["scorer_key"]
    assert pa.schema(table.schema().to_arrow()) == CACHE_ARROW_SCHEMA
    assert open_cache(uri).version() == table.version()  # opening again changes nothing
    (tmp_path / "empty").mkdir()
    assert check_cache(str(tmp_path / "empty")) is None


def test_a_table_of_another_schema_is_refused_with_its_path(tmp_path):
    other = tmp_path / "other"
    write_deltalake(str(other), pa.table({"query_id": ["q"], "score": [1.0]}))
    for call in (lambda: open_cache(str(other)), lambda: append_entries(str(other), _entries("k", ["a"], [1.0]))):
        with pytest.raises(CacheError, match=rf"{other}: not a score cache: .*schema.*missing \['computed_key', 'doc_id'"):
            call()
    assert DeltaTable(str(other)).version() == 0  # untouched
    repartitioned = tmp_path / "repartitioned"
    write_deltalake(str(repartitioned), CACHE_ARROW_SCHEMA.empty_table(), partition_by=["run_id"])
    with pytest.raises(CacheError, match=rf"{repartitioned}: not a score cache: .*partitioned by \['run_id'\]"):
        check_cache(str(repartitioned))


def test_a_folder_or_file_that_is_not_a_delta_table_is_refused(tmp_path):
    folder = tmp_path / "reranked"
    folder.mkdir()
    (folder / "part-0.parquet").write_bytes(b"x")
    with pytest.raises(CacheError, match=rf"{folder}: the score cache path is a folder that is not a Delta table .*'part-0.parquet'"):
        open_cache(str(folder))
    a_file = tmp_path / "cache.txt"
    a_file.write_text("x")
    with pytest.raises(CacheError, match=rf"{a_file}: the score cache path is a file"):
        append_entries(str(a_file), _entries("k", ["a"], [1.0]))
    assert sorted(p.name for p in folder.iterdir()) == ["part-0.parquet"]


def test_append_is_one_commit_and_reads_back_by_scorer_key(tmp_path):
    uri = str(tmp_path / "cache")
    v1 = append_entries(uri, _entries("k1", ["a", "b"], [1.0, 2.0], query_id=["q1", "q2"], pooled_early=[True, False]))
    v2 = append_entries(uri, _entries("k2", ["a"], [9.0]))
    assert v2 == v1 + 1
    got = read_entries(uri, "k1")
    assert sorted(got.column("pair_key").to_pylist()) == ["a", "b"]
    assert got.column("scored_at").to_pylist() == [T0, T0]
    row = {r["pair_key"]: r for r in got.to_pylist()}
    assert row["a"]["query_id"] == "q1" and row["a"]["pooled_early"] is True and row["a"]["doc_id"] is None
    assert read_entries(uri, "k2").column("score").to_pylist() == [9.0]
    assert read_entries(uri, "k3").num_rows == 0
    assert read_entries(str(tmp_path / "none"), "k1").num_rows == 0
    assert append_entries(uri, _entries("k1", [], [])) is None  # nothing to commit
    assert DeltaTable(uri).version() == v2


def test_each_row_keeps_the_scorer_key_it_was_scored_under_and_what_that_key_hashes(tmp_path):
    uri = str(tmp_path / "cache")
    described = {K1: json.dumps({"device": "cuda"}), K2: json.dumps({"device": "cpu"})}
    scores = _scores(["a", "b", "c"], [1.0, 2.0, 3.0], scorer_key=[K1, K2, K1], computed_key=["x", "y", "x"])
    append_entries(uri, entries_table(scores, run_id="r1", scorers=described, scored_at=T0))
    for key, pairs in ((K1, ["a", "c"]), (K2, ["b"])):
        got = read_entries(uri, key)
        assert sorted(got.column("pair_key").to_pylist()) == pairs
        assert set(got.column("scorer").to_pylist()) == {described[key]}
    assert read_entries(uri, K1).column("computed_key").to_pylist() == ["x", "x"]
    with pytest.raises(CacheError, match="need a scorer_key column or the scorer_key argument"):
        entries_table(_scores(["a"], [1.0]), run_id="r1")


# A score cache as format 1 wrote it (before computed_key and scorer), written out plainly.
FORMAT_1 = pa.schema([("scorer_key", pa.string()), ("pair_key", pa.string()), ("score", pa.float32()),
                      ("pooled_early", pa.bool_()), ("pooled_in_query", pa.bool_()), ("query_id", pa.string()),
                      ("doc_id", pa.string()), ("run_id", pa.string()), ("scored_at", pa.timestamp("us", tz="UTC"))])


def test_a_cache_of_format_1_keeps_working_and_gains_the_new_columns(tmp_path):
    uri = str(tmp_path / "cache")
    old = pa.table({"scorer_key": [K1], "pair_key": ["a"], "score": pa.array([1.0], pa.float32()), "pooled_early": [False],
                    "pooled_in_query": [False], "query_id": ["q"], "doc_id": ["d"], "run_id": ["old"], "scored_at": [T0]}, schema=FORMAT_1)
    write_deltalake(uri, old, partition_by=["scorer_key"])
    assert check_cache(uri) is not None  # a score cache, not "another table"
    assert read_entries(uri, K1).column("computed_key").to_pylist() == [None]  # absent columns read as nulls
    append_entries(uri, _entries(K2, ["b"], [2.0], computed_key=["x"]))
    assert sorted(pa.schema(DeltaTable(uri).schema().to_arrow()).names) == sorted(CACHE_ARROW_SCHEMA.names)
    assert read_entries(uri, K1).to_pylist()[0]["score"] == 1.0 and read_entries(uri, K2).column("computed_key").to_pylist() == ["x"]


def test_an_append_retried_after_its_commit_landed_is_not_written_twice(tmp_path, monkeypatch):
    from dear_udf.hooks import ENV as HOOKS

    uri = str(tmp_path / "cache")
    append_entries(uri, _entries(K1, ["a"], [1.0]), transaction=("night-1/run", 0))
    monkeypatch.setenv(HOOKS, "fail-after-cache-append")
    monkeypatch.setenv("DEAR_RERANK_FAULT_DIR", str(tmp_path / "faults"))
    append_entries(uri, _entries(K1, ["b", "c"], [2.0, 3.0]), transaction=("night-1/run", 1))
    assert list((tmp_path / "faults").glob("cache-append-failed-*.json"))  # the fault fired: the first attempt failed
    assert sorted(read_entries(uri, K1).column("pair_key").to_pylist()) == ["a", "b", "c"]  # b and c once
    assert DeltaTable(uri).transaction_version("night-1/run") == 1
    # Without the marker the same lost reply writes the chunk twice: what the marker prevents.
    append_entries(uri, _entries(K2, ["d"], [4.0]))
    assert read_entries(uri, K2).column("pair_key").to_pylist() == ["d", "d"]


def test_non_finite_scores_are_not_cached():
    got = _entries("k", ["a", "b", "c", "d"], [1.0, float("nan"), float("inf"), -2.0])
    assert got.column("pair_key").to_pylist() == ["a", "d"]


# Rows no writer of this package makes (they never leave scored_at or a score null), but
# another tool might: the pick must still be one, and the Spark reader's (nulls first).
RAW_DUPLICATES = [
    ("a", T0, 1.0, True, False), ("a", None, 5.0, False, False),
    ("b", T0, None, False, False), ("b", T0, 0.5, False, False),
    ("c", T0, 1.0, True, None), ("c", T0, 1.0, None, True), ("c", T0, 1.0, False, None),
    ("d", T0, 1.0, False, True), ("d", T0, 1.0, False, None),
]
RAW_PICKS = [("a", 5.0, False, False), ("b", None, False, False), ("c", 1.0, None, True), ("d", 1.0, False, None)]


def raw_entries(rows) -> pa.Table:
    columns = ["pair_key", "scored_at", "score", "pooled_early", "pooled_in_query"]
    data = {c: [r[i] for r in rows] for i, c in enumerate(columns)}
    n = len(rows)
    data.update(scorer_key=["k"] * n, computed_key=["c"] * n, query_id=[None] * n, doc_id=[None] * n, run_id=["r"] * n, scorer=[None] * n)
    return pa.table({f.name: pa.array(data[f.name], f.type) for f in CACHE_ARROW_SCHEMA}, schema=CACHE_ARROW_SCHEMA)


def _append_rounds(uri: str, writer: str, rounds: int, barrier, results) -> None:
    """One run's driver: append one chunk per round, each round started with the other run."""
    for i in range(rounds):
        barrier.wait(timeout=60)
        chunk = [f"{writer}-{i}-{j}" for j in range(40)]
        try:
            append_entries(uri, _entries("k", chunk, [float(j) for j in range(40)], run_id=writer))
            results.put((writer, i, None))
        except Exception as exc:  # reported to the test, which names it
            results.put((writer, i, f"{type(exc).__name__}: {exc}"))


def test_concurrent_appends_from_two_processes_lose_nothing(tmp_path):
    # Two drivers append chunks at the same moment, starting before the cache exists, so
    # they also race to create it.
    uri = str(tmp_path / "cache")
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    rounds = 4
    procs = [ctx.Process(target=_append_rounds, args=(uri, w, rounds, barrier, results)) for w in ("A", "B")]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=180) for _ in range(2 * rounds)]
    for p in procs:
        p.join(timeout=60)
    assert [o for o in outcomes if o[2] is not None] == []
    got = read_entries(uri, "k").column("pair_key").to_pylist()
    assert sorted(got) == sorted(f"{w}-{i}-{j}" for w in "AB" for i in range(rounds) for j in range(40))
    assert len(got) == len(set(got))  # nothing doubled either
    # One commit per chunk after the creation; when both processes race to create the table,
    # the loser's create may land as one more (empty) commit. Measured: 8 or 9 for 4 rounds.
    assert 2 * rounds <= DeltaTable(uri).version() <= 2 * rounds + 1


# -- upkeep --------------------------------------------------------------------------------

K1, K2 = "1" * 32, "2" * 32


# What K1 was computed with, as the job records it (the scorer column).
K1_FIELDS = scorer_fields(keys.model_fields(fingerprint=FP, dtype="bfloat16", layout=Layout(), base_fingerprint="b" * 64,
                                            adapter_fingerprint="c" * 64), {**ENV, "device": "cuda"})


def _two_scorers(uri: str) -> None:
    k1 = {K1: json.dumps(K1_FIELDS)}
    append_entries(uri, _entries(K1, ["a", "b", "c"], [1.0, 2.0, 3.0], at=T0, run_id="n1", scorers=k1))
    append_entries(uri, _entries(K1, ["d"], [4.0], at=T0 + dt.timedelta(days=20), run_id="n21", scorers=k1))
    append_entries(uri, _entries(K2, ["a", "b"], [5.0, 6.0], at=T0 + dt.timedelta(days=5), run_id="n6"))


def test_cache_stats_per_scorer_key_as_table_and_json(tmp_path, capsys):
    uri = str(tmp_path / "cache")
    _two_scorers(uri)
    stats = cache_stats(uri)
    by_key = {r["scorer_key"]: r for r in stats["scorer_keys"]}
    assert by_key[K1]["entries"] == 4 and by_key[K1]["files"] == 2
    assert (by_key[K1]["oldest"], by_key[K1]["newest"]) == ("2026-11-01T02:00:00Z", "2026-11-21T02:00:00Z")
    assert (by_key[K2]["entries"], by_key[K2]["oldest"]) == (2, "2026-11-06T02:00:00Z")
    assert stats["entries"] == 6 and stats["table_bytes"] == by_key[K1]["bytes"] + by_key[K2]["bytes"] > 0
    assert stats["folder_bytes"] >= stats["table_bytes"]

    # What each key was computed with, and the nights that wrote it.
    assert (by_key[K1]["first_run_id"], by_key[K1]["last_run_id"]) == ("n1", "n21")
    assert by_key[K1]["scorer"] == K1_FIELDS and by_key[K2]["scorer"] is None

    assert main(["cache", "stats", uri, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == stats
    assert main(["cache", "stats", uri]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["scorer_key", "entries", "files", "size", "oldest", "newest", "runs"]
    assert out[1].split()[:3] == [K1, "4", "2"] and out[1].split()[-3:] == ["n1", "..", "n21"]  # newest first
    assert out[2] == (
        "    computed with: model bbbbbbbbbbbbbbbb, adapter cccccccccccccccc, dtype bfloat16, device cuda, "
        "matmul highest, tokenizers 0.23.3 torch 2.13.0 transformers 5.23.0"
    )
    assert out[3].split()[:3] == [K2, "2", "1"] and "computed with: not recorded" in out[4]
    assert "6 entries under 2 scorer key(s)" in out[5]


def test_cache_vacuum_keeps_one_scorer_key_and_frees_the_files(tmp_path, capsys):
    uri = str(tmp_path / "cache")
    _two_scorers(uri)
    before = cache_stats(uri)["folder_bytes"]
    assert main(["cache", "vacuum", uri, "--keep-scorer-key", K1, "--retention-hours", "0", "--allow-short-retention", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["entries_deleted"], result["entries_after"], result["files_vacuumed"]) == (2, 4, 1)
    assert read_entries(uri, K2).num_rows == 0 and read_entries(uri, K1).num_rows == 4
    assert not list(Path(uri).glob(f"scorer_key={K2}/*.parquet"))  # gone from disk, not just the log
    assert result["folder_bytes_after"] < before


def test_cache_vacuum_by_age_keeps_files_for_the_retention_by_default(tmp_path, capsys):
    uri = str(tmp_path / "cache")
    _two_scorers(uri)
    now = T0 + dt.timedelta(days=30)
    from dear_udf.cache import cache_vacuum

    result = cache_vacuum(uri, older_than_days=15, now=now)  # drops what was scored before day 15
    assert result["entries_deleted"] == 5 and result["entries_after"] == 1
    assert read_entries(uri, K1).column("pair_key").to_pylist() == ["d"]
    # Delta's default retention (168 hours): the deleted files stay for readers mid-run.
    assert result["files_vacuumed"] == 0 and result["retention_hours"] is None
    assert list(Path(uri).glob(f"scorer_key={K2}/*.parquet"))
    assert main(["cache", "vacuum", uri, "--retention-hours", "0", "--allow-short-retention"]) == 0
    # The files deleted above (K1's a, b, c and K2's a, b) go now.
    assert "deleted 0 of 1 entries, removed 2 file(s)" in capsys.readouterr().out
    assert not list(Path(uri).glob(f"scorer_key={K2}/*.parquet"))


def test_a_retention_shorter_than_a_night_needs_the_override(tmp_path, capsys):
    uri = str(tmp_path / "cache")
    _two_scorers(uri)
    assert main(["cache", "vacuum", uri, "--drop-scorer-key", K2, "--retention-hours", "1"]) == 2
    err = capsys.readouterr().err
    assert "retention_hours=1 is below 24 hours: a night reading the cache meanwhile would fail on a missing file" in err
    assert "--allow-short-retention" in err
    assert cache_stats(uri)["entries"] == 6  # refused before anything was deleted
    # 24 hours and more go through (nothing is that old here, so no file goes yet).
    assert main(["cache", "vacuum", uri, "--drop-scorer-key", K2, "--retention-hours", "24", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["entries_deleted"], result["entries_after"], result["files_vacuumed"]) == (2, 4, 0)
    assert read_entries(uri, K2).num_rows == 0 and list(Path(uri).glob(f"scorer_key={K2}/*.parquet"))
    assert "only when no run is using the cache" in _vacuum_help()


def _vacuum_help() -> str:
    import argparse

    from dear_udf.cache import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    action = next(a for a in parser._subparsers._group_actions[0].choices["vacuum"]._actions if "--allow-short-retention" in a.option_strings)
    return action.help


def test_cache_upkeep_refusals_name_the_problem(tmp_path, capsys):
    uri = str(tmp_path / "cache")
    _two_scorers(uri)
    assert main(["cache", "vacuum", uri, "--keep-scorer-key", "K1' OR 1=1 --"]) == 2
    assert "a scorer key is 32 lowercase hex characters" in capsys.readouterr().err
    assert cache_stats(uri)["entries"] == 6
    assert main(["cache", "stats", str(tmp_path / "nothing")]) == 2
    assert f"{tmp_path / 'nothing'}: there is no score cache here" in capsys.readouterr().err



# -- compaction ----------------------------------------------------------------------------


def _nights_of_chunks(uri: str, nights: int = 4, chunks: int = 3) -> None:
    """A cache as nights leave it: one commit per chunk per night, under two scorer keys,
    some pairs scored twice (two runs at once) with other scores."""
    for night in range(nights):
        at = T0 + dt.timedelta(days=night)
        for chunk in range(chunks):
            pair_keys = [f"n{night}c{chunk}p{j}" for j in range(5)] + ["twice"]
            append_entries(uri, _entries(K1, pair_keys, [float(night * 10 + j) for j in range(6)], at=at, run_id=f"n{night}",
                                         computed_key=[f"c{j}" for j in range(6)]))
        append_entries(uri, _entries(K2, [f"n{night}-other"], [float(night)], at=at, run_id=f"n{night}"))


def _all_rows(uri: str) -> list[tuple]:
    rows = DeltaTable(uri).to_pyarrow_table(columns=CACHE_ARROW_SCHEMA.names).to_pylist()
    return sorted(tuple(r[c] for c in CACHE_ARROW_SCHEMA.names) for r in rows)


def _stats_but_files(stats: dict) -> dict:
    return {r["scorer_key"]: {k: v for k, v in r.items() if k not in ("files", "bytes")} for r in stats["scorer_keys"]}


def _commit(uri: str, version: int) -> list[dict]:
    path = Path(uri) / "_delta_log" / f"{version:020d}.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_cache_compact_keeps_every_entry_in_fewer_files_and_removes_none_from_disk(tmp_path, capsys):
    uri = str(tmp_path / "cache")
    _nights_of_chunks(uri)
    rows, files = _all_rows(uri), cache_stats(uri)
    assert {r["scorer_key"]: r["files"] for r in files["scorer_keys"]} == {K1: 12, K2: 4}
    on_disk = sorted(Path(uri).rglob("*.parquet"))

    assert main(["cache", "compact", uri, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["files_before"], result["files_after"], result["files_removed"], result["files_added"]) == (16, 2, 16, 2)
    assert result["scorer_keys"] == {K1: {"files_before": 12, "files_after": 1}, K2: {"files_before": 4, "files_after": 1}}
    assert result["entries_before"] == result["entries_after"] == len(rows) == 4 * 3 * 6 + 4
    assert _all_rows(uri) == rows  # every entry, duplicates included, column for column
    assert _stats_but_files(cache_stats(uri)) == _stats_but_files(files)  # first and last nights too, from one file now
    assert _stats_but_files(files)[K1]["first_run_id"] == "n0" and _stats_but_files(files)[K1]["last_run_id"] == "n3"
    # One commit that only moves data between files: readers and Delta's own checks see no change.
    actions = _commit(uri, result["version_after"])
    assert result["version_after"] == result["version_before"] + 1
    moved = [a[kind] for a in actions for kind in ("add", "remove") if kind in a]
    assert len(moved) == 18 and all(m["dataChange"] is False for m in moved)
    # The files it replaced stay on disk for the nights that listed them, until a vacuum past the retention.
    assert set(on_disk) <= set(Path(uri).rglob("*.parquet"))
    from dear_udf.cache import cache_vacuum

    assert cache_vacuum(uri, retention_hours=0, allow_short_retention=True)["files_vacuumed"] == 16
    assert _all_rows(uri) == rows and len(list(Path(uri).rglob("*.parquet"))) == 2


def test_cache_compact_is_idempotent_and_can_take_one_scorer_key(tmp_path, capsys):
    uri = str(tmp_path / "cache")
    _nights_of_chunks(uri)
    rows = _all_rows(uri)
    assert main(["cache", "compact", uri, "--scorer-key", K2]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{uri}: 16 file(s) -> 13 (4 rewritten into 1) under 1 scorer key(s); 76 entries") and "cache vacuum" in out
    assert {r["scorer_key"]: r["files"] for r in cache_stats(uri)["scorer_keys"]} == {K1: 12, K2: 1}
    from dear_udf.cache import cache_compact

    first = cache_compact(uri)
    again = cache_compact(uri)
    assert (first["files_after"], again["files_before"], again["files_after"]) == (2, 2, 2)
    assert (again["files_removed"], again["files_added"]) == (0, 0)
    assert again["version_after"] == again["version_before"]  # nothing to do: nothing committed
    assert _all_rows(uri) == rows


def test_cache_compact_refusals_name_the_problem(tmp_path, capsys):
    uri = str(tmp_path / "cache")
    assert main(["cache", "compact", uri]) == 2
    assert f"{uri}: there is no score cache here" in capsys.readouterr().err
    _nights_of_chunks(uri, nights=1)
    version = cache_stats(uri)["version"]
    assert main(["cache", "compact", uri, "--scorer-key", "nope"]) == 2
    assert "a scorer key is 32 lowercase hex characters" in capsys.readouterr().err
    assert main(["cache", "compact", uri, "--target-mib", "0"]) == 2
    assert "target_mib must be a positive integer, got 0" in capsys.readouterr().err
    assert cache_stats(uri)["version"] == version  # untouched


def _compact_while(uri: str, ready, stop, results) -> None:
    """Compact again and again until told to stop; report each outcome."""
    from dear_udf.cache import cache_compact

    ready.set()  # imported: the night's appends start now, so the two overlap however slow the start
    while not stop.is_set():
        try:
            got = cache_compact(uri)
            results.put(("compact", got["files_removed"], None))
        except Exception as exc:  # reported to the test, which names it
            results.put(("compact", 0, f"{type(exc).__name__}: {exc}"))


def test_compaction_racing_a_nights_appends_loses_no_entry(tmp_path):
    # A night commits chunk after chunk while `cache compact` runs again and again.
    uri = str(tmp_path / "cache")
    _nights_of_chunks(uri, nights=1)
    expected = {r[1] for r in _all_rows(uri)}
    ctx = multiprocessing.get_context("spawn")
    ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    compactor = ctx.Process(target=_compact_while, args=(uri, ready, stop, results))
    compactor.start()
    assert ready.wait(timeout=120), "the compacting process did not start"
    try:
        for chunk in range(30):
            pair_keys = [f"racing-{chunk}-{j}" for j in range(20)]
            append_entries(uri, _entries(K1, pair_keys, [float(j) for j in range(20)], run_id="night"), transaction=("night", chunk))
            expected.update(pair_keys)
    finally:
        stop.set()
        compactor.join(timeout=120)
    outcomes = []
    while not results.empty():
        outcomes.append(results.get())
    assert [o for o in outcomes if o[2] is not None] == []
    assert sum(o[1] for o in outcomes) > 0  # it did compact while the night appended
    got = read_entries(uri, K1).column("pair_key").to_pylist() + read_entries(uri, K2).column("pair_key").to_pylist()
    assert len(got) == len(_all_rows(uri))
    assert {k for k in got} == expected and len([k for k in got if k.startswith("racing-")]) == 30 * 20  # none lost, none doubled


def test_a_reader_that_listed_files_before_a_compaction_still_reads_them(tmp_path):
    import pyarrow.parquet as pq

    from dear_udf.cache import cache_compact

    uri = str(tmp_path / "cache")
    _nights_of_chunks(uri)
    listed = DeltaTable(uri).file_uris(partition_filters=[("scorer_key", "=", K1)])  # what a night's lookup lists
    before = sorted(pq.read_table(listed, columns=["pair_key", "score"]).to_pylist(), key=lambda r: (r["pair_key"], r["score"]))
    cache_compact(uri)
    assert len(DeltaTable(uri).file_uris(partition_filters=[("scorer_key", "=", K1)])) == 1
    after = sorted(pq.read_table(listed, columns=["pair_key", "score"]).to_pylist(), key=lambda r: (r["pair_key"], r["score"]))
    assert after == before and len(before) == 4 * 3 * 6


# -- the check of hits ---------------------------------------------------------------------


def test_the_check_of_hits_accepts_float_noise_and_refuses_another_scorer():
    from dear_udf.cache.check import TOLERANCES, compare_hits

    cached = {"a": 1.5, "b": -4.0, "c": 0.25}
    noisy = {"a": 1.5 + 6e-6, "b": -4.0 - 1e-5, "c": 0.25}  # what another batch gives in fp32
    got = compare_hits(cached, noisy, dtype="float32", scorer_key=K1, uri="/c")
    assert got["pairs"] == 3 and got["worst"] == "b" and got["max_difference"] == pytest.approx(1e-5)
    assert got["tolerance"] == {"absolute": TOLERANCES["float32"][0], "relative": TOLERANCES["float32"][1]}
    with pytest.raises(CacheError, match=rf"/c: the score cache's entries under scorer key {K1} disagree .* 1 of 3 cache hits"):
        compare_hits(cached, {**noisy, "c": 0.35}, dtype="float32", scorer_key=K1, uri="/c")
    # bf16 is coarse: its batch noise (~0.04 measured) passes, another model's scores do not.
    compare_hits(cached, {"a": 1.54, "b": -3.95}, dtype="bfloat16", scorer_key=K1, uri="/c")
    with pytest.raises(CacheError, match="differ by up to 1"):
        compare_hits(cached, {"a": 2.5}, dtype="bfloat16", scorer_key=K1, uri="/c")
    # A NaN never passes; pairs only one side holds are not compared.
    with pytest.raises(CacheError):
        compare_hits(cached, {"a": float("nan")}, dtype="float32", scorer_key=K1, uri="/c")
    assert compare_hits(cached, {"z": 9.0}, dtype="float32", scorer_key=K1, uri="/c")["pairs"] == 0
