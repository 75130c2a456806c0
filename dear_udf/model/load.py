"""Loading a DeAR model to score with, and inspecting one on the driver without its weights.

Loading weights is a trust decision (see SECURITY.md): only safetensors unless the caller
opts in, never ``trust_remote_code``, offline when asked (``files``, ``refusals``), and the
files that were loaded are fingerprinted (``fingerprint``) so the output records exactly
which model produced it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import ModelLoadError
from .device import check_device, resolve_device, torch_dtype
from .files import resolve_model_files
from .fingerprint import fingerprint_files, revision_of
from .spec import ModelSpec, model_label


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
    # Several adapters over one base (``adapters.AdapterBank``): swaps this one's weights
    # in; the scorer calls it before every forward pass. None for a model of its own.
    activate: Any = None

    @property
    def label(self) -> str:
        """What the output's ``model`` column records: name, revision and fingerprint."""
        return model_label(self.spec, self.revision, self.fingerprint)


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

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per executor load only clutters job logs
    if spec.adapters:
        from ..exceptions import ConfigError

        raise ConfigError(
            f"named adapters {list(spec.adapter_names)} are scored by the job (dear-rerank run --side-by-side or "
            "--adapter-column); here give one unnamed --adapter PATH."
        )
    start = time.perf_counter()
    device = resolve_device(device or spec.device)
    check_device(device)
    found = resolve_model_files(spec)
    base_dir, adapter_dir = found.base_dir, found.adapter_dir
    tokenizer = load_tokenizer(base_dir, adapter_dir)

    model = _load_classifier(base_dir, adapter_dir, spec)
    if not hasattr(model, "score"):
        raise ModelLoadError(f"{base_dir}: {type(model).__name__} has no 'score' head; not a DeAR-style classifier.")
    model.eval().requires_grad_(False)
    try:
        model.to(torch.device(device))
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{base_dir}: could not move the model to {device}: {exc}") from exc

    fingerprint, files, _ = fingerprint_files(found.read)
    revision = revision_of(adapter_dir or base_dir, spec.revision)
    return _loaded(model, tokenizer, spec, device=device, fingerprint=fingerprint, revision=revision, load_seconds=time.perf_counter() - start, files=files)


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


def _load_classifier(base_dir: Path, adapter_dir: Path | None, spec: ModelSpec) -> Any:
    """The sequence classifier, with the adapter merged in when there is one."""
    from transformers import AutoModelForSequenceClassification

    common = {"local_files_only": True, "trust_remote_code": False}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(base_dir),
            num_labels=1,
            dtype=torch_dtype(spec.dtype),
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

    return model


def pool_pad_id(config: Any) -> int:
    """The id the classifier compares the padded ids with: ``config.pad_token_id``, or 0
    when the config has none, as DeAR's ``modeling.py`` sets it before training and
    inference (its LoRA adapters sit on Llama bases without a pad token)."""
    return 0 if config.pad_token_id is None else int(config.pad_token_id)


def _loaded(model: Any, tokenizer: Any, spec: ModelSpec, *, device: str, fingerprint: str, revision: str | None, load_seconds: float, files: list[str] | None = None) -> LoadedModel:
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        pad_id=int(tokenizer.pad_token_id),
        pool_pad_id=pool_pad_id(model.config),
        device=device,
        dtype=spec.dtype,
        spec=spec,
        fingerprint=fingerprint,
        revision=revision,
        load_seconds=load_seconds,
        files=files or [],
    )


def loaded_from_objects(model: Any, tokenizer: Any, *, name: str, dtype: str, device: str, load_seconds: float = 0.0) -> LoadedModel:
    """A ``LoadedModel`` around a model built in memory (random weights of a real shape,
    for benchmarks): no files, so no fingerprint or revision."""
    spec = ModelSpec(model=name, dtype=dtype, device=device)
    return _loaded(model, tokenizer, spec, device=device, fingerprint="in-memory", revision=None, load_seconds=load_seconds)


@dataclass(frozen=True)
class ModelInfo:
    """What the driver knows of a model without loading its weights."""

    spec: ModelSpec
    fingerprint: str  # of every file loading reads (the base's and the adapter's)
    revision: str | None
    char_cap: int  # no text longer than this can change the layout's ids
    base_fingerprint: str | None = None  # of the base (or full) model's files alone
    adapter_fingerprint: str | None = None  # of the adapter's files alone

    @property
    def label(self) -> str:
        return model_label(self.spec, self.revision, self.fingerprint)


def inspect_model(spec: ModelSpec, layout: Any = None) -> ModelInfo:
    """Resolve, check and fingerprint a model on the driver, loading only its tokenizer.

    Everything an executor could refuse about the model files is refused here first
    (``resolve_model_files``), so a bad model stops the run before Spark scores anything.
    """
    from ..tokenization import Layout, PairEncoder

    found = resolve_model_files(spec)
    tokenizer = load_tokenizer(found.base_dir, found.adapter_dir)
    layout = layout or Layout()
    encoder = PairEncoder(tokenizer, layout, pool_pad_id=None, pad_id=tokenizer.pad_token_id)
    fingerprint, _, per_folder = fingerprint_files(found.read)
    return ModelInfo(
        spec=spec,
        fingerprint=fingerprint,
        revision=revision_of(found.adapter_dir or found.base_dir, spec.revision),
        char_cap=max(encoder.char_caps),
        base_fingerprint=per_folder[0],
        adapter_fingerprint=per_folder[1] if found.adapter_dir is not None else None,
    )
