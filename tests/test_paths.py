"""Paths as users write them (issue 20): one decision of what a path is, used for the output,
the given cache, the scratch cache, the summary, the TREC file and the inputs.

The table below is written from what each form means where users write it (Spark's
``file:/`` printing, Databricks' ``dbfs:/`` and Unity Catalog volumes, cloud URIs), not
from the helper under test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dear_udf.config import build_job_config, default_summary_path
from dear_udf.exceptions import OutputError
from dear_udf.paths import location
from dear_udf.spark.score_step import cache_location, scratch_cache_path
from dear_udf.spark.preflight import check_file_target

# written as -> (local OS path, or None for a remote location; its parent folder as written)
FORMS = {
    "dbfs:/tables/reranked": (None, "dbfs:/tables"),
    "file:/tmp/t/reranked": ("/tmp/t/reranked", "/tmp/t"),
    "file:///tmp/t/reranked": ("/tmp/t/reranked", "/tmp/t"),
    "file://localhost/tmp/t/reranked": ("/tmp/t/reranked", "/tmp/t"),
    "/Volumes/main/search/runs/reranked": ("/Volumes/main/search/runs/reranked", "/Volumes/main/search/runs"),
    "s3://bucket/tables/reranked": (None, "s3://bucket/tables"),
    "s3a://bucket/tables/reranked": (None, "s3a://bucket/tables"),
    "abfss://lake@acct.dfs.core.windows.net/tables/reranked": (None, "abfss://lake@acct.dfs.core.windows.net/tables"),
    "gs://bucket/tables/reranked": (None, "gs://bucket/tables"),
    "hdfs://namenode:8020/tables/reranked": (None, "hdfs://namenode:8020/tables"),
    "/abs/tables/reranked": ("/abs/tables/reranked", "/abs/tables"),
    "rel/tables/reranked": (os.path.join(os.getcwd(), "rel/tables/reranked"), os.path.join(os.getcwd(), "rel/tables")),
}


@pytest.mark.parametrize("written", list(FORMS))
def test_each_form_is_local_or_remote_once_and_for_all(written):
    local, parent = FORMS[written]
    where = location(written)
    assert where.local == local and where.is_local is (local is not None)
    # Spark gets the OS path of a local location (never "<cwd>/file:/..."), a URI as written.
    assert where.for_spark == (local if local is not None else written)
    assert where.name == "reranked"


@pytest.mark.parametrize("written", list(FORMS))
def test_the_scratch_cache_summary_and_given_cache_stay_where_the_output_is(written):
    local, parent = FORMS[written]
    scratch = scratch_cache_path(written, "2026-11-24")
    assert scratch == f"{parent}/.reranked.2026-11-24.score-cache"
    summary = default_summary_path(written, "2026-11-24")
    assert location(summary).is_local is (local is not None)
    assert location(summary).name == "reranked.2026-11-24.summary.json"
    if local is not None:
        assert location(summary).local == f"{local}.2026-11-24.summary.json"
    else:
        assert summary == f"{written}.2026-11-24.summary.json"
    config = build_job_config({"queries": "q", "corpus": "c", "candidates": "r", "model": "m", "output": written,
                               "run_id": "2026-11-24"})
    assert cache_location(config) == (location(scratch).local or scratch, True)
    given = cache_location(build_job_config({**_values(written), "cache": written + "-cache"}))
    assert given == (f"{local}-cache" if local is not None else f"{written}-cache", False)


def _values(output):
    return {"queries": "q", "corpus": "c", "candidates": "r", "model": "m", "output": output, "run_id": "n"}


def test_deltalake_opens_local_paths_and_object_stores_only():
    assert location("file:/tmp/x").for_deltalake == "/tmp/x"
    for uri in ("s3://b/x", "s3a://b/x", "gs://b/x", "abfss://c@a.dfs.core.windows.net/x"):
        assert location(uri).for_deltalake == uri
    for uri in ("dbfs:/x", "hdfs://nn/x"):
        assert location(uri).for_deltalake is None


def test_a_summary_or_trec_file_inside_the_table_is_refused_whatever_the_form(tmp_path):
    with pytest.raises(OutputError, match="is inside the output table folder"):
        check_file_target("dbfs:/tables/reranked/summary.json", setting="summary", output="dbfs:/tables/reranked")
    with pytest.raises(OutputError, match="is inside the output table folder"):
        check_file_target(f"file:{tmp_path}/out/run.trec", setting="trec_out", output=str(tmp_path / "out"))
    with pytest.raises(OutputError, match="a remote file is written through Spark; no session is running"):
        check_file_target("dbfs:/tables/reranked.summary.json", setting="summary", output="dbfs:/tables/reranked")
    check_file_target(f"file://{tmp_path}/reranked.summary.json", setting="summary", output=f"file:{tmp_path}/reranked")


@pytest.mark.parametrize("form", ["file:{}", "file://{}", "{}"])
def test_inputs_written_as_file_uris_are_read_from_the_local_disk(tmp_path, form):
    from dear_udf.config import InputSpec
    from dear_udf.io.formats import check_input, infer_format

    from deltalake import write_deltalake

    write_deltalake(str(tmp_path / "queries"), pa.table({"query_id": ["q1"], "query": ["llamas"]}))
    pq.write_table(pa.table({"doc_id": ["d1"], "text": ["x"]}), tmp_path / "corpus.parquet")
    assert infer_format(form.format(tmp_path / "queries")) == "delta"  # a folder: looked into on disk
    assert check_input(InputSpec(form.format(tmp_path / "corpus.parquet")), "corpus") == "parquet"
    from dear_udf.exceptions import InputError

    with pytest.raises(InputError, match="no such file"):
        check_input(InputSpec(form.format(tmp_path / "missing.parquet")), "corpus")


def test_remote_files_are_written_through_hadoop_beside_their_target(spark, tmp_path):
    """The summary and the TREC file of a remote output go through Spark's Hadoop file
    systems; here a file:// URI given straight to the uploader stands for the store."""
    from dear_udf.io.staged import StagedFile
    from dear_udf.spark import hadoop

    target = tmp_path / "runs" / "reranked.n1.summary.json"
    target.parent.mkdir()
    target.write_text("old")

    def upload(local, uri):
        hadoop.upload(spark, local, "file://" + str(target))

    staged = StagedFile("dbfs:/runs/reranked.n1.summary.json", upload=upload)
    staged.write_text('{"new": true}')
    assert target.read_text() == "old"  # nothing moves before publish
    staged.publish()
    assert target.read_text() == '{"new": true}'
    assert not os.path.exists(staged.tmp)
    assert sorted(p.name for p in target.parent.iterdir()) == ["reranked.n1.summary.json"]  # no staged leftovers
    with pytest.raises(OutputError, match="a remote file needs an uploader"):
        StagedFile("s3a://bucket/x.json")


