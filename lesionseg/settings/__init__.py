"""One typed settings object: the only place defaults live.

Every field can be set from the environment with the ``LESIONSEG_`` prefix, e.g.
``LESIONSEG_DEVICE=cuda`` or ``LESIONSEG_SCORE_THRESHOLD=0.4``. CLIs build a ``Settings`` and
override only the fields the user passed on the command line.

Constructing ``Settings`` reads no file: the model bundle supplies the fields the user did not
set where an entry point calls :func:`lesionseg.models.bundle_settings.effective_settings`.
Entry points call :func:`check_environment` at start: a mistyped variable fails loudly.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Any

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lesionseg.errors import InputError, SettingsError
from lesionseg.settings.model_runtime import ModelRuntimeFields
from lesionseg.settings.pacs import PacsFields
from lesionseg.settings.pipeline import PipelineFields
from lesionseg.settings.service import ServiceFields
from lesionseg.windows import parse_window

ENV_PREFIX = "LESIONSEG_"
# Variables with the prefix that are deliberately not settings: read by the program named.
READ_ELSEWHERE = {
    "LESIONSEG_LOAD_RECORD": "benchmarks/locustfile.py (the load benchmark's request log)",
    "LESIONSEG_LOAD_STEPS": "benchmarks/locustfile.py (the stepped load shape)",
    "LESIONSEG_LOAD_STEP_SECONDS": "benchmarks/locustfile.py (the stepped load shape)",
}


# Pydantic orders inherited fields from the last base to the first: models, pipeline,
# service, pacs (cache_dir before jobs_dir, whose default is made from it).
class Settings(PacsFields, ServiceFields, PipelineFields, ModelRuntimeFields, BaseSettings):
    """Runtime configuration of the library, the CLI and the service: the fields of the
    concern modules of this package, read from the environment in this one object."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _backend_of_the_device(cls, data: Any) -> Any:
        """No backend set and device 'cuda': onnxruntime (openvino runs on the CPU only)."""
        if isinstance(data, dict) and not data.get("backend") and data.get("device") == "cuda":
            return {**data, "backend": "onnxruntime"}
        return data

    @model_validator(mode="after")
    def _check_default_window(self) -> Settings:
        # Fail at start-up, not with a 400 on every DICOM request.
        if self.default_window:
            try:
                parse_window(self.default_window, self.window_presets)
            except InputError as exc:
                raise ValueError(
                    f"default_window (LESIONSEG_DEFAULT_WINDOW or model.json 'window'): {exc}"
                ) from exc
        return self


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """The ``LESIONSEG_*`` names of ``environ`` that are neither a :class:`Settings` field nor
    in :data:`READ_ELSEWHERE` (case-insensitive, as the settings read them), sorted."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | set(READ_ELSEWHERE)
    return sorted(n for n in environ if n.upper().startswith(ENV_PREFIX) and n.upper() not in known)


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`SettingsError` naming each ``LESIONSEG_*`` variable of ``environ``
    (default: ``os.environ``) that no setting reads, and the closest setting's variable."""
    problems = []
    for name in unknown_variables(os.environ if environ is None else environ):
        field = name[len(ENV_PREFIX) :].lower()  # compared without the prefix all names share
        close = difflib.get_close_matches(field, Settings.model_fields, n=1, cutoff=0.6)
        hint = f"did you mean {ENV_PREFIX}{close[0].upper()}?" if close else "no setting is close"
        problems.append(f"{name} is not a setting ({hint})")
    if problems:
        raise SettingsError(
            "; ".join(problems) + ". Correct or unset it: the settings are the fields of "
            "lesionseg.settings.Settings (docs: settings)."
        )
