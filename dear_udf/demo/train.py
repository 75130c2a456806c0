"""Train the demo's stand-in on a collection, the way DeAR trains its pointwise models.

DeAR's pointwise rerankers (``pointwise_reranker/modeling.py``) are Llama sequence
classifiers with one relevance logit trained with binary cross-entropy. This module does
the same on the demo's synthetic collection: positives from the qrels, negatives sampled
from the first-stage candidates (hard negatives) and from the corpus, inputs built by
``tokenization.PairEncoder`` and right-padded to the layout's ``padded_length`` with the
pad id, and the logit read at the position the layout's pooling rule names. So the model learns
at exactly the position the scorer pools (index 227 for most pairs of a model whose
``config.pad_token_id`` is 0, as DeAR's).

It exists so ``dear-rerank demo`` can show a real effect in half a minute on a CPU; it is
not a recipe for training production rerankers.

Example:
    >>> from dear_udf.demo.collection import make_collection
    >>> path = build_demo_model("/tmp/demo-model", make_collection(), seconds=30.0)
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import schema as S
from ..exceptions import ConfigError
from ..model import pool_pad_id
from ..tokenization import Layout, PairEncoder

log = logging.getLogger(__name__)


def _default_threads() -> int:
    """Intra-op threads for training: one per usable core, less one, at least one.

    The cores are those this process may run on (a container or a Spark executor is often
    pinned to fewer than ``os.cpu_count()``). One is left free because OpenMP threads wait
    for each other at every operator: when another process (the Spark JVM, a test run)
    holds a core, a thread that is descheduled stalls the rest. Measured on the 2-core CI
    machine under load: a training step took 3 s with two threads and 0.24 s with one.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


class _Examples:
    """Positive and negative (query, title, text) pairs of a collection, grouped for sampling."""

    def __init__(self, collection: Any, rng: random.Random) -> None:
        queries = {
            q: t for q, t in zip(collection.queries[S.QUERY_ID].to_pylist(), collection.queries[S.QUERY].to_pylist())
        }
        corpus = collection.corpus
        self.docs: dict[str, tuple[str, str]] = {
            d: (title or "", text or "")
            for d, title, text in zip(
                corpus[S.DOC_ID].to_pylist(), corpus[S.TITLE].to_pylist(), corpus[S.TEXT].to_pylist()
            )
        }
        self.doc_ids = sorted(self.docs)
        relevant: dict[str, set[str]] = {}
        for q, d, rel in zip(
            collection.qrels[S.QUERY_ID].to_pylist(),
            collection.qrels[S.DOC_ID].to_pylist(),
            collection.qrels[S.RELEVANCE].to_pylist(),
        ):
            if rel is not None and rel > 0:
                relevant.setdefault(q, set()).add(d)
        candidates: dict[str, set[str]] = {}
        for q, d in zip(collection.candidates[S.QUERY_ID].to_pylist(), collection.candidates[S.DOC_ID].to_pylist()):
            candidates.setdefault(q, set()).add(d)
        # Bad rows teach nothing: a query without text, a document not in the corpus.
        usable = sorted(q for q in relevant if (queries.get(q) or "").strip())
        self.queries = {q: queries[q] for q in usable}
        self.relevant = {q: relevant[q] for q in usable}
        self.positives = [(q, d) for q in usable for d in sorted(relevant[q]) if d in self.docs]
        self.hard = {
            q: sorted(d for d in candidates.get(q, ()) if d in self.docs and d not in relevant[q]) for q in usable
        }
        self.rng = rng
        if not self.positives:
            raise ConfigError(
                "the collection has no usable positive pairs (qrels with relevance > 0 whose "
                "query has text and whose document is in the corpus)."
            )
        if any(len(self.relevant[q]) >= len(self.docs) for q, _ in self.positives):
            raise ConfigError("the corpus must hold documents that are not relevant, to sample negatives from.")

    def _negative(self, q: str) -> str:
        if self.hard[q] and self.rng.random() < 2 / 3:
            return self.rng.choice(self.hard[q])
        while True:
            d = self.rng.choice(self.doc_ids)
            if d not in self.relevant[q]:
                return d

    def sample(self, batch_size: int) -> tuple[list[str], list[str], list[str], list[float]]:
        """A batch of groups: one positive and three negatives of its query (two of them hard)."""
        rng = self.rng
        pairs: list[tuple[str, str, float]] = []
        # Negatives of the positive's own query: the model must tell documents apart for
        # one query (what reranking needs), not learn which queries have relevant documents.
        while len(pairs) < batch_size:
            q, d = rng.choice(self.positives)
            pairs.append((q, d, 1.0))
            for _ in range(3):
                pairs.append((q, self._negative(q), 0.0))
        pairs = pairs[:batch_size]
        rng.shuffle(pairs)
        return (
            [self.queries[q] for q, _, _ in pairs],
            [self.docs[d][0] for _, d, _ in pairs],
            [self.docs[d][1] for _, d, _ in pairs],
            [label for _, _, label in pairs],
        )


