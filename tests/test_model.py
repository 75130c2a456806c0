"""Model loading: full models, LoRA adapters, safety refusals, fingerprints and dtypes."""

from __future__ import annotations

import json
import random
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dear_udf.testing.reference import DearReference
from dear_udf.exceptions import ModelLoadError
from dear_udf.model import ModelSpec, load_model
from dear_udf.scorer import Scorer
from dear_udf.testing import EOS, build_broken_model, vocabulary

from .probes import run_without_pyspark

# bf16 weights and activations (score head in fp32) against the fp32 reference. Measured
# on the tiny model: max |diff| 0.021 for scores spread over about [-1.8, 1.0] (std 0.53);
# the bound leaves ~5x headroom. Ties and near-ties may reorder in bf16, so only the
# overall agreement of the ranking is asserted (Spearman), not the exact order.
BF16_TOL = 0.1
BF16_MIN_SPEARMAN = 0.98


def _pairs(n: int = 60, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    words = vocabulary()
    queries = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 10))) for _ in range(n)]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 250))) for _ in range(n)]
    return queries, texts


QUERIES, TEXTS = _pairs()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def reference_scores(loaded, queries, titles, texts) -> np.ndarray:
    """DeAR's padded-alone scores of a model already loaded by the project."""
    return DearReference(loaded.model, loaded.tokenizer).score(queries, titles, texts)


@pytest.fixture(scope="module")
def base(tiny_models):
    loaded = load_model(ModelSpec(model=str(tiny_models["index227"])))
    return loaded, reference_scores(loaded, QUERIES, None, TEXTS)


def _copy_without_weights(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for path in src.iterdir():
        if path.suffix not in (".safetensors", ".bin"):
            shutil.copy(path, dst / path.name)
    return dst


# -- what gets loaded ----------------------------------------------------------------------


@pytest.mark.parametrize("name,pool_pad", [("index227", 0), ("last", "eos")])
def test_pad_token_falls_back_to_eos(tiny_models, name, pool_pad):
    loaded = load_model(ModelSpec(model=str(tiny_models[name])))
    eos = loaded.tokenizer.eos_token_id
    # The saved tokenizer has no pad token (Llama-3 shape); the reference pads with EOS.
    assert loaded.tokenizer.pad_token == EOS
    assert loaded.pad_id == eos
    # The model's own config.pad_token_id is kept: it decides the pooled position.
    assert loaded.pool_pad_id == (eos if pool_pad == "eos" else 0)
    assert loaded.model.training is False
    assert loaded.dtype == "float32" and loaded.device == "cpu"
    assert loaded.load_seconds > 0
    assert any(f.endswith(".safetensors") for f in loaded.files)


def test_lora_changes_scores_and_matches_unmerged_peft(tiny_models, base):
    base_loaded, base_ref = base
    adapter = tiny_models["index227-lora"]
    merged = load_model(ModelSpec(model=None, adapter=str(adapter)))
    merged_ref = reference_scores(merged, QUERIES, None, TEXTS)
    # The adapter (and its trained score head) really is applied.
    assert float(np.max(np.abs(merged_ref - base_ref))) > 1e-2

    # Merging is exact: the unmerged PEFT model, loaded as DeAR loads it, gives the same scores.
    unmerged = DearReference.load(None, adapter).score(QUERIES, None, TEXTS)
    assert float(np.max(np.abs(unmerged - merged_ref))) <= 1e-4

    # Naming the base explicitly loads the same thing as taking it from adapter_config.json.
    explicit = load_model(ModelSpec(model=str(tiny_models["index227"]), adapter=str(adapter)))
    assert np.array_equal(reference_scores(explicit, QUERIES[:10], None, TEXTS[:10]), merged_ref[:10])
    assert explicit.fingerprint == merged.fingerprint != base_loaded.fingerprint
    assert explicit.label.startswith(f"{tiny_models['index227']}+{adapter}#")


# -- refusals ----------------------------------------------------------------------------


def test_adapter_without_score_head_is_refused(tiny_models):
    path = tiny_models["no-head-lora"]
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSpec(model=None, adapter=str(path)))
    message = str(info.value)
    assert str(path) in message and "'score'" in message


