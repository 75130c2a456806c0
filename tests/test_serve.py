"""``dear-rerank serve`` as clients see it: real server processes, real HTTP clients.

Three servers start once for the module, in parallel, on free local ports, with the tiny
``index227`` model:

- ``main``: an API key, a small document and body limit, a 20 ms batching wait: both
  request shapes, the Cohere SDK and Jina's raw HTTP, concurrency with scores equal to
  ``dear-rerank score``, the refusals, /metrics;
- ``slow``: a 4 s batching wait and room for 3 requests, so requests stay in flight long
  enough to fill the queue (429) and to send SIGTERM while they wait;
- ``yaml``: started from a YAML file (``last-non-pad`` pooling, a 0.5 s timeout, batches of
  4 pairs) and without a key: the file's layout is served, and a request that waits is 504.

Scores are compared with ``dear-rerank score`` on a Parquet of the same pairs (fp32 CPU,
1e-5), never with numbers computed the way the server computes them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dear_udf.cli import main
from dear_udf.serve.metrics import parse as parse_metrics
from dear_udf.testing import EOS

from .probes import run_without_pyspark

TOL = 1e-5
KEY = "test-key-0123456789"  # what clients send as "Bearer <key>"
MAIN_LIMITS = {"max_documents": 64, "max_request_bytes": 200_000}
LONG = "coffee diet lightning strike " * 120  # far beyond the document's 193-token cut

pytestmark = pytest.mark.usefixtures("one_thread")  # the in-process `score` runs (conftest.py)


# -- the servers ------------------------------------------------------------------------


class Server:
    """A ``dear-rerank serve`` subprocess; ``url`` once it listens."""

    def __init__(self, name: str, args: list[str], *, env: dict[str, str], log: Path):
        self.name = name
        self.log = log
        self.url: str | None = None
        script = Path(sys.executable).with_name("dear-rerank")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "dear_udf.cli"]
        self.process = subprocess.Popen([*command, "serve", "--port", "0", *args], env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))

    def wait_listening(self, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://[^\s:]+:\d+)", self.output())
            if found:
                self.url = found.group(1)
                return self.url
            if self.process.poll() is not None:
                raise AssertionError(f"server {self.name} exited {self.process.returncode}:\n{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"server {self.name} did not listen within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


@pytest.fixture(scope="module")
def servers(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model = str(tiny_models["index227"])
    base_env = {k: v for k, v in os.environ.items() if k != "DEAR_RERANK_API_KEY"}
    env = {**base_env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    config = root / "serve.yaml"
    config.write_text(
        f"model:\n  model: {model}\n  device: cpu\nlayout:\n  pooling: last-non-pad\n"
        "serve:\n  request_timeout: 0.5\n  max_wait_ms: 3000\n  max_batch_pairs: 4\n"
    )
    started = {
        "main": Server(
            "main",
            ["--model", model, "--device", "cpu", "--max-documents", str(MAIN_LIMITS["max_documents"]),
             "--max-request-bytes", str(MAIN_LIMITS["max_request_bytes"]), "--max-wait-ms", "20"],
            env={**env, "DEAR_RERANK_API_KEY": KEY},
            log=root / "main.log",
        ),
        "slow": Server("slow", ["--model", model, "--max-wait-ms", "4000", "--max-queue", "3"], env=env, log=root / "slow.log"),
        "yaml": Server("yaml", ["--config", str(config)], env=env, log=root / "yaml.log"),
    }
    try:
        for server in started.values():
            server.wait_listening()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def main_server(servers) -> Server:
    return servers["main"]


# -- HTTP -------------------------------------------------------------------------------


def http(method: str, url: str, body: object = None, *, key: str | None = None, raw: bytes | None = None, headers: dict | None = None):
    """(status, headers, parsed JSON or text) of one request on a new connection."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, head, text = response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        status, head, text = exc.code, dict(exc.headers), exc.read().decode()
    try:
        return status, head, json.loads(text)
    except json.JSONDecodeError:
        return status, head, text


def rerank(server: Server, body: object, route: str = "/v1/rerank", key: str | None = KEY):
    return http("POST", server.url + route, body, key=key)


def metrics_of(server: Server) -> dict:
    status, _, text = http("GET", server.url + "/metrics")
    assert status == 200
    return parse_metrics(text)


