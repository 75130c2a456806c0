"""Several LoRA adapters over one base: the base loaded once, each adapter's merged weights
kept beside it and swapped in by reference.

DeAR's own code and its LoRA card merge an adapter into its base
(``PeftModel.from_pretrained(base, path).merge_and_unload()``), and so does the
single-adapter load (``load._load_classifier``): a DeAR score under an adapter is the score
of its merged weights. So ``load_adapters`` loads the base once and, for each adapter,
merges it through PEFT exactly as the single-adapter load does (the same call, the same
in-place addition, on the CPU, in the weights' dtype), keeps only the tensors the merge
changed (the LoRA target modules' weights and the ``modules_to_save``, such as the
``score`` head), and puts the base's own tensors back. Switching adapters
(``AdapterBank.activate``) then points each of those parameters at the adapter's merged
tensor: no arithmetic at switch time, so every adapter's scores are bitwise those of a
single-adapter run of it (tests/test_adapters.py checks this, and the plain reference).

Memory: the base once, plus per adapter its merged copy of the target modules (all of a
Llama's linear layers for DeAR's adapters: most of the weights; for adapters on the
attention projections alone, about a third). PEFT's unmerged multi-adapter API would hold
only the LoRA factors, but computes ``W x + B A x`` instead of ``(W + B A) x``: in bfloat16
that differs from the merged model beyond rounding, so it is not what DeAR scores.

Example:
    >>> bank = load_adapters({"med": ModelSpec(model="/m/base", adapter="/a/med"),
    ...                       "law": ModelSpec(model="/m/base", adapter="/a/law")})
    >>> Scorer(bank.loaded["law"]).score(["q"], None, ["a document"])  # activates "law"
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..exceptions import ModelLoadError
from .spec import ModelSpec


@dataclass
class AdapterBank:
    """One base model in memory and, per adapter name, the merged tensors it swaps in.

    ``loaded[name]`` is that adapter's ``LoadedModel`` (its tokenizer, fingerprint and
    label, as a single-adapter load would give): its ``activate`` swaps the adapter in, and
    ``Scorer`` calls it before every forward pass, so scorers of several adapters may be
    used in any order.
    """

    model: Any
    params: dict[str, Any]  # name -> the model's Parameter objects, whose .data is swapped
    originals: dict[str, Any]  # name -> the base's own tensor
    swaps: dict[str, dict[str, Any]]  # adapter name -> parameter name -> merged tensor
    loaded: dict[str, Any] = field(default_factory=dict)
    active: str | None = None
    load_seconds: float = 0.0

    @property
    def swapped(self) -> list[str]:
        """The parameters some adapter changes (the others are the base's, shared)."""
        return sorted({name for swap in self.swaps.values() for name in swap})

    def activate(self, name: str) -> None:
        """Point the swapped parameters at adapter ``name``'s tensors (the base's own where
        it changed nothing). By reference only: nothing is computed."""
        if name == self.active:
            return
        if name not in self.swaps:
            raise KeyError(f"no adapter {name!r} in this bank; it holds {sorted(self.swaps)}.")
        swap = self.swaps[name]
        for param in self.swapped:
            self.params[param].data = swap.get(param, self.originals[param])
        self.active = name

    def extra_bytes(self) -> int:
        """Bytes the adapters' merged tensors take beside the base."""
        return sum(t.numel() * t.element_size() for swap in self.swaps.values() for t in swap.values())


def _merge_aside(model: Any, adapter_dir: Path, originals: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Merge one adapter as the single-adapter load does, and take the merged tensors out:
    returns the model (the base again) and parameter name -> merged tensor."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False, local_files_only=True)
        for module in peft_model.modules():
            if isinstance(module, BaseTunerLayer):
                # The merge adds in place: into a copy, so the base's own tensor stays as loaded.
                layer = module.get_base_layer()
                for name in ("weight", "bias"):
                    tensor = getattr(layer, name, None)
                    if tensor is not None:
                        tensor.data = tensor.data.clone()
        merged = peft_model.merge_and_unload()
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            f"{adapter_dir}: could not apply the adapter (adapter_model.safetensors): {type(exc).__name__}: {exc}"
        ) from exc
    for attr in ("peft_config", "_hf_peft_config_loaded"):  # PEFT's marks; the next adapter starts clean
        if attr in merged.__dict__:
            delattr(merged, attr)
    changed: dict[str, Any] = {}
    for name, param in merged.named_parameters():
        if name not in originals:
            raise ModelLoadError(f"{adapter_dir}: merging the adapter added a parameter {name!r} the base lacks.")
        if param.data.data_ptr() != originals[name].data_ptr():
            changed[name] = param.data
            param.data = originals[name]
    return merged, changed


def load_adapters(specs: Mapping[str, ModelSpec], *, device: str | None = None) -> AdapterBank:
    """Load the base once and every adapter of ``specs`` over it.

    Args:
        specs: adapter name -> its single-adapter spec (``ModelSpec.each_adapter``), or a
            spec without adapter for the base alone; all must resolve to one base folder
            and share dtype and loading settings.
        device: overrides the specs' device (the Spark task's GPU).

    Raises:
        ModelLoadError: the adapters sit on different bases, or one cannot be loaded.
    """
    import torch

    from .device import check_device, resolve_device
    from .files import resolve_model_files
    from .fingerprint import fingerprint_files, revision_of
    from .load import _load_classifier, _loaded, load_tokenizer

    if not specs:
        raise ValueError("specs must name at least one adapter.")
    start = time.perf_counter()
    first = next(iter(specs.values()))
    device = resolve_device(device or first.device)
    check_device(device)
    found = {name: resolve_model_files(spec) for name, spec in specs.items()}
    bases = sorted({str(f.base_dir) for f in found.values()})
    if len(bases) > 1:
        raise ModelLoadError(f"the adapters sit on different base models ({', '.join(bases)}); one run loads one base.")
    settings = {(s.dtype, s.allow_pickle, s.attn_implementation) for s in specs.values()}
    if len(settings) > 1:
        raise ModelLoadError(f"the adapters of one base must load with one dtype and settings, got {sorted(settings)}.")

    base_dir = Path(bases[0])
    model = _load_classifier(base_dir, None, first)
    if not hasattr(model, "score"):
        raise ModelLoadError(f"{base_dir}: {type(model).__name__} has no 'score' head; not a DeAR-style classifier.")
    originals = {name: p.data for name, p in model.named_parameters()}
    swaps: dict[str, dict[str, Any]] = {}
    for name, files in found.items():
        if files.adapter_dir is None:
            swaps[name] = {}
            continue
        model, swaps[name] = _merge_aside(model, files.adapter_dir, originals)
    model.eval().requires_grad_(False)
    try:
        model.to(torch.device(device))
        swaps = {name: {p: t.to(torch.device(device)) for p, t in swap.items()} for name, swap in swaps.items()}
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{base_dir}: could not move the model to {device}: {exc}") from exc
    params = dict(model.named_parameters())
    bank = AdapterBank(model=model, params=params, originals={n: p.data for n, p in params.items()}, swaps=swaps)
    for name, spec in specs.items():
        files = found[name]
        fingerprint, read, _ = fingerprint_files(files.read)
        bank.loaded[name] = _loaded(
            model, load_tokenizer(files.base_dir, files.adapter_dir), spec, device=device, fingerprint=fingerprint,
            revision=revision_of(files.adapter_dir or files.base_dir, spec.revision), load_seconds=0.0, files=read,
        )
        bank.loaded[name].activate = partial(bank.activate, name)
    bank.load_seconds = time.perf_counter() - start
    for each in bank.loaded.values():
        each.load_seconds = bank.load_seconds
    return bank
