"""Files that appear whole or not at all: written beside their target, renamed into place.

The job creates these before it commits its table and renames them after, so that once
the table is committed nothing is left that can fail but a rename (``spark/steps.py``, ``write_last``).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable

from ..exceptions import OutputError
from ..paths import location


class StagedFile:
    """A new file for ``path``: created now beside it, moved onto it by ``publish()``.

    Creating it first proves that the folder is writable. The rename is atomic on POSIX
    file systems, so a reader sees the old file or the new one. The file gets the mode new
    files usually get (0666 less the umask, e.g. 0644), not ``mkstemp``'s 0600. Leaving the
    ``with`` block without ``publish()`` removes it.

    A remote ``path`` (``paths.location``: ``dbfs:/``, ``s3a://``...) is staged in a local
    temporary folder and handed to ``upload(local_file, path)`` by ``publish()``.

    Example:
        >>> with StagedFile("/tmp/example.json") as staged:
        ...     staged.write_text("{}")
        ...     staged.publish()
    """

    def __init__(self, path: str | os.PathLike[str], *, upload: Callable[[str, str], None] | None = None) -> None:
        self.path = os.fspath(path)
        where = location(self.path)
        self.upload = None if where.is_local else upload
        if not where.is_local and upload is None:
            raise OutputError(f"{self.path}: a remote file needs an uploader (the job writes it through Spark).")
        directory, name = os.path.split(where.local) if where.is_local else (tempfile.gettempdir(), where.name)
        self.target = where.local if where.is_local else self.path
        # The target's own name last, so a writer that looks at the suffix (".gz") sees it.
        self.tmp = os.path.join(directory, f".{uuid.uuid4().hex[:12]}.{name}")
        self.published = False
        try:
            os.makedirs(directory, exist_ok=True)
            os.close(os.open(self.tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write here ({exc}).") from exc

    def write_text(self, text: str) -> None:
        try:
            with open(self.tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write ({exc}).") from exc

    def publish(self) -> None:
        if self.upload is not None:
            self.upload(self.tmp, self.target)
            self.discard()
            self.published = True
            return
        try:
            os.replace(self.tmp, self.target)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot move the new file into place ({exc}).") from exc
        self.published = True

    def discard(self) -> None:
        if not self.published:
            try:
                os.remove(self.tmp)
            except FileNotFoundError:
                pass

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()
