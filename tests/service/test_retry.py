"""Calls to the model runner survive a dropped connection; answers are never resent."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from service.retry import RUNNER_RETRIES, RunnerConnectionError, call_runner


def flaky(failures: list[Exception], answer: str = "ok"):
    calls = []

    async def call():
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return answer

    return call, calls


def test_a_dropped_connection_is_retried_and_counted():
    before = RUNNER_RETRIES.labels("embed")._value.get()
    call, calls = flaky([aiohttp.ServerDisconnectedError(), aiohttp.ClientConnectionError("x")])
    assert asyncio.run(call_runner(call, "embed", delay_s=0)) == "ok"
    assert len(calls) == 3
    assert RUNNER_RETRIES.labels("embed")._value.get() - before == 2


def test_gives_up_with_a_typed_error_after_the_last_attempt():
    call, calls = flaky([aiohttp.ServerDisconnectedError()] * 5)
    with pytest.raises(RunnerConnectionError, match="dropped 3 times during detect"):
        asyncio.run(call_runner(call, "detect", attempts=3, delay_s=0))
    assert len(calls) == 3


def test_a_connection_closed_while_reading_the_answer_is_retried():
    call, calls = flaky([RuntimeError("Connection closed.")])  # aiohttp's StreamReader
    assert asyncio.run(call_runner(call, "embed", delay_s=0)) == "ok"
    assert len(calls) == 2


def test_an_answer_cut_short_by_a_dying_runner_is_retried():
    """The runner killed while it sent an embedding: aiohttp's payload error (was a 500)."""
    cut = aiohttp.ClientPayloadError("Response payload is not completed")
    call, calls = flaky([cut, cut])
    assert asyncio.run(call_runner(call, "embed", delay_s=0)) == "ok"
    assert len(calls) == 3
    call, calls = flaky([cut] * 3)
    with pytest.raises(RunnerConnectionError):
        asyncio.run(call_runner(call, "embed", attempts=3, delay_s=0))


@pytest.mark.parametrize(
    "error", [ValueError("the runner answered with an error"), RuntimeError("something else")]
)
def test_other_errors_are_not_retried(error):
    call, calls = flaky([error])
    with pytest.raises(type(error)):
        asyncio.run(call_runner(call, "detect", delay_s=0))
    assert len(calls) == 1
