"""Job configuration: frozen dataclasses, filled from an optional YAML file and flags.

YAML profiles hold per-environment values only; their keys are the field names below,
nested as ``model:``, ``layout:``, ``queries:``/``corpus:``/``candidates:``/``qrels:`` and
``spark_conf:``. Unknown keys are refused by name. Command-line flags override the file.
The profiles shipped in the package (``dear_udf/conf/*.yaml``) are named without a path:
``--config databricks``; any other file is given by its path.

A profile holds only what differs from the defaults written on the fields. Example
``dear_udf/conf/local.yaml`` (``--config local``)::

    master: "local[2]"
    model:
      device: cpu
    spark_conf:
      spark.driver.memory: "4g"
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from .exceptions import ConfigError
from .tokenization import Layout
from .model import ModelSpec
from .model.spec import BASE_ADAPTER, model_flag_values
from .schema import check_run_id
from .settings import add_flags, flag, flag_values
from .tracking import TrackingSpec, tracking_spec

InputFormat = Literal["parquet", "delta", "table", "jsonl", "csv", "tsv", "trec", "qrels", "beir"]
INPUT_FORMATS: tuple[str, ...] = get_args(InputFormat)
OutputFormat = Literal["delta", "parquet"]
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
# The JobConfig fields that are Scorer's keywords: the score and serve commands take them too.
SCORER_SETTINGS = ("batch_size", "max_tokens")


@dataclass(frozen=True)
class InputSpec:
    """One input table.

    Args:
        path: file, folder, Delta table folder, or ``catalog.schema.table``.
        format: one of ``INPUT_FORMATS``; None infers it from the path.
        columns: canonical name -> name in this table, e.g. ``{"doc_id": "pid"}``.
    """

    path: str
    format: InputFormat | None = None
    columns: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("input path must be a non-empty string, got ''.")
        if self.format is not None and self.format not in INPUT_FORMATS:
            raise ConfigError(f"format must be one of {INPUT_FORMATS}, got {self.format!r}.")
        if not isinstance(self.columns, Mapping) or not all(isinstance(v, str) for v in self.columns.values()):
            raise ConfigError(
                f"columns must map canonical names to column names, e.g. {{'doc_id': 'pid'}}, got {self.columns!r}."
            )


def default_run_id() -> str:
    """The night's date (UTC): rerunning the same night replaces that night's rows."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")


def _max_tokens_help() -> str:
    from .scorer import CPU_TOKEN_BUDGET  # the scorer decides the device's budget

    return f"token budget per micro-batch (default: {CPU_TOKEN_BUDGET} on CPU, none on GPU)"


