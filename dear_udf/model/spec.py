"""What model to load and how: ``ModelSpec``, its flags, and the label the output records."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from ..exceptions import ConfigError
from ..settings import flag

Dtype = Literal["float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = get_args(Dtype)
# An adapter's name: what the output's ``adapter`` column and a routing column hold.
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
BASE_ADAPTER = "base"  # the name the base model alone is scored under (--side-by-side-base)


@dataclass(frozen=True)
class ModelSpec:
    """Where a DeAR model comes from and how to load it. Plain data, cheap to pickle.

    Args:
        model: Hugging Face id or local directory of a full model, or of the base model
            when ``adapter`` is given.
        adapter: Hugging Face id or local directory of a PEFT LoRA adapter, or None.
        adapters: named adapters over one base, name -> hub id or directory (YAML
            ``model: adapters: {medical: /a/med, legal: /a/legal}``; flags ``--adapter
            NAME=PATH``); kept as ``(name, path)`` pairs in the order given. Each is loaded
            as ``adapter`` would be (``each_adapter``); not with ``adapter``.
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
    adapter: str | None = field(
        default=None,
        metadata=flag(
            "--adapter", action="append", metavar="[NAME=]PATH",
            help="PEFT LoRA adapter (hub id or directory); repeat as NAME=PATH to name several over one base",
        ),
    )
    adapters: Mapping[str, str] | tuple[tuple[str, str], ...] = ()
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
        object.__setattr__(self, "adapters", _adapter_pairs(self.adapters))
        if self.adapters and self.adapter is not None:
            raise ConfigError(
                f"adapter {self.adapter!r} has no name beside named adapters {[n for n, _ in self.adapters]}; "
                "name every adapter (--adapter NAME=PATH)."
            )
        if self.model is None and self.adapter is None and not self.adapters:
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
    def adapter_names(self) -> tuple[str, ...]:
        """The named adapters' names, in the order given (empty without named adapters)."""
        return tuple(name for name, _ in self.adapters)

    def each_adapter(self) -> dict[str | None, ModelSpec]:
        """One single-adapter spec per named adapter, loaded as ``adapter`` would be (its
        own files, fingerprint and scorer key); ``{None: self}`` without named adapters.

        Example:
            >>> ModelSpec(model="/m/base", adapters={"med": "/a/med"}).each_adapter()["med"].adapter
            '/a/med'
        """
        if not self.adapters:
            return {None: self}
        return {name: dataclasses.replace(self, adapter=path, adapters=()) for name, path in self.adapters}

    @property
    def name(self) -> str:
        """A short human name for the output's ``model`` column."""
        parts = [p for p in (self.model, self.adapter) if p]
        return "+".join(parts)


def model_label(spec: ModelSpec, revision: str | None, fingerprint: str) -> str:
    """``name[@revision]#fingerprint16``: what the output's ``model`` column records."""
    rev = f"@{revision}" if revision else ""
    return f"{spec.name}{rev}#{fingerprint[:16]}"


def _adapter_pairs(value: object) -> tuple[tuple[str, str], ...]:
    """Named adapters as ``(name, path)`` pairs (hashable: the spec keys a worker's model)."""
    pairs = list(value.items()) if isinstance(value, Mapping) else value
    if not isinstance(pairs, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise ConfigError(f"adapters must map names to adapter paths, e.g. {{'medical': '/adapters/medical'}}, got {value!r}.")
    seen: set[str] = set()
    for name, path in pairs:
        if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name):
            raise ConfigError(
                f"adapter name {name!r} must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit."
            )
        if name in seen:
            raise ConfigError(f"adapter name {name!r} is used twice; each adapter needs its own name.")
        seen.add(name)
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(f"adapter {name!r} needs a path (hub id or directory), got {path!r}.")
    return tuple((str(n), str(p)) for n, p in pairs)


def model_flag_values(args: object) -> dict[str, object]:
    """The ``ModelSpec`` flags given, with ``--adapter`` (repeatable) read as one unnamed
    adapter (``--adapter PATH``, as before) or named ones (``--adapter NAME=PATH``...).

    Example:
        >>> model_flag_values(parser.parse_args(["--adapter", "med=/a/med", "--adapter", "law=/a/law"]))
        {'adapters': [('med', '/a/med'), ('law', '/a/law')]}
    """
    from ..settings import flag_values

    values = flag_values(args, ModelSpec)
    given = values.pop("adapter", None)
    if given is None:
        return values
    given = [given] if isinstance(given, str) else list(given)
    named, unnamed = [], []
    for text in given:
        name, sep, path = text.partition("=")
        if sep and ADAPTER_NAME.fullmatch(name):
            named.append((name, path))
        else:
            unnamed.append(text)
    if len(unnamed) > 1 or (unnamed and named):
        raise ConfigError(
            f"--adapter given {len(given)} times with unnamed path(s) {unnamed}: one unnamed --adapter PATH, "
            "or name each one, --adapter NAME=PATH."
        )
    if unnamed:
        values["adapter"] = unnamed[0]
    else:
        names = [n for n, _ in named]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"adapter name(s) {twice} used twice in --adapter; each adapter needs its own name.")
        values["adapters"] = named
    return values
