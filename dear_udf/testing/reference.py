"""DeAR's own inference, written out plainly: the definition a DeAR score is checked against.

This follows ``pointwise_reranker/`` of DeAR (GitHub ``DataScienceUIBK/DeAR-Reranking``,
commit c31c739) as it runs in the environment DeAR was trained and evaluated in
(transformers 4.45.2, peft 0.14.0), one pair at a time, and shares no code with the
project's layout or scorer on purpose: a reference that shares the code's assumptions
proves nothing.

- ``modeling.py``: ``AutoModelForSequenceClassification(num_labels=1)``, a LoRA adapter
  applied with ``PeftModel.from_pretrained`` (not merged), and ``config.pad_token_id = 0``
  when the config has none.
- ``data.py``: ``encode("query: " + q, max_length=32)``, ``encode("document: " + title +
  " " + text, max_length=193)``, both without special tokens, then
  ``prepare_for_model([bos] + q, [bos] + d, truncation="only_second",
  padding="max_length", max_length=228)``. In transformers 4.x that call counts
  ``num_special_tokens_to_add(pair=True)`` against ``max_length`` but adds none, and pads
  with the tokenizer's pad token (EOS).
- ``LlamaForSequenceClassification.forward`` of transformers 4.45: ``logits =
  score(hidden_states)``, read at ``(argmax(input_ids == pad_token_id) - 1) % length``
  (``first-pad``); transformers >= 4.48 reads ``argmax(arange * (input_ids !=
  pad_token_id))`` (``last-non-pad``).

``special_tokens="parse"`` tokenizes special-token strings in the text into special ids,
as DeAR's ``encode`` calls do; ``"split"`` tokenizes them as plain text. Nulls (None,
NaN) read as empty strings. Runs on CPU in float32 by default.

Example:
    >>> ref = DearReference.load("/models/dear-3b", pooling="first-pad", special_tokens="parse")
    >>> ref.score(["what is a llama"], [""], ["The llama is a camelid."])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np



def _s(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


class DearReference:
    """One pair at a time, padded to 228, pooled by the named transformers rule.

    Build it with ``DearReference.load(...)`` (DeAR's own loading), or from a model and
    tokenizer already in memory (``model.config.pad_token_id`` decides the pooling).

    Args:
        model: a sequence classifier with ``.model`` (the backbone) and ``.score``.
        tokenizer: its tokenizer; pads with EOS when it has no pad token.
        pooling: ``"first-pad"`` (transformers <= 4.47) or ``"last-non-pad"`` (>= 4.48).
        special_tokens: ``"parse"`` (DeAR's own tokenization) or ``"split"``.
        q_max_len, p_max_len: DeAR's arguments of the same names (``run_pointwise.sh``):
            the query keeps ``q_max_len`` tokens, the document ``p_max_len - 3``, and
            pairs are padded to ``q_max_len + p_max_len``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        pooling: str = "first-pad",
        special_tokens: str = "parse",
        q_max_len: int = 32,
        p_max_len: int = 196,
    ) -> None:
        if pooling not in ("first-pad", "last-non-pad") or special_tokens not in ("split", "parse"):
            raise ValueError(f"unknown pooling {pooling!r} or special_tokens {special_tokens!r}")
        self.model = model.eval()
        # DeAR's modeling.py sets 0 on a config without one (load() does so on the config).
        self.pad_token_id = 0 if model.config.pad_token_id is None else model.config.pad_token_id
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pooling = pooling
        self.split = special_tokens == "split"
        self.q_max_len, self.doc_tokens, self.length = q_max_len, p_max_len - 3, q_max_len + p_max_len

    @classmethod
    def load(cls, model: str | Path | None, adapter: str | Path | None = None, **kwargs: Any) -> DearReference:
        """Load as DeAR's ``modeling.py`` does: float32, ``pad_token_id = 0`` when unset,
        the adapter applied unmerged; ``model`` None takes the adapter's base."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if adapter is not None and model is None:
            model = json.loads((Path(adapter) / "adapter_config.json").read_text())["base_model_name_or_path"]
        base = AutoModelForSequenceClassification.from_pretrained(str(model), num_labels=1, dtype=torch.float32)
        if base.config.pad_token_id is None:
            base.config.pad_token_id = 0
        if adapter is not None:
            from peft import PeftModel

            base = PeftModel.from_pretrained(base, str(adapter)).get_base_model()
        tok_dir = adapter if adapter is not None and (Path(adapter) / "tokenizer.json").exists() else model
        return cls(base, AutoTokenizer.from_pretrained(str(tok_dir)), **kwargs)

    def input_ids(self, query: Any, title: Any, text: Any) -> list[int]:
        """The pair's ids before padding, as DeAR's dataset builds them."""
        tok = self.tokenizer
        q = tok.encode("query: " + _s(query), add_special_tokens=False, max_length=self.q_max_len,
                       truncation=True, split_special_tokens=self.split)
        d = tok.encode("document: " + _s(title) + " " + _s(text), add_special_tokens=False,
                       max_length=self.doc_tokens, truncation=True, split_special_tokens=self.split)
        first, second = [tok.bos_token_id] + q, [tok.bos_token_id] + d
        overflow = len(first) + len(second) + tok.num_special_tokens_to_add(pair=True) - self.length
        if overflow > 0 and len(second) > overflow:
            second = second[:-overflow]
        return first + second

    def score_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Each id sequence padded alone to 228 and scored as the named transformers does."""
        import torch

        length = self.length
        pad_token_id = self.pad_token_id
        device = next(self.model.parameters()).device
        out = np.empty(len(ids), dtype=np.float32)
        with torch.inference_mode():
            for row, seq in enumerate(ids):
                input_ids = torch.full((1, length), self.tokenizer.pad_token_id, dtype=torch.long)
                input_ids[0, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
                mask = (torch.arange(length) < len(seq)).long()[None]
                hidden = self.model.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
                logits = self.model.score(hidden).cpu()
                if self.pooling == "first-pad":
                    index = (torch.eq(input_ids, pad_token_id).int().argmax(-1) - 1) % length
                else:
                    index = (torch.arange(length) * (input_ids != pad_token_id).int()).argmax(-1)
                out[row] = logits[0, index[0], 0].float()
        return out

    def score(self, queries: Sequence[Any], titles: Sequence[Any] | None, texts: Sequence[Any]) -> np.ndarray:
        """Scores of the pairs, float32, in input order."""
        titles = titles if titles is not None else [""] * len(queries)
        return self.score_ids([self.input_ids(q, t, x) for q, t, x in zip(queries, titles, texts)])
