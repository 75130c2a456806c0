"""What must hold before a run's rows replace a night: checks on the run's counts.

A rerun replaces its ``run_id`` partition, so a run that read an empty or truncated input
would publish an empty or thin night over a good one, and a broken model would publish
NaN rankings. The job calls these checks before it writes anything; each refusal raises
``RunRefusedError`` in one line with the counts and the reason. No Spark here: they read
the steps' parts (``summary.py``) only.

Example:
    >>> check_kept(read, join, run_id="2026-11-22", max_drop_share=0.5, allow_empty=False)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

from .exceptions import RunRefusedError
from .summary import JoinCounts, OutputCounts, ReadCounts, ScoreCounts, accounted, queries_accounted

# Dropping candidates beyond --depth is the point of a depth, not a sign of bad input.
NORMAL_DROPS = ("beyond_depth",)


def _reasons(join: JoinCounts) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(join.dropped.items()) if v) or "none dropped"


def check_kept(read: ReadCounts, join: JoinCounts, *, run_id: str, max_drop_share: float, allow_empty: bool) -> None:
    """Refuse a run that keeps no candidate, or drops too many of those within depth.

    The share is (candidates dropped for any reason but ``beyond_depth``) / (candidates
    read less ``beyond_depth``). ``allow_empty`` lets both through.

    Raises:
        RunRefusedError: naming the counts, the reasons and the overrides.
    """
    if allow_empty:
        return
    prefix = f"run_id={run_id!r}"
    if join.candidates_kept == 0:
        what = "the candidates input has no rows" if read.candidates_read == 0 else f"dropped: {_reasons(join)}"
        raise RunRefusedError(
            f"{prefix}: nothing to write, 0 of {read.candidates_read} candidates kept ({what}); refusing to "
            "replace the night with an empty one. Check the inputs, or pass --allow-empty (allow_empty: true)."
        )
    normal = sum(join.dropped.get(r, 0) for r in NORMAL_DROPS)
    within = read.candidates_read - normal
    dropped = sum(join.dropped.values()) - normal
    if within and dropped / within > max_drop_share:
        raise RunRefusedError(
            f"{prefix}: {dropped} of {within} candidates within depth were dropped ({dropped / within:.1%}, "
            f"more than max_drop_share={max_drop_share:g}; {_reasons(join)}); refusing to write. Check the inputs, "
            "raise max_drop_share (--max-drop-share), or pass --allow-empty."
        )


def check_scored(join: JoinCounts, score: ScoreCounts, *, run_id: str, examples: Sequence[str] = ()) -> None:
    """Refuse a run whose scores are missing or not finite (NaN, +-inf).

    Args:
        join, score: the join's and the score step's counts.
        examples: a few ``query/doc=score`` strings to show.
    """
    prefix = f"run_id={run_id!r}"
    if score.pairs_scored + score.cache_hits != join.candidates_kept * score.adapters_per_pair:
        under = f" under each of {score.adapters_per_pair} adapters" if score.adapters_per_pair > 1 else ""
        raise RunRefusedError(
            f"{prefix}: scored {score.pairs_scored} pairs and found {score.cache_hits} in the cache "
            f"but kept {join.candidates_kept}{under}; refusing to write."
        )
    if score.non_finite_scores:
        shown = f" (e.g. {', '.join(examples)})" if examples else ""
        raise RunRefusedError(
            f"{prefix}: {score.non_finite_scores} of {score.pairs_scored + score.cache_hits} scores are NaN or infinite{shown}; "
            "the model's weights or dtype give non-finite scores; refusing to write."
        )


def check_accounted(read: ReadCounts, join: JoinCounts, score: ScoreCounts, output: OutputCounts) -> None:
    """Refuse a run whose counts do not balance (see ``summary.py``)."""
    if not (accounted(read, join, score) and queries_accounted(output)):
        counts = {part: vars(p) for part, p in (("read", read), ("join", join), ("score", score), ("output", output))}
        raise RunRefusedError(f"accounting does not balance; refusing to write: {counts}")
