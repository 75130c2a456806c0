"""``dear-rerank cache stats|compact|vacuum PATH``: score cache upkeep.

Example:
    dear-rerank cache stats /tables/score-cache --json
    dear-rerank cache compact /tables/score-cache
    dear-rerank cache vacuum /tables/score-cache --keep-scorer-key 5f0c... --older-than-days 30
"""

from __future__ import annotations

import argparse
import json

from .upkeep import MIN_RETENTION_HOURS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    stats = sub.add_parser("stats", help="entries, size and age per scorer key", description="Entries, size and age per scorer key.")
    stats.add_argument("path", help="the score cache (a Delta table)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    compact = sub.add_parser(
        "compact",
        help="rewrite many small files into few large ones (no entry changes); safe while nights run",
        description="Rewrite each scorer key's small files (one per chunk of every night) into files of about the "
        "target size, in one Delta commit that changes no entry. Safe while nights run: their appends commit beside "
        "it, and a lookup that listed the old files keeps reading them; they stay on disk until `cache vacuum` "
        "removes them past the retention.",
    )
    compact.add_argument("path", help="the score cache (a Delta table)")
    compact.add_argument("--scorer-key", action="append", dest="keys", metavar="KEY",
                         help="compact only this scorer key's files (repeatable; default: every key's)")
    compact.add_argument("--target-mib", type=int, metavar="N",
                         help="target file size in MiB (default: the table's delta.targetFileSize, else deltalake's 100 MiB)")
    compact.add_argument("--json", action="store_true", help="print JSON instead of a line")
    vacuum = sub.add_parser(
        "vacuum",
        help="drop entries of other scorer keys or older than N days, then Delta VACUUM",
        description="Delete entries of other scorer keys and/or older than N days (one Delta commit), then "
        "remove files no longer in the table once older than the retention (Delta VACUUM).",
    )
    vacuum.add_argument("path", help="the score cache (a Delta table)")
    vacuum.add_argument("--keep-scorer-key", action="append", dest="keep", metavar="KEY",
                        help="keep this scorer key's entries and delete every other key's (repeatable)")
    vacuum.add_argument("--drop-scorer-key", action="append", dest="drop", metavar="KEY",
                        help="delete this scorer key's entries (repeatable)")
    vacuum.add_argument("--older-than-days", type=float, metavar="N", help="delete entries scored more than N days ago")
    vacuum.add_argument("--retention-hours", type=int, metavar="H",
                        help=f"remove files that left the table more than H hours ago (default: Delta's check of the "
                        f"table's retention, 168); at least {MIN_RETENTION_HOURS}, longer than a night runs")
    vacuum.add_argument("--allow-short-retention", action="store_true",
                        help=f"accept --retention-hours below {MIN_RETENTION_HOURS}: only when no run is using the cache. "
                        "A night reading it meanwhile fails on a missing file, or with spark.sql.files.ignoreMissingFiles "
                        "silently loses its hits")
    vacuum.add_argument("--json", action="store_true", help="print JSON instead of a line")


def main(args: argparse.Namespace) -> int:
    from .upkeep import cache_compact, cache_stats, cache_vacuum, format_stats

    if args.cache_command == "stats":
        stats = cache_stats(args.path)
        print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
        return 0
    if args.cache_command == "compact":
        result = cache_compact(args.path, scorer_keys=args.keys, target_mib=args.target_mib)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"{result['path']}: {result['files_before']} file(s) -> {result['files_after']} "
                  f"({result['files_removed']} rewritten into {result['files_added']}) under {len(result['scorer_keys'])} "
                  f"scorer key(s); {result['entries_after']:,} entries; the old files stay on disk until `cache vacuum`.")
        return 0
    result = cache_vacuum(args.path, keep_scorer_keys=args.keep, drop_scorer_keys=args.drop,
                          older_than_days=args.older_than_days, retention_hours=args.retention_hours,
                          allow_short_retention=args.allow_short_retention)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        freed = (result["folder_bytes_before"] or 0) - (result["folder_bytes_after"] or 0)
        print(f"{result['path']}: deleted {result['entries_deleted']:,} of {result['entries_before']:,} entries, "
              f"removed {result['files_vacuumed']} file(s) ({freed:,} bytes); {result['entries_after']:,} entries left.")
    return 0
