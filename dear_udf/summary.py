"""The run's accounting: what was read, kept, scored, dropped and written, and how fast.

The invariants every summary states and the job checks before it reports success:

- candidates read = pairs scored now + pairs found in the score cache + candidates
  dropped (by reason);
- every query of the candidates is in the output or in ``queries_with_nothing_to_rank``
  (all of its candidates were dropped), never both.

Rows that are not candidates are counted too: queries and documents without an id, ids
repeated with identical rows (collapsed), texts holding U+FFFD (invalid UTF-8 replaced),
queries that have no candidates at all, and candidates without a first-stage rank or score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunSummary:
    """Mutable while the job runs; written once at the end."""

    run_id: str
    model: str
    output: str
    format: str
    rows_read: dict[str, int] = field(default_factory=dict)
    duplicate_ids_collapsed: dict[str, int] = field(default_factory=dict)
    texts_with_invalid_utf8: dict[str, int] = field(default_factory=dict)
    rows_without_id: dict[str, int] = field(default_factory=dict)  # queries, corpus: ignored
    first_stage_missing: dict[str, int] = field(default_factory=dict)  # candidates: rank, score
    candidates_read: int = 0
    candidates_kept: int = 0
    pairs_scored: int = 0  # scored by the model in this run (the cache's misses)
    cache: str = ""  # the score cache: --cache, or the scratch cache beside the output
    cache_scratch: bool = False  # removed once the output is committed
    scorer_key: str = ""  # the key lookups use: what the driver expects the executors to score under
    scorer: dict[str, Any] = field(default_factory=dict)  # what that key hashes
    scored_under_other_keys: dict[str, Any] = field(default_factory=dict)  # tasks that scored elsewhere
    hit_check: dict[str, Any] | None = None  # a sample of the hits scored again (cache.check)
    cache_hits: int = 0  # kept pairs whose score came from the cache
    cache_misses: int = 0
    cache_hit_rate: float = 0.0
    chunks: list[dict[str, Any]] = field(default_factory=list)  # chunk, pairs, seconds
    non_finite_scores: int = 0  # NaN or infinite scores; a run holding any is refused
    dropped: dict[str, int] = field(default_factory=dict)
    queries_in_candidates: int = 0
    queries_without_candidates: int = 0  # in the queries, not in the candidates: not output
    queries_with_nothing_to_rank: list[str] = field(default_factory=list)
    queries_with_nothing_to_rank_count: int = 0
    output_rows: int = 0
    output_queries: int = 0
    pairs_pooled_early: int = 0  # pooled before their last real token (first-pad and a "!")
    pairs_pooled_in_query: int = 0  # scored on the query alone: their candidates all tie
    queries_pooled_in_query: int = 0
    queries_pooled_in_query_examples: list[str] = field(default_factory=list)
    model_loads: int = 0
    oom_splits: int = 0
    tasks_without_gpu: int = 0  # scoring tasks Spark gave no GPU (device unset): they ran on CPU
    real_tokens: int = 0
    computed_tokens: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    pairs_per_second: float = 0.0
    write: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def accounted(self) -> bool:
        """True when every candidate read was scored, found in the cache, or dropped with a reason."""
        return self.candidates_read == self.pairs_scored + self.cache_hits + sum(self.dropped.values())

    @property
    def queries_accounted(self) -> bool:
        """True when every query of the candidates was written or has nothing to rank."""
        return self.queries_in_candidates == self.output_queries + self.queries_with_nothing_to_rank_count

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["candidates_dropped"] = sum(self.dropped.values())
        out["accounted"] = self.accounted
        out["queries_accounted"] = self.queries_accounted
        out["computed_per_real_token"] = self.computed_tokens / self.real_tokens if self.real_tokens else None
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True, default=str) + "\n"

    def write_json(self, path: str) -> None:
        """Write atomically (a reader never sees half a summary), readable by all (0644)."""
        from .io.staged import StagedFile

        with StagedFile(path) as staged:
            staged.write_text(self.to_json())
            staged.publish()

    def render(self) -> str:
        """A short human-readable account for the end of the log."""
        lines = [
            f"run {self.run_id}  model {self.model}",
            f"read      " + ", ".join(f"{k}={v}" for k, v in self.rows_read.items()),
            f"candidates read={self.candidates_read} scored={self.pairs_scored} cached={self.cache_hits} "
            f"dropped={sum(self.dropped.values())} accounted={self.accounted}",
            f"cache     hits={self.cache_hits} misses={self.cache_misses} hit rate={self.cache_hit_rate:.1%} "
            f"chunks={len(self.chunks)} -> {self.cache}" + (" (scratch)" if self.cache_scratch else ""),
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
        if self.metrics:
            for name, value in self.metrics.get("aggregate", {}).items():
                lines.append(f"metric    {name}: {value}")
        return "\n".join(lines)
