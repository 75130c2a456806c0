"""Job stages on DataFrames: candidate status (kept or dropped, and why), pairs, top-k.

Every candidate row read ends in exactly one place: the pairs to score, or a
``drop_reason``. The first reason that applies wins, in this order:

- ``null_id``: the row has no query id or no doc id (null, empty or only whitespace);
- ``duplicate_candidate``: the same (query, doc) appeared before (the best rank is kept);
- ``beyond_depth``: not among the first ``depth`` candidates of its query, ordered by
  first-stage rank, then score (descending), then doc id;
- ``query_id_not_in_queries`` / ``empty_query_text``;
- ``doc_id_not_in_corpus`` / ``empty_document`` (no title and no text).

"Empty" text means null, empty or only whitespace. A document with a title but no text is
scored (``"document: <title> "``), as is one with text and no title.
"""

from __future__ import annotations

from typing import Any

from .. import schema as S

DROP_REASON = "drop_reason"
# Decided after the depth cut, on the texts: these candidates are still in the first-stage
# run to depth, the run the reranked one is compared with.
TEXT_DROP_REASONS = ("query_id_not_in_queries", "empty_query_text", "doc_id_not_in_corpus", "empty_document")
_POSITION = "_first_stage_position"
_INT_MAX = 2**31 - 1


def first_stage_order(F: Any) -> list:
    """The first-stage ordering: rank ascending, then score descending, then doc id."""
    return [
        F.col(S.FIRST_STAGE_RANK).asc_nulls_last(),
        F.col(S.FIRST_STAGE_SCORE).desc_nulls_last(),
        F.col(S.DOC_ID).asc(),
    ]


def _blank(F: Any, column: Any) -> Any:
    """Null, empty, or only whitespace (Unicode's too: tabs, newlines, no-break spaces).

    ``trim`` would not do: Spark's trims only the ASCII space.
    """
    return column.isNull() | ~column.rlike(r"(?U)\S")


def has_id(column: Any) -> Any:
    """True where an id is usable: not null, not empty, not only whitespace."""
    from pyspark.sql import functions as F

    return ~_blank(F, column)


def _missing_rank(F: Any, play: Any) -> Any:
    """The rank a candidate without one gets: after every ranked candidate of its query.

    Unranked candidates come last in the first-stage order, so the largest rank in play
    plus the candidate's place among the unranked (its position minus the ranked count)
    keeps that order and collides with no real rank: ranks 1, 5, 100 and a missing one
    give it 101, not its position 4. With no rank at all this is the position.
    """
    largest = F.coalesce(F.max(S.FIRST_STAGE_RANK).over(play), F.lit(0)).cast("long")
    place = F.col(_POSITION) - F.count(S.FIRST_STAGE_RANK).over(play)
    return F.least(largest + place, F.lit(_INT_MAX))  # a rank near 2**31 must not overflow


