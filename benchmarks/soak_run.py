"""What one soak measured: the record ``soak.py`` fills and ``soak_report.py`` writes out."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from benchmarks.ledger import Ledger


@dataclass
class Run:
    """What one soak measured (times in epoch seconds)."""

    args: argparse.Namespace
    ledger: Ledger = field(default_factory=Ledger)
    ramp: list[dict] = field(default_factory=list)
    capacity: float = 0.0
    rate: float = 0.0
    start: float = 0.0
    scheduled: int = 0
    started: int = 0
    finished: int = 0
    max_late_s: float = 0.0
    memory: list[tuple[float, str, int, float]] = field(
        default_factory=list
    )  # (t, role, pid, RSS MiB)
    memory_error: str = ""
