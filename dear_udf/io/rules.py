"""Parsing rules of the input formats, shared by the Spark reader and the reader without Spark.

No heavy imports, so a Spark driver or UDF can use it as is. Each ``parse_*`` function takes
one decoded line and returns a tuple of fields, or raises ``LineError`` with the reason; the
caller adds the file name and the 1-based line number. ``resolve_columns`` picks the source
column of each canonical column the same way for every columnar format.

Rules both readers apply (``spark/read.py`` follows them where Spark splits and decodes the
lines itself; ``tests/test_spark_read.py`` runs Spark on each):

- Lines end at ``\\n`` only (one trailing ``\\r`` is dropped). Spark's text reader would also
  split at a bare ``\\r`` (a phantom record from a CR inside a text), so the Spark readers ask
  it for ``lineSep="\\n"`` and drop the CR themselves (``spark/read.py: _lines``);
  ``str.splitlines`` is not used because it also splits at form feeds and U+2028.
- Bytes that are not valid UTF-8 become U+FFFD (``errors="replace"``). Spark's text reader
  does the same: checked with pyspark 4.2.0 ``spark.read.text`` on a lone Latin-1 byte and
  on truncated multi-byte sequences, which gave identical strings.
- A line that is empty or holds only spaces carries no record and is skipped (Spark:
  ``trim(value) != ''``). Every other line must parse, or the read fails.
- TREC fields are separated by runs of ASCII whitespace (Java's ``\\s+``), after trimming
  spaces; TSV fields by a tab, the text being everything after the first tab.
- Ids are strings with surrounding spaces removed (Spark: ``trim(cast(id as string))``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .. import schema as S

# TREC run: "qid Q0 docid rank score tag" (trec_eval's layout).
TREC_RUN_FIELDS = ("query_id", "q0", "doc_id", "rank", "score", "tag")
# TREC qrels: "qid iteration docid relevance".
TREC_QRELS_FIELDS = ("query_id", "iteration", "doc_id", "relevance")
# Java's \s, which Spark's split(value, '\\s+') uses; Python's str.split() would also split
# at non-breaking spaces and other Unicode spaces, and disagree with Spark.
TREC_SEPARATOR = re.compile(r"[ \t\n\x0b\f\r]+")
# BEIR qrels TSV: tab-separated, with this header line first.
BEIR_QRELS_HEADER = ("query-id", "corpus-id", "score")
# MS MARCO TSV, no header: "id<TAB>text" for queries and passages.
TSV_SEPARATOR = "\t"

# A BEIR dataset folder (``beir.datasets.data_loader.GenericDataLoader``'s layout).
BEIR_CORPUS = "corpus.jsonl"
BEIR_QUERIES = "queries.jsonl"
BEIR_QRELS = "qrels/test.tsv"
BEIR_FILES = {"queries": BEIR_QUERIES, "corpus": BEIR_CORPUS, "qrels": BEIR_QRELS}

DELTA_LOG_DIR = "_delta_log"

# Columns of each input, after renaming; candidates also need a rank or a score.
REQUIRED = {
    "queries": (S.QUERY_ID, S.QUERY),
    "corpus": (S.DOC_ID, S.TEXT),
    "candidates": (S.QUERY_ID, S.DOC_ID),
    "qrels": (S.QUERY_ID, S.DOC_ID, S.RELEVANCE),
}
OPTIONAL = {
    "queries": (),
    "corpus": (S.TITLE,),
    "candidates": (S.FIRST_STAGE_RANK, S.FIRST_STAGE_SCORE),
    "qrels": (),
}
# Names other tools use (BEIR's "_id", Pyserini's "contents", ...), taken in this order when
# the canonical column is absent and no mapping names it.
COLUMN_ALIASES = {
    S.QUERY_ID: ("qid", "query-id", "_id", "id"),
    S.DOC_ID: ("pid", "docid", "docno", "corpus-id", "_id", "id"),
    S.QUERY: ("text", "query_text"),
    S.TEXT: ("passage", "contents", "body", "doc_text"),
    S.FIRST_STAGE_RANK: ("rank",),
    S.FIRST_STAGE_SCORE: ("score",),
    S.RELEVANCE: ("rel", "label", "score"),
}


class LineError(ValueError):
    """One line does not follow its format; the message says why, without file or line."""


class ColumnError(ValueError):
    """A table lacks columns it needs; the message names them, without the path."""


def resolve_columns(kind: str, present: Iterable[str], mapping: Mapping[str, str]) -> dict[str, str]:
    """Canonical name -> source column, for the columns of ``kind`` this table has.

    An explicit ``mapping`` (canonical -> source) wins; then the canonical name itself; then
    the first alias present and not already used.

    Raises:
        ColumnError: unknown canonical names in ``mapping``, mapped columns absent, required
            columns missing, or candidates with neither rank nor score.
    """
    if kind not in REQUIRED:
        raise ValueError(f"kind must be one of {sorted(REQUIRED)}, got {kind!r}.")
    present = list(present)
    have = set(present)
    wanted = REQUIRED[kind] + OPTIONAL[kind]
    unknown = sorted(set(mapping) - set(wanted))
    if unknown:
        raise ColumnError(f"columns mapping has unknown canonical name(s) {unknown} for {kind}; known: {list(wanted)}.")
    absent = sorted(src for src in mapping.values() if src not in have)
    if absent:
        raise ColumnError(f"mapped column(s) {absent} not found; columns present: {present}.")
    chosen = dict(mapping)
    for canonical in wanted:
        if canonical in chosen:
            continue
        if canonical in have:
            chosen[canonical] = canonical
            continue
        for alias in COLUMN_ALIASES.get(canonical, ()):
            # "id" names the query, never its text.
            if kind == "queries" and canonical == S.QUERY and alias == "id":
                continue
            if alias in have and alias not in chosen.values():
                chosen[canonical] = alias
                break
    missing = [c for c in REQUIRED[kind] if c not in chosen]
    if missing:
        raise ColumnError(
            f"missing required column(s) {missing} for {kind}; columns present: {present}. "
            "Map other names with the input's columns setting, e.g. {'doc_id': 'pid'}."
        )
    if kind == "candidates" and S.FIRST_STAGE_RANK not in chosen and S.FIRST_STAGE_SCORE not in chosen:
        raise ColumnError(f"candidates need a first-stage rank or score column; columns present: {present}.")
    return {c: chosen[c] for c in wanted if c in chosen}


def decode_line(raw: bytes) -> str:
    """Decode one line's bytes: invalid UTF-8 becomes U+FFFD, the line ending is dropped."""
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", errors="replace")


def is_blank(line: str) -> bool:
    """True for a line that carries no record (empty or spaces only)."""
    return not line.strip(" ")


def clean_id(value: str) -> str:
    """An id as both readers keep it: surrounding spaces removed."""
    return value.strip(" ")


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise LineError(f"{name} must be an integer, got {value!r}") from None


def _float(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise LineError(f"{name} must be a number, got {value!r}") from None


def split_trec(line: str) -> list[str]:
    """Split a TREC line the way Spark's ``split(trim(value), '\\\\s+')`` does."""
    return TREC_SEPARATOR.split(line.strip(" "))


def _trec_fields(line: str, expected: tuple[str, ...]) -> list[str]:
    parts = split_trec(line)
    if len(parts) != len(expected):
        raise LineError(f"expected {len(expected)} fields ({' '.join(expected)}), got {len(parts)}")
    return parts


def parse_trec_run_line(line: str) -> tuple[str, str, int, float]:
    """``qid Q0 docid rank score tag`` -> ``(query_id, doc_id, rank, score)``."""
    qid, _q0, docid, rank, score, _tag = _trec_fields(line, TREC_RUN_FIELDS)
    return qid, docid, _int(rank, "rank"), _float(score, "score")


def parse_trec_qrels_line(line: str) -> tuple[str, str, int]:
    """``qid 0 docid rel`` -> ``(query_id, doc_id, relevance)``."""
    qid, _iteration, docid, rel = _trec_fields(line, TREC_QRELS_FIELDS)
    return qid, docid, _int(rel, "relevance")


def is_beir_qrels_header(line: str) -> bool:
    """True when ``line`` is BEIR's qrels header ``query-id<TAB>corpus-id<TAB>score``."""
    return tuple(split_trec(line)) == BEIR_QRELS_HEADER


def parse_beir_qrels_line(line: str) -> tuple[str, str, int]:
    """``qid<TAB>docid<TAB>rel`` (after BEIR's header) -> ``(query_id, doc_id, relevance)``."""
    parts = split_trec(line)
    if len(parts) != len(BEIR_QRELS_HEADER):
        raise LineError(f"expected 3 fields ({' '.join(BEIR_QRELS_HEADER)}), got {len(parts)}")
    qid, docid, rel = parts
    return qid, docid, _int(rel, "relevance")


def parse_tsv_line(line: str) -> tuple[str, str]:
    """``id<TAB>text`` -> ``(id, text)``; tabs after the first belong to the text."""
    parts = line.split(TSV_SEPARATOR, 1)
    if len(parts) != 2:
        raise LineError("expected 2 fields (id<TAB>text), found no tab")
    return clean_id(parts[0]), parts[1]
