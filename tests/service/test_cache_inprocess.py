"""The per-image cache and admission control in the running service (in-process), with the
model runner wrapped to count or hold its calls."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import bentoml
import numpy as np
import pytest

from lesionseg.pipeline.cache import EmbeddingCache, image_key
from service.admission import QueueWaitEstimator
from service.metrics import CACHE_HITS

from .conftest import png_bytes

pytestmark = pytest.mark.slow


class RunnerSpy:
    """Stands for ``service.runner``: counts ``detect`` and ``embed`` and passes them on to the
    real runner; with ``hold`` set, each ``embed`` moves ``clock`` on by ``seconds`` and waits
    until ``release`` is set (30 s at most)."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.calls: list[str] = []
        self.hold = False
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self.clock = None
        self.seconds = 0.0

    @property
    def to_async(self) -> RunnerSpy:
        return self

    async def detect(self, images):
        self.calls.append("detect")
        return await self.runner.to_async.detect(images)

    async def embed(self, images):
        self.calls.append("embed")
        if self.clock is not None:
            self.clock.now += self.seconds
        if self.hold:
            self.entered.release()
            for _ in range(3000):  # 30 s at most: a test that fails must not hang
                if self.release.is_set():
                    break
                await asyncio.sleep(0.01)
        return await self.runner.to_async.embed(images)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def service(client, monkeypatch):
    """The in-process service, its runner spied on, with an empty cache of 256 MiB."""
    instance = bentoml.get_current_service()
    monkeypatch.setattr(instance, "runner", RunnerSpy(instance.runner))
    monkeypatch.setattr(instance, "image_cache", EmbeddingCache(256 * 2**20))
    return instance


def post(client, route: str, image: bytes, **fields):
    data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    return client.post(route, files={"image": ("x.png", image, "image/png")}, data=data)


def answer(response) -> dict:
    """The body without its timings (which differ from call to call)."""
    assert response.status_code == 200, response.text
    body = response.json()
    del body["timings_ms"]
    return body


def test_a_reprompt_skips_the_encoder_and_answers_the_same(client, service, lits, monkeypatch):
    image = png_bytes(lits.slice(112).image)
    boxes = [[int(v) for v in b] for b in lits.slice(112).boxes[:2]]
    assert boxes

    monkeypatch.setattr(service, "image_cache", EmbeddingCache(0))  # off: the reference
    uncached = answer(post(client, "/segment/boxes", image, boxes=boxes))
    uncached_refined = answer(
        post(client, "/segment/boxes", image, boxes=boxes, refine_iterations=2)
    )
    assert service.runner.calls == ["embed", "embed"] and len(service.image_cache) == 0

    monkeypatch.setattr(service, "image_cache", EmbeddingCache(256 * 2**20))
    service.runner.calls.clear()
    first = answer(post(client, "/segment/boxes", image, boxes=boxes))
    again = answer(post(client, "/segment/boxes", image, boxes=boxes))
    refined = answer(post(client, "/segment/boxes", image, boxes=boxes, refine_iterations=2))
    assert service.runner.calls == ["embed"]  # once, for the first request
    assert first == again == uncached  # the same JSON: boxes, scores, bit-identical RLE masks
    assert refined == uncached_refined
    assert (service.image_cache.hits, service.image_cache.misses) == (2, 1)


def test_another_threshold_skips_detector_and_encoder(client, service, lits):
    image = png_bytes(lits.slice(114).image)
    default = answer(post(client, "/segment", image))
    assert default["lesions"] and service.runner.calls == ["detect", "embed"]
    fewer = answer(post(client, "/segment", image, score_threshold=0.9, max_lesions=1))
    assert service.runner.calls == ["detect", "embed"]
    assert len(fewer["lesions"]) <= 1
    service.image_cache = EmbeddingCache(0)
    assert answer(post(client, "/segment", image, score_threshold=0.9, max_lesions=1)) == fewer


def test_a_request_hashes_each_image_once(client, service, lits, monkeypatch):
    import service.runner_calls as runner_calls

    digests = []

    def counted(pixels, models):
        digests.append(pixels.shape)
        return image_key(pixels, models)

    monkeypatch.setattr(runner_calls, "image_key", counted)
    answer(post(client, "/segment", png_bytes(lits.slice(113).image)))
    assert service.runner.calls == ["detect", "embed"]  # a new image: both models ran
    assert len(digests) == 1  # and its key was computed once for the two


