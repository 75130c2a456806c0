"""Loading a DeAR model: a full sequence classifier, or a LoRA adapter merged into its base.

Loading weights is a trust decision (see SECURITY.md): only safetensors unless the caller
opts in, never ``trust_remote_code``, offline when asked, and the files that were loaded
are fingerprinted so the output records exactly which model produced it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .exceptions import ModelLoadError

Dtype = Literal["float32", "bfloat16", "float16"]
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelSpec:
    """Where a DeAR model comes from and how to load it. Plain data, cheap to pickle.

    Args:
        model: Hugging Face id or local directory of a full model, or of the base model
            when ``adapter`` is given.
        adapter: Hugging Face id or local directory of a PEFT LoRA adapter, or None.
        base_from_adapter: when ``adapter`` is given and ``model`` is None, the base comes
            from the adapter's ``adapter_config.json``.
        dtype: weights dtype; the score head always runs in float32.
        device: "cpu", "cuda", "cuda:N", or None to let the caller decide.
        revision: optional revision pin (branch, tag or commit) for hub ids.
        local_files_only: never reach the hub; also on when ``HF_HUB_OFFLINE=1``.
        allow_pickle: accept ``.bin`` (pickle) weights; off by default.
        attn_implementation: "sdpa" or "eager"; the scorer's pooling trick needs an
            attention path that honours an explicit mask (not FlashAttention-2's unpadding).
    """

    model: str | None
    adapter: str | None = None
    dtype: Dtype = "float32"
    device: str | None = "cpu"
    revision: str | None = None
    local_files_only: bool = False
    allow_pickle: bool = False
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        if self.model is None and self.adapter is None:
            raise ModelLoadError("model must be given (or an adapter whose config names its base).")
        if self.dtype not in DTYPES:
            raise ModelLoadError(f"dtype must be one of {DTYPES}, got {self.dtype!r}.")
        if self.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ModelLoadError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}.")
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ModelLoadError(
                "attn_implementation must be 'sdpa' or 'eager' (the pooling trick needs an "
                f"explicit attention mask), got {self.attn_implementation!r}."
            )

    @property
    def name(self) -> str:
        """A short human name for the output's ``model`` column."""
        parts = [p for p in (self.model, self.adapter) if p]
        return "+".join(parts)


def model_label(spec: ModelSpec, revision: str | None, fingerprint: str) -> str:
    """``name[@revision]#fingerprint16``: what the output's ``model`` column records."""
    rev = f"@{revision}" if revision else ""
    return f"{spec.name}{rev}#{fingerprint[:16]}"


@dataclass
class LoadedModel:
    """A model ready to score, with what is needed to reproduce its layout."""

    model: Any  # transformers PreTrainedModel, eval mode, on its device
    tokenizer: Any
    pad_id: int  # id the reference pads with (tokenizer pad, EOS fallback)
    pool_pad_id: int  # model.config.pad_token_id (0 when unset, as DeAR sets it): decides the pooled index
    device: str
    dtype: str
    spec: ModelSpec
    fingerprint: str
    revision: str | None
    load_seconds: float
    files: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """What the output's ``model`` column records: name, revision and fingerprint."""
        return model_label(self.spec, self.revision, self.fingerprint)


def _offline(spec: ModelSpec) -> bool:
    return spec.local_files_only or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false")


def _hub_kwargs(spec: ModelSpec, revision: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"local_files_only": _offline(spec), "trust_remote_code": False}
    if revision:
        kwargs["revision"] = revision
    return kwargs


def resolve_dir(name_or_path: str, spec: ModelSpec, revision: str | None = None) -> Path:
    """Local directory holding ``name_or_path``: itself, or its hub snapshot (downloaded)."""
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


def _weight_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin"))


def _check_weights(directory: Path, spec: ModelSpec, what: str) -> None:
    files = _weight_files(directory)
    has_safe = any(p.suffix == ".safetensors" for p in files)
    has_pickle = any(p.suffix == ".bin" for p in files)
    if not files:
        raise ModelLoadError(f"{directory}: no weight files (*.safetensors) found for the {what}.")
    if not has_safe and has_pickle and not spec.allow_pickle:
        names = ", ".join(p.name for p in files)
        raise ModelLoadError(
            f"{directory}: the {what} has only pickle weights ({names}); pickle files can run "
            "code when loaded. Convert them to safetensors, or opt in with allow_pickle=True "
            "(--allow-pickle)."
        )


def _revision_of(directory: Path, requested: str | None) -> str | None:
    # A hub snapshot lives in .../snapshots/<commit>/: that commit is the resolved revision.
    if directory.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", directory.name):
        return directory.name
    return requested


_HEX64 = re.compile(r"[0-9a-f]{64}")


def fingerprint_files(directories: list[Path]) -> tuple[str, list[str]]:
    """SHA-256 over the names and contents of the config, tokenizer and weight files.

    Files in a hub cache are symlinks to blobs named by their SHA-256; that name is used
    instead of rereading gigabytes.
    """
    digest = hashlib.sha256()
    names: list[str] = []
    for directory in directories:
        for path in sorted(directory.iterdir()):
            if not path.is_file() or path.suffix not in (".json", ".safetensors", ".bin", ".txt", ".model", ".tiktoken"):
                continue
            names.append(str(path))
            digest.update(path.name.encode())
            target = path.resolve()
            if _HEX64.fullmatch(target.name):
                digest.update(target.name.encode())
                continue
            file_digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 22), b""):
                    file_digest.update(chunk)
            digest.update(file_digest.digest())
    return digest.hexdigest(), names


