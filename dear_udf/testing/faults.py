"""Fault injection for the scoring stage and the Delta commit, behind ``dear_udf.hooks``.

The product calls ``hooks.at(point, ...)``; only when ``DEAR_RERANK_TEST_HOOKS`` is set
does that reach ``at()`` here. Tests set it to prove that failures are survived without
losing or duplicating rows (``tests/test_faults.py``).

``DEAR_RERANK_TEST_HOOKS`` holds one or more comma-separated faults ``MODE[:ARG][@P]``;
``@P`` limits a scoring fault to partition ``P`` of the scoring stage (default: every
partition). It must reach Spark's Python workers: ``spark.executorEnv.DEAR_RERANK_TEST_HOOKS``
on a cluster, or ``SparkContext.environment`` before the job builds its scoring function
(local mode; the variables are captured when the UDF is created).

- ``fail-first-attempt``: the scoring task raises after it has scored its whole partition
  and handed every batch to Spark, on attempt 0 only; Spark retries it (needs
  ``spark.task.maxFailures`` > 1: ``local[K,F]`` or a cluster).
- ``kill-worker-first-attempt``: the Python worker SIGKILLs itself after its first Arrow
  batch of output, on attempt 0 only (a crashed worker).
- ``sleep-once:SEC``: the first task to score the partition, in the whole application,
  sleeps SEC seconds before scoring, so a test can kill its executor while the stage runs;
  "once" is kept by a marker in ``DEAR_RERANK_FAULT_DIR`` (required), because after an
  executor is lost Spark may rerun the stage and its attempt numbers start again at 0.
  The sleep ends early if the worker is orphaned (its executor died).
- ``oom-over:N``: the forward pass raises ``torch.OutOfMemoryError`` for every micro-batch
  of more than N pairs, as CUDA would; the scorer halves the batch and retries.
- ``pause-before-commit:SEC`` (driver): after the run's Parquet files are written and
  before the Delta commit, the driver writes a marker and sleeps SEC seconds, so a test
  can SIGKILL it at exactly that point.
- ``kill-after-chunk:K`` (driver): once chunk K of the scoring has been committed to the
  score cache, the driver writes a marker (``chunk-committed-...json``, with the chunk and
  the number of chunks) and SIGKILLs itself: a night that dies part-way.
- ``fail-after-cache-append`` (driver): the first attempt of every score cache append
  raises a ``DeltaError`` after its commit landed, as a lost reply from the store would;
  the append is retried.

``DEAR_RERANK_FAULT_DIR``, when set, is a folder where every scoring attempt and every
fault that fires leaves a small JSON file (``<event>-p<partition>-a<attempt>-<pid>.json``),
so a test can check that the fault really happened and compare attempts' scores.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..hooks import ENV

DIR_ENV = "DEAR_RERANK_FAULT_DIR"
DRIVER_MODES = ("pause-before-commit", "kill-after-chunk", "fail-after-cache-append")
MODES = (
    "fail-first-attempt",
    "kill-worker-first-attempt",
    "sleep-once",
    "oom-over",
    "pause-before-commit",
    "kill-after-chunk",
    "fail-after-cache-append",
)


@dataclass(frozen=True)
class Fault:
    mode: str
    arg: float | None = None
    partition: int | None = None  # None: every partition

    def applies(self, partition: int) -> bool:
        return self.partition is None or self.partition == partition


def parse(value: str) -> list[Fault]:
    """Parse the hooks' setting; an unknown mode is an error, never ignored."""
    faults = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        spec, _, where = item.partition("@")
        mode, _, arg = spec.partition(":")
        if mode not in MODES:
            raise ValueError(f"{ENV}: unknown fault {mode!r} in {value!r}; known: {MODES}.")
        needs_arg = mode in ("sleep-once", "oom-over", "pause-before-commit", "kill-after-chunk")
        if needs_arg and not arg:
            raise ValueError(f"{ENV}: fault {mode!r} needs a value, e.g. {mode}:5, got {item!r}.")
        faults.append(Fault(mode, float(arg) if arg else None, int(where) if where else None))
    return faults


def _record(event: str, partition: int | None, attempt: int | None, payload: dict[str, Any]) -> None:
    directory = os.environ.get(DIR_ENV)
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    name = f"{event}-p{partition}-a{attempt}-{os.getpid()}.json"
    tmp = os.path.join(directory, f".{name}.tmp")
    with open(tmp, "w") as handle:
        json.dump({"event": event, "partition": partition, "attempt": attempt, "pid": os.getpid(), **payload}, handle)
    os.replace(tmp, os.path.join(directory, name))  # a reader never sees half a marker


