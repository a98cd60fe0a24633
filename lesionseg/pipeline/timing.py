"""Per-stage wall times of one request, with a hook for whoever keeps metrics (the service's
Prometheus histograms): the library records, the caller decides where the numbers go."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

StageHook = Callable[[str, float], None]
"""``hook(stage, seconds)``, called once per timed block."""


@contextmanager
def timed(stage: str, timings: dict[str, float], hook: StageHook | None = None) -> Iterator[None]:
    """Time the block: add its milliseconds to ``timings[stage]`` and pass its seconds to
    ``hook``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        timings[stage] = timings.get(stage, 0.0) + seconds * 1000
        if hook is not None:
            hook(stage, seconds)
