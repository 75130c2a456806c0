"""dear-rerank: bulk reranking with DeAR rerankers on Apache Spark.

The core (tokenization, model, scorer) imports neither pyspark nor torch at import time;
the Spark adapter lives in ``dear_udf.spark``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .tokenization import Layout
from .model import ModelSpec

__all__ = ["Layout", "ModelSpec", "__version__"]
