"""The IR vocabulary: column names and schemas shared by every stage.

Spark schemas are built lazily (``spark_schema``) so this module imports without pyspark.
"""

from __future__ import annotations

import pyarrow as pa

QUERY_ID = "query_id"
DOC_ID = "doc_id"
QUERY = "query"
TITLE = "title"
TEXT = "text"
SCORE = "score"
RANK = "rank"
FIRST_STAGE_RANK = "first_stage_rank"
FIRST_STAGE_SCORE = "first_stage_score"
RUN_ID = "run_id"
MODEL = "model"
RELEVANCE = "relevance"
# Per scored pair: pooled before its last real token / on its query alone (layout.Encoded).
POOLED_EARLY = "pooled_early"
POOLED_IN_QUERY = "pooled_in_query"

# Inputs, after renaming to the canonical names.
QUERIES_COLUMNS = (QUERY_ID, QUERY)
CORPUS_COLUMNS = (DOC_ID, TITLE, TEXT)  # title is optional on input
CANDIDATES_COLUMNS = (QUERY_ID, DOC_ID, FIRST_STAGE_RANK, FIRST_STAGE_SCORE)  # rank or score may be absent
QRELS_COLUMNS = (QUERY_ID, DOC_ID, RELEVANCE)

# The pairs the scorer consumes and the scores it gives back.
PAIRS_COLUMNS = (QUERY_ID, DOC_ID, QUERY, TITLE, TEXT)
SCORES_COLUMNS = (QUERY_ID, DOC_ID, SCORE)

OUTPUT_COLUMNS = (
    QUERY_ID,
    DOC_ID,
    RANK,
    SCORE,
    FIRST_STAGE_RANK,
    FIRST_STAGE_SCORE,
    RUN_ID,
    MODEL,
)

SCORES_ARROW_SCHEMA = pa.schema(
    [(QUERY_ID, pa.string()), (DOC_ID, pa.string()), (SCORE, pa.float32())]
)

OUTPUT_ARROW_SCHEMA = pa.schema(
    [
        (QUERY_ID, pa.string()),
        (DOC_ID, pa.string()),
        (RANK, pa.int32()),
        (SCORE, pa.float32()),
        (FIRST_STAGE_RANK, pa.int32()),
        (FIRST_STAGE_SCORE, pa.float64()),
        (RUN_ID, pa.string()),
        (MODEL, pa.string()),
    ]
)


def spark_schema(arrow_schema: pa.Schema):  # -> pyspark.sql.types.StructType
    """Return the Spark ``StructType`` equivalent of an Arrow schema of this module."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(arrow_schema)
