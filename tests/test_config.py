"""Settings: the run-id rule, YAML and flag values refused in words (issue 13, case 10)."""

from __future__ import annotations

import pytest

from dear_udf.exceptions import ConfigError
from dear_udf.schema import check_run_id, partition_folder


@pytest.mark.parametrize(
    "run_id",
    ["2026-11-22", "night-1", "2024-05-01 T03:00", "nuit d'été", "a b", "x" * 200, "日" * 80],
)
def test_run_ids_that_name_a_partition_are_accepted(run_id):
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize(
    ("run_id", "message"),
    [
        ("", "run_id must not be empty"),
        ("a%2Fb", r"run_id must not hold '%'"),
        ("a/b", r"run_id must not hold '/'"),
        ("a=b", r"run_id must not hold '='"),
        ("a\nb", "run_id must not hold control characters or line breaks, got 'a\\\\nb'"),
        ("a\tb", "control characters"),
        ("a\u2028b", "line breaks"),
        (" night", "must not start or end with whitespace"),
        ("night ", "must not start or end with whitespace"),
        ("x" * 201, "run_id must be at most 200 characters \\(it has 201\\)"),
        (":" * 100, "too long for a partition folder name"),  # each ':' becomes '%3A'
        ("__HIVE_DEFAULT_PARTITION__", "null partition"),
        (20261122, "run_id must be a string, not int"),
    ],
)
def test_run_ids_that_break_partitions_are_refused_by_rule(run_id, message):
    with pytest.raises(ConfigError, match=message):
        check_run_id(run_id)


def test_partition_folder_escapes_as_spark_does():
    assert partition_folder("2024-05-01 T03:00") == "run_id=2024-05-01 T03%3A00"


# -- YAML and flags ------------------------------------------------------------------------

REQUIRED_FLAGS = ["--queries", "q.tsv", "--corpus", "c.tsv", "--candidates", "r.trec", "--output", "out"]


def _from_cli(tmp_path, yaml_text: str | None, *flags: str):
    from dear_udf.cli import build_parser
    from dear_udf.spark.job import config_from_args

    argv = ["run", *REQUIRED_FLAGS, *flags]
    if yaml_text is not None:
        path = tmp_path / "job.yaml"
        path.write_text(yaml_text)
        argv += ["--config", str(path)]
    return config_from_args(build_parser().parse_args(argv))


def _cli_error(capsys, tmp_path, yaml_text: str | None, *flags: str) -> str:
    """Run ``dear-rerank run``; return its one-line error (exit status 2, no traceback)."""
    from dear_udf.cli import main

    argv = ["run", *REQUIRED_FLAGS, *flags]
    if yaml_text is not None:
        (tmp_path / "job.yaml").write_text(yaml_text)
        argv += ["--config", str(tmp_path / "job.yaml")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dear-rerank run: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [("model: m\nrun_id: 2026-11-22\n", "2026-11-22"), ("model: m\nrun_id: 20261122\n", "20261122")],
)
def test_yaml_dates_and_integers_are_run_ids_as_written(tmp_path, yaml_text, expected):
    config = _from_cli(tmp_path, yaml_text)
    assert config.run_id == expected
    assert config.summary_path == f"out.{expected}.summary.json"


def test_yaml_timestamp_run_id_must_be_quoted(capsys, tmp_path):
    err = _cli_error(capsys, tmp_path, "model: m\nrun_id: 2026-11-22 03:00:00\n")
    assert "run_id datetime.datetime(2026, 11, 22, 3, 0) was read as a datetime; quote it" in err


def test_yaml_model_given_as_a_path_is_the_model(tmp_path):
    config = _from_cli(tmp_path, "model: /models/dear-8b\n", "--device", "cpu")
    assert (config.model.model, config.model.device) == ("/models/dear-8b", "cpu")
    assert _from_cli(tmp_path, "model: /models/dear-8b\n").model.model == "/models/dear-8b"