def test_pickle_only_weights_refused_unless_allowed(tiny_models, base, tmp_path):
    import torch

    base_loaded, base_ref = base
    pickled = _copy_without_weights(tiny_models["index227"], tmp_path / "pickled")
    torch.save(base_loaded.model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSpec(model=str(pickled)))
    message = str(info.value)
    assert str(pickled) in message and "pytorch_model.bin" in message and "allow_pickle" in message

    loaded = load_model(ModelSpec(model=str(pickled), allow_pickle=True))
    assert np.array_equal(reference_scores(loaded, QUERIES[:10], None, TEXTS[:10]), base_ref[:10])
    assert any(f.endswith("pytorch_model.bin") for f in loaded.files)


@pytest.fixture
def no_unpickling(monkeypatch):
    """torch.load (unpickling) fails the test if anything calls it."""
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError(f"torch.load was called on {args[:1]}")

    monkeypatch.setattr(torch, "load", refuse)


def test_adapter_pickle_is_refused_before_it_is_opened(tiny_models, tmp_path, no_unpickling):
    """Issue 13, case 8: without --allow-pickle no .bin file is opened, not even with
    torch.load(weights_only=True) to look for the score head."""
    from safetensors.torch import load_file

    source = tiny_models["index227-lora"]
    state = load_file(str(source / "adapter_model.safetensors"))
    pickled = tmp_path / "pickled-lora"
    pickled.mkdir()
    shutil.copy(source / "adapter_config.json", pickled)
    (pickled / "adapter_model.bin").write_bytes(b"never opened")
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSpec(model=None, adapter=str(pickled)))
    assert str(pickled) in str(info.value) and "adapter_model.bin" in str(info.value) and "--allow-pickle" in str(info.value)

    # A head-less safetensors adapter beside a .bin: PEFT would load the safetensors file,
    # so that is the one checked; the .bin is not opened, with or without --allow-pickle.
    headless = tiny_models["no-head-lora"]
    mixed = tmp_path / "mixed-lora"
    shutil.copytree(headless, mixed)
    (mixed / "adapter_model.bin").write_bytes(b"never opened")
    for allow_pickle in (False, True):
        with pytest.raises(ModelLoadError, match=f"{mixed}: the adapter holds no 'score' head weights"):
            load_model(ModelSpec(model=None, adapter=str(mixed), allow_pickle=allow_pickle))
    assert any(k.endswith("score.weight") for k in state)  # the source adapter had one


def test_adapter_beside_config_json_is_checked_and_fingerprinted(tiny_models, tmp_path, no_unpickling):
    """transformers applies an adapter it finds beside config.json: its weights are read,
    so they are fingerprinted, and a pickled one is refused without --allow-pickle."""
    model = tmp_path / "embedded"
    shutil.copytree(tiny_models["index227"], model)
    plain = load_model(ModelSpec(model=str(model))).fingerprint
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(tiny_models["index227-lora"] / name, model / name)
    embedded = load_model(ModelSpec(model=str(model))).fingerprint
    _nudge_score_head(model / "adapter_model.safetensors")
    assert len({plain, embedded, load_model(ModelSpec(model=str(model))).fingerprint}) == 3
    (model / "adapter_model.safetensors").unlink()
    (model / "adapter_model.bin").write_bytes(b"never opened")
    with pytest.raises(ModelLoadError, match=r"adapter beside the model would load pickle weights \(adapter_model\.bin\).*--allow-pickle"):
        load_model(ModelSpec(model=str(model)))


@pytest.mark.parametrize(
    "kind, message",
    [
        ("two-labels", r"config\.json: num_labels is 2 \(num_labels/id2label\); a DeAR reranker gives one relevance score"),
        ("two-rows", r"two-rows: the model's 'score' head has 2 outputs; a DeAR reranker has one"),
        ("custom-code", r"config\.json: model_type 'custom-llama' is not an architecture transformers knows, so it needs the custom code shipped with the model \(its auto_map asks for it\)"),
        ("no-head", r"no-head: the model holds no 'score' head weights"),
    ],
)
def test_bad_models_are_refused_on_the_driver(tiny_models, tmp_path, kind, message):
    """Issue 13, case 10: inspect_model (the driver, no weights loaded) refuses them in one line."""
    from dear_udf.model import inspect_model

    model = build_broken_model(tiny_models["index227"], tmp_path / kind, kind)
    for check in (inspect_model, load_model):
        with pytest.raises(ModelLoadError, match=message) as info:
            check(ModelSpec(model=str(model)))
        assert "\n" not in str(info.value)


