"""MLflow tracking: a job logged to a local file store and read back with MLflow's client."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dear_udf.config import build_job_config
from dear_udf.exceptions import ConfigError
from dear_udf.tracking import TrackingSpec, log_run, metric_name, tracking_spec

from .jobdata import write_inputs


def test_mlflow_setting_from_yaml_and_flags(tmp_path, monkeypatch):
    from dear_udf.cli import build_parser
    from dear_udf.spark.job import config_from_args

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = ["run", "--queries", "q", "--corpus", "c", "--candidates", "r", "--model", "m", "--output", "o"]

    def config(*extra):
        return config_from_args(build_parser().parse_args([*base, *extra]))

    assert config().mlflow is None
    assert config("--mlflow").mlflow == TrackingSpec()
    assert config("--mlflow-experiment", "nightly").mlflow == TrackingSpec(experiment="nightly")
    profile = tmp_path / "tracked.yaml"
    profile.write_text("mlflow:\n  experiment: /Shared/dear-rerank\n  tracking_uri: databricks\n")
    # --mlflow keeps the file's settings; a flag value overrides its own key only.
    assert config("--config", str(profile), "--mlflow").mlflow == TrackingSpec("/Shared/dear-rerank", "databricks")
    assert config("--config", str(profile)).mlflow.experiment == "/Shared/dear-rerank"
    assert config("--config", str(profile), "--mlflow-experiment", "x").mlflow == TrackingSpec("x", "databricks")
    profile.write_text("mlflow: false\n")
    assert config("--config", str(profile)).mlflow is None

    values = {"queries": "q", "corpus": "c", "candidates": "r", "output": "o", "model": {"model": "m"}}
    with pytest.raises(ConfigError, match=r"mlflow: unknown key\(s\) \['uri'\]"):
        build_job_config({**values, "mlflow": {"uri": "x"}})
    with pytest.raises(ConfigError, match="mlflow must be true, false or a mapping, got 'yes'"):
        build_job_config({**values, "mlflow": "yes"})
    with pytest.raises(ConfigError, match="mlflow.experiment must be a non-empty string"):
        tracking_spec({"experiment": " "})


def test_databricks_tracks_to_its_workspace_by_default(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    assert TrackingSpec().resolved_tracking_uri() is None  # MLflow's own default
    assert TrackingSpec().resolved_experiment() == "dear-rerank"
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "16.4")
    assert TrackingSpec().resolved_tracking_uri() == "databricks"
    assert TrackingSpec(tracking_uri="http://mlflow:5000").resolved_tracking_uri() == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "/Shared/x")
    assert TrackingSpec().resolved_experiment() == "/Shared/x"


def test_metric_names_are_ones_mlflow_accepts():
    assert metric_name("nDCG@10") == "nDCG_at_10"
    assert metric_name("reranked.R@100") == "reranked.R_at_100"


def test_tracking_failure_is_a_warning_not_a_failed_night(tmp_path, caplog):
    from dear_udf.summary import RunSummary

    summary = RunSummary(run_id="night-1", model="m#0", output=str(tmp_path / "t"), format="delta")
    path = tmp_path / "t.summary.json"
    summary.write_json(str(path))
    with caplog.at_level(logging.WARNING, logger="dear_udf.tracking"):
        run = log_run(TrackingSpec(tracking_uri="no-such-scheme://tracking"), summary=summary, params={}, summary_path=str(path))
    assert run is None
    assert f"MLflow tracking failed; the run itself succeeded and its summary is at {path}" in caplog.text


@pytest.mark.spark
def test_job_logs_params_metrics_and_artifacts(spark, tiny_models, tmp_path, monkeypatch, caplog):
    from mlflow.tracking import MlflowClient

    from dear_udf.cli import build_parser
    from dear_udf.spark.job import config_from_args, run_job

    # MLflow 3 keeps its file store for existing users only; a test store in tmp is fine.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    data = write_inputs(tmp_path / "inputs", queries=6, docs=60, per_query=8)
    cands = data["candidates"].to_pylist()
    qrels = tmp_path / "inputs" / "qrels.parquet"
    pq.write_table(pa.table({
        "query_id": [c["query_id"] for c in cands if c["first_stage_rank"] in (2, 5)],
        "doc_id": [c["doc_id"] for c in cands if c["first_stage_rank"] in (2, 5)],
        "relevance": [1 for c in cands if c["first_stage_rank"] in (2, 5)],
    }), qrels)
    uri = f"file:{tmp_path / 'mlruns'}"
    paths = data["paths"]
    args = build_parser().parse_args([
        "run", "--queries", paths["queries"], "--corpus", paths["corpus"], "--candidates", paths["candidates"],
        "--qrels", str(qrels), "--model", str(tiny_models["index227"]), "--device", "cpu",
        "--output", str(tmp_path / "reranked"), "--run-id", "night-7", "--top-k", "5", "--batch-size", "16",
        "--mlflow-tracking-uri", uri, "--mlflow-experiment", "nightly",
    ])
    with caplog.at_level(logging.INFO, logger="dear_udf"):
        summary = run_job(config_from_args(args), spark=spark)
    # The stages are logged as they finish.
    for step in ("read", "join", "score", "topk", "write", "evaluate"):
        assert f"{step} done in " in caplog.text

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("nightly")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "dear-rerank night-7"
    params = run.data.params
    assert params["run_id"] == "night-7" and params["top_k"] == "5" and params["batch_size"] == "16"
    assert params["model_fingerprint"] == summary.settings["model_fingerprint"]
    assert params["qrels"] == str(qrels)
    metrics = run.data.metrics
    assert metrics["pairs_scored"] == summary.pairs_scored == 6 * 8
    assert metrics["output_rows"] == 6 * 5
    assert metrics["pairs_per_second"] == pytest.approx(summary.pairs_per_second)
    assert metrics["seconds.score"] == pytest.approx(summary.stage_seconds["score"])
    for side in ("first_stage", "reranked", "delta"):
        assert metrics[f"{side}.nDCG_at_10"] == pytest.approx(summary.metrics[side]["nDCG@10"])
    # ranks 2 and 5 relevant: the first stage's RR@10 is exactly 1/2.
    assert metrics["first_stage.RR_at_10"] == pytest.approx(0.5)

    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["report.png", "summary.json"]
    local = tmp_path / "artifacts"
    local.mkdir()
    logged = json.loads(open(client.download_artifacts(run.info.run_id, "summary.json", str(local))).read())
    assert logged == json.loads((tmp_path / "reranked.summary.json").read_text())
    png = open(client.download_artifacts(run.info.run_id, "report.png", str(local)), "rb").read()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png == (tmp_path / "reranked.report.png").read_bytes()