@pytest.mark.parametrize(
    ("yaml_text", "flags", "message"),
    [
        ("model: m\ntop_k: [1\n", (), r"job.yaml: not valid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'"),
        ("model: !!python/object/apply:os.system [echo hi]\n", (), "job.yaml: not valid YAML at line 1, column 8: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
        ("model: m\nspark_conf: [a, b]\n", (), r"job.yaml: spark_conf must map Spark settings to values, e.g. .*got \['a', 'b'\]"),
        ("model: m\nqueries: {path: q.tsv, columns: [query_id]}\n", (), r"job.yaml: queries: columns must map canonical names to column names, .*got \['query_id'\]"),
        ("model: [a]\n", (), r"job.yaml: model must be a mapping or a path, got \['a'\]"),
        ("model: m\nmax_tokens: 0\n", (), "job.yaml: max_tokens must be a positive integer, got 0."),
        (None, ("--model", "m", "--partitions", "-1"), "flags: scoring_partitions must be a positive integer, got -1."),
        (None, ("--model", "m", "--max-tokens", "-5"), "flags: max_tokens must be a positive integer, got -5."),
        (None, ("--model", "m", "--max-drop-share", "1.5"), "flags: max_drop_share must be a number from 0 to 1, got 1.5."),
        (None, ("--model", "m", "--run-id", "a\nb"), r"flags: run_id must not hold control characters or line breaks, got 'a\\nb'."),
        (None, ("--model", "m", "--run-id", "x" * 300), "flags: run_id must be at most 200 characters \\(it has 300\\)"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_setting(capsys, tmp_path, yaml_text, flags, message):
    import re

    assert re.search(message, _cli_error(capsys, tmp_path, yaml_text, *flags))


# -- defaults: written on their fields, shown in the help from there ------------------------


def _commands():
    from dear_udf.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices


def _setting_fields():
    import dataclasses

    from dear_udf.config import JobConfig
    from dear_udf.model import ModelSpec
    from dear_udf.serve.settings import ServeSettings
    from dear_udf.tokenization import Layout
    from dear_udf.tracking import TrackingSpec

    return {f.name: f for cls in (JobConfig, ModelSpec, Layout, TrackingSpec, ServeSettings) for f in dataclasses.fields(cls) if "flag" in f.metadata}


def test_a_flags_help_shows_its_fields_default_written_nowhere_else():
    import dataclasses

    fields = _setting_fields()
    shown = 0
    for name in ("run", "score", "serve"):
        for action in _commands()[name]._actions:
            field = fields.get(action.dest)
            if field is None:
                continue
            assert action.default is None, action.dest  # not given: the YAML file or the field decides
            written = field.metadata["flag"][1]["help"]
            written = written() if callable(written) else written
            if field.default in (dataclasses.MISSING, None) or isinstance(field.default, bool):
                assert action.help == written
                continue
            assert "default" not in written, f"{action.dest}: the help restates its default"
            assert action.help == f"{written} (default: {field.default})"
            shown += 1
    assert shown >= 20  # run's top_k, depth, batch_size..., serve's host, port...


def test_score_and_serve_take_the_jobs_micro_batch_flags_and_defaults():
    import inspect

    from dear_udf.config import SCORER_SETTINGS, JobConfig
    from dear_udf.scorer import CPU_TOKEN_BUDGET, Scorer

    flags = {name: {a.dest: (a.option_strings, a.type, a.help) for a in _commands()[name]._actions} for name in ("run", "score", "serve")}
    for setting in SCORER_SETTINGS:
        assert flags["run"][setting] == flags["score"][setting] == flags["serve"][setting]
    assert f"(default: {CPU_TOKEN_BUDGET} on CPU, none on GPU)" in flags["run"]["max_tokens"][2]
    job = JobConfig.__dataclass_fields__["batch_size"].default
    assert inspect.signature(Scorer).parameters["batch_size"].default == job
