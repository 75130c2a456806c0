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

How a query is computed once for all its candidates: every pair of a query begins with
the same ids, ``[bos] q [bos]`` (and usually the document template's first tokens), and a
causal model computes those positions identically whatever follows. So the rows of one
call that share a query (``Encoded.doc_start``) share their longest common prefix: it is
computed once, its key/value states are kept (``transformers.DynamicCache``), and each
pair computes only its own positions (its suffix) at RoPE positions offset by the prefix
length, attending to the prefix's states through the attention mask. A micro-batch may
mix rows of several queries and rows without a prefix: each row gathers its prefix's
states into a cache of the batch's longest prefix, and masks the positions beyond its
own. The pooling token and the pooling at a real position work as above, counted from the
prefix's end; a pair pooled inside the query has no suffix and is computed whole (its
query's other such pairs share its forward pass and tie, see ``Scorer.score_ids``).
Reuse needs at least ``PREFIX_MIN_PAIRS`` distinct pairs of a query in the call (one pair
saves nothing; bench/RESULTS.md "Prefix reuse"). A prefix's states take ``layers x 2 x
kv_heads x head_dim`` numbers per id (112 KiB in bf16 for Llama-3.2-3B, about 2 MiB per
MS MARCO query); at most ``PREFIX_STATE_BYTES`` of them are held at once, more prefixes
in turns. A micro-batch with prefixes holds its rows' states (prefix and own, every
layer) until its forward pass ends; on a small GPU the out-of-memory halving absorbs it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import JobConfig
from .exceptions import ConfigError
from .settings import default_of
from .tokenization import Encoded, Layout, PairEncoder, computed_positions

log = logging.getLogger(__name__)

# Padded tokens per micro-batch on CPU: 128 pairs of MS MARCO length (~12k tokens) fall out
# of cache; 4096 measured ~20% faster per token on the project's machines (bench/RESULTS.md).
CPU_TOKEN_BUDGET = 4096

# A query's prefix is computed once for its pairs when at least this many of them (with
# distinct computed ids) go on past it in one call. One pair saves no position and pays a
# second pass: 19-29% more CPU time per query; from two, the positions fall by the query's
# share (bench/RESULTS.md, "Prefix reuse").
PREFIX_MIN_PAIRS = 2
# The most memory the prefixes' key/value states of one call may take at once; more
# prefixes are held in turns (a chunk each). 1 GiB holds ~500 MS MARCO queries of
# Llama-3.2-3B in bf16 (112 KiB per position); a chunk's batches are planned on their own.
PREFIX_STATE_BYTES = 1 << 30


@dataclass
class ScorerStats:
    """Counters of one scorer, cumulative over calls."""

    pairs: int = 0
    real_tokens: int = 0  # ids of the DeAR layout, without padding
    computed_tokens: int = 0  # positions the model actually ran (padding + pooling token; a shared prefix once)
    batches: int = 0
    oom_splits: int = 0  # times a micro-batch was halved after a CUDA out-of-memory error
    pooled_early: int = 0  # pairs pooled before their last real token
    pooled_in_query: int = 0  # pairs scored on their query alone (see tokenization.Encoded)
    shared_prefixes: int = 0  # prefixes computed once for the pairs of a query (their positions are in computed_tokens)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["computed_per_real_token"] = self.computed_tokens / self.real_tokens if self.real_tokens else None
        return out


def computed_length(ids: Sequence[int], pool: int) -> int:
    """Positions computed for a pair: up to a real pooled position, or all ids plus the
    pooling token when the pooled position is a pad."""
    return pool + 1 if pool < len(ids) else len(ids) + 1


