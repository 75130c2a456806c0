"""Scaling of the Spark job on CPU: time against pairs, Python worker memory, Spark vs core.

``python bench/run.py --mode scaling`` runs ``dear_udf.spark.job.run_job`` (local Spark,
Delta or Parquet out) on MS MARCO-shaped pairs at several sizes in one Spark session, then
the in-process ``Scorer`` on the largest size's pairs with the same model, and reports:

- per size: stage seconds (``summary.stage_seconds``), score-stage and end-to-end pairs/s,
  and the peak RSS of the Spark Python workers, of the driver's Python process and of the
  JVM (in local mode the driver and the executor), sampled from ``/proc`` every
  ``--sample-interval`` seconds in a thread of this process;
- a least-squares line ``seconds = fixed + per_pair * pairs`` per stage, to show how far
  time is linear in pairs;
- the fixed start-up, measured apart: session start, model inspection on the driver and a
  first run on a handful of pairs (Python workers start and load the model there);
- the scoring core on the same cores: ``Scorer`` (the job's defaults: batch 128, CPU token
  budget) fed the pairs in chunks of ``--arrow-batch-size`` rows, tokenization included as
  in the job, with ``torch`` threads = the master's cores, then with 1 thread (what each
  Spark task gets: the UDF sets ``torch.set_num_threads(TaskContext.cpus())``).

Only this process and its descendants are sampled: other people's Spark runs on a shared
machine are left out, and the CPU they used during each run is reported instead
(machine busy CPU-seconds from ``/proc/stat`` minus this process tree's).

Inputs are generated in chunks of ``CHUNK_QUERIES`` queries, each with its own seed, and
written to Parquet as they come, so the driver never holds a whole size's pairs while
Spark runs, and a smaller size's pairs are the first rows of a larger one's.

Example:
    python bench/run.py --mode scaling --sizes 20000,80000,320000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import MIB, SHAPES, SamplingThread, cores, load_average, new_report, print_header, read_proc
from bench.data import generate, job_tables

# Shapes of common.SHAPES: "tiny" runs ~2000 pairs/s per core, so 320k pairs take
# minutes; "quick" (~170 pairs/s on 2 cores) would take half an hour.
SCALING_MODELS = ("tiny", "quick")
MODES = ("scaling",)
CHUNK_QUERIES = 100
RATIO_TARGET = 0.8  # issue 5: Spark score stage >= 0.8x the core's pairs/s on the same cores
ENV_RECORDED = ("TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYSPARK_PYTHON")


# -- sampling the process tree -------------------------------------------------------------


def _machine_busy_ticks() -> int:
    """Busy CPU ticks of the whole machine since boot (all but idle and iowait)."""
    text = read_proc("/proc/stat") or ""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            # user nice system idle iowait irq softirq steal (guest is inside user)
            return sum(values[:8]) - values[3] - values[4]
    return 0


@dataclass
class Window:
    """What the sampler saw between ``start`` and ``stop``."""

    started: float
    interval: float
    peak: dict[str, int] = field(default_factory=lambda: {"driver": 0, "jvm": 0, "worker": 0, "workers_total": 0})
    seen: dict[str, set] = field(default_factory=dict)  # kind -> (pid, start time) keys with RSS
    base_ticks: dict[tuple, int] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    machine_busy_start: int = 0
    series: list[list[float]] = field(default_factory=list)  # [t, driver, jvm, workers total] MiB
    samples: int = 0
    seconds: float = 0.0
    load_start: list[float] | None = None
    load_end: list[float] | None = None
    other_cpu_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "samples": self.samples,
            "peak_rss_mib": {k: round(v / MIB, 1) for k, v in self.peak.items()},
            "processes_seen": {k: len(v) for k, v in sorted(self.seen.items())},
            "cpu_seconds": {k: round(v, 2) for k, v in sorted(self.cpu_seconds.items())},
            "other_processes_cpu_seconds": None if self.other_cpu_seconds is None else round(self.other_cpu_seconds, 2),
            "load_average_start": self.load_start,
            "load_average_end": self.load_end,
            "rss_series_mib": self.series,
        }


class TreeSampler(SamplingThread):
    """RSS and CPU time of this process and its descendants, sampled in a daemon thread.

    Kinds: ``driver`` (this Python process), ``jvm`` (java: the Spark driver, and in local
    mode the executor), ``worker`` (Python processes whose command line holds ``pyspark``:
    ``pyspark.daemon`` and the workers it forks), ``other``. RSS is ``VmRSS`` of
    ``/proc/<pid>/status``; a forked worker's RSS counts pages it shares with the daemon.
    """

    def __init__(self, interval: float = 0.2, series_every: float = 1.0):
        super().__init__(interval)
        self.series_every = series_every
        self.root = os.getpid()
        self.tick = os.sysconf("SC_CLK_TCK")
        self.page = os.sysconf("SC_PAGE_SIZE")
        self._kinds: dict[tuple, str] = {}  # (pid, start time) -> kind
        self._ticks: dict[tuple, int] = {}  # last CPU ticks seen
        self._window: Window | None = None
        self._lock = threading.Lock()
        self._last_series = 0.0

    def _kind(self, pid: int) -> str:
        if pid == self.root:
            return "driver"
        argv = (read_proc(f"/proc/{pid}/cmdline") or "").split("\0")
        exe = os.path.basename(argv[0]) if argv else ""
        if exe.startswith("java"):
            return "jvm"
        if "python" in exe and any("pyspark" in a for a in argv):
            return "worker"
        return "other"

    def sample(self) -> None:
        """One look at the tree: RSS into the open window's peaks, CPU ticks remembered."""
        parents: dict[int, int] = {}
        stats: dict[int, list[str]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            text = read_proc(f"/proc/{entry.name}/stat")
            if not text:
                continue
            fields = text[text.rfind(")") + 2:].split()  # comm may hold spaces and parentheses
            pid = int(entry.name)
            parents[pid] = int(fields[1])
            stats[pid] = fields
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        tree, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            if pid in stats:
                tree.append(pid)
            todo.extend(children.get(pid, []))
        rss: dict[str, int] = {"driver": 0, "jvm": 0, "worker": 0, "other": 0}
        worst_worker = 0
        with self._lock:
            window = self._window
            for pid in tree:
                fields = stats[pid]
                key = (pid, fields[19])  # start time tells a reused pid apart
                if self._kinds.get(key, "other") == "other":
                    # Not cached for good while "other": spark-submit is a shell script
                    # that execs java under the same pid.
                    self._kinds[key] = self._kind(pid)
                kind = self._kinds[key]
                self._ticks[key] = int(fields[11]) + int(fields[12])  # utime + stime
                status = read_proc(f"/proc/{pid}/status") or ""
                value = 0
                for line in status.splitlines():
                    if line.startswith("VmRSS:"):
                        value = int(line.split()[1]) * 1024
                        break
                rss[kind] += value
                if kind == "worker":
                    worst_worker = max(worst_worker, value)
                if window is not None and value:
                    window.seen.setdefault(kind, set()).add(key)
            if window is None:
                return
            window.samples += 1
            peak = window.peak
            peak["driver"] = max(peak["driver"], rss["driver"])
            peak["jvm"] = max(peak["jvm"], rss["jvm"])
            peak["worker"] = max(peak["worker"], worst_worker)
            peak["workers_total"] = max(peak["workers_total"], rss["worker"])
            now = time.perf_counter()
            if now - self._last_series >= self.series_every:
                self._last_series = now
                window.series.append(
                    [round(now - window.started, 1), round(rss["driver"] / MIB), round(rss["jvm"] / MIB), round(rss["worker"] / MIB)]
                )

    @contextlib.contextmanager
    def window(self) -> Iterator[Window]:
        """Peaks and CPU seconds of the block; one sample is taken at each end."""
        self.sample()
        with self._lock:
            window = Window(started=time.perf_counter(), interval=self.interval)
            window.base_ticks = dict(self._ticks)
            window.machine_busy_start = _machine_busy_ticks()
            window.load_start = load_average()
            self._last_series = 0.0
            self._window = window
        try:
            yield window
        finally:
            self.sample()
            with self._lock:
                self._window = None
                window.seconds = time.perf_counter() - window.started
                mine = 0
                for key, ticks in self._ticks.items():
                    used = ticks - window.base_ticks.get(key, 0)
                    if used > 0:
                        kind = self._kinds[key]
                        window.cpu_seconds[kind] = window.cpu_seconds.get(kind, 0.0) + used / self.tick
                        mine += used
                window.other_cpu_seconds = max(0.0, (_machine_busy_ticks() - window.machine_busy_start - mine) / self.tick)
                window.load_end = load_average()


# -- inputs --------------------------------------------------------------------------------


def write_inputs(directory: Path, *, pairs: int, docs_per_query: int, seed: int, tokenizer: Any) -> dict[str, str]:
    """Write ``pairs`` candidate pairs as the job's Parquet inputs, one chunk at a time."""
    import pyarrow.parquet as pq

    if pairs % docs_per_query:
        raise ValueError(f"sizes must be multiples of --docs-per-query ({docs_per_query}), got {pairs}.")
    n_queries = pairs // docs_per_query
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: str(directory / f"{name}.parquet") for name in ("queries", "corpus", "candidates")}
    writers: dict[str, Any] = {}
    try:
        for chunk, first in enumerate(range(0, n_queries, CHUNK_QUERIES)):
            part = generate(
                n_queries=min(CHUNK_QUERIES, n_queries - first),
                docs_per_query=docs_per_query,
                seed=seed * 1_000_003 + chunk,
                tokenizer=tokenizer,
                first_query=first,
            )
            for name, table in job_tables(part).items():
                if name not in writers:
                    writers[name] = pq.ParquetWriter(paths[name], table.schema)
                writers[name].write_table(table)
    finally:
        for writer in writers.values():
            writer.close()
    return paths