def sample(values: dict, name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


# -- the reference: `dear-rerank score` on the same pairs -------------------------------


def score_with_cli(requests: list[dict], tmp_path: Path, model: Path, *extra: str) -> dict[tuple[int, int], float]:
    """Scores of every (request, document) by ``dear-rerank score``, keyed by their indices."""
    rows = {"query_id": [], "doc_id": [], "query": [], "title": [], "text": []}
    for r, request in enumerate(requests):
        for d, doc in enumerate(request["documents"]):
            rows["query_id"].append(f"{r:04d}")
            rows["doc_id"].append(f"{d:04d}")
            rows["query"].append(request["query"])
            rows["title"].append(doc.get("title") if isinstance(doc, dict) else None)
            rows["text"].append(doc["text"] if isinstance(doc, dict) else doc)
    tmp_path.mkdir(parents=True, exist_ok=True)
    pairs, out = tmp_path / "pairs.parquet", tmp_path / "scores.parquet"
    pq.write_table(pa.table({k: pa.array(v, type=pa.string()) for k, v in rows.items()}), pairs)
    assert main(["score", "--model", str(model), "--pairs", str(pairs), "--out", str(out), "--device", "cpu", *extra]) == 0
    table = pq.read_table(out).to_pydict()
    return {(int(q), int(d)): s for q, d, s in zip(table["query_id"], table["doc_id"], table["score"])}


def expected_order(scores: list[float]) -> list[int]:
    """Best first, ties by index: written from the README's rule, not the server's code."""
    order = list(range(len(scores)))
    order.sort(key=lambda i: i)
    order.sort(key=lambda i: scores[i], reverse=True)  # stable: equal scores keep index order
    return order


def request_set() -> list[dict]:
    """Requests of the kinds the job meets: long documents, titles, ties, unicode, specials."""
    words = ["llama", "camelid", "thomas", "edison", "light", "bulb", "coffee", "river", "café", "東京", "music", "energy"]
    requests = []
    for r in range(24):
        n = 1 + (r * 7) % 40
        query = " ".join(words[(r + i) % len(words)] for i in range(1 + r % 5))
        if r % 6 == 5:
            query += " bang! inside"  # pooled inside the query under first-pad: every document ties
        docs: list = []
        for d in range(n):
            text = " ".join(words[(r * 3 + d * 5 + i) % len(words)] for i in range(3 + (r + d) % 17))
            if d % 9 == 4:
                text = LONG + text  # cut by the layout
            if d % 11 == 7:
                text = f"{text} {EOS} injected"
            if d % 4 == 1:
                docs.append({"title": words[d % len(words)], "text": text})
            elif d % 10 == 3 and docs:
                docs.append(docs[0])  # a repeated document ties with its first copy
            else:
                docs.append(text)
        requests.append({"query": query, "documents": docs})
    return requests


# -- both request shapes and their clients -------------------------------------------------


def test_health_is_ready_without_a_key(main_server, tiny_models):
    status, _, body = http("GET", main_server.url + "/health")
    assert status == 200 and body["status"] == "ready" and body["model"].startswith(f"{tiny_models['index227']}#")


def test_model_card_shape(main_server, tiny_models, tmp_path):
    """POST /rerank as DeAR's model card: query and documents (strings or {title, text});
    the answer ranks best first with index and score, and `ranking` is the card's pairs."""
    body = {"query": "what is a llama", "documents": ["The llama is a camelid.", {"title": "Coffee", "text": "good for a diet"}, ""]}
    status, _, answer = rerank(main_server, body, "/rerank")
    assert status == 200
    expected = score_with_cli([body], tmp_path, tiny_models["index227"])
    scores = [expected[(0, d)] for d in range(3)]
    assert [r["index"] for r in answer["results"]] == expected_order(scores)
    assert [i for i, _ in answer["ranking"]] == expected_order(scores)
    for index, score in answer["ranking"]:
        assert abs(score - scores[index]) <= TOL
    assert all("document" not in r for r in answer["results"])  # /rerank: documents only when asked
    assert answer["usage"]["pairs"] == 3 and answer["usage"]["total_tokens"] > 3
    assert answer["model"] == http("GET", main_server.url + "/health")[2]["model"]  # name and fingerprint


def test_cohere_sdk_v1_and_v2(main_server):
    """Cohere's own Python SDK, unchanged, against the server (v1: documents as objects)."""
    import cohere

    docs = ["The llama is a camelid.", "Coffee is good for a diet.", "Edison invented the light bulb."]
    v2 = cohere.ClientV2(api_key=KEY, base_url=main_server.url)
    answer = v2.rerank(model="rerank-v3.5", query="what is a llama", documents=docs, top_n=2)
    status, _, raw = rerank(main_server, {"query": "what is a llama", "documents": docs}, "/v2/rerank")
    assert status == 200
    assert [(r.index, r.relevance_score) for r in answer.results] == [(r["index"], r["relevance_score"]) for r in raw["results"][:2]]
    assert answer.id.startswith("rerank-") and answer.meta.api_version.version == "2"

    v1 = cohere.Client(api_key=KEY, base_url=main_server.url)
    objects = [{"text": d, "id": f"doc-{i}"} for i, d in enumerate(docs)]
    answer = v1.rerank(query="what is a llama", documents=objects, return_documents=True)
    assert sorted(r.index for r in answer.results) == [0, 1, 2]
    assert [r.relevance_score for r in answer.results] == [r["relevance_score"] for r in raw["results"]]
    for result in answer.results:
        assert result.document.text == docs[result.index]

    with pytest.raises(cohere.errors.UnauthorizedError):
        cohere.ClientV2(api_key="wrong", base_url=main_server.url).rerank(model="m", query="q", documents=["d"])


def test_jina_request_shape(main_server):
    """Jina's /v1/rerank as its docs show it: return_documents defaults to true."""
    body = {"model": "jina-reranker-v2-base-multilingual", "query": "light bulb", "top_n": 2,
            "documents": ["Edison invented the light bulb.", "Coffee diet.", "A river in the city."]}
    status, headers, answer = rerank(main_server, body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert len(answer["results"]) == 2
    for result in answer["results"]:
        assert set(result) == {"index", "relevance_score", "document"}
        assert result["document"] == {"text": body["documents"][result["index"]]}
    assert answer["results"][0]["relevance_score"] >= answer["results"][1]["relevance_score"]
    assert isinstance(answer["usage"]["total_tokens"], int) and answer["usage"]["total_tokens"] > 0
    status, _, answer = rerank(main_server, {**body, "return_documents": False})
    assert all("document" not in r for r in answer["results"])
    status, _, answer = rerank(main_server, {**body, "return_documents": True}, "/v2/rerank")
    assert [r["document"]["text"] for r in answer["results"]] == [body["documents"][r["index"]] for r in answer["results"]]


def test_top_n_and_ties_by_index(main_server):
    docs = [f"document number {i} about llama" for i in range(6)]
    _, _, full = rerank(main_server, {"query": "llama", "documents": docs})
    _, _, top = rerank(main_server, {"query": "llama", "documents": docs, "top_n": 2})
    assert top["results"] == full["results"][:2] and top["usage"]["pairs"] == 6
    _, _, more = rerank(main_server, {"query": "llama", "documents": docs, "top_n": 60})
    assert more["results"] == full["results"]
    _, _, none = rerank(main_server, {"query": "llama", "documents": docs, "top_n": 0})
    assert none["results"] == []
    # A "!" in the query pools every pair inside the query under first-pad: all tie, and the
    # tie goes to the lower index.
    _, _, tied = rerank(main_server, {"query": "bang! llama", "documents": docs})
    assert len({r["relevance_score"] for r in tied["results"]}) == 1
    assert [r["index"] for r in tied["results"]] == list(range(6))


def test_long_texts_are_cut_as_in_the_job(main_server, tiny_models, tmp_path):
    """Two documents that differ only beyond the cut get one score; it is `score`'s."""
    body = {"query": "coffee", "documents": [LONG + " tail one", LONG + " a different tail", "short"]}
    _, _, answer = rerank(main_server, body)
    scores = {r["index"]: r["relevance_score"] for r in answer["results"]}
    assert scores[0] == scores[1]
    expected = score_with_cli([body], tmp_path, tiny_models["index227"])
    assert all(abs(scores[d] - expected[(0, d)]) <= TOL for d in range(3))


def test_concurrent_clients_get_the_nightly_scores(main_server, tiny_models, tmp_path):
    """24 requests from 8 concurrent clients over the three routes: every score within 1e-5
    of `dear-rerank score` on the same pairs, every ranking identical; requests shared
    scorer calls (mean requests per call > 1)."""
    requests = request_set()
    expected = score_with_cli(requests, tmp_path, tiny_models["index227"])
    routes = ["/rerank", "/v1/rerank", "/v2/rerank"]
    before = metrics_of(main_server)
    start = threading.Barrier(8)

    def client(c: int) -> list[tuple[int, dict]]:
        start.wait()
        out = []
        for r in range(c, len(requests), 8):
            status, _, answer = rerank(main_server, requests[r], routes[r % 3])
            assert status == 200, answer
            out.append((r, answer))
        return out

    with ThreadPoolExecutor(8) as pool:
        answers = [a for part in pool.map(client, range(8)) for a in part]
    assert len(answers) == len(requests)
    for r, answer in answers:
        reference = [expected[(r, d)] for d in range(len(requests[r]["documents"]))]
        distinct = sorted(set(reference))
        # Precondition: different scores are further apart than twice the tolerance, so
        # the ranking is defined within it; equal ones are DeAR's exact ties.
        assert all(b - a > 2 * TOL for a, b in zip(distinct, distinct[1:]))
        assert [x["index"] for x in answer["results"]] == expected_order(reference)
        got = {x["index"]: x["relevance_score"] for x in answer["results"]}
        assert max(abs(got[d] - reference[d]) for d in got) <= TOL
        for d, s in enumerate(reference):  # ties stay exact
            assert [got[e] for e, t in enumerate(reference) if t == s] == [got[d]] * reference.count(s)
    after = metrics_of(main_server)
    calls = sample(after, "dear_rerank_batch_requests_count") - sample(before, "dear_rerank_batch_requests_count")
    shared = sample(after, "dear_rerank_batch_requests_sum") - sample(before, "dear_rerank_batch_requests_sum")
    assert shared == len(requests) and shared / calls > 1


# -- refusals ----------------------------------------------------------------------------


def test_api_key(main_server):
    body = {"query": "q", "documents": ["d"]}
    for key, headers in ((None, {}), ("wrong-key", {}), (None, {"Authorization": f"Basic {KEY}"}), (KEY + "x", {})):
        status, head, answer = http("POST", main_server.url + "/v2/rerank", body, key=key, headers=headers)
        assert status == 401, (key, headers)
        assert "API key" in answer["message"] and head["www-authenticate"].startswith("Bearer")
    assert rerank(main_server, body, "/v2/rerank")[0] == 200
    assert http("GET", main_server.url + "/metrics")[0] == 200  # open, as /health


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"documents": ["d"]}, "query", "missing"),
        ({"query": 7, "documents": ["d"]}, "query", "must be a string, got int"),
        ({"query": "q"}, "documents", "missing"),
        ({"query": "q", "documents": "d"}, "documents", "must be a list"),
        ({"query": "q", "documents": ["a", 5]}, "documents[1]", "got int"),
        ({"query": "q", "documents": [{"title": "t"}]}, "documents[0].text", "missing"),
        ({"query": "q", "documents": [{"text": None}]}, "documents[0].text", "got null"),
        ({"query": "q", "documents": [{"text": "t", "title": 3}]}, "documents[0].title", "got int"),
        ({"query": "q", "documents": ["d"], "top_n": -1}, "top_n", "got -1"),
        ({"query": "q", "documents": ["d"], "top_n": "2"}, "top_n", 'got "2"'),
        ({"query": "q", "documents": ["d"], "return_documents": "yes"}, "return_documents", "true or false"),
        (["q", "d"], "body", "JSON object"),
    ],
)
def test_malformed_bodies_are_422_naming_the_field(main_server, body, field, words):
    status, _, answer = rerank(main_server, body, "/v2/rerank")
    assert status == 422
    assert answer["field"] == field and answer["message"].startswith(f"{field}: ") and words in answer["message"]