def test_cuda_without_cuda_is_refused_before_loading(tiny_models, monkeypatch):
    import torch

    from dear_udf.model import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_device("cpu")
    check_device(None)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ModelLoadError, match=f"device '{device}': CUDA is not available on this machine"):
            load_model(ModelSpec(model=str(tiny_models["index227"]), device=device))


@pytest.mark.parametrize("path", ["/no/such/dear-model", "./no-such-dear-model", "~/no-such-dear-model"])
def test_missing_model_path_is_named(path):
    with pytest.raises(ModelLoadError, match=f"{path}: no such directory"):
        load_model(ModelSpec(model=path))


def test_missing_adapter_path_is_named(tiny_models):
    with pytest.raises(ModelLoadError, match="/no/such/adapter: no such directory"):
        load_model(ModelSpec(model=str(tiny_models["index227"]), adapter="/no/such/adapter"))


def test_file_instead_of_directory_is_named(tiny_models):
    path = tiny_models["index227"] / "config.json"
    with pytest.raises(ModelLoadError, match=f"{path}: is a file"):
        load_model(ModelSpec(model=str(path)))


def test_directory_without_weights_is_named(tiny_models, tmp_path):
    empty = _copy_without_weights(tiny_models["index227"], tmp_path / "no-weights")
    with pytest.raises(ModelLoadError, match=f"{empty}: no weight files"):
        load_model(ModelSpec(model=str(empty)))


def test_hub_id_offline_is_named(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="nobody/no-such-dear-model: could not resolve model"):
        load_model(ModelSpec(model="nobody/no-such-dear-model"))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"model": None}, "model must be given"),
        ({"model": "m", "dtype": "fp8"}, "dtype must be one of .*, got 'fp8'"),
        ({"model": "m", "device": "gpu"}, "device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
        ({"model": "m", "attn_implementation": "flash_attention_2"}, "got 'flash_attention_2'"),
    ],
)
def test_model_spec_validation(kwargs, message):
    from dear_udf.exceptions import ConfigError

    with pytest.raises(ConfigError, match=message):
        ModelSpec(**kwargs)


# -- fingerprint -------------------------------------------------------------------------


def test_fingerprint_is_stable_and_tracks_weights(tiny_models, base, tmp_path):
    from safetensors.torch import load_file, save_file

    base_loaded, _ = base
    again = load_model(ModelSpec(model=str(tiny_models["index227"])))
    assert again.fingerprint == base_loaded.fingerprint
    assert len(again.fingerprint) == 64
    assert again.label.endswith("#" + again.fingerprint[:16])

    # Content, not location: a verbatim copy has the same fingerprint.
    copy = tmp_path / "copy"
    shutil.copytree(tiny_models["index227"], copy)
    assert load_model(ModelSpec(model=str(copy))).fingerprint == base_loaded.fingerprint

    # One weight nudged: a different model, a different fingerprint.
    weights = copy / "model.safetensors"
    state = load_file(str(weights))
    name = next(k for k in state if k.endswith("score.weight"))
    state[name] = state[name] + 1e-3
    save_file(state, str(weights), metadata={"format": "pt"})
    changed = load_model(ModelSpec(model=str(copy)))
    assert changed.fingerprint != base_loaded.fingerprint

    # The config counts too (e.g. a different pad_token_id changes the pooled position).
    config = json.loads((copy / "config.json").read_text())
    before = changed.fingerprint
    config["pad_token_id"] = config["eos_token_id"]
    (copy / "config.json").write_text(json.dumps(config))
    assert load_model(ModelSpec(model=str(copy))).fingerprint != before


