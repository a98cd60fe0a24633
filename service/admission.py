"""Admission control: refuse a request at once when it would wait too long in the queue.

The estimate of a new request's wait is ``in_flight x t``, where ``t`` is the recent *busy time
per completed request*: the wall time during which at least one request was in flight, divided
among the requests that completed in it. ``t`` is the service time per request divided by the
concurrency the service actually achieves (on 2 cores the encoder runs one image at a time while
the previous request's mask decoder overlaps it), measured rather than configured, so it holds
for any backend, batch size and core count. It is the mean over the last ``window`` completions:
a batched runner completes several requests at once (one long sample, then zeros), which an
exponential average would turn into swings of the estimate; a window of a few batches smooths
them and still follows a change of load (cache hits, bigger images) within ``window`` requests.

It counts requests, not frames: after a long multi-frame request ``t`` is high until a few
short ones complete (a conservative error: such a service is briefly more eager to shed load).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class QueueWaitEstimator:
    """Requests in flight and the recent busy time per completed request.

    Args:
        window: completions the mean runs over (16: four batches of the default size).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, window: int = 16, clock: Callable[[], float] = time.monotonic) -> None:
        assert window >= 1, window
        self._samples: deque[float] = deque(maxlen=window)
        self._clock = clock
        self.in_flight = 0
        self._busy = 0.0  # busy seconds since the last completion
        self._last = clock()

    def _advance(self) -> None:
        now = self._clock()
        if self.in_flight:
            self._busy += now - self._last
        self._last = now

    def started(self) -> None:
        """A request was admitted."""
        self._advance()
        self.in_flight += 1

    def finished(self) -> None:
        """An admitted request completed (whatever its answer)."""
        assert self.in_flight > 0
        self._advance()
        self.in_flight -= 1
        self._samples.append(self._busy)
        self._busy = 0.0

    @property
    def seconds_per_request(self) -> float | None:
        """Busy seconds per completed request, over the window (None before the first)."""
        return sum(self._samples) / len(self._samples) if self._samples else None

    def expected_wait_s(self) -> float:
        """Seconds a request admitted now would wait before its own service starts: the
        requests ahead of it times the busy time per request (0 before any completion)."""
        return self.in_flight * (self.seconds_per_request or 0.0)

    def retry_after_s(self, max_wait_s: float) -> int:
        """Whole seconds until the expected wait is back within ``max_wait_s`` if nothing
        new arrives (at least 1): the ``Retry-After`` of a refused request."""
        return max(1, math.ceil(self.expected_wait_s() - max_wait_s))
