"""The DeAR input layout: text templates, truncation, ids and the pooling position.

DeAR's pointwise rerankers were trained and evaluated (``pointwise_reranker/data.py``,
transformers 4.45.2) on

    [bos] + tok("query: " + q)[:32] + [bos] + tok("document: " + title + " " + text)[:193]

built with ``tokenizer.prepare_for_model(first, second, truncation="only_second",
padding="max_length", max_length=228)``. That call reserves room for the special tokens
the tokenizer's pair template would add (2 for Llama-3) without adding them, so a pair
holds at most 226 ids and the document loses its tail beyond that. The ids are
right-padded to 228 with the tokenizer's pad token (EOS).

The sequence classifier then pools one position, chosen by comparing the padded ids with
``config.pad_token_id`` (0 for DeAR, an ordinary token: ``"!"`` in Llama-3). Two rules
exist, both named here (``POOLING_RULES``):

- ``first-pad`` (transformers <= 4.47, which DeAR was trained and evaluated with): the
  index before the first id equal to ``config.pad_token_id``, modulo the padded length;
  with none, the last index (227, a pad position). A pair holding a bare ``"!"`` is pooled
  just before its first ``"!"``.
- ``last-non-pad`` (transformers >= 4.48): the last index whose id differs from
  ``config.pad_token_id``; for DeAR that is 227, a pad position, for every pair.

This module computes, for each pair, the real ids and the position the reference forward
pass pools; the scorer reproduces that hidden state without computing the padding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, get_args

from .exceptions import ConfigError
from .settings import flag

Pooling = Literal["first-pad", "last-non-pad"]
POOLING_RULES: tuple[str, ...] = get_args(Pooling)
SpecialTokens = Literal["split", "parse"]
SPECIAL_TOKEN_MODES: tuple[str, ...] = get_args(SpecialTokens)


@dataclass(frozen=True)
class Layout:
    """Lengths, templates and rules of the DeAR layout. Defaults are DeAR's.

    Args:
        query_max_tokens: query tokens kept (32).
        doc_max_tokens: document tokens kept before the pair cap (193).
        padded_length: the length DeAR pads every pair to (228); the pair is capped at
            this minus the tokenizer's reserved special tokens.
        query_prefix, doc_prefix: DeAR's templates.
        pooling: ``"first-pad"`` (transformers <= 4.47, DeAR's training and evaluation,
            the default) or ``"last-non-pad"`` (transformers >= 4.48).
        special_tokens: ``"split"`` (default): special-token strings inside user text
            (``"<|end_of_text|>"``) are tokenized as ordinary text, so a document cannot
            inject control tokens. ``"parse"``: they become the special ids, exactly as
            DeAR's own code tokenizes them.
    """

    query_max_tokens: int = 32
    doc_max_tokens: int = 193
    padded_length: int = 228
    query_prefix: str = "query: "
    doc_prefix: str = "document: "
    pooling: Pooling = field(
        default="first-pad",
        metadata=flag(
            "--pooling",
            choices=POOLING_RULES,
            help="pooled position: first-pad = transformers <= 4.47, as DeAR was trained and "
            "evaluated; last-non-pad = transformers >= 4.48",
        ),
    )
    special_tokens: SpecialTokens = field(
        default="split",
        metadata=flag(
            "--special-tokens",
            choices=SPECIAL_TOKEN_MODES,
            help="special-token strings in texts: split = plain text (safe); "
            "parse = special ids, exactly as DeAR's own code",
        ),
    )

    def __post_init__(self) -> None:
        for name in ("query_max_tokens", "doc_max_tokens", "padded_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if self.padded_length < self.query_max_tokens + 3:
            raise ConfigError(
                f"padded_length must be at least query_max_tokens + 3 "
                f"= {self.query_max_tokens + 3}, got {self.padded_length}."
            )
        if self.pooling not in POOLING_RULES:
            raise ConfigError(f"pooling must be one of {POOLING_RULES}, got {self.pooling!r}.")
        if self.special_tokens not in SPECIAL_TOKEN_MODES:
            raise ConfigError(f"special_tokens must be one of {SPECIAL_TOKEN_MODES}, got {self.special_tokens!r}.")

    @property
    def max_ids(self) -> int:
        """Longest id sequence before the pair cap: two bos tokens plus both truncated texts."""
        return self.query_max_tokens + self.doc_max_tokens + 2


class Encoded(NamedTuple):
    """Pairs in the DeAR layout.

    ``ids``: each pair's real ids; ``pool``: the index the reference pools (>= len(ids)
    means a pad position); ``doc_start``: the index of the document's bos. A pair pooled
    at or before ``doc_start`` is scored on its query alone.
    """

    ids: list[list[int]]
    pool: list[int]
    doc_start: list[int]

    @property
    def pooled_early(self) -> list[bool]:
        """Pairs pooled before their last real token (a ``"!"`` under ``first-pad``)."""
        return [p < len(x) - 1 for x, p in zip(self.ids, self.pool)]

    @property
    def pooled_in_query(self) -> list[bool]:
        """Pairs whose score depends on the query alone: every candidate of it ties."""
        return [p <= s for p, s in zip(self.pool, self.doc_start)]

    @property
    def computed_keys(self) -> list[str]:
        """Each pair's ``computed_key``: pairs sharing one get one score from DeAR."""
        return [computed_key(x, p) for x, p in zip(self.ids, self.pool)]


