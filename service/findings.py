"""What a deployment check says about one setting or limit: the vocabulary of the doctor.

Each concern that a deployment can get wrong (access, time limits, resource bounds) has a
``findings(settings) -> list[Finding]`` function beside its code; ``python -m service.doctor``
prints them all and exits non-zero when one is unsafe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Level = Literal["ok", "warn", "unsafe"]


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's report.

    ``topic`` names the concern ("access", "time limits", "resources", ...); ``text`` is one
    sentence naming the settings involved and their values, and for ``warn`` or ``unsafe``
    what to change.
    """

    level: Level
    topic: str
    text: str