def read_pairs(paths: dict[str, str]) -> tuple[list[str], list[str], list[str], list[str], list[str]]:
    """(query_ids, doc_ids, queries, titles, texts) in candidate order."""
    import pyarrow.parquet as pq

    queries = dict(zip(*pq.read_table(paths["queries"], columns=["query_id", "query"]).to_pydict().values()))
    corpus = pq.read_table(paths["corpus"]).to_pydict()
    candidates = pq.read_table(paths["candidates"], columns=["query_id", "doc_id"]).to_pydict()
    # write_inputs writes corpus and candidates row for row in the same order.
    assert corpus["doc_id"] == candidates["doc_id"]
    qids = candidates["query_id"]
    return qids, candidates["doc_id"], [queries[q] for q in qids], corpus["title"], corpus["text"]


# -- helpers -------------------------------------------------------------------------------


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float | None]:
    """Least-squares ``y = intercept + slope * x``, with R^2 and the worst relative residual."""
    if len(xs) < 2:
        return {"intercept": None, "slope": None, "r2": None, "max_rel_residual": None}
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    rel = [abs(y - intercept - slope * x) / y for x, y in zip(xs, ys) if y]
    return {
        "intercept": intercept,
        "slope": slope,
        "r2": 1 - ss_res / ss_tot if ss_tot else None,
        "max_rel_residual": max(rel) if rel else None,
    }


