"""The demo end to end: the trained stand-in lifts nDCG@10 through the whole Spark job.

This is the end-to-end proof that scores reach the right rows: a job that mixed up
query/doc ids, scores or ranks could not beat the first stage.
"""

from __future__ import annotations

import pytest

from dear_udf import schema as S

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def test_demo_job_lifts_ndcg_over_first_stage(spark, tmp_path, capsys):
    from dear_udf.demo import _show_metrics, _show_top, run_demo
    from dear_udf.io.delta_commit import read_table

    summary, collection = run_demo(tmp_path / "demo", train_steps=60, spark=spark)
    metrics = summary.metrics
    assert metrics["reranked"]["nDCG@10"] >= metrics["first_stage"]["nDCG@10"] + 0.2
    assert summary.accounted
    # The bad rows of the demo collection are counted, not lost.
    assert summary.dropped == {"doc_id_not_in_corpus": 2, "duplicate_candidate": 1, "empty_query_text": 5}
    assert summary.queries_with_nothing_to_rank == ["q41"]
    table = read_table(summary.output)
    assert table.num_rows == summary.output_rows == 40 * 10
    assert set(table.column(S.RUN_ID).to_pylist()) == {"demo"}
    # What the command prints: the metrics table and top results.
    _show_metrics(metrics)
    _show_top(collection, tmp_path / "demo" / "reranked", 1)
    out = capsys.readouterr().out
    assert "nDCG@10" in out and "first stage" in out
    assert (tmp_path / "demo" / "reranked.trec").read_text().count("\n") == 400
