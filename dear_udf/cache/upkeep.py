"""Upkeep of a score cache: what it holds (``cache_stats``), fewer and larger files
(``cache_compact``) and dropping what is no longer used (``cache_vacuum``). All run
through ``deltalake`` on the driver, without Spark.

Compaction: every chunk of every night is its own commit, so a month of nights leaves
hundreds of small files per scorer key, and a lookup opens every one of them.
``cache_compact`` rewrites them into files of about the target size (Delta's OPTIMIZE).
Its commit only *replaces* files (``dataChange=false``): the entries are the same, the
old files leave the table but stay on disk until ``cache_vacuum`` removes them past the
retention, so a night whose lookup listed them keeps reading them. Appends of a running
night commit beside it (appends never conflict with a compaction; a compaction that lost
a commit race retries from the new snapshot, where it may find nothing left to do).

Retention: ``cache_vacuum`` first deletes entries (one Delta commit), then runs Delta's
VACUUM, which removes the files no longer in the table *and older than the retention*.
A night keeps reading the snapshot its lookup started with until it ends (a lost executor
makes it read those files again), so a file may go only once no running night can still
need it. The default is Delta's own check, 168 hours (the table's
``delta.deletedFileRetentionDuration`` when set). A shorter retention may be given down
to ``MIN_RETENTION_HOURS`` (24 hours: longer than a night runs); below it only with
``allow_short_retention``, which says no run is reading the cache: a night running
meanwhile would then fail on a missing file, or with ``spark.sql.files.ignoreMissingFiles``
silently lose its hits.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from typing import Any

import pyarrow as pa

from ..paths import location
from .keys import KEY_HEX_CHARS
from .. import schema as S
from .table import SCORED_AT, SCORER, SCORER_KEY, CacheError, check_cache

DELETE_ATTEMPTS = 5
COMPACT_ATTEMPTS = 5
# The shortest retention given without ``allow_short_retention``: longer than any night runs.
MIN_RETENTION_HOURS = 24


def _folder_bytes(uri: str) -> int | None:
    local = location(uri).local
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


def _existing(uri: str):
    table = check_cache(uri)
    if table is None:
        raise CacheError(f"{uri}: there is no score cache here (no Delta table).")
    return table


def cache_stats(uri: str) -> dict[str, Any]:
    """Per scorer key: entries, files, bytes, the oldest/newest ``scored_at``, the first and
    last run id, and what the key was computed with (``scorer``: model and adapter
    fingerprints, dtype, attention, layout, device, library versions, matmul precision;
    None for entries written before format 2).

    Read from the Delta log's per-file statistics and one row of the oldest and the newest
    entry of each key (the row groups holding them; no scan); a file written without statistics makes its scorer key's
    figures come from a scan of two columns. ``folder_bytes`` counts everything under a
    local path, including files that left the table and wait for ``cache_vacuum``;
    ``table_bytes`` counts the table's current files.

    Example:
        >>> cache_stats("/tables/score-cache")["entries"]  # doctest: +SKIP
        1200000
    """
    table = _existing(uri)
    adds = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    per_key: dict[str, dict[str, Any]] = {}
    ends: dict[str, dict[str, Any]] = {}
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
            end = ends.setdefault(key, {"first": (low, add["path"]), "last": (high, add["path"])})
            end["first"] = min(end["first"], (low, add["path"]))
            end["last"] = max(end["last"], (high, add["path"]))
    for key in unstated:  # exact figures for files without statistics
        import pyarrow.compute as pc

        import pyarrow.dataset as ds

        from ..io.delta_writer import as_dataset

        times = as_dataset(table).to_table(columns=[SCORED_AT], filter=ds.field(SCORER_KEY) == key).column(SCORED_AT)
        low_high = pc.min_max(times).as_py()
        per_key[key].update(entries=len(times), oldest=low_high["min"], newest=low_high["max"])
    for key, row in per_key.items():
        row.update(_described(table, ends.get(key)))
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


def _end_row(table: Any, path: str, columns: list[str], *, last: bool) -> dict[str, Any]:
    """``columns`` (those the file holds) of the file's earliest (or ``last``: latest)
    scored row.

    A file of one chunk holds one ``scored_at``, but a compacted file holds many nights:
    only the row group whose statistics reach furthest is read, and of it two or three
    columns.
    """
    from urllib.parse import unquote

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ..io.delta_writer import table_file_system

    fs = table_file_system(table.table_uri)
    handle = pq.ParquetFile(fs.open_input_file(unquote(path)))
    names = handle.schema_arrow.names
    present = [c for c in columns if c in names]
    if not present or handle.metadata.num_rows == 0:
        return {}
    if SCORED_AT not in names:
        return handle.read_row_group(0, columns=present).slice(0, 1).to_pylist()[0]
    at = names.index(SCORED_AT)
    groups = [handle.metadata.row_group(g).column(at).statistics for g in range(handle.metadata.num_row_groups)]
    if all(g is not None and g.has_min_max for g in groups):
        ends = [g.max if last else g.min for g in groups]
        chosen = [ends.index(max(ends) if last else min(ends))]
    else:
        chosen = list(range(len(groups)))
    rows = handle.read_row_groups(chosen, columns=[SCORED_AT, *present])
    times = rows.column(SCORED_AT)
    end = pc.max(times) if last else pc.min(times)
    if not end.is_valid:  # no row has a time: any row says as much
        return rows.slice(0, 1).select(present).to_pylist()[0]
    return rows.filter(pc.equal(times, end)).slice(0, 1).select(present).to_pylist()[0]


def _described(table: Any, ends: dict[str, Any] | None) -> dict[str, Any]:
    """``first_run_id``, ``last_run_id`` and ``scorer`` from the oldest and newest entries."""
    import json

    if ends is None:
        return {"first_run_id": None, "last_run_id": None, "scorer": None}
    first = _end_row(table, ends["first"][1], [S.RUN_ID], last=False)
    last = _end_row(table, ends["last"][1], [S.RUN_ID, SCORER], last=True)
    scorer = last.get(SCORER)
    return {"first_run_id": first.get(S.RUN_ID), "last_run_id": last.get(S.RUN_ID), "scorer": json.loads(scorer) if scorer else None}


def scorer_summary(scorer: dict[str, Any] | None) -> str:
    """One line of what a scorer key was computed with, for ``format_stats``."""
    if not scorer:
        return "computed with: not recorded (written before format 2; no run reads these entries)"
    model = scorer.get("model", {})
    env = scorer.get("environment", {})
    libraries = " ".join(f"{name} {version}" for name, version in sorted(env.get("libraries", {}).items()))
    parts = [
        f"model {str(model.get('base'))[:16]}",
        f"adapter {str(model.get('adapter'))[:16]}" if model.get("adapter") else "no adapter",
        f"dtype {scorer.get('dtype')}",
        f"device {env.get('device')}",
        f"matmul {env.get('matmul', {}).get('float32_matmul_precision')}",
        libraries,
    ]
    return "computed with: " + ", ".join(p for p in parts if p)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_stats(stats: dict[str, Any]) -> str:
    """``cache_stats`` as a small table, newest scorer key first, each key followed by
    what it was computed with."""
    header = (SCORER_KEY, "entries", "files", "size", "oldest", "newest", "runs")
    body = [
        (r[SCORER_KEY], f"{r['entries']:,}", str(r["files"]), _size(r["bytes"]), r["oldest"] or "-", r["newest"] or "-",
         f"{r['first_run_id'] or '-'} .. {r['last_run_id'] or '-'}")
        for r in stats["scorer_keys"]
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 4, 5, 6) else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in [header]]
    for row, described in zip(body, stats["scorer_keys"]):
        lines.append("  ".join(cell.ljust(w) if i in (0, 4, 5, 6) else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        lines.append("    " + scorer_summary(described["scorer"]))
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


def _predicate(keep: list[str] | None, drop: list[str], cutoff: dt.datetime | None) -> str | None:
    parts = []
    if keep is not None:
        parts.append(f"{SCORER_KEY} NOT IN ({', '.join(repr(k) for k in keep)})" if keep else "TRUE")
    if drop:
        parts.append(f"{SCORER_KEY} IN ({', '.join(repr(k) for k in drop)})")
    if cutoff is not None:
        # A string literal is coerced to the column's type (timestamp, UTC); a typed
        # timestamp literal is not comparable with it in delta-rs' SQL.
        parts.append(f"{SCORED_AT} < '{cutoff.astimezone(dt.timezone.utc).isoformat()}'")
    return " OR ".join(f"({p})" for p in parts) or None


def _delete(uri: str, predicate: str) -> int:
    """Delete the entries ``predicate`` selects, in one Delta commit; the rows deleted. A run
    that appended meanwhile makes the delete retry from the new snapshot."""
    from ..io.delta_writer import reason, retrying

    def recover(exc: Exception, n: int) -> None:
        if n == DELETE_ATTEMPTS:
            raise CacheError(f"{uri}: deleting cache entries failed after {n} attempts ({reason(exc)}).") from exc

    return retrying(lambda n: int(_existing(uri).delete(predicate).get("num_deleted_rows") or 0), attempts=DELETE_ATTEMPTS, recover=recover)


def cache_vacuum(
    uri: str,
    *,
    keep_scorer_keys: list[str] | None = None,
    drop_scorer_keys: list[str] | None = None,
    older_than_days: float | None = None,
    retention_hours: int | None = None,
    allow_short_retention: bool = False,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Delete entries of other scorer keys and/or older than N days, then Delta VACUUM.

    Args:
        uri: the cache.
        keep_scorer_keys: keep only these scorer keys' entries (None: keep every key;
            an empty list deletes every entry).
        drop_scorer_keys: delete these scorer keys' entries.
        older_than_days: also delete entries scored more than this many days before ``now``.
        retention_hours: files that left the table are removed once older than this
            (default: Delta's check of the table's retention, 168 hours); at least
            ``MIN_RETENTION_HOURS``, see the module docstring.
        allow_short_retention: accept a retention below ``MIN_RETENTION_HOURS``: the caller
            says no run is reading the cache.
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
    drop = _check_keys(list(drop_scorer_keys or []))
    if older_than_days is not None and not (isinstance(older_than_days, (int, float)) and older_than_days >= 0):
        raise CacheError(f"older_than_days must be a non-negative number, got {older_than_days!r}.")
    if retention_hours is not None and (not isinstance(retention_hours, int) or isinstance(retention_hours, bool) or retention_hours < 0):
        raise CacheError(f"retention_hours must be a non-negative integer, got {retention_hours!r}.")
    if retention_hours is not None and retention_hours < MIN_RETENTION_HOURS and not allow_short_retention:
        raise CacheError(
            f"retention_hours={retention_hours} is below {MIN_RETENTION_HOURS} hours: a night reading the cache meanwhile "
            "would fail on a missing file (or, with spark.sql.files.ignoreMissingFiles, silently lose its hits). Pass "
            "--allow-short-retention (allow_short_retention=True) only when no run is using the cache."
        )
    cutoff = None if older_than_days is None else (now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(days=older_than_days)
    predicate = _predicate(keep, drop, cutoff)
    before = cache_stats(uri)
    deleted = 0 if predicate is None else _delete(uri, predicate)
    table = _existing(uri)
    if retention_hours is None:
        removed = table.vacuum(dry_run=False)
    else:
        removed = table.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False)
    after = cache_stats(uri)
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


def _file_counts(stats: dict[str, Any]) -> dict[str, int]:
    return {r[SCORER_KEY]: r["files"] for r in stats["scorer_keys"]}


def cache_compact(uri: str, *, scorer_keys: list[str] | None = None, target_mib: int | None = None) -> dict[str, Any]:
    """Rewrite the small files of each scorer key (or of ``scorer_keys``) into files of
    about ``target_mib`` MiB, in one Delta commit that changes no entry (``dataChange=false``).

    Safe while nights run: their appends commit beside it, a lookup that listed the old
    files keeps reading them (they stay on disk until ``cache_vacuum`` past the retention),
    and running it again does nothing (a key's files already at the target stay as they are).

    Args:
        uri: the cache.
        scorer_keys: compact only these keys' files (default: every key's).
        target_mib: the files' target size (default: the table's ``delta.targetFileSize``,
            else deltalake's 100 MiB).

    Returns:
        ``files_before``, ``files_after`` (per scorer key too: ``scorer_keys``),
        ``files_removed``, ``files_added``, ``entries_before``, ``entries_after`` (an
        append landing meanwhile adds to the latter), ``table_bytes_before``,
        ``table_bytes_after``, ``version_before``, ``version_after``.

    Example:
        >>> cache_compact("/tables/score-cache")  # doctest: +SKIP
        {'files_before': 212, 'files_after': 9, ...}
    """
    from deltalake import CommitProperties

    from ..io.delta_writer import reason, retrying

    keys = None if scorer_keys is None else _check_keys(list(scorer_keys))
    if keys == []:
        raise CacheError("scorer_keys is empty: give at least one scorer key, or None for every key.")
    if target_mib is not None and (not isinstance(target_mib, int) or isinstance(target_mib, bool) or target_mib < 1):
        raise CacheError(f"target_mib must be a positive integer, got {target_mib!r}.")
    before = cache_stats(uri)
    filters = None if keys is None else [(SCORER_KEY, "in", keys)]
    props = CommitProperties(custom_metadata={"dear_rerank.operation": "cache compact"})

    def attempt(n: int) -> dict[str, Any]:
        return _existing(uri).optimize.compact(partition_filters=filters, target_size=None if target_mib is None else target_mib * 2**20,
                                               commit_properties=props)

    def recover(exc: Exception, n: int) -> None:
        if n == COMPACT_ATTEMPTS:
            raise CacheError(f"{uri}: compacting the cache failed after {n} attempts ({reason(exc)}).") from exc

    metrics = retrying(attempt, attempts=COMPACT_ATTEMPTS, recover=recover)
    after = cache_stats(uri)
    files_before, files_after = _file_counts(before), _file_counts(after)
    chosen = sorted(files_after if keys is None else set(keys) & set(files_after))
    return {
        "path": uri,
        "scorer_keys": {k: {"files_before": files_before.get(k, 0), "files_after": files_after[k]} for k in chosen},
        "files_before": sum(files_before.values()),
        "files_after": sum(files_after.values()),
        "files_removed": int(metrics.get("numFilesRemoved") or 0),
        "files_added": int(metrics.get("numFilesAdded") or 0),
        "entries_before": before["entries"],
        "entries_after": after["entries"],
        "table_bytes_before": before["table_bytes"],
        "table_bytes_after": after["table_bytes"],
        "version_before": before["version"],
        "version_after": after["version"],
    }
