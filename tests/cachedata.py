"""Reading a score cache back in tests: every row of one scorer key, written plainly with
deltalake (the product reads through Spark: ``dear_udf.spark.score_cache``)."""

from __future__ import annotations

import pyarrow as pa

from dear_udf.cache.table import CACHE_ARROW_SCHEMA, SCORER_KEY


def read_entries(uri: str, scorer_key: str) -> pa.Table:
    """Every row of ``scorer_key`` (duplicates included); no table reads as no rows, and
    columns a format-1 cache lacks as nulls."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(str(uri))
    except TableNotFoundError:
        return CACHE_ARROW_SCHEMA.empty_table()
    present = set(table.schema().to_arrow().names)
    found = table.to_pyarrow_table(partitions=[(SCORER_KEY, "=", scorer_key)], columns=[c for c in CACHE_ARROW_SCHEMA.names if c in present])
    return pa.table({c: found.column(c) if c in present else pa.nulls(found.num_rows, CACHE_ARROW_SCHEMA.field(c).type) for c in CACHE_ARROW_SCHEMA.names})
