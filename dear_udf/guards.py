"""What must hold before a run's rows replace a night: checks on the run's counts.

A rerun replaces its ``run_id`` partition, so a run that read an empty or truncated input
would publish an empty or thin night over a good one, and a broken model would publish
NaN rankings. The job calls these checks before it writes anything; each refusal raises
``RunRefusedError`` in one line with the counts and the reason. No Spark here: they read
the ``RunSummary`` only.

Example:
    >>> check_kept(summary, max_drop_share=0.5, allow_empty=False)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

from .exceptions import RunRefusedError
from .summary import RunSummary

# Dropping candidates beyond --depth is the point of a depth, not a sign of bad input.
NORMAL_DROPS = ("beyond_depth",)


def _reasons(summary: RunSummary) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(summary.dropped.items()) if v) or "none dropped"


def check_kept(summary: RunSummary, *, max_drop_share: float, allow_empty: bool) -> None:
    """Refuse a run that keeps no candidate, or drops too many of those within depth.

    The share is (candidates dropped for any reason but ``beyond_depth``) / (candidates
    read less ``beyond_depth``). ``allow_empty`` lets both through.

    Raises:
        RunRefusedError: naming the counts, the reasons and the overrides.
    """
    if allow_empty:
        return
    prefix = f"run_id={summary.run_id!r}"
    if summary.candidates_kept == 0:
        what = "the candidates input has no rows" if summary.candidates_read == 0 else f"dropped: {_reasons(summary)}"
        raise RunRefusedError(
            f"{prefix}: nothing to write, 0 of {summary.candidates_read} candidates kept ({what}); refusing to "
            "replace the night with an empty one. Check the inputs, or pass --allow-empty (allow_empty: true)."
        )
    normal = sum(summary.dropped.get(r, 0) for r in NORMAL_DROPS)
    within = summary.candidates_read - normal
    dropped = sum(summary.dropped.values()) - normal
    if within and dropped / within > max_drop_share:
        raise RunRefusedError(
            f"{prefix}: {dropped} of {within} candidates within depth were dropped ({dropped / within:.1%}, "
            f"more than max_drop_share={max_drop_share:g}; {_reasons(summary)}); refusing to write. Check the inputs, "
            "raise max_drop_share (--max-drop-share), or pass --allow-empty."
        )


def check_scored(summary: RunSummary, *, examples: Sequence[str] = ()) -> None:
    """Refuse a run whose scores are missing or not finite (NaN, +-inf).

    Args:
        summary: with ``pairs_scored``, ``candidates_kept`` and ``non_finite_scores`` filled.
        examples: a few ``query/doc=score`` strings to show.
    """
    prefix = f"run_id={summary.run_id!r}"
    if summary.pairs_scored + summary.cache_hits != summary.candidates_kept:
        raise RunRefusedError(
            f"{prefix}: scored {summary.pairs_scored} pairs and found {summary.cache_hits} in the cache "
            f"but kept {summary.candidates_kept}; refusing to write."
        )
    if summary.non_finite_scores:
        shown = f" (e.g. {', '.join(examples)})" if examples else ""
        raise RunRefusedError(
            f"{prefix}: {summary.non_finite_scores} of {summary.pairs_scored} scores are NaN or infinite{shown}; "
            "the model's weights or dtype give non-finite scores; refusing to write."
        )


def check_accounted(summary: RunSummary) -> None:
    """Refuse a run whose counts do not balance (see ``summary.py``)."""
    if not (summary.accounted and summary.queries_accounted):
        raise RunRefusedError(f"accounting does not balance; refusing to write: {summary.as_dict()}")
