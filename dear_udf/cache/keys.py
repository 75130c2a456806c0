"""Keys of the score cache: what determines a score, hashed.

A cached score is reused only when the scorer would read the same texts with the same
model, dtype, layout and environment. Two keys say so:

- the **scorer key** (``scorer_key`` of ``scorer_fields``): SHA-256 over the model's file
  fingerprint (which covers the adapter's files too, ``model.inspect_model``), the dtype,
  ``attn_implementation``, every field of the ``Layout`` dataclass (read generically, so a
  field added later is keyed without anyone remembering to), ``FORMAT_VERSION``, and the
  ``environment`` of the process that scores: library versions, device type and float32
  matmul precision. Each scoring task computes it for itself (``spark.udf``);
- the **pair key** (``pair_key``): SHA-256 over the query hash and the document hash, each
  computed once per query and once per document (``query_hash``, ``doc_hash``) from the
  texts *after* the character cap the job applies before scoring
  (``spark.stages.kept_pairs``). Beyond the cap the scorer reads nothing, so texts
  differing only there share a key; any change the scorer could read changes it.

Each text is serialized without ambiguity before hashing: ``N`` for null, else ``S`` +
its UTF-8 byte length + ``:`` + its UTF-8 bytes, so null and ``""`` differ, and no
(title, text) split can collide with another. The scorer reads a null title as ``""``, so
keeping them apart may cost a miss, never a stale hit.

The same hashes exist as Spark SQL expressions (``dear_udf.spark.score_cache``); this module is
their plain-Python twin, which tests use as an independent check. Keys are lowercase hex:
query and document hashes 64 characters, scorer and pair keys the first 32 (128 bits:
collisions among 10^10 entries have odds below 10^-18).

Chunks (``chunk_of``): a chunk is a key's first 15 hex digits modulo the number of chunks,
a pure function of the key; the job forms chunks from the query hash
(``spark.score_step``), so all of a query's misses fall in one chunk. The job recomputes the number of chunks
from its own misses (``chunk_count``), so a resumed run splits what is left into full
chunks; pairs whose chunk was committed before the crash are hits on the rerun and never
reach a chunk. The set of pairs a rerun scores is therefore exactly the set no earlier
chunk committed, whatever the chunk numbering.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any

from ..exceptions import ConfigError
from ..tokenization import Layout

# Bump when the meaning of a key or of a cached score changes (hashing, serialization,
# what a score is): every entry of an older format then misses.
FORMAT_VERSION = 2  # 2: the environment in the scorer key; entries carry computed_key
KEY_HEX_CHARS = 32
CHUNK_HEX_DIGITS = 15  # 60 bits: a positive Spark long after conv(..., 16, 10)

# Domain tags keep a query hash from ever equalling a document hash of the same bytes.
QUERY_TAG = "dear-rerank/query/v1\n"
DOC_TAG = "dear-rerank/doc/v1\n"
PAIR_TAG = "dear-rerank/pair/v1\n"


def _plain(value: Any, name: str) -> Any:
    """A layout value as JSON, refusing types whose text form could change between runs."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(v, name) for v in value]
    raise ConfigError(
        f"layout field {name} holds a {type(value).__name__}; the cache's scorer key takes only "
        "str, int, float, bool, None and tuples of them."
    )


def model_fields(
    *,
    fingerprint: str,
    dtype: str,
    layout: Layout,
    attn_implementation: str = "sdpa",
    base_fingerprint: str | None = None,
    adapter_fingerprint: str | None = None,
) -> dict[str, Any]:
    """What the scorer key covers of the model and its settings (not the environment).

    ``fingerprint`` covers every file loading reads (``model.fingerprint_files``); the
    base's and the adapter's own fingerprints are recorded beside it for ``cache stats``.
    """
    from ..model import DTYPES

    if not isinstance(fingerprint, str) or not fingerprint:
        raise ConfigError(f"fingerprint must be a non-empty string, got {fingerprint!r}.")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    if not isinstance(layout, Layout):
        raise ConfigError(f"layout must be a Layout, got {type(layout).__name__}.")
    return {
        "format": FORMAT_VERSION,
        "model": {"fingerprint": fingerprint, "base": base_fingerprint, "adapter": adapter_fingerprint},
        "dtype": dtype,
        "attn_implementation": attn_implementation,
        "layout": {f.name: _plain(getattr(layout, f.name), f.name) for f in dataclasses.fields(layout)},
    }


def model_fields_of(info: Any, layout: Layout) -> dict[str, Any]:
    """``model_fields`` of a ``model.ModelInfo`` (from ``inspect_model``) under ``layout``."""
    return model_fields(
        fingerprint=info.fingerprint,
        dtype=info.spec.dtype,
        layout=layout,
        attn_implementation=info.spec.attn_implementation,
        base_fingerprint=info.base_fingerprint,
        adapter_fingerprint=info.adapter_fingerprint,
    )


