"""The server's settings, and the config that joins them with the job's model and layout.

A server must read pairs exactly as the nightly job does, so its model, layout and
micro-batch settings are the job's own: the same flags (``--model``, ``--dtype``,
``--pooling``, ``--batch-size``, ...) and the same YAML keys (``model:``, ``layout:``,
``batch_size``, ``max_tokens``). ``--config`` takes the job's loader, so
``dear-rerank serve --config nightly.yaml`` serves the night's model and layout; the job's
other keys (inputs, output, Spark) are not used and say so in the log. The server's own
settings are ``ServeSettings``, under ``serve:`` in the YAML::

    model: /models/dear-3b-reranker-ce-v1
    layout:
      pooling: first-pad
    serve:
      host: 0.0.0.0
      max_documents: 500

Flags override the file; unknown keys are refused by name.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import ConfigError
from ..model import ModelSpec
from ..model.spec import model_flag_values
from ..settings import add_flags, default_of, flag, flag_values
from ..tokenization import Layout

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ServeSettings:
    """How the server listens, batches and refuses.

    Args:
        host: address to bind; loopback unless told otherwise.
        port: TCP port; 0 picks a free one (the log line ``listening on ...`` names it).
        max_documents: documents per request; more is refused with 413.
        max_queue: requests admitted and not yet answered (waiting or being scored); one
            more is refused with 429 and ``Retry-After``.
        max_wait_ms: how long the scoring loop waits for more requests to join a batch
            that is not full, counted from the arrival of its first request.
        max_batch_pairs: pairs per scorer call; requests are added whole while they fit
            (a request larger than this is scored alone, never split).
        request_timeout: seconds from a request's arrival to its answer; beyond, 504.
        max_request_bytes: request body size; larger is refused with 413.
        api_key_env: the environment variable holding the API key. When it is set,
            the rerank routes need ``Authorization: Bearer <key>``.
    """

    host: str = field(default="127.0.0.1", metadata=flag("--host", help="address to listen on; 0.0.0.0 for every interface"))
    port: int = field(default=8000, metadata=flag("--port", type=int, help="TCP port; 0 picks a free one"))
    max_documents: int = field(default=1000, metadata=flag("--max-documents", type=int, help="documents per request; more gives 413"))
    max_queue: int = field(
        default=64, metadata=flag("--max-queue", type=int, help="requests waiting or being scored; one more gives 429 with Retry-After")
    )
    max_wait_ms: float = field(
        default=5.0,
        metadata=flag("--max-wait-ms", type=float, help="how long a batch that is not full waits for more requests, in milliseconds"),
    )
    max_batch_pairs: int = field(
        default=512, metadata=flag("--max-batch-pairs", type=int, help="pairs per scorer call (whole requests; one larger request is scored alone)")
    )
    request_timeout: float = field(
        default=30.0, metadata=flag("--request-timeout", type=float, help="seconds from a request's arrival to its answer; beyond, 504")
    )
    max_request_bytes: int = field(default=32 * 2**20, metadata=flag("--max-request-bytes", type=int, help="request body size; larger gives 413"))
    api_key_env: str = field(
        default="DEAR_RERANK_API_KEY",
        metadata=flag("--api-key-env", help="environment variable holding the API key; when set, requests need 'Authorization: Bearer KEY'"),
    )

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host must be a non-empty address, got {self.host!r}.")
        if not _is_int(self.port) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be an integer from 0 to 65535, got {self.port!r}.")
        for name in ("max_documents", "max_queue", "max_batch_pairs", "max_request_bytes"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if not _is_number(self.max_wait_ms) or self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must be a number >= 0, got {self.max_wait_ms!r}.")
        if not _is_number(self.request_timeout) or self.request_timeout <= 0:
            raise ConfigError(f"request_timeout must be a number of seconds > 0, got {self.request_timeout!r}.")
        if not isinstance(self.api_key_env, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise ConfigError(f"api_key_env must name an environment variable, got {self.api_key_env!r}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``dear-rerank serve`` needs: the job's model, layout and micro-batch
    settings, and the server's own. Built by ``build_serve_config``, where each default
    comes from its own field (``JobConfig``, ``Layout``, ``ServeSettings``).

    Example:
        >>> config = build_serve_config({"model": "/models/dear-3b", "serve": {"port": 9000}})
        >>> config.server.port, config.batch_size
        (9000, 128)
    """

    model: ModelSpec
    layout: Layout
    batch_size: int
    max_tokens: int | None
    server: ServeSettings
    given: frozenset[str] = frozenset()  # server settings given in the file or as flags

    def scorer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``Scorer`` (besides the loaded model)."""
        return {"layout": self.layout, "batch_size": self.batch_size, "max_tokens": self.max_tokens}


def add_arguments(parser: Any) -> None:
    """The flags of ``dear-rerank serve``: the job's model, layout and micro-batch flags, and
    ``ServeSettings``' own."""
    from ..config import SCORER_SETTINGS, JobConfig

    parser.add_argument("--config", help="a packaged profile or a YAML file: model:, layout:, batch_size, max_tokens, serve:; flags override it")
    add_flags(parser, ModelSpec)
    add_flags(parser, Layout)
    add_flags(parser, JobConfig, only=SCORER_SETTINGS)
    add_flags(parser, ServeSettings)


