"""The IR vocabulary: column names and schemas shared by every stage.

Spark schemas are built lazily (``spark_schema``) so this module imports without pyspark.
"""

from __future__ import annotations

import unicodedata

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
# The named adapter that ranked an output row (null for a run without named adapters).
ADAPTER = "adapter"
RELEVANCE = "relevance"
# Per scored pair: pooled before its last real token / on its query alone (tokenization.Encoded).
POOLED_EARLY = "pooled_early"
POOLED_IN_QUERY = "pooled_in_query"
# Per scored pair: what the forward pass computed (tokenization.computed_key); pairs of a
# query sharing it get one score. And the scorer key of the process that scored it.
COMPUTED_KEY = "computed_key"
SCORER_KEY = "scorer_key"

OUTPUT_COLUMNS = (
    QUERY_ID,
    DOC_ID,
    RANK,
    SCORE,
    FIRST_STAGE_RANK,
    FIRST_STAGE_SCORE,
    RUN_ID,
    MODEL,
    ADAPTER,
)

# The inputs as every reader returns them (ids are strings whatever the source held).
QUERIES_SCHEMA = pa.schema([(QUERY_ID, pa.string()), (QUERY, pa.string())])
CORPUS_SCHEMA = pa.schema([(DOC_ID, pa.string()), (TITLE, pa.string()), (TEXT, pa.string())])
CANDIDATES_SCHEMA = pa.schema(
    [(QUERY_ID, pa.string()), (DOC_ID, pa.string()), (FIRST_STAGE_RANK, pa.int32()), (FIRST_STAGE_SCORE, pa.float64())]
)
QRELS_SCHEMA = pa.schema([(QUERY_ID, pa.string()), (DOC_ID, pa.string()), (RELEVANCE, pa.int32())])
INPUT_SCHEMAS = {"queries": QUERIES_SCHEMA, "corpus": CORPUS_SCHEMA, "candidates": CANDIDATES_SCHEMA, "qrels": QRELS_SCHEMA}

# What the Spark scoring stage gives back per pair: the carried columns, the score, where
# the layout read it (tokenization.Encoded), and under which scorer key it was computed.
SCORED_PAIRS_SCHEMA = pa.schema(
    [
        (QUERY_ID, pa.string()),
        (DOC_ID, pa.string()),
        (FIRST_STAGE_RANK, pa.int32()),
        (FIRST_STAGE_SCORE, pa.float64()),
        (SCORE, pa.float32()),
        (POOLED_EARLY, pa.bool_()),
        (POOLED_IN_QUERY, pa.bool_()),
        (COMPUTED_KEY, pa.string()),
        (SCORER_KEY, pa.string()),
    ]
)

# The file ``dear-rerank score`` writes: one score per input pair.
SCORE_FILE_SCHEMA = pa.schema(
    [(QUERY_ID, pa.string()), (DOC_ID, pa.string()), (SCORE, pa.float32())]
)
# ... and for pairs given a row per query (the model cards' ``queries_docs.csv``): each
# document by its place in the query's list, ranked.
DOC_INDEX = "doc_index"
RANKED_FILE_SCHEMA = pa.schema(
    [(QUERY_ID, pa.string()), (DOC_INDEX, pa.int32()), (RANK, pa.int32()), (SCORE, pa.float32())]
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
        (ADAPTER, pa.string()),
    ]
)
# Columns added to the output since its first version: a table written before them is
# still this job's (``output_schema_difference``); the next write adds them, null in the
# rows written before.
ADDED_OUTPUT_COLUMNS = (ADAPTER,)


def output_schema_difference(actual: pa.Schema, expected: pa.Schema | None = None) -> str | None:
    """``schema_difference`` against the output schema (or ``expected``, the output's
    without some column), accepting a table written before ``ADDED_OUTPUT_COLUMNS``."""
    expected = expected if expected is not None else OUTPUT_ARROW_SCHEMA
    added = [n for n in ADDED_OUTPUT_COLUMNS if n in expected.names and n not in actual.names]
    for name in added:
        expected = expected.remove(expected.get_field_index(name))
    return schema_difference(actual, expected)


def spark_schema(arrow_schema: pa.Schema):  # -> pyspark.sql.types.StructType
    """Return the Spark ``StructType`` equivalent of an Arrow schema of this module."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(arrow_schema)


def schema_difference(actual: pa.Schema, expected: pa.Schema) -> str | None:
    """None when the two schemas hold the same fields and types, else what differs.

    The large/view string variants count as ``string``: writers pick among them freely.
    """
    fold = {pa.large_string(): pa.string(), pa.string_view(): pa.string()}
    got = {f.name: fold.get(f.type, f.type) for f in actual}
    want = {f.name: fold.get(f.type, f.type) for f in expected}
    if got == want:
        return None
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    retyped = {n: f"{got[n]} (expected {want[n]})" for n in want if n in got and got[n] != want[n]}
    return f"missing {missing}, unexpected {extra}, wrong types {retyped}"


# -- the run id -----------------------------------------------------------------------------

RUN_ID_MAX_CHARS = 200
# Characters Spark writes as %XX in a partition folder name (ExternalCatalogUtils.escapePathName).
_SPARK_ESCAPED = frozenset('"#%\'*/:=?\\{[]^') | frozenset(chr(c) for c in range(0x20)) | {"\x7f"}
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # how Spark names a null partition value
_NAME_MAX_BYTES = 255  # a folder name on common file systems


def partition_folder(run_id: str) -> str:
    """The folder name Spark gives the run's partition: ``run_id=<id>`` with %XX escapes."""
    return f"{RUN_ID}=" + "".join(f"%{ord(c):02X}" if c in _SPARK_ESCAPED else c for c in run_id)


def check_run_id(run_id: object) -> str:
    """Return ``run_id`` when it can name a partition, else raise ``ConfigError`` saying why.

    The rule (README, docs/reliability.md): a non-empty string of at most 200 characters,
    without ``%``, ``/`` or ``=``, without control characters or line breaks, without
    spaces at either end, and whose partition folder name fits in 255 bytes. Each of these
    made a partition that was written, read back or deleted as another value (``/`` nests
    folders, ``=`` and ``%`` are read as Hive syntax and escapes) or failed deep in Spark.

    Example:
        >>> check_run_id("2026-11-22")
        '2026-11-22'
    """
    from .exceptions import ConfigError

    def refuse(why: str) -> ConfigError:
        shown = run_id if not isinstance(run_id, str) or len(run_id) <= 80 else run_id[:80] + "..."
        return ConfigError(f"run_id {why}, got {shown!r}.")

    if not isinstance(run_id, str):
        raise refuse(f"must be a string, not {type(run_id).__name__}")
    if not run_id:
        raise refuse("must not be empty")
    if len(run_id) > RUN_ID_MAX_CHARS:
        raise refuse(f"must be at most {RUN_ID_MAX_CHARS} characters (it has {len(run_id)})")
    bad = sorted({c for c in run_id if c in "%/="})
    if bad:
        raise refuse(f"must not hold {' '.join(repr(c) for c in bad)} (partition folder syntax)")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in run_id):
        raise refuse("must not hold control characters or line breaks")
    if run_id != run_id.strip():
        raise refuse("must not start or end with whitespace")
    if run_id == _HIVE_NULL:
        raise refuse("must not be Spark's name for a null partition")
    if len(partition_folder(run_id).encode("utf-8")) > _NAME_MAX_BYTES:
        raise refuse(f"is too long for a partition folder name ({_NAME_MAX_BYTES} bytes in UTF-8 after Spark's escapes)")
    return run_id
