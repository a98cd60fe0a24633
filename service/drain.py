"""The model runner outlives the API's in-flight requests on SIGTERM.

BentoML's arbiter sends SIGTERM to the API process and to the model-runner process at once.
The API stops accepting requests and finishes those in flight; uvicorn in the runner would stop
listening at once, so a request in flight whose next frame still needs the encoder would get a
503 instead of its answer. The runner therefore defers SIGTERM (:meth:`Drain.install`) until
the first of:

- the API says it has drained (its shutdown hook calls ``ModelRunner.api_drained``) and no
  runner call is running;
- no runner call for ``idle_s`` since the signal (the API is gone or has nothing in flight);
- ``timeout_s`` since the signal (stays within Kubernetes' default grace of 30 s).

Both come from the settings (``LESIONSEG_DRAIN_IDLE_S``, ``LESIONSEG_DRAIN_TIMEOUT_S``).

Then uvicorn's own handler runs, as if the signal had just come.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from lesionseg.settings import Settings

log = logging.getLogger("lesionseg.service")


class Drain:
    """Counts the runner's calls in flight and decides when a deferred SIGTERM may proceed.

    Args:
        idle_s: seconds without a call after which the runner stops anyway.
        timeout_s: most seconds a SIGTERM is deferred.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        *,
        idle_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.idle_s, self.timeout_s, self.clock = idle_s, timeout_s, clock
        self._lock = threading.Lock()
        self._calls = 0
        self._last = clock()
        self._drained = threading.Event()
        self._signalled = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Drain:
        """The drain of the settings' ``drain_idle_s`` and ``drain_timeout_s``."""
        return cls(idle_s=settings.drain_idle_s, timeout_s=settings.drain_timeout_s)

    @contextmanager
    def call(self) -> Iterator[None]:
        """Wrap one runner call (detect, embed)."""
        with self._lock:
            self._calls += 1
        try:
            yield
        finally:
            with self._lock:
                self._calls -= 1
                self._last = self.clock()

    def api_drained(self) -> None:
        """The API process has answered every request it had (its shutdown hook)."""
        self._drained.set()

    def ready_to_stop(self, since: float) -> str | None:
        """Why the runner may stop now, a SIGTERM having come at ``since``; None: not yet."""
        now = self.clock()
        with self._lock:
            calls, last = self._calls, self._last
        if now - since >= self.timeout_s:
            return f"{self.timeout_s:g} s passed"
        if calls:
            return None
        if self._drained.is_set():
            return "the API has drained"
        if now - max(last, since) >= self.idle_s:
            return f"no call for {self.idle_s:g} s"
        return None

    def wait(self, since: float, poll_s: float = 0.05) -> str:
        """Block until :meth:`ready_to_stop` gives a reason; return it."""
        while (reason := self.ready_to_stop(since)) is None:
            time.sleep(poll_s)
        return reason

    def install(self) -> bool:
        """Defer SIGTERM for the handler in force (uvicorn's); main thread only.

        Returns:
            False where it cannot be installed (not the main thread): SIGTERM acts at once.
        """
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)

        def deferred(signum: int, frame) -> None:
            if self._signalled:  # a second SIGTERM: stop now
                return _call(previous, signum, frame)
            self._signalled = True
            since = self.clock()
            log.info("SIGTERM: the model runner stays up until the API has drained")

            def later() -> None:
                log.info("model runner stopping: %s", self.wait(since))
                _call(previous, signum, frame)

            threading.Thread(target=later, daemon=True, name="runner-drain").start()

        signal.signal(signal.SIGTERM, deferred)
        return True


def _call(handler, signum: int, frame) -> None:
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:  # what SIGTERM would have done (from any thread)
        os._exit(128 + signum)