def computed_positions(ids: Sequence[int], pool: int) -> tuple[int, tuple[int, ...]]:
    """What the forward pass of a pair computes: its ids up to the pooled index, and that
    index. Everything after the pooled index is invisible to the score (causal
    attention), so pairs with equal computed positions get one score from DeAR: documents
    that agree up to their first bare ``"!"`` under ``first-pad``, near-duplicates that
    agree up to the pair cap, every candidate of a query pooled inside the query."""
    return pool, tuple(ids[: pool + 1])


COMPUTED_KEY_TAG = b"dear-rerank/computed/v1\n"


def computed_key(ids: Sequence[int], pool: int) -> str:
    """32 hex characters naming ``computed_positions(ids, pool)``: the score cache keeps it
    per entry and the job gives the pairs of a query that share it one score.

    Example:
        >>> computed_key([1, 5, 6], 227) == computed_key([1, 5, 6], 227) != computed_key([1, 5, 7], 227)
        True
    """
    import numpy as np

    head = int(pool).to_bytes(4, "little", signed=True)
    body = np.asarray(ids[: pool + 1], dtype="<i4").tobytes()
    return hashlib.sha256(COMPUTED_KEY_TAG + head + body).hexdigest()[:32]


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


def pool_index(ids: Sequence[int], *, rule: Pooling, padded_length: int, pool_pad_id: int | None, pad_id: int) -> int:
    """Index the sequence classifier pools for ``ids`` right-padded with ``pad_id``.

    ``pool_pad_id`` is the model's ``config.pad_token_id``; None pools the last index,
    as Hugging Face does for a single sequence without one.
    """
    last = padded_length - 1
    if pool_pad_id is None:
        return last
    padded = len(ids) < padded_length
    if rule == "first-pad":
        # (argmax(ids == pad) - 1) % length: the first match, or index 0 when none.
        try:
            first = list(ids).index(pool_pad_id)
        except ValueError:
            first = len(ids) if padded and pad_id == pool_pad_id else 0
        return (first - 1) % padded_length
    # last-non-pad: argmax(arange * (ids != pad)), 0 when every id is the pad.
    if padded and pad_id != pool_pad_id:
        return last
    for i in range(len(ids) - 1, -1, -1):
        if ids[i] != pool_pad_id:
            return i
    return 0


class PairEncoder:
    """Turns (query, title, text) rows into DeAR id sequences and pooling positions.

    Args:
        tokenizer: a Hugging Face fast tokenizer with a ``bos_token_id``.
        layout: lengths, templates and rules.
        pool_pad_id: the model's own ``config.pad_token_id`` (may be None): the id the
            sequence classifier compares the padded ids with to find the pooled index.
        pad_id: the id the reference pads with (the tokenizer's pad token, EOS for DeAR).

    Example:
        >>> enc = PairEncoder(tok, Layout(), pool_pad_id=0, pad_id=tok.pad_token_id)
        >>> ids, pool, doc_start = enc.encode(["what is a llama"], [""], ["A camelid."])
    """

    def __init__(self, tokenizer: Any, layout: Layout, *, pool_pad_id: int | None, pad_id: int):
        if tokenizer.bos_token_id is None:
            raise ConfigError("the tokenizer has no bos token; the DeAR layout needs one.")
        self.tokenizer = tokenizer
        self.layout = layout
        self.bos_id = int(tokenizer.bos_token_id)
        self.pad_id = int(pad_id)
        self.pool_pad_id = None if pool_pad_id is None else int(pool_pad_id)
        # prepare_for_model counts the special tokens the pair template would add against
        # max_length without adding them: the reserve comes from the tokenizer itself.
        self.reserve = int(tokenizer.num_special_tokens_to_add(pair=True))
        self.max_pair_ids = layout.padded_length - self.reserve
        if self.max_pair_ids < layout.query_max_tokens + 3:
            raise ConfigError(
                f"padded_length {layout.padded_length} leaves {self.max_pair_ids} ids after the tokenizer's "
                f"{self.reserve} reserved special tokens; the query alone needs {layout.query_max_tokens + 3}."
            )
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
            split_special_tokens=self.layout.special_tokens == "split",
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]

    def encode(self, queries: Sequence[Any], titles: Sequence[Any] | None, texts: Sequence[Any]) -> Encoded:
        """The ids of each pair, the index the reference pools, and where the document starts."""
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
        # only_second truncation: the document gives up its tail to the pair cap.
        ids = [[self.bos_id, *q, self.bos_id, *d][: self.max_pair_ids] for q, d in zip(q_ids, d_ids)]
        return Encoded(ids, [self.pool_index(seq) for seq in ids], [len(q) + 1 for q in q_ids])

    def pool_index(self, ids: Sequence[int]) -> int:
        """Index the reference pools for ``ids`` under this layout's pooling rule."""
        return pool_index(
            ids,
            rule=self.layout.pooling,
            padded_length=self.layout.padded_length,
            pool_pad_id=self.pool_pad_id,
            pad_id=self.pad_id,
        )
