"""--config: packaged profiles by name (what a wheel install has), YAML files by path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from dear_udf.config import build_job_config, load_yaml, merge, profile_names
from dear_udf.exceptions import ConfigError

CONF = Path(__file__).resolve().parent.parent / "dear_udf" / "conf"
REQUIRED = {"queries": "q", "corpus": "c", "candidates": "r", "output": "o", "model": {"model": "m"}}


def test_packaged_profiles_by_name():
    assert profile_names() == ["databricks", "gpu-cluster", "local"]
    for name in profile_names():
        assert load_yaml(name) == yaml.safe_load((CONF / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", ["databricks", "gpu-cluster", "local"])
def test_every_profile_builds_a_job_config(name):
    """A profile with a misspelt key would only fail on the night it is used."""
    values = load_yaml(name)
    config = build_job_config(merge(values, REQUIRED), where=name)  # the profile's model: keys too
    for key, value in values.items():
        if key in ("model", "layout"):
            assert all(getattr(getattr(config, key), k) == v for k, v in value.items()), key
        elif key == "spark_conf":
            assert dict(config.spark_conf) == {k: str(v) for k, v in value.items()}
        elif key not in ("queries", "corpus", "candidates"):
            assert getattr(config, key) == value, key


@pytest.mark.parametrize("name", ["databricks", "gpu-cluster", "local"])
def test_a_profile_holds_only_what_differs_from_the_defaults(name):
    """A default is written on its field; a profile restating it would hide a change of it.
    Spark settings every run applies when it builds its session are not restated either."""
    from dear_udf.config import JobConfig
    from dear_udf.model import ModelSpec
    from dear_udf.spark.session import _local_defaults, scoring_conf
    from dear_udf.tokenization import Layout

    values = load_yaml(name)
    restated = [k for k, v in values.items() if _default(JobConfig, k) == v]
    for key, cls in (("model", ModelSpec), ("layout", Layout)):
        restated += [f"{key}.{k}" for k, v in values.get(key, {}).items() if _default(cls, k) == v]
    applied = {**scoring_conf(values.get("arrow_batch_size", _default(JobConfig, "arrow_batch_size")))}
    if str(values.get("master", "")).startswith("local"):
        applied.update(_local_defaults())
    restated += [k for k, v in values.get("spark_conf", {}).items() if applied.get(k) == str(v)]
    assert restated == []


def _default(cls, name):
    field = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    return None if field is None or field.default is dataclasses.MISSING else field.default


def test_gpu_profile_runs_one_task_per_gpu_without_speculation():
    from dear_udf.spark.session import scoring_conf

    conf = load_yaml("gpu-cluster")["spark_conf"]
    assert conf["spark.task.resource.gpu.amount"] == "1" and conf["spark.executor.resource.gpu.amount"] == "1"
    # Every run's session turns speculation off, over any profile's setting.
    assert scoring_conf(4096)["spark.speculation"] == "false"


def test_a_path_is_a_file_and_a_bare_name_a_profile(tmp_path, monkeypatch):
    mine = tmp_path / "mine.yaml"
    mine.write_text("top_k: 7\n")
    assert load_yaml(str(mine)) == {"top_k": 7}
    assert load_yaml(mine) == {"top_k": 7}
    # A file named like a profile in the current folder does not shadow the profile.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local").write_text("top_k: 3\n")
    assert load_yaml("local")["master"] == "local[2]"
    assert load_yaml("./local") == {"top_k": 3}
    with pytest.raises(ConfigError, match=r"config 'prod' is not a packaged profile \(\['databricks', 'gpu-cluster', 'local'\]\) nor a path"):
        load_yaml("prod")
    with pytest.raises(ConfigError, match="missing.yaml: cannot read config file"):
        load_yaml("missing.yaml")
