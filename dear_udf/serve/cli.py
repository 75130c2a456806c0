"""``dear-rerank serve``: the online rerank server on the nightly job's scorer.

    dear-rerank serve --model M [--adapter A] [--host 127.0.0.1] [--port 8000] \\
        [--config FILE] [--dtype ...] [--device ...] [--pooling ...] [--special-tokens ...] \\
        [--batch-size N] [--max-tokens N] [--max-documents N] [--max-queue N] \\
        [--max-wait-ms MS] [--max-batch-pairs N] [--request-timeout S] [--api-key-env NAME]

Start-up: settings checked, the port bound (a busy port fails before the model loads),
the model loaded by ``model.load_model`` (the job's refusals), then the port opens.
SIGTERM (or Ctrl-C) stops taking connections, finishes the requests in flight, and the
command exits 0. Needs the ``serve`` extra: ``pip install "dear-rerank[serve]"``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import socket
from typing import Any

from ..exceptions import ConfigError, DearRerankError
from .settings import ServeConfig, add_arguments as _add_arguments, config_from_args

log = logging.getLogger("dear_udf.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_arguments(parser)


def _require_extra() -> None:
    missing = []
    for module in ("starlette", "uvicorn", "prometheus_client"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ConfigError(f"serve needs {missing}: pip install \"dear-rerank[serve]\".")


def api_key_of(config: ServeConfig) -> str | None:
    """The API key from the environment variable ``api_key_env``, or None.

    Naming a variable (``--api-key-env`` or ``serve: api_key_env:``) that is unset or empty
    is refused: a server meant to need a key must not start open.
    """
    name = config.server.api_key_env
    key = os.environ.get(name) or None
    if key is None and "api_key_env" in config.given:
        raise ConfigError(f"api_key_env: the environment variable {name} is not set or empty; set it to the API key.")
    return key


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), not yet listening: clients are refused until the
    model is loaded and the server listens on it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"host: cannot resolve {host!r} ({exc}).") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"port: cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or --host.") from None
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _serve(server: Any, sock: socket.socket, loop: Any) -> bool:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        log.info("listening on %s: POST /rerank, /v1/rerank, /v2/rerank; GET /health, /metrics", _url(sock))
    while not server.should_exit and not task.done():
        await asyncio.sleep(0.05)
    if not task.done():
        log.info("stopping: no new connections; finishing %d request(s) in flight", loop.admitted)
    await task
    return bool(server.started)


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    _require_extra()
    api_key = api_key_of(config)
    settings = config.server
    sock = bind(settings.host, settings.port)
    try:
        return _run(config, api_key, sock)
    finally:
        sock.close()


def _run(config: ServeConfig, api_key: str | None, sock: socket.socket) -> int:
    import uvicorn

    from ..model import load_model
    from ..scorer import Scorer
    from .app import create_app
    from .batcher import ScoringLoop
    from .metrics import ServeMetrics

    settings = config.server
    if api_key is None:
        where = "" if _is_loopback(settings.host) else f"; anyone who can reach {settings.host} may call it"
        log.warning("no API key ($%s is not set): the rerank routes are open%s", settings.api_key_env, where)
    loaded = load_model(config.model)
    scorer = Scorer(loaded, **config.scorer_kwargs())
    log.info("model %s loaded on %s (%s) in %.1f s", loaded.label, loaded.device, loaded.dtype, loaded.load_seconds)
    metrics = ServeMetrics()
    metrics.describe_model(
        model=loaded.label, device=loaded.device, dtype=loaded.dtype, pooling=config.layout.pooling, special_tokens=config.layout.special_tokens
    )
    loop = ScoringLoop(
        scorer,
        max_batch_pairs=settings.max_batch_pairs,
        max_wait=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
        metrics=metrics,
    )
    app = create_app(loop, settings=settings, api_key=api_key, model=loaded.label, metrics=metrics)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=sock.getsockname()[1],  # uvicorn listens on `sock`; these name it in its log
            log_config=None,  # our console's logging (dear_udf.console); -v shows uvicorn's INFO lines
            access_log=False,
            lifespan="on",
            # Requests end within request_timeout; this bounds a stuck shutdown.
            timeout_graceful_shutdown=settings.request_timeout + 5,
        )
    )
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; with
    # Python's default handlers that would kill the process (SIGTERM) or raise
    # KeyboardInterrupt (Ctrl-C). The shutdown was clean, so the command exits 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        started = asyncio.run(_serve(server, sock, loop))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not started:
        raise DearRerankError("the server did not start; see the errors above.")
    if loop.error is not None:
        log.error("the scoring loop had stopped: %s", loop.error)
        return 1
    log.info("stopped")
    return 0
