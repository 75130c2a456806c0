"""MLflow tracking: settings, defaults, names and failures.

The job itself is logged to a file store and read back with MLflow's client in
``tests/test_wheel.py``, from the installed wheel (one job run serves both checks).
"""

from __future__ import annotations

import logging

import pytest

from dear_udf.config import build_job_config
from dear_udf.exceptions import ConfigError
from dear_udf.tracking import TrackingSpec, log_run, metric_name, tracking_spec


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
    from .jobdata import a_summary

    summary = a_summary(model="m#0", output=str(tmp_path / "t"))
    path = tmp_path / "t.summary.json"
    path.write_text(summary.to_json())
    with caplog.at_level(logging.WARNING, logger="dear_udf.tracking"):
        run = log_run(TrackingSpec(tracking_uri="no-such-scheme://tracking"), summary=summary, params={}, summary_path=str(path))
    assert run is None
    assert f"MLflow tracking failed; the run itself succeeded and its summary is at {path}" in caplog.text
