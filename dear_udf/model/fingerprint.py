"""Which model produced an output: a SHA-256 over the files a load reads, and the revision.

The fingerprint goes into the output's ``model`` column (``spec.model_label``) and the
score cache's key (``cache.keys``): one changed byte of a weight, config or tokenizer
file changes it, and a renamed copy of the same files does not.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path


def revision_of(directory: Path, requested: str | None) -> str | None:
    """The revision a folder holds: a hub snapshot's commit, else the one ``requested``.

    Example:
        >>> revision_of(Path("/hub/models--x/snapshots/" + "a" * 40), None)
        'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
    """
    # A hub snapshot lives in .../snapshots/<commit>/: that commit is the resolved revision.
    if directory.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", directory.name):
        return directory.name
    return requested


def _sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:  # follows symlinks: the content is hashed, never a name
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.digest()


def fingerprint_files(read: tuple[tuple[Path, tuple[Path, ...]], ...]) -> tuple[str, list[str], list[str]]:
    """SHA-256 over the names (relative to their folder) and the contents of ``read``.

    ``read`` is ``ModelFiles.read``: the config and tokenizer files and exactly the weight
    files loading reads (an index's shards, in subfolders too). Every file's content is
    hashed through symlinks; a hub-cache blob's name is not trusted to be its hash, as
    any link can point at a file named by 64 hex characters.

    Returns:
        The fingerprint of all the files, the files' paths, and one fingerprint per folder
        of ``read`` (the base's, then the adapter's), each over that folder's files alone.

    Example:
        >>> fingerprint, files, per_folder = fingerprint_files(resolve_model_files(spec).read)
    """
    digest = hashlib.sha256()
    names: list[str] = []
    per_folder: list[str] = []
    for directory, files in read:
        folder = hashlib.sha256()
        for path in files:
            names.append(str(path))
            relative, content = Path(os.path.relpath(path, directory)).as_posix().encode(), _sha256(path)
            for each in (digest, folder):
                each.update(relative)
                each.update(content)
        per_folder.append(folder.hexdigest())
    return digest.hexdigest(), names, per_folder
