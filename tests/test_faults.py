"""Failures are survived and lose nothing: the output equals a failure-free run's (issue 4).

Faults are injected with ``dear_udf.testing.faults`` (``DEAR_RERANK_TEST_HOOKS``), which
leaves a marker for every scoring attempt and every fault fired in ``DEAR_RERANK_FAULT_DIR``;
each test checks the markers, so it fails if the fault silently did not happen.

- a scoring task failing on its first attempt, and a Python worker killed mid-partition
  (one run, one fault per partition): Spark retries them (the shared ``spark`` fixture is
  ``local[2,3]``, three attempts per task);
- an executor JVM killed during the scoring stage of ``spark-submit`` on a standalone cluster
  on 127.0.0.1 (``tests/cluster.py``): the output still equals local mode's, row for row;
- the driver killed after writing its files and before the Delta commit: the table is as
  before, and a rerun completes it; rerunning again changes nothing;
- CUDA out-of-memory errors (faked on CPU): the scorer halves its micro-batches and the
  count reaches the run summary.

This file is also the subprocess's script: ``python -m tests.test_faults SPEC.json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dear_udf import schema as S
from dear_udf.testing.faults import DIR_ENV, ENV, armed

from .jobdata import job_values

pytestmark = [pytest.mark.fault, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4


def _values(paths, model_dir, output, **extra):
    # Several Arrow batches per scoring partition, so a kill lands mid-partition.
    return job_values(paths, model_dir, output, **{"arrow_batch_size": 16, **extra})


def _rows(path):
    """The table's rows as sortable tuples (scores exact: a retry must not drift)."""
    from deltalake import DeltaTable

    table = DeltaTable(str(path)).to_pyarrow_table()
    return sorted(tuple(r[c] for c in S.OUTPUT_COLUMNS) for r in table.to_pylist())


def _markers(directory: Path, pattern: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob(pattern))]


def _wait_for(directory: Path, pattern: str, timeout: float, alive=lambda: True) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _markers(directory, pattern)
        if found:
            return found[0]
        if not alive():
            raise AssertionError(f"the process ended before {pattern} appeared in {directory}")
        time.sleep(0.2)
    raise AssertionError(f"no {pattern} in {directory} after {timeout}s")


def _subprocess_job_script(spec_path: str) -> None:
    """Run the spec's jobs in one SparkSession (this process's own) and write their
    summaries: a driver a test can kill (faults reach it through its environment)."""
    spec = json.loads(Path(spec_path).read_text())
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from dear_udf.config import build_job_config
    from dear_udf.spark.job import run_job
    from dear_udf.spark.session import get_session

    spark = get_session(master=spec["master"], conf=spec.get("conf", {}), arrow_batch_size=16)
    spark.sparkContext.setLogLevel("ERROR")
    results = {run["name"]: run_job(build_job_config(run["config"]), spark=spark).as_dict() for run in spec["runs"]}
    Path(spec["result"]).write_text(json.dumps(results, default=str))
    spark.stop()


def _spec(tmp: Path, master: str, runs: list[dict]) -> dict:
    return {
        "master": master,
        "conf": {
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.local.dir": str(tmp / "spark-local"),
            "spark.sql.warehouse.dir": str(tmp / "warehouse"),
        },
        "runs": runs,
        "result": str(tmp / "result.json"),
    }


def _python(args: list[str], **kwargs):
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYTHONPATH=str(REPO))
    env.update(kwargs.pop("env", {}))
    return [sys.executable, "-m", "tests.test_faults", *args], dict(env=env, cwd=REPO, **kwargs)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from .jobdata import write_inputs

    return write_inputs(tmp_path_factory.mktemp("fault-inputs"))


# -- task retries, in the shared local[2,3] session ----------------------------------------


def _clean_values(data, model, output, **extra):
    """The runs the faulty ones are compared with: every pair kept (top-12 of 12), two scoring
    partitions, Arrow batches of 16: the same micro-batches, so the same scores, bit for bit."""
    return _values(data["paths"], model, output, top_k=12, scoring_partitions=2, **extra)


@pytest.fixture(scope="module")
def clean(spark, tiny_models, data, tmp_path_factory):
    """A failure-free run in the shared session: the reference of the retry and OOM tests."""
    from dear_udf.config import build_job_config
    from dear_udf.spark.job import run_job

    out = tmp_path_factory.mktemp("clean") / "out"
    summary = run_job(build_job_config(_clean_values(data, tiny_models["index227"], out)), spark=spark)
    return summary.as_dict(), _rows(out)