@pytest.mark.spark
def test_a_local_run_with_file_uris_for_output_cache_and_trec_works_end_to_end(spark, tiny_models, tmp_path):
    from deltalake import DeltaTable

    from dear_udf.spark.job import run_job

    from .jobdata import job_config, write_inputs

    data = write_inputs(tmp_path / "in", queries=3, docs=20, per_query=4, seed=5)
    paths = {name: f"file:{p}" for name, p in data["paths"].items()}
    cwd = set(os.listdir(os.getcwd()))
    config = job_config(paths, tiny_models["index227"], f"file:{tmp_path}/out", cache=f"file://{tmp_path}/cache",
                        trec_out=f"file:{tmp_path}/run.trec", run_id="n1")
    summary = run_job(config, spark=spark)
    again = run_job(config, spark=spark)
    assert (summary.pairs_scored, again.cache_hits, again.pairs_scored) == (12, 12, 0)
    assert DeltaTable(str(tmp_path / "out")).to_pyarrow_table().num_rows == 12
    assert summary.cache == str(tmp_path / "cache")
    assert (tmp_path / "out.n1.summary.json").is_file() and len((tmp_path / "run.trec").read_text().splitlines()) == 12
    assert set(os.listdir(os.getcwd())) == cwd  # nothing written under the working folder ("file:/...")
    # Without --cache the scratch cache goes beside the file: output, and goes once committed.
    scratch = run_job(job_config(paths, tiny_models["index227"], f"file:{tmp_path}/out2", run_id="n1"), spark=spark)
    assert scratch.cache == str(tmp_path / ".out2.n1.score-cache") and not Path(scratch.cache).exists()
