"""What the output folder holds, judged on the local disk without Spark (issue 13, case 1)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dear_udf.exceptions import OutputError
from dear_udf.schema import OUTPUT_ARROW_SCHEMA
from dear_udf.spark.preflight import check_output


def _spark_parquet_table(root, schema=OUTPUT_ARROW_SCHEMA):
    """The layout Spark's partitioned Parquet write leaves, markers included."""
    part = root / "run_id=night-1"
    part.mkdir(parents=True)
    (root / "_SUCCESS").write_text("")
    (root / ".spark-staging-1").mkdir()
    (part / ".part-00000.snappy.parquet.crc").write_text("")
    table = pa.Table.from_pylist([], schema=schema)
    pq.write_table(table.drop_columns(["run_id"]) if "run_id" in schema.names else table, part / "part-00000.snappy.parquet")


def test_an_absent_or_empty_folder_takes_either_format(tmp_path):
    (tmp_path / "empty").mkdir()
    for fmt in ("delta", "parquet"):
        check_output(str(tmp_path / "new" / "out"), fmt=fmt, run_id="r")
        check_output(str(tmp_path / "empty"), fmt=fmt, run_id="r")


def test_this_jobs_parquet_table_takes_parquet_only(tmp_path):
    _spark_parquet_table(tmp_path / "out")
    check_output(str(tmp_path / "out"), fmt="parquet", run_id="night-2")
    with pytest.raises(OutputError, match="holds a Parquet table"):
        check_output(str(tmp_path / "out"), fmt="delta", run_id="night-2")


def test_a_parquet_table_of_another_schema_is_refused(tmp_path):
    other = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("rank", pa.int64()), ("run_id", pa.string())])
    _spark_parquet_table(tmp_path / "out", schema=other)
    with pytest.raises(OutputError, match=r"do not hold the output schema: missing \['first_stage_rank', .*wrong types \{'rank': 'int64 \(expected int32\)'\}"):
        check_output(str(tmp_path / "out"), fmt="parquet", run_id="night-2")


def test_files_of_a_delta_run_that_never_committed(tmp_path):
    # The first Delta run died before its commit: a rerun completes it, a Parquet run may not.
    write = tmp_path / "out" / "run_id=night-1" / ("0123456789abcdef" * 2)
    write.mkdir(parents=True)
    (write / "part-00000.parquet").write_bytes(b"")
    check_output(str(tmp_path / "out"), fmt="delta", run_id="night-1")
    with pytest.raises(OutputError, match="holds files of a Delta run that never committed"):
        check_output(str(tmp_path / "out"), fmt="parquet", run_id="night-1")


def test_a_partition_folder_holding_other_folders_is_foreign(tmp_path):
    (tmp_path / "out" / "run_id=night-1" / "photos").mkdir(parents=True)
    with pytest.raises(OutputError, match=r"is neither empty nor a table of this job \(found \['run_id=night-1/photos'\]\)"):
        check_output(str(tmp_path / "out"), fmt="delta", run_id="night-1")