# The libraries whose versions can change a score: the forward pass (torch), the model's
# code (transformers), the ids (tokenizers) and, with an adapter, its merge (peft).
SCORING_LIBRARIES = ("torch", "transformers", "tokenizers")
ADAPTER_LIBRARIES = ("peft",)
# Environment variables that switch cuBLAS to TF32 whatever torch's settings say.
TF32_VARIABLES = ("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "NVIDIA_TF32_OVERRIDE")


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _precision(backends: Any, name: str) -> str:
    """The effective float32 precision of one backend's matmuls: torch's new API says "none"
    for "as the generic setting", whose "none" is full IEEE float32."""
    own = getattr(getattr(backends, name).matmul, "fp32_precision", "none")
    generic = getattr(backends, "fp32_precision", "none")
    return own if own != "none" else generic if generic != "none" else "ieee"


def _matmul(torch: Any) -> dict[str, Any]:
    """How float32 matrix products run in this process: TF32 on a GPU differs from IEEE
    float32 by ~1e-3, and oneDNN may run them in bf16 on a CPU ("medium" precision)."""
    found: dict[str, Any] = {}
    for name, read in (
        ("float32_matmul_precision", torch.get_float32_matmul_precision),
        ("cuda", lambda: _precision(torch.backends, "cuda")),
        ("cpu", lambda: _precision(torch.backends, "mkldnn")),
    ):
        try:
            found[name] = read()
        except Exception:  # noqa: BLE001 - an API torch dropped or refuses to mix: say so
            found[name] = "unknown"
    found.update({name: os.environ[name] for name in TF32_VARIABLES if name in os.environ})
    return found


def environment(device: str, *, adapter: bool) -> dict[str, Any]:
    """What the scorer key covers of the process that scores: library versions, the
    device type and how float32 matrix products run. Read on the executor that scores;
    the driver reads its own to predict the executors' (``scorer_fields``).

    Example:
        >>> environment("cpu", adapter=False)["device"]
        'cpu'
    """
    import torch

    libraries = SCORING_LIBRARIES + (ADAPTER_LIBRARIES if adapter else ())
    return {
        "libraries": {name: _version(name) for name in libraries},
        "device": torch.device(device).type,
        "matmul": _matmul(torch),
    }


def scorer_fields(model: dict[str, Any], environment: dict[str, Any]) -> dict[str, Any]:
    """Everything a scorer key hashes: ``model_fields`` and an ``environment``."""
    return {**model, "environment": environment}


def scorer_key(fields: dict[str, Any]) -> str:
    """The scorer key: 32 hex characters naming ``scorer_fields`` (model files, dtype,
    attention, layout, libraries, device, matmul precision, format).

    Example:
        >>> scorer_key(scorer_fields(model_fields_of(info, Layout()), environment("cpu", adapter=False)))  # doctest: +SKIP
        '5f0c...'
    """
    payload = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:KEY_HEX_CHARS]


def _capped(value: Any, char_cap: int | None) -> str | None:
    if value is None or (isinstance(value, float) and value != value):  # pandas' null
        return None
    text = str(value)
    return text[:char_cap] if char_cap else text


def _field(value: str | None) -> str:
    if value is None:
        return "N"
    return f"S{len(value.encode('utf-8'))}:{value}"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_cap(char_cap: int | None) -> None:
    if char_cap is not None and (not isinstance(char_cap, int) or isinstance(char_cap, bool) or char_cap < 1):
        raise ConfigError(f"char_cap must be a positive integer or None, got {char_cap!r}.")


def query_hash(query: Any, *, char_cap: int | None) -> str:
    """64 hex characters: the query text the scorer reads (cut at ``char_cap`` characters)."""
    _check_cap(char_cap)
    return _sha256(QUERY_TAG + _field(_capped(query, char_cap)))


def doc_hash(title: Any, text: Any, *, char_cap: int | None) -> str:
    """64 hex characters: the title and text the scorer reads (each cut at ``char_cap``)."""
    _check_cap(char_cap)
    return _sha256(DOC_TAG + _field(_capped(title, char_cap)) + _field(_capped(text, char_cap)))


def combine(query_hash_hex: str, doc_hash_hex: str) -> str:
    """The pair key of a query hash and a document hash (32 hex characters)."""
    return _sha256(PAIR_TAG + query_hash_hex + doc_hash_hex)[:KEY_HEX_CHARS]


def pair_key(query: Any, title: Any, text: Any, *, char_cap: int | None) -> str:
    """The pair key of one (query, title, text), as the Spark expressions compute it.

    Example:
        >>> pair_key("what is a llama", None, "A camelid.", char_cap=4096)  # doctest: +SKIP
        '9b1e...'
    """
    return combine(query_hash(query, char_cap=char_cap), doc_hash(title, text, char_cap=char_cap))


def chunk_count(pairs: int, chunk_pairs: int) -> int:
    """Chunks for ``pairs`` pairs of about ``chunk_pairs`` each (at least one)."""
    if not isinstance(chunk_pairs, int) or isinstance(chunk_pairs, bool) or chunk_pairs < 1:
        raise ConfigError(f"chunk_pairs must be a positive integer, got {chunk_pairs!r}.")
    if not isinstance(pairs, int) or pairs < 0:
        raise ConfigError(f"pairs must be a non-negative integer, got {pairs!r}.")
    return max(1, math.ceil(pairs / chunk_pairs))


def chunk_of(pair_key_hex: str, chunks: int) -> int:
    """The chunk (0..chunks-1) of a pair: its key's first 15 hex digits modulo ``chunks``."""
    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1:
        raise ConfigError(f"chunks must be a positive integer, got {chunks!r}.")
    return int(pair_key_hex[:CHUNK_HEX_DIGITS], 16) % chunks