# -- the runs ------------------------------------------------------------------------------


def spark_runs(
    args: argparse.Namespace,
    *,
    model_path: Path,
    inputs: dict[str, dict[str, str]],
    workdir: Path,
    sampler: TreeSampler,
) -> dict[str, Any]:
    """Session start, model inspection, then ``run_job`` on each input set, in order."""
    from dear_udf.config import build_job_config
    from dear_udf.model import ModelSpec, inspect_model
    from dear_udf.spark.job import run_job
    from dear_udf.spark.session import get_session

    model = {"model": str(model_path), "device": "cpu", "local_files_only": True}
    start = time.perf_counter()
    inspect_model(ModelSpec(**model))  # what run_job does first on the driver
    inspect_seconds = time.perf_counter() - start

    n_cores = cores(args.spark_master)
    with sampler.window() as w:
        start = time.perf_counter()
        spark = get_session(
            master=args.spark_master,
            conf={"spark.sql.shuffle.partitions": str(n_cores)},
            arrow_batch_size=args.arrow_batch_size,
        )
        session_seconds = time.perf_counter() - start
    conf = spark.sparkContext.getConf()
    out: dict[str, Any] = {
        "master": args.spark_master,
        "cores": n_cores,
        # The JVM's heap is bounded by this (local mode: driver and executor in one JVM).
        "driver_memory": conf.get("spark.driver.memory", "1g (Spark's default)"),
        "session_start_seconds": round(session_seconds, 3),
        "session_start_window": w.as_dict(),
        "inspect_model_seconds": round(inspect_seconds, 3),
        "runs": {},
    }
    try:
        for label, paths in inputs.items():
            config = build_job_config(
                {
                    "queries": {"path": paths["queries"], "format": "parquet"},
                    "corpus": {"path": paths["corpus"], "format": "parquet"},
                    "candidates": {"path": paths["candidates"], "format": "parquet"},
                    "output": str(workdir / f"out-{label}"),
                    "format": args.output_format,
                    "run_id": "bench",
                    "top_k": 10,
                    "depth": args.docs_per_query,
                    "batch_size": args.batch_size,
                    "model": model,
                    "master": args.spark_master,
                    "arrow_batch_size": args.arrow_batch_size,
                    "scoring_partitions": args.partitions,
                },
                where="bench scaling",
            )
            print(f"  spark {label}: running ...", flush=True)
            with sampler.window() as w, contextlib.redirect_stdout(io.StringIO()):
                summary = run_job(config, spark=spark).as_dict()
            pairs = summary["pairs_scored"]
            runtime = spark._jvm.java.lang.Runtime.getRuntime()
            heap = {  # after the run: what of the JVM's RSS is Java heap, and its cap
                "used_mib": round((runtime.totalMemory() - runtime.freeMemory()) / MIB, 1),
                "committed_mib": round(runtime.totalMemory() / MIB, 1),
                "max_mib": round(runtime.maxMemory() / MIB, 1),
            }
            out["runs"][label] = {
                "pairs": pairs,
                "wall_seconds": summary["wall_seconds"],
                "stage_seconds": summary["stage_seconds"],
                "score_stage_pairs_per_s": summary["pairs_per_second"],
                "end_to_end_pairs_per_s": pairs / summary["wall_seconds"],
                "model_loads": summary["model_loads"],
                "computed_per_real_token": summary["computed_per_real_token"],
                "real_tokens": summary["real_tokens"],
                "output_rows": summary["output_rows"],
                "write": summary["write"],
                "settings": summary["settings"],
                "sampled": w.as_dict(),
                "jvm_heap_after": heap,
                "output": str(workdir / f"out-{label}"),
            }
            r = out["runs"][label]
            print(
                f"  spark {label}: {pairs} pairs, wall {r['wall_seconds']:.1f} s, score {r['stage_seconds']['score']:.1f} s "
                f"({r['score_stage_pairs_per_s']:.0f} pairs/s), worker peak {w.peak['worker'] / MIB:.0f} MiB, "
                f"load {w.load_start} -> {w.load_end}",
                flush=True,
            )
    finally:
        spark.stop()
    return out


