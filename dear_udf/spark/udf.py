"""The scoring stage: a ``mapInArrow`` function that scores pairs with a cached model.

The closure Spark pickles holds only plain settings (``ScoringSettings``); torch,
transformers and the model are imported and loaded inside the Python worker, once per
worker (see ``worker_model``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .. import schema as S
from ..model import ModelSpec
from ..tokenization import Layout

# Columns the scoring stage passes through untouched, beside the new score.
CARRY = (S.QUERY_ID, S.DOC_ID, S.FIRST_STAGE_RANK, S.FIRST_STAGE_SCORE)


@dataclass(frozen=True)
class ScoringSettings:
    """Everything an executor needs to build its scorer: plain, picklable data.

    ``model_fields`` is what the driver knows of the scorer key (``cache.keys.model_fields``):
    each task adds its own environment (``cache.keys.environment``) and tags every score
    with the resulting scorer key, so a task that ran elsewhere than the driver expected
    (a CPU fallback, other library versions) never files its scores under the expected key.
    """

    spec: ModelSpec
    layout: Layout
    batch_size: int  # the job's (JobConfig: the one place its default is written)
    max_tokens: int | None
    expected_fingerprint: str | None = None  # the files the driver saw; a worker reloads until it holds them
    model_fields: dict | None = None
    # Several adapters over one base: every adapter of the run as (name, spec, fingerprint),
    # loaded together once per worker (``model.adapters``); ``adapter`` is the one scored.
    bank: tuple[tuple[str, ModelSpec, str], ...] | None = None
    adapter: str | None = None

    @property
    def cache_key(self) -> tuple:
        if self.bank:  # one held bank serves every adapter of the run
            return (self.bank, self.layout, self.batch_size, self.max_tokens)
        return (self.spec, self.layout, self.batch_size, self.max_tokens)


class ScorersParam:
    """Accumulator of the scorer keys tasks scored under: key -> what it hashes (JSON)."""

    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, a: dict, b: dict) -> dict:  # noqa: N802 - Spark's name
        a.update(b)
        return a


class CounterParam:
    """Accumulator of named integer/float counters (model loads, OOM splits, seconds)."""

    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, a: dict, b: dict) -> dict:  # noqa: N802 - Spark's name
        for key, value in b.items():
            a[key] = a.get(key, 0) + value
        return a


def whole_queries(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Regroup Arrow batches of rows sorted by query so that no query spans two batches.

    Each batch is one scorer call, and within one call identical pairs share one forward
    pass (``Scorer.score_ids``). So pairs that DeAR scores identically, such as every
    candidate of a query pooled inside the query, get bit-identical scores and tie exactly,
    as in the reference, instead of differing in the last bits with their micro-batch.
    """
    carry: pa.RecordBatch | None = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if carry is not None:
            batch = pa.concat_batches([carry, batch])
        qids = batch.column(S.QUERY_ID)
        start = pc.index(qids, qids[-1]).as_py()  # the last query's rows are contiguous
        if start > 0:
            yield batch.slice(0, start)
        carry = batch.slice(start)
    if carry is not None:
        yield carry


def make_scoring_function(settings: ScoringSettings, counters: Any = None, pass_through: tuple[str, ...] = (), scorers: Any = None):
    """Return the ``mapInArrow`` function for ``settings``.

    Args:
        settings: model and batching settings.
        counters: optional Spark accumulator built with ``CounterParam``; receives
            ``model_loads``, ``tasks_without_gpu``, ``oom_splits``, ``real_tokens`` and
            ``computed_tokens`` from every task attempt.
        pass_through: string columns of the pairs passed through after the scores (``pair_key``).
        scorers: optional Spark accumulator built with ``ScorersParam``; receives the
            scorer key each task scored under and what it hashes.
    """

    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from .. import hooks

        scorer, loaded_now, has_gpu = _task_scorer(settings)
        key, described = _task_scorer_key(settings, scorer)
        if scorers is not None:
            scorers.add({key: described})
        before = scorer.stats.as_dict()
        hooks.at("scoring-start", scorer=scorer)
        try:
            for out in _scored_batches(scorer, batches, pass_through, scorer_key=key):
                yield out
                hooks.at("batch-scored", batch=out)
            hooks.at("partition-scored")
        finally:
            hooks.at("scoring-end", scorer=scorer)
        if counters is not None:
            after = scorer.stats.as_dict()
            counters.add(
                {
                    "model_loads": int(loaded_now),
                    "tasks_without_gpu": int(settings.spec.device is None and not has_gpu),
                    **{k: after[k] - before[k] for k in ("oom_splits", "real_tokens", "computed_tokens")},
                }
            )

    return score_partition