def config_from_args(args: Any) -> ServeConfig:
    """Merge the YAML file (if any) with the flags given; flags win."""
    from ..config import SCORER_SETTINGS, load_yaml

    where = getattr(args, "config", None) or "flags"
    base = load_yaml(args.config) if getattr(args, "config", None) else {}
    flags: dict[str, Any] = {
        "model": model_flag_values(args),
        "layout": flag_values(args, Layout),
        "serve": flag_values(args, ServeSettings),
        **{name: getattr(args, name) for name in SCORER_SETTINGS if getattr(args, name, None) is not None},
    }
    return build_serve_config(base, flags, where=where)


def build_serve_config(base: Mapping[str, Any], flags: Mapping[str, Any] | None = None, *, where: str = "config") -> ServeConfig:
    """Build a ``ServeConfig`` from YAML values (``base``) and flag values (``flags``, same
    nesting: ``model``, ``layout``, ``serve``, ``batch_size``, ``max_tokens``)."""
    from ..config import SCORER_SETTINGS, JobConfig, _build, expand_shorthand, merge

    values = merge(expand_shorthand(base), {k: v for k, v in (flags or {}).items() if v not in (None, {})})
    job_keys = {f.name for f in dataclasses.fields(JobConfig)}
    known = {"model", "layout", "serve", *SCORER_SETTINGS}
    unknown = sorted(set(values) - known - job_keys)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; serve knows {sorted(known)} and ignores the job's other settings.")
    ignored = sorted(set(values) - known)
    if ignored:
        log.info("%s: the job's settings %s are not used by serve", where, ignored)
    for name in ("model", "layout", "serve"):
        if values.get(name) is not None and not isinstance(values[name], Mapping):
            raise ConfigError(f"{where}: {name} must be a mapping{' or a path' if name == 'model' else ''}, got {values[name]!r}.")
    model = dict(values.get("model") or {})
    if not model.get("model") and not model.get("adapter"):
        raise ConfigError(f"{where}: missing required setting(s) ['model']; give --model (or --adapter) or model: in the YAML.")
    if model.get("adapters"):
        raise ConfigError(
            f"{where}: serve scores with one model: one unnamed --adapter PATH, not named adapters "
            f"({list(dict(model['adapters']))}); run one server per adapter."
        )
    server_values = dict(values.get("serve") or {})
    # The job's batch_size and max_tokens, defaults included, are the server's: one definition.
    scoring = {name: values[name] if name in values else default_of(JobConfig, name) for name in SCORER_SETTINGS}
    for name in SCORER_SETTINGS:
        value = scoring[name]
        if not (value is None and name == "max_tokens") and (not _is_int(value) or value < 1):
            raise ConfigError(f"{where}: {name} must be a positive integer, got {value!r}.")
    return ServeConfig(
        model=_build(ModelSpec, model, f"{where}: model"),
        layout=_build(Layout, dict(values.get("layout") or {}), f"{where}: layout"),
        server=_build(ServeSettings, server_values, f"{where}: serve"),
        given=frozenset(server_values),
        **scoring,
    )