def core_runs(
    args: argparse.Namespace,
    *,
    model_path: Path,
    paths: dict[str, str],
    threads: list[int],
    sampler: TreeSampler,
) -> tuple[dict[str, Any], dict[tuple[str, str], float]]:
    """The in-process ``Scorer`` on the same pairs, in Arrow-batch-sized chunks, per thread count.

    Returns the results and the scores of the first thread count's run by (query, doc).
    """
    import numpy as np
    import torch

    from dear_udf.model import ModelSpec, load_model
    from dear_udf.scorer import Scorer

    loaded = load_model(ModelSpec(model=str(model_path), dtype="float32", device="cpu", local_files_only=True))
    qids, dids, queries, titles, texts = read_pairs(paths)
    n, step = len(qids), args.arrow_batch_size
    chunks = [(None, queries[i : i + step], titles[i : i + step], texts[i : i + step]) for i in range(0, n, step)]
    Scorer(loaded, batch_size=args.batch_size).score(queries[:256], titles[:256], texts[:256])  # first-call costs
    results: dict[str, Any] = {}
    first_scores = None
    for count in threads:
        torch.set_num_threads(count)
        scorer = Scorer(loaded, batch_size=args.batch_size)  # the device's token budget, as in the job
        print(f"  core, {count} torch thread(s): running ...", flush=True)
        parts = []
        with sampler.window() as w:
            start, cpu_start = time.perf_counter(), time.process_time()
            for _, _, scores in scorer.score_stream(iter(chunks)):
                parts.append(scores)
            seconds = time.perf_counter() - start
            cpu_seconds = time.process_time() - cpu_start
        stats = scorer.stats.as_dict()
        results[f"threads_{count}"] = {
            "torch_threads": count,
            "pairs": n,
            "seconds": round(seconds, 3),
            "pairs_per_s": n / seconds,
            "model_seconds": round(stats["seconds"], 3),  # Scorer.score_ids: batching + forward
            "tokenize_and_other_seconds": round(seconds - stats["seconds"], 3),
            "cpu_seconds": round(cpu_seconds, 2),
            "computed_per_real_token": stats["computed_per_real_token"],
            "max_tokens": scorer.max_tokens,
            "batch_size": scorer.batch_size,
            "sampled": w.as_dict(),
        }
        r = results[f"threads_{count}"]
        print(
            f"  core, {count} thread(s): {r['pairs_per_s']:.0f} pairs/s ({seconds:.1f} s, model {stats['seconds']:.1f} s), "
            f"load {w.load_start} -> {w.load_end}",
            flush=True,
        )
        if first_scores is None:
            first_scores = np.concatenate(parts)
    assert first_scores is not None
    return results, {(q, d): float(s) for q, d, s in zip(qids, dids, first_scores)}