def test_invalid_json_is_422(main_server):
    status, _, answer = http("POST", main_server.url + "/rerank", raw=b'{"query": "q", "documents": [', key=KEY)
    assert status == 422 and answer["field"] == "body" and "not valid JSON" in answer["message"]


def test_limits_are_413_naming_the_limit(main_server):
    limit = MAIN_LIMITS["max_documents"]
    assert rerank(main_server, {"query": "q", "documents": ["d"] * limit})[0] == 200
    status, _, answer = rerank(main_server, {"query": "q", "documents": ["d"] * (limit + 1)})
    assert status == 413 and answer["limit"] == limit
    assert f"{limit + 1} documents" in answer["message"] and f"at most {limit}" in answer["message"]
    size = MAIN_LIMITS["max_request_bytes"]
    status, _, answer = rerank(main_server, {"query": "q", "documents": ["x" * size]})
    assert status == 413 and answer["field"] == "body" and str(size) in answer["message"]


def test_no_documents_is_an_empty_answer(main_server):
    before = metrics_of(main_server)
    status, _, answer = rerank(main_server, {"query": "q", "documents": []}, "/rerank")
    assert status == 200 and answer["results"] == [] and answer["ranking"] == [] and answer["usage"]["pairs"] == 0
    assert sample(metrics_of(main_server), "dear_rerank_batch_requests_count") == sample(before, "dear_rerank_batch_requests_count")


