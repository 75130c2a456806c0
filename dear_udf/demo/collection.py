"""The demo's synthetic collection: queries, corpus, qrels and a noisy first stage.

The words come from ``standin.vocabulary()``, the text the stand-in's tokenizer was
trained on, so almost every word is one token. Each query owns a small topic (three
pseudo-words); a query is two or three of them. Its relevant documents repeat its terms
among noise words; its hard negatives share one of its terms (and carry terms of other
topics); the rest of the corpus is noise. The first stage finds all of that but ranks it
with so much noise that its nDCG@10 is mediocre, which leaves a trained reranker a real
effect to show.

``with_bad_rows=True`` adds the rows a production run meets, so the job's accounting has
something to count: two candidates whose documents are missing from the corpus, one
duplicated candidate row, and one query with empty text.

Example:
    >>> collection = make_collection(seed=0)
    >>> collection.candidates.num_rows
    2008
    >>> paths = write_collection(collection, "/tmp/demo", formats="mixed")
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from .. import schema as S
from ..exceptions import ConfigError
from .standin import ENGLISH, vocabulary

Formats = Literal["parquet", "mixed"]

TOPIC_SIZE = 3  # terms per topic; a query uses two or three of them
HARD_NEGATIVES_PER_QUERY = 8
_QUESTION_PREFIXES = ("", "", "what is", "how does", "why did", "where is")

# File names of ``write_collection``, by format; readers are told the format explicitly.
FILE_NAMES: dict[str, dict[str, str]] = {
    "parquet": {
        "queries": "queries.parquet",
        "corpus": "corpus.parquet",
        "candidates": "candidates.parquet",
        "qrels": "qrels.parquet",
    },
    "mixed": {
        "queries": "queries.tsv",  # MS MARCO: id<TAB>text, no header
        "corpus": "corpus.jsonl",  # BEIR: {"_id", "title", "text"}
        "candidates": "candidates.trec",  # TREC run: qid Q0 docid rank score tag
        "qrels": "qrels.txt",  # TREC qrels: qid 0 docid rel
    },
}
RUN_TAG = "demo-first-stage"


@dataclass(frozen=True)
class Collection:
    """Arrow tables with the canonical column names of ``dear_udf.schema``.

    Attributes:
        queries: ``query_id``, ``query``.
        corpus: ``doc_id``, ``title``, ``text``.
        qrels: ``query_id``, ``doc_id``, ``relevance`` (1 for every relevant document).
        candidates: ``query_id``, ``doc_id``, ``first_stage_rank`` (int32, 1-based),
            ``first_stage_score`` (float64, higher is better), ordered by query then rank.
    """

    queries: pa.Table
    corpus: pa.Table
    qrels: pa.Table
    candidates: pa.Table


def _positive(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    return value


def make_collection(
    *,
    n_queries: int = 40,
    docs_per_query_relevant: int = 3,
    n_docs: int = 2000,
    depth: int = 50,
    seed: int = 0,
    with_bad_rows: bool = True,
) -> Collection:
    """Generate a deterministic synthetic collection.

    Args:
        n_queries: queries with relevant documents (``q1`` ... ``qN``).
        docs_per_query_relevant: relevant documents per query, all among its candidates.
        n_docs: corpus size (``d1`` ... ``dN``).
        depth: first-stage candidates per query.
        seed: the same seed gives the same tables.
        with_bad_rows: add two candidates missing from the corpus, one duplicated
            candidate row and one extra query (``q{N+1}``) with empty text.

    Returns:
        A ``Collection``.

    Raises:
        ConfigError: when a size is not a positive integer or the corpus is too small.

    Example:
        >>> c = make_collection(n_queries=5, n_docs=300, depth=20, with_bad_rows=False)
        >>> c.qrels.num_rows
        15
    """
    _check_sizes(n_queries, docs_per_query_relevant, n_docs, depth)
    gen = _Generator(seed, n_queries)
    query_texts, query_terms = gen.queries()
    titles, texts, relevant, hard = gen.documents(query_terms, n_docs=n_docs, relevant_per_query=docs_per_query_relevant)
    ranked = gen.first_stage(relevant, hard, n_docs=n_docs, depth=depth)
    query_ids = [f"q{i + 1}" for i in range(n_queries)]
    extra_queries = _add_bad_candidates(ranked, seed=seed, n_docs=n_docs) if with_bad_rows else []
    all_query_ids = query_ids + [qid for qid, _ in extra_queries]
    rows = [(qid, doc_id, rank, score) for qid, docs in zip(all_query_ids, ranked) for rank, (doc_id, score) in enumerate(docs, start=1)]
    if with_bad_rows:
        # A first stage that emitted one row twice (e.g. from two shards of an index).
        dup = next(i for i, r in enumerate(rows) if r[0] == query_ids[min(2, n_queries - 1)])
        rows.insert(dup + 1, rows[dup])
    numbers = range(1, n_docs + 1)
    return Collection(
        queries=_table(S.QUERIES_SCHEMA, list(zip(all_query_ids, query_texts + [text for _, text in extra_queries]))),
        corpus=_table(S.CORPUS_SCHEMA, [(f"d{d}", titles[d], texts[d]) for d in numbers]),
        qrels=_table(S.QRELS_SCHEMA, [(query_ids[qi], f"d{d}", 1) for qi in range(n_queries) for d in relevant[qi]]),
        candidates=_table(S.CANDIDATES_SCHEMA, rows),
    )


def _table(schema: pa.Schema, rows: list[tuple]) -> pa.Table:
    columns = list(zip(*rows)) if rows else [()] * len(schema)
    return pa.table({f.name: list(c) for f, c in zip(schema, columns)}, schema=schema)


def _check_sizes(n_queries: int, docs_per_query_relevant: int, n_docs: int, depth: int) -> None:
    for name, value in (
        ("n_queries", n_queries),
        ("docs_per_query_relevant", docs_per_query_relevant),
        ("n_docs", n_docs),
        ("depth", depth),
    ):
        _positive(name, value)
    per_query = docs_per_query_relevant + HARD_NEGATIVES_PER_QUERY
    if depth < per_query:
        raise ConfigError(
            f"depth must be at least docs_per_query_relevant + {HARD_NEGATIVES_PER_QUERY} "
            f"= {per_query}, got {depth}."
        )
    if n_docs < n_queries * per_query + depth:
        raise ConfigError(
            f"n_docs must be at least n_queries * (docs_per_query_relevant + "
            f"{HARD_NEGATIVES_PER_QUERY}) + depth = {n_queries * per_query + depth}, got {n_docs}."
        )


class _Generator:
    """The random draws of one collection, in a fixed order (one ``random.Random``)."""

    def __init__(self, seed: int, n_queries: int) -> None:
        self.rng = random.Random(seed)
        english = set(ENGLISH)
        content = [w for w in vocabulary() if w not in english]
        self.fillers = sorted(english)
        if n_queries * TOPIC_SIZE > len(content) // 2:
            raise ConfigError(
                f"n_queries must be at most {len(content) // 2 // TOPIC_SIZE} (the vocabulary "
                f"has {len(content)} topic words), got {n_queries}."
            )
        self.rng.shuffle(content)
        self.topics = [content[i * TOPIC_SIZE : (i + 1) * TOPIC_SIZE] for i in range(n_queries)]
        # Noise never holds a topic term, so a term match means what the generator meant.
        self.noise = content[n_queries * TOPIC_SIZE :]

    def sentence(self, terms: list[str], length: int) -> str:
        rng = self.rng
        words = [rng.choice(self.noise) if rng.random() < 0.7 else rng.choice(self.fillers) for _ in range(length - len(terms))]
        words += terms
        rng.shuffle(words)
        return " ".join(words)

    def queries(self) -> tuple[list[str], list[list[str]]]:
        texts, terms_of = [], []
        for topic in self.topics:
            terms = self.rng.sample(topic, self.rng.choice((2, 3)))
            terms_of.append(terms)
            prefix = self.rng.choice(_QUESTION_PREFIXES)
            texts.append(f"{prefix} {' '.join(terms)}".strip())
        return texts, terms_of

    def documents(self, query_terms: list[list[str]], *, n_docs: int, relevant_per_query: int):
        """Titles and texts by doc number, and each query's relevant and hard-negative documents."""
        rng = self.rng
        # Which document plays which part is a random draw over the ids, so relevant
        # documents are not clustered at the start of the corpus.
        numbers = list(range(1, n_docs + 1))
        rng.shuffle(numbers)
        titles: dict[int, str] = {}
        texts: dict[int, str] = {}
        relevant: list[list[int]] = []
        hard: list[list[int]] = []
        cursor = 0
        for topic, terms in zip(self.topics, query_terms):
            relevant.append(numbers[cursor : cursor + relevant_per_query])
            cursor += relevant_per_query
            for d in relevant[-1]:
                # Every query term at least once, and more topic words on top.
                body = list(terms) + [rng.choice(topic) for _ in range(rng.randint(1, 3))]
                titles[d] = self.sentence([rng.choice(terms)], rng.randint(2, 4))
                texts[d] = self.sentence(body, rng.randint(14, 26))
            hard.append(numbers[cursor : cursor + HARD_NEGATIVES_PER_QUERY])
            cursor += HARD_NEGATIVES_PER_QUERY
            for d in hard[-1]:
                # One term of this query, repeated as often as a relevant document's terms,
                # and terms of other topics: a lexical first stage likes these.
                shared = rng.choice(terms)
                others = [rng.choice(self.topics[rng.randrange(len(self.topics))]) for _ in range(rng.randint(1, 3))]
                body = [shared] * rng.randint(1, 3) + others
                titles[d] = self.sentence([shared] if rng.random() < 0.5 else [], rng.randint(2, 4))
                texts[d] = self.sentence(body, rng.randint(14, 26))
        for d in numbers[cursor:]:
            titles[d] = self.sentence([], rng.randint(2, 4)) if rng.random() < 0.8 else ""
            texts[d] = self.sentence([], rng.randint(10, 30))
        return titles, texts, relevant, hard

    def first_stage(self, relevant: list[list[int]], hard: list[list[int]], *, n_docs: int, depth: int) -> list[list[tuple[str, float]]]:
        """A lexical signal drowned in noise. Relevant and hard-negative documents score
        alike on average (both repeat query terms), so relevant ones land anywhere in the
        top ranks; the rest of the depth is filled from the corpus."""
        rng = self.rng
        ranked = []
        for rel, neg in zip(relevant, hard):
            chosen = set(rel) | set(neg)
            fill = [d for d in rng.sample(range(1, n_docs + 1), depth + len(chosen)) if d not in chosen]
            fill = fill[: depth - len(chosen)]
            scored = [(d, 14.0 + rng.gauss(0.0, 3.0)) for d in rel]
            scored += [(d, 14.5 + rng.gauss(0.0, 3.0)) for d in neg]
            scored += [(d, 9.0 + rng.gauss(0.0, 3.0)) for d in fill]
            ranked.append(_ranked([(f"d{d}", round(s, 4)) for d, s in scored]))
        return ranked


