"""The scoring loop: sorted micro-batches of real tokens, fp32 score head, input order back.

How pooling at a pad position is reproduced without computing the padding: a pad
position attends only to the real tokens (pad keys are masked) and sits at its own RoPE
position, and no later position can affect it (causal attention). So each pair pooled at
a pad position gets one extra token after its real ids: the pad id, attention mask 0
(nobody attends to it), position id = the pooled index (227 for DeAR). Its output hidden
state equals the reference's at that index. A pair pooled at a real position (a ``"!"``
under ``first-pad``, or the last token when ``config.pad_token_id`` is the pad id) is
computed only up to that position: nothing after it can change its score. This needs an
attention path that honours an explicit mask (SDPA or eager), which ``model.load_model``
enforces.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .exceptions import ConfigError
from .tokenization import Encoded, Layout, PairEncoder, computed_positions

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
    pooled_early: int = 0  # pairs pooled before their last real token
    pooled_in_query: int = 0  # pairs scored on their query alone (see layout.Encoded)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["computed_per_real_token"] = self.computed_tokens / self.real_tokens if self.real_tokens else None
        return out


def computed_length(ids: Sequence[int], pool: int) -> int:
    """Positions computed for a pair: up to a real pooled position, or all ids plus the
    pooling token when the pooled position is a pad."""
    return pool + 1 if pool < len(ids) else len(ids) + 1


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
    lengths = [computed_length(x, p) for x, p in zip(ids, pool)]
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
        max_tokens: cap on padded tokens per micro-batch (batch * length). None (the
            default) means the device's budget: ``CPU_TOKEN_BUDGET`` on CPU, where smaller
            batches stay in cache (bench/RESULTS.md), and no cap on GPU, where batch_size
            bounds the batch. This is the one place that default is decided.

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
        max_tokens: int | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
            raise ConfigError(f"max_tokens must be a positive integer or None (the device's budget), got {max_tokens!r}.")
        import torch

        self.loaded = loaded
        self.model = loaded.model
        self.layout = layout or Layout()
        self.batch_size = batch_size
        self.device = torch.device(loaded.device)
        if max_tokens is None and self.device.type == "cpu":
            max_tokens = CPU_TOKEN_BUDGET
        self.max_tokens = max_tokens  # None: no cap (GPU)
        self.encoder = PairEncoder(loaded.tokenizer, self.layout, pool_pad_id=loaded.pool_pad_id, pad_id=loaded.pad_id)
        self.backbone = getattr(self.model, self.model.base_model_prefix)
        head = self.model.score
        self._head_weight = head.weight.detach().float()
        self._head_bias = None if head.bias is None else head.bias.detach().float()
        self.stats = ScorerStats()

    # -- public API -------------------------------------------------------------------

    def score(
        self,
        queries: Sequence[Any],
        titles: Sequence[Any] | None,
        texts: Sequence[Any],
    ) -> np.ndarray:
        """Scores of the rows, float32, in input order. Nulls read as empty strings."""
        return self.score_encoded(self.encoder.encode(queries, titles, texts))

    def score_stream(
        self, chunks: Iterable[tuple[Sequence[Any], Sequence[Any] | None, Sequence[Any]]]
    ) -> Iterator[tuple[Encoded, np.ndarray]]:
        """Score an iterator of (queries, titles, texts) chunks, yielding (pairs, scores) per chunk.

        On CUDA the next chunk is tokenized in a background thread while the GPU works
        on the current one (fast tokenizers release the GIL); on CPU both would compete
        for the same cores, so chunks are handled one after the other.
        """
        if self.device.type != "cuda":
            for queries, titles, texts in chunks:
                encoded = self.encoder.encode(queries, titles, texts)
                yield encoded, self.score_encoded(encoded)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dear-tokenize") as pool:
            pending = None
            for queries, titles, texts in chunks:
                future = pool.submit(self.encoder.encode, queries, titles, texts)
                if pending is not None:
                    encoded = pending.result()
                    yield encoded, self.score_encoded(encoded)
                pending = future
            if pending is not None:
                encoded = pending.result()
                yield encoded, self.score_encoded(encoded)

    def score_encoded(self, encoded: Encoded) -> np.ndarray:
        """Scores of pairs already in the layout (``PairEncoder.encode``), in input order."""
        scores = self.score_ids(encoded.ids, encoded.pool)
        self.stats.pooled_early += sum(encoded.pooled_early)
        self.stats.pooled_in_query += sum(encoded.pooled_in_query)
        return scores

    def score_ids(self, ids: Sequence[Sequence[int]], pool: Sequence[int]) -> np.ndarray:
        """Scores of id sequences pooled at ``pool`` (see ``layout.pool_index``), in input order.

        Pairs whose computed positions are identical (the same ids up to the pooled index:
        repeated pairs, or every candidate of a query pooled inside the query) are computed
        once and share the score, so they tie exactly as they do in the reference.
        """
        import time

        import torch

        start = time.perf_counter()
        slots: dict[tuple, int] = {}
        which: list[int] = []  # row -> index of the first row computing the same positions
        unique: list[int] = []
        for i, key in enumerate(map(computed_positions, ids, pool)):
            if key not in slots:
                slots[key] = len(unique)
                unique.append(i)
            which.append(slots[key])
        u_ids = [ids[i] for i in unique]
        u_pool = [pool[i] for i in unique]
        scores = np.empty(len(unique), dtype=np.float32)
        with torch.inference_mode():
            for rows in plan_batches(u_ids, u_pool, batch_size=self.batch_size, max_tokens=self.max_tokens):
                self._score_rows(u_ids, u_pool, rows, scores)
        self.stats.pairs += len(ids)
        self.stats.real_tokens += sum(len(x) for x in ids)
        self.stats.seconds += time.perf_counter() - start
        return scores[np.asarray(which, dtype=np.int64)] if ids else scores

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

        lengths = [computed_length(ids[i], pool[i]) for i in rows]
        width = max(lengths)
        n = len(rows)
        input_ids = np.full((n, width), self.loaded.pad_id, dtype=np.int64)
        attention = np.zeros((n, width), dtype=np.int64)
        positions = np.tile(np.arange(width, dtype=np.int64), (n, 1))
        gather = np.asarray(lengths, dtype=np.int64) - 1
        for r, i in enumerate(rows):
            seq, p = ids[i], pool[i]
            if p < len(seq):
                input_ids[r, : p + 1] = seq[: p + 1]
                attention[r, : p + 1] = 1
            else:
                # The pooling token: masked as a key, queried at the reference's position.
                input_ids[r, : len(seq)] = seq
                attention[r, : len(seq)] = 1
                positions[r, len(seq)] = p
        to = dict(device=self.device, non_blocking=self.device.type == "cuda")
        as_tensor = (lambda a: torch.from_numpy(a).pin_memory()) if self.device.type == "cuda" else torch.from_numpy
        return (
            as_tensor(input_ids).to(**to),
            as_tensor(attention).to(**to),
            as_tensor(positions).to(**to),
            as_tensor(gather).to(**to),
        )

    def forward(self, input_ids, attention_mask, position_ids, gather) -> np.ndarray:
        """Scores of one micro-batch of ids already on the device."""
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
