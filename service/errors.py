"""One error body for every error: ``{"error": "<what is wrong>", "detail": ...optional}``.

Our routes answer that already. BentoML and Starlette do not always:

- a BentoML input validation failure answers ``{"error": "1 validation error for Input",
  "detail": [{"loc": [...], "msg": ..., "type": ...}]}``: a count, not what is wrong;
- a 4xx ``BentoMLException`` answers a JSON *list* holding the object (``(dict,)`` in
  ``_bentoml_impl/server/app.py``, api_endpoint_wrapper);
- Starlette's 404 (no route), 405 (wrong method) and ``/readyz``'s 503 are plain text.

``ErrorBodies``, an ASGI middleware on the service, rewrites exactly those, buffering only
error responses (small); ``error_body`` is the rewrite. (Logging a client's error as one line
without a traceback: ``service.logs.ClientErrorsAsOneLine``.)
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

VALIDATION_COUNT = re.compile(r"^\d+ validation errors? for ")


def _field(loc: list | tuple) -> str:
    return ".".join(str(part) for part in loc) or "the request body"


def validation_sentence(detail: list[dict]) -> str:
    """pydantic's errors (no input values: they may be patient data) -> one sentence naming
    each field, e.g. "invalid field 'max_lesions': Input should be less than or equal to 1000"."""
    parts = [f"'{_field(e.get('loc', ()))}': {e.get('msg', 'invalid')}" for e in detail[:10]]
    more = f" (and {len(detail) - 10} more)" if len(detail) > 10 else ""
    noun = "field" if len(detail) == 1 else "fields"
    return f"invalid {noun} " + "; ".join(parts) + more


def _sentence(status: int, text: str, method: str, path: str, allow: str | None) -> str:
    if status == 404 and text in ("", "Not Found"):
        return f"not found: no route or resource at {method} {path}"
    if status == 405:
        return f"method {method} is not allowed on {path}" + (f"; use {allow}" if allow else "")
    return text or HTTPStatus(status).phrase


def error_body(
    status: int, raw: bytes, *, method: str, path: str, allow: str | None = None
) -> dict[str, Any] | None:
    """The one error body for an error response, or None when ``raw`` is one already."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = raw.decode("utf-8", "replace").strip()
    unwrapped = isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict)
    if unwrapped:
        data = data[0]  # BentoML's 4xx answer, a one-tuple
    if isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"]:
        detail = data.get("detail")
        if VALIDATION_COUNT.match(data["error"]) and isinstance(detail, list):
            return {**data, "error": validation_sentence(detail)}
        return data if unwrapped else None
    if isinstance(data, dict) and isinstance(data.get("detail"), str):
        data = data["detail"]  # Starlette/FastAPI style {"detail": "..."}
    if not isinstance(data, str):
        return {"error": HTTPStatus(status).phrase, "detail": data}
    return {"error": _sentence(status, data, method, path, allow)}


class ErrorBodies:
    """ASGI middleware: every response with status >= 400 leaves with the one error body
    (``error_body``); other responses pass untouched, unbuffered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def send_fixed(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message  # held until the body is complete
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await self._send_error(scope, start, b"".join(chunks), send)

        await self.app(scope, receive, send_fixed)

    @staticmethod
    async def _send_error(scope: Scope, start: Message, raw: bytes, send: Send) -> None:
        headers = [(k, v) for k, v in start.get("headers", [])]
        allow = next((v.decode("latin-1") for k, v in headers if k.lower() == b"allow"), None)
        fixed = error_body(
            start["status"], raw, method=scope["method"], path=scope["path"], allow=allow
        )
        if fixed is not None:
            raw = json.dumps(fixed).encode()
            skip = {b"content-length", b"content-type"}
            headers = [(k, v) for k, v in headers if k.lower() not in skip]
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
            ]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": raw})