@pytest.fixture(scope="module")
def retried(spark, tiny_models, data, tmp_path_factory):
    """One run in the shared session (``local[2,3]``: three attempts per task): scoring
    partition 0 fails on its first attempt while partition 1's Python worker is killed on
    its first. (One faulty run, not one per fault, and the clean reference from the same
    session and the same partitions and batches.)"""
    from dear_udf.config import build_job_config
    from dear_udf.spark.job import run_job

    tmp = tmp_path_factory.mktemp("retries")
    faults = tmp / "faults"
    with armed(spark, "fail-first-attempt@0,kill-worker-first-attempt@1", faults):
        summary = run_job(build_job_config(_clean_values(data, tiny_models["index227"], tmp / "out")), spark=spark)
    return faults, summary.as_dict(), _rows(tmp / "out")


def _assert_same_as_clean(retried, clean) -> None:
    _, faulty, rows = retried
    summary, clean_rows = clean
    assert faulty["accounted"] and faulty["queries_accounted"]
    for key in ("candidates_read", "pairs_scored", "dropped", "output_rows", "output_queries"):
        assert faulty[key] == summary[key], key
    assert faulty["pairs_scored"] == 144 and len(rows) == 144
    assert rows == clean_rows


def test_failed_scoring_task_is_retried_and_output_is_identical(retried, clean):
    faults, faulty, _ = retried
    assert faulty["settings"]["fault_injection"] == "fail-first-attempt@0,kill-worker-first-attempt@1"
    # The fault fired on attempt 0 of partition 0, which was retried once, and the retry
    # scored every pair exactly as the failed attempt had (same batches).
    assert _markers(faults, "fail-p0-a0-*.json"), sorted(os.listdir(faults))
    assert not _markers(faults, "fail-p1-*.json")
    assert _markers(faults, "attempt-p0-a1-*.json")
    assert not _markers(faults, "attempt-p0-a2-*.json")
    (first,) = _markers(faults, "scores-p0-a0-*.json")
    (second,) = _markers(faults, "scores-p0-a1-*.json")
    assert first["batches"] > 1 and first["scores"] and first["scores"] == second["scores"]
    _assert_same_as_clean(retried, clean)


def test_killed_python_worker_is_retried_and_output_is_identical(retried, clean):
    faults, _, _ = retried
    (kill,) = _markers(faults, "kill-p1-a0-*.json")
    assert not _markers(faults, "kill-p0-*.json")
    with pytest.raises(ProcessLookupError):
        os.kill(kill["pid"], 0)  # that worker is gone
    (retry,) = _markers(faults, "scores-p1-a1-*.json")
    assert retry["pid"] != kill["pid"]
    # What the killed worker had already handed over equals the retry's start.
    assert kill["scores"] and retry["scores"][: len(kill["scores"])] == kill["scores"]
    assert not _markers(faults, "attempt-p1-a2-*.json")
    _assert_same_as_clean(retried, clean)


# -- an executor lost on a standalone cluster ----------------------------------------------


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        pid = _parent(pid)
        chain.append(pid)
    return chain


@pytest.mark.cluster
def test_executor_lost_during_scoring_is_survived(spark, tiny_models, data, tmp_path):
    """``spark-submit jobs/rerank.py`` on a standalone master with two workers on 127.0.0.1
    equals the local-mode run row for row, even though one executor dies mid-stage.

    This is also the suite's one standalone-cluster run (the job as a cluster runs it: a
    driver submitted by ``spark-submit``, executor JVMs, worker-side Python): a second,
    failure-free submission cost another two minutes of CI and proved nothing this one
    does not.
    """
    from dear_udf.config import build_job_config
    from dear_udf.spark.job import run_job

    from .cluster import spark_submit, standalone_cluster

    paths = data["paths"]
    local_out, cluster_out, faults = tmp_path / "local", tmp_path / "cluster", tmp_path / "faults"
    # The same partitions and Arrow batches as the cluster run below: the same micro-batches.
    local = _values(paths, tiny_models["index227"], local_out, scoring_partitions=4, arrow_batch_size=10000)
    run_job(build_job_config(local), spark=spark)

    args = ["--queries", paths["queries"], "--corpus", paths["corpus"], "--candidates", paths["candidates"],
            "--model", str(tiny_models["index227"]), "--device", "cpu", "--top-k", "5", "--run-id", "night-1",
            "--batch-size", "16", "--partitions", "4", "--output", str(cluster_out)]
    conf = {
        # The first task of scoring partition 0 waits there until its executor is killed.
        f"spark.executorEnv.{ENV}": "sleep-once:120@0",
        f"spark.executorEnv.{DIR_ENV}": str(faults),
    }
    result: list = []
    with standalone_cluster(tmp_path / "cluster-scratch", workers=2) as (master, env, workers):
        submit = threading.Thread(
            target=lambda: result.append(spark_submit(master, env, args, scratch=tmp_path / "submit", conf=conf, timeout=420))
        )
        submit.start()
        sleeping = _wait_for(faults, "sleep-p0-*.json", timeout=240, alive=submit.is_alive)
        chain = _ancestors(sleeping["pid"])
        executor = next(pid for pid in chain if "CoarseGrainedExecutorBackend" in _cmdline(pid))
        assert {w.pid for w in workers} & set(chain), "the executor is not a standalone worker's child"
        os.kill(executor, signal.SIGKILL)
        submit.join(timeout=450)
    assert result, "spark-submit did not finish"
    done = result[0]
    assert done.returncode == 0, done.stderr[-6000:]
    assert "accounted=True" in done.stdout
    assert "scored=144" in done.stdout
    assert "Lost executor" in done.stderr or "ExecutorLostFailure" in done.stderr
    # Partition 0 was scored again after its first task died with the executor.
    attempts = _markers(faults, "attempt-p0-*.json")
    assert len(attempts) >= 2 and len({a["pid"] for a in attempts}) == len(attempts)
    assert len(_rows(cluster_out)) == 12 * 5
    assert _rows(cluster_out) == _rows(local_out)