def padded_batch(ids: list[list[int]], *, pad_id: int, width: int) -> tuple[Any, Any]:
    """The reference input of DeAR's training: ids right-padded to ``width`` with ``pad_id``.

    Pads are masked; the logit is read at the position the layout's pooling rule names
    (``tokenization.PairEncoder.pool_index``, index ``width - 1``, a pad, for most DeAR pairs),
    the position the scorer reproduces.

    Returns:
        ``(input_ids, attention_mask)``, int64 tensors of shape ``(len(ids), width)``.
    """
    import torch

    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        if len(seq) > width:
            raise ConfigError(f"a pair has {len(seq)} ids, more than the padded width {width}.")
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, : len(seq)] = 1
    return input_ids, attention


def train_reranker(
    model_dir: str | Path,
    collection: Any,
    *,
    seconds: float = 30.0,
    steps: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    out_dir: str | Path | None = None,
    layout: Layout | None = None,
    threads: int | None = None,
) -> Path:
    """Fine-tune a DeAR-shaped sequence classifier on ``collection`` with BCE, on the CPU.

    Args:
        model_dir: a model directory (safetensors + tokenizer), e.g. from
            ``standin.build_standin``.
        collection: a ``collection.Collection`` (queries, corpus, qrels, candidates).
        seconds: wall-time budget of the training loop (loading and saving not counted).
        steps: train exactly this many steps instead, ignoring ``seconds`` (reproducible).
        lr: AdamW learning rate (after a short warm-up).
        batch_size: pairs per step, a quarter of them positive.
        seed: seeds the sampling and torch.
        out_dir: where to save; None overwrites ``model_dir``.
        layout: the DeAR layout; defaults to DeAR's (pads to 228).
        threads: torch intra-op threads while training (restored afterwards); None
            uses the usable cores less one (see ``_default_threads``).

    Returns:
        The directory holding the trained model and its tokenizer.

    Raises:
        ConfigError: on a bad budget, learning rate or batch size, or a collection
            without usable positives.

    Example:
        >>> train_reranker("/tmp/tiny", make_collection(), seconds=20.0, out_dir="/tmp/tiny-trained")
    """
    _check_arguments(seconds=seconds, steps=steps, batch_size=batch_size, lr=lr, threads=threads)
    import torch

    model_dir = Path(model_dir)
    out_dir = Path(out_dir) if out_dir is not None else model_dir
    layout = layout or Layout()
    examples = _Examples(collection, random.Random(seed))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or _default_threads())
    try:
        torch.manual_seed(seed)
        model, tokenizer, pad_id = _load(model_dir)
        encoder = PairEncoder(tokenizer, layout, pool_pad_id=pool_pad_id(model.config), pad_id=pad_id)
        _train(model, encoder, examples, pad_id=pad_id, width=layout.padded_length, lr=lr, batch_size=batch_size, seconds=seconds, steps=steps)
        model.eval()
        _save(model, tokenizer, out_dir)
    finally:
        torch.set_num_threads(previous_threads)
    return out_dir