@dataclass(frozen=True)
class JobConfig:
    """Everything one reranking run needs. See ``dear-rerank run --help``."""

    # A field with flag(...) metadata has a command line flag (settings.py); every field is
    # a YAML key. ModelSpec (model:), Layout (layout:) and TrackingSpec (mlflow:) declare theirs.
    queries: InputSpec = field(metadata=flag("--queries", help="queries: Parquet, Delta, table, JSONL, CSV, TSV, BEIR folder"))
    corpus: InputSpec = field(metadata=flag("--corpus", help="documents: Parquet, Delta, table, JSONL, CSV, TSV, BEIR folder"))
    candidates: InputSpec = field(metadata=flag("--candidates", help="first-stage candidates: TREC run, Parquet, Delta, table, JSONL, CSV"))
    output: str = field(metadata=flag("--output", help="output table (folder path)"))
    model: ModelSpec
    format: OutputFormat = field(default="delta", metadata=flag("--format", choices=OUTPUT_FORMATS, help="output format"))
    top_k: int = field(default=10, metadata=flag("--top-k", type=int, help="rows kept per query"))
    depth: int = field(default=100, metadata=flag("--depth", type=int, help="first-stage candidates reranked per query"))
    run_id: str = field(
        default_factory=default_run_id,
        metadata=flag(
            "--run-id",
            help="run partition; a rerun with the same id replaces it (default: today's UTC date); at most 200 "
            "characters, no %%, / or =, no control characters, no spaces at either end",
        ),
    )
    summary: str | None = field(default=None, metadata=flag("--summary", help="where to write the run summary JSON (default: <output>.<run_id>.summary.json)"))
    qrels: InputSpec | None = field(default=None, metadata=flag("--qrels", help="optional judgements (TREC qrels, BEIR folder, Parquet, CSV) for metrics"))
    trec_out: str | None = field(default=None, metadata=flag("--trec-out", help="also write the top-k as a TREC run file"))
    batch_size: int = field(default=128, metadata=flag("--batch-size", type=int, help="pairs per micro-batch"))
    max_tokens: int | None = field(default=None, metadata=flag("--max-tokens", type=int, help=_max_tokens_help))
    layout: Layout = field(default_factory=Layout)
    master: str | None = field(default=None, metadata=flag("--master", help="Spark master, e.g. local[2]; default: the session's"))
    arrow_batch_size: int = 10000  # spark.sql.execution.arrow.maxRecordsPerBatch
    scoring_partitions: int | None = field(default=None, metadata=flag("--partitions", type=int, help="scoring partitions per chunk (default: enough for --task-pairs, at least Spark's default parallelism)"))
    spark_conf: Mapping[str, str] = field(default_factory=dict)
    max_drop_share: float = field(
        default=0.5,
        metadata=flag("--max-drop-share", type=float, help="refuse to write when more than this share of the candidates within depth is dropped"),
    )
    allow_empty: bool = field(
        default=False,
        metadata=flag("--allow-empty", action="store_true", help="write even a run that scored nothing or dropped more than --max-drop-share"),
    )
    mlflow: TrackingSpec | None = field(default=None, metadata=flag("--mlflow", action="store_true", help="log the run to MLflow (needs the mlflow extra)"))
    cache: str | None = field(
        default=None,
        metadata=flag("--cache", help="score cache (Delta table folder) shared by nights; default: a scratch cache beside the output, removed once the output is committed"),
    )
    chunk_pairs: int = field(default=500_000, metadata=flag("--chunk-pairs", type=int, help="pairs to score per chunk; each chunk's scores are committed to the cache"))
    task_pairs: int = field(default=50_000, metadata=flag("--task-pairs", type=int, help="pairs per scoring task, so a retried task costs little"))
    adapter_column: str | None = field(
        default=None,
        metadata=flag("--adapter-column", metavar="COLUMN", help="routing: the queries' column naming each query's adapter (of the named --adapter NAME=PATH)"),
    )
    default_adapter: str | None = field(
        default=None, metadata=flag("--default-adapter", metavar="NAME", help="routing: the adapter of queries whose --adapter-column is empty")
    )
    side_by_side: bool = field(
        default=False,
        metadata=flag("--side-by-side", action="store_true", help="score every kept pair under each named adapter; one top-k per adapter, told apart by the adapter column"),
    )
    side_by_side_base: bool = field(
        default=False,
        metadata=flag("--side-by-side-base", action="store_true", help=f"with --side-by-side, also score the base model alone, as adapter '{BASE_ADAPTER}'"),
    )

    def __post_init__(self) -> None:
        for name in ("top_k", "depth", "batch_size", "arrow_batch_size", "max_tokens", "scoring_partitions", "chunk_pairs", "task_pairs"):
            value = getattr(self, name)
            if value is None and name in ("max_tokens", "scoring_partitions"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if self.format not in OUTPUT_FORMATS:
            raise ConfigError(f"format must be one of {OUTPUT_FORMATS}, got {self.format!r}.")
        check_run_id(self.run_id)
        if not self.output:
            raise ConfigError("output must be a non-empty path, got ''.")
        share = self.max_drop_share
        if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share <= 1:
            raise ConfigError(f"max_drop_share must be a number from 0 to 1, got {share!r}.")
        if not isinstance(self.allow_empty, bool):
            raise ConfigError(f"allow_empty must be true or false, got {self.allow_empty!r}.")
        if self.cache is not None and (not isinstance(self.cache, str) or not self.cache.strip()):
            raise ConfigError(f"cache must be a path to a Delta table folder, got {self.cache!r}.")
        if not isinstance(self.spark_conf, Mapping):
            raise ConfigError(f"spark_conf must be a mapping of Spark setting to value, got {self.spark_conf!r}.")
        self._check_adapters()

    def _check_adapters(self) -> None:
        """Routing and side by side need named adapters, and exclude each other."""
        names = self.model.adapter_names if isinstance(self.model, ModelSpec) else ()
        for flag_name, given in (("adapter_column", self.adapter_column), ("default_adapter", self.default_adapter)):
            if given is not None and (not isinstance(given, str) or not given.strip()):
                raise ConfigError(f"{flag_name} must be a non-empty name, got {given!r}.")
        for flag_name in ("side_by_side", "side_by_side_base"):
            if not isinstance(getattr(self, flag_name), bool):
                raise ConfigError(f"{flag_name} must be true or false, got {getattr(self, flag_name)!r}.")
        asked = [f"--{n.replace('_', '-')}" for n in ("adapter_column", "default_adapter", "side_by_side", "side_by_side_base") if getattr(self, n)]
        if asked and not names:
            raise ConfigError(f"{', '.join(asked)} need named adapters (--adapter NAME=PATH, or model: adapters: in the YAML); none are named.")
        if self.adapter_column and self.side_by_side:
            raise ConfigError("adapter_column (routing: one adapter per query) and side_by_side (every adapter for every query) exclude each other; pick one.")
        if self.side_by_side_base and not self.side_by_side:
            raise ConfigError("side_by_side_base scores the base beside the adapters: it needs side_by_side.")
        if self.default_adapter is not None and not self.adapter_column:
            raise ConfigError("default_adapter serves queries without a routing value: it needs adapter_column.")
        if self.default_adapter is not None and self.default_adapter not in names:
            raise ConfigError(f"default_adapter {self.default_adapter!r} is not a named adapter; named: {list(names)}.")
        if self.side_by_side_base and BASE_ADAPTER in names:
            raise ConfigError(f"an adapter is named {BASE_ADAPTER!r}, the name side_by_side_base gives the base model alone; rename it.")
        if len(names) > 1 and not (self.adapter_column or self.side_by_side):
            raise ConfigError(
                f"{len(names)} named adapters {list(names)}: say how to use them, --adapter-column COLUMN (each query "
                "reranked by its own adapter) or --side-by-side (every query by each adapter)."
            )

    @property
    def adapter_names(self) -> tuple[str, ...]:
        """The adapters the run scores under, in order (side by side: the base last, as
        ``base``); empty for a run with one unnamed model."""
        return self.model.adapter_names + ((BASE_ADAPTER,) if self.side_by_side_base else ())

    @property
    def summary_path(self) -> str:
        """Where the run summary goes: beside the table, never inside it."""
        return self.summary or default_summary_path(self.output, self.run_id)


def trec_paths(config: JobConfig) -> dict[str | None, str]:
    """Where ``--trec-out`` writes: one file, or side by side one TREC run per adapter, the
    adapter's name before the extension (``run.trec`` -> ``run.medical.trec``), as
    ``trec_eval`` and ``ir_measures`` compare runs file by file. Empty without ``--trec-out``.

    Example:
        >>> trec_paths(config)  # --trec-out out/run.trec --side-by-side, adapters med, law
        {'med': 'out/run.med.trec', 'law': 'out/run.law.trec'}
    """
    if not config.trec_out:
        return {}
    if not config.side_by_side:
        return {None: config.trec_out}
    head, slash, name = config.trec_out.rpartition("/")
    stem, dot, ext = name.rpartition(".") if "." in name.lstrip(".") else (name, "", "")
    return {adapter: f"{head}{slash}{stem}.{adapter}{dot}{ext}" for adapter in config.adapter_names}


def default_summary_path(output: str, run_id: str) -> str:
    """``<output>.<run_id>.summary.json``, beside the table and written the way the output
    is (``file:/x``, ``dbfs:/x`` stay URIs): runs of other nights keep their own summaries."""
    return f"{output.rstrip('/')}.{run_id}.summary.json"


_NESTED = {"model": ModelSpec, "layout": Layout}
_INPUTS = ("queries", "corpus", "candidates", "qrels")


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}.")
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def profile_names() -> list[str]:
    """Names of the profiles shipped in the package: ``local``, ``gpu-cluster``, ``databricks``."""
    from importlib.resources import files

    return sorted(p.name[: -len(".yaml")] for p in (files("dear_udf") / "conf").iterdir() if p.name.endswith(".yaml"))


