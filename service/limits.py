"""Per-request limits as ASGI middleware: the request body size (413) and the request deadline
(504), applied before and around BentoML's routes and the mounted /jobs and viewer apps.

Both run the rest of the app as a task and answer for it when their limit is passed: the task
is cancelled (its ``finally`` blocks run, so admission counters stay right), nothing more of the
body is read, and the client gets ``{"error": ...}`` with the setting to change. Work already
handed to a thread or to the model runner's current batch finishes on its own; its result is
dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import bentoml
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lesionseg.settings import Settings
from service.logs import current_trace_id

log = logging.getLogger("lesionseg.service")

# Multipart boundaries, part headers and the small form fields (boxes, window, ...) beside the
# uploaded files: 1 MiB holds ~30,000 boxes of JSON text.
FORM_OVERHEAD_BYTES = 2**20


def current_settings() -> Settings:
    """The serving instance's settings (the stored bundle's, with the environment's limits)."""
    return bentoml.get_current_service().settings


def max_request_bytes(settings: Settings) -> int:
    """Largest request body (bytes) on every route: ``max_upload_bytes`` for all the files of
    one request together (a whole series to /segment/dicom-seg or /jobs, as /jobs already
    checked after spooling), plus :data:`FORM_OVERHEAD_BYTES` for the rest of the form."""
    return settings.max_upload_bytes + FORM_OVERHEAD_BYTES


def traffic_timeout_s(settings: Settings) -> float:
    """BentoML's ``traffic.timeout`` of both services, a backstop behind the service's deadline:
    ``request_timeout_s`` plus ``traffic_backstop_s``, so that the service's own 504 (which
    names the setting) comes first."""
    return settings.request_timeout_s + settings.traffic_backstop_s


class _Guarded:
    """Runs ``app`` as a task that a limit may cut short with ``refuse`` (once, and only while
    no response has started)."""

    def __init__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        self.started = False
        self.cut: JSONResponse | None = None
        self._cut_event = asyncio.Event()
        self._send = send
        self._scope, self._receive = scope, receive
        self._task = asyncio.ensure_future(app(scope, receive, self.send))

    async def send(self, message: Message) -> None:
        if self.cut is not None:
            return  # the app's late messages after the limit answered
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    def refuse(self, response: JSONResponse) -> bool:
        """Answer ``response`` instead of the app (False when the app has begun answering)."""
        if self.started or self.cut is not None:
            return False
        self.cut = response
        self._cut_event.set()
        return True

    async def run(self, timeout: float | None = None) -> None:
        """Wait for the app, or for a refusal, or ``timeout`` seconds (None: no deadline)."""
        cut = asyncio.ensure_future(self._cut_event.wait())
        try:
            await asyncio.wait({self._task, cut}, timeout=timeout, return_when="FIRST_COMPLETED")
        except asyncio.CancelledError:  # an outer limit cut this request: the app goes too
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            raise
        finally:
            cut.cancel()
        if not self._task.done() and self.cut is None and not self.started:
            self.refuse(_deadline_response(self._scope, timeout))
        if self.cut is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            await self.cut(self._scope, self._receive, self._send)
        else:
            await self._task  # answering (or done): it finishes, or raises, as it would


def _deadline_response(scope: Scope, timeout: float | None) -> JSONResponse:
    trace = current_trace_id()
    log.error(
        "%s %s: no answer within the request deadline of %g s; cancelled (trace_id=%s)",
        scope.get("method"),
        scope.get("path"),
        timeout,
        trace,
    )
    return JSONResponse(
        {
            "error": f"the request was not answered within {timeout:g} s "
            "(LESIONSEG_REQUEST_TIMEOUT_S); it was cancelled, retry later or with less data"
        },
        status_code=504,
    )


class RequestDeadline:
    """504 for a request whose response has not started ``request_timeout_s`` after it
    arrived (upload, queueing and model time together); the request's work is cancelled."""

    def __init__(self, app: ASGIApp, settings: Callable[[], Settings] = current_settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        await _Guarded(self.app, scope, receive, send).run(self.settings().request_timeout_s)


class BodyLimit:
    """413 for a request body over :func:`max_request_bytes`: at once when Content-Length says
    so (nothing is read), else as soon as the bytes received pass it (chunked, or a body longer
    than announced); what was read is dropped and no more is read."""

    def __init__(self, app: ASGIApp, settings: Callable[[], Settings] = current_settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = max_request_bytes(self.settings())
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            _log_refusal(scope, f"Content-Length {declared}", limit)
            return await _too_large(limit)(scope, receive, send)
        received = 0
        guarded: _Guarded

        async def counting() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and guarded.refuse(_too_large(limit)):
                    _log_refusal(scope, f"over {received} bytes received", limit)
                    await asyncio.Event().wait()  # cancelled by the guard: no more is read
            return message

        guarded = _Guarded(self.app, scope, counting, send)
        await guarded.run()


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length itself
    return None


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        {
            "error": f"the request body is over the limit of {limit} bytes "
            f"(LESIONSEG_MAX_UPLOAD_BYTES for all files together + {FORM_OVERHEAD_BYTES} "
            "for the form fields)"
        },
        status_code=413,
        headers={"Connection": "close"},
    )


def _log_refusal(scope: Scope, what: str, limit: int) -> None:
    log.warning(
        "%s %s refused (413): %s, over the limit of %d bytes",
        scope.get("method"),
        scope.get("path"),
        what,
        limit,
    )
