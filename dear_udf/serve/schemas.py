"""Request and response bodies of the rerank routes, and their validation.

One request shape serves all three routes; they differ in defaults and extras only:

- ``POST /rerank``, the DeAR model card's server: the response also has ``ranking``, the
  card's ``[[index, score], ...]``, best first;
- ``POST /v1/rerank``, Jina's (and Cohere v1's) API: ``return_documents`` defaults to
  true, as Jina's does;
- ``POST /v2/rerank``, Cohere v2's API: ``return_documents`` defaults to false.

Request: ``query`` (string), ``documents`` (strings, or objects with a string ``text``
and an optional ``title``: DeAR reads ``"document: " + title + " " + text``), optional
``top_n`` (an integer >= 0; absent or null: all), ``return_documents`` (boolean) and
``model`` (a string; the server has one model and answers with its name). Other keys
clients send (Cohere's ``max_tokens_per_doc``, ``rank_fields``, ``priority``...) are
ignored: documents are cut exactly as the nightly job cuts them.

Response: ``id``, ``model`` (the model's label, as the job's ``model`` column),
``results`` (best first: ``index``, ``relevance_score`` and, when asked, ``document``),
``usage`` (``pairs``; ``prompt_tokens`` = ``total_tokens``: the ids of the DeAR layout)
and Cohere's ``meta``. Ties are broken by the document's index, lower first.
``relevance_score`` is the model's logit, exactly what ``dear-rerank score`` writes (not a
probability in [0, 1]).

Example:
    >>> request = parse_request(b'{"query": "llama", "documents": ["a camelid", "coffee"]}', route="/v1/rerank", max_documents=100)
    >>> response_body(request, [0.5, -1.0], route="/v1/rerank", model="dear-3b", tokens=17, request_id="rerank-1")["results"][0]
    {'index': 0, 'relevance_score': 0.5, 'document': {'text': 'a camelid'}}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROUTES = ("/rerank", "/v1/rerank", "/v2/rerank")
_RETURN_DOCUMENTS_DEFAULT = {"/rerank": False, "/v1/rerank": True, "/v2/rerank": False}
_API_VERSION = {"/rerank": None, "/v1/rerank": "1", "/v2/rerank": "2"}
DOCUMENTS_PER_SEARCH_UNIT = 100  # Cohere bills one search unit per query of up to 100 documents


class RequestError(Exception):
    """A request the server refuses: the HTTP status, the field at fault, the message."""

    def __init__(self, status: int, message: str, *, field: str | None = None, headers: Mapping[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return {**out, **self.extra}


@dataclass(frozen=True)
class RerankRequest:
    """A validated request: the pairs to score and what to answer."""

    query: str
    titles: list[str | None]
    texts: list[str]
    documents: list[Any]  # as sent, for return_documents
    top_n: int | None
    return_documents: bool

    def __len__(self) -> int:
        return len(self.texts)


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), type(value).__name__)


def _invalid(field: str, message: str) -> RequestError:
    return RequestError(422, f"{field}: {message}", field=field)


def parse_request(body: bytes, *, route: str, max_documents: int) -> RerankRequest:
    """Validate a rerank request body.

    Raises:
        RequestError: 422 naming the field for a malformed body, 413 naming the limit for
            more than ``max_documents`` documents.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid("body", f"not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise _invalid("body", f"must be a JSON object with 'query' and 'documents', got {_kind(data)}.")
    if "query" not in data:
        raise _invalid("query", "missing; the body needs a 'query' string.")
    query = data["query"]
    if not isinstance(query, str):
        raise _invalid("query", f"must be a string, got {_kind(query)}.")
    if "documents" not in data:
        raise _invalid("documents", "missing; the body needs a 'documents' list.")
    documents = data["documents"]
    if not isinstance(documents, list):
        raise _invalid("documents", f"must be a list of strings or {{title, text}} objects, got {_kind(documents)}.")
    if len(documents) > max_documents:
        raise RequestError(
            413,
            f"documents: {len(documents)} documents; this server takes at most {max_documents} per request "
            "(--max-documents). Split the request.",
            field="documents",
            limit=max_documents,
        )
    titles: list[str | None] = []
    texts: list[str] = []
    for i, doc in enumerate(documents):
        if isinstance(doc, str):
            titles.append(None)
            texts.append(doc)
        elif isinstance(doc, dict):
            text, title = doc.get("text"), doc.get("title")
            if not isinstance(text, str):
                problem = "missing" if "text" not in doc else f"must be a string, got {_kind(text)}"
                raise _invalid(f"documents[{i}].text", f"{problem}; a document object needs a string 'text' (and may have a 'title').")
            if title is not None and not isinstance(title, str):
                raise _invalid(f"documents[{i}].title", f"must be a string or null, got {_kind(title)}.")
            titles.append(title)
            texts.append(text)
        else:
            raise _invalid(f"documents[{i}]", f"must be a string or an object with a string 'text', got {_kind(doc)}.")
    top_n = data.get("top_n")
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 0):
        raise _invalid("top_n", f"must be an integer >= 0 (or absent for all), got {json.dumps(top_n)}.")
    return_documents = data.get("return_documents")
    if return_documents is None:
        return_documents = _RETURN_DOCUMENTS_DEFAULT[route]
    elif not isinstance(return_documents, bool):
        raise _invalid("return_documents", f"must be true or false, got {json.dumps(return_documents)}.")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise _invalid("model", f"must be a string, got {_kind(model)}.")
    return RerankRequest(query, titles, texts, documents, top_n, return_documents)


def ranking(scores: Sequence[float]) -> list[int]:
    """Document indices best first; equal scores in index order (lower first)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def response_body(request: RerankRequest, scores: Sequence[float], *, route: str, model: str, tokens: int, request_id: str) -> dict[str, Any]:
    """The answer to ``request`` given its scores (in document order), as JSON-ready values.

    Raises:
        RequestError: 500 when the model gave a NaN or infinite score; the job refuses to
            publish those too.
    """
    values = [float(s) for s in scores]
    bad = [i for i, s in enumerate(values) if not math.isfinite(s)]
    if bad:
        raise RequestError(500, f"the model gave non-finite scores for documents {bad[:10]}; nothing is returned.")
    order = ranking(values)
    if request.top_n is not None:
        order = order[: request.top_n]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": values[i]}
        if request.return_documents:
            doc = request.documents[i]
            item["document"] = {"text": doc} if isinstance(doc, str) else doc
        results.append(item)
    body: dict[str, Any] = {"id": request_id, "model": model, "results": results}
    if route == "/rerank":
        body["ranking"] = [[i, values[i]] for i in order]  # the model card's answer
    pairs = len(request)
    body["usage"] = {"pairs": pairs, "prompt_tokens": tokens, "total_tokens": tokens}
    meta: dict[str, Any] = {"billed_units": {"search_units": -(-pairs // DOCUMENTS_PER_SEARCH_UNIT), "input_tokens": tokens}}
    if _API_VERSION[route]:
        meta["api_version"] = {"version": _API_VERSION[route]}
    body["meta"] = meta
    return body
