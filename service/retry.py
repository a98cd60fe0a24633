"""Retry the API service's calls to the model runner when their connection drops.

Under load, the HTTP connection between the two BentoML processes can be dropped while a request
is on it (measured by `make bench`: ``aiohttp ServerDisconnectedError`` and then
``Connector is closed`` for the other requests on that client, HTTP 500 at 8 users; and, when
the connection closes while the answer is read, aiohttp's ``RuntimeError("Connection closed.")``
from ``StreamReader``, one HTTP 500 in a 30 s run at 8 users). The cause was BentoML renewing
its client session every 100 calls with calls in flight, which ``ModelRunner`` now turns off
(service/runner.py); this stays as the guard against any other drop. The runner's
``detect`` and ``embed`` are pure functions of their input, so sending the call again is safe;
only connection failures are retried, never an answer of the runner (errors, overload).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
from prometheus_client import Counter

log = logging.getLogger("lesionseg.service")
T = TypeVar("T")

RUNNER_RETRIES = Counter(
    "lesionseg_runner_call_retries",
    "Model-runner calls sent again after their connection dropped",
    ["method"],
)


class RunnerConnectionError(RuntimeError):
    """The model runner could not be reached in ``attempts`` tries (maps to HTTP 503)."""


# A connection lost: aiohttp's connection errors, and its payload error when the connection
# closes part-way through the answer's body (a runner killed while it answered: "Response
# payload is not completed", ContentLengthError; measured by tests/service/test_faults.py).
LOST = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)


def _dropped(exc: BaseException) -> bool:
    """A connection lost: aiohttp's own errors (:data:`LOST`), or the bare RuntimeError its
    StreamReader raises when the connection closes while the body is read (aiohttp 3.x)."""
    if isinstance(exc, LOST):
        return True
    return type(exc) is RuntimeError and str(exc) == "Connection closed."


async def call_runner(
    call: Callable[[], Awaitable[T]], method: str, *, attempts: int = 3, delay_s: float = 0.2
) -> T:
    """``await call()``; on a dropped connection wait ``delay_s * try`` and send it again."""
    assert attempts >= 1
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except (*LOST, RuntimeError) as exc:
            if not _dropped(exc):
                raise
            if attempt == attempts:
                raise RunnerConnectionError(
                    f"the model runner's connection dropped {attempts} times during {method}"
                ) from exc
            RUNNER_RETRIES.labels(method).inc()
            log.warning("runner connection lost during %s (%r); retry %d", method, exc, attempt)
            await asyncio.sleep(delay_s * attempt)
    raise AssertionError("unreachable")