def candidate_status(candidates: Any, queries: Any, corpus: Any, *, depth: int, carry: tuple[str, ...] = ()) -> Any:
    """Candidates with their texts and a ``drop_reason`` (null when the pair is to be scored).

    ``carry`` names extra columns of ``queries`` or ``corpus`` to keep beside the texts (the
    score cache's per-query and per-document hashes).

    A candidate without a first-stage rank gets one after every ranked candidate of its
    query (``_missing_rank``), in the first-stage order; the output, the tie-breaks of
    ``top_k`` and the first-stage metrics all use that rank.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    null_id = ~has_id(F.col(S.QUERY_ID)) | ~has_id(F.col(S.DOC_ID))
    order = first_stage_order(F)
    # The same (query, doc) twice: keep the best-ranked row, drop the others.
    dup_window = Window.partitionBy(S.QUERY_ID, S.DOC_ID).orderBy(*order)
    c = candidates.withColumn("_dup", F.when(null_id, None).otherwise(F.row_number().over(dup_window)))
    c = c.withColumn(
        DROP_REASON,
        F.when(null_id, F.lit("null_id")).when(F.col("_dup") > 1, F.lit("duplicate_candidate")),
    )
    # Depth counts only candidates still in play, so duplicates do not use up the depth.
    in_play = F.col(DROP_REASON).isNull()
    play = Window.partitionBy(S.QUERY_ID, in_play)
    c = c.withColumn(_POSITION, F.when(in_play, F.row_number().over(play.orderBy(*order))))
    c = c.withColumn(S.FIRST_STAGE_RANK, F.coalesce(F.col(S.FIRST_STAGE_RANK), _missing_rank(F, play)).cast("int"))
    c = c.withColumn(DROP_REASON, F.when(in_play & (F.col(_POSITION) > depth), F.lit("beyond_depth")).otherwise(F.col(DROP_REASON)))

    # The read step has made sure repeated ids carry identical rows (profile.refuse_conflicts), so any one will do.
    q_extra = [c for c in carry if c in queries.columns]
    d_extra = [c for c in carry if c in corpus.columns]
    missing = [c for c in carry if c not in q_extra + d_extra]
    if missing:
        raise ValueError(f"carry names {missing}, which neither the queries nor the corpus hold.")
    q = queries.filter(has_id(F.col(S.QUERY_ID))).select(S.QUERY_ID, S.QUERY, *q_extra, F.lit(True).alias("_has_query")).dropDuplicates([S.QUERY_ID])
    d = corpus.filter(has_id(F.col(S.DOC_ID))).select(S.DOC_ID, S.TITLE, S.TEXT, *d_extra, F.lit(True).alias("_has_doc")).dropDuplicates([S.DOC_ID])
    joined = c.join(q, S.QUERY_ID, "left").join(d, S.DOC_ID, "left")
    reason = (
        F.when(F.col(DROP_REASON).isNotNull(), F.col(DROP_REASON))
        .when(F.col("_has_query").isNull(), F.lit("query_id_not_in_queries"))
        .when(_blank(F, F.col(S.QUERY)), F.lit("empty_query_text"))
        .when(F.col("_has_doc").isNull(), F.lit("doc_id_not_in_corpus"))
        .when(_blank(F, F.col(S.TITLE)) & _blank(F, F.col(S.TEXT)), F.lit("empty_document"))
    )
    return joined.withColumn(DROP_REASON, reason).select(
        S.QUERY_ID,
        S.DOC_ID,
        S.QUERY,
        S.TITLE,
        S.TEXT,
        S.FIRST_STAGE_RANK,
        S.FIRST_STAGE_SCORE,
        DROP_REASON,
        *q_extra,
        *d_extra,
    )


def within_depth(status: Any) -> Any:
    """The candidates of the first-stage run to depth: kept, or dropped only for their texts."""
    from pyspark.sql import functions as F

    return status.filter(F.col(DROP_REASON).isNull() | F.col(DROP_REASON).isin(*TEXT_DROP_REASONS))


def kept_pairs(status: Any, *, char_cap: int | None = None) -> Any:
    """The kept pairs, their texts cut at ``char_cap``: texts longer than the layout could
    ever use (megabyte documents) are cut before they cross into Python. The score cache's
    keys hash the texts after the same cut (``spark.score_cache``)."""
    from pyspark.sql import functions as F

    pairs = status.filter(F.col(DROP_REASON).isNull()).drop(DROP_REASON)
    if char_cap:
        pairs = pairs.withColumn(S.TEXT, F.substring(F.col(S.TEXT), 1, char_cap))
        pairs = pairs.withColumn(S.TITLE, F.substring(F.col(S.TITLE), 1, char_cap))
        pairs = pairs.withColumn(S.QUERY, F.substring(F.col(S.QUERY), 1, char_cap))
    return pairs


def top_k(scored: Any, *, k: int, run_id: str, model: str | None = None) -> Any:
    """Keep the best ``k`` per query by score; ties go to the better first-stage rank, then doc id.

    Pairs scored under several adapters (an ``adapter`` column) are ranked per adapter and
    query: one top-k each. ``model`` names the model of every row, else the ``model``
    column of ``scored`` does (each adapter's label).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    adapter = F.col(S.ADAPTER) if S.ADAPTER in scored.columns else F.lit(None).cast("string")
    scored = scored.withColumn(S.ADAPTER, adapter)
    label = F.lit(model) if model is not None else F.col(S.MODEL)
    window = Window.partitionBy(S.ADAPTER, S.QUERY_ID).orderBy(
        F.col(S.SCORE).desc(), F.col(S.FIRST_STAGE_RANK).asc_nulls_last(), F.col(S.DOC_ID).asc()
    )
    ranked = scored.withColumn(S.RANK, F.row_number().over(window)).filter(F.col(S.RANK) <= k)
    return ranked.select(
        S.QUERY_ID,
        S.DOC_ID,
        F.col(S.RANK).cast("int").alias(S.RANK),
        F.col(S.SCORE).cast("float").alias(S.SCORE),
        F.col(S.FIRST_STAGE_RANK).cast("int").alias(S.FIRST_STAGE_RANK),
        F.col(S.FIRST_STAGE_SCORE).cast("double").alias(S.FIRST_STAGE_SCORE),
        F.lit(run_id).alias(S.RUN_ID),
        label.cast("string").alias(S.MODEL),
        F.col(S.ADAPTER).cast("string").alias(S.ADAPTER),
    )


def _query_ids(df: Any, flag: str) -> Any:
    from pyspark.sql import functions as F

    return df.select(S.QUERY_ID).where(has_id(F.col(S.QUERY_ID))).distinct().withColumn(flag, F.lit(True))


def query_counts(top: Any, *, candidates: Any, queries: Any, scored: Any) -> Any:
    """One row accounting for every query: ``output_rows`` and ``output_queries`` of the
    top-k; ``queries_in_candidates``; ``queries_without_candidates``, queries with no
    candidate row at all; ``queries_with_nothing_to_rank``, queries of the candidates
    none of whose candidates was scored (all dropped)."""
    from pyspark.sql import functions as F

    ids = _query_ids(candidates, "_c").join(_query_ids(queries, "_k"), S.QUERY_ID, "full")
    ids = ids.join(_query_ids(scored, "_s"), S.QUERY_ID, "left")
    accounted = ids.agg(
        F.count(F.col("_c")).alias("queries_in_candidates"),
        F.count(F.when(F.col("_c").isNull(), F.col("_k"))).alias("queries_without_candidates"),
        F.count(F.when(F.col("_s").isNull(), F.col("_c"))).alias("queries_with_nothing_to_rank"),
    )
    written = top.agg(F.count(F.lit(1)).alias("output_rows"), F.countDistinct(S.QUERY_ID).alias("output_queries"))
    return written.crossJoin(accounted)


def queries_with_nothing_to_rank(candidates: Any, scored: Any, *, limit: int) -> list[str]:
    """The first ``limit`` ids, in order, of the queries ``query_counts`` counts as having
    nothing to rank."""
    nothing = _query_ids(candidates, "_c").join(_query_ids(scored, "_s"), S.QUERY_ID, "left_anti")
    return [r[S.QUERY_ID] for r in nothing.select(S.QUERY_ID).orderBy(S.QUERY_ID).limit(limit).collect()]


def tie_computed(scored: Any) -> Any:
    """One score for the pairs of a query that share a ``computed_key`` (the lowest of theirs).

    Such pairs read the same ids up to their pooled position, whatever their documents
    beyond it: every candidate of a query pooled inside the query, documents that agree up
    to their first bare ``"!"`` under ``first-pad`` ("Oklahoma!", "Yahoo! Answers"),
    near-duplicates that agree up to the pair cap. DeAR gives them one score and they rank
    by first-stage rank. One scorer call computes them once (``Scorer.score_ids``); pairs
    served from the cache were scored on other nights, in other batches, where the last
    bits may differ: without this, a night mixing cached and new pairs would rank them by
    noise where an uncached night ties them.

    The window runs on the query's partitioning, which the top-k's window reuses: no
    second shuffle.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    # Only within one adapter: the same ids computed under two adapters are two scores.
    within = [S.ADAPTER] if S.ADAPTER in scored.columns else []
    shared = F.min(F.col(S.SCORE)).over(Window.partitionBy(*within, S.QUERY_ID, S.COMPUTED_KEY))
    return scored.repartition(S.QUERY_ID).withColumn(S.SCORE, shared)


POOLED_IN_QUERY_LISTED = 10  # query ids named in the summary and the warning; all are counted


def score_counts(scored: Any) -> dict[str, Any]:
    """One pass over the scores: pairs scored, non-finite scores, pairs pooled early and
    inside the query, queries pooled inside the query; then small lookups naming the first
    few such queries and non-finite scores."""
    from pyspark.sql import functions as F

    in_query = F.col(S.POOLED_IN_QUERY)
    finite = ~F.isnan(S.SCORE) & (F.abs(F.col(S.SCORE)) != float("inf"))
    row = scored.agg(
        F.count(F.lit(1)).alias("pairs"),
        F.sum(F.when(finite, 0).otherwise(1)).alias("bad"),
        F.sum(F.col(S.POOLED_EARLY).cast("int")).alias("early"),
        F.sum(in_query.cast("int")).alias("in_query"),
        F.countDistinct(F.when(in_query, F.col(S.QUERY_ID))).alias("queries"),
    ).collect()[0]
    examples: list[str] = []
    if row["queries"]:
        first = scored.where(in_query).select(S.QUERY_ID).distinct().orderBy(S.QUERY_ID).limit(POOLED_IN_QUERY_LISTED)
        examples = [r[S.QUERY_ID] for r in first.collect()]
    non_finite: list[str] = []
    if row["bad"]:
        non_finite = [f"{r[S.QUERY_ID]}/{r[S.DOC_ID]}={r[S.SCORE]}" for r in scored.filter(~finite).limit(3).collect()]
    return {
        "pairs_scored": int(row["pairs"]),
        "non_finite_scores": int(row["bad"] or 0),
        "non_finite_examples": non_finite,
        "pairs_pooled_early": int(row["early"] or 0),
        "pairs_pooled_in_query": int(row["in_query"] or 0),
        "queries_pooled_in_query": int(row["queries"]),
        "queries_pooled_in_query_examples": examples,
    }
