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
from typing import Any, Literal, get_args

from .exceptions import ConfigError, ModelLoadError
from .settings import flag

Dtype = Literal["float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = get_args(Dtype)


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
        device: "cpu", "cuda", "cuda:N", or None (the default) for the GPU this process
            or Spark task was given, else CPU (``resolve_device``, ``spark.model_cache``).
        revision: optional revision pin (branch, tag or commit) for hub ids.
        local_files_only: never reach the hub; also on when ``HF_HUB_OFFLINE=1``.
        allow_pickle: accept ``.bin`` (pickle) weights; off by default.
        attn_implementation: "sdpa" or "eager"; the scorer's pooling trick needs an
            attention path that honours an explicit mask (not FlashAttention-2's unpadding).
    """

    model: str | None = field(metadata=flag("--model", help="DeAR model (hub id or directory), or the base of --adapter"))
    adapter: str | None = field(default=None, metadata=flag("--adapter", help="PEFT LoRA adapter (hub id or directory)"))
    dtype: Dtype = field(default="float32", metadata=flag("--dtype", choices=DTYPES, help="weights dtype"))
    device: str | None = field(
        default=None, metadata=flag("--device", help="cpu, cuda or cuda:N; default: the GPU Spark gave the task, else CPU")
    )
    revision: str | None = field(default=None, metadata=flag("--revision", help="revision pin for hub ids"))
    local_files_only: bool = False
    allow_pickle: bool = field(default=False, metadata=flag("--allow-pickle", action="store_true", help="accept .bin (pickle) weights"))
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        # Bad settings are configuration errors: nothing has been loaded yet.
        if self.model is None and self.adapter is None:
            raise ConfigError("model must be given (or an adapter whose config names its base).")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}.")
        if self.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}.")
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ConfigError(
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


# The weight files transformers and PEFT look for, in their order of preference
# (transformers' ``_get_resolved_checkpoint_files``, PEFT's ``load_peft_weights``).
MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTER_CONFIG = "adapter_config.json"
# Config and tokenizer files, read from the top level of a folder.
_SMALL_FILES = (".json", ".txt", ".model", ".tiktoken")


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
    pickles = [os.path.relpath(p, directory) for p in files if p.suffix not in (".safetensors", ".json")]
    if pickles and not allow_pickle:
        raise ModelLoadError(
            f"{directory}: the {what} would load pickle weights ({', '.join(pickles)}); pickle files can run "
            "code when loaded. Convert them to safetensors, or opt in with allow_pickle=True (--allow-pickle)."
        )
    return files


def _model_weight_names(config_path: Path, config: dict[str, Any]) -> tuple[str, ...]:
    # transformers loads the file config.json names in "transformers_weights", if any.
    explicit = config.get("transformers_weights")
    if explicit is None:
        return MODEL_WEIGHTS
    if not isinstance(explicit, str) or not explicit:
        raise ModelLoadError(f"{config_path}: transformers_weights must name a file, got {explicit!r}.")
    return (explicit,)


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


def _check_head(directory: Path, weights: list[Path], *, what: str) -> None:
    """Refuse weights without a one-label ``score`` head: a missing head would be random."""
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


def _check_config(path: Path, config: dict[str, Any]) -> None:
    """Refuse what executors could only fail on, in words: an architecture transformers does
    not know (the code shipped with a model is never run) or other than one label."""
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


@dataclass(frozen=True)
class ModelFiles:
    """A model's local folders and every file loading it reads: what the fingerprint covers."""

    base_dir: Path
    adapter_dir: Path | None
    read: tuple[tuple[Path, tuple[Path, ...]], ...]  # (folder, the files read from it)


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
    _check_head(adapter_dir, weights, what="adapter")
    base_name = spec.model or config.get("base_model_name_or_path")
    if not base_name:
        raise ModelLoadError(f"{config_path}: names no base_model_name_or_path; pass the base with --model.")
    return adapter_dir, weights, str(base_name)


def _base_weights(base_dir: Path, spec: ModelSpec) -> list[Path]:
    """The checked config and the weight files of the base (or full) model."""
    config_path = base_dir / "config.json"
    config = _read_json(config_path, "model config")
    _check_config(config_path, config)
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
    """
    adapter_dir, adapter_weights, base_name = None, [], spec.model
    if spec.adapter:
        adapter_dir, adapter_weights, base_name = _resolve_adapter(spec)
    assert base_name is not None
    # A revision pin applies to the model fetched by id: the adapter when there is one.
    base_dir = resolve_dir(base_name, spec, None if spec.adapter else spec.revision)
    weights = _base_weights(base_dir, spec)
    if adapter_dir is None and all(p.suffix in (".safetensors", ".json") for p in weights):  # never unpickle a whole model here
        _check_head(base_dir, weights, what="model")
    read = [_files_read(base_dir, weights)] + ([_files_read(adapter_dir, adapter_weights)] if adapter_dir else [])
    return ModelFiles(base_dir=base_dir, adapter_dir=adapter_dir, read=tuple(read))


def resolve_device(device: str | None) -> str:
    """The device to load on: ``device`` when given, else CUDA when this process sees a GPU
    (``CUDA_VISIBLE_DEVICES`` decides which), else CPU. Spark tasks use the GPU Spark
    assigned instead (``spark.model_cache.task_device``)."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | None) -> None:
    """Refuse a CUDA device this machine cannot give, before any weights are read.

    Runs where the model will run: in ``load_model`` on executors, and on the driver
    when the executors are this machine (local mode).
    """
    if not device or not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {device!r}: CUDA is not available on this machine (torch {torch.__version__}); "
            "use --device cpu, or run where the executors have GPUs."
        )
    index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
    if index >= count:
        raise ModelLoadError(f"device {device!r}: this machine has {count} CUDA device(s).")


def _revision_of(directory: Path, requested: str | None) -> str | None:
    # A hub snapshot lives in .../snapshots/<commit>/: that commit is the resolved revision.
    if directory.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", directory.name):
        return directory.name
    return requested


def _sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:  # follows symlinks: the content is hashed, never a name
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.digest()


def fingerprint_files(read: tuple[tuple[Path, tuple[Path, ...]], ...]) -> tuple[str, list[str], list[str]]:
    """SHA-256 over the names (relative to their folder) and the contents of ``read``.

    ``read`` is ``ModelFiles.read``: the config and tokenizer files and exactly the weight
    files loading reads (an index's shards, in subfolders too). Every file's content is
    hashed through symlinks; a hub-cache blob's name is not trusted to be its hash, as
    any link can point at a file named by 64 hex characters.

    Returns:
        The fingerprint of all the files, the files' paths, and one fingerprint per folder
        of ``read`` (the base's, then the adapter's), each over that folder's files alone.
    """
    digest = hashlib.sha256()
    names: list[str] = []
    per_folder: list[str] = []
    for directory, files in read:
        folder = hashlib.sha256()
        for path in files:
            names.append(str(path))
            relative, content = Path(os.path.relpath(path, directory)).as_posix().encode(), _sha256(path)
            for each in (digest, folder):
                each.update(relative)
                each.update(content)
        per_folder.append(folder.hexdigest())
    return digest.hexdigest(), names, per_folder


def torch_dtype(name: str):
    """The torch dtype of a ``DTYPES`` name."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


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
    from .tokenization import Layout, PairEncoder

    found = resolve_model_files(spec)
    tokenizer = load_tokenizer(found.base_dir, found.adapter_dir)
    layout = layout or Layout()
    encoder = PairEncoder(tokenizer, layout, pool_pad_id=None, pad_id=tokenizer.pad_token_id)
    fingerprint, _, per_folder = fingerprint_files(found.read)
    return ModelInfo(
        spec=spec,
        fingerprint=fingerprint,
        revision=_revision_of(found.adapter_dir or found.base_dir, spec.revision),
        char_cap=max(encoder.char_caps),
        base_fingerprint=per_folder[0],
        adapter_fingerprint=per_folder[1] if found.adapter_dir is not None else None,
    )


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


def loaded_from_objects(model: Any, tokenizer: Any, *, name: str, dtype: str, device: str, load_seconds: float = 0.0) -> LoadedModel:
    """A ``LoadedModel`` around a model built in memory (random weights of a real shape,
    for benchmarks): no files, so no fingerprint or revision."""
    spec = ModelSpec(model=name, dtype=dtype, device=device)
    return _loaded(model, tokenizer, spec, device=device, fingerprint="in-memory", revision=None, load_seconds=load_seconds)


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

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per executor load only clutters job logs
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
    revision = _revision_of(adapter_dir or base_dir, spec.revision)
    return _loaded(model, tokenizer, spec, device=device, fingerprint=fingerprint, revision=revision, load_seconds=time.perf_counter() - start, files=files)
