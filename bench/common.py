"""What every benchmark scenario shares: paths, model shapes, machine facts, memory
sampling threads, core counts and the result files.

Scenarios (``scoring.py``, ``scaling.py``) import this; ``run.py`` picks one.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` puts bench/, not the root, on the path
    sys.path.insert(0, str(ROOT))

RESULTS_DIR = ROOT / "bench" / "results"
MIB = 2**20

# Model shapes (``build_tiny_dear`` / Llama config arguments). "tiny" is build_tiny_dear's
# default (hidden 64, 2 layers); "quick" is the CPU benchmark model; "3b"/"8b" follow
# Llama-3.2-3B and Llama-3.1-8B; "smoke" exercises the full-mode path without a GPU.
SHAPES: dict[str, dict[str, int]] = {
    "tiny": {},
    "quick": dict(hidden_size=256, layers=4, heads=4, kv_heads=2, intermediate_size=688),
    "smoke": dict(hidden_size=128, layers=2, heads=4, kv_heads=2, intermediate_size=344, vocab_size=128256),
    "3b": dict(hidden_size=3072, layers=28, heads=24, kv_heads=8, intermediate_size=8192, vocab_size=128256),
    "8b": dict(hidden_size=4096, layers=32, heads=32, kv_heads=8, intermediate_size=14336, vocab_size=128256),
}


def read_proc(path: str) -> str | None:
    """A ``/proc`` file's text, or None when the process is gone."""
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return None


def cores(master: str) -> int:
    """The cores of a ``local[N]`` master (``local[*]``: this machine's)."""
    inside = master[master.find("[") + 1 : master.find("]")] if "[" in master else ""
    if inside == "*":
        return os.cpu_count() or 1
    try:
        return int(inside.split(",")[0])
    except ValueError:
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_info(device: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "cpu_model": _lscpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_start": load_average(),
        "git_commit": _git_commit(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _lscpu_model() -> str | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or None
    for line in out.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def new_report(args: Any, command: str, device: str) -> dict[str, Any]:
    """The header every result file starts with."""
    return {
        "name": args.name,
        "mode": args.mode,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "device": device,
        "machine": machine_info(device),
    }


def write_json(report: dict[str, Any], name: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def job_config(paths: dict[str, str], model: Path, output: Path, *, master: str, depth: int, run_id: str, where: str, **extra: Any) -> Any:
    """The job's settings for a benchmark night: Parquet inputs, the tiny model on CPU,
    top-10 to a Delta table; ``extra`` adds settings (``cache``, ``chunk_pairs``)."""
    from dear_udf.config import build_job_config

    values = {
        "queries": {"path": paths["queries"], "format": "parquet"},
        "corpus": {"path": paths["corpus"], "format": "parquet"},
        "candidates": {"path": paths["candidates"], "format": "parquet"},
        "output": str(output),
        "run_id": run_id,
        "top_k": 10,
        "depth": depth,
        "model": {"model": str(model), "device": "cpu", "local_files_only": True},
        "master": master,
        **{k: v for k, v in extra.items() if v is not None},
    }
    return build_job_config(values, where=where)


def finish_cpu_args(args: Any, parser: Any, name: str) -> None:
    """``finish_args`` of a scenario that measures the CPU job: the device is the CPU, the
    results file ``<name>.json`` unless ``--name`` says otherwise."""
    args.device = args.device or "cpu"
    if args.device != "cpu":
        parser.error(f"--mode {args.mode} measures the CPU job; --device must be cpu.")
    args.name = args.name or name


def print_header(header: str) -> None:
    """A table's column header and its rule."""
    print(header)
    print("-" * len(header))


class SamplingThread:
    """Calls ``sample()`` every ``interval`` seconds in a daemon thread while entered.

    torch releases the GIL inside its kernels, so the samples keep coming while a model runs.
    """

    def __init__(self, interval: float):
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.sample()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


class PeakRSS(SamplingThread):
    """Peak resident set size of this process while the block runs (sampled every 5 ms).

    ``ru_maxrss`` only ever grows over the whole process, so it cannot tell contestants
    apart; a sampling thread can.
    """

    def __init__(self, interval: float = 0.005):
        super().__init__(interval)
        self.peak = 0

    def sample(self) -> None:
        statm = read_proc("/proc/self/statm")
        if statm:
            self.peak = max(self.peak, int(statm.split()[1]) * os.sysconf("SC_PAGE_SIZE"))
