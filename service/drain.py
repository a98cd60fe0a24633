"""The model runner outlives the API's in-flight requests on SIGTERM.

BentoML's arbiter sends SIGTERM to the API process and to the model-runner process at once.
The API stops accepting requests and finishes those in flight (uvicorn waits for them without a
cap of its own; each synchronous one ends at the request deadline, ``RequestDeadline`` of
service/limits.py); uvicorn in the runner would stop listening at once, so a request in flight
whose next frame still needs the encoder would get a 503 instead of its answer. The runner
therefore defers SIGTERM (:meth:`Drain.install`) until the first of:

- the API says it has drained (its shutdown hook calls ``ModelRunner.api_drained``) and no
  runner call is running;
- the API process is gone (killed, or it exited without a word) and no runner call came for
  ``idle_s``;
- ``timeout_s`` since the signal: by default the request deadline plus :data:`DRAIN_MARGIN_S`
  (:func:`drain_timeout_s`), so that a request that arrived just before the signal, still
  uploading or between two frames, is answered. The pod's grace period covers it
  (service/deadlines.py).

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
from contextlib import contextmanager, suppress

import psutil

from lesionseg.settings import Settings

log = logging.getLogger("lesionseg.service")

# After the request deadline: the API writes its last answer (or 504) and tells the runner.
DRAIN_MARGIN_S = 5.0

# The API reaches the runner over loopback TCP, not BentoML's default Unix socket: on SIGTERM,
# BentoML's arbiter deletes the sockets' directory at once, before it stops its workers
# (bentoml/_internal/utils/circus Arbiter.stop runs its exit stack first), so a request still
# uploading when the signal came could not connect to the draining runner (503). A TCP port is
# closed only once the runner has stopped. Read by `bentoml serve` when it creates the runner's
# socket, after importing the service (which imports this module).
os.environ.setdefault("BENTOML_NO_UDS", "1")


def drain_timeout_s(settings: Settings) -> float:
    """Most seconds the runner defers a SIGTERM: ``drain_timeout_s`` where set, else the
    request deadline plus :data:`DRAIN_MARGIN_S`."""
    if settings.drain_timeout_s is not None:
        return settings.drain_timeout_s
    return settings.request_timeout_s + DRAIN_MARGIN_S


def sibling_alive(parent_pid: int) -> bool:
    """Whether another child of ``parent_pid`` (BentoML's arbiter: the API process beside this
    runner) still runs; False once this process was orphaned (the arbiter is gone)."""
    if os.getppid() != parent_pid:
        return False
    with suppress(psutil.Error):
        for child in psutil.Process(parent_pid).children():
            with suppress(psutil.Error):
                if child.pid != os.getpid() and child.status() != psutil.STATUS_ZOMBIE:
                    return True
    return False


class Drain:
    """Counts the runner's calls in flight and decides when a deferred SIGTERM may proceed.

    Args:
        idle_s: seconds without a call after which the runner stops once the API is gone.
        timeout_s: most seconds a SIGTERM is deferred.
        clock: monotonic seconds (tests pass their own).
        api_alive: whether the API process still runs (it may have requests in flight that
            have not called the runner yet, such as an upload); by default it is taken as gone,
            and the runner stops after ``idle_s`` without a call.
    """

    def __init__(
        self,
        *,
        idle_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        api_alive: Callable[[], bool] = lambda: False,
    ):
        self.idle_s, self.timeout_s, self.clock = idle_s, timeout_s, clock
        self.api_alive = api_alive
        self._lock = threading.Lock()
        self._calls = 0
        self._last = clock()
        self._drained = threading.Event()
        self._signalled = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Drain:
        """The drain of the settings' ``drain_idle_s`` and :func:`drain_timeout_s`, in a
        worker of BentoML's arbiter (this process's parent, whose other child is the API)."""
        parent = os.getppid()
        return cls(
            idle_s=settings.drain_idle_s,
            timeout_s=drain_timeout_s(settings),
            api_alive=lambda: sibling_alive(parent),
        )

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
        if now - max(last, since) >= self.idle_s and not self.api_alive():
            return f"the API is gone and no call for {self.idle_s:g} s"
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
