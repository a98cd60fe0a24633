"""Admission by bytes in flight: the request bodies one API process holds at once are bounded
by ``LESIONSEG_MAX_INFLIGHT_BYTES``, as ``LESIONSEG_MAX_PENDING_REQUESTS`` bounds their count.

While a request is served its body is held in memory once, while BentoML copies an uploaded
file whole into the request's temporary directory, and twice on disk: the multipart parser's
spooled file and that copy (both under ``TMPDIR``, the pod's emptyDir), until the response
ends. So the bound holds the memory of uploads, and their temporary disk to twice the bound.

:class:`InflightBytes` reserves a request's declared ``Content-Length`` before its body is read
and releases it when the request ends, however it ends (answered, refused by a later limit,
cancelled by the deadline, the client gone). Over the bound: 503 with ``Retry-After`` at once;
a request larger than the bound itself: 413 (it could never pass). A chunked body (no length)
reserves the largest request body (``max_request_bytes``, at most the bound): its size is
known only once read, and the body limit stops it there (service/limits.py). A request
without a body (GET) reserves nothing.

The count is per API process (``bentoml serve`` runs one API worker): a pod holds at most the
bound; BentoML's own count limits and the request deadline still apply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from lesionseg.settings import Settings
from service.limits import current_settings, max_request_bytes
from service.metrics import INFLIGHT_BYTES, INFLIGHT_REJECTED

log = logging.getLogger("lesionseg.service")

# Seconds a client refused for the bytes in flight should wait: uploads in flight end within
# seconds (their transfer and decoding); a retry after them finds the bytes released.
RETRY_AFTER_S = 5


def _reserved_bytes(scope: Scope, settings: Settings) -> int:
    """What a request reserves: its declared length, the largest body when chunked, else 0."""
    chunked = False
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0  # the server refuses a malformed length itself
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        return min(max_request_bytes(settings), int(settings.max_inflight_bytes))
    return 0


class InflightBytes:
    """ASGI middleware: at most ``max_inflight_bytes`` of request bodies in flight.

    ``held`` is the sum of the reservations of the requests in flight (bytes), also published
    as the gauge ``lesionseg_inflight_bytes``."""

    def __init__(self, app: ASGIApp, settings: Callable[[], Settings] = current_settings) -> None:
        self.app, self.settings = app, settings
        self.held = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        settings = self.settings()
        bound = int(settings.max_inflight_bytes)
        size = _reserved_bytes(scope, settings)
        if size == 0:
            return await self.app(scope, receive, send)
        if size > bound:
            return await self._refuse(scope, receive, send, 413, size, bound)
        if self.held + size > bound:
            return await self._refuse(scope, receive, send, 503, size, bound)
        self.held += size  # no await between the check and here: one event loop, no race
        INFLIGHT_BYTES.set(self.held)
        try:
            await self.app(scope, receive, send)
        finally:
            self.held -= size
            INFLIGHT_BYTES.set(self.held)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, size: int, bound: int
    ) -> None:
        INFLIGHT_REJECTED.labels(str(status)).inc()
        log.warning(
            "%s %s refused (%d): %d bytes with %d in flight, over LESIONSEG_MAX_INFLIGHT_BYTES=%d",
            scope.get("method"),
            scope.get("path"),
            status,
            size,
            self.held,
            bound,
        )
        if status == 413:
            message = (
                f"the request body of {size} bytes is larger than the bytes this service holds "
                f"in flight at once (LESIONSEG_MAX_INFLIGHT_BYTES={bound}); send less at once"
            )
            headers = {"Connection": "close"}
        else:
            message = (
                f"overloaded: {self.held} bytes of uploads in flight, and this request's {size} "
                f"would pass LESIONSEG_MAX_INFLIGHT_BYTES={bound}; retry later"
            )
            headers = {"Retry-After": str(RETRY_AFTER_S), "Connection": "close"}
        await JSONResponse({"error": message}, status_code=status, headers=headers)(
            scope, receive, send
        )
