"""One loaded model per Python worker, and the device a Spark task should use.

Contract of the cache:
- key: the plain settings that define a scorer (model spec, device, layout, batch sizes);
  a held scorer is used only while its files' fingerprint is the one the driver expects:
  on a long-lived application (a notebook, an all-purpose cluster) the model's files may
  change in place between runs, and the worker then loads them again;
- lifetime: the Python worker process. Spark reuses workers across tasks when
  ``spark.python.worker.reuse=true`` (the default, and set by ``session.get_session``),
  so a worker loads the model once and keeps it for every later task of the job;
  an idle worker is stopped by Spark after about a minute, and the next one loads again;
- one model per GPU: give each executor its GPUs and each task one
  (``spark.executor.resource.gpu.amount=N``, ``spark.task.resource.gpu.amount=1``);
  a fractional task amount makes every concurrent task load its own copy on that GPU;
- several adapters over one base (``get_adapter_scorer``): one entry holds the base once
  and every adapter of the run (``model.adapters.AdapterBank``), and a scorer per adapter;
- at most ``MAX_ENTRIES`` scorers (or banks) are kept; the oldest is dropped first.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from typing import Any

log = logging.getLogger(__name__)

MAX_ENTRIES = 2
_cache: OrderedDict[tuple, Any] = OrderedDict()
_lock = threading.Lock()


def task_device(requested: str | None) -> tuple[str, bool]:
    """The device for this task and whether Spark assigned it a GPU.

    ``requested`` (e.g. "cpu" or "cuda:1") wins when given. Else the task's GPU, as
    spark-rapids-ml chooses it: Spark's address for the task, as an index among
    ``CUDA_VISIBLE_DEVICES`` when the cluster set it. With no GPU assigned the task runs
    on CPU and says so, never on a guessed ``cuda:0`` that every task would share.
    Must run inside a Spark task.
    """
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        raise RuntimeError("task_device() runs on executors only, inside a Spark task.")
    gpus = context.resources().get("gpu")
    assigned = gpus is not None and bool(gpus.addresses)
    if requested:
        return requested, assigned
    if assigned:
        return f"cuda:{visible_index(gpus.addresses[0], os.environ.get('CUDA_VISIBLE_DEVICES'))}", True
    log.warning(
        "Spark assigned no GPU to scoring task %d (spark.task.resource.gpu.amount unset?): scoring on CPU",
        context.partitionId(),
    )
    return "cpu", False


def visible_index(address: str, visible: str | None) -> int:
    """The CUDA index of the GPU Spark calls ``address`` in this process.

    Spark's addresses are the discovery script's (physical) ids. When the cluster
    restricted this process with ``CUDA_VISIBLE_DEVICES``, CUDA numbers the visible ones
    from 0, so the index is the address's position there.
    """
    from ..exceptions import ModelLoadError

    if not visible:
        return int(address)
    ids = [part.strip() for part in visible.split(",") if part.strip()]
    if address in ids:
        return ids.index(address)
    if len(ids) == 1:  # isolated to this task's GPU under another name (e.g. a UUID)
        return 0
    raise ModelLoadError(
        f"Spark assigned GPU {address!r} to this task, but CUDA_VISIBLE_DEVICES={visible!r} does not name it."
    )


def get_scorer(
    key: tuple, spec: Any, device: str, *, layout: Any, batch_size: int, max_tokens: int | None, fingerprint: str | None = None
):
    """Return this worker's scorer for ``key``, loading the model on first use.

    ``fingerprint``: the files the driver fingerprinted. A held scorer of other files (they
    changed in place since it was loaded) is dropped and the model loaded again; a fresh
    load that still differs is refused (the executors see other files than the driver).

    Returns:
        (scorer, loaded_now): loaded_now is True when this call loaded the model.
    """
    from ..exceptions import ModelLoadError

    with _lock:
        held = _cache.get(key)
        if held is not None and fingerprint and held.loaded.fingerprint != fingerprint:
            log.info("the files of %s changed since this worker loaded them (%s, now %s): loading them again",
                     spec.name, held.loaded.fingerprint[:16], fingerprint[:16])
            del _cache[key]
            held = None
        if held is not None:
            _cache.move_to_end(key)
            return held, False
        from ..model import load_model
        from ..scorer import Scorer

        loaded = load_model(spec, device=device)
        if fingerprint and loaded.fingerprint != fingerprint:
            raise ModelLoadError(
                f"{spec.name}: the executor loaded files with fingerprint {loaded.fingerprint[:16]}, "
                f"the driver saw {fingerprint[:16]}; is the model path the same everywhere?"
            )
        scorer = Scorer(loaded, layout=layout, batch_size=batch_size, max_tokens=max_tokens)
        _cache[key] = scorer
        log.info("loaded %s on %s in %.1fs", spec.name, device, loaded.load_seconds)
        while len(_cache) > MAX_ENTRIES:
            _cache.popitem(last=False)
        return scorer, True


def get_adapter_scorer(
    key: tuple, bank: tuple, name: str, device: str, *, layout: Any, batch_size: int, max_tokens: int | None
):
    """This worker's scorer for adapter ``name`` of ``bank`` (every adapter of the run as
    ``(name, spec, fingerprint)``): the base and all the adapters are loaded together on
    first use (``model.adapters.load_adapters``) and kept as one entry; a held bank whose
    files changed since is loaded again, and a fresh load that still differs from the
    driver's fingerprints is refused.

    Returns:
        (scorer, loaded_now): loaded_now is True when this call loaded the bank.
    """
    from ..exceptions import ModelLoadError

    expected = {n: fingerprint for n, _, fingerprint in bank}
    with _lock:
        held = _cache.get(key)
        if held is not None and any(fp and held[n].loaded.fingerprint != fp for n, fp in expected.items()):
            log.info("the files of adapters %s changed since this worker loaded them: loading them again", sorted(expected))
            del _cache[key]
            held = None
        if held is not None:
            _cache.move_to_end(key)
            return held[name], False
        from ..model.adapters import load_adapters
        from ..scorer import Scorer

        loaded = load_adapters({n: spec for n, spec, _ in bank}, device=device)
        for n, fingerprint in expected.items():
            if fingerprint and loaded.loaded[n].fingerprint != fingerprint:
                raise ModelLoadError(
                    f"adapter {n} ({loaded.loaded[n].spec.name}): the executor loaded files with fingerprint "
                    f"{loaded.loaded[n].fingerprint[:16]}, the driver saw {fingerprint[:16]}; is the path the same everywhere?"
                )
        held = {n: Scorer(each, layout=layout, batch_size=batch_size, max_tokens=max_tokens) for n, each in loaded.loaded.items()}
        _cache[key] = held
        log.info("loaded %d adapters over one base on %s in %.1fs (%.1f MB of merged tensors beside the base)",
                 len(held), device, loaded.load_seconds, loaded.extra_bytes() / 2**20)
        while len(_cache) > MAX_ENTRIES:
            _cache.popitem(last=False)
        return held[name], True
