"""Plainly written scoring loops the scorer is benchmarked against.

The definition of a DeAR score, which the parity tests compare with, is ``reference.py``.

- ``official_loop``: DeAR's ``inference.py``: padded to 228, batch 64, fp16 autocast on GPU,
  pooled by the layout's rule (``first-pad`` by default, as in DeAR's transformers 4.45).
- ``fast_rerank_loop``: the model cards' ``fast_rerank``: the tokenizer's pair template,
  ``padding=True``, unsorted batches of 128 (its scores depend on batch neighbours).

Each returns float32 scores in input order and the number of positions it computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..tokenization import Layout, PairEncoder, doc_text, query_text


def _padded(encoder: PairEncoder, ids: Sequence[Sequence[int]], length: int):
    import torch

    n = len(ids)
    input_ids = torch.full((n, length), encoder.pad_id, dtype=torch.long)
    attention = torch.zeros((n, length), dtype=torch.long)
    for r, seq in enumerate(ids):
        input_ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[r, : len(seq)] = 1
    return input_ids, attention


def _padded_loop(loaded: Any, queries, titles, texts, *, layout: Layout, batch_size: int, autocast: bool):
    import torch

    encoder = PairEncoder(loaded.tokenizer, layout, pool_pad_id=loaded.pool_pad_id, pad_id=loaded.pad_id)
    pairs = encoder.encode(queries, titles, texts)
    model = loaded.model
    backbone = getattr(model, model.base_model_prefix)
    device = torch.device(loaded.device)
    out = np.empty(len(pairs.ids), dtype=np.float32)
    computed = 0
    with torch.inference_mode():
        for start in range(0, len(pairs.ids), batch_size):
            chunk = pairs.ids[start : start + batch_size]
            pool = torch.tensor(pairs.pool[start : start + batch_size], device=device)
            input_ids, attention = _padded(encoder, chunk, layout.padded_length)
            with torch.autocast(device.type, dtype=torch.float16, enabled=autocast):
                hidden = backbone(input_ids=input_ids.to(device), attention_mask=attention.to(device)).last_hidden_state
                # Read where the layout's rule pools, not where the installed transformers would.
                logits = model.score(hidden[torch.arange(len(chunk), device=device), pool])
            out[start : start + len(chunk)] = logits.float()[:, 0].cpu().numpy()
            computed += input_ids.numel()
    return out, computed


def official_loop(loaded: Any, queries, titles, texts, *, layout: Layout | None = None, batch_size: int = 64):
    """DeAR's evaluation loop: pad to 228, batch 64, fp16 autocast on CUDA (fp32 on CPU)."""
    on_cuda = str(loaded.device).startswith("cuda")
    return _padded_loop(loaded, queries, titles, texts, layout=layout or Layout(), batch_size=batch_size, autocast=on_cuda)


def fast_rerank_loop(loaded: Any, queries, titles, texts, *, layout: Layout | None = None, batch_size: int = 128):
    """The model cards' ``fast_rerank``: pair template, ``padding=True``, unsorted batches."""
    import torch

    layout = layout or Layout()
    device = torch.device(loaded.device)
    tok = loaded.tokenizer
    out = np.empty(len(queries), dtype=np.float32)
    computed = 0
    titles = titles if titles is not None else [""] * len(queries)
    with torch.inference_mode():
        for start in range(0, len(queries), batch_size):
            stop = start + batch_size
            q = [query_text(x, layout) for x in queries[start:stop]]
            d = [doc_text(t, x, layout) for t, x in zip(titles[start:stop], texts[start:stop])]
            enc = tok(q, d, return_tensors="pt", truncation=True, max_length=layout.padded_length, padding=True)
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            logits = loaded.model(**enc).logits
            out[start : start + len(q)] = logits.float()[:, 0].cpu().numpy()
            computed += enc["input_ids"].numel()
    return out, computed
