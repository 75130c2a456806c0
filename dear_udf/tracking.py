"""MLflow tracking of a finished run: its settings, counts, metrics, summary and report.

Optional: install the ``mlflow`` extra (``mlflow-skinny``) and turn it on with ``--mlflow``,
``--mlflow-experiment NAME``, ``--mlflow-tracking-uri URI``, or in the YAML::

    mlflow:
      experiment: /Shared/dear-rerank     # default: $MLFLOW_EXPERIMENT_NAME or "dear-rerank"
      tracking_uri: databricks            # default: $MLFLOW_TRACKING_URI; "databricks" on Databricks

The job calls ``log_run`` once, after its summary is final and its output committed. A
tracking failure then only logs a warning: the night's table is written and its summary is
true, so the run must not look failed because a tracking server was unreachable.

Example:
    >>> log_run(TrackingSpec(tracking_uri="file:/tmp/mlruns"), summary=summary, params={"top_k": 10},
    ...         summary_path="/tables/reranked.summary.json")  # doctest: +SKIP
    '5f0c...'
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .exceptions import ConfigError
from .settings import flag

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "dear-rerank"


@dataclass(frozen=True)
class TrackingSpec:
    """Where a run is tracked.

    Args:
        experiment: MLflow experiment name (a workspace path on Databricks, e.g.
            ``/Shared/dear-rerank``); None: ``$MLFLOW_EXPERIMENT_NAME``, else ``dear-rerank``.
        tracking_uri: MLflow tracking URI; None: ``$MLFLOW_TRACKING_URI``, else the
            workspace's server (``databricks``) on a Databricks cluster, else MLflow's default.
        run_name: None: ``dear-rerank <run_id>``.
    """

    experiment: str | None = field(default=None, metadata=flag("--mlflow-experiment", help="MLflow experiment (implies --mlflow)"))
    tracking_uri: str | None = field(default=None, metadata=flag("--mlflow-tracking-uri", help="MLflow tracking URI (implies --mlflow)"))
    run_name: str | None = None

    def __post_init__(self) -> None:
        for name in ("experiment", "tracking_uri", "run_name"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"mlflow.{name} must be a non-empty string or unset, got {value!r}.")

    def resolved_tracking_uri(self) -> str | None:
        """The URI to use; None leaves MLflow's own default."""
        if self.tracking_uri:
            return self.tracking_uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
            return "databricks"
        return None

    def resolved_experiment(self) -> str:
        return self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def tracking_spec(value: Any, *, where: str = "config") -> TrackingSpec | None:
    """``mlflow:`` of the YAML or flags: true/false, or a mapping of ``TrackingSpec`` fields."""
    if value is None or value is False:
        return None
    if value is True:
        return TrackingSpec()
    if isinstance(value, TrackingSpec):
        return value
    if isinstance(value, Mapping):
        known = {"experiment", "tracking_uri", "run_name"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(f"{where}: mlflow: unknown key(s) {unknown}; known: {sorted(known)}.")
        return TrackingSpec(**value)
    raise ConfigError(f"{where}: mlflow must be true, false or a mapping, got {value!r}.")


def metric_name(name: str) -> str:
    """An MLflow-safe metric name: ``nDCG@10`` -> ``nDCG_at_10`` (MLflow refuses ``@``)."""
    return re.sub(r"[^\w.\- /:]", "_", name.replace("@", "_at_"))


def summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a summary (``RunSummary.as_dict()``) worth plotting across nights."""
    out: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[metric_name(name)] = float(value)

    for key in (
        "candidates_read", "candidates_kept", "candidates_dropped", "pairs_scored", "output_rows",
        "output_queries", "queries_in_candidates", "queries_without_candidates",
        "queries_with_nothing_to_rank_count", "model_loads", "oom_splits", "real_tokens",
        "computed_tokens", "computed_per_real_token", "pairs_per_second", "wall_seconds",
        "cache_hits", "cache_misses", "cache_hit_rate", "cache_lookup_seconds",
    ):
        put(key, summary.get(key))
    for group, prefix in (("rows_read", "rows_read"), ("dropped", "dropped"), ("stage_seconds", "seconds")):
        for name, value in (summary.get(group) or {}).items():
            put(f"{prefix}.{name}", value)
    metrics = summary.get("metrics") or {}
    for side in ("first_stage", "reranked", "delta"):
        for name, value in (metrics.get(side) or {}).items():
            put(f"{side}.{name}", value)
    return out


def log_run(
    spec: TrackingSpec,
    *,
    summary: Any,
    params: Mapping[str, Any],
    summary_path: str,
    report_png: str | None = None,
) -> str | None:
    """Log one finished run to MLflow; return its MLflow run id, or None if tracking failed.

    Args:
        spec: where to track.
        summary: the final ``RunSummary``.
        params: the run's settings, logged as parameters (values as strings).
        summary_path: the summary JSON the job wrote, logged as ``summary.json``.
        report_png: the report figure (``report.write_report``), logged as ``report.png``.

    Never raises: the output is committed before this is called (see the module docstring).
    """
    try:
        return _log_run(spec, summary=summary, params=params, summary_path=summary_path, report_png=report_png)
    except Exception as exc:  # noqa: BLE001 - the night is committed; tracking is best effort
        log.warning("MLflow tracking failed; the run itself succeeded and its summary is at %s (%s: %s)",
                    summary_path, type(exc).__name__, exc)
        return None


def _log_run(spec: TrackingSpec, *, summary: Any, params: Mapping[str, Any], summary_path: str, report_png: str | None) -> str:
    import mlflow

    uri = spec.resolved_tracking_uri()
    if uri:
        mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(spec.resolved_experiment())
    values = summary.as_dict()
    run_name = spec.run_name or f"dear-rerank {summary.run_id}"
    tags = {"dear_rerank.run_id": summary.run_id, "dear_rerank.model": summary.model, "dear_rerank.output": summary.output}
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        # MLflow caps a parameter value at 6000 characters; ours are short, but a long path
        # list must not fail the logging of everything else.
        mlflow.log_params({k: ("" if v is None else str(v))[:6000] for k, v in params.items()})
        mlflow.log_metrics(summary_metrics(values))
        mlflow.log_text(Path(summary_path).read_text(), "summary.json")
        if report_png and Path(report_png).is_file():
            # Fixed artifact names, so every night's run looks the same in the MLflow UI.
            with tempfile.TemporaryDirectory(prefix="dear-rerank-mlflow-") as tmp:
                shutil.copyfile(report_png, os.path.join(tmp, "report.png"))
                mlflow.log_artifact(os.path.join(tmp, "report.png"))
        return run.info.run_id


def report_path(summary_path: str) -> str:
    """Where the job writes the report figure when tracking: beside the summary JSON."""
    stem = summary_path[: -len(".json")] if summary_path.endswith(".json") else summary_path
    stem = stem[: -len(".summary")] if stem.endswith(".summary") else stem
    return stem + ".report.png"


def run_params(config: Any, summary: Any) -> dict[str, Any]:
    """The parameters logged for a job: its settings and where its inputs and output are."""
    params: dict[str, Any] = {
        "run_id": config.run_id,
        "model": summary.model,
        "output": config.output,
        "format": config.format,
        "arrow_batch_size": config.arrow_batch_size,
    }
    for name in ("queries", "corpus", "candidates", "qrels"):
        spec = getattr(config, name)
        if spec is not None:
            params[f"{name}"] = spec.path
    params.update(summary.settings)
    return params