# -- the driver killed between writing files and committing --------------------------------


def test_driver_killed_before_commit_leaves_table_unchanged_and_rerun_completes(spark, tiny_models, data, tmp_path):
    from deltalake import DeltaTable

    from dear_udf.config import build_job_config
    from dear_udf.spark.job import run_job

    out, faults = tmp_path / "table", tmp_path / "faults"
    model = tiny_models["index227"]
    # Every run of this night shares one score cache: the first scores, the others find
    # every score there and start no scoring task, so the killed driver is killed at its
    # commit after a run that loaded no model (what is tested is the commit, not scoring).
    def night(top_k):
        return _values(data["paths"], model, out, top_k=top_k, cache=str(tmp_path / "cache"))

    run_job(build_job_config(night(5)), spark=spark)
    before = _rows(out)
    version = DeltaTable(str(out)).version()
    assert len(before) == 60

    # The same night again with top-3, in a driver of its own that is killed mid-write.
    spec = _spec(tmp_path, "local[2]", [{"name": "killed", "config": night(3)}])
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    log = open(tmp_path / "killed.log", "w")
    command, options = _python(
        [str(tmp_path / "spec.json")],
        env={ENV: "pause-before-commit:600", DIR_ENV: str(faults)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the driver and its JVM die together
    )
    driver = subprocess.Popen(command, **options)
    try:
        paused = _wait_for(faults, "before-commit-*.json", timeout=300, alive=lambda: driver.poll() is None)
        assert paused["pid"] == driver.pid
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        log.close()
    assert driver.returncode == -signal.SIGKILL

    # Its files were written, yet the table is exactly as before: same version, same rows.
    orphans = paused["files"]
    assert orphans and all((out / f).is_file() for f in orphans)
    table = DeltaTable(str(out))
    assert table.version() == version
    live = {uri.split(str(out).rstrip("/") + "/", 1)[-1] for uri in table.file_uris()}
    assert live and not set(orphans) & live
    assert _rows(out) == before
    assert json.loads((tmp_path / "table.night-1.summary.json").read_text())["settings"]["top_k"] == 5  # not the killed run's

    # The rerun completes the night: its top-3 equals the top-3 of the earlier top-5.
    top3 = [r for r in before if r[S.OUTPUT_COLUMNS.index(S.RANK)] <= 3]
    rerun = run_job(build_job_config(night(3)), spark=spark)
    assert _rows(out) == top3 and len(top3) == 36
    assert (rerun.pairs_scored, rerun.cache_hits) == (0, 144)
    # Rerunning a night that succeeded changes nothing: no duplicates, same rows.
    run_job(build_job_config(night(3)), spark=spark)
    assert _rows(out) == top3
    assert DeltaTable(str(out)).version() == version + 2


# -- CUDA out of memory, faked on CPU ------------------------------------------------------


def test_oom_splits_reach_the_summary_and_scores_stay_equal(spark, tiny_models, data, clean, tmp_path):
    from dear_udf.config import build_job_config
    from dear_udf.spark.job import run_job

    with armed(spark, "oom-over:4", tmp_path / "faults"):
        summary = run_job(build_job_config(_clean_values(data, tiny_models["index227"], tmp_path / "oom")), spark=spark)
    reference, clean_rows = clean
    assert reference["oom_splits"] == 0
    injected = sum(m["ooms"] for m in _markers(tmp_path / "faults", "scores-*.json"))
    # Each injected OOM on a batch of more than one pair is exactly one split.
    assert summary.oom_splits == injected > 0
    assert summary.settings["fault_injection"] == "oom-over:4"
    assert summary.pairs_scored == reference["pairs_scored"] == 144
    got = {(r[0], r[1]): r[3] for r in _rows(tmp_path / "oom")}
    want = {(r[0], r[1]): r[3] for r in clean_rows}
    assert got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) for k in want) <= TOL


if __name__ == "__main__":
    _subprocess_job_script(sys.argv[1])
