"""The model runner's deferred SIGTERM (service/drain.py), on a test clock."""

import os
import signal
import threading
import time

from service.drain import Drain


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_waits_for_calls_in_flight_then_for_the_api():
    clock = Clock()
    drain = Drain(idle_s=5, timeout_s=25, clock=clock)
    with drain.call():
        drain.api_drained()
        assert drain.ready_to_stop(since=100) is None  # a call is still running
    clock.now += 1
    assert drain.ready_to_stop(since=100) == "the API has drained"


def test_stops_when_idle_without_word_from_the_api():
    clock = Clock()
    drain = Drain(idle_s=5, timeout_s=25, clock=clock)
    with drain.call():
        clock.now += 2
    clock.now += 4.9
    assert drain.ready_to_stop(since=100) is None  # 4.9 s since the last call
    clock.now += 0.1
    assert drain.ready_to_stop(since=100) == "no call for 5 s"


def test_idle_is_counted_from_the_signal_not_from_an_old_call():
    clock = Clock()
    drain = Drain(idle_s=5, timeout_s=25, clock=clock)
    clock.now += 60  # the last call was long ago
    assert drain.ready_to_stop(since=clock.now) is None
    clock.now += 5
    assert drain.ready_to_stop(since=clock.now - 5) == "no call for 5 s"


def test_a_call_that_never_ends_is_cut_at_the_timeout():
    clock = Clock()
    drain = Drain(idle_s=5, timeout_s=25, clock=clock)
    with drain.call():
        clock.now += 24.9
        assert drain.ready_to_stop(since=100) is None
        clock.now += 0.1
        assert drain.ready_to_stop(since=100) == "25 s passed"


def test_sigterm_reaches_the_previous_handler_only_after_the_drain():
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        drain = Drain(idle_s=30, timeout_s=60)
        assert drain.install()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)
        assert received == []  # deferred
        drain.api_drained()
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_not_installed_off_the_main_thread():
    result = []
    thread = threading.Thread(target=lambda: result.append(Drain(idle_s=5, timeout_s=25).install()))
    thread.start()
    thread.join()
    assert result == [False]
