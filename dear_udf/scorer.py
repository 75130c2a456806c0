"""The scoring loop: sorted micro-batches of real tokens, fp32 score head, input order back.

How index-227 pooling is reproduced without computing 228 positions: a pad position
attends only to the real tokens (pad keys are masked) and sits at RoPE position 227, and
no later position can affect it (causal attention). So each pair whose pooled position is
a pad gets one extra token after its real ids: the pad id, attention mask 0 (nobody
attends to it), position id 227. Its output hidden state equals the reference's at index
227. Pairs whose pooled position is a real token (``config.pad_token_id`` equal to the pad
id) are pooled there directly. This needs an attention path that honours an explicit mask
(SDPA or eager), which ``model.load_model`` enforces.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .exceptions import ConfigError
from .layout import Layout, PairEncoder

log = logging.getLogger(__name__)

# Padded tokens per micro-batch on CPU: 128 pairs of MS MARCO length (~12k tokens) fall out
# of cache; 4096 measured ~20% faster per token on the project's machines (bench/RESULTS.md).
CPU_TOKEN_BUDGET = 4096


@dataclass
class ScorerStats:
    """Counters of one scorer, cumulative over calls."""

    pairs: int = 0
    real_tokens: int = 0  # ids of the DeAR layout, without padding
    computed_tokens: int = 0  # positions the model actually ran (padding + pooling token)
    batches: int = 0
    oom_splits: int = 0  # times a micro-batch was halved after a CUDA out-of-memory error
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["computed_per_real_token"] = self.computed_tokens / self.real_tokens if self.real_tokens else None
        return out


def plan_batches(
    ids: Sequence[Sequence[int]],
    pool: Sequence[int],
    *,
    batch_size: int,
    max_tokens: int | None = None,
) -> list[list[int]]:
    """Group row indices into micro-batches of similar length.

    The order depends only on the content of the rows (length, then the ids themselves),
    never on their input order, so a retried partition forms the same batches.
    """
    lengths = [len(x) + (1 if p >= len(x) else 0) for x, p in zip(ids, pool)]
    order = sorted(range(len(ids)), key=lambda i: (lengths[i], ids[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current:
            # Sorted ascending, so this row's length is the batch's padded length.
            too_many = len(current) >= batch_size
            too_long = max_tokens is not None and (len(current) + 1) * lengths[i] > max_tokens
            if too_many or too_long:
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower() and "CUDA" in str(exc)
    )


class Scorer:
    """Scores (query, title, text) rows with a loaded DeAR model.

    Args:
        loaded: a ``model.LoadedModel``.
        layout: the DeAR layout (defaults are DeAR's).
        batch_size: pairs per micro-batch (128 by default).
        max_tokens: cap on padded tokens per micro-batch (batch * length). "auto" (the
            default) is ``CPU_TOKEN_BUDGET`` on CPU, where smaller batches stay in cache
            (bench/RESULTS.md), and no cap on GPU, where batch_size bounds the batch.

    Example:
        >>> scorer = Scorer(load_model(ModelSpec(model="/models/dear-3b")))
        >>> scorer.score(["what is a llama"], [""], ["The llama is a camelid."])
        array([-6.06], dtype=float32)
    """

    def __init__(
        self,
        loaded: Any,
        *,
        layout: Layout | None = None,
        batch_size: int = 128,
        max_tokens: int | None | str = "auto",
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if max_tokens != "auto" and max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
        ):
            raise ConfigError(f"max_tokens must be a positive integer, None or 'auto', got {max_tokens!r}.")
        import torch

        self.loaded = loaded
        self.model = loaded.model
        self.layout = layout or Layout()
        self.batch_size = batch_size
        self.device = torch.device(loaded.device)
        if max_tokens == "auto":
            max_tokens = CPU_TOKEN_BUDGET if self.device.type == "cpu" else None
        self.max_tokens = max_tokens
        self.encoder = PairEncoder(loaded.tokenizer, self.layout, pool_pad_id=loaded.pool_pad_id, pad_id=loaded.pad_id)
        self.backbone = getattr(self.model, self.model.base_model_prefix)
        head = self.model.score
        self._head_weight = head.weight.detach().float()
        self._head_bias = None if head.bias is None else head.bias.detach().float()
        self.stats = ScorerStats()
        # Replaceable for fault injection in tests (e.g. a fake CUDA OOM).
        self.forward: Callable[[Any, Any, Any, Any], Any] = self._forward

    # -- public API -------------------------------------------------------------------

    def score(
        self,
        queries: Sequence[Any],
        titles: Sequence[Any] | None,
        texts: Sequence[Any],
    ) -> np.ndarray:
        """Scores of the rows, float32, in input order. Nulls read as empty strings."""
        ids, pool = self.encoder.encode(queries, titles, texts)
        return self.score_ids(ids, pool)

    def score_stream(self, chunks: Iterable[tuple[Sequence[Any], Sequence[Any] | None, Sequence[Any]]]) -> Iterator[np.ndarray]:
        """Score an iterator of (queries, titles, texts) chunks, yielding scores per chunk.

        On CUDA the next chunk is tokenized in a background thread while the GPU works
        on the current one (fast tokenizers release the GIL); on CPU both would compete
        for the same cores, so chunks are handled one after the other.
        """
        if self.device.type != "cuda":
            for queries, titles, texts in chunks:
                yield self.score(queries, titles, texts)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dear-tokenize") as pool:
            pending = None
            for queries, titles, texts in chunks:
                future = pool.submit(self.encoder.encode, queries, titles, texts)
                if pending is not None:
                    yield self.score_ids(*pending.result())
                pending = future
            if pending is not None:
                yield self.score_ids(*pending.result())

    def score_ids(self, ids: Sequence[Sequence[int]], pool: Sequence[int]) -> np.ndarray:
        """Scores of already-encoded pairs, in input order."""
        import time

        import torch

        start = time.perf_counter()
        out = np.empty(len(ids), dtype=np.float32)
        with torch.inference_mode():
            for rows in plan_batches(ids, pool, batch_size=self.batch_size, max_tokens=self.max_tokens):
                self._score_rows(ids, pool, rows, out)
        self.stats.pairs += len(ids)
        self.stats.real_tokens += sum(len(x) for x in ids)
        self.stats.seconds += time.perf_counter() - start
        return out

    # -- internals --------------------------------------------------------------------

    def _score_rows(self, ids, pool, rows: list[int], out: np.ndarray) -> None:
        try:
            tensors = self._tensors(ids, pool, rows)
            scores = self.forward(*tensors)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not _is_oom(exc):
                raise
            if len(rows) == 1:
                raise
            self.stats.oom_splits += 1
            self._release_cache()
            half = len(rows) // 2
            log.warning("CUDA out of memory on %d pairs; retrying as %d + %d", len(rows), half, len(rows) - half)
            self._score_rows(ids, pool, rows[:half], out)
            self._score_rows(ids, pool, rows[half:], out)
            return
        out[rows] = scores
        self.stats.batches += 1
        self.stats.computed_tokens += int(tensors[0].numel())

    def _tensors(self, ids, pool, rows: list[int]):
        import torch

        last_pos = self.layout.padded_length - 1
        lengths = [len(ids[i]) + (1 if pool[i] >= len(ids[i]) else 0) for i in rows]
        width = max(lengths)
        n = len(rows)
        input_ids = np.full((n, width), self.loaded.pad_id, dtype=np.int64)
        attention = np.zeros((n, width), dtype=np.int64)
        positions = np.zeros((n, width), dtype=np.int64)
        gather = np.empty(n, dtype=np.int64)
        for r, i in enumerate(rows):
            seq = ids[i]
            k = len(seq)
            input_ids[r, :k] = seq
            attention[r, :k] = 1
            positions[r, :width] = np.arange(width)
            if pool[i] >= k:
                # The pooling token: masked as a key, queried at the reference's position.
                positions[r, k] = last_pos
                gather[r] = k
            else:
                gather[r] = pool[i]
        to = dict(device=self.device, non_blocking=self.device.type == "cuda")
        as_tensor = (lambda a: torch.from_numpy(a).pin_memory()) if self.device.type == "cuda" else torch.from_numpy
        return (
            as_tensor(input_ids).to(**to),
            as_tensor(attention).to(**to),
            as_tensor(positions).to(**to),
            as_tensor(gather).to(**to),
        )

    def _forward(self, input_ids, attention_mask, position_ids, gather) -> np.ndarray:
        import torch

        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), gather].float()
        weight = self._head_weight.to(pooled.device)
        bias = None if self._head_bias is None else self._head_bias.to(pooled.device)
        logits = torch.nn.functional.linear(pooled, weight, bias)
        return logits[:, 0].cpu().numpy()

    def _release_cache(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.empty_cache()
