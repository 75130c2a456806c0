"""Probes the tests put into the code they watch: a scorer's forward passes, and an import
run in a fresh interpreter that cannot reach pyspark."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def record_shapes(scorer, method: str = "forward") -> list[tuple[int, int]]:
    """The ``(rows, width)`` of every call the scorer makes of ``method`` from now on
    (``forward``: each micro-batch; ``prefix_forward``: each batch of query prefixes)."""
    shapes: list[tuple[int, int]] = []
    inner = getattr(scorer, method)

    def recording(input_ids, *rest):
        shapes.append(tuple(input_ids.shape))
        return inner(input_ids, *rest)

    setattr(scorer, method, recording)
    return shapes


_BLOCK_PYSPARK = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pyspark":
            raise ImportError("pyspark is blocked in this test")
        return None

sys.meta_path.insert(0, Block())
"""


def run_without_pyspark(code: str) -> None:
    """Run ``code`` in a fresh interpreter where importing pyspark fails; it must print ``ok``."""
    result = subprocess.run([sys.executable, "-c", _BLOCK_PYSPARK + textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
