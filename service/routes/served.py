"""What a route needs from the loaded service."""

from __future__ import annotations

from dataclasses import dataclass

from lesionseg.pipeline.engine import LesionEngine
from lesionseg.settings import Settings


@dataclass(frozen=True)
class Served:
    """The settings in force (the stored bundle's), the engine on the model runner, and the
    ``models`` block of every answer (the runner's ``describe()``)."""

    settings: Settings
    engine: LesionEngine
    models: dict

    def class_names(self) -> list[str]:
        """The detector's class names, in class order."""
        return list(self.models["detector"]["classes"].values())
