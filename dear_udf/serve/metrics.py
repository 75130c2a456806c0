"""The server's Prometheus metrics (``GET /metrics``), in a registry of its own.

Names and what they count:

- ``dear_rerank_requests_total{route, status}``: answered requests, by route and HTTP status;
- ``dear_rerank_request_duration_seconds{route}``: arrival to answer;
- ``dear_rerank_queue_wait_seconds``: arrival to the start of the scorer call;
- ``dear_rerank_pairs_total`` and ``dear_rerank_tokens_total``: pairs scored and their
  ids in the DeAR layout (real tokens, no padding);
- ``dear_rerank_batch_requests`` and ``dear_rerank_batch_pairs``: requests and pairs per
  scorer call (a *batch*: requests that share one call; its ``_sum / _count`` is the mean),
  and ``dear_rerank_forward_passes_total``: the scorer's micro-batches (forward passes);
- ``dear_rerank_scorer_call_seconds``: time per scorer call;
- ``dear_rerank_queue_requests``: requests admitted and not yet answered;
- ``dear_rerank_model_info{model, device, dtype, pooling, special_tokens}``: 1.

Example:
    >>> metrics = ServeMetrics()
    >>> metrics.requests.labels(route="/rerank", status="200").inc()
    >>> body, content_type = metrics.render()
"""

from __future__ import annotations

from typing import Any

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_REQUEST_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
_PAIR_BUCKETS = (1, 10, 25, 50, 100, 200, 400, 800, 1600, 3200)


class ServeMetrics:
    """The metrics of one server."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: timestamps nobody charts (process-wide)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("dear_rerank_requests", "Answered requests by route and HTTP status.", ["route", "status"], registry=r)
        self.request_seconds = Histogram(
            "dear_rerank_request_duration_seconds", "Seconds from a request's arrival to its answer.", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "dear_rerank_queue_wait_seconds", "Seconds from a request's arrival to the start of its scorer call.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.pairs = Counter("dear_rerank_pairs", "Pairs scored.", registry=r)
        self.tokens = Counter("dear_rerank_tokens", "Ids of the DeAR layout in the pairs scored (no padding).", registry=r)
        self.batch_requests = Histogram(
            "dear_rerank_batch_requests", "Requests per scorer call (a batch).", buckets=_REQUEST_BUCKETS, registry=r
        )
        self.batch_pairs = Histogram("dear_rerank_batch_pairs", "Pairs per scorer call (a batch).", buckets=_PAIR_BUCKETS, registry=r)
        self.forward_passes = Counter("dear_rerank_forward_passes", "Micro-batches (forward passes) the scorer ran.", registry=r)
        self.scorer_seconds = Histogram(
            "dear_rerank_scorer_call_seconds", "Seconds per scorer call.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queue_requests = Gauge("dear_rerank_queue_requests", "Requests admitted and not yet answered.", registry=r)
        self.model_info = Gauge(
            "dear_rerank_model_info", "The model served (value 1).", ["model", "device", "dtype", "pooling", "special_tokens"], registry=r
        )

    def describe_model(self, *, model: str, device: str, dtype: str, pooling: str, special_tokens: str) -> None:
        self.model_info.labels(model=model, device=device, dtype=dtype, pooling=pooling, special_tokens=special_tokens).set(1)

    def observe_call(self, *, requests: int, pairs: int, tokens: int, forward_passes: int, seconds: float, waits: list[float]) -> None:
        """Record one scorer call (a batch) of ``requests`` requests."""
        self.batch_requests.observe(requests)
        self.batch_pairs.observe(pairs)
        self.pairs.inc(pairs)
        self.tokens.inc(tokens)
        self.forward_passes.inc(forward_passes)
        self.scorer_seconds.observe(seconds)
        for wait in waits:
            self.queue_wait.observe(wait)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of an exposition text by (name, sorted labels): for tests and benchmarks.

    Example:
        >>> parse(body)[("dear_rerank_pairs_total", ())]
        120.0
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out