def test_metrics_count_what_was_sent(main_server):
    before = metrics_of(main_server)
    tokens = 0
    for docs in (["a llama", "a camelid", "coffee"], ["light bulb", "river"]):
        status, _, answer = rerank(main_server, {"query": "llama", "documents": docs}, "/rerank")
        assert status == 200
        tokens += answer["usage"]["total_tokens"]
    assert rerank(main_server, {"query": "q", "documents": [1]}, "/v2/rerank")[0] == 422
    assert rerank(main_server, {"query": "q", "documents": ["d"]}, "/v1/rerank", key=None)[0] == 401
    after = metrics_of(main_server)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("dear_rerank_requests_total", route="/rerank", status="200") == 2
    assert delta("dear_rerank_requests_total", route="/v2/rerank", status="422") == 1
    assert delta("dear_rerank_requests_total", route="/v1/rerank", status="401") == 1
    assert delta("dear_rerank_requests_total", route="/metrics", status="200") == 1  # the `before` read
    assert delta("dear_rerank_pairs_total") == 5
    assert delta("dear_rerank_tokens_total") == tokens
    assert delta("dear_rerank_request_duration_seconds_count", route="/rerank") == 2
    assert delta("dear_rerank_queue_wait_seconds_count") == 2
    assert delta("dear_rerank_batch_pairs_sum") == 5 and delta("dear_rerank_forward_passes_total") >= 2
    assert sample(after, "dear_rerank_queue_requests") == 0
    info = [labels for (name, labels), v in after.items() if name == "dear_rerank_model_info" and v == 1]
    assert len(info) == 1 and dict(info[0])["pooling"] == "first-pad" and dict(info[0])["device"] == "cpu"


