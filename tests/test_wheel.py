"""The wheel is the product: installed alone, it runs the demo and a job, and prints cleanly.

How the fresh environment is made, and why that is honest and cheap:

- ``python -m venv --without-pip`` makes an empty environment (a fraction of a second);
- ``pip --python <fresh> install --no-deps --no-index <wheel>`` installs the wheel that
  ``make dist`` built, exactly as a user or a Databricks cluster would, console script included;
- the pinned dependencies are not installed again: torch, pyspark and their friends are
  2.4 GB, and ``pip install "<wheel>[spark,eval,mlflow]" -c constraints.txt`` into a fresh
  venv took 3 CPU-minutes from a warm pip cache (23 minutes of wall time on the shared
  machine), against ~2 minutes allowed for all new tests. Instead, a ``.pth`` file appends
  the project environment's site-packages (built from ``constraints.txt`` by
  ``scripts/setup.sh``) to the fresh ``sys.path``. A ``.pth`` line only adds a folder: the
  ``.pth`` files inside it, among them the editable install's finder that maps ``dear_udf``
  to the checkout, are not run. So ``dear_udf`` can only come from the wheel. The first
  test checks that, along with the checkout being absent from ``sys.path`` (commands run
  from a temporary folder, ``PYTHONPATH`` unset) and every requirement the wheel declares
  being met.

What this catches: package data left out of the wheel (profiles, discovery script, log4j2
file), modules missing from it, imports that only work from a checkout, a broken entry point.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .jobdata import write_inputs

pytestmark = [pytest.mark.slow, pytest.mark.spark]

ROOT = Path(__file__).resolve().parent.parent
# What the issue asks the demo to print without -v: under 60 lines, none of these.
NOISE = ("WARN", "Loading weights", "Writing model shards", "it/s]", "\r", "log4j", "setLogLevel")


@pytest.fixture(scope="module")
def fresh(built_wheel, tmp_path_factory):
    root = tmp_path_factory.mktemp("fresh")
    venv = root / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120, env=env)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
         "--disable-pip-version-check", str(built_wheel)],
        check=True, timeout=300, env=env, cwd=root,
    )
    site = subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip()
    pinned = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "_dear_rerank_pinned_deps.pth").write_text("".join(f"{p}\n" for p in pinned))
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    work = root / "work"
    work.mkdir()
    return SimpleNamespace(venv=venv, python=python, script=venv / "bin" / "dear-rerank", site=Path(site), env=env, cwd=work)


def _run(fresh, *argv, env=None, timeout=600):
    """Run a command as a terminal shows it: stdout and stderr interleaved, in ``.stdout``."""
    return subprocess.run([str(a) for a in argv], cwd=fresh.cwd, env={**fresh.env, **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


INSPECT = r"""
import importlib.metadata as md, json, os, stat, sys
from packaging.requirements import Requirement
import dear_udf
from dear_udf.config import load_yaml, profile_names
from importlib.resources import files

dist = md.distribution("dear-rerank")
unmet = []
for line in dist.requires or []:
    req = Requirement(line)
    if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("", "spark", "eval", "mlflow")):
        continue
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        unmet.append(f"{req} (missing)")
        continue
    if not req.specifier.contains(have, prereleases=True):
        unmet.append(f"{req} (have {have})")
