"""The counts the run summary reports about the inputs, in one Spark action.

Each measure is a one-row aggregate whose columns carry the input's name (``input_counts``,
``duplicate_ids``); ``collect_row`` collects any number of them together. Every action
costs a query plan and its stages whatever the data's size (about half a second on a
small local run), so the read step asks Spark once, not once per count and input.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from typing import Any

from .. import schema as S
from ..exceptions import InputError


def _count(condition: Any) -> Any:
    from pyspark.sql import functions as F

    return F.sum(F.when(condition, 1).otherwise(0))


def input_counts(df: Any, name: str, *, text_columns: Sequence[str] = (), id_column: str | None = None, first_stage: bool = False) -> Any:
    """One row of ``<name>_rows``, rows holding U+FFFD (``<name>_invalid_utf8``: invalid
    UTF-8 replaced, or a U+FFFD already in the text), rows without an id
    (``<name>_without_id``), and for candidates rows without a first-stage rank or score
    (``<name>_rank``, ``<name>_score``: null, NaN or unreadable)."""
    from pyspark.sql import functions as F

    from .stages import has_id

    measures = {"rows": F.count(F.lit(1))}
    present = [c for c in text_columns if c in df.columns]
    if present:
        hit = reduce(lambda a, b: a | b, [F.coalesce(F.col(c).contains("\ufffd"), F.lit(False)) for c in present])
        measures["invalid_utf8"] = _count(hit)
    if id_column:
        measures["without_id"] = _count(~has_id(F.col(id_column)))
    if first_stage:
        measures["rank"] = _count(F.col(S.FIRST_STAGE_RANK).isNull())
        measures["score"] = _count(F.col(S.FIRST_STAGE_SCORE).isNull())
    return df.agg(*[m.alias(f"{name}_{m_name}") for m_name, m in measures.items()])


def _content(value_columns: Sequence[str]) -> Any:
    from pyspark.sql import functions as F

    return F.sha2(F.to_json(F.struct(*[F.col(c) for c in value_columns])), 256)


def _repeated_ids(df: Any, id_column: str, value_columns: Sequence[str]) -> Any:
    from pyspark.sql import functions as F

    from .stages import has_id

    groups = df.filter(has_id(F.col(id_column))).groupBy(id_column)
    groups = groups.agg(F.count(F.lit(1)).alias("n"), F.countDistinct(_content(value_columns)).alias("versions"))
    return groups.filter(F.col("n") > 1)


def duplicate_ids(df: Any, name: str, id_column: str, value_columns: Sequence[str]) -> Any:
    """One row: ``<name>_collapsed``, rows repeating an id with identical content (the
    job keeps one), and ``<name>_conflicts``, ids whose rows disagree. Rows without an id
    cannot be joined to any candidate and are left out (``profile`` counts them)."""
    from pyspark.sql import functions as F

    return _repeated_ids(df, id_column, value_columns).agg(
        F.coalesce(F.sum(F.col("n") - 1), F.lit(0)).alias(f"{name}_collapsed"),
        _count(F.col("versions") > 1).alias(f"{name}_conflicts"),
    )


def refuse_conflicts(df: Any, id_column: str, value_columns: Sequence[str], *, conflicts: int, path: str) -> None:
    """An id whose rows disagree is an error naming up to ten such ids: there is no right
    text to pick. (Rows repeating an id with identical content are accepted.)"""
    from pyspark.sql import functions as F

    if not conflicts:
        return
    repeated = _repeated_ids(df, id_column, value_columns).filter(F.col("versions") > 1)
    ids = [r[id_column] for r in repeated.orderBy(id_column).limit(10).collect()]
    raise InputError(
        f"{path}: {conflicts} {id_column}(s) appear with different contents, e.g. {ids}; "
        "deduplicate the input (identical repeated rows are accepted)."
    )


def collect_row(frames: Sequence[Any]) -> dict[str, int]:
    """The one-row aggregates ``frames`` (their column names all distinct) as one dict, in
    one Spark action; a missing sum (no rows) is 0."""
    row = reduce(lambda a, b: a.crossJoin(b), frames).collect()[0]
    return {name: int(value or 0) for name, value in row.asDict().items()}
