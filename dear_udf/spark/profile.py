"""Input profiling: the counts of one input table the run summary reports, in one pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import schema as S


def profile(df: Any, *, text_columns: Sequence[str] = (), id_column: str | None = None, first_stage: bool = False) -> dict[str, int]:
    """Rows, rows holding U+FFFD (invalid UTF-8 replaced, or a U+FFFD already in the text),
    rows without an id, and for candidates rows without a first-stage rank or score (null,
    NaN or unreadable)."""
    from pyspark.sql import functions as F

    from .stages import has_id

    def count(condition: Any) -> Any:
        return F.sum(F.when(condition, 1).otherwise(0))

    measures = {"rows": F.count(F.lit(1))}
    present = [c for c in text_columns if c in df.columns]
    if present:
        hit = None
        for c in present:
            cond = F.coalesce(F.col(c).contains("\ufffd"), F.lit(False))
            hit = cond if hit is None else hit | cond
        measures["invalid_utf8"] = count(hit)
    if id_column:
        measures["without_id"] = count(~has_id(F.col(id_column)))
    if first_stage:
        measures["rank"] = count(F.col(S.FIRST_STAGE_RANK).isNull())
        measures["score"] = count(F.col(S.FIRST_STAGE_SCORE).isNull())
    row = df.agg(*[m.alias(name) for name, m in measures.items()]).collect()[0]
    return {name: int(row[name] or 0) for name in measures}