script = files("dear_udf") / "conf" / "gpu-discovery.sh"
print(json.dumps({
    "dear_udf": dear_udf.__file__,
    "dist": str(dist.locate_file("")),
    "sys_path": [os.path.abspath(p or os.curdir) for p in sys.path],
    "with_dear_udf": [os.path.abspath(p or os.curdir) for p in sys.path if os.path.isfile(os.path.join(p or os.curdir, "dear_udf", "__init__.py"))],
    "profiles": profile_names(),
    "databricks_dtype": load_yaml("databricks")["model"]["dtype"],
    "local_master": load_yaml("local")["master"],
    "discovery_executable": bool(os.stat(str(script)).st_mode & stat.S_IXUSR),
    "log4j": (files("dear_udf") / "conf" / "log4j2-quiet.properties").is_file(),
    "entry_point": [ep.value for ep in dist.entry_points if ep.group == "console_scripts" and ep.name == "dear-rerank"],
    "unmet": unmet,
}))
"""


def test_the_wheel_installs_alone_with_its_profiles(fresh):
    result = _run(fresh, fresh.python, "-c", INSPECT)
    assert result.returncode == 0, result.stdout
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(info["dear_udf"]).is_relative_to(fresh.site), info["dear_udf"]
    assert Path(info["dist"]).resolve() == fresh.site.resolve()
    # Only the wheel's copy is importable: not the checkout (in CI the project's .venv, whose
    # site-packages the fresh environment borrows, lives inside the checkout).
    assert ROOT not in [Path(p).resolve() for p in info["sys_path"]]
    assert [Path(p).resolve() for p in info["with_dear_udf"]] == [fresh.site.resolve()], info["with_dear_udf"]
    assert info["profiles"] == ["databricks", "gpu-cluster", "local"]
    assert info["databricks_dtype"] == "bfloat16" and info["local_master"] == "local[2]"
    assert info["discovery_executable"] and info["log4j"]
    assert info["entry_point"] == ["dear_udf.cli:main"]
    assert info["unmet"] == []


def test_demo_and_a_tracked_run_from_the_wheel_print_cleanly(fresh, monkeypatch):
    """The demo end to end, as a user runs it: the trained stand-in lifts nDCG@10 through the
    whole Spark job (a job that mixed up ids, scores or ranks could not beat the first
    stage), the bad rows are counted, and the output is what a person wants to read."""
    from dear_udf.io.delta_writer import read_table

    demo_dir = fresh.cwd / "demo"
    demo = _run(fresh, fresh.script, "demo", "--workdir", demo_dir, "--train-steps", "60")
    output = demo.stdout
    (fresh.cwd / "demo.log").write_text(output)  # kept in pytest's tmp folder for a post-mortem
    assert demo.returncode == 0, output
    lines = output.splitlines()
    assert len(lines) < 60, output
    for noise in NOISE:
        assert noise not in output, f"{noise!r} in the demo's output:\n{output}"
    # The stages as they finish, the summary with the bad rows counted, the metrics, top results.
    for step in ("read", "join", "score", "topk", "write", "evaluate"):
        assert re.search(rf"^\d\d:\d\d:\d\d {step} done in \d", output, re.M), step
    assert "candidates read=2008 scored=2000 cached=0 dropped=8 accounted=True" in output
    for reason, count in (("doc_id_not_in_corpus", 2), ("duplicate_candidate", 1), ("empty_query_text", 5)):
        assert f"  dropped {reason}: {count}\n" in output
    assert "queries with nothing to rank: 1\n" in output
    before, after = map(float, re.search(r"^nDCG@10 +(\d\.\d{4}) +(\d\.\d{4})$", output, re.M).groups())
    assert after >= before + 0.2, output
    assert re.search(r"^ +1 [ *] d\d+ ", output, re.M)
    table = read_table(str(demo_dir / "reranked"))
    assert table.num_rows == 40 * 10 and set(table.column("run_id").to_pylist()) == {"demo"}
    assert (demo_dir / "reranked.trec").read_text().count("\n") == 400

    # `run` with a packaged profile by name, on small inputs and the demo's model, tracked
    # in an MLflow file store (one job run serves both checks: a job costs CI a minute).
    data = write_inputs(fresh.cwd / "inputs")
    paths = data["paths"]
    qrels = fresh.cwd / "inputs" / "qrels.parquet"
    judged = [c for c in data["candidates"].to_pylist() if c["first_stage_rank"] in (2, 5)]
    pq.write_table(pa.table({"query_id": [c["query_id"] for c in judged], "doc_id": [c["doc_id"] for c in judged],
                             "relevance": [1] * len(judged)}), qrels)
    summary_path = fresh.cwd / "run" / "summary.json"
    uri = f"file:{fresh.cwd / 'mlruns'}"
    run = _run(
        fresh, fresh.script, "run", "--config", "local",
        "--queries", paths["queries"], "--corpus", paths["corpus"], "--candidates", paths["candidates"],
        "--qrels", qrels, "--model", demo_dir / "model", "--device", "cpu",
        "--output", fresh.cwd / "run" / "reranked", "--run-id", "wheel", "--summary", summary_path,
        "--mlflow-tracking-uri", uri, "--mlflow-experiment", "nightly",
        env={"MLFLOW_ALLOW_FILE_STORE": "true"},  # MLflow 3 keeps its file store for tests like this
    )
    output = run.stdout
    (fresh.cwd / "run.log").write_text(output)
    assert run.returncode == 0, output
    for noise in NOISE:
        assert noise not in output, f"{noise!r} in the output of run:\n{output}"
    assert "score done in" in output and "candidates read=144 scored=144 cached=0 dropped=0 accounted=True" in output
    summary = json.loads(summary_path.read_text())
    assert summary["format"] == "delta" and summary["run_id"] == "wheel" and summary["accounted"]
    # The packaged profile applied: its master (no --master given) and its top_k of 10.
    assert summary["settings"]["top_k"] == 10 and summary["output_rows"] == 12 * 10
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    _check_mlflow(uri, summary, summary_path, qrels)


def _check_mlflow(uri, summary, summary_path, qrels):
    """The run as MLflow's own client reads it back: params, metrics and both artifacts."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("nightly").experiment_id])
    assert run.info.run_name == "dear-rerank wheel"
    params = run.data.params
    assert params["run_id"] == "wheel" and params["top_k"] == "10" and params["batch_size"] == "128"
    assert params["model_fingerprint"] == summary["settings"]["model_fingerprint"]
    assert params["qrels"] == str(qrels)
    metrics = run.data.metrics
    assert metrics["pairs_scored"] == summary["pairs_scored"] == 144
    assert (metrics["cache_hits"], metrics["cache_misses"]) == (0, 144)
    assert metrics["output_rows"] == 120 and metrics["candidates_dropped"] == 0
    assert metrics["pairs_per_second"] == pytest.approx(summary["pairs_per_second"])
    assert metrics["seconds.score"] == pytest.approx(summary["stage_seconds"]["score"])
    for side in ("first_stage", "reranked", "delta"):
        assert metrics[f"{side}.nDCG_at_10"] == pytest.approx(summary["metrics"][side]["nDCG@10"])
    assert metrics["first_stage.RR_at_10"] == pytest.approx(0.5)  # ranks 2 and 5 are relevant
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["report.png", "summary.json"]
    local = summary_path.parent / "artifacts"
    local.mkdir()
    logged = Path(client.download_artifacts(run.info.run_id, "summary.json", str(local))).read_text()
    assert logged == summary_path.read_text()
    png = Path(client.download_artifacts(run.info.run_id, "report.png", str(local))).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png == (summary_path.parent / "summary.report.png").read_bytes()


