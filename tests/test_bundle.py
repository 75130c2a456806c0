"""The Databricks Asset Bundle: its job runs the wheel's console script with arguments the
project itself accepts, on a GPU cluster laid out for one model per GPU.

The Databricks CLI is not needed: the bundle is parsed with PyYAML, its substitutions filled
in as the CLI would (variable defaults and target overrides, ``${bundle.target}``, the run's
start date for ``{{job.start_time.iso_date}}``), and its parameters go through
``dear_udf.cli.build_parser`` and ``config_from_args``, as ``dear-rerank`` does on the cluster.
"""

from __future__ import annotations

import configparser
import fnmatch
import re
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _bundle() -> tuple[dict, dict[Path, dict]]:
    top = yaml.safe_load((ROOT / "databricks.yml").read_text())
    included = {}
    for pattern in top["include"]:
        matches = sorted(ROOT.glob(pattern))
        assert matches, f"include {pattern!r} matches no file"
        for path in matches:
            included[path] = yaml.safe_load(path.read_text())
    return top, included


def _the_job():
    top, included = _bundle()
    jobs = [(path, key, job) for path, doc in included.items() for key, job in doc["resources"]["jobs"].items()]
    assert len(jobs) == 1, jobs
    return top, *jobs[0]


def _substitute(value, top: dict, target: str):
    variables = {name: spec.get("default") for name, spec in top.get("variables", {}).items()}
    variables.update(top["targets"][target].get("variables", {}))

    def one(match: re.Match) -> str:
        name = match.group(1)
        if name.startswith("var."):
            assert name[4:] in variables, f"undefined variable {name}"
            return str(variables[name[4:]])
        known = {"bundle.target": target, "bundle.name": top["bundle"]["name"], "workspace.current_user.userName": "someone@example.com"}
        assert name in known, f"unexpected substitution ${{{name}}}"
        return known[name]

    text = re.sub(r"\$\{([^}]+)\}", one, value)
    return text.replace("{{job.start_time.iso_date}}", "2026-11-23")


def test_bundle_follows_the_default_python_layout():
    top, included = _bundle()
    assert top["bundle"]["name"] == "dear_rerank"
    assert top["include"] == ["resources/*.yml"]
    assert top["targets"]["dev"] == {**top["targets"]["dev"], "mode": "development", "default": True}
    assert top["targets"]["prod"]["mode"] == "production"
    (artifact,) = top["artifacts"].values()
    assert artifact["type"] == "whl" and artifact["path"] == "."
    assert "-w dist" in artifact["build"] and "wheel" in artifact["build"]
    assert all(set(doc) == {"resources"} for doc in included.values())


def test_nightly_gpu_job_with_retries_and_a_schedule():
    top, _, _, job = _the_job()
    assert job["max_concurrent_runs"] == 1
    cron = job["schedule"]["quartz_cron_expression"].split()
    assert len(cron) in (6, 7) and cron[3:6] == ["*", "*", "?"]  # every day
    assert job["schedule"]["timezone_id"]
    (task,) = job["tasks"]
    assert task["max_retries"] >= 1
    (cluster,) = [c for c in job["job_clusters"] if c["job_cluster_key"] == task["job_cluster_key"]]
    conf = cluster["new_cluster"]["spark_conf"]
    assert conf["spark.task.resource.gpu.amount"] == "1"
    # The session exists before the job runs: the cluster carries what every run needs.
    from dear_udf.spark.session import REQUIRED_CONF

    assert {k: conf.get(k) for k in REQUIRED_CONF} == REQUIRED_CONF and REQUIRED_CONF["spark.speculation"] == "false"
    assert "-gpu-" in _substitute(cluster["new_cluster"]["spark_version"], top, "prod")


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_task_parameters_are_accepted_by_the_project(target, monkeypatch):
    from dear_udf.cli import build_parser
    from dear_udf.spark.job import config_from_args

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    top, _, _, job = _the_job()
    task = job["tasks"][0]["python_wheel_task"]
    parameters = [_substitute(p, top, target) for p in task["parameters"]]
    args = build_parser().parse_args(parameters)
    assert args.command == "run"
    config = config_from_args(args)
    assert config.run_id == "2026-11-23"  # one night, the same on every retry
    assert config.format == "delta" and config.queries.format == "table"  # from the databricks profile
    assert config.model.model == top["variables"]["model"]["default"] and config.model.dtype == "bfloat16"
    assert config.output == (top["targets"][target].get("variables", {}).get("output") or top["variables"]["output"]["default"])
    assert config.mlflow is not None and config.mlflow.experiment == f"/Shared/dear-rerank-{target}"
    if target == "dev":
        assert config.output != top["variables"]["output"]["default"]  # dev never writes the prod table


@pytest.mark.slow
def test_entry_point_and_every_path_exist_in_the_repository_or_the_wheel(built_wheel):
    top, job_file, _, job = _the_job()
    task = job["tasks"][0]
    wheel = zipfile.ZipFile(built_wheel)
    names = wheel.namelist()
    metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    entry_points = wheel.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()

    # Databricks finds the package by its normalised distribution name.
    dist_name = re.search(r"^Name: (.+)$", metadata, re.M).group(1)
    assert re.sub(r"[-_.]+", "_", dist_name).lower() == task["python_wheel_task"]["package_name"]
    # The entry point is the project's console script, dear_udf.cli:main.
    scripts = configparser.ConfigParser(delimiters=("=",))
    scripts.optionxform = str  # entry point names are case-sensitive
    scripts.read_string(entry_points)
    assert scripts["console_scripts"][task["python_wheel_task"]["entry_point"]] == "dear_udf.cli:main"

    # The libraries' wheel glob, relative to the job file, is where the artifact build puts it.
    for library in task["libraries"]:
        glob = job_file.parent / library["whl"]
        assert glob.parent.resolve() == (ROOT / "dist").resolve()
        assert fnmatch.fnmatch(built_wheel.name, glob.name)
    # --config names a profile packaged in the wheel.
    parameters = task["python_wheel_task"]["parameters"]
    profile = parameters[parameters.index("--config") + 1]
    assert f"dear_udf/conf/{profile}.yaml" in names
    # Every other relative path the bundle names exists in the repository.
    for path, doc in [(ROOT / "databricks.yml", top), (job_file, {"resources": {"jobs": {"x": job}}})]:
        for value in _strings(doc):
            if value.startswith(("./", "../")) and not value.endswith(".whl"):
                assert (path.parent / value).exists(), value


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
