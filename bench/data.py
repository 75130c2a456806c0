"""Synthetic reranking candidates whose token lengths follow MS MARCO passage ranking.

Real MS MARCO text cannot be fetched here, and the benchmark's speed depends on the
token lengths only (the scorer computes real tokens; the padded loops compute 228 per
pair). So the generator draws a *target length in Llama-3 tokens* per text from
MS MARCO-like statistics and fills it with words of ``dear_udf.testing.vocabulary()``
until the benchmark tokenizer reaches that many tokens:

- queries: 6-10 words (uniform), about 1.3 tokens per word;
- passages: about 60 words on average (MS MARCO v1: 8.8M passages, ~56-60 words):
  97% log-normal words with median 52 and sigma 0.38 (most between 40 and 80 words),
  3% a long tail of 150-350 words, past DeAR's 193-token document cut;
- 1.3 Llama-3 tokens per English word;
- no titles (MS MARCO passages have none; DeAR's template keeps the space).

Lengths are exact under a byte-level BPE tokenizer because words are separated by single
spaces and such a tokenizer never merges across a space, so a text's token count is the
sum of its words' counts (each word counted with its leading space, as it appears after
"query: " / "document:  "). Without a tokenizer, words stand in for 1.3 tokens each.

Example:
    >>> pairs = generate(n_queries=10, docs_per_query=100, seed=0, tokenizer=tok)
    >>> len(pairs), pairs.queries[0]
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from dear_udf.testing import vocabulary

TOKENS_PER_WORD = 1.3
QUERY_WORDS = (6, 10)
PASSAGE_MEDIAN_WORDS = 52.0
PASSAGE_SIGMA = 0.38
TAIL_SHARE = 0.03
TAIL_WORDS = (150, 350)


@dataclass
class Pairs:
    """Candidate pairs, one entry per (query, passage), grouped by query id."""

    query_ids: list[str] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.queries)

    def subset(self, rows: list[int]) -> Pairs:
        """The given rows, in that order."""
        return Pairs(
            [self.query_ids[i] for i in rows],
            [self.doc_ids[i] for i in rows],
            [self.queries[i] for i in rows],
            [self.titles[i] for i in rows],
            [self.texts[i] for i in rows],
        )


class _Filler:
    """Builds texts of a target token count from vocabulary words."""

    def __init__(self, rng: random.Random, tokenizer: Any | None):
        self.rng = rng
        self.words = vocabulary()
        if tokenizer is None:
            self.costs = None
        else:
            encoded = tokenizer([" " + w for w in self.words], add_special_tokens=False)["input_ids"]
            self.costs = [len(ids) for ids in encoded]

    def text(self, target_tokens: int) -> str:
        out: list[str] = []
        if self.costs is None:
            n = max(1, round(target_tokens / TOKENS_PER_WORD))
            return " ".join(self.rng.choice(self.words) for _ in range(n))
        total = 0
        while total < target_tokens:
            i = self.rng.randrange(len(self.words))
            out.append(self.words[i])
            total += self.costs[i]
        return " ".join(out)


def passage_words(rng: random.Random) -> int:
    """Number of words of one MS MARCO-like passage."""
    if rng.random() < TAIL_SHARE:
        return rng.randint(*TAIL_WORDS)
    return max(5, round(math.exp(rng.gauss(math.log(PASSAGE_MEDIAN_WORDS), PASSAGE_SIGMA))))


def generate(
    *,
    n_queries: int,
    docs_per_query: int,
    seed: int = 0,
    tokenizer: Any | None = None,
    first_query: int = 0,
    query_words: tuple[int, int] = QUERY_WORDS,
) -> Pairs:
    """Generate ``n_queries * docs_per_query`` candidate pairs, deterministic in ``seed``.

    Args:
        n_queries: number of distinct queries.
        docs_per_query: candidates per query (BM25 top-100 in DeAR's evaluation).
        seed: random seed; the same seed (and tokenizer) gives the same pairs.
        tokenizer: the benchmark model's tokenizer; texts are filled to token targets
            under it. None fills by word count instead.
        first_query: number of the first query id, so that chunks generated one after
            the other (each with its own seed) have distinct ids; texts do not depend on it.
        query_words: range of words per query (MS MARCO's by default; ``(1, 1)`` gives the
            shortest prefix a pair can have, for the prefix-reuse measurement).

    Returns:
        Pairs grouped by query, queries in order ``q0000, q0001, ...`` (from ``first_query``).
    """
    if n_queries < 1 or docs_per_query < 1:
        raise ValueError(f"n_queries and docs_per_query must be positive, got {n_queries} and {docs_per_query}.")
    rng = random.Random(seed)
    filler = _Filler(rng, tokenizer)
    pairs = Pairs()
    for q in range(first_query, first_query + n_queries):
        query = filler.text(round(rng.randint(*query_words) * TOKENS_PER_WORD))
        for d in range(docs_per_query):
            pairs.query_ids.append(f"q{q:04d}")
            pairs.doc_ids.append(f"q{q:04d}-d{d:03d}")
            pairs.queries.append(query)
            pairs.titles.append("")
            pairs.texts.append(filler.text(round(passage_words(rng) * TOKENS_PER_WORD)))
    return pairs


def job_tables(pairs: Pairs) -> dict[str, Any]:
    """The pairs as the job's three input tables (pyarrow): queries, corpus, candidates.

    First-stage rank is the candidate's position in its query (``q0007-d041`` -> 42).
    """
    import pyarrow as pa

    queries = dict(zip(pairs.query_ids, pairs.queries))
    ranks = [int(d.rsplit("-d", 1)[1]) + 1 for d in pairs.doc_ids]
    return {
        "queries": pa.table({"query_id": list(queries), "query": list(queries.values())}),
        "corpus": pa.table({"doc_id": pairs.doc_ids, "title": pairs.titles, "text": pairs.texts}),
        "candidates": pa.table(
            {
                "query_id": pairs.query_ids,
                "doc_id": pairs.doc_ids,
                "first_stage_rank": pa.array(ranks, pa.int32()),
                "first_stage_score": [100.0 - r for r in ranks],
            }
        ),
    }

def length_summary(ids: list[list[int]]) -> dict[str, float]:
    """Mean, percentiles and maximum of the DeAR id-sequence lengths, for the report."""
    lengths = sorted(len(x) for x in ids)
    n = len(lengths)

    def pct(p: float) -> float:
        return float(lengths[min(n - 1, int(p / 100 * n))])

    return {
        "mean": sum(lengths) / n,
        "p10": pct(10),
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "max": float(lengths[-1]),
        "share_at_227": sum(1 for x in lengths if x == 227) / n,
    }
