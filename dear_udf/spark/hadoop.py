"""Files at remote locations (``dbfs:/``, ``s3a://``, ``abfss://``, ``hdfs://``...) through
the Hadoop file systems of the driver's JVM: the same ones, with the same credentials, that
Spark's readers and writers use. Local paths never come here (``paths.location``).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from ..exceptions import OutputError


def _fs(spark: Any, uri: str) -> tuple[Any, Any]:
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def reason(exc: Exception) -> str:
    """The Java exception's own line (Py4J's first line only names the call)."""
    java = getattr(exc, "java_exception", None)
    text = str(java.toString()) if java is not None else str(exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0][:300]


def entries(spark: Any, uri: str) -> list[tuple[str, bool]] | None:
    """(name, is folder) of the entries of the folder ``uri``; None when nothing is there;
    ``[("", False)]`` for a file. Raises what Hadoop raises (no file system for the scheme,
    no access)."""
    fs, path = _fs(spark, uri)
    if not fs.exists(path):
        return None
    if not fs.getFileStatus(path).isDirectory():
        return [("", False)]
    return [(st.getPath().getName(), bool(st.isDirectory())) for st in fs.listStatus(path)]


def delete(spark: Any, uri: str) -> None:
    """Delete ``uri`` and everything under it."""
    fs, path = _fs(spark, uri)
    fs.delete(path, True)


def upload(spark: Any, local_file: str, uri: str) -> None:
    """Copy a local file to ``uri``: first beside it under a hidden name, then renamed onto
    it, so a reader sees the old file or the new one (where the store renames atomically).

    Raises:
        OutputError: naming the target and Hadoop's reason.
    """
    head, _, name = uri.rstrip("/").rpartition("/")
    staged = f"{head}/.{uuid.uuid4().hex[:12]}.{name}"
    try:
        fs, target = _fs(spark, uri)
        jvm = spark.sparkContext._jvm
        tmp = jvm.org.apache.hadoop.fs.Path(staged)
        fs.copyFromLocalFile(False, True, jvm.org.apache.hadoop.fs.Path("file://" + os.path.abspath(local_file)), tmp)
        if fs.exists(target):
            fs.delete(target, False)
        if not fs.rename(tmp, target):
            raise OSError(f"rename of {staged} onto it failed")
    except Exception as exc:  # noqa: BLE001 - Py4JJavaError and friends, in one line
        raise OutputError(f"{uri}: cannot write ({reason(exc)}).") from exc