# -- the YAML server: its layout, no key, the timeout --------------------------------------


def test_yaml_config_layout_and_request_timeout(servers, tiny_models, tmp_path):
    server = servers["yaml"]
    body = {"query": "bang! what is a llama", "documents": ["a camelid", "coffee", {"title": "Edison", "text": "light bulb"}, "river"]}
    status, _, answer = rerank(server, body, key=None)  # no key configured: open
    assert status == 200  # 4 pairs fill a batch (max_batch_pairs 4): no batching wait
    got = {r["index"]: r["relevance_score"] for r in answer["results"]}
    last_non_pad = score_with_cli([body], tmp_path / "a", tiny_models["index227"], "--pooling", "last-non-pad")
    first_pad = score_with_cli([body], tmp_path / "b", tiny_models["index227"])
    assert all(abs(got[d] - last_non_pad[(0, d)]) <= TOL for d in range(4))
    assert max(abs(got[d] - first_pad[(0, d)]) for d in range(4)) > 100 * TOL  # the file's pooling, not the default
    # One pair waits up to 3 s for a batch to fill; the timeout is 0.5 s.
    start = time.monotonic()
    status, _, answer = rerank(server, {"query": "q", "documents": ["d"]}, key=None)
    assert status == 504 and "0.5 s" in answer["message"] and "--request-timeout" in answer["message"]
    assert time.monotonic() - start < 2.5


# -- queue full, then SIGTERM with requests in flight -------------------------------------


def test_queue_full_is_429_and_sigterm_finishes_requests_in_flight(servers):
    server, main_server = servers["slow"], servers["main"]
    bodies = [{"query": f"query {i} llama", "documents": [f"doc {j} of {i}" for j in range(2 + i)]} for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        pending = [pool.submit(rerank, server, body, "/v1/rerank", None) for body in bodies]
        deadline = time.monotonic() + 3
        while sample(metrics_of(server), "dear_rerank_queue_requests") < 3:  # all three wait for the 4 s batch
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.02)
        status, headers, answer = rerank(server, {"query": "q", "documents": ["d"]}, key=None)
        assert status == 429 and int(headers["retry-after"]) >= 1
        assert "--max-queue" in answer["message"] and answer["limit"] == 3
        assert pending[0].done() is False
        server.process.send_signal(signal.SIGTERM)
        # No new connections once it is stopping...
        deadline = time.monotonic() + 5
        while True:
            try:
                host, port = server.url.removeprefix("http://").split(":")
                socket.create_connection((host, int(port)), timeout=1).close()
            except OSError:
                break
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        # ...but the requests in flight are answered, with the same scores as another server.
        results = [f.result(timeout=30) for f in pending]
    for body, (status, _, answer) in zip(bodies, results):
        assert status == 200, answer
        _, _, reference = rerank(main_server, body)
        assert [r["index"] for r in answer["results"]] == [r["index"] for r in reference["results"]]
        assert all(abs(a["relevance_score"] - b["relevance_score"]) <= TOL for a, b in zip(answer["results"], reference["results"]))
    assert server.process.wait(30) == 0, server.output()
    log = server.output()
    assert "finishing 3 request(s) in flight" in log and log.rstrip().endswith("stopped")


