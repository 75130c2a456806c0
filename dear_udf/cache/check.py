"""The check of a night's cache hits: a sample scored again, compared with the cache.

The scorer key names everything known to change a score (model files, dtype, layout,
library versions, device type, matmul precision). What it cannot name (a GPU model, a
CUDA or cuDNN release, a non-deterministic kernel, entries written by another tool)
would otherwise be served from the cache for good: duplicates resolve to the earliest
entry. So a night that loads a model anyway scores ``HIT_CHECK_PAIRS`` of its hits again
(the lowest pair keys: a sample fixed by the cache's content, spread over queries) and
compares them with the cached scores. A pair agrees when

    |fresh - cached| <= absolute + relative * |cached|

with the tolerance of the scorer's dtype (``TOLERANCES``). The batch alone moves one
scorer's scores by float noise: on the benchmark models (``python bench/run.py --mode
noise``, ``bench/RESULTS.md``) up to 6e-6 in fp32, 6e-3 in fp16 and 0.04 in bf16, for
scores within +-5. The tolerances sit about 10x above that, for deeper models and GPU
kernels, and far below what another model or layout moves a score (~1). Beyond them the
cache holds another scorer's scores, and the night stops before any commit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .table import CacheError

HIT_CHECK_PAIRS = 256
# dtype -> (absolute, relative) tolerance; see the module docstring and docs/reliability.md.
TOLERANCES = {
    "float32": (1e-3, 1e-3),
    "float16": (0.05, 0.01),
    "bfloat16": (0.5, 0.05),
}

CAUSES = (
    "usual causes: a CUDA, cuDNN or driver release or a GPU model the key does not cover, non-deterministic "
    "kernels, or entries written by another tool or version into this cache"
)


def compare_hits(cached: Mapping[str, float], fresh: Mapping[str, float], *, dtype: str, scorer_key: str, uri: str) -> dict[str, Any]:
    """Compare fresh scores with cached ones, pair key by pair key.

    Returns:
        ``pairs`` compared, ``max_difference`` (absolute), ``tolerance`` (absolute,
        relative) and the ``worst`` pair key.

    Raises:
        CacheError: a pair differs beyond the tolerance: naming the cache, the scorer
            key, the largest difference and the usual causes.
    """
    absolute, relative = TOLERANCES[dtype]
    worst, largest, failed = None, 0.0, 0
    for key, score in fresh.items():
        if key not in cached:
            continue
        old = cached[key]
        gap = abs(score - old) if math.isfinite(score) and math.isfinite(old) else math.inf
        if gap > largest or worst is None:
            worst, largest = key, max(largest, gap)
        failed += gap > absolute + relative * abs(old)
    compared = sum(key in cached for key in fresh)
    if failed:
        raise CacheError(
            f"{uri}: the score cache's entries under scorer key {scorer_key} disagree with tonight's scorer: "
            f"{failed} of {compared} cache hits scored again differ by up to {largest:.3g} (pair {worst}; tolerance "
            f"{absolute:g} + {relative:g} x |score| for {dtype}). Nothing was committed. The cached scores were not "
            f"computed as tonight's are; {CAUSES}. Drop that scorer key's entries (dear-rerank cache vacuum "
            f"{uri} --drop-scorer-key {scorer_key}) or give another --cache."
        )
    return {
        "pairs": compared,
        "max_difference": largest,
        "tolerance": {"absolute": absolute, "relative": relative},
        "worst": worst,
    }