def _read_output(path: str, fmt: str) -> list[dict[str, Any]]:
    if fmt == "delta":
        from deltalake import DeltaTable

        return DeltaTable(path).to_pyarrow_table().to_pylist()
    import pyarrow.dataset as ds

    return ds.dataset(path, format="parquet", partitioning="hive").to_table().to_pylist()


def run_scaling(args: argparse.Namespace) -> dict[str, Any]:
    """The whole scaling benchmark; returns the report's ``scaling`` section."""
    import tempfile

    from transformers import AutoTokenizer

    from dear_udf.testing import build_tiny_dear

    sizes = [int(s) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.core_threads.split(",")] if args.core_threads else []
    with tempfile.TemporaryDirectory(prefix="dear-scaling-") as tmp, TreeSampler(args.sample_interval) as sampler:
        workdir = Path(tmp)
        shape = SHAPES[args.scaling_model]
        model_path = build_tiny_dear(workdir / "model", pooling="index227", seed=0, **shape)
        tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        inputs: dict[str, dict[str, str]] = {}
        start = time.perf_counter()
        startup_pairs = args.startup_pairs - args.startup_pairs % args.docs_per_query or args.docs_per_query
        for label, size in [("startup", startup_pairs)] + [(str(s), s) for s in sizes]:
            inputs[label] = write_inputs(
                workdir / f"in-{label}", pairs=size, docs_per_query=args.docs_per_query, seed=args.seed, tokenizer=tokenizer
            )
        print(f"inputs written in {time.perf_counter() - start:.1f} s", flush=True)
        del tokenizer

        spark = spark_runs(args, model_path=model_path, inputs=inputs, workdir=workdir, sampler=sampler)
        core: dict[str, Any] = {}
        if threads:
            core, core_scores = core_runs(args, model_path=model_path, paths=inputs[str(sizes[-1])], threads=threads, sampler=sampler)
            largest = spark["runs"][str(sizes[-1])]
            rows = _read_output(largest["output"], args.output_format)
            diffs = [abs(float(r["score"]) - core_scores[(r["query_id"], r["doc_id"])]) for r in rows]
            core["max_abs_topk_vs_core"] = max(diffs) if diffs else None
            core["topk_rows_compared"] = len(diffs)

    return {
        "model": {"builder": "dear_udf.testing.build_tiny_dear", "name": args.scaling_model, "shape": shape or "defaults (hidden 64, 2 layers, intermediate 128)"},
        "sizes": sizes,
        "startup_pairs": startup_pairs,
        "arrow_batch_size": args.arrow_batch_size,
        "partitions": args.partitions,
        "output_format": args.output_format,
        "sample_interval_seconds": args.sample_interval,
        # Inherited by the JVM and the Python workers. run.py sets TOKENIZERS_PARALLELISM
        # to "false" unless it is set already, so the job's workers and the core both
        # tokenize on one thread unless the caller says otherwise.
        "environment": {name: os.environ.get(name) for name in ENV_RECORDED},
        "spark": spark,
        "core": core,
        "analysis": analyse(spark, core, sizes),
    }


