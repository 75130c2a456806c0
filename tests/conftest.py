"""Shared fixtures: tiny DeAR models built once per test session, offline."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _not_quiet(monkeypatch):
    """Tests that call ``dear_udf.cli.main`` switch on the CLI's process-wide quiet mode
    (``console.QUIET``); every test starts without it, as library code does."""
    from dear_udf import console

    monkeypatch.setattr(console, "QUIET", False)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of tiny-model tests: they run faster so, and on a
    shared 2-core machine under load OpenMP's spinning threads cost up to 100x on small
    matmuls (measured: 0.07 ms -> 8 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Paths of the tiny models: both pooling variants and a LoRA adapter over each."""
    from dear_udf.testing import build_lora_adapter, build_tiny_dear

    root = tmp_path_factory.mktemp("models")
    paths = {}
    for pooling in ("index227", "last"):
        base = build_tiny_dear(root / pooling, pooling=pooling)
        paths[pooling] = base
        paths[f"{pooling}-lora"] = build_lora_adapter(base, root / f"{pooling}-lora")
    paths["no-head-lora"] = build_lora_adapter(paths["index227"], root / "no-head-lora", with_score_head=False)
    return paths


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """A local Spark session with pinned settings, shared by the whole test run.

    ``local[2,3]``: two cores, and three attempts per task, as a cluster retries a failed
    task (``spark.task.maxFailures``): the retry tests run here, not in a Spark of their own.
    """
    import sys

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from dear_udf.spark.session import get_session

    scratch = tmp_path_factory.mktemp("spark")
    session = get_session(
        master="local[2,3]",
        conf={
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.local.dir": str(scratch / "local"),
            "spark.sql.warehouse.dir": str(scratch / "warehouse"),
            "spark.sql.pyspark.jvmStacktrace.enabled": "true",
        },
        arrow_batch_size=64,
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory):
    """The wheel ``make dist`` builds, built once per test run into a temporary folder."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    dist = tmp_path_factory.mktemp("dist")
    # -o setup: the running interpreter's environment is the project's; do not rebuild it.
    result = subprocess.run(
        ["make", "-s", "-o", "setup", "dist", f"PY={sys.executable}", f"DIST={dist}"],
        cwd=root, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = sorted(dist.glob("dear_rerank-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]
