"""A Spark standalone master and workers on 127.0.0.1, started and stopped by tests.

The pip pyspark ships ``bin/spark-class`` (not ``sbin/start-master.sh``), so the daemons
are started directly as child processes and stopped with their process groups.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path


def spark_home() -> str:
    import pyspark

    return os.path.dirname(pyspark.__file__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(scratch: Path) -> dict:
    env = dict(os.environ)
    env.update(
        SPARK_HOME=spark_home(),
        SPARK_LOCAL_IP="127.0.0.1",
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        SPARK_LOG_DIR=str(scratch / "logs"),
        SPARK_WORKER_DIR=str(scratch / "work"),
        HF_HUB_OFFLINE="1",
    )
    return env


def _wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def standalone_cluster(scratch: Path, *, workers: int = 2, cores: int = 1, memory: str = "2g"):
    """Yield (master_url, env, worker_processes); everything started is stopped after."""
    scratch.mkdir(parents=True, exist_ok=True)
    env = _env(scratch)
    spark_class = os.path.join(spark_home(), "bin", "spark-class")
    port = free_port()
    procs: list[subprocess.Popen] = []

    def start(args: list[str], name: str) -> subprocess.Popen:
        log = open(scratch / f"{name}.log", "w")
        proc = subprocess.Popen([spark_class, *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        start(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(free_port())], "master")
        _wait_port(port)
        master = f"spark://127.0.0.1:{port}"
        worker_procs = []
        for i in range(workers):
            worker_procs.append(
                start(
                    [
                        "org.apache.spark.deploy.worker.Worker", master, "--host", "127.0.0.1",
                        "--cores", str(cores), "--memory", memory, "--webui-port", str(free_port()),
                        "--work-dir", str(scratch / f"work-{i}"),
                    ],
                    f"worker-{i}",
                )
            )
        _wait_workers(scratch, workers)
        yield master, env, worker_procs
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _wait_workers(scratch: Path, workers: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = (scratch / "master.log").read_text(errors="replace")
        if text.count("Registering worker") >= workers:
            return
        time.sleep(0.3)
    raise TimeoutError(f"{workers} workers did not register: see {scratch / 'master.log'}")


def spark_submit(master: str, env: dict, args: list[str], *, scratch: Path, conf: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``spark-submit jobs/rerank.py ARGS`` against ``master``."""
    repo = Path(__file__).resolve().parents[1]
    command = [
        os.path.join(spark_home(), "bin", "spark-submit"),
        "--master", master,
        "--conf", "spark.driver.host=127.0.0.1",
        "--conf", f"spark.local.dir={scratch / 'local'}",
        "--conf", "spark.ui.enabled=false",
        "--conf", "spark.executor.memory=1g",
        "--conf", "spark.sql.shuffle.partitions=4",
    ]
    for key, value in (conf or {}).items():
        command += ["--conf", f"{key}={value}"]
    command += [str(repo / "jobs" / "rerank.py"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=repo)
