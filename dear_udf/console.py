"""What a person reads in the terminal: the job's own lines, not its libraries' chatter.

``dear-rerank`` calls ``configure(verbose=...)`` once, before anything heavy is imported.
Without ``-v`` the output is the stages as they finish, progress on long stages, the summary
and the metrics; warnings and errors of every library still show. Hidden are Hugging Face's
"Loading weights"/"Writing model shards" bars and advisory messages, MLflow's INFO lines,
and the WARN lines a local Spark driver prints while it starts (see ``spark.session``).
With ``-v`` nothing is hidden and every logger logs at INFO.

The settings are environment variables where a library reads one, so the Python workers a
local Spark driver starts inherit them.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Read by spark.session when it starts a JVM itself (local or standalone master): a quiet
# driver gets a log4j2 configuration at ERROR and loses the JVM's incubator-module notice.
QUIET = False

_QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # also transformers' own bars (utils.logging.tqdm)
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


class _Formatter(logging.Formatter):
    """``12:00:01 message`` for the job's INFO lines; level and logger name for the rest."""

    def __init__(self) -> None:
        super().__init__(datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO:
            self._style._fmt = "%(asctime)s %(message)s"
        else:
            self._style._fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
        return super().format(record)


def configure(*, verbose: bool) -> None:
    """Set up logging and library verbosity for a command run from the terminal or a job.

    Example:
        >>> configure(verbose=False)
    """
    global QUIET
    QUIET = not verbose
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("dear_udf").setLevel(logging.INFO)
    # pandas and pyarrow deprecation notices name our internals, not something the user can act on.
    for module in ("pandas", "pyarrow", "pyspark"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)


def progress_bar(total: int, *, desc: str, unit: str, file=None):
    """A tqdm bar with rate and ETA on stderr, shown only when stderr is a terminal.

    Logs and files stay free of carriage-return frames; a terminal gets a live bar.

    Example:
        >>> with progress_bar(1000, desc="scoring", unit="pairs") as bar:
        ...     bar.update(1000)
    """
    from tqdm import tqdm

    stream = file or sys.stderr
    shown = _isatty(stream)
    sized = shown and min(_terminal_size(stream)) > 0
    return tqdm(
        total=total,
        desc=desc,
        unit=f" {unit}",
        # A terminal that reports no size (a pseudo-terminal nobody sized, as under `script`
        # or in CI) gets 100x24: tqdm would otherwise hide the bar below "row 0".
        dynamic_ncols=sized,
        ncols=None if sized else 100,
        nrows=None if sized else 24,
        file=stream,
        disable=not shown,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]",
    )


def _terminal_size(stream) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return (0, 0)
    return (size.columns, size.lines)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