def analyse(spark: dict[str, Any], core: dict[str, Any], sizes: list[str | int]) -> dict[str, Any]:
    """Linear fits per stage, fixed start-up, and the Spark/core ratios at the largest size."""
    runs = [spark["runs"][str(s)] for s in sizes]
    xs = [float(r["pairs"]) for r in runs]
    stages = list(runs[0]["stage_seconds"])
    fits = {name: linear_fit(xs, [float(r["stage_seconds"][name]) for r in runs]) for name in stages}
    fits["wall"] = linear_fit(xs, [float(r["wall_seconds"]) for r in runs])
    startup = spark["runs"]["startup"]
    fixed = spark["session_start_seconds"] + startup["wall_seconds"]
    out: dict[str, Any] = {
        "fits": fits,
        "fixed_startup_seconds": round(fixed, 3),
        "fixed_startup_parts": {
            "session_start": spark["session_start_seconds"],
            "first_run_wall_on_startup_pairs": startup["wall_seconds"],
            "of_which_inspect_model_on_driver": spark["inspect_model_seconds"],
            "model_loads_in_first_run": startup["model_loads"],
        },
        "worker_peak_rss_mib": {str(s): r["sampled"]["peak_rss_mib"]["worker"] for s, r in zip(sizes, runs)},
        "cold_end_to_end_pairs_per_s": {str(s): r["pairs"] / (r["wall_seconds"] + fixed) for s, r in zip(sizes, runs)},
    }
    largest = runs[-1]
    cores = spark["cores"]
    same_cores = core.get(f"threads_{cores}")
    one = core.get("threads_1")
    if same_cores:
        out["ratio_score_stage_vs_core"] = largest["score_stage_pairs_per_s"] / same_cores["pairs_per_s"]
        out["ratio_end_to_end_vs_core"] = largest["end_to_end_pairs_per_s"] / same_cores["pairs_per_s"]
        out["ratio_cold_end_to_end_vs_core"] = out["cold_end_to_end_pairs_per_s"][str(sizes[-1])] / same_cores["pairs_per_s"]
        out["target_met"] = out["ratio_score_stage_vs_core"] >= RATIO_TARGET
    if one:
        # Spark runs `cores` tasks of one thread each: against perfect scaling of one thread.
        out["ratio_score_stage_vs_cores_x_core_1_thread"] = largest["score_stage_pairs_per_s"] / (cores * one["pairs_per_s"])
    return out


# -- report --------------------------------------------------------------------------------


