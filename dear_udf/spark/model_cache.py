"""One loaded model per Python worker, and the device a Spark task should use.

Contract of the cache:
- key: the plain settings that define a scorer (model spec, device, layout, batch sizes);
- lifetime: the Python worker process. Spark reuses workers across tasks when
  ``spark.python.worker.reuse=true`` (the default, and set by ``session.get_session``),
  so a worker loads the model once and keeps it for every later task of the job;
  an idle worker is stopped by Spark after about a minute, and the next one loads again;
- one model per GPU: give each executor its GPUs and each task one
  (``spark.executor.resource.gpu.amount=N``, ``spark.task.resource.gpu.amount=1``);
  a fractional task amount makes every concurrent task load its own copy on that GPU;
- at most ``MAX_ENTRIES`` scorers are kept; the oldest is dropped first.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

log = logging.getLogger(__name__)

MAX_ENTRIES = 2
_cache: OrderedDict[tuple, Any] = OrderedDict()
_lock = threading.Lock()


def task_device(requested: str | None) -> str:
    """The device for this task: the GPU Spark assigned, else cuda:0, else CPU.

    ``requested`` (e.g. "cpu" or "cuda:1") wins when given. Must run inside a Spark task.
    """
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        raise RuntimeError("task_device() runs on executors only, inside a Spark task.")
    if requested:
        return requested
    gpus = context.resources().get("gpu")
    if gpus is not None and gpus.addresses:
        return f"cuda:{gpus.addresses[0]}"
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def get_scorer(key: tuple, spec: Any, device: str, *, layout: Any, batch_size: int, max_tokens: int | None | str):
    """Return this worker's scorer for ``key``, loading the model on first use.

    Returns:
        (scorer, loaded_now): loaded_now is True when this call loaded the model.
    """
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key], False
        from ..model import load_model
        from ..scorer import Scorer

        loaded = load_model(spec, device=device)
        scorer = Scorer(loaded, layout=layout, batch_size=batch_size, max_tokens=max_tokens)
        _cache[key] = scorer
        log.info("loaded %s on %s in %.1fs", spec.name, device, loaded.load_seconds)
        while len(_cache) > MAX_ENTRIES:
            _cache.popitem(last=False)
        return scorer, True