# -- start-up refusals (in process: they come before the port opens) ------------------------


def test_start_up_refuses_as_score_does(tmp_path, capsys):
    argv = ["--model", str(tmp_path / "no-model"), "--port", "0"]
    assert main(["serve", *argv]) == 2
    serve_err = capsys.readouterr().err
    pairs = tmp_path / "p.parquet"
    pq.write_table(pa.table({"query_id": ["q"], "doc_id": ["d"], "query": ["x"], "text": ["y"]}), pairs)
    assert main(["score", "--model", str(tmp_path / "no-model"), "--pairs", str(pairs), "--out", str(tmp_path / "o.parquet")]) == 2
    score_err = capsys.readouterr().err
    assert f"{tmp_path / 'no-model'}: no such directory" in serve_err
    assert serve_err.split("error: ", 1)[1] == score_err.split("error: ", 1)[1]


def test_bad_settings_are_refused_by_name(tiny_models, tmp_path, capsys, monkeypatch):
    model = str(tiny_models["index227"])
    assert main(["serve", "--model", model, "--max-documents", "0"]) == 2
    assert "max_documents must be a positive integer, got 0." in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {model}\nserve:\n  max_wait: 3\n")
    assert main(["serve", "--config", str(config)]) == 2
    assert "serve: unknown key(s) ['max_wait']" in capsys.readouterr().err
    config.write_text(f"model: {model}\nsrve:\n  port: 3\n")
    assert main(["serve", "--config", str(config)]) == 2
    assert "unknown key(s) ['srve']" in capsys.readouterr().err
    monkeypatch.delenv("MY_RERANK_KEY", raising=False)
    assert main(["serve", "--model", model, "--api-key-env", "MY_RERANK_KEY"]) == 2
    assert "MY_RERANK_KEY is not set" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--model", model, "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_a_nightly_config_serves_its_model_and_layout(tiny_models, tmp_path):
    """The job's YAML gives serve its model, layout and micro-batch settings; its other keys
    are not used (and say so), never refused."""
    from dear_udf.serve.settings import build_serve_config

    nightly = {
        "queries": "q.parquet", "corpus": "c.parquet", "candidates": "bm25.trec", "output": "/tables/out",
        "top_k": 100, "batch_size": 32, "max_tokens": 8192,
        "model": {"model": str(tiny_models["index227"]), "dtype": "bfloat16"},
        "layout": {"special_tokens": "parse"},
        "spark_conf": {"spark.sql.shuffle.partitions": "4"},
    }
    config = build_serve_config(nightly, {"serve": {"port": 9001}, "layout": {"pooling": "last-non-pad"}})
    assert (config.model.dtype, config.batch_size, config.max_tokens) == ("bfloat16", 32, 8192)
    assert (config.layout.special_tokens, config.layout.pooling, config.server.port) == ("parse", "last-non-pad", 9001)
    assert config.server.host == "127.0.0.1"


def test_the_serve_package_imports_without_pyspark_and_stays_light():
    """No pyspark anywhere in dear_udf.serve; `dear-rerank --help` loads no web stack or torch."""
    code = textwrap.dedent(
        """
        import sys

        import dear_udf.serve.cli, dear_udf.serve.app, dear_udf.serve.batcher, dear_udf.serve.schemas
        from dear_udf.cli import build_parser
        build_parser()
        heavy = sorted(m for m in ("torch", "transformers", "starlette", "uvicorn", "prometheus_client") if m in sys.modules)
        assert not heavy, f"imported at import time: {heavy}"
        from dear_udf.serve.metrics import ServeMetrics
        from dear_udf.serve.settings import build_serve_config
        build_serve_config({"model": "/models/dear-3b"})
        ServeMetrics().render()
        assert "pyspark" not in sys.modules
        print("ok")
        """
    )
    run_without_pyspark(code)