def _adapter_has_score_head(adapter_dir: Path) -> bool:
    from safetensors import safe_open

    files = sorted(adapter_dir.glob("adapter_model*.safetensors"))
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            if any(".score." in f".{k}" or k.endswith("score.weight") for k in handle.keys()):
                return True
    for path in sorted(adapter_dir.glob("adapter_model*.bin")):
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        if any("score" in k for k in state):
            return True
    return False


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_model_dirs(spec: ModelSpec) -> tuple[Path, Path | None]:
    """Local directories of the base (or full) model and of the adapter, checked.

    The adapter's base comes from its ``adapter_config.json`` unless ``spec.model`` is set.
    An adapter without ``score`` weights is refused: its head would be random.
    """
    adapter_dir: Path | None = None
    base_name = spec.model
    if spec.adapter:
        adapter_dir = resolve_dir(spec.adapter, spec, spec.revision)
        config_path = adapter_dir / "adapter_config.json"
        if not config_path.is_file():
            raise ModelLoadError(f"{adapter_dir}: adapter_config.json not found; is this a PEFT adapter?")
        try:
            adapter_config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{config_path}: unreadable adapter config ({exc}).") from exc
        _check_weights(adapter_dir, spec, "adapter")
        if not _adapter_has_score_head(adapter_dir):
            raise ModelLoadError(
                f"{adapter_dir}: the adapter holds no 'score' head weights (saved without "
                "task_type=SEQ_CLS?); its relevance head would be randomly initialised."
            )
        if base_name is None:
            base_name = adapter_config.get("base_model_name_or_path")
            if not base_name:
                raise ModelLoadError(f"{config_path}: names no base_model_name_or_path; pass the base with --model.")
    assert base_name is not None
    # A revision pin applies to the model fetched by id: the adapter when there is one.
    base_dir = resolve_dir(base_name, spec, None if spec.adapter else spec.revision)
    _check_weights(base_dir, spec, "model")
    return base_dir, adapter_dir


def load_tokenizer(base_dir: Path, adapter_dir: Path | None = None) -> Any:
    """The pair's tokenizer (the adapter's own when it ships one), pad falling back to EOS."""
    from transformers import AutoTokenizer

    source = adapter_dir if adapter_dir is not None and (adapter_dir / "tokenizer.json").exists() else base_dir
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{source}: could not load the tokenizer (tokenizer.json?): {type(exc).__name__}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id is None:
        raise ModelLoadError(f"{source}: the tokenizer has neither a pad nor an eos token.")
    return tokenizer


