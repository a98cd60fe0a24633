"""Service logging, in both processes (the API and the model runner): the log format
(``LESIONSEG_LOG_FORMAT``), client errors as one line, and the OpenTelemetry trace id that ties a
server error's log line to the response the client got (header ``X-Trace-Id``).

BentoML configures its handlers before it imports the service (``_bentoml_impl.worker.service``
calls ``configure_server_logging`` and then loads ``service.app``), so :func:`configure_logging`
at import adjusts what BentoML set up rather than replacing it.
"""

from __future__ import annotations

import json
import logging
import traceback
from datetime import UTC, datetime

from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lesionseg.settings import Settings
from service.errors import validation_sentence

TRACE_HEADER = "X-Trace-Id"
# BentoML logs every exception of an API call here (http_app.log_exception), client errors too.
BENTOML_EXCEPTIONS_LOGGER = "bentoml._internal.server.http_app"


def current_trace_id() -> str | None:
    """The current OpenTelemetry trace id as 32 hex digits (BentoML's own log format), or None
    outside a request."""
    trace_id = trace.get_current_span().get_span_context().trace_id
    return format(trace_id, "032x") if trace_id else None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC ISO 8601), level, logger, message, trace_id, process
    and, for an exception, its traceback as one string."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": current_trace_id(),
            "process": record.process,
        }
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info))
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str)


class ClientErrorsAsOneLine(logging.Filter):
    """BentoML logs a refused request (a form field missing or out of range, a 4xx it raised)
    at ERROR with a traceback; it is the client's error: one INFO line, no traceback. The
    message names the fields and what is wrong with them, never their values (patient data).
    A 503 refusal of the model runner (``ServiceUnavailable``) is one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from bentoml.exceptions import ServiceUnavailable

        exc = record.exc_info[1] if record.exc_info else None
        status, what = _client_error(exc)
        level = logging.INFO
        if isinstance(exc, ServiceUnavailable):
            # A refusal by design (the model runner's queue over its latency budget, or a
            # restarted runner loading: service/runner.py), answered 503 with Retry-After by
            # the API: one WARNING line, not a traceback per refused call.
            status, what, level = 503, str(exc), logging.WARNING
        if status is not None:
            record.msg, record.args = "%s (%d): %s", (record.getMessage(), status, what)
            record.levelno, record.levelname = level, logging.getLevelName(level)
            record.exc_info, record.exc_text = None, None
        return True


def _client_error(exc: BaseException | None) -> tuple[int | None, str]:
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        return 400, validation_sentence(errors)  # the sentence of the client's error body
    if isinstance(exc, BentoMLException) and exc.error_code < 500:
        return int(exc.error_code), type(exc).__name__
    return None, ""


def configure_logging(settings: Settings) -> None:
    """The ``lesionseg`` loggers at INFO; client errors as one line; with ``log_format`` json,
    every handler that writes to stdout/stderr formats one JSON object per line."""
    logging.getLogger("lesionseg").setLevel(logging.INFO)
    exceptions = logging.getLogger(BENTOML_EXCEPTIONS_LOGGER)
    if not any(isinstance(f, ClientErrorsAsOneLine) for f in exceptions.filters):
        exceptions.addFilter(ClientErrorsAsOneLine())
    if settings.log_format != "json":
        return
    formatter = JsonFormatter()
    loggers = [logging.getLogger()] + [
        logger for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]  # fmt: skip
    for logger in loggers:
        for handler in logger.handlers:
            if type(handler) in (logging.StreamHandler, logging.FileHandler):
                handler.setFormatter(formatter)


class TraceIdHeader:
    """Adds ``X-Trace-Id`` (the request's OpenTelemetry trace id, as in the server log) to every
    response, so that a user can quote it with an error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        trace_id = current_trace_id() if scope["type"] == "http" else None
        if trace_id is None:
            return await self.app(scope, receive, send)

        async def with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((TRACE_HEADER.lower().encode(), trace_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_header)
