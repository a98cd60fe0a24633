"""The body-size limit (413) and the request deadline (504) as ASGI middleware, on a small app;
the real server's behaviour is in tests/service/test_limits_serve.py."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse

from service.limits import FORM_OVERHEAD_BYTES, BodyLimit, RequestDeadline

CHUNK = 64 * 1024
LIMIT = 1_000_000  # max_upload_bytes of these tests


class Body:
    """An ASGI ``receive`` of ``total`` bytes in CHUNK pieces; counts what was read."""

    def __init__(self, total: int) -> None:
        self.total, self.read = total, 0

    async def __call__(self) -> dict:
        size = min(CHUNK, self.total - self.read)
        self.read += size
        return {"type": "http.request", "body": b"x" * size, "more_body": self.read < self.total}


class Sent:
    def __init__(self) -> None:
        self.messages: list[dict] = []

    async def __call__(self, message: dict) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return self.messages[0]["status"]

    @property
    def body(self) -> dict:
        return json.loads(b"".join(m.get("body", b"") for m in self.messages[1:]))


def scope(content_length: int | None = None) -> dict:
    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    return {"type": "http", "method": "POST", "path": "/segment", "headers": headers}


class App:
    """Reads the whole body (as a form parser does), then answers 200 with its length."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s, self.called, self.cancelled = delay_s, False, False

    async def __call__(self, scope, receive, send) -> None:
        self.called = True
        try:
            body = await Request(scope, receive).body()
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        await JSONResponse({"length": len(body)})(scope, receive, send)


def settings(**values) -> SimpleNamespace:
    return SimpleNamespace(**{"max_upload_bytes": LIMIT, "request_timeout_s": 60.0, **values})


def run(middleware, scope: dict, body: Body) -> Sent:
    sent = Sent()
    asyncio.run(middleware(scope, body, sent))
    return sent


def test_a_declared_length_over_the_limit_is_refused_before_anything_is_read():
    app, body = App(), Body(2 * 2**30)
    sent = run(BodyLimit(app, settings=settings), scope(2 * 2**30), body)
    assert sent.status == 413 and "LESIONSEG_MAX_UPLOAD_BYTES" in sent.body["error"]
    assert body.read == 0 and not app.called


def test_a_streamed_body_is_cut_as_soon_as_it_passes_the_limit():
    """2 GB announced by nobody (chunked): reading stops one chunk past the limit."""
    app, body = App(), Body(2 * 2**30)
    sent = run(BodyLimit(app, settings=settings), scope(), body)
    assert sent.status == 413
    limit = LIMIT + FORM_OVERHEAD_BYTES
    assert limit < body.read <= limit + CHUNK
    assert app.cancelled  # the app's read was cancelled, not answered with a partial body


def test_the_app_inside_the_deadline_is_cancelled_too():
    """The body limit outside the deadline (as in service/app.py): both guards' tasks end."""
    app, body, sent = App(), Body(2 * 2**30), Sent()
    middleware = BodyLimit(RequestDeadline(app, settings=settings), settings=settings)

    async def request() -> bool:
        await middleware(scope(), body, sent)
        return app.cancelled  # before asyncio.run cancels what is left over

    assert asyncio.run(request())
    assert sent.status == 413
    assert body.read <= LIMIT + FORM_OVERHEAD_BYTES + CHUNK


def test_a_body_longer_than_its_declared_length_is_cut_too():
    app, body = App(), Body(2 * 2**30)
    sent = run(BodyLimit(app, settings=settings), scope(1000), body)
    assert sent.status == 413 and body.read <= LIMIT + FORM_OVERHEAD_BYTES + CHUNK


def test_a_body_within_the_limit_reaches_the_app():
    size = LIMIT + FORM_OVERHEAD_BYTES
    sent = run(BodyLimit(App(), settings=settings), scope(size), Body(size))
    assert sent.status == 200 and sent.body == {"length": size}


def test_past_the_deadline_the_work_is_cancelled_and_504_names_the_setting():
    app = App(delay_s=30)
    started = time.monotonic()
    deadline = RequestDeadline(app, settings=lambda: settings(request_timeout_s=0.3))
    sent = run(deadline, scope(10), Body(10))
    assert time.monotonic() - started < 5
    assert sent.status == 504 and "LESIONSEG_REQUEST_TIMEOUT_S" in sent.body["error"]
    assert app.cancelled


def test_within_the_deadline_the_answer_is_the_apps():
    deadline = RequestDeadline(App(delay_s=0.05), settings=lambda: settings(request_timeout_s=5))
    sent = run(deadline, scope(10), Body(10))
    assert sent.status == 200 and sent.body == {"length": 10}


@pytest.mark.parametrize("middleware", [BodyLimit, RequestDeadline])
def test_other_scopes_pass_through(middleware):
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(middleware(app, settings=settings)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]
