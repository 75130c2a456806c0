"""What model to load and how: ``ModelSpec``, its flags, and the label the output records."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from ..exceptions import ConfigError
from ..settings import flag

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
            or Spark task was given, else CPU (``resolve_device``, ``spark.worker_model``).
        revision: optional revision pin (branch, tag or commit) for hub ids.
        local_files_only: never reach the hub; also on when ``HF_HUB_OFFLINE=1``.
        allow_pickle: accept ``.bin`` (pickle) weights; off by default.
        attn_implementation: "sdpa" or "eager"; the scorer's pooling trick needs an
            attention path that honours an explicit mask (not FlashAttention-2's unpadding).

    Example:
        >>> ModelSpec(model="/models/dear-3b-reranker-ce-v1", dtype="bfloat16").name
        '/models/dear-3b-reranker-ce-v1'
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
