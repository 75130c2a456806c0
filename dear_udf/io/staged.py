"""Files that appear whole or not at all: written beside their target, renamed into place.

The job creates these before it commits its table and renames them after, so that once
the table is committed nothing is left that can fail but a rename (``spark/job.py``).
"""

from __future__ import annotations

import os
import uuid

from ..exceptions import OutputError


class StagedFile:
    """A new file for ``path``: created now beside it, moved onto it by ``publish()``.

    Creating it first proves that the folder is writable. The rename is atomic on POSIX
    file systems, so a reader sees the old file or the new one. The file gets the mode new
    files usually get (0666 less the umask, e.g. 0644), not ``mkstemp``'s 0600. Leaving the
    ``with`` block without ``publish()`` removes it.

    Example:
        >>> with StagedFile("/tmp/example.json") as staged:
        ...     staged.write_text("{}")
        ...     staged.publish()
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        directory, name = os.path.split(os.path.abspath(self.path))
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
        try:
            os.replace(self.tmp, self.path)
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
