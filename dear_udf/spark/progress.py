"""Progress of long Spark stages in the driver's log, for nights that score for hours.

Spark's console progress bar is off (it garbles job logs) and a cluster's UI is often out
of reach, so a driver thread polls ``SparkContext.statusTracker()`` every
``INTERVAL_SECONDS`` and logs, for each Spark stage running longer than that, its tasks done
out of total, the tasks running, and an ETA from the stage's pace since it was first seen::

    12:31:05 score: Spark stage 7: 120/400 tasks done, 8 running, 25m10s elapsed, ETA 58m43s

The label (``score``) is the job step running (``set_step``), so a reader knows which part
of read -> join -> score -> top-k -> write the numbers belong to.

Example:
    >>> reporter = StageProgress(spark).start()
    >>> ...  # run Spark jobs
    >>> reporter.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 30.0

# The job step now running; set by the job driver, read by the reporter thread. One job runs
# per driver process, so a module-level value is enough.
_step = ""


def set_step(name: str) -> None:
    """Name the job step that the next progress lines belong to (``read``, ``score``, ...)."""
    global _step
    _step = name


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class StageProgress:
    """A driver thread logging the progress of running Spark stages at an interval.

    Args:
        spark: the SparkSession whose stages are watched.
        interval: seconds between two reports; None reads ``INTERVAL_SECONDS``.
    """

    def __init__(self, spark: Any, *, interval: float | None = None) -> None:
        self._tracker = spark.sparkContext.statusTracker()
        self.interval = INTERVAL_SECONDS if interval is None else interval
        self._stop = threading.Event()
        self._seen: dict[int, tuple[float, int]] = {}  # stage id -> (first seen, tasks done then)
        self._thread: threading.Thread | None = None

    def poll(self) -> list[str]:
        """Log one line per running Spark stage now; return the lines."""
        lines = []
        now = time.monotonic()
        for stage_id in sorted(self._tracker.getActiveStageIds()):
            info = self._tracker.getStageInfo(stage_id)
            if info is None or not info.numTasks:
                continue
            done, total = info.numCompletedTasks, info.numTasks
            # pyspark's stage info has no start time: time and pace are measured from the
            # first sighting, and a stage is reported from its second, so short stages stay
            # out of the log and every line has a real elapsed time.
            if stage_id not in self._seen:
                self._seen[stage_id] = (now, done)
                continue
            first_time, first_done = self._seen[stage_id]
            elapsed = now - first_time
            parts = [f"{done}/{total} tasks done", f"{info.numActiveTasks} running"]
            if info.numFailedTasks:
                parts.append(f"{info.numFailedTasks} failed")
            parts.append(f"{_duration(elapsed)} elapsed")
            if done > first_done and done < total:
                parts.append(f"ETA {_duration(elapsed / (done - first_done) * (total - done))}")
            label = f"{_step}: " if _step else ""
            lines.append(f"{label}Spark stage {stage_id}: " + ", ".join(parts))
        for line in lines:
            log.info(line)
        return lines

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - a stopped context must not kill the job's log
                log.debug("progress poll failed: %s", exc)

    def start(self) -> StageProgress:
        self._thread = threading.Thread(target=self._run, name="dear-stage-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        set_step("")

    def __enter__(self) -> StageProgress:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