def _check_arguments(*, seconds: float, steps: int | None, batch_size: int, lr: float, threads: int | None) -> None:
    if steps is None and (not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not seconds > 0):
        raise ConfigError(f"seconds must be a positive number, got {seconds!r}.")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise ConfigError(f"steps must be a positive integer or None, got {steps!r}.")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 2:
        raise ConfigError(f"batch_size must be an integer of at least 2, got {batch_size!r}.")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ConfigError(f"lr must be a positive number, got {lr!r}.")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ConfigError(f"threads must be a positive integer or None, got {threads!r}.")


def _load(model_dir: Path) -> tuple[Any, Any, int]:
    """The model to train, its tokenizer, and the id DeAR pads with."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir),
        num_labels=1,
        dtype=torch.float32,
        use_safetensors=True,
        attn_implementation="sdpa",
        local_files_only=True,
    )
    # DeAR pads with EOS (pad_token = eos_token). The tokenizer object is left as
    # loaded, so the saved tokenizer is the one we were given.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ConfigError(f"{model_dir}: the tokenizer has neither a pad nor an eos token.")
    return model, tokenizer, pad_id


def _train(model: Any, encoder: PairEncoder, examples: _Examples, *, pad_id: int, width: int, lr: float, batch_size: int, seconds: float, steps: int | None) -> None:
    """BCE on sampled pairs until ``steps`` steps, or ``seconds`` of wall time, are done."""
    import torch

    backbone = getattr(model, model.base_model_prefix)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = 20
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    start = time.perf_counter()
    done = 0
    recent: list[float] = []
    while (done < steps) if steps is not None else (time.perf_counter() - start < seconds):
        queries, titles, texts, labels = examples.sample(batch_size)
        pairs = encoder.encode(queries, titles, texts)
        input_ids, attention = padded_batch(pairs.ids, pad_id=pad_id, width=width)
        # Pooled by the layout's rule, not by the installed transformers' own rule.
        hidden = backbone(input_ids=input_ids, attention_mask=attention, use_cache=False).last_hidden_state
        logits = model.score(hidden[torch.arange(len(pairs.pool)), torch.tensor(pairs.pool)])[:, 0]
        loss = loss_fn(logits, torch.tensor(labels, dtype=torch.float32))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        done += 1
        recent = (recent + [loss.item()])[-20:]
        if done % 50 == 0:
            log.info("step %d  loss %.4f  %.1fs", done, sum(recent) / len(recent), time.perf_counter() - start)
    log.info("trained %d steps (%d pairs) in %.1fs, last loss %.4f", done, done * batch_size, time.perf_counter() - start, sum(recent) / max(1, len(recent)))


def _save(model: Any, tokenizer: Any, out_dir: Path) -> None:
    # Save beside the target and move files in: the weights we loaded may be memory-mapped
    # from out_dir, and truncating a mapped file under a live process can crash it.
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".train-", dir=out_dir.parent))
    try:
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        for path in staging.iterdir():
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_demo_model(
    directory: str | Path,
    collection: Any,
    *,
    seconds: float = 30.0,
    steps: int | None = None,
    seed: int = 0,
) -> Path:
    """Build the stand-in (``standin.build_standin``: index-227 pooling, as DeAR's models)
    in ``directory`` and train it on ``collection``.

    Args:
        directory: where the model is built and the trained weights saved.
        collection: a ``collection.Collection``.
        seconds: training wall-time budget.
        steps: train exactly this many steps instead of for ``seconds``.
        seed: seeds the initial weights and the training.

    Returns:
        ``directory``.

    Example:
        >>> build_demo_model("/tmp/demo-model", make_collection(), seconds=30.0)
    """
    from .standin import build_standin

    path = build_standin(directory, seed=seed)
    return train_reranker(path, collection, seconds=seconds, steps=steps, seed=seed)
