"""The product's one seam for test hooks: named points, inert unless a test sets ``ENV``.

Product code calls ``hooks.at(point, **context)`` at a few places where tests need to
break things (``tests/test_faults.py``). With ``DEAR_RERANK_TEST_HOOKS`` unset, which is
always the case in production, a call is one ``os.environ`` lookup and returns None.
When it is set, its value and the call are handed to ``dear_udf.testing.faults``.

The points:

- ``"scoring-start"`` (``scorer=``), ``"batch-scored"`` (``batch=``),
  ``"partition-scored"`` and ``"scoring-end"`` (``scorer=``): inside a scoring task;
- ``"before-commit"`` (``files=``, ``table=``): on the driver, after the run's files
  are written and before the Delta commit;
- ``"chunk-committed"`` (``chunk=``, ``chunks=``, ``uri=``): on the driver, after a
  chunk's scores were committed to the score cache;
- ``"cache-appended"`` (``uri=``, ``attempt=``): on the driver, right after an append to
  the score cache landed, inside its retry loop.
"""

from __future__ import annotations

import os
from typing import Any

ENV = "DEAR_RERANK_TEST_HOOKS"


def setting() -> str | None:
    """The hooks' setting, or None (production)."""
    return os.environ.get(ENV) or None


def at(point: str, **context: Any) -> None:
    """Run the test hooks of ``point``; a no-op unless ``DEAR_RERANK_TEST_HOOKS`` is set."""
    value = setting()
    if value is None:
        return
    from .testing import faults

    faults.at(point, value, **context)
