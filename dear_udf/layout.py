"""The DeAR input layout: text templates, truncation, ids and the pooling position.

DeAR's pointwise rerankers were trained (``pointwise_reranker/data.py``) on

    [bos] + tok("query: " + q)[:32] + [bos] + tok("document: " + title + " " + text)[:193]

right-padded to exactly 228 ids with the tokenizer's pad token (EOS). Hugging Face's
sequence classifier pools the rightmost position whose id differs from
``config.pad_token_id``. DeAR's training code sets that to 0, which is not the pad id
actually used, so the pooled position is index 227, a pad position. This module computes,
for each pair, the real ids and the position the reference forward pass would pool; the
scorer then reproduces that hidden state without computing the padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .exceptions import ConfigError


@dataclass(frozen=True)
class Layout:
    """Lengths and templates of the DeAR layout. Defaults are DeAR's training values."""

    query_max_tokens: int = 32
    doc_max_tokens: int = 193
    padded_length: int = 228
    query_prefix: str = "query: "
    doc_prefix: str = "document: "
    # "split": special-token strings inside user text (e.g. "<|end_of_text|>") are
    # tokenized as ordinary text, so a document cannot inject control tokens.
    # "parse": they become the special ids, as the tokenizer does by default.
    special_tokens_in_text: str = "split"

    def __post_init__(self) -> None:
        for name in ("query_max_tokens", "doc_max_tokens", "padded_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        longest = self.max_ids
        if self.padded_length < longest + 1:
            raise ConfigError(
                f"padded_length must be at least query_max_tokens + doc_max_tokens + 3 "
                f"= {longest + 1}, got {self.padded_length}."
            )
        if self.special_tokens_in_text not in ("split", "parse"):
            raise ConfigError(
                "special_tokens_in_text must be 'split' or 'parse', "
                f"got {self.special_tokens_in_text!r}."
            )

    @property
    def max_ids(self) -> int:
        """Longest id sequence of a pair: two bos tokens plus both truncated texts."""
        return self.query_max_tokens + self.doc_max_tokens + 2


def _text(value: Any) -> str:
    # Null, NaN (pandas' null for object columns) and missing all read as "".
    if value is None:
        return ""
    if isinstance(value, float) and value != value:
        return ""
    return str(value)


def query_text(query: Any, layout: Layout) -> str:
    """The query string DeAR saw in training: ``"query: " + q``."""
    return layout.query_prefix + _text(query)


def doc_text(title: Any, text: Any, layout: Layout) -> str:
    """The document string DeAR saw: ``"document: " + title + " " + text`` (space kept)."""
    return layout.doc_prefix + _text(title) + " " + _text(text)


class PairEncoder:
    """Turns (query, title, text) rows into DeAR id sequences and pooling positions.

    Args:
        tokenizer: a Hugging Face fast tokenizer with a ``bos_token_id``.
        layout: lengths and templates.
        pool_pad_id: the model's own ``config.pad_token_id`` (may be None): the id the
            sequence classifier skips when it looks for the last non-pad token.
        pad_id: the id the reference pads with (the tokenizer's pad token, EOS for DeAR).

    Example:
        >>> enc = PairEncoder(tok, Layout(), pool_pad_id=0, pad_id=tok.pad_token_id)
        >>> ids, pool = enc.encode(["what is a llama"], [""], ["A camelid."])
    """

    def __init__(self, tokenizer: Any, layout: Layout, *, pool_pad_id: int | None, pad_id: int):
        if tokenizer.bos_token_id is None:
            raise ConfigError("the tokenizer has no bos token; the DeAR layout needs one.")
        self.tokenizer = tokenizer
        self.layout = layout
        self.bos_id = int(tokenizer.bos_token_id)
        self.pad_id = int(pad_id)
        self.pool_pad_id = None if pool_pad_id is None else int(pool_pad_id)
        # Cutting a text to this many characters before tokenizing cannot change its
        # first N tokens (no token spans more characters than the longest vocab entry),
        # and keeps megabyte documents from costing megabytes of tokenization.
        longest_token = max((len(t) for t in tokenizer.get_vocab()), default=16)
        self._query_char_cap = layout.query_max_tokens * longest_token + 1024
        self._doc_char_cap = layout.doc_max_tokens * longest_token + 1024

    @property
    def char_caps(self) -> tuple[int, int]:
        """Characters of query and document text beyond which the ids cannot change."""
        return self._query_char_cap, self._doc_char_cap

    def _tokenize(self, texts: list[str], max_tokens: int) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(
            texts,
            add_special_tokens=False,
            truncation=True,
            max_length=max_tokens,
            split_special_tokens=self.layout.special_tokens_in_text == "split",
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]

    def encode(
        self,
        queries: Sequence[Any],
        titles: Sequence[Any] | None,
        texts: Sequence[Any],
    ) -> tuple[list[list[int]], list[int]]:
        """Return the id sequence of each pair and the index the reference would pool."""
        n = len(queries)
        if len(texts) != n or (titles is not None and len(titles) != n):
            raise ConfigError(
                f"queries, titles and texts must have equal lengths, got {n}, "
                f"{None if titles is None else len(titles)} and {len(texts)}."
            )
        layout = self.layout
        q_strings = [query_text(q, layout)[: self._query_char_cap] for q in queries]
        if titles is None:
            titles = [""] * n
        d_strings = [doc_text(t, x, layout)[: self._doc_char_cap] for t, x in zip(titles, texts)]
        q_ids = self._tokenize(q_strings, layout.query_max_tokens)
        d_ids = self._tokenize(d_strings, layout.doc_max_tokens)
        ids = [[self.bos_id, *q, self.bos_id, *d] for q, d in zip(q_ids, d_ids)]
        return ids, [self.pool_index(seq) for seq in ids]

    def pool_index(self, ids: Sequence[int]) -> int:
        """Index Hugging Face pools for ``ids`` right-padded to ``padded_length`` with pad_id.

        That is the rightmost position whose id differs from ``config.pad_token_id``
        (the last index when it is None). An index >= len(ids) is a pad position.
        """
        last = self.layout.padded_length - 1
        if self.pool_pad_id is None or self.pool_pad_id != self.pad_id:
            # Every pad position differs from pool_pad_id, so the last one wins.
            return last
        for i in range(len(ids) - 1, -1, -1):
            if ids[i] != self.pool_pad_id:
                return i
        return 0  # argmax of an all-zero mask
