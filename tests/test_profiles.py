"""--config: packaged profiles by name (what a wheel install has), YAML files by path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dear_udf.config import build_job_config, load_yaml, profile_names
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
    config = build_job_config({**REQUIRED, **{k: v for k, v in values.items() if k not in REQUIRED}}, where=name)
    assert config.format == values["format"]
    assert dict(config.spark_conf) == {k: str(v) for k, v in values["spark_conf"].items()}


def test_gpu_profiles_run_one_task_per_gpu_without_speculation():
    conf = load_yaml("gpu-cluster")["spark_conf"]
    assert conf["spark.task.resource.gpu.amount"] == "1" and conf["spark.speculation"] == "false"


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
