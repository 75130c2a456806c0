"""The scoring loop: dynamic batching of whole requests on the job's scorer.

One worker thread per device tokenizes and scores with the job's ``Scorer`` (torch
releases the GIL, so the event loop keeps answering meanwhile). Requests wait in a bounded
FIFO queue. When the worker is free it takes the first request and adds the following
ones, whole and in order, while their pairs fit in ``max_batch_pairs``; if the batch is
not full it waits for more until ``max_wait`` after its first request arrived. Under load the queue fills
while the worker scores, so batches form without waiting.

**Why a request is never split.** A request's pairs are scored in one scorer call. The
scorer computes pairs with identical computed ids once per call, so pairs DeAR ties (every
candidate of a query pooled inside the query, repeated documents) get one score, exactly
as in the job; several requests may share a call. Inside the call the scorer sorts the
pairs of all its requests by length into micro-batches under its token budget, as it does
for the job's Arrow batches, so the scores are the job's: ``dear-rerank score`` equals
them within float noise (fp32 CPU: < 1e-5).

The worker also tokenizes (the scorer's own ``encoder.encode``, on the batch's pairs just
before the call), as ``Scorer.score`` does: on CPU a tokenizing thread would compete with
the forward pass for the same cores (``Scorer.score_stream`` says the same), and one
thread tokenizing keeps the tokenizer's shared truncation setting safe; on a GPU it costs
milliseconds per batch against the forward passes' seconds.

Example:
    >>> loop = ScoringLoop(scorer, max_batch_pairs=512, max_wait=0.005, max_queue=64)
    >>> loop.start()
    >>> scores, tokens = await asyncio.wrap_future(loop.submit("what is a llama", [None], ["A camelid."]))
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already; ``retry_after`` is a guess in seconds."""

    def __init__(self, limit: int, retry_after: int):
        super().__init__(f"the queue is full ({limit} requests waiting or being scored, --max-queue)")
        self.limit = limit
        self.retry_after = retry_after


@dataclass
class _Job:
    query: str
    titles: list[str | None]
    texts: list[str]
    arrived: float  # time.monotonic() of the request's arrival
    future: Future = field(default_factory=Future)

    @property
    def pairs(self) -> int:
        return len(self.texts)


class ScoringLoop:
    """Dynamic batching of whole requests on one scorer (one device).

    Args:
        scorer: a ``dear_udf.scorer.Scorer``.
        max_batch_pairs: pairs per scorer call; a larger request is scored alone.
        max_wait: seconds a batch that is not full waits for more requests, counted from
            the arrival of its first request.
        max_queue: requests admitted and not yet answered (``admit``/``release``).
        metrics: a ``ServeMetrics``, or None.
    """

    def __init__(self, scorer: Any, *, max_batch_pairs: int, max_wait: float, max_queue: int, metrics: Any = None):
        self.scorer = scorer
        self.max_batch_pairs = max_batch_pairs
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._admitted = 0
        self._admitted_pairs = 0
        self._pairs_per_second: float | None = None  # of recent scorer calls, for Retry-After
        self.error: BaseException | None = None  # set when the worker died

    # -- the event loop's side ------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def admitted(self) -> int:
        """Requests admitted and not yet released."""
        return self._admitted

    def admit(self, pairs: int) -> None:
        """Count a request in, or raise ``QueueFull`` (call from the event loop only)."""
        if self._admitted >= self.max_queue:
            raise QueueFull(self.max_queue, self.retry_after())
        self._admitted += 1
        self._admitted_pairs += pairs
        if self.metrics is not None:
            self.metrics.queue_requests.set(self._admitted)

    def release(self, pairs: int) -> None:
        """Count an admitted request out, answered or not."""
        self._admitted -= 1
        self._admitted_pairs -= pairs
        if self.metrics is not None:
            self.metrics.queue_requests.set(self._admitted)

    def retry_after(self) -> int:
        """Seconds until the pairs admitted now are likely scored (1 to 60)."""
        rate = self._pairs_per_second
        if not rate:
            return 1
        return int(min(60, max(1, math.ceil(self._admitted_pairs / rate))))

    def submit(self, query: str, titles: list[str | None], texts: list[str], *, arrived: float | None = None) -> Future:
        """Queue a request's pairs (one query, its documents); the future gets their scores
        (float32, in order) and their ids in the DeAR layout (a count).

        Cancelling the future before its batch starts takes the request out of the queue.
        """
        job = _Job(query, titles, texts, time.monotonic() if arrived is None else arrived)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the scoring loop is stopped.")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    # -- the worker ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dear-serve-scorer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Score what is queued, then stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while True:
                jobs = self._take()
                if jobs is None:
                    return
                self._score(jobs)
        except BaseException as exc:  # noqa: BLE001 - recorded for /health, then re-raised
            self.error = exc
            log.exception("the scoring loop stopped")
            raise

    def _take(self) -> list[_Job] | None:
        """The next batch: whole requests in arrival order; None once stopping and empty."""
        with self._cond:
            while True:
                while not self._queue:
                    if self._stopping:
                        return None
                    self._cond.wait()
                first = self._queue.popleft()
                if first.future.set_running_or_notify_cancel():  # False: it timed out waiting
                    break
            jobs, pairs = [first], first.pairs
            deadline = first.arrived + self.max_wait
            while pairs < self.max_batch_pairs:
                if self._queue:
                    following = self._queue[0]
                    if pairs + following.pairs > self.max_batch_pairs:
                        break
                    self._queue.popleft()
                    if following.future.set_running_or_notify_cancel():
                        jobs.append(following)
                        pairs += following.pairs
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping:
                    break
                self._cond.wait(left)
            return jobs

    def _score(self, jobs: list[_Job]) -> None:
        started = time.monotonic()
        passes_before = self.scorer.stats.batches
        try:
            # Scorer.score's two steps, kept apart for the token counts of the answers.
            encoded = self.scorer.encoder.encode(
                [job.query for job in jobs for _ in job.texts],
                [title for job in jobs for title in job.titles],
                [text for job in jobs for text in job.texts],
            )
            scores = self.scorer.score_encoded(encoded)
        except Exception as exc:  # noqa: BLE001 - each request gets the error
            log.exception("scoring a batch of %d requests failed", len(jobs))
            for job in jobs:
                job.future.set_exception(exc)
            return
        seconds = time.monotonic() - started
        pairs = len(encoded.ids)
        lengths = [len(ids) for ids in encoded.ids]
        if seconds > 0 and pairs:
            rate = pairs / seconds
            self._pairs_per_second = rate if self._pairs_per_second is None else 0.8 * self._pairs_per_second + 0.2 * rate
        if self.metrics is not None:
            self.metrics.observe_call(
                requests=len(jobs),
                pairs=pairs,
                tokens=sum(lengths),
                forward_passes=self.scorer.stats.batches - passes_before,
                seconds=seconds,
                waits=[started - job.arrived for job in jobs],
            )
        offset = 0
        for job in jobs:
            end = offset + job.pairs
            job.future.set_result((np.asarray(scores[offset:end]), sum(lengths[offset:end])))
            offset = end
