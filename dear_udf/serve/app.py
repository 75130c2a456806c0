"""The ASGI app: the rerank routes, ``/health`` and ``/metrics`` (Starlette).

What a rerank request goes through, in order, and its refusals:

1. the API key, when the server has one: ``Authorization: Bearer <key>``, compared in
   constant time; else 401;
2. the body: at most ``max_request_bytes`` (413), JSON with the fields of
   ``schemas.parse_request`` (422 naming the field), at most ``max_documents``
   documents (413 naming the limit); no documents: empty results, nothing scored;
3. admission: at most ``max_queue`` requests waiting or being scored (429 with
   ``Retry-After``);
4. scoring by the ``ScoringLoop`` (which tokenizes too), answered within ``request_timeout``
   seconds of arrival (else 504; a request still queued then is never scored).

``/health`` and ``/metrics`` need no key (they hold no texts or scores, and probes and
scrapers often cannot send one, as in vLLM). ``/health`` is 200 while the scoring loop
runs; the port opens only once the model is loaded.

Example:
    >>> app = create_app(loop, settings=ServeSettings(), api_key=None, model="dear-3b", metrics=ServeMetrics())
    >>> uvicorn.run(app)
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from .batcher import QueueFull, ScoringLoop
from .metrics import ServeMetrics
from .schemas import ROUTES, RequestError, parse_request, response_body
from .settings import ServeSettings

log = logging.getLogger(__name__)


def _error(exc: RequestError):
    from starlette.responses import JSONResponse

    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _read_body(request: Any, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    too_large = RequestError(413, f"body: larger than this server's limit of {limit} bytes (--max-request-bytes).", field="body", limit=limit)
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _check_key(request: Any, api_key: str | None) -> None:
    if api_key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Both sides as bytes: compare_digest refuses non-ASCII str, and a header may hold any.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
        raise RequestError(
            401, "missing or wrong API key: send 'Authorization: Bearer <key>'.", headers={"WWW-Authenticate": 'Bearer realm="dear-rerank"'}
        )


def create_app(loop: ScoringLoop, *, settings: ServeSettings, api_key: str | None, model: str, metrics: ServeMetrics):
    """The Starlette app serving ``loop``'s scorer. The loop starts and stops with the app."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    timeout = float(settings.request_timeout)

    async def rerank(request: Any, route: str):
        arrived = time.monotonic()
        _check_key(request, api_key)
        body = await _read_body(request, settings.max_request_bytes)
        parsed = parse_request(body, route=route, max_documents=settings.max_documents)
        request_id = f"rerank-{uuid.uuid4().hex}"
        if not loop.alive:
            raise RequestError(503, "the scoring loop has stopped; see the server's log.")
        if not len(parsed):
            return JSONResponse(response_body(parsed, [], route=route, model=model, tokens=0, request_id=request_id))
        try:
            loop.admit(len(parsed))
        except QueueFull as exc:
            raise RequestError(429, f"{exc}; retry later.", headers={"Retry-After": str(exc.retry_after)}, limit=exc.limit) from None
        try:
            future = loop.submit(parsed.query, parsed.titles, parsed.texts, arrived=arrived)
            # On timeout wait_for cancels the future: a request still queued is never scored.
            scores, tokens = await asyncio.wait_for(asyncio.wrap_future(future), timeout - (time.monotonic() - arrived))
        except asyncio.TimeoutError:
            raise RequestError(504, f"not answered within {timeout:g} s (--request-timeout); the server is busy or the request too large.") from None
        finally:
            loop.release(len(parsed))
        return JSONResponse(response_body(parsed, scores, route=route, model=model, tokens=tokens, request_id=request_id))

    def endpoint(route: str):
        async def handle(request: Any):
            start = time.perf_counter()
            status = 500
            try:
                response = await rerank(request, route)
            except RequestError as exc:
                response = _error(exc)
            except Exception:
                log.exception("%s failed", route)
                response = _error(RequestError(500, "internal error; see the server's log."))
            status = response.status_code
            metrics.requests.labels(route=route, status=str(status)).inc()
            metrics.request_seconds.labels(route=route).observe(time.perf_counter() - start)
            return response

        return handle

    async def health(request: Any):
        ready = loop.alive
        metrics.requests.labels(route="/health", status="200" if ready else "503").inc()
        body = {"status": "ready" if ready else "stopped", "model": model, "queue": loop.admitted}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def prometheus(request: Any):
        metrics.requests.labels(route="/metrics", status="200").inc()
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)

    @asynccontextmanager
    async def lifespan(app: Any):
        loop.start()
        try:
            yield
        finally:
            # Reached after uvicorn finished the requests in flight (SIGTERM): nothing is queued.
            await asyncio.get_running_loop().run_in_executor(None, loop.stop)

    routes = [Route(path, endpoint(path), methods=["POST"]) for path in ROUTES]
    routes += [Route("/health", health, methods=["GET"]), Route("/metrics", prometheus, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan)