def test_another_image_or_window_is_another_key(client, service, lits):
    post(client, "/segment/boxes", png_bytes(lits.slice(114).image), boxes=[[10, 10, 60, 60]])
    brighter = np.clip(lits.slice(114).image.astype(int) + 1, 0, 255).astype(np.uint8)
    post(client, "/segment/boxes", png_bytes(brighter), boxes=[[10, 10, 60, 60]])
    assert service.runner.calls == ["embed", "embed"]


def test_hits_and_misses_in_metrics(client, service, lits):
    def count(name: str, kind: str = "embedding") -> float:
        text = client.get("/metrics").text
        found = re.findall(rf'{name}_total\{{kind="{kind}"\}} (\S+)', text)
        return sum(float(v) for v in found)

    before = count("lesionseg_embedding_cache_hits"), count("lesionseg_embedding_cache_misses")
    image = png_bytes(lits.slice(116).image)
    for _ in range(3):
        post(client, "/segment/boxes", image, boxes=[[10, 10, 60, 60]])
    after = count("lesionseg_embedding_cache_hits"), count("lesionseg_embedding_cache_misses")
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)
    assert "lesionseg_embedding_cache_bytes" in client.get("/metrics").text


def test_concurrent_requests_for_a_new_image_share_one_encoder_pass(client, service, lits):
    """A second request for an image whose embedding is being computed waits for that call
    instead of running the encoder again, and both get the same answer."""
    image = png_bytes(lits.slice(118).image)
    boxes = [[10, 10, 60, 60]]
    spy = service.runner
    spy.hold = True
    hits = CACHE_HITS.labels("embedding")
    answers: list = []

    def send() -> None:
        answers.append(answer(post(client, "/segment/boxes", image, boxes=boxes)))

    first, second = threading.Thread(target=send), threading.Thread(target=send)
    try:
        first.start()
        assert spy.entered.acquire(timeout=60)  # the first request's encoder call is held
        before = hits._value.get()
        second.start()
        for _ in range(3000):  # until the second joins the call in flight, or calls its own
            if hits._value.get() > before or spy.calls.count("embed") > 1:
                break
            time.sleep(0.01)
    finally:
        spy.release.set()
        for thread in (first, second):
            thread.join(timeout=120)
    assert spy.calls == ["embed"]
    assert len(answers) == 2 and answers[0] == answers[1]


def test_admission_refuses_at_once_when_the_expected_wait_is_too_long(
    client, service, lits, monkeypatch
):
    """The held runner takes 10 s per request on the test's clock; with a limit of 15 s the
    first request waiting behind two others is refused with Retry-After 20 - 15 = 5."""
    clock = Clock()
    monkeypatch.setattr(service, "queue", QueueWaitEstimator(window=1, clock=clock))
    monkeypatch.setattr(service, "image_cache", EmbeddingCache(0))
    settings = service.settings.model_copy(update={"max_queue_wait_s": 15.0})
    monkeypatch.setattr(service, "settings", settings)
    spy = service.runner
    spy.clock, spy.seconds = clock, 10.0
    image = png_bytes(lits.slice(116).image)

    def send() -> int:
        return post(client, "/segment/boxes", image, boxes=[[10, 10, 60, 60]]).status_code

    assert send() == 200  # one request measured: 10 s each
    assert service.queue.seconds_per_request == pytest.approx(10.0)

    spy.hold = True
    codes: list[int] = []
    held = [threading.Thread(target=lambda: codes.append(send())) for _ in range(2)]
    try:
        for thread in held:  # two in flight, one after the other: 0 s and 10 s of wait
            thread.start()
            assert spy.entered.acquire(timeout=60)
        refused = post(client, "/segment/boxes", image, boxes=[[10, 10, 60, 60]])
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "5"
        assert "LESIONSEG_MAX_QUEUE_WAIT_S" in refused.json()["error"]
        assert spy.calls.count("embed") == 3  # the refused request never reached the runner
    finally:
        spy.release.set()
        for thread in held:
            thread.join(timeout=120)
    assert codes == [200, 200]
