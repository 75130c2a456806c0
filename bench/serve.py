"""``--mode serve``: ``dear-rerank serve`` under 1, 4 and 16 concurrent clients against the
in-process scorer on the same pairs and threads (issue 22).

The CPU benchmark model of ``--mode quick`` (``SHAPES["quick"]``: hidden 256, 4 layers,
built offline and saved), so the forward pass, not HTTP, dominates. ``--serve-requests``
requests of ``--docs-per-query`` documents each (``bench/data.py``, MS MARCO lengths), one
per query:

1. a live server (``dear-rerank serve --port 0``, its torch on ``--threads`` threads through
   ``OMP_NUM_THREADS``) on 127.0.0.1; for each client count, that many client threads, each
   with a keep-alive HTTP connection, send the requests (each request once per level) as
   fast as answers come back. Reported: pairs/s served (pairs / wall from the first send to
   the last answer), p50 and p99 latency, and from the server's ``/metrics`` the mean
   requests per scorer call and the mean queue wait;
2. the server stopped, the same model loaded in this process with ``torch.set_num_threads
   (--threads)``: ``Scorer.score`` once per request (what an application without a server
   would do) and once over all the pairs (its best case: one sorted call), repeated
   ``--repeats`` times, median.

Goal (issue 22): at 16 clients, pairs/s served >= 0.9x the better of the two in-process
numbers, and more than one request per scorer call. The served scores are checked against
the in-process ones (fp32: within 1e-5).

Example:
    python bench/run.py --mode serve --clients 1,4,16 --serve-requests 48 --threads 1
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import SHAPES, load_average, new_report, print_header
from bench.data import Pairs, generate, length_summary

MODES = ("serve",)
TARGET_RATIO = 0.9
TARGET_CLIENTS = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("serve mode (bench/serve.py)")
    group.add_argument("--clients", default="1,4,16", help="concurrent client counts (default 1,4,16)")
    group.add_argument("--serve-requests", type=int, default=48, help="requests per client count, one query of --docs-per-query documents each")
    group.add_argument("--serve-args", default="", help="extra flags for dear-rerank serve, e.g. '--max-wait-ms 10 --max-batch-pairs 1024'")


def finish_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    args.device = args.device or "cpu"
    if args.device != "cpu":
        parser.error("--mode serve measures the CPU server; --device must be cpu.")
    args.threads = args.threads or 1
    args.repeats = args.repeats or 2
    args.name = args.name or f"serve-cpu-{args.threads}thread"
    try:
        args.client_counts = [int(c) for c in args.clients.split(",")]
    except ValueError:
        parser.error(f"--clients must be comma-separated integers, got {args.clients!r}")


# -- the server ------------------------------------------------------------------------------


class LiveServer:
    """``dear-rerank serve`` in a subprocess on a free port of 127.0.0.1."""

    def __init__(self, model: Path, *, threads: int, extra: list[str], log: Path):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("DEAR_RERANK_API_KEY", None)
        self.log = log
        command = [sys.executable, "-m", "dear_udf.cli", "serve", "--model", str(model), "--device", "cpu", "--port", "0",
                   "--request-timeout", "600", "--max-queue", "1024", *extra]
        self.command = command
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        deadline = time.monotonic() + 300
        while True:
            found = re.search(r"listening on http://([^\s:]+):(\d+)", log.read_text())
            if found:
                self.host, self.port = found.group(1), int(found.group(2))
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.1)

    def metrics(self) -> dict:
        from dear_udf.serve.metrics import parse

        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        connection.close()
        return parse(text)

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(120)


def _value(metrics: dict, name: str) -> float:
    return metrics.get((name, ()), 0.0)


def run_clients(server: LiveServer, bodies: list[bytes], clients: int) -> dict[str, Any]:
    """Send every body once from ``clients`` threads; latencies, wall, answers by request."""
    lock = threading.Lock()
    next_request = iter(range(len(bodies)))
    latencies: list[float] = []
    answers: dict[int, dict] = {}
    errors: list[str] = []
    start_line = threading.Barrier(clients + 1)

    def client() -> None:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=600)
        start_line.wait()
        while True:
            with lock:
                i = next(next_request, None)
            if i is None:
                break
            sent = time.perf_counter()
            connection.request("POST", "/v1/rerank", body=bodies[i], headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read()
            elapsed = time.perf_counter() - sent
            with lock:
                if response.status != 200:
                    errors.append(f"{response.status}: {data[:200]!r}")
                latencies.append(elapsed)
                answers[i] = json.loads(data)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    before = server.metrics()
    start_line.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    after = server.metrics()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    calls = _value(after, "dear_rerank_batch_requests_count") - _value(before, "dear_rerank_batch_requests_count")
    requests = _value(after, "dear_rerank_batch_requests_sum") - _value(before, "dear_rerank_batch_requests_sum")
    waits = _value(after, "dear_rerank_queue_wait_seconds_sum") - _value(before, "dear_rerank_queue_wait_seconds_sum")
    ordered = sorted(latencies)
    return {
        "wall_seconds": wall,
        "latency_p50": statistics.median(ordered),
        "latency_p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "latency_max": ordered[-1],
        "scorer_calls": calls,
        "requests_per_call": requests / calls if calls else None,
        "mean_queue_wait": waits / requests if requests else None,
        "answers": answers,
    }


# -- in process --------------------------------------------------------------------------------


def in_process(model: Path, pairs: Pairs, per_request: int, *, threads: int, repeats: int) -> tuple[dict[str, Any], Any]:
    """The scorer in this process: once per request, and once over all the pairs."""
    import numpy as np
    import torch

    from dear_udf.model import ModelSpec, load_model
    from dear_udf.scorer import Scorer

    torch.set_num_threads(threads)
    scorer = Scorer(load_model(ModelSpec(model=str(model), device="cpu", local_files_only=True)))
    warm = slice(0, per_request)
    scorer.score(pairs.queries[warm], pairs.titles[warm], pairs.texts[warm])
    out: dict[str, Any] = {"per_request": [], "one_call": []}
    scores = None
    for _ in range(repeats):
        start = time.perf_counter()
        parts = []
        for begin in range(0, len(pairs), per_request):
            rows = slice(begin, begin + per_request)
            parts.append(scorer.score(pairs.queries[rows], pairs.titles[rows], pairs.texts[rows]))
        out["per_request"].append(time.perf_counter() - start)
        scores = np.concatenate(parts)
        start = time.perf_counter()
        scorer.score(pairs.queries, pairs.titles, pairs.texts)
        out["one_call"].append(time.perf_counter() - start)
    return {name: {"seconds": s, "pairs_per_s": len(pairs) / statistics.median(s)} for name, s in out.items()}, scores


# -- the scenario --------------------------------------------------------------------------------


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    import numpy as np

    from dear_udf.model import load_tokenizer
    from dear_udf.testing import build_tiny_dear
    from dear_udf.tokenization import Layout, PairEncoder

    report: dict[str, Any] = {**new_report(args, command, "cpu"), "threads": args.threads, "repeats": args.repeats}
    per_request = args.docs_per_query
    with tempfile.TemporaryDirectory(prefix="dear-bench-serve-") as tmp:
        workdir = Path(tmp)
        model = build_tiny_dear(workdir / "quick-model", pooling="index227", seed=0, **SHAPES["quick"])
        tokenizer = load_tokenizer(model)
        pairs = generate(n_queries=args.serve_requests, docs_per_query=per_request, seed=args.seed, tokenizer=tokenizer)
        ids = PairEncoder(tokenizer, Layout(), pool_pad_id=0, pad_id=tokenizer.pad_token_id).encode(pairs.queries, pairs.titles, pairs.texts).ids
        report["data"] = {
            "generator": "bench/data.py (MS MARCO-like token lengths)",
            "model": "build_tiny_dear(**SHAPES['quick']): hidden 256, 4 layers, fp32",
            "requests": args.serve_requests,
            "documents_per_request": per_request,
            "pairs": len(pairs),
            "lengths": length_summary(ids),
        }
        bodies = [
            json.dumps({"query": pairs.queries[b], "documents": pairs.texts[b : b + per_request]}).encode()
            for b in range(0, len(pairs), per_request)
        ]
        server = LiveServer(model, threads=args.threads, extra=args.serve_args.split(), log=workdir / "serve.log")
        report["server_command"] = " ".join(server.command[1:])
        levels = []
        try:
            run_clients(server, bodies[: min(4, len(bodies))], 2)  # warm-up: first calls, allocator
            for clients in args.client_counts:
                result = run_clients(server, bodies, clients)
                answers = result.pop("answers")
                levels.append({"clients": clients, "pairs_per_s": len(pairs) / result["wall_seconds"], **result})
                levels[-1]["_answers"] = answers
        finally:
            report["server_exit_status"] = server.stop()
        baseline, core_scores = in_process(model, pairs, per_request, threads=args.threads, repeats=args.repeats)
    best = max(baseline["per_request"]["pairs_per_s"], baseline["one_call"]["pairs_per_s"])
    for level in levels:
        answers = level.pop("_answers")
        served = np.empty(len(pairs), dtype=np.float64)
        for i, answer in answers.items():
            for result in answer["results"]:
                served[i * per_request + result["index"]] = result["relevance_score"]
        level["max_abs_vs_in_process"] = float(np.max(np.abs(served - core_scores)))
        level["ratio_vs_in_process_best"] = level["pairs_per_s"] / best
        level["ratio_vs_in_process_per_request"] = level["pairs_per_s"] / baseline["per_request"]["pairs_per_s"]
    report["levels"] = levels
    report["in_process"] = baseline
    target = next((lv for lv in levels if lv["clients"] == TARGET_CLIENTS), None)
    if target is not None:
        report["target"] = {
            "clients": TARGET_CLIENTS,
            "ratio": target["ratio_vs_in_process_best"],
            "requests_per_call": target["requests_per_call"],
            "met": target["ratio_vs_in_process_best"] >= TARGET_RATIO and (target["requests_per_call"] or 0) > 1,
        }
    report["machine"]["load_average_end"] = load_average()
    print_table(report)
    return report


def print_table(report: dict[str, Any]) -> None:
    data, base = report["data"], report["in_process"]
    print(
        f"\n{report['name']}: {data['requests']} requests x {data['documents_per_request']} documents = {data['pairs']} pairs "
        f"(mean {data['lengths']['mean']:.1f} ids/pair), torch threads {report['threads']}, load {report['machine']['load_average_start']}"
    )
    print(f"server: {report['server_command']}\n")
    print_header(f"{'clients':>7} {'pairs/s':>9} {'x in-proc':>9} {'p50 s':>7} {'p99 s':>7} {'req/call':>8} {'wait s':>7} {'max |diff|':>10}")
    for lv in report["levels"]:
        print(
            f"{lv['clients']:>7} {lv['pairs_per_s']:>9.1f} {lv['ratio_vs_in_process_best']:>9.2f} {lv['latency_p50']:>7.2f} "
            f"{lv['latency_p99']:>7.2f} {lv['requests_per_call']:>8.2f} {lv['mean_queue_wait']:>7.2f} {lv['max_abs_vs_in_process']:>10.2g}"
        )
    print(
        f"\nin process, same model and threads: {base['per_request']['pairs_per_s']:.1f} pairs/s one call per request, "
        f"{base['one_call']['pairs_per_s']:.1f} pairs/s one call for all (median of {report['repeats']})"
    )
    target = report.get("target")
    if target:
        print(
            f"goal at {target['clients']} clients (>= {TARGET_RATIO}x the better in-process number, > 1 request per call): "
            f"{target['ratio']:.2f}x, {target['requests_per_call']:.2f} requests per call -> {'MET' if target['met'] else 'NOT MET'}"
        )
    print(f"server exit status after SIGTERM: {report['server_exit_status']}")