def _add_bad_candidates(ranked: list[list[tuple[str, float]]], *, seed: int, n_docs: int) -> list[tuple[str, str]]:
    """Two candidates missing from the corpus, and an extra query with empty text; returns it."""
    # A separate stream, so the clean part of the collection is the same either way.
    bad = random.Random(f"{seed}-bad-rows")
    n_queries = len(ranked)
    target = ranked[min(1, n_queries - 1)]
    for k, at in enumerate((3, 8), start=1):
        at = min(at, len(target))
        above = target[at - 2][1] if at >= 2 else target[0][1] + 1.0
        below = target[at - 1][1]
        target.insert(at - 1, (f"d{n_docs + k}", round((above + below) / 2.0, 6)))
    empty_docs = bad.sample(range(1, n_docs + 1), 5)
    ranked.append(_ranked([(f"d{d}", round(12.0 - i, 4)) for i, d in enumerate(empty_docs)]))
    return [(f"q{n_queries + 1}", "")]


def _ranked(scored: list[tuple[str, float]]) -> list[tuple[str, float]]:
    # Ties (rare after rounding) go to the smaller doc id, so ranks never depend on
    # the order the generator produced the rows in.
    return sorted(scored, key=lambda item: (-item[1], item[0]))


def write_collection(
    collection: Collection,
    directory: str | Path,
    *,
    formats: Formats = "parquet",
) -> dict[str, Path]:
    """Write the four tables of ``collection`` into ``directory``.

    Args:
        collection: what ``make_collection`` returned.
        directory: created if missing; existing files of the same names are replaced.
        formats: ``"parquet"`` writes Parquet files with the canonical column names;
            ``"mixed"`` writes the formats the readers must handle: queries as MS MARCO
            TSV (``id<TAB>text``), the corpus as BEIR JSON Lines (``_id``, ``title``,
            ``text``), candidates as a TREC run (``qid Q0 docid rank score tag``) and
            qrels as TREC qrels (``qid 0 docid rel``). File names are in ``FILE_NAMES``.

    Returns:
        ``{"queries": path, "corpus": path, "candidates": path, "qrels": path}``.

    Raises:
        ConfigError: when ``formats`` is neither ``"parquet"`` nor ``"mixed"``.

    Example:
        >>> paths = write_collection(make_collection(), "/tmp/demo", formats="mixed")
        >>> paths["candidates"].name
        'candidates.trec'
    """
    if formats not in FILE_NAMES:
        raise ConfigError(f"formats must be 'parquet' or 'mixed', got {formats!r}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / file_name for name, file_name in FILE_NAMES[formats].items()}
    tables = {
        "queries": collection.queries,
        "corpus": collection.corpus,
        "candidates": collection.candidates,
        "qrels": collection.qrels,
    }
    if formats == "parquet":
        import pyarrow.parquet as pq

        for name, table in tables.items():
            pq.write_table(table, paths[name])
        return paths

    _write_mixed(collection, paths)
    return paths


def _lines(path: Path, lines: Any) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        out.writelines(line + "\n" for line in lines)


def _write_mixed(collection: Collection, paths: dict[str, Path]) -> None:
    """MS MARCO TSV queries, BEIR JSON Lines corpus, a TREC run and TREC qrels."""
    rows = {name: getattr(collection, name).to_pylist() for name in ("queries", "corpus", "candidates", "qrels")}
    _lines(paths["queries"], (f"{r[S.QUERY_ID]}\t{r[S.QUERY]}" for r in rows["queries"]))
    _lines(
        paths["corpus"],
        (json.dumps({"_id": r[S.DOC_ID], "title": r[S.TITLE], "text": r[S.TEXT]}, ensure_ascii=False) for r in rows["corpus"]),
    )
    # repr() round-trips the float exactly.
    _lines(
        paths["candidates"],
        (f"{r[S.QUERY_ID]} Q0 {r[S.DOC_ID]} {r[S.FIRST_STAGE_RANK]} {r[S.FIRST_STAGE_SCORE]!r} {RUN_TAG}" for r in rows["candidates"]),
    )
    _lines(paths["qrels"], (f"{r[S.QUERY_ID]} 0 {r[S.DOC_ID]} {r[S.RELEVANCE]}" for r in rows["qrels"]))