def shared_prefix_lengths(
    ids: Sequence[Sequence[int]],
    pool: Sequence[int],
    query_lengths: Sequence[int],
    *,
    min_pairs: int,
) -> list[int]:
    """How many leading ids of each row come from a prefix computed once (0: none).

    Rows whose first ``query_lengths[i]`` ids are equal (one query's pairs: ``[bos] q
    [bos]``, ``Encoded.doc_start + 1`` ids) and that compute at least one position past
    them form a group. A group of at least ``min_pairs`` rows shares its longest common
    prefix, cut so that every row keeps its last computed position (the pooled one) to
    itself. Rows pooled inside their query join no group. The rows are expected to be
    distinct (``Scorer.score_ids`` deduplicates them first).

    Example:
        >>> ids = [[1, 7, 1, 5, 6], [1, 7, 1, 5, 8], [1, 9, 1, 4]]
        >>> shared_prefix_lengths(ids, [227, 227, 227], [3, 3, 3], min_pairs=2)
        [4, 4, 0]
    """
    groups: dict[tuple, list[int]] = {}
    for i, (seq, p, q) in enumerate(zip(ids, pool, query_lengths)):
        if 0 < q < computed_length(seq, p):
            groups.setdefault(tuple(seq[:q]), []).append(i)
    shared = [0] * len(ids)
    for rows in groups.values():
        if len(rows) < min_pairs:
            continue
        first = ids[rows[0]]
        n = min(computed_length(ids[i], pool[i]) - 1 for i in rows)
        for i in rows[1:]:
            seq, k = ids[i], query_lengths[i]  # the query part is equal by construction
            while k < n and seq[k] == first[k]:
                k += 1
            n = k
        for i in rows:
            shared[i] = n
    return shared


def plan_batches(
    ids: Sequence[Sequence[int]],
    pool: Sequence[int],
    *,
    batch_size: int,
    max_tokens: int | None = None,
    skip: Sequence[int] | None = None,
) -> list[list[int]]:
    """Group row indices into micro-batches of similar length.

    A row's length is the positions it computes (``computed_length``), less its first
    ``skip[i]`` ids when they come from a shared prefix. The order depends only on the
    content of the rows (length, then the ids themselves), never on their input order,
    so a retried partition forms the same batches.
    """
    lengths = [computed_length(x, p) for x, p in zip(ids, pool)]
    if skip is not None:
        lengths = [n - s for n, s in zip(lengths, skip)]
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


def _prefix_chunks(
    ids: Sequence[Sequence[int]], shared: Sequence[int], max_ids: int
) -> list[tuple[list[int], list[tuple]]]:
    """Rows and the prefixes they need, in chunks whose prefix states fit ``max_ids``
    positions (chunk's prefixes x its longest prefix). Prefixes go by length, then ids,
    so a chunk's store is padded little; rows without a prefix go with the first chunk.
    One chunk holds everything in the usual case: the split is for calls with thousands
    of queries on a large model."""
    prefixes = sorted({tuple(ids[i][:s]) for i, s in enumerate(shared) if s}, key=lambda p: (len(p), p))
    parts: list[list[tuple]] = [[]]
    for prefix in prefixes:
        if parts[-1] and (len(parts[-1]) + 1) * len(prefix) > max_ids:
            parts.append([])
        parts[-1].append(prefix)
    if len(parts) == 1:
        return [(list(range(len(ids))), parts[0])]
    where = {prefix: c for c, part in enumerate(parts) for prefix in part}
    rows: list[list[int]] = [[] for _ in parts]
    for i, s in enumerate(shared):
        rows[where[tuple(ids[i][:s])] if s else 0].append(i)
    return list(zip(rows, parts))


def state_bytes_per_id(config: Any, element_size: int) -> int:
    """Bytes of the key/value states one position leaves in every layer of the model."""
    heads = getattr(config, "num_attention_heads", None) or 1
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return int(config.num_hidden_layers) * 2 * int(kv_heads) * int(head_dim) * element_size


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower() and "CUDA" in str(exc)
    )


class _AtOnce:
    """An executor that runs each call when it is submitted (``Scorer.score_stream`` on CPU)."""

    def submit(self, fn: Any, *args: Any) -> Any:
        from concurrent.futures import Future

        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            future.set_exception(exc)
        return future

    def __enter__(self) -> _AtOnce:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


