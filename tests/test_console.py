"""What the terminal shows: quiet libraries without -v, a JVM silenced only if we started it."""

from __future__ import annotations

import io
import logging
import os
import warnings

import pytest

from dear_udf import console


@pytest.fixture
def restore(monkeypatch):
    """configure() changes process-wide state: put it back after each test."""
    for key in console._QUIET_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(console, "QUIET", False)
    level = logging.getLogger("dear_udf").level
    with warnings.catch_warnings():
        yield monkeypatch
    logging.getLogger("dear_udf").setLevel(level)


def test_quiet_without_verbose(restore):
    restore.setenv("TRANSFORMERS_VERBOSITY", "info")  # a user's own choice is kept
    console.configure(verbose=False)
    assert console.QUIET
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"  # also transformers' own bars
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "info"
    assert logging.getLogger("dear_udf").getEffectiveLevel() == logging.INFO  # stage lines


def test_verbose_hides_nothing(restore):
    console.configure(verbose=True)
    assert not console.QUIET
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ


def test_info_lines_are_short_and_the_rest_say_level_and_logger():
    formatter = console._Formatter()
    info = logging.LogRecord("dear_udf.spark.job", logging.INFO, __file__, 1, "score done in %.1fs", (3.0,), None)
    warn = logging.LogRecord("dear_udf.tracking", logging.WARNING, __file__, 1, "MLflow tracking failed", (), None)
    assert formatter.format(info).split(" ", 1)[1] == "score done in 3.0s"
    assert formatter.format(warn).split(" ", 1)[1] == "WARNING dear_udf.tracking: MLflow tracking failed"


def test_only_a_jvm_we_start_ourselves_is_silenced(restore):
    from pyspark import SparkContext

    from dear_udf.spark.session import _quiet_launch_wanted

    restore.setattr(SparkContext, "_gateway", None)
    restore.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    restore.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    assert not _quiet_launch_wanted()  # -v, or not the CLI
    restore.setattr(console, "QUIET", True)
    assert _quiet_launch_wanted()
    restore.setenv("PYSPARK_GATEWAY_PORT", "41234")  # spark-submit's driver
    assert not _quiet_launch_wanted()
    restore.delenv("PYSPARK_GATEWAY_PORT")
    restore.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    assert not _quiet_launch_wanted()
    restore.delenv("DATABRICKS_RUNTIME_VERSION")
    restore.setattr(SparkContext, "_gateway", object())  # a JVM already runs here
    assert not _quiet_launch_wanted()


def test_no_progress_bar_off_a_terminal():
    stream = io.StringIO()
    with console.progress_bar(100, desc="scoring", unit="pairs", file=stream) as bar:
        bar.update(100)
    assert bar.disable and stream.getvalue() == ""
