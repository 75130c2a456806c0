"""Upkeep of a score cache: what it holds (``cache_stats``) and dropping what is no longer
used (``cache_vacuum``). Both run through ``deltalake`` on the driver, without Spark.

Retention: ``cache_vacuum`` first deletes entries (one Delta commit), then runs Delta's
VACUUM, which removes the files no longer in the table *and older than the retention*.
The default is Delta's own, 168 hours (the table's ``delta.deletedFileRetentionDuration``
when set): a night running while the vacuum runs keeps reading the snapshot it started
with, whose files must stay on disk until it ends. ``retention_hours=0`` frees the space at
once; deltalake refuses a retention below the table's unless told not to enforce it
(``enforce_retention_duration=False``), which ``cache_vacuum`` does when a retention is
given, because the caller then chose it. Use 0 only when no run is using the cache.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import time
from typing import Any

import pyarrow as pa

from .keys import KEY_HEX_CHARS
from .table import SCORED_AT, SCORER_KEY, CacheError, check_cache

DELETE_ATTEMPTS = 5


def _folder_bytes(uri: str) -> int | None:
    local = uri[len("file://"):] if uri.startswith("file://") else (None if "://" in uri else uri)
    if local is None:
        return None
    total = 0
    for root, _dirs, files in os.walk(local):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:  # removed meanwhile by a concurrent vacuum
                pass
    return total


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _existing(uri: str, storage_options: dict[str, str] | None):
    table = check_cache(uri, storage_options=storage_options)
    if table is None:
        raise CacheError(f"{uri}: there is no score cache here (no Delta table).")
    return table


def cache_stats(uri: str, *, storage_options: dict[str, str] | None = None) -> dict[str, Any]:
    """Entries, files, bytes and the oldest/newest ``scored_at`` per scorer key.

    Read from the Delta log's per-file statistics (no data scanned); a file written
    without statistics makes its scorer key's figures come from a scan of two columns.
    ``folder_bytes`` counts everything under a local path, including files that left the
    table and wait for ``cache_vacuum``; ``table_bytes`` counts the table's current files.

    Example:
        >>> cache_stats("/tables/score-cache")["entries"]  # doctest: +SKIP
        1200000
    """
    table = _existing(uri, storage_options)
    adds = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    per_key: dict[str, dict[str, Any]] = {}
    unstated: set[str] = set()
    for add in adds:
        key = add.get(f"partition.{SCORER_KEY}")
        row = per_key.setdefault(key, {SCORER_KEY: key, "entries": 0, "files": 0, "bytes": 0, "oldest": None, "newest": None})
        row["files"] += 1
        row["bytes"] += int(add.get("size_bytes") or 0)
        records, low, high = add.get("num_records"), add.get(f"min.{SCORED_AT}"), add.get(f"max.{SCORED_AT}")
        if records is None or (records and (low is None or high is None)):
            unstated.add(key)
            continue
        row["entries"] += int(records)
        if records:
            row["oldest"] = low if row["oldest"] is None else min(row["oldest"], low)
            row["newest"] = high if row["newest"] is None else max(row["newest"], high)
    for key in unstated:  # exact figures for files without statistics
        import pyarrow.compute as pc

        times = table.to_pyarrow_table(partitions=[(SCORER_KEY, "=", key)], columns=[SCORED_AT]).column(SCORED_AT)
        low_high = pc.min_max(times).as_py()
        per_key[key].update(entries=len(times), oldest=low_high["min"], newest=low_high["max"])
    rows = sorted(per_key.values(), key=lambda r: (r["newest"] is None, -(r["newest"].timestamp() if r["newest"] else 0), str(r[SCORER_KEY])))
    for row in rows:
        row["oldest"], row["newest"] = _iso(row["oldest"]), _iso(row["newest"])
    return {
        "path": uri,
        "version": table.version(),
        "entries": sum(r["entries"] for r in rows),
        "table_bytes": sum(r["bytes"] for r in rows),
        "folder_bytes": _folder_bytes(uri),
        "scorer_keys": rows,
    }


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_stats(stats: dict[str, Any]) -> str:
    """``cache_stats`` as a small table, newest scorer key first."""
    header = (SCORER_KEY, "entries", "files", "size", "oldest", "newest")
    body = [
        (r[SCORER_KEY], f"{r['entries']:,}", str(r["files"]), _size(r["bytes"]), r["oldest"] or "-", r["newest"] or "-")
        for r in stats["scorer_keys"]
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 4, 5) else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in [header, *body]]
    lines.append(
        f"{stats['path']}: {stats['entries']:,} entries under {len(body)} scorer key(s), "
        f"{_size(stats['table_bytes'])} in the table, {_size(stats['folder_bytes'])} on disk, version {stats['version']}"
    )
    return "\n".join(lines)


def _check_keys(keys: list[str]) -> list[str]:
    for key in keys:
        if not isinstance(key, str) or not re.fullmatch(rf"[0-9a-f]{{{KEY_HEX_CHARS}}}", key):
            raise CacheError(f"a scorer key is {KEY_HEX_CHARS} lowercase hex characters (see `dear-rerank cache stats`), got {key!r}.")
    return keys


def _predicate(keep: list[str] | None, cutoff: dt.datetime | None) -> str | None:
    parts = []
    if keep is not None:
        parts.append(f"{SCORER_KEY} NOT IN ({', '.join(repr(k) for k in keep)})" if keep else "TRUE")
    if cutoff is not None:
        # A string literal is coerced to the column's type (timestamp, UTC); a typed
        # timestamp literal is not comparable with it in delta-rs' SQL.
        parts.append(f"{SCORED_AT} < '{cutoff.astimezone(dt.timezone.utc).isoformat()}'")
    return " OR ".join(f"({p})" for p in parts) or None


def _delete(uri: str, predicate: str, storage_options: dict[str, str] | None) -> int:
    """Delete the entries ``predicate`` selects, in one Delta commit; the rows deleted."""
    from deltalake.exceptions import DeltaError

    for attempt in range(1, DELETE_ATTEMPTS + 1):
        table = _existing(uri, storage_options)
        try:
            return int(table.delete(predicate).get("num_deleted_rows") or 0)
        except DeltaError as exc:  # a run appended meanwhile: delete from the new snapshot
            if attempt == DELETE_ATTEMPTS:
                raise CacheError(f"{uri}: deleting cache entries failed after {attempt} attempts ({exc}).") from exc
            time.sleep(random.uniform(0.05, 0.2) * attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


def cache_vacuum(
    uri: str,
    *,
    keep_scorer_keys: list[str] | None = None,
    older_than_days: float | None = None,
    retention_hours: int | None = None,
    now: dt.datetime | None = None,
    storage_options: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Delete entries of other scorer keys and/or older than N days, then Delta VACUUM.

    Args:
        uri: the cache.
        keep_scorer_keys: keep only these scorer keys' entries (None: keep every key;
            an empty list deletes every entry).
        older_than_days: also delete entries scored more than this many days before ``now``.
        retention_hours: files that left the table are removed once older than this
            (default: the table's retention, 168 hours); see the module docstring.
        now: the reference time of ``older_than_days`` (default: now).

    Returns:
        ``entries_before``, ``entries_deleted``, ``entries_after``, ``files_vacuumed``,
        ``folder_bytes_before``, ``folder_bytes_after``, ``retention_hours`` (None: the
        table's), ``predicate`` (None: nothing deleted, only VACUUM).

    Example:
        >>> cache_vacuum("/tables/score-cache", keep_scorer_keys=["5f0c..."], older_than_days=30)  # doctest: +SKIP
        {'entries_deleted': 120000, ...}
    """
    keep = None if keep_scorer_keys is None else _check_keys(list(keep_scorer_keys))
    if older_than_days is not None and not (isinstance(older_than_days, (int, float)) and older_than_days >= 0):
        raise CacheError(f"older_than_days must be a non-negative number, got {older_than_days!r}.")
    if retention_hours is not None and (not isinstance(retention_hours, int) or isinstance(retention_hours, bool) or retention_hours < 0):
        raise CacheError(f"retention_hours must be a non-negative integer, got {retention_hours!r}.")
    cutoff = None if older_than_days is None else (now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(days=older_than_days)
    predicate = _predicate(keep, cutoff)
    before = cache_stats(uri, storage_options=storage_options)
    deleted = 0 if predicate is None else _delete(uri, predicate, storage_options)
    table = _existing(uri, storage_options)
    if retention_hours is None:
        removed = table.vacuum(dry_run=False)
    else:
        removed = table.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False)
    after = cache_stats(uri, storage_options=storage_options)
    return {
        "path": uri,
        "predicate": predicate,
        "entries_before": before["entries"],
        "entries_deleted": deleted,
        "entries_after": after["entries"],
        "files_vacuumed": len(removed),
        "retention_hours": retention_hours,  # None: the table's own (168 hours by default)
        "folder_bytes_before": before["folder_bytes"],
        "folder_bytes_after": after["folder_bytes"],
    }
