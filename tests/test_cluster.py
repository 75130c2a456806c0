"""The job under spark-submit on a standalone master with two workers on 127.0.0.1."""

from __future__ import annotations

import pytest

from dear_udf import schema as S

from .cluster import spark_submit, standalone_cluster
from .jobdata import write_inputs

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _topk_rows(path):
    from deltalake import DeltaTable

    table = DeltaTable(str(path)).to_pyarrow_table()
    return sorted((r[S.QUERY_ID], r[S.RANK], r[S.DOC_ID], round(r[S.SCORE], 4)) for r in table.to_pylist())


def test_spark_submit_on_standalone_cluster_matches_local_mode(spark, tiny_models, tmp_path):
    from dear_udf.config import build_job_config
    from dear_udf.spark.job import run_job

    data = write_inputs(tmp_path / "inputs")
    paths = data["paths"]
    common = ["--queries", paths["queries"], "--corpus", paths["corpus"], "--candidates", paths["candidates"],
              "--model", str(tiny_models["index227"]), "--device", "cpu", "--top-k", "5", "--run-id", "r1"]

    local_out = tmp_path / "local"
    run_job(
        build_job_config({"queries": paths["queries"], "corpus": paths["corpus"], "candidates": paths["candidates"],
                          "output": str(local_out), "model": {"model": str(tiny_models["index227"]), "device": "cpu"},
                          "top_k": 5, "run_id": "r1"}),
        spark=spark,
    )

    cluster_out = tmp_path / "cluster"
    with standalone_cluster(tmp_path / "cluster-scratch", workers=2) as (master, env, _):
        result = spark_submit(master, env, [*common, "--output", str(cluster_out), "--partitions", "4"], scratch=tmp_path / "submit")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "accounted=True" in result.stdout
    local, cluster = _topk_rows(local_out), _topk_rows(cluster_out)
    assert len(cluster) == 12 * 5
    assert [r[:3] for r in cluster] == [r[:3] for r in local]
    for a, b in zip(cluster, local):
        assert abs(a[3] - b[3]) <= 1e-4
