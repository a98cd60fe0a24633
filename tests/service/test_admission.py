"""The queue-wait estimator of admission control, on a clock the test moves."""

from __future__ import annotations

import pytest

from service.admission import QueueWaitEstimator


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_no_estimate_before_the_first_completion(clock):
    queue = QueueWaitEstimator(clock=clock)
    for _ in range(5):
        queue.started()
    assert queue.in_flight == 5 and queue.expected_wait_s() == 0.0


def test_one_at_a_time_measures_the_service_time_over_the_window(clock):
    queue = QueueWaitEstimator(window=3, clock=clock)
    for seconds in (9.0, 2.0, 2.0, 5.0):
        queue.started()
        clock.now += seconds
        queue.finished()
        clock.now += 50.0  # idle time is not service time
    assert queue.seconds_per_request == pytest.approx(3.0)  # (2 + 2 + 5) / 3: 9 s has left
    queue.started()
    queue.started()
    assert queue.expected_wait_s() == pytest.approx(6.0)


def test_batches_measure_the_effective_concurrency(clock):
    """Batches of four, 4 s each: one request per second, however the batches fall."""
    queue = QueueWaitEstimator(window=16, clock=clock)
    for _ in range(10):
        for _ in range(4):
            queue.started()
        clock.now += 4.0
        for _ in range(4):
            queue.finished()
        assert queue.seconds_per_request == pytest.approx(1.0)


def test_a_queue_served_one_by_one_gives_the_time_between_completions(clock):
    """Ten requests arrive at once; each takes 1.5 s of the whole machine."""
    queue = QueueWaitEstimator(window=10, clock=clock)
    for _ in range(10):
        queue.started()
    for _ in range(10):
        clock.now += 1.5
        queue.finished()
    assert queue.seconds_per_request == pytest.approx(1.5)
    assert queue.in_flight == 0 and queue.expected_wait_s() == 0.0


def test_retry_after_is_the_time_until_the_wait_is_within_the_limit(clock):
    queue = QueueWaitEstimator(window=1, clock=clock)
    queue.started()
    clock.now += 3.0
    queue.finished()
    for _ in range(9):
        queue.started()
    assert queue.expected_wait_s() == pytest.approx(27.0)
    assert queue.retry_after_s(20.0) == 7
    assert queue.retry_after_s(26.5) == 1  # never 0