def print_scaling(report: dict[str, Any]) -> None:
    s = report["scaling"]
    spark, core, a = s["spark"], s["core"], s["analysis"]
    print(
        f"\n{report['name']}: model {s['model']['name']} ({s['model']['shape']}), {spark['master']}, "
        f"{s['output_format']} output, Arrow batches of {s['arrow_batch_size']}, partitions {s['partitions'] or 'default'}"
    )
    header = (
        f"{'run':>8} {'pairs':>7} {'wall s':>7} {'read':>5} {'join':>5} {'score':>6} {'topk':>5} {'write':>5} "
        f"{'score p/s':>9} {'e2e p/s':>8} {'+start':>7} {'wkr MiB':>8} {'wkrs MiB':>8} {'drv MiB':>8} {'JVM MiB':>8} {'loads':>5} {'others CPU-s':>12} {'load':>15}"
    )
    print_header(header)
    for label, r in spark["runs"].items():
        st, peak = r["stage_seconds"], r["sampled"]["peak_rss_mib"]
        load = r["sampled"]["load_average_start"]
        print(
            f"{label:>8} {r['pairs']:>7} {r['wall_seconds']:>7.1f} {st.get('read', 0):>5.1f} {st.get('join', 0):>5.1f} "
            f"{st.get('score', 0):>6.1f} {st.get('topk', 0):>5.1f} {st.get('write', 0):>5.1f} "
            f"{r['score_stage_pairs_per_s']:>9.0f} {r['end_to_end_pairs_per_s']:>8.0f} "
            f"{r['pairs'] / (r['wall_seconds'] + a['fixed_startup_seconds']):>7.0f} {peak['worker']:>8.0f} "
            f"{peak['workers_total']:>8.0f} {peak['driver']:>8.0f} {peak['jvm']:>8.0f} {r['model_loads']:>5} "
            f"{r['sampled']['other_processes_cpu_seconds']:>12.1f} {' '.join(f'{x:.1f}' for x in load):>15}"
        )
    heap = {label: r["jvm_heap_after"]["committed_mib"] for label, r in spark["runs"].items()}
    print(f"JVM heap committed after each run (MiB, max {spark['runs']['startup']['jvm_heap_after']['max_mib']:.0f}): {heap}")
    print(
        f"\nfixed start-up {a['fixed_startup_seconds']:.1f} s = session start {spark['session_start_seconds']:.1f} s + first run on "
        f"{s['startup_pairs']} pairs {spark['runs']['startup']['wall_seconds']:.1f} s (inspect model on the driver "
        f"{spark['inspect_model_seconds']:.2f} s, model loads {spark['runs']['startup']['model_loads']})"
    )
    print("linear fits, seconds = fixed + per_pair * pairs (warm runs):")
    for name, fit in a["fits"].items():
        if fit["slope"] is None:
            continue
        print(
            f"  {name:>6}: fixed {fit['intercept']:>6.2f} s, {fit['slope'] * 1e6:>7.1f} us/pair, "
            f"R^2 {fit['r2']:.4f}, worst residual {fit['max_rel_residual']:.1%}"
        )
    for label, r in core.items():
        if not isinstance(r, dict):
            continue
        print(
            f"core {r['torch_threads']} thread(s): {r['pairs']} pairs, {r['seconds']:.1f} s, {r['pairs_per_s']:.0f} pairs/s "
            f"(model {r['model_seconds']:.1f} s, tokenize+other {r['tokenize_and_other_seconds']:.1f} s), "
            f"computed/real {r['computed_per_real_token']:.3f}, load {r['sampled']['load_average_start']}"
        )
    if "ratio_score_stage_vs_core" in a:
        print(
            f"Spark score stage / core ({spark['cores']} threads): {a['ratio_score_stage_vs_core']:.2f} "
            f"(target >= {RATIO_TARGET}: {'MET' if a['target_met'] else 'NOT MET'}); end to end (warm) "
            f"{a['ratio_end_to_end_vs_core']:.2f}; end to end with start-up {a['ratio_cold_end_to_end_vs_core']:.2f}"
        )
    if "ratio_score_stage_vs_cores_x_core_1_thread" in a:
        print(f"Spark score stage / ({spark['cores']} x core on 1 thread): {a['ratio_score_stage_vs_cores_x_core_1_thread']:.2f}")
    if core.get("max_abs_topk_vs_core") is not None:
        print(f"max |Spark top-k score - core| over {core['topk_rows_compared']} rows: {core['max_abs_topk_vs_core']:.3g}")


# -- the scenario ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scaling mode (bench/scaling.py)")
    group.add_argument("--sizes", default="20000,80000,320000", help="pairs per job run, ascending (default: %(default)s)")
    group.add_argument("--scaling-model", choices=SCALING_MODELS, default="tiny", help="build_tiny_dear shape (default: %(default)s)")
    group.add_argument("--output-format", choices=["delta", "parquet"], default="delta", help="job output (default: %(default)s)")
    group.add_argument("--arrow-batch-size", type=int, default=10000, help="rows per Arrow batch, and per core chunk (default: %(default)s)")
    group.add_argument("--partitions", type=int, default=None, help="scoring partitions (default: Spark's default parallelism)")
    group.add_argument("--batch-size", type=int, default=128, help="pairs per micro-batch, job and core (default: %(default)s)")
    group.add_argument("--startup-pairs", type=int, default=1000, help="pairs of the first run, which pays worker start and model loads")
    group.add_argument("--core-threads", default=None, help="torch threads of the in-process core runs (default: <cores>,1); '' skips them")
    group.add_argument("--sample-interval", type=float, default=0.2, help="seconds between RSS samples (default: %(default)s)")


def finish_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    args.device = args.device or "cpu"
    if args.device != "cpu":
        parser.error("--mode scaling measures the CPU job; --device must be cpu.")
    if args.core_threads is None:
        args.core_threads = f"{cores(args.spark_master)},1"
    args.name = args.name or "scaling-cpu"


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    report = new_report(args, command, "cpu")
    report["scaling"] = run_scaling(args)
    report["machine"]["load_average_end"] = load_average()
    print_scaling(report)
    return report
