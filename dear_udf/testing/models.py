"""Tiny DeAR-shaped models built offline, for tests and CPU benchmarks.

They are the demo's stand-in model (``dear_udf.demo.standin``: the same tokenizer, the same
weights for the same seed), built in two pooling variants:

- ``"index227"``: ``config.pad_token_id = 0`` as DeAR's training code sets it, so the
  classifier pools index 227, a pad position (the demo's shape);
- ``"last"``: ``config.pad_token_id = eos``, so it pools the last real token.

``build_lora_adapter`` saves a PEFT LoRA adapter (``task_type=SEQ_CLS``, non-zero init) over
such a model, the shape of ``dear-3b-reranker-ce-lora-v1``.

``build_broken_model`` copies such a model broken one way, for the refusals of
``dear_udf/model/refusals.py``.

Example:
    >>> paths = build_tiny_dear("/tmp/tiny", pooling="index227")
    >>> adapter = build_lora_adapter(paths, "/tmp/tiny-lora")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from ..demo.standin import BOS, DEAR_PAD_ID, EOS, SPECIALS, build_tokenizer, save_tiny_llama, vocabulary

__all__ = ["BOS", "EOS", "SPECIALS", "build_broken_model", "build_lora_adapter", "build_tiny_dear", "build_tokenizer", "vocabulary"]

Pooling = Literal["index227", "last"]
Broken = Literal["two-labels", "two-rows", "custom-code", "no-head"]


def build_tiny_dear(directory: str | Path, *, pooling: Pooling = "index227", seed: int = 0, **shape: Any) -> Path:
    """Build and save a tiny DeAR-shaped model directory (safetensors). Returns its path.

    Args:
        directory: created if missing.
        pooling: ``"index227"`` (DeAR's ``config.pad_token_id = 0``) or ``"last"``
            (``config.pad_token_id = eos``).
        seed: seeds the initial weights.
        **shape: ``hidden_size``, ``layers``, ``heads``, ``kv_heads``,
            ``intermediate_size``, ``initializer_range`` of ``demo.standin.save_tiny_llama``.

    Example:
        >>> build_tiny_dear("/tmp/tiny-last", pooling="last", hidden_size=256, layers=4)
        PosixPath('/tmp/tiny-last')
    """
    if pooling not in ("index227", "last"):
        raise ValueError(f"pooling must be 'index227' or 'last', got {pooling!r}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    pad_token_id = DEAR_PAD_ID if pooling == "index227" else tokenizer.eos_token_id
    return save_tiny_llama(directory, tokenizer, pad_token_id=pad_token_id, seed=seed, **shape)


def build_lora_adapter(
    base_dir: str | Path,
    directory: str | Path,
    *,
    seed: int = 1,
    with_score_head: bool = True,
    rank: int = 4,
) -> Path:
    """Save a LoRA adapter over ``base_dir`` whose weights change the scores.

    ``with_score_head=False`` saves it without ``task_type=SEQ_CLS``, so it carries no
    ``score`` weights: the broken shape the loader must refuse.
    """
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    directory = Path(directory)
    base = AutoModelForSequenceClassification.from_pretrained(str(base_dir), num_labels=1)
    torch.manual_seed(seed)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS if with_score_head else None,
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(base, config)
    if with_score_head:
        head = peft_model.base_model.model.score.modules_to_save["default"]
        with torch.no_grad():
            head.weight.add_(0.05 * torch.randn_like(head.weight))
    peft_model.save_pretrained(str(directory))
    # Record the base by path, as an adapter trained on a local base would.
    cfg_path = directory / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(Path(base_dir).resolve())
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return directory


def build_broken_model(source: str | Path, directory: str | Path, kind: Broken) -> Path:
    """Copy the model at ``source`` to ``directory``, broken one way; returns ``directory``.

    - ``"two-labels"``: saved as ``LlamaForSequenceClassification(num_labels=2)`` would be;
    - ``"two-rows"``: the config says one label, the score head has two outputs;
    - ``"custom-code"``: a ``model_type`` transformers does not know, with an ``auto_map`` to
      shipped code that exits the process if it ever runs;
    - ``"no-head"``: no ``score`` weights, as a base language model.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    if kind not in ("two-labels", "two-rows", "custom-code", "no-head"):
        raise ValueError(f"kind must be one of two-labels, two-rows, custom-code, no-head; got {kind!r}.")
    directory = Path(directory)
    shutil.copytree(source, directory)
    config = json.loads((directory / "config.json").read_text())
    state = load_file(str(directory / "model.safetensors"))
    if kind == "two-labels":
        config["id2label"] = {"0": "LABEL_0", "1": "LABEL_1"}
        config["label2id"] = {"LABEL_0": 0, "LABEL_1": 1}
    if kind in ("two-labels", "two-rows"):
        state["score.weight"] = state["score.weight"].repeat(2, 1)
    elif kind == "custom-code":
        config["model_type"] = "custom-llama"
        config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_custom.M"}
        (directory / "modeling_custom.py").write_text("raise SystemExit('shipped code ran')\n")
    elif kind == "no-head":
        del state["score.weight"]
    (directory / "config.json").write_text(json.dumps(config))
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory
