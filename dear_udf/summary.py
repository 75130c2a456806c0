"""The run's accounting: each step's part, and the summary made from the parts.

Every step of the job returns its part, a frozen record of what it counted
(``ReadCounts``, ``JoinCounts``, ``ScoreCounts``, ``OutputCounts``); the summary is made
from them once the table is committed (``RunSummary.of``). Nothing fills a summary from
six places. The summary's JSON is flat: each part's fields are its keys.

The invariants every summary states and the job checks before it writes (``guards.py``):

- candidates read = pairs scored now + pairs found in the score cache + candidates
  dropped (by reason);
- every query of the candidates is in the output or in ``queries_with_nothing_to_rank``
  (all of its candidates were dropped), never both.

Rows that are not candidates are counted too: queries and documents without an id, ids
repeated with identical rows (collapsed), texts holding U+FFFD (invalid UTF-8 replaced),
queries that have no candidates at all, and candidates without a first-stage rank or score.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunHead:
    """What the run is, known before it reads anything (``steps.start``)."""

    run_id: str
    model: str  # the output's model column: name, revision, fingerprint
    output: str
    format: str
    settings: dict[str, Any]
    cache: str  # the score cache: --cache, or the scratch cache beside the output
    cache_scratch: bool  # removed once the output is committed
    scorer_key: str  # the key lookups use: what the driver expects the executors to score under
    scorer: dict[str, Any]  # what that key hashes


@dataclass(frozen=True)
class ReadCounts:
    """What the three inputs hold (``steps.read_inputs``)."""

    rows_read: dict[str, int]
    duplicate_ids_collapsed: dict[str, int]  # ids repeated with identical rows: one kept
    texts_with_invalid_utf8: dict[str, int]
    rows_without_id: dict[str, int]  # queries, corpus: ignored
    first_stage_missing: dict[str, int]  # candidates: rank, score
    candidates_read: int


@dataclass(frozen=True)
class JoinCounts:
    """Candidates kept for scoring, and dropped by reason (``steps.join``)."""

    candidates_kept: int
    dropped: dict[str, int]


@dataclass(frozen=True)
class ScoreCounts:
    """The score step (``spark/score_step.py``): the cache, the model, the pooling."""

    pairs_scored: int  # scored by the model in this run (the cache's misses)
    cache_hits: int  # kept pairs whose score came from the cache
    cache_misses: int
    cache_hit_rate: float
    cache_lookup_seconds: float  # the lookup and its count: grows with the cache (``cache compact``)
    chunks: list[dict[str, Any]]  # chunk, pairs, seconds
    hit_check: dict[str, Any] | None  # a sample of the hits scored again (cache.check)
    scored_under_other_keys: dict[str, Any]  # tasks that scored elsewhere than expected
    non_finite_scores: int  # NaN or infinite scores; a run holding any is refused
    pairs_pooled_early: int  # pooled before their last real token (first-pad and a "!")
    pairs_pooled_in_query: int  # scored on the query alone: their candidates all tie
    queries_pooled_in_query: int
    queries_pooled_in_query_examples: list[str]
    model_loads: int
    oom_splits: int
    tasks_without_gpu: int  # scoring tasks Spark gave no GPU (device unset): they ran on CPU
    real_tokens: int
    computed_tokens: int
    pairs_per_second: float
    # Side by side: every kept pair is scored under each adapter, so scores = kept x this.
    adapters_per_pair: int = 1


@dataclass(frozen=True)
class AdapterCounts:
    """Per named adapter (``score_step.score``): its model label and scorer key, the kept
    pairs it ranked, how many the cache held and how many it scored now; with qrels, its
    metrics beside the first stage's (``steps.evaluate``). ``mode``: ``side-by-side``,
    ``routing`` or ``single`` (one named adapter for every query)."""

    mode: str
    adapters: dict[str, dict[str, Any]]  # name -> model, scorer_key, pairs, cache_hits, cache_misses, pairs_scored


@dataclass(frozen=True)
class OutputCounts:
    """The top-k and every query accounted for (``steps.top_k``)."""

    output_rows: int
    output_queries: int
    queries_in_candidates: int
    queries_without_candidates: int  # in the queries, not in the candidates: not output
    queries_with_nothing_to_rank: list[str]  # the first NOTHING_TO_RANK_LISTED, in id order
    queries_with_nothing_to_rank_count: int


PARTS = (RunHead, ReadCounts, JoinCounts, ScoreCounts, OutputCounts)


def accounted(read: ReadCounts, join: JoinCounts, score: ScoreCounts) -> bool:
    """Every candidate read was scored, found in the cache, or dropped with a reason."""
    per_pair = score.adapters_per_pair
    return read.candidates_read * per_pair == score.pairs_scored + score.cache_hits + sum(join.dropped.values()) * per_pair


def queries_accounted(output: OutputCounts) -> bool:
    """Every query of the candidates was written or has nothing to rank."""
    return output.queries_in_candidates == output.output_queries + output.queries_with_nothing_to_rank_count


@dataclass(frozen=True)
class RunSummary:
    """A finished run: its parts, the write, the metrics and the times.

    A part's fields read as the summary's own (``summary.cache_hits``), as in its JSON.
    """

    head: RunHead
    read_counts: ReadCounts
    join_counts: JoinCounts
    score_counts: ScoreCounts
    output_counts: OutputCounts
    write: dict[str, Any]  # the writer, and for deltalake the table version
    metrics: dict[str, Any] | None = None
    adapter_counts: AdapterCounts | None = None  # named adapters only
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not the summary's own fields: a part's field.
        for part in ("head", "read_counts", "join_counts", "score_counts", "output_counts", "adapter_counts"):
            found = self.__dict__.get(part)
            if found is not None and name in found.__dataclass_fields__:
                return getattr(found, name)
        raise AttributeError(f"{type(self).__name__} has no field {name!r}.")

    @property
    def accounted(self) -> bool:
        return accounted(self.read_counts, self.join_counts, self.score_counts)

    @property
    def queries_accounted(self) -> bool:
        return queries_accounted(self.output_counts)

    def as_dict(self) -> dict[str, Any]:
        """The flat JSON of the summary: every part's fields, and the totals."""
        out: dict[str, Any] = {}
        for part in (self.head, self.read_counts, self.join_counts, self.score_counts, self.output_counts):
            out.update(dataclasses.asdict(part))
        out.update(write=self.write, metrics=self.metrics, stage_seconds=self.stage_seconds, wall_seconds=self.wall_seconds)
        out["adapter_mode"] = self.adapter_counts.mode if self.adapter_counts else None
        out["adapters"] = self.adapter_counts.adapters if self.adapter_counts else None
        out["candidates_dropped"] = sum(self.join_counts.dropped.values())
        out["accounted"] = self.accounted
        out["queries_accounted"] = self.queries_accounted
        out["computed_per_real_token"] = self.computed_tokens / self.real_tokens if self.real_tokens else None
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True, default=str) + "\n"

    def render(self) -> str:
        """A short human-readable account for the end of the log."""
        lines = [
            f"run {self.run_id}  model {self.model}",
            "read      " + ", ".join(f"{k}={v}" for k, v in self.rows_read.items()),
            f"candidates read={self.candidates_read} scored={self.pairs_scored} cached={self.cache_hits} "
            f"dropped={sum(self.dropped.values())} accounted={self.accounted}",
            f"cache     hits={self.cache_hits} misses={self.cache_misses} hit rate={self.cache_hit_rate:.1%} "
            f"lookup={self.cache_lookup_seconds:.1f}s chunks={len(self.chunks)} -> {self.cache}" + (" (scratch)" if self.cache_scratch else ""),
        ]
        if self.hit_check:
            lines.append(f"hit check {self.hit_check['pairs']} cached scores scored again, largest difference {self.hit_check['max_difference']:.3g}")
        for reason, count in sorted(self.dropped.items()):
            lines.append(f"  dropped {reason}: {count}")
        if self.queries_with_nothing_to_rank_count:
            lines.append(f"queries with nothing to rank: {self.queries_with_nothing_to_rank_count}")
        if self.queries_without_candidates:
            lines.append(f"queries without candidates: {self.queries_without_candidates}")
        notes = {
            "duplicate ids collapsed": self.duplicate_ids_collapsed,
            "texts with invalid UTF-8": self.texts_with_invalid_utf8,
            "rows without id": self.rows_without_id,
            "candidates without first-stage": self.first_stage_missing,
        }
        for label, counts in notes.items():
            if any(counts.values()):
                lines.append(f"{label}: " + ", ".join(f"{k}={v}" for k, v in counts.items() if v))
        if self.pairs_pooled_early:
            lines.append(
                f"pooling   {self.pairs_pooled_early} pairs pooled before their last token; "
                f"{self.queries_pooled_in_query} queries pooled inside the query (order unchanged)"
            )
        lines.append(f"output    rows={self.output_rows} queries={self.output_queries} -> {self.output} ({self.format})")
        lines.append(
            f"model loads={self.model_loads} oom_splits={self.oom_splits} "
            f"pairs/s={self.pairs_per_second:.1f} wall={self.wall_seconds:.1f}s"
        )
        lines.append("stages    " + ", ".join(f"{k}={v:.1f}s" for k, v in self.stage_seconds.items()))
        if self.adapter_counts:
            for name, each in self.adapter_counts.adapters.items():
                lines.append(
                    f"adapter   {name} ({self.adapter_counts.mode}): pairs={each['pairs']} hits={each['cache_hits']} "
                    f"misses={each['cache_misses']} scored={each['pairs_scored']}"
                )
        if self.metrics:
            for name, value in self.metrics.get("aggregate", {}).items():
                lines.append(f"metric    {name}: {value}")
            for name, each in (self.metrics.get("adapters") or {}).items():
                shown = ", ".join(f"{m}={v:.4f}" for m, v in (each.get("reranked") or {}).items())
                lines.append(f"metric    adapter {name}: {shown}")
        return "\n".join(lines)