@dataclass(frozen=True)
class ModelInfo:
    """What the driver knows of a model without loading its weights."""

    spec: ModelSpec
    fingerprint: str
    revision: str | None
    char_cap: int  # no text longer than this can change the layout's ids

    @property
    def label(self) -> str:
        return model_label(self.spec, self.revision, self.fingerprint)


def inspect_model(spec: ModelSpec, layout: Any = None) -> ModelInfo:
    """Resolve, check and fingerprint a model on the driver, loading only its tokenizer."""
    from .layout import Layout, PairEncoder

    base_dir, adapter_dir = resolve_model_dirs(spec)
    dirs = [base_dir] + ([adapter_dir] if adapter_dir else [])
    tokenizer = load_tokenizer(base_dir, adapter_dir)
    layout = layout or Layout()
    encoder = PairEncoder(tokenizer, layout, pool_pad_id=None, pad_id=tokenizer.pad_token_id)
    fingerprint, _ = fingerprint_files(dirs)
    return ModelInfo(
        spec=spec,
        fingerprint=fingerprint,
        revision=_revision_of(adapter_dir or base_dir, spec.revision),
        char_cap=max(encoder.char_caps),
    )


def pool_pad_id(config: Any) -> int:
    """The id the classifier compares the padded ids with: ``config.pad_token_id``, or 0
    when the config has none, as DeAR's ``modeling.py`` sets it before training and
    inference (its LoRA adapters sit on Llama bases without a pad token)."""
    return 0 if config.pad_token_id is None else int(config.pad_token_id)


def load_model(spec: ModelSpec, *, device: str | None = None) -> LoadedModel:
    """Load the tokenizer and model of ``spec`` for scoring.

    Args:
        spec: what to load.
        device: overrides ``spec.device`` (the Spark adapter passes the task's GPU).

    Returns:
        A ``LoadedModel`` in eval mode on its device.

    Raises:
        ModelLoadError: naming the path, the file and the reason.

    Example:
        >>> loaded = load_model(ModelSpec(model="/models/dear-3b-reranker-ce-v1", dtype="bfloat16", device="cuda"))
        >>> loaded.label
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per executor load only clutters job logs
    start = time.perf_counter()
    device = device or spec.device or "cpu"
    base_dir, adapter_dir = resolve_model_dirs(spec)
    dirs = [base_dir] + ([adapter_dir] if adapter_dir else [])
    common = {"local_files_only": True, "trust_remote_code": False}
    tokenizer = load_tokenizer(base_dir, adapter_dir)

    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(base_dir),
            num_labels=1,
            dtype=_torch_dtype(spec.dtype),
            use_safetensors=None if spec.allow_pickle else True,
            attn_implementation=spec.attn_implementation,
            **common,
        )
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            f"{base_dir}: could not load the model (config.json / *.safetensors): {type(exc).__name__}: {exc}"
        ) from exc
    if getattr(model.config, "num_labels", 1) != 1:
        raise ModelLoadError(f"{base_dir}: expected one relevance label, config has {model.config.num_labels}.")

    if adapter_dir is not None:
        try:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False, local_files_only=True)
            model = model.merge_and_unload()
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(
                f"{adapter_dir}: could not apply the adapter (adapter_model.safetensors): {type(exc).__name__}: {exc}"
            ) from exc

    if not hasattr(model, "score"):
        raise ModelLoadError(f"{base_dir}: {type(model).__name__} has no 'score' head; not a DeAR-style classifier.")
    model.eval().requires_grad_(False)
    try:
        model.to(torch.device(device))
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{base_dir}: could not move the model to {device}: {exc}") from exc

    fingerprint, files = fingerprint_files(dirs)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        pad_id=int(tokenizer.pad_token_id),
        pool_pad_id=pool_pad_id(model.config),
        device=device,
        dtype=spec.dtype,
        spec=spec,
        fingerprint=fingerprint,
        revision=_revision_of(adapter_dir or base_dir, spec.revision),
        load_seconds=time.perf_counter() - start,
        files=files,
    )
