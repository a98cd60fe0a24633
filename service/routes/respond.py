"""Every request's wrapper: admission control before any work (503 with Retry-After), and the
errors mapped to statuses: bad input -> 400, the model runner overloaded or gone -> 503."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import bentoml
from starlette.responses import JSONResponse

from lesionseg.errors import InputError
from lesionseg.settings import Settings
from service.admission import QueueWaitEstimator
from service.metrics import ADMISSION_REJECTED
from service.retry import RunnerConnectionError

log = logging.getLogger("lesionseg.service")


def bad_request(exc: InputError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=400)


def unavailable(message: str, retry_after_s: int = 5) -> JSONResponse:
    return JSONResponse(
        {"error": message}, status_code=503, headers={"Retry-After": str(retry_after_s)}
    )


async def respond(
    ready: asyncio.Event,
    queue: QueueWaitEstimator,
    settings: Settings,
    work: Callable[[], Awaitable[Any]],
) -> Any:
    """``await work()`` once the models are loaded and the queue admits it; its answer, or
    the error's response."""
    if not ready.is_set():
        return unavailable("the models are still loading; retry once /readyz answers 200")
    pending = queue.in_flight
    if pending >= settings.max_pending_requests:
        return unavailable(f"overloaded: {pending} requests in flight; retry later")
    if (wait := queue.expected_wait_s()) > settings.max_queue_wait_s:
        ADMISSION_REJECTED.inc()
        return unavailable(
            f"overloaded: {pending} requests in flight, an expected wait of {wait:.0f} s "
            f"(LESIONSEG_MAX_QUEUE_WAIT_S={settings.max_queue_wait_s:g}); retry later",
            queue.retry_after_s(settings.max_queue_wait_s),
        )
    queue.started()
    try:
        return await work()
    except InputError as exc:
        # Input messages never quote patient data (tests/service/test_privacy.py).
        log.info("bad request (400): %s", exc)
        return bad_request(exc)
    except bentoml.exceptions.ServiceUnavailable:
        # The runner sheds calls it cannot batch within max_latency_ms, or while it reloads.
        return unavailable(
            "the model runner refused: its queue is over the latency budget "
            "(LESIONSEG_MAX_LATENCY_MS), or it restarted and is loading; retry later"
        )
    except RunnerConnectionError as exc:
        return unavailable(f"{exc}; retry later")
    finally:
        queue.finished()
