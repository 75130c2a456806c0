"""Refusals before writing, on the run's counts alone (issue 13, cases 2 and 4); no Spark."""

from __future__ import annotations

import os
import stat

import pytest

from dear_udf.exceptions import RunRefusedError
from dear_udf.guards import check_accounted, check_kept, check_scored
from dear_udf.summary import JoinCounts, ReadCounts

from .jobdata import a_summary


def _counts(read: int, kept: int, **dropped: int) -> tuple[ReadCounts, JoinCounts]:
    s = a_summary(candidates_read=read, candidates_kept=kept, dropped=dropped)
    return s.read_counts, s.join_counts


def check(read: int, kept: int, *, max_drop_share: float, allow_empty: bool, **dropped: int) -> None:
    check_kept(*_counts(read, kept, **dropped), run_id="night-1", max_drop_share=max_drop_share, allow_empty=allow_empty)


def test_dropping_more_than_the_share_within_depth_is_refused():
    # 100 read, 40 beyond depth (normal), 31 of the other 60 dropped: 51.7% > 50%.
    dropped = {"beyond_depth": 40, "doc_id_not_in_corpus": 31}
    with pytest.raises(RunRefusedError, match=r"run_id='night-1': 31 of 60 candidates within depth were dropped \(51\.7%, more than max_drop_share=0\.5; beyond_depth=40, doc_id_not_in_corpus=31\)"):
        check(100, 29, max_drop_share=0.5, allow_empty=False, **dropped)
    check(100, 29, max_drop_share=0.6, allow_empty=False, **dropped)
    check(100, 29, max_drop_share=0.5, allow_empty=True, **dropped)


def test_beyond_depth_alone_is_never_a_reason_to_refuse():
    check(1000, 100, max_drop_share=0.0, allow_empty=False, beyond_depth=900)


def test_nothing_kept_is_refused_unless_allowed():
    with pytest.raises(RunRefusedError, match=r"nothing to write, 0 of 8 candidates kept \(dropped: null_id=8\)"):
        check(8, 0, max_drop_share=1.0, allow_empty=False, null_id=8)
    check(8, 0, max_drop_share=1.0, allow_empty=True, null_id=8)


def test_non_finite_scores_are_refused_with_examples():
    s = a_summary(candidates_read=3, candidates_kept=3, pairs_scored=3, non_finite_scores=1)
    with pytest.raises(RunRefusedError, match=r"1 of 3 scores are NaN or infinite \(e\.g\. q1/d2=inf\)"):
        check_scored(s.join_counts, s.score_counts, run_id="night-1", examples=["q1/d2=inf"])
    short = a_summary(candidates_read=3, candidates_kept=3, pairs_scored=1, cache_hits=1)
    with pytest.raises(RunRefusedError, match=r"scored 1 pairs and found 1 in the cache but kept 3"):
        check_scored(short.join_counts, short.score_counts, run_id="night-1")


def test_counts_that_do_not_balance_are_refused():
    ok = a_summary(candidates_read=5, pairs_scored=2, cache_hits=1, dropped={"null_id": 2}, queries_in_candidates=2, output_queries=2)
    check_accounted(ok.read_counts, ok.join_counts, ok.score_counts, ok.output_counts)
    assert ok.accounted and ok.queries_accounted
    lost = a_summary(candidates_read=5, pairs_scored=2, cache_hits=1, dropped={"null_id": 1}, queries_in_candidates=2, output_queries=2)
    with pytest.raises(RunRefusedError, match="accounting does not balance"):
        check_accounted(lost.read_counts, lost.join_counts, lost.score_counts, lost.output_counts)


def test_summary_is_written_whole_and_readable_by_all(tmp_path):
    from dear_udf.io.staged import StagedFile

    old = os.umask(0o022)
    try:
        path = tmp_path / "sub" / "out.night-1.summary.json"
        with StagedFile(path) as staged:  # how the job writes it (steps.write_last)
            staged.write_text(a_summary(candidates_read=1, candidates_kept=1).to_json())
            staged.publish()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left
