"""A model's files: its local folders (a hub snapshot downloaded when given an id), and
exactly the files loading it reads, checked (``refusals``) before any weights are opened.

The weight files are found the way transformers and PEFT find them, so the fingerprint
(``fingerprint``) covers what is loaded and a refused pickle is never opened.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..exceptions import ModelLoadError
from .refusals import check_adapter_fits, check_config, check_head, refuse_pickles
from .spec import ModelSpec

log = logging.getLogger(__name__)

# The weight files transformers and PEFT look for, in their order of preference
# (transformers' ``_get_resolved_checkpoint_files``, PEFT's ``load_peft_weights``).
MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTER_CONFIG = "adapter_config.json"
# Config and tokenizer files, read from the top level of a folder.
_SMALL_FILES = (".json", ".txt", ".model", ".tiktoken")


@dataclass(frozen=True)
class ModelFiles:
    """A model's local folders and every file loading it reads: what the fingerprint covers."""

    base_dir: Path
    adapter_dir: Path | None
    read: tuple[tuple[Path, tuple[Path, ...]], ...]  # (folder, the files read from it)


def _offline(spec: ModelSpec) -> bool:
    return spec.local_files_only or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false")


def resolve_dir(name_or_path: str, spec: ModelSpec, revision: str | None = None) -> Path:
    """Local directory holding ``name_or_path``: itself, or its hub snapshot (downloaded).

    Example:
        >>> resolve_dir("abdoelsayed/dear-3b-reranker-ce-v1", ModelSpec(model="x"))
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"{name_or_path}: is a file; expected a model directory or hub id.")
    if name_or_path.startswith((".", "/", "~")):
        raise ModelLoadError(f"{name_or_path}: no such directory.")
    try:
        from huggingface_hub import snapshot_download

        allow = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
        if spec.allow_pickle:
            allow.append("*.bin")
        return Path(
            snapshot_download(
                name_or_path,
                revision=revision,
                local_files_only=_offline(spec),
                allow_patterns=allow,
            )
        )
    except Exception as exc:  # noqa: BLE001 - re-raised with the path and the reason
        raise ModelLoadError(f"{name_or_path}: could not resolve model ({type(exc).__name__}: {exc}).") from exc


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
        raise ModelLoadError(f"{path}: unreadable {what} ({exc}).") from exc
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path}: the {what} is not a JSON object.")
    return value


def _shards(directory: Path, index: Path) -> list[Path]:
    """Every file an index's ``weight_map`` names, as transformers joins it to the folder."""
    weight_map = _read_json(index, "weight index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelLoadError(f"{index}: holds no weight_map.")
    shards = [directory / str(name) for name in sorted({str(v) for v in weight_map.values()})]
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise ModelLoadError(f"{index}: names weight file(s) that do not exist: {missing[:3]}.")
    return shards


def _weight_files(directory: Path, names: tuple[str, ...], *, allow_pickle: bool, what: str) -> list[Path]:
    """The weight files loading ``directory`` reads: the first of ``names`` present, and the
    shards it names when it is an index. A pickle file is refused here, before anything
    opens it, unless ``allow_pickle``."""
    chosen = next((directory / name for name in names if (directory / name).is_file()), None)
    if chosen is None:
        raise ModelLoadError(f"{directory}: no weight files ({', '.join(names)}) found for the {what}.")
    files = [chosen] + (_shards(directory, chosen) if chosen.name.endswith(".index.json") else [])
    refuse_pickles(directory, files, allow_pickle=allow_pickle, what=what)
    return files


def _model_weight_names(config_path: Path, config: dict[str, Any]) -> tuple[str, ...]:
    # transformers loads the file config.json names in "transformers_weights", if any.
    explicit = config.get("transformers_weights")
    if explicit is None:
        return MODEL_WEIGHTS
    if not isinstance(explicit, str) or not explicit:
        raise ModelLoadError(f"{config_path}: transformers_weights must name a file, got {explicit!r}.")
    return (explicit,)


def _files_read(directory: Path, weights: list[Path]) -> tuple[Path, tuple[Path, ...]]:
    small = [p for p in directory.iterdir() if p.is_file() and p.suffix in _SMALL_FILES]
    return directory, tuple(sorted(set(small) | set(weights)))


def _resolve_adapter(spec: ModelSpec) -> tuple[Path, list[Path], str]:
    """The adapter's folder, its weight files (checked) and the name of its base model."""
    assert spec.adapter is not None
    adapter_dir = resolve_dir(spec.adapter, spec, spec.revision)
    config_path = adapter_dir / ADAPTER_CONFIG
    if not config_path.is_file():
        raise ModelLoadError(f"{adapter_dir}: {ADAPTER_CONFIG} not found; is this a PEFT adapter?")
    config = _read_json(config_path, "adapter config")
    weights = _weight_files(adapter_dir, ADAPTER_WEIGHTS, allow_pickle=spec.allow_pickle, what="adapter")
    check_head(adapter_dir, weights, what="adapter")
    base_name = spec.model or config.get("base_model_name_or_path")
    if not base_name:
        raise ModelLoadError(f"{config_path}: names no base_model_name_or_path; pass the base with --model.")
    return adapter_dir, weights, str(base_name)


def _base_weights(base_dir: Path, spec: ModelSpec) -> list[Path]:
    """The checked config and the weight files of the base (or full) model."""
    config_path = base_dir / "config.json"
    config = _read_json(config_path, "model config")
    check_config(config_path, config)
    names = _model_weight_names(config_path, config)
    weights = _weight_files(base_dir, names, allow_pickle=spec.allow_pickle, what="model")
    if (base_dir / ADAPTER_CONFIG).is_file():
        # transformers applies an adapter it finds beside config.json: its weights are read too.
        weights += _weight_files(base_dir, ADAPTER_WEIGHTS, allow_pickle=spec.allow_pickle, what="adapter beside the model")
    return weights


def resolve_model_files(spec: ModelSpec) -> ModelFiles:
    """Resolve and check a model's folders, and list every file loading them reads.

    The adapter's base comes from its ``adapter_config.json`` unless ``spec.model`` is set.
    Refused here, before any weights are read: pickle weights without ``allow_pickle``, an
    architecture transformers does not know, other than one label, and weights without a
    ``score`` head (the adapter's, or a full model's; a pickled full model is checked
    when it loads).

    Example:
        >>> resolve_model_files(ModelSpec(model="/models/dear-3b-reranker-ce-v1")).base_dir
        PosixPath('/models/dear-3b-reranker-ce-v1')
    """
    adapter_dir, adapter_weights, base_name = None, [], spec.model
    if spec.adapter:
        adapter_dir, adapter_weights, base_name = _resolve_adapter(spec)
    assert base_name is not None
    # A revision pin applies to the model fetched by id: the adapter when there is one.
    base_dir = resolve_dir(base_name, spec, None if spec.adapter else spec.revision)
    weights = _base_weights(base_dir, spec)
    if adapter_dir is not None:
        check_adapter_fits(adapter_dir, adapter_weights, base_dir, weights)
        _warn_other_base(adapter_dir, base_dir)
    if adapter_dir is None and all(p.suffix in (".safetensors", ".json") for p in weights):  # never unpickle a whole model here
        check_head(base_dir, weights, what="model")
    read = [_files_read(base_dir, weights)] + ([_files_read(adapter_dir, adapter_weights)] if adapter_dir else [])
    return ModelFiles(base_dir=base_dir, adapter_dir=adapter_dir, read=tuple(read))


def _warn_other_base(adapter_dir: Path, base_dir: Path) -> None:
    """Warn when the adapter's config names a local base folder other than the one loaded
    (``--model`` wins, as in PEFT); a hub id there is not compared, as a base is often a
    local copy of it. Shapes that do not fit are refused (``check_adapter_fits``)."""
    named = _read_json(adapter_dir / ADAPTER_CONFIG, "adapter config").get("base_model_name_or_path")
    if isinstance(named, str) and Path(named).is_dir() and Path(named).resolve() != base_dir.resolve():
        log.warning("%s: the adapter names base %s, but %s is loaded under it (--model).", adapter_dir, named, base_dir)
