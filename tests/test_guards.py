"""Refusals before writing, on the run's counts alone (issue 13, cases 2 and 4); no Spark."""

from __future__ import annotations

import os
import stat

import pytest

from dear_udf.exceptions import RunRefusedError
from dear_udf.guards import check_kept, check_scored
from dear_udf.summary import RunSummary


def _summary(read: int, kept: int, **dropped: int) -> RunSummary:
    s = RunSummary(run_id="night-1", model="m", output="out", format="delta")
    s.candidates_read, s.candidates_kept, s.dropped = read, kept, dropped
    return s


def test_dropping_more_than_the_share_within_depth_is_refused():
    # 100 read, 40 beyond depth (normal), 31 of the other 60 dropped: 51.7% > 50%.
    s = _summary(100, 29, beyond_depth=40, doc_id_not_in_corpus=31)
    with pytest.raises(RunRefusedError, match=r"31 of 60 candidates within depth were dropped \(51\.7%, more than max_drop_share=0\.5; beyond_depth=40, doc_id_not_in_corpus=31\)"):
        check_kept(s, max_drop_share=0.5, allow_empty=False)
    check_kept(s, max_drop_share=0.6, allow_empty=False)
    check_kept(s, max_drop_share=0.5, allow_empty=True)


def test_beyond_depth_alone_is_never_a_reason_to_refuse():
    check_kept(_summary(1000, 100, beyond_depth=900), max_drop_share=0.0, allow_empty=False)


def test_nothing_kept_is_refused_unless_allowed():
    with pytest.raises(RunRefusedError, match=r"nothing to write, 0 of 8 candidates kept \(dropped: null_id=8\)"):
        check_kept(_summary(8, 0, null_id=8), max_drop_share=1.0, allow_empty=False)
    check_kept(_summary(8, 0, null_id=8), max_drop_share=1.0, allow_empty=True)


def test_non_finite_scores_are_refused_with_examples():
    s = _summary(3, 3)
    s.pairs_scored, s.non_finite_scores = 3, 1
    with pytest.raises(RunRefusedError, match=r"1 of 3 scores are NaN or infinite \(e\.g\. q1/d2=inf\)"):
        check_scored(s, examples=["q1/d2=inf"])


def test_summary_is_written_whole_and_readable_by_all(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "sub" / "out.night-1.summary.json"
        _summary(1, 1).write_json(str(path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left
