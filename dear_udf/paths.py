"""What a path is, decided in one place: local or remote, and how each tool is given it.

Every path the job reads or writes (the inputs, the output table, the score cache, the
scratch cache, the summary and the TREC file) goes through ``location``:

=================================================  =======  ===============================
written as                                         kind     ``local`` (the OS path)
=================================================  =======  ===============================
``reranked``, ``../x``, ``/tables/x``              local    absolute path
``/Volumes/<catalog>/<schema>/<volume>/x``         local    itself (Unity Catalog volumes
                                                            are mounted on every node)
``file:/tmp/x``, ``file:///tmp/x``,                local    ``/tmp/x``
``file://localhost/tmp/x``
``dbfs:/x``, ``s3://``, ``s3a://``, ``abfss://``,  remote   None: opened by Spark's Hadoop
``gs://``, ``hdfs://``, any ``scheme:/...``                 file systems (or ``deltalake``)
=================================================  =======  ===============================

Local paths are handled with Python's own file functions and given to Spark as absolute
paths; remote ones are given to Spark as written. ``deltalake`` (Delta without a JVM)
opens local paths and the object stores of ``DELTALAKE_SCHEMES``; ``dbfs:`` and ``hdfs:``
need Spark's Delta (Databricks has it; spark-submit adds it with ``--packages``).

Example:
    >>> location("file:/tmp/reranked").local
    '/tmp/reranked'
    >>> location("dbfs:/tables/reranked").sibling(".reranked.2026-11-24.score-cache").text
    'dbfs:/tables/.reranked.2026-11-24.score-cache'
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass

# A URI: a scheme of two or more characters (a Windows drive letter is not one), ':', '/'.
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(/.*)$")
# Object stores deltalake (delta-rs) opens itself, with credentials from the environment.
DELTALAKE_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "azure"})


@dataclass(frozen=True)
class Location:
    """A path as the user wrote it (``text``), and its OS path when it is local.

    ``scheme`` is the URI scheme of a remote path (``"dbfs"``, ``"s3a"``), or None.
    """

    text: str
    local: str | None
    scheme: str | None = None

    @property
    def is_local(self) -> bool:
        return self.local is not None

    @property
    def for_spark(self) -> str:
        """What Spark's readers and writers are given: the absolute path, or the URI."""
        return self.local if self.local is not None else self.text

    @property
    def for_deltalake(self) -> str | None:
        """What ``deltalake`` is given, or None where it cannot open the store (``dbfs:``)."""
        if self.local is not None:
            return self.local
        return self.text if self.scheme in DELTALAKE_SCHEMES else None

    @property
    def name(self) -> str:
        """The last part of the path (a table's folder name)."""
        return posixpath.basename((self.local or self.text).rstrip("/"))

    def sibling(self, name: str) -> Location:
        """The entry ``name`` beside this one, in the same folder and written the same way."""
        if self.local is not None:
            return location(os.path.join(os.path.dirname(self.local.rstrip("/") or "/"), name))
        head = self.text.rstrip("/").rpartition("/")[0]
        return location(f"{head}/{name}")

    def join(self, *parts: str) -> Location:
        """``parts`` under this folder."""
        if self.local is not None:
            return location(os.path.join(self.local, *parts))
        return location("/".join([self.text.rstrip("/"), *parts]))

    def contains(self, other: Location) -> bool:
        """True when ``other`` is this path or lies under it."""
        if self.is_local and other.is_local:
            return os.path.commonpath([self.local, other.local]) == self.local
        if self.is_local or other.is_local:
            return False
        mine = self.text.rstrip("/")
        return other.text == mine or other.text.startswith(mine + "/")


def _file_uri_path(rest: str) -> str | None:
    """The OS path of a ``file:`` URI's part after ``file:``; None for another host's file."""
    if not rest.startswith("//"):
        return rest  # file:/tmp/x, as Spark prints local paths
    host, _, path = rest[2:].partition("/")
    if host not in ("", "localhost"):
        return None
    return "/" + path


def location(path: str | os.PathLike[str]) -> Location:
    """Classify ``path`` (see the module's table).

    Raises:
        ValueError: ``path`` is empty.

    Example:
        >>> location("s3a://bucket/runs").is_local
        False
    """
    text = os.fspath(path)
    if not isinstance(text, str) or not text:
        raise ValueError(f"a path must be a non-empty string, got {path!r}.")
    found = _URI.match(text)
    if found is None:
        return Location(text, os.path.abspath(os.path.expanduser(text)))
    scheme = found.group(1).lower()
    if scheme == "file":
        local = _file_uri_path(found.group(2))
        if local is not None:
            return Location(text, os.path.abspath(local))
    return Location(text, None, scheme)


def is_local(path: str | os.PathLike[str]) -> bool:
    """True for paths this machine opens itself (see ``location``)."""
    return location(path).is_local