def test_make_pack_commands_are_coherent(built_wheel, tmp_path):
    """`make pack` builds gigabytes, so CI only checks what it would run (`make -n`): a fresh
    venv, torch, then the wheel with extras it really declares under constraints.txt, packed
    by a venv-pack the project environment has."""
    import zipfile

    dist = built_wheel.parent
    dry = subprocess.run(
        ["make", "-n", "-o", "setup", "-o", "dist", "pack", f"PY={sys.executable}", f"DIST={dist}", f"PACK_ENV={tmp_path / 'env'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    commands = dry.stdout.splitlines()
    env = tmp_path / "env"
    assert f"python3 -m venv {env}" in commands
    install = next(c for c in commands if "-c constraints.txt" in c)
    extras = re.search(r"\.whl\)?\[([\w,]+)\]", install).group(1).split(",")
    with zipfile.ZipFile(built_wheel) as wheel:
        metadata = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    declared = set(re.findall(r"^Provides-Extra: (\S+)$", metadata, re.M))
    assert set(extras) <= declared and "spark" in extras, (extras, declared)
    assert (ROOT / "constraints.txt").is_file()
    pack = next(c for c in commands if "venv_pack" in c)
    assert pack.rstrip() == f"{sys.executable} -m venv_pack -p {env} -o {dist}/dear-rerank-env.tar.gz"
    assert subprocess.run([sys.executable, "-m", "venv_pack", "--help"], capture_output=True, timeout=60).returncode == 0
