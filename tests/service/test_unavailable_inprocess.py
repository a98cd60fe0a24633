"""Every 503 of the service received by a client (in-process, the runner held or failing), and
the trace id of a server error (500) in its log line and its response.

The admission-control 503 (LESIONSEG_MAX_QUEUE_WAIT_S) is received in
tests/service/test_cache_inprocess.py::test_admission_refuses_at_once_when_the_expected_wait_is_too_long.
"""

from __future__ import annotations

import io
import json
import logging
import threading

import aiohttp
import bentoml
import pytest

from lesionseg.pipeline.cache import EmbeddingCache
from service.admission import QueueWaitEstimator
from service.logs import BENTOML_EXCEPTIONS_LOGGER, JsonFormatter

from .conftest import png_bytes
from .test_cache_inprocess import RunnerSpy, post

pytestmark = pytest.mark.slow


class FailingRunner:
    """Stands for ``service.runner``: every call raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error, self.calls = error, 0

    @property
    def to_async(self) -> FailingRunner:
        return self

    async def detect(self, images):
        self.calls += 1
        raise self.error

    embed = detect


@pytest.fixture
def service(client, monkeypatch):
    """The in-process service with a fresh admission queue and no per-image cache."""
    instance = bentoml.get_current_service()
    monkeypatch.setattr(instance, "queue", QueueWaitEstimator())
    monkeypatch.setattr(instance, "image_cache", EmbeddingCache(0))
    return instance


@pytest.fixture
def image(lits) -> bytes:
    return png_bytes(lits.slice(116).image)


def refused(response, says: str) -> None:
    assert response.status_code == 503, response.text
    assert says in response.json()["error"], response.json()
    assert int(response.headers["Retry-After"]) >= 1


def test_models_still_loading(client, service, image, monkeypatch):
    monkeypatch.setattr(service, "_ready", threading.Event())  # as before loading finished
    assert client.get("/readyz").status_code == 503
    refused(post(client, "/segment", image), "still loading")


def test_too_many_requests_pending(client, service, image, monkeypatch):
    settings = service.settings.model_copy(update={"max_pending_requests": 1})
    monkeypatch.setattr(service, "settings", settings)
    spy = RunnerSpy(service.runner)
    monkeypatch.setattr(service, "runner", spy)
    spy.hold = True
    codes: list[int] = []
    held = threading.Thread(
        target=lambda: codes.append(post(client, "/segment/boxes", image, boxes=[[9, 9, 60, 60]]))
    )
    held.start()
    try:
        assert spy.entered.acquire(timeout=60)
        refused(post(client, "/segment/boxes", image, boxes=[[9, 9, 60, 60]]), "1 requests")
    finally:
        spy.release.set()
        held.join(timeout=120)
    assert [c.status_code for c in codes] == [200]


def test_runner_over_its_latency_budget(client, service, image, monkeypatch):
    """What BentoML's client of the runner raises when the runner answers 503 because its
    batch queue cannot meet max_latency_ms."""
    runner = FailingRunner(bentoml.exceptions.ServiceUnavailable("queue over max latency"))
    monkeypatch.setattr(service, "runner", runner)
    refused(post(client, "/segment", image), "LESIONSEG_MAX_LATENCY_MS")
    assert runner.calls == 1  # an answer of the runner is not retried


def test_runner_connection_lost(client, service, image, monkeypatch):
    runner = FailingRunner(aiohttp.ServerDisconnectedError())
    monkeypatch.setattr(service, "runner", runner)
    refused(post(client, "/segment", image), "connection dropped 3 times")
    assert runner.calls == 3  # retried, then given up


def test_a_server_error_logs_the_trace_id_the_response_carries(client, service, image, monkeypatch):
    monkeypatch.setattr(service, "runner", FailingRunner(ZeroDivisionError("a bug")))
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(BENTOML_EXCEPTIONS_LOGGER)
    logger.addHandler(handler)
    try:
        response = post(client, "/segment", image)
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 500, response.text
    trace_id = response.headers["X-Trace-Id"]
    assert len(trace_id) == 32 and int(trace_id, 16)
    (record,) = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert record["level"] == "ERROR" and record["trace_id"] == trace_id
    assert "ZeroDivisionError: a bug" in record["exception"]
