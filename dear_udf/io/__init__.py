"""Readers and writers without Spark: inputs and runs read locally, TREC runs, Delta commits.

Nothing here imports pyspark; deltalake is imported inside the functions that need it.
"""

from __future__ import annotations

from .delta_writer import read_table, replace_partition
from .formats import infer_format, read_local
from .runs import as_run, read_run
from .trec import write_trec_run

__all__ = [
    "as_run",
    "infer_format",
    "read_local",
    "read_run",
    "read_table",
    "replace_partition",
    "write_trec_run",
]
