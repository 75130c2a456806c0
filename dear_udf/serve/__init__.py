"""``dear-rerank serve``: online reranking on the job's own scorer, so online and nightly
scores agree.

One module per job (no pyspark anywhere here):

- ``settings``: the server's settings (a frozen dataclass carrying its flags) and the
  config that joins them with the job's ``model:``, ``layout:``, ``batch_size`` and
  ``max_tokens``;
- ``schemas``: the request bodies of ``/rerank``, ``/v1/rerank`` and ``/v2/rerank``, their
  validation (422 naming the field, 413 naming the limit) and the response bodies;
- ``batcher``: the scoring loop: one worker thread per device taking whole requests from a
  bounded queue, several requests per scorer call, each request's pairs in one call;
- ``metrics``: the Prometheus metrics of ``/metrics``;
- ``app``: the ASGI app (Starlette) and its routes, the API key, the limits;
- ``cli``: ``add_arguments``/``main`` of ``dear-rerank serve`` (uvicorn, SIGTERM).

The web stack is the optional extra ``dear-rerank[serve]``; only ``settings`` and ``cli``
are imported by ``dear-rerank --help``, and they import none of it.
"""