def _nudge_score_head(weights: Path) -> None:
    """Rewrite a safetensors file with its score head moved: the scores change."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    name = next(k for k in state if k.endswith("score.weight"))
    state[name] = state[name] + 0.5
    save_file(state, str(weights), metadata={"format": "pt"})


def _scores_and_fingerprints(path: Path) -> tuple[np.ndarray, str, str]:
    """Scores and fingerprint of the loaded model, and the fingerprint the driver computes."""
    from dear_udf.model import inspect_model

    loaded = load_model(ModelSpec(model=str(path)))
    return reference_scores(loaded, QUERIES[:8], None, TEXTS[:8]), loaded.fingerprint, inspect_model(ModelSpec(model=str(path))).fingerprint


def test_fingerprint_follows_the_weight_index_into_subfolders(tiny_models, tmp_path):
    """Issue 13, case 6: weights in a subfolder named by model.safetensors.index.json, a
    dummy file at the top level. The fingerprint must change with the weights loaded."""
    from safetensors.torch import load_file

    model = tmp_path / "sharded"
    shutil.copytree(tiny_models["index227"], model)
    state = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").rename(model / "dummy.safetensors")  # never loaded
    (model / "weights").mkdir()
    shutil.copy(model / "dummy.safetensors", model / "weights" / "shard-1.safetensors")
    index = {"metadata": {}, "weight_map": {k: "weights/shard-1.safetensors" for k in state}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))

    before, fingerprint, on_driver = _scores_and_fingerprints(model)
    assert fingerprint == on_driver
    _nudge_score_head(model / "weights" / "shard-1.safetensors")
    after, changed, on_driver = _scores_and_fingerprints(model)
    assert float(np.max(np.abs(after - before))) > 1e-2  # the subfolder's weights were loaded
    assert changed != fingerprint and changed == on_driver
    # The dummy top-level file is not read, so it is not fingerprinted either.
    _nudge_score_head(model / "dummy.safetensors")
    assert _scores_and_fingerprints(model)[1] == changed


def test_fingerprint_hashes_the_content_behind_a_symlink(tiny_models, tmp_path):
    """Issue 13, case 6: model.safetensors a link to a file named by 64 hex characters, as in
    a hub cache. The name is not trusted to be the content's hash."""
    model = tmp_path / "linked"
    shutil.copytree(tiny_models["index227"], model)
    blob = tmp_path / "blobs" / ("ab" * 32)
    blob.parent.mkdir()
    (model / "model.safetensors").rename(blob)
    (model / "model.safetensors").symlink_to(blob)

    before, fingerprint, _ = _scores_and_fingerprints(model)
    assert fingerprint == load_model(ModelSpec(model=str(tiny_models["index227"]))).fingerprint  # content, not location
    _nudge_score_head(blob)
    after, changed, on_driver = _scores_and_fingerprints(model)
    assert float(np.max(np.abs(after - before))) > 1e-2
    assert changed != fingerprint and changed == on_driver


# -- dtypes ------------------------------------------------------------------------------


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks_a = np.argsort(np.argsort(a))
    ranks_b = np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def test_bfloat16_loads_and_scores_close_to_fp32(tiny_models, base):
    import torch

    _, ref = base
    loaded = load_model(ModelSpec(model=str(tiny_models["index227"]), dtype="bfloat16"))
    assert loaded.dtype == "bfloat16"
    assert loaded.model.model.embed_tokens.weight.dtype == torch.bfloat16
    scorer = Scorer(loaded)
    # The head runs on fp32 hidden states: its weights are kept in fp32.
    assert scorer._head_weight.dtype == torch.float32
    got = scorer.score(QUERIES, None, TEXTS)
    assert got.dtype == np.float32
    diff = float(np.max(np.abs(got - ref)))
    # Really computed in bf16 (not silently fp32), and still close.
    assert 1e-4 < diff <= BF16_TOL
    assert _spearman(got, ref) >= BF16_MIN_SPEARMAN


# -- import weight -----------------------------------------------------------------------


def test_core_imports_without_pyspark_and_without_torch():
    code = textwrap.dedent(
        """
        import sys

        import dear_udf, dear_udf.tokenization, dear_udf.model, dear_udf.scorer, dear_udf.config
        heavy = sorted(m for m in ("torch", "transformers", "peft", "pyspark") if m in sys.modules)
        assert not heavy, f"imported at import time: {heavy}"
        print("ok")
        """
    )
    run_without_pyspark(code)