def _is_profile_name(name: str) -> bool:
    # A bare word names a packaged profile; anything that looks like a path is a file, so the
    # meaning of --config never depends on the current directory.
    return bool(name) and not any(c in name for c in "/\\") and not name.endswith((".yaml", ".yml"))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file, or a packaged profile by name, into plain values.

    Unknown keys are refused later, by name, when the values are built into a ``JobConfig``.

    Example:
        >>> load_yaml("databricks")["format"]  # dear_udf/conf/databricks.yaml, from the wheel too
        'delta'
    """
    import yaml

    name = str(path)
    try:
        if _is_profile_name(name):
            from importlib.resources import files

            resource = files("dear_udf") / "conf" / f"{name}.yaml"
            if not resource.is_file():
                raise ConfigError(f"config {name!r} is not a packaged profile ({profile_names()}) nor a path to a YAML file.")
            text = resource.read_text()
        else:
            text = Path(name).read_text()
        data = yaml.safe_load(text) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc}).") from exc
    except yaml.YAMLError as exc:
        # One line: the problem and where (tags like !!python/object are refused here too).
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML{at}: {' '.join(str(problem).split())}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}.")
    return data


def build_job_config(values: Mapping[str, Any], *, where: str = "config") -> JobConfig:
    """Build a ``JobConfig`` from nested plain values (YAML merged with flags).

    Inputs may be a path string or a mapping with ``path``/``format``/``columns``.
    """
    values = expand_shorthand(values)
    job_fields = {f.name for f in dataclasses.fields(JobConfig)}
    unknown = sorted(set(values) - job_fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(job_fields)}.")
    for name in _INPUTS:
        raw = values.get(name)
        if raw is None:
            continue
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: {name} must be a path or a mapping, got {raw!r}.")
        values[name] = _build(InputSpec, raw, f"{where}: {name}")
    for name, cls in _NESTED.items():
        raw = values.get(name)
        if isinstance(raw, Mapping):
            values[name] = _build(cls, raw, f"{where}: {name}")
        elif raw is not None and not isinstance(raw, cls):
            raise ConfigError(f"{where}: {name} must be a mapping{' or a path' if name == 'model' else ''}, got {raw!r}.")
    if "mlflow" in values:
        values["mlflow"] = tracking_spec(values["mlflow"], where=where)
    values["spark_conf"] = _spark_conf(values.get("spark_conf", {}), where)
    missing = [n for n in ("queries", "corpus", "candidates", "output", "model") if values.get(n) in (None, "")]
    if missing:
        raise ConfigError(f"{where}: missing required setting(s) {missing}.")
    if values.get("run_id") is None:
        values.pop("run_id", None)
    else:
        values["run_id"] = _run_id_text(values["run_id"], where)
    return _build(JobConfig, values, where)


def expand_shorthand(values: Mapping[str, Any]) -> dict[str, Any]:
    """``model: <path>`` means ``model: {model: <path>}``; an input ``<path>``, ``{path: <path>}``."""
    out = dict(values)
    if isinstance(out.get("model"), str):
        out["model"] = {"model": out["model"]}
    for name in _INPUTS:
        if isinstance(out.get(name), str):
            out[name] = {"path": out[name]}
    return out


def _spark_conf(raw: Any, where: str) -> dict[str, str]:
    if not isinstance(raw, Mapping) or any(isinstance(v, (Mapping, list)) for v in raw.values()):
        raise ConfigError(f"{where}: spark_conf must map Spark settings to values, e.g. {{'spark.sql.shuffle.partitions': '4'}}, got {raw!r}.")
    return {str(k): str(v) for k, v in raw.items()}


def _run_id_text(value: Any, where: str) -> Any:
    """YAML reads ``run_id: 2026-11-22`` as a date and ``run_id: 7`` as an int: the natural
    ways to pin a night, taken as the text written. A timestamp, a float or a boolean would
    not read back as written, so they must be quoted."""
    if isinstance(value, (bool, float, _dt.datetime)):
        raise ConfigError(f"{where}: run_id {value!r} was read as a {type(value).__name__}; quote it to keep it as written.")
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, int):
        return str(value)
    return value


def add_job_arguments(parser: Any) -> None:
    """The flags of ``dear-rerank run``: every setting with a flag, defined on its field."""
    parser.add_argument("--config", help="a packaged profile (local, gpu-cluster, databricks) or a YAML file; flags override it")
    for cls in (JobConfig, ModelSpec, Layout, TrackingSpec):
        add_flags(parser, cls)


def config_from_args(args: Any) -> JobConfig:
    """Merge the YAML file (if any) with the flags given; flags win."""
    base = expand_shorthand(load_yaml(args.config)) if getattr(args, "config", None) else {}
    flags: dict[str, Any] = flag_values(args, JobConfig)
    # A path flag replaces the file's input entry's path but keeps its columns/format.
    for name in _INPUTS:
        if name in flags and name in base:
            flags[name] = {"path": flags[name]}
    flags["model"] = model_flag_values(args) or None
    flags["layout"] = flag_values(args, Layout) or None
    tracking = flag_values(args, TrackingSpec)
    if tracking:
        flags["mlflow"] = tracking
    elif flags.get("mlflow") and isinstance(base.get("mlflow"), Mapping):
        del flags["mlflow"]  # --mlflow alone keeps the file's experiment and URI
    values = merge(base, flags)
    model_values = values.get("model") or {}
    if isinstance(model_values, dict):  # anything else is refused by name below
        if not model_values.get("model") and not model_values.get("adapter") and not model_values.get("adapters"):
            model_values = {}
        values["model"] = model_values or None
    return build_job_config(values, where=getattr(args, "config", None) or "flags")


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into ``base``; None values in ``override`` are ignored."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
