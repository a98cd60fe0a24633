"""Admission by bytes in flight (service/inflight.py) on a small ASGI app, no server: 503 at
once over the bound, 413 over the bound alone, the reservation released however the request
ends. The real server under a burst of uploads: tests/service/test_inflight_serve.py."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse

from service.inflight import InflightBytes
from service.limits import FORM_OVERHEAD_BYTES, BodyLimit

MIB = 2**20
BOUND = 10 * MIB


def settings(**values) -> SimpleNamespace:
    defaults = {"max_upload_bytes": 4 * MIB, "max_inflight_bytes": BOUND}
    return SimpleNamespace(**{**defaults, **values})


class Body:
    """An ASGI ``receive`` of ``total`` bytes in 64 KiB pieces; counts what was read."""

    def __init__(self, total: int) -> None:
        self.total, self.read = total, 0

    async def __call__(self) -> dict:
        size = min(2**16, self.total - self.read)
        self.read += size
        return {"type": "http.request", "body": b"x" * size, "more_body": self.read < self.total}


class Sent(list):
    async def __call__(self, message: dict) -> None:
        self.append(message)

    @property
    def status(self) -> int:
        return self[0]["status"]

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self[0]["headers"]}

    @property
    def error(self) -> str:
        return json.loads(b"".join(m.get("body", b"") for m in self[1:]))["error"]


def scope(length: int | None, method: str = "POST", chunked: bool = False) -> dict:
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    return {"type": "http", "method": method, "path": "/segment", "headers": headers}


class App:
    """Reads the body, then waits until its gate (``gates[n]`` for the n-th request) is set
    (a request in flight) and answers 200, or raises ``fail``."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail, self.entered = fail, asyncio.Event()
        self.gates: list[asyncio.Event] = []

    async def __call__(self, scope, receive, send) -> None:
        await Request(scope, receive).body()
        self.gates.append(gate := asyncio.Event())
        self.entered.set()
        await gate.wait()
        if self.fail is not None:
            raise self.fail
        await JSONResponse({"ok": True})(scope, receive, send)


async def start(middleware: InflightBytes, app: App, length: int, **kw) -> tuple:
    sent = Sent()
    task = asyncio.create_task(middleware(scope(length, **kw), Body(length or 0), sent))
    await asyncio.wait_for(app.entered.wait(), 5)
    app.entered.clear()
    return task, sent


def test_over_the_bound_503_at_once_without_reading_and_the_bytes_come_back():
    async def scenario() -> None:
        app = App()
        middleware = InflightBytes(app, lambda: settings())
        first, _ = await start(middleware, app, 4 * MIB)
        second, _ = await start(middleware, app, 4 * MIB)
        assert middleware.held == 8 * MIB
        body, refused = Body(4 * MIB), Sent()
        await middleware(scope(4 * MIB), body, refused)  # answered while the others run
        assert refused.status == 503 and body.read == 0
        assert int(refused.headers["retry-after"]) >= 1
        assert "LESIONSEG_MAX_INFLIGHT_BYTES=10485760" in refused.error
        small, small_sent = await start(middleware, app, 2 * MIB)  # what still fits
        assert middleware.held == BOUND
        app.gates[0].set()
        await first
        assert middleware.held == 6 * MIB
        again, again_sent = await start(middleware, app, 4 * MIB)
        for gate in app.gates[1:]:
            gate.set()
        await asyncio.gather(second, small, again)
        assert small_sent.status == again_sent.status == 200
        assert middleware.held == 0

    asyncio.run(scenario())


def test_a_body_larger_than_the_bound_itself_is_413():
    async def scenario() -> None:
        middleware = InflightBytes(App(), lambda: settings(max_upload_bytes=64 * MIB))
        body, sent = Body(BOUND + 1), Sent()
        await middleware(scope(BOUND + 1), body, sent)
        assert sent.status == 413 and body.read == 0
        assert "LESIONSEG_MAX_INFLIGHT_BYTES" in sent.error and "retry-after" not in sent.headers

    asyncio.run(scenario())


@pytest.mark.parametrize("ending", ["error", "cancelled"])
def test_the_bytes_come_back_when_a_request_fails_or_is_cancelled(ending):
    async def scenario() -> None:
        app = App(fail=RuntimeError("boom") if ending == "error" else None)
        middleware = InflightBytes(app, lambda: settings())
        task, _ = await start(middleware, app, 6 * MIB)
        assert middleware.held == 6 * MIB
        if ending == "error":
            app.gates[0].set()
        else:  # the deadline, or the body limit, cancels the request
            task.cancel()
        results = await asyncio.gather(task, return_exceptions=True)
        assert isinstance(results[0], RuntimeError if ending == "error" else asyncio.CancelledError)
        assert middleware.held == 0

    asyncio.run(scenario())


def test_chunked_reserves_the_largest_body_and_a_get_nothing():
    async def scenario() -> None:
        app = App()
        middleware = InflightBytes(app, lambda: settings())
        chunked, _ = await start(middleware, app, None, chunked=True)
        assert middleware.held == 4 * MIB + FORM_OVERHEAD_BYTES  # max_request_bytes
        get, _ = await start(middleware, app, None, method="GET")
        assert middleware.held == 4 * MIB + FORM_OVERHEAD_BYTES
        for gate in app.gates:
            gate.set()
        await asyncio.gather(chunked, get)
        assert middleware.held == 0

    asyncio.run(scenario())


def test_an_upload_over_the_body_limit_gets_the_body_limits_413_first():
    """The order of service/middleware.py: the body limit, then the bytes in flight."""

    async def scenario() -> None:
        current = lambda: settings(max_inflight_bytes=100 * MIB)  # noqa: E731
        stack = BodyLimit(InflightBytes(App(), current), current)
        sent = Sent()
        await stack(scope(200 * MIB), Body(200 * MIB), sent)
        assert sent.status == 413 and "LESIONSEG_MAX_UPLOAD_BYTES" in sent.error

    asyncio.run(scenario())


def test_the_service_bounds_every_route_after_the_key_and_body_checks():
    """401 and the body limit's 413 come first; then the bytes in flight, around BentoML's
    routes and the mounted /jobs and viewer apps alike; then the deadline."""
    from service.app import LesionSeg

    order = [cls.__name__ for cls, _ in LesionSeg.middlewares]
    assert order.index("ApiKeyMiddleware") < order.index("BodyLimit")
    assert order.index("BodyLimit") + 1 == order.index("InflightBytes")
    assert order.index("InflightBytes") + 1 == order.index("RequestDeadline")
