"""The ``train`` extra: what ``lesionseg train`` needs beyond the library, checked before any
work starts so that a missing package is not found out at the end of a run."""

from __future__ import annotations

import importlib

from lesionseg.errors import LesionSegError

INSTALL = "pip install 'lesionseg[train]'"


def needed_modules(sam_recipe: str) -> dict[str, str]:
    """module -> what it is for, for a run with ``--sam sam_recipe`` (lora, decoder, none)."""
    needed = {"matplotlib": "the evaluation plot (evaluation.png)"}
    if sam_recipe == "lora":
        needed["peft"] = "SAM's LoRA fine-tune (--sam lora)"
    return needed


def require_training_extra(sam_recipe: str) -> None:
    """Import each module the run needs; raise :class:`LesionSegError` naming the missing ones
    and the extra that installs them."""
    missing = []
    for module, purpose in needed_modules(sam_recipe).items():
        try:
            importlib.import_module(module)
        except ImportError as exc:
            absent = isinstance(exc, ModuleNotFoundError) and exc.name == module
            missing.append(f"{module}, for {purpose}" + ("" if absent else f" ({exc})"))
    if missing:
        raise LesionSegError(
            f"the training extra is not installed: missing {'; '.join(missing)}. Install it "
            f"with `{INSTALL}`"
        )
