"""Every request a load generator sends and every answer it gets, counted so none goes missing.

A request is entered with :meth:`Ledger.send` just before it goes out and settled exactly once:
:meth:`Ledger.answer` when an HTTP response came back (any status; ``problem`` says why that
answer is a failure: a 5xx, an unexpected status, a malformed body), :meth:`Ledger.no_answer`
when none did (the client's timeout, a refused or dropped connection). :meth:`Ledger.tally`
counts them; a request sent and never settled is **open**: the generator lost it, or it was
still waiting when the run ended. A run is complete only when every request sent got an answer.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Request:
    """One request: ``name`` (route, e.g. ``/segment (DICOM)``), ``poll`` (a status poll, left
    out of the latency percentiles), ``sent``/``end`` (epoch seconds), ``status`` (HTTP status
    of the answer, None without one), ``failure`` ("" when it succeeded)."""

    name: str
    poll: bool
    sent: float
    end: float | None = None
    status: int | None = None
    failure: str = ""
    settled: bool = False

    @property
    def ms(self) -> float:
        assert self.end is not None, "an open request has no latency"
        return 1000 * (self.end - self.sent)


@dataclass(frozen=True)
class Tally:
    """Counts of one :class:`Ledger`: requests sent, answers received (by HTTP status), requests
    without an answer (timeout, connection error), requests still open, and failures (answers
    that are failures + requests without an answer + open ones), with their messages."""

    sent: int
    answered: int
    by_status: dict[int, int]
    no_answer: int
    open: int
    failed: int
    messages: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every request sent got an answer (whatever its status)."""
        return self.answered == self.sent and self.no_answer == 0 and self.open == 0


class Ledger:
    """Thread-safe record of every request (module docstring). ``clock``: epoch seconds."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.requests: list[Request] = []

    def send(self, name: str, *, poll: bool = False) -> Request:
        request = Request(name, poll, self._clock())
        with self._lock:
            self.requests.append(request)
        return request

    def _settle(self, request: Request, status: int | None, failure: str) -> None:
        with self._lock:
            assert not request.settled, f"{request.name} settled twice"
            request.end, request.status, request.failure = self._clock(), status, failure
            request.settled = True

    def answer(self, request: Request, status: int, problem: str = "") -> None:
        """An HTTP answer came back; ``problem``: why it is a failure ("" when it is not)."""
        self._settle(request, status, problem)

    def no_answer(self, request: Request, error: str) -> None:
        """No answer: ``error`` says why (timeout, connection refused or dropped)."""
        assert error, "say why no answer came"
        self._settle(request, None, f"no answer: {error}")

    def tally(self, since: float = 0.0) -> Tally:
        """Counts of the requests sent at or after ``since`` (epoch seconds)."""
        with self._lock:
            requests = [r for r in self.requests if r.sent >= since]
        settled = [r for r in requests if r.settled]
        answered = [r for r in settled if r.status is not None]
        open_ = len(requests) - len(settled)
        messages = Counter(f"{r.name}: {r.failure[:200]}" for r in settled if r.failure)
        if open_:
            messages["sent, never answered nor timed out (open)"] = open_
        return Tally(
            sent=len(requests),
            answered=len(answered),
            by_status=dict(sorted(Counter(r.status for r in answered).items())),
            no_answer=len(settled) - len(answered),
            open=open_,
            failed=sum(1 for r in settled if r.failure) + open_,
            messages=dict(messages.most_common()),
        )

    def windows(self, start: float, seconds: float, width: float) -> list[dict]:
        """Per window of ``width`` s from ``start`` to ``start + seconds`` (the last one also
        holds what ended later): requests sent, answers and failures that ended in it,
        successful requests/s and p50/p95/p99 ms of the successful ones (polls left out)."""
        count = max(1, int(np.ceil(seconds / width - 1e-9)))
        with self._lock:
            requests = list(self.requests)
        rows = []
        for i in range(count):
            lo, hi = start + i * width, start + min((i + 1) * width, seconds)
            last = i == count - 1
            ended = [
                r
                for r in requests
                if r.settled and r.sent >= start and lo <= r.end and (last or r.end < hi)
            ]
            ok_ms = [r.ms for r in ended if not r.failure and not r.poll]
            a = np.asarray(ok_ms)
            rows.append(
                {
                    "window": i,
                    "from_s": round(lo - start),
                    "to_s": round(hi - start),
                    "sent": sum(
                        1 for r in requests if lo <= r.sent < hi or (last and r.sent >= hi)
                    ),
                    "answered": sum(1 for r in ended if r.status is not None),
                    "failed": sum(1 for r in ended if r.failure),
                    "ok_per_s": round(sum(1 for r in ended if not r.failure) / (hi - lo), 3),
                    **{
                        f"p{q}_ms": round(float(np.percentile(a, q)), 1) if a.size else None
                        for q in (50, 95, 99)
                    },
                }
            )
        return rows
