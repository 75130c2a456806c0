"""The refusals of SECURITY.md, made before any weights are loaded.

- pickle weights without ``allow_pickle`` (``refuse_pickles``): unpickling can run code;
- an architecture transformers does not know (the code shipped with a model is never run)
  or more than one label (``check_config``);
- weights without a one-output ``score`` head, which would be randomly initialised
  (``check_head``: reads only safetensors headers).

Each raises ``ModelLoadError`` naming the folder or file and the reason, in one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..exceptions import ModelLoadError


def refuse_pickles(directory: Path, files: list[Path], *, allow_pickle: bool, what: str) -> None:
    """Refuse ``files`` (those a load of ``directory`` would read) holding a pickle, before
    anything opens them, unless ``allow_pickle``.

    Example:
        >>> refuse_pickles(Path("/m"), [Path("/m/model.safetensors")], allow_pickle=False, what="model")
    """
    pickles = [os.path.relpath(p, directory) for p in files if p.suffix not in (".safetensors", ".json")]
    if pickles and not allow_pickle:
        raise ModelLoadError(
            f"{directory}: the {what} would load pickle weights ({', '.join(pickles)}); pickle files can run "
            "code when loaded. Convert them to safetensors, or opt in with allow_pickle=True (--allow-pickle)."
        )


def _tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Name -> shape of every tensor in a weight file, without reading the tensors of a
    safetensors file (only its header). A ``.bin`` file is unpickled: call it only for
    files the caller accepted as pickle."""
    if path.suffix != ".safetensors":
        import torch

        return {k: list(v.shape) for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: list(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - SafetensorError: not a safetensors file
        raise ModelLoadError(f"{path}: not a readable safetensors file ({exc}).") from exc


def _score_tensors(files: list[Path]) -> dict[str, list[int]]:
    """Name -> shape of the tensors of the ``score`` head (its weight, bias, LoRA factors)."""
    found: dict[str, list[int]] = {}
    for path in files:
        if path.suffix != ".json":
            found.update((k, shape) for k, shape in _tensor_shapes(path).items() if ".score." in f".{k}")
    return found


def check_head(directory: Path, weights: list[Path], *, what: str) -> None:
    """Refuse weights without a one-label ``score`` head: a missing head would be random.

    Example:
        >>> check_head(Path("/m"), [Path("/m/model.safetensors")], what="model")
    """
    tensors = _score_tensors(weights)
    if not tensors:
        raise ModelLoadError(
            f"{directory}: the {what} holds no 'score' head weights (an adapter saved without "
            "task_type=SEQ_CLS, or a base model without its adapter?); its relevance head would be "
            "randomly initialised."
        )
    outputs = [shape[0] for k, shape in tensors.items() if f".{k}".endswith(".score.weight") and shape]
    if any(n != 1 for n in outputs):
        raise ModelLoadError(f"{directory}: the {what}'s 'score' head has {max(outputs)} outputs; a DeAR reranker has one (num_labels=1).")


def check_config(path: Path, config: dict[str, Any]) -> None:
    """Refuse what executors could only fail on, in words: an architecture transformers does
    not know (the code shipped with a model is never run) or other than one label.

    Example:
        >>> check_config(Path("/m/config.json"), {"model_type": "llama", "num_labels": 1})
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING_NAMES and model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise ModelLoadError(f"{path}: model_type {model_type!r} has no sequence-classification class in transformers.")
    if model_type not in CONFIG_MAPPING_NAMES:
        asks = " (its auto_map asks for it)" if "auto_map" in config else ""
        raise ModelLoadError(
            f"{path}: model_type {model_type!r} is not an architecture transformers knows, so it needs the custom code "
            f"shipped with the model{asks}; such code is never run (trust_remote_code=False)."
        )
    id2label = config.get("id2label")
    labels = len(id2label) if isinstance(id2label, dict) else config.get("num_labels", 1)
    if labels != 1:
        raise ModelLoadError(f"{path}: num_labels is {labels} (num_labels/id2label); a DeAR reranker gives one relevance score, num_labels=1.")


_PEFT_PREFIX = "base_model.model."


def check_adapter_fits(adapter_dir: Path, adapter_weights: list[Path], base_dir: Path, base_weights: list[Path]) -> None:
    """Refuse an adapter whose tensors do not fit the base's: each LoRA factor must match
    the base layer it adapts (``lora_A`` its inputs, ``lora_B`` its outputs), and each
    saved module (the ``score`` head) the base's module of that name. Reads safetensors
    headers only; a pickled base or adapter is checked when it loads.

    An adapter trained on another base of the same shapes is not caught here: its
    ``base_model_name_or_path`` names that base (``files.resolve_model_files`` warns).

    Example:
        >>> check_adapter_fits(Path("/a/med"), [Path("/a/med/adapter_model.safetensors")],
        ...                    Path("/m/base"), [Path("/m/base/model.safetensors")])
    """
    if any(p.suffix not in (".safetensors", ".json") for p in (*adapter_weights, *base_weights)):
        return
    base: dict[str, list[int]] = {}
    for path in base_weights:
        if path.suffix == ".safetensors":
            base.update(_tensor_shapes(path))
    wrong: list[str] = []
    for path in adapter_weights:
        for key, shape in _tensor_shapes(path).items():
            name = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
            for factor, axis, side in ((".lora_A.weight", 1, "inputs"), (".lora_B.weight", 0, "outputs")):
                if name.endswith(factor):
                    target = name[: -len(factor)] + ".weight"
                    if target not in base:
                        wrong.append(f"{key} adapts {target}, which the base lacks")
                    elif len(shape) != 2 or len(base[target]) != 2 or shape[axis] != base[target][axis]:
                        wrong.append(f"{key} {shape} does not fit {target} {base[target]} ({side})")
                    break
            else:
                if name in base and ".lora_" not in name and base[name] != shape:
                    wrong.append(f"{key} {shape} vs the base's {name} {base[name]}")
    if wrong:
        shown = "; ".join(wrong[:3]) + (f"; and {len(wrong) - 3} more" if len(wrong) > 3 else "")
        raise ModelLoadError(f"{adapter_dir}: the adapter does not fit the base model {base_dir}: {shown}.")