class Scorer:
    """Scores (query, title, text) rows with a loaded DeAR model.

    Args:
        loaded: a ``model.LoadedModel``.
        layout: the DeAR layout (defaults are DeAR's).
        batch_size: pairs per micro-batch; by default the job's (``JobConfig.batch_size``).
        max_tokens: cap on padded tokens per micro-batch (batch * length). None (the
            default) means the device's budget: ``CPU_TOKEN_BUDGET`` on CPU, where smaller
            batches stay in cache (bench/RESULTS.md), and no cap on GPU, where batch_size
            bounds the batch. This is the one place that default is decided.
        prefix_min_pairs: a query's prefix is computed once for its pairs when at least
            this many of them (distinct computed ids) are in one call (module docstring);
            None computes every pair on its own.

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
        batch_size: int = default_of(JobConfig, "batch_size"),
        max_tokens: int | None = None,
        prefix_min_pairs: int | None = PREFIX_MIN_PAIRS,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
            raise ConfigError(f"max_tokens must be a positive integer or None (the device's budget), got {max_tokens!r}.")
        if prefix_min_pairs is not None and (
            not isinstance(prefix_min_pairs, int) or isinstance(prefix_min_pairs, bool) or prefix_min_pairs < 1
        ):
            raise ConfigError(f"prefix_min_pairs must be a positive integer or None (no prefix reuse), got {prefix_min_pairs!r}.")
        import torch

        self.loaded = loaded
        self.model = loaded.model
        self.layout = layout or Layout()
        self.batch_size = batch_size
        self.device = torch.device(loaded.device)
        if max_tokens is None and self.device.type == "cpu":
            max_tokens = CPU_TOKEN_BUDGET
        self.max_tokens = max_tokens  # None: no cap (GPU)
        self.prefix_min_pairs = prefix_min_pairs
        element_size = next(self.model.parameters()).element_size()
        self._prefix_ids_held = max(1, PREFIX_STATE_BYTES // state_bytes_per_id(self.model.config, element_size))
        self.encoder = PairEncoder(loaded.tokenizer, self.layout, pool_pad_id=loaded.pool_pad_id, pad_id=loaded.pad_id)
        self.backbone = getattr(self.model, self.model.base_model_prefix)
        self._activate = getattr(loaded, "activate", None)
        if self._activate is not None:  # the head below is this adapter's
            self._activate()
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

    def score_stream(self, chunks: Iterable[tuple[Any, Sequence[Any], Sequence[Any] | None, Sequence[Any]]]) -> Iterator[tuple[Any, Encoded, np.ndarray]]:
        """Score an iterator of ``(tag, queries, titles, texts)`` chunks, yielding
        ``(tag, pairs, scores)`` per chunk, in order: the tag (the caller's own record of the
        chunk, e.g. its Arrow batch) comes back with the chunk's scores.

        On CUDA the next chunk is tokenized in a background thread while the GPU works on
        the current one (fast tokenizers release the GIL); on CPU both would compete for the
        same cores, so each chunk is tokenized when it is taken.
        """
        import itertools
        from concurrent.futures import ThreadPoolExecutor

        ahead = self.device.type == "cuda"
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dear-tokenize") if ahead else _AtOnce() as pool:
            pending = None
            for chunk in itertools.chain(chunks, [None]):
                taken = None if chunk is None else (chunk[0], pool.submit(self.encoder.encode, *chunk[1:]))
                if pending is not None:
                    encoded = pending[1].result()
                    yield pending[0], encoded, self.score_encoded(encoded)
                pending = taken

    def score_encoded(self, encoded: Encoded) -> np.ndarray:
        """Scores of pairs already in the layout (``PairEncoder.encode``), in input order.

        The pairs of one query share the computation of their common prefix."""
        scores = self.score_ids(encoded.ids, encoded.pool, query_lengths=[s + 1 for s in encoded.doc_start])
        self.stats.pooled_early += sum(encoded.pooled_early)
        self.stats.pooled_in_query += sum(encoded.pooled_in_query)
        return scores

    def score_ids(
        self,
        ids: Sequence[Sequence[int]],
        pool: Sequence[int],
        *,
        query_lengths: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Scores of id sequences pooled at ``pool`` (see ``tokenization.pool_index``), in input order.

        Pairs whose computed positions are identical (the same ids up to the pooled index:
        repeated pairs, or every candidate of a query pooled inside the query) are computed
        once and share the score, so they tie exactly as they do in the reference.

        ``query_lengths``: the ids of each row's query part, ``[bos] q [bos]``
        (``Encoded.doc_start + 1``). Rows of one query then compute their common prefix
        once (``shared_prefix_lengths``, module docstring); None computes each row whole.
        """
        import time

        import torch

        start = time.perf_counter()
        if self._activate is not None:  # one of several adapters sharing the base's weights
            self._activate()
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
        if query_lengths is None or self.prefix_min_pairs is None:
            shared = [0] * len(unique)
        else:
            u_query = [query_lengths[i] for i in unique]
            shared = shared_prefix_lengths(u_ids, u_pool, u_query, min_pairs=self.prefix_min_pairs)
        scores = np.empty(len(unique), dtype=np.float32)
        with torch.inference_mode():
            for rows, prefixes in _prefix_chunks(u_ids, shared, self._prefix_ids_held):
                self._score_chunk(u_ids, u_pool, shared, rows, prefixes, scores)
        self.stats.pairs += len(ids)
        self.stats.real_tokens += sum(len(x) for x in ids)
        self.stats.seconds += time.perf_counter() - start
        return scores[np.asarray(which, dtype=np.int64)] if ids else scores

    def forward(self, input_ids, attention_mask, position_ids, gather, past=None) -> np.ndarray:
        """Scores of one micro-batch of ids already on the device.

        ``past``: None, or per layer the (keys, values) of each row's prefix, which
        ``attention_mask`` covers before the ids (``position_ids`` continue after it).
        """
        import torch

        cache = None
        if past is not None:
            from transformers import DynamicCache

            cache = DynamicCache()
            for layer, (keys, values) in enumerate(past):
                cache.update(keys, values, layer)
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=cache is not None,
        ).last_hidden_state
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), gather].float()
        weight = self._head_weight.to(pooled.device)
        bias = None if self._head_bias is None else self._head_bias.to(pooled.device)
        logits = torch.nn.functional.linear(pooled, weight, bias)
        return logits[:, 0].cpu().numpy()

    def prefix_forward(self, input_ids, attention_mask) -> list[tuple[Any, Any]]:
        """Per layer, the (keys, values) of a micro-batch of right-padded prefixes on the device."""
        import torch
        from transformers import DynamicCache

        cache = DynamicCache()
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        # A DynamicCache iterates its layers' (keys, values[, ...]) in transformers 4.x and 5.x.
        return [(layer[0], layer[1]) for layer in cache]

    # -- internals --------------------------------------------------------------------

    def _score_chunk(self, ids, pool, shared, rows: list[int], prefixes: list[tuple], out: np.ndarray) -> None:
        """Score ``rows`` (indices into ids), computing ``prefixes`` once for those sharing one."""
        states = self._prefix_states(prefixes) if prefixes else None
        slot = {prefix: k for k, prefix in enumerate(prefixes)}
        slots = {i: slot[tuple(ids[i][: shared[i]])] for i in rows if shared[i]}
        plan = plan_batches(
            [ids[i] for i in rows],
            [pool[i] for i in rows],
            batch_size=self.batch_size,
            max_tokens=self.max_tokens,
            skip=[shared[i] for i in rows],
        )

        def run(batch: list[int]) -> None:
            tensors = self._tensors(ids, pool, shared, slots, states, batch)
            scores = self.forward(*tensors)
            out[batch] = scores
            self.stats.batches += 1
            self.stats.computed_tokens += int(tensors[0].numel())

        for local in plan:
            self._halving([rows[j] for j in local], run)

    def _prefix_states(self, prefixes: list[tuple]) -> list[tuple[Any, Any]]:
        """Per layer, (keys, values) of every prefix: ``[prefixes, kv_heads, longest, head_dim]``,
        in the order of ``prefixes``; positions past a prefix's end are never attended to."""
        import torch

        pool = [len(p) - 1 for p in prefixes]  # computed up to its last id
        width = max(len(p) for p in prefixes)
        store: list[tuple[Any, Any]] = []

        def run(rows: list[int]) -> None:
            n, w = len(rows), max(len(prefixes[i]) for i in rows)
            input_ids = np.full((n, w), self.loaded.pad_id, dtype=np.int64)
            attention = np.zeros((n, w), dtype=np.int64)
            for r, i in enumerate(rows):
                input_ids[r, : len(prefixes[i])] = prefixes[i]
                attention[r, : len(prefixes[i])] = 1
            layers = self.prefix_forward(*(self._to_device(a) for a in (input_ids, attention)))
            if not store:
                # Zeros, not empty memory: a masked key must still be a finite number.
                store.extend(
                    (k.new_zeros((len(prefixes), k.shape[1], width, k.shape[3])), v.new_zeros((len(prefixes), v.shape[1], width, v.shape[3])))
                    for k, v in layers
                )
            index = torch.as_tensor(rows, dtype=torch.long, device=self.device)
            for (keys, values), (k, v) in zip(store, layers):
                keys[index, :, :w] = k
                values[index, :, :w] = v
            self.stats.computed_tokens += n * w

        for rows in plan_batches(prefixes, pool, batch_size=self.batch_size, max_tokens=self.max_tokens):
            self._halving(rows, run)
        self.stats.shared_prefixes += len(prefixes)
        return store

    def _halving(self, rows: list[int], run) -> None:
        """``run(rows)``; after a CUDA out-of-memory error, ``run`` on each half instead."""
        try:
            run(rows)
            return
        except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not _is_oom(exc) or len(rows) == 1:
                raise
        # Outside the except block, so the failed attempt's tensors are freed before the retry.
        self.stats.oom_splits += 1
        self._release_cache()
        half = len(rows) // 2
        log.warning("CUDA out of memory on %d rows; retrying as %d + %d", len(rows), half, len(rows) - half)
        self._halving(rows[:half], run)
        self._halving(rows[half:], run)

    def _to_device(self, array: np.ndarray):
        import torch

        if self.device.type == "cuda":
            return torch.from_numpy(array).pin_memory().to(device=self.device, non_blocking=True)
        return torch.from_numpy(array).to(device=self.device)

    def _tensors(self, ids, pool, shared, slots: dict[int, int], states, rows: list[int]):
        import torch

        lengths = [computed_length(ids[i], pool[i]) - shared[i] for i in rows]
        width = max(lengths)
        past = max(shared[i] for i in rows)  # the batch's longest prefix
        n = len(rows)
        input_ids = np.full((n, width), self.loaded.pad_id, dtype=np.int64)
        attention = np.zeros((n, past + width), dtype=np.int64)
        positions = np.tile(np.arange(width, dtype=np.int64), (n, 1))
        gather = np.asarray(lengths, dtype=np.int64) - 1
        for r, i in enumerate(rows):
            seq, p, s = ids[i], pool[i], shared[i]
            end = min(p + 1, len(seq))  # real ids computed: up to the pooled one, or all
            input_ids[r, : end - s] = seq[s:end]
            attention[r, :s] = 1  # its own prefix; past it, another row's states, masked
            attention[r, past : past + end - s] = 1
            positions[r] += s
            if p >= len(seq):
                # The pooling token: masked as a key, queried at the reference's position.
                positions[r, end - s] = p
        states_of_rows = None
        if past:
            index = torch.as_tensor([slots.get(i, 0) for i in rows], dtype=torch.long, device=self.device)
            states_of_rows = [(k[:, :, :past].index_select(0, index), v[:, :, :past].index_select(0, index)) for k, v in states]
        return (*(self._to_device(a) for a in (input_ids, attention, positions, gather)), states_of_rows)

    def _release_cache(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.empty_cache()