def _task_scorer(settings: ScoringSettings) -> tuple[Any, bool, bool]:
    """This worker's scorer on the task's device: (scorer, loaded by this call, GPU assigned)."""
    from pyspark import TaskContext

    from . import worker_model

    device, has_gpu = worker_model.task_device(settings.spec.device)
    if device == "cpu":
        import torch

        torch.set_num_threads(max(1, TaskContext.get().cpus()))
    if settings.bank:
        return (*worker_model.get_adapter_scorer(
            settings.cache_key + (device,), settings.bank, settings.adapter, device,
            layout=settings.layout, batch_size=settings.batch_size, max_tokens=settings.max_tokens,
        ), has_gpu)
    scorer, loaded_now = worker_model.get_scorer(
        settings.cache_key + (device,),
        settings.spec,
        device,
        layout=settings.layout,
        batch_size=settings.batch_size,
        max_tokens=settings.max_tokens,
        fingerprint=settings.expected_fingerprint,
    )
    return scorer, loaded_now, has_gpu


def _task_scorer_key(settings: ScoringSettings, scorer: Any) -> tuple[str | None, str | None]:
    """The scorer key this task scores under (the driver's model fields, this process's
    environment on the scorer's device) and what it hashes, as JSON; (None, None) when
    the driver gave no model fields (scoring without a cache)."""
    import json

    from ..cache.keys import environment, scorer_fields, scorer_key

    if settings.model_fields is None:
        return None, None
    fields = scorer_fields(settings.model_fields, environment(scorer.loaded.device, adapter=settings.spec.adapter is not None))
    return scorer_key(fields), json.dumps(fields, sort_keys=True)


def _output_schema(pass_through: tuple[str, ...]) -> pa.Schema:
    schema = S.SCORED_PAIRS_SCHEMA
    for name in pass_through:
        schema = schema.append(pa.field(name, pa.string()))
    return schema


def _scored_batches(
    scorer: Any, batches: Iterator[pa.RecordBatch], pass_through: tuple[str, ...] = (), *, scorer_key: str | None = None
) -> Iterator[pa.RecordBatch]:
    """Score whole queries per call; each input batch comes back with its scores (the
    scorer hands each batch back with its own scores: ``Scorer.score_stream``'s tag)."""
    schema = _output_schema(pass_through)
    chunks = (
        (batch, batch.column(S.QUERY).to_pylist(), batch.column(S.TITLE).to_pylist(), batch.column(S.TEXT).to_pylist())
        for batch in whole_queries(batches)
    )
    for batch, pairs, scores in scorer.score_stream(chunks):
        arrays = [batch.column(name) for name in CARRY] + [
            pa.array(scores, type=pa.float32()),
            pa.array(pairs.pooled_early, type=pa.bool_()),
            pa.array(pairs.pooled_in_query, type=pa.bool_()),
            pa.array(pairs.computed_keys, type=pa.string()),
            pa.array([scorer_key] * len(scores), type=pa.string()),
        ] + [batch.column(name) for name in pass_through]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def score_pairs(pairs: Any, settings: ScoringSettings, counters: Any = None, *, pass_through: tuple[str, ...] = (), scorers: Any = None) -> Any:
    """Score a DataFrame of pairs (query_id, doc_id, query, title, text, first-stage columns).

    Returns a DataFrame of ``schema.SCORED_PAIRS_SCHEMA``: the carried columns, ``score``,
    where each pair was pooled (``pooled_early``, ``pooled_in_query``), what its forward
    pass computed (``computed_key``) and the scorer key it was scored under (null without
    ``settings.model_fields``); then the ``pass_through`` columns of ``pairs`` (strings), unchanged.
    """
    from ..schema import spark_schema

    return pairs.mapInArrow(make_scoring_function(settings, counters, pass_through, scorers), spark_schema(_output_schema(pass_through)))


# The last line of a worker's traceback when it raised one of this package's errors.
_WORKER_ERROR = re.compile(r"^dear_udf\.exceptions\.(\w+): (.*)$", re.MULTILINE)


@contextmanager
def worker_errors() -> Iterator[None]:
    """Re-raise an error this package raised in a Python worker as itself, in one line.

    Spark hands the driver a worker's failure as a wall of Python and JVM traceback; wrap
    the action that runs the scoring function in this so that, e.g., an executor without
    CUDA reads ``ModelLoadError: device 'cuda': CUDA is not available on this machine``.
    Other failures pass through unchanged.

    Example:
        >>> with worker_errors():
        ...     count = score_pairs(pairs, settings).count()
    """
    from .. import exceptions

    try:
        yield
    except Exception as exc:
        found = _WORKER_ERROR.findall(str(exc))
        error_type = getattr(exceptions, found[-1][0], None) if found else None
        if not (isinstance(error_type, type) and issubclass(error_type, exceptions.DearRerankError)):
            raise
        raise error_type(found[-1][1].strip()) from None
