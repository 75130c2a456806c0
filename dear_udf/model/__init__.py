"""The DeAR model: what to load, its files, the refusals, its fingerprint, the device, loading.

One module per job:

- ``spec``: ``ModelSpec`` (the model's settings and their flags), ``DTYPES``, ``model_label``;
- ``files``: a model's folders (a hub snapshot downloaded when given an id) and exactly
  the files loading it reads;
- ``refusals``: what SECURITY.md refuses before any weights are read (pickles, unknown
  architectures, more than one label, no ``score`` head);
- ``fingerprint``: the SHA-256 of the files read, and the revision they are;
- ``device``: the device to load on, refused early when this machine cannot give it;
- ``load``: the tokenizer and classifier loaded to score (``load_model``), and the
  driver's look at a model without its weights (``inspect_model``).

Nothing here imports torch, transformers or pyspark at import time.

Example:
    >>> from dear_udf.model import ModelSpec, load_model
    >>> loaded = load_model(ModelSpec(model="/models/dear-3b-reranker-ce-v1", dtype="bfloat16", device="cuda"))
"""

from __future__ import annotations

from .device import check_device, resolve_device, torch_dtype
from .fingerprint import fingerprint_files
from .load import LoadedModel, ModelInfo, inspect_model, load_model, load_tokenizer, loaded_from_objects, pool_pad_id
from .spec import DTYPES, Dtype, ModelSpec, model_label

__all__ = [
    "DTYPES",
    "Dtype",
    "LoadedModel",
    "ModelInfo",
    "ModelSpec",
    "check_device",
    "fingerprint_files",
    "inspect_model",
    "load_model",
    "load_tokenizer",
    "loaded_from_objects",
    "model_label",
    "pool_pad_id",
    "resolve_device",
    "torch_dtype",
]