def _claim(name: str) -> bool:
    """True the first time any process claims ``name`` (an O_EXCL file in the fault dir)."""
    directory = os.environ.get(DIR_ENV)
    if not directory:
        raise RuntimeError(f"{ENV}: this fault needs {DIR_ENV} to remember that it fired.")
    os.makedirs(directory, exist_ok=True)
    try:
        os.close(os.open(os.path.join(directory, f"{name}.claimed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


@dataclass
class TaskFaults:
    """The faults of one scoring task attempt (built by ``active()`` inside a Spark task)."""

    faults: list[Fault]
    partition: int
    attempt: int
    stage: int
    batches: int = 0
    ooms: int = 0
    scores: list[tuple[str, str, float]] = field(default_factory=list)
    _original_forward: Any = None

    def _want(self, mode: str, first_attempt_only: bool = True) -> Fault | None:
        for fault in self.faults:
            if fault.mode == mode and fault.applies(self.partition):
                if first_attempt_only and self.attempt != 0:
                    return None
                return fault
        return None

    def _record(self, event: str, **payload: Any) -> None:
        _record(event, self.partition, self.attempt, {"stage": self.stage, **payload})

    def before_scoring(self, scorer: Any) -> None:
        """Record the attempt, sleep, and wrap the scorer's forward pass for fake OOMs."""
        self._record("attempt")
        fault = self._want("sleep-once", first_attempt_only=False)
        if fault is not None and _claim(f"sleep-p{self.partition}"):
            self._record("sleep", seconds=fault.arg)
            parent = os.getppid()
            deadline = time.monotonic() + float(fault.arg or 0)
            # Stop when orphaned: the executor (and its worker daemon) was killed.
            while time.monotonic() < deadline and os.getppid() == parent:
                time.sleep(0.2)
        fault = self._want("oom-over", first_attempt_only=False)
        if fault is not None:
            limit = int(fault.arg or 0)
            original = self._original_forward = scorer.forward

            def forward(input_ids, *rest):
                if input_ids.shape[0] > limit:
                    import torch

                    self.ooms += 1
                    raise torch.OutOfMemoryError(f"CUDA out of memory (injected by {ENV}, batch of {input_ids.shape[0]} > {limit})")
                return original(input_ids, *rest)

            scorer.forward = forward

    def after_batch(self, batch: Any) -> None:
        """Called after Spark took one output batch: keep its scores, maybe kill the worker."""
        from .. import schema as S

        self.batches += 1
        if os.environ.get(DIR_ENV):
            self.scores.extend(
                zip(batch.column(S.QUERY_ID).to_pylist(), batch.column(S.DOC_ID).to_pylist(), batch.column(S.SCORE).to_pylist())
            )
        if self.batches == 1 and self._want("kill-worker-first-attempt") is not None:
            self._record("kill", batches=self.batches, scores=self.scores)
            os.kill(os.getpid(), signal.SIGKILL)

    def after_partition(self) -> None:
        """Called once the whole partition was handed to Spark: record, maybe fail."""
        self._record("scores", batches=self.batches, scores=self.scores, ooms=self.ooms)
        if self._want("fail-first-attempt") is not None:
            self._record("fail", batches=self.batches)
            raise RuntimeError(f"injected failure ({ENV}) of scoring partition {self.partition}, attempt {self.attempt}")

    def restore(self, scorer: Any) -> None:
        """Undo ``before_scoring``'s wrapper: the scorer is cached and outlives this task."""
        if self._original_forward is not None:
            del scorer.forward  # the instance attribute shadowing the method
            self._original_forward = None


@contextmanager
def armed(spark: Any, faults: str, directory: str | os.PathLike) -> Iterator[None]:
    """Inject ``faults`` into the scoring functions built inside the block (local mode:
    through ``SparkContext.environment``, which a job's scoring function captures when it
    is built), with markers in ``directory``; the session is clean again after it."""
    env = spark.sparkContext.environment
    env[ENV], env[DIR_ENV] = faults, str(directory)
    try:
        yield
    finally:
        env.pop(ENV, None)
        env.pop(DIR_ENV, None)


_task: TaskFaults | None = None  # the scoring task this Python worker runs (one at a time)


def _start_task(value: str) -> TaskFaults | None:
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        raise RuntimeError("scoring hooks run on executors only, inside a Spark task.")
    faults = [f for f in parse(value) if f.mode not in DRIVER_MODES]
    if not faults:
        return None
    return TaskFaults(faults, context.partitionId(), context.attemptNumber(), context.stageId())


def _pause(name: str, value: str, payload: dict[str, Any]) -> None:
    for fault in parse(value):
        if fault.mode == f"pause-{name}":
            _record(name, None, None, {"seconds": fault.arg, **payload})
            time.sleep(float(fault.arg or 0))


def _kill_after_chunk(value: str, context: dict[str, Any]) -> None:
    for fault in parse(value):
        if fault.mode == "kill-after-chunk" and int(fault.arg or 0) == context["chunk"]:
            _record("chunk-committed", None, None, {"chunk": context["chunk"], "chunks": context["chunks"]})
            os.kill(os.getpid(), signal.SIGKILL)


def _fail_after_append(value: str, context: dict[str, Any]) -> None:
    if context["attempt"] == 1 and any(f.mode == "fail-after-cache-append" for f in parse(value)):
        from deltalake.exceptions import DeltaError

        _record("cache-append-failed", None, None, {"uri": context["uri"]})
        raise DeltaError(f"injected by {ENV}: the reply of a landed commit was lost")


def at(point: str, value: str, **context: Any) -> None:
    """What ``dear_udf.hooks.at(point, ...)`` does when ``value`` (the setting) is given."""
    global _task
    if point == "before-commit":
        _pause("before-commit", value, context)
    elif point == "chunk-committed":
        _kill_after_chunk(value, context)
    elif point == "cache-appended":
        _fail_after_append(value, context)
    elif point == "scoring-start":
        _task = _start_task(value)
        if _task is not None:
            _task.before_scoring(context["scorer"])
    elif _task is None:
        return
    elif point == "batch-scored":
        _task.after_batch(context["batch"])
    elif point == "partition-scored":
        _task.after_partition()
    elif point == "scoring-end":
        task, _task = _task, None
        task.restore(context["scorer"])
