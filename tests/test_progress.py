"""Progress of running Spark stages in the driver's log, labelled with the job's step."""

from __future__ import annotations

import logging
import re

import pytest

from dear_udf.spark import progress

pytestmark = [pytest.mark.spark]

LINE = re.compile(r"^score: Spark stage \d+: (\d)/4 tasks done, (\d) running, [\dhms]+ elapsed(, ETA [\dhms]+)?$")


def _slow_task(x):
    import time

    time.sleep(0.5)
    return x


def test_running_stages_are_logged_with_tasks_done_and_total(spark, caplog):
    progress.set_step("score")
    with caplog.at_level(logging.INFO, logger="dear_udf.spark.progress"):
        with progress.StageProgress(spark, interval=0.05):
            assert spark.sparkContext.parallelize(range(4), 4).map(_slow_task).sum() == 6
    lines = [r.getMessage() for r in caplog.records if r.name == "dear_udf.spark.progress"]
    matches = [LINE.match(line) for line in lines]
    assert lines and all(matches), lines
    # First seen with no task done, a stage with some tasks done has an ETA.
    assert all(bool(m.group(3)) == (0 < int(m.group(1)) < 4) for m in matches), lines
    # Stopping clears the step, and an idle context has nothing to report.
    assert progress._step == ""
    idle = progress.StageProgress(spark)
    assert idle.poll() == [] and idle.poll() == []


def test_durations_read_like_a_clock():
    assert progress._duration(42) == "42s"
    assert progress._duration(25 * 60 + 10) == "25m10s"
    assert progress._duration(3 * 3600 + 7 * 60 + 30) == "3h07m"
