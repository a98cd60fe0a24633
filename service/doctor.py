"""``python -m service.doctor [--host 0.0.0.0]``: the deployment check.

For the settings in force (the environment, with the model bundle and the export that the
service would serve: the BentoML store's, as ``service.runner.runtime_settings`` makes them)
it prints what is open, what is bounded and which limits disagree: one line per
:class:`~service.findings.Finding`, grouped by topic, and exits 1 when one is "unsafe", else 0.
``--host`` names the interface the server will bind (the container's start runs it with
0.0.0.0 before ``bentoml serve``: deploy/container.py).

The findings come from the concern modules, each beside the code that enforces the rule (so the
doctor and the service decide with the same function): :data:`CONCERNS`, and the export's here.
``bentoml serve`` itself refuses to start on an unsafe finding of the concern modules
(:func:`refuse_unsafe_start`, called by service/app.py as it is imported).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import ValidationError

from lesionseg.errors import LesionSegError
from lesionseg.models.backends.onnx_runner import RECORD_FILE
from lesionseg.models.baked_settings import BAKED_INTO_EXPORT, EXPORTED_BACKENDS, baked_mismatches
from lesionseg.models.bundle_settings import effective_settings, exports_dir
from lesionseg.settings import Settings, check_environment
from service.bind import serving_host
from service.findings import Finding

log = logging.getLogger("lesionseg.service")

DEFAULT_HOST = "127.0.0.1"
# Modules with ``findings(settings, host) -> list[Finding]``, beside the rules they report.
CONCERNS = (
    "service.auth",
    "service.deadlines",
    "service.bounds",
    "service.listener",
    "service.jobs",
)
Check = Callable[[Settings, str | None], list[Finding]]


def concern_checks(names: Iterable[str] = CONCERNS) -> list[Check]:
    """The ``findings`` functions of the modules ``names`` (imported here, not at the top:
    they import the service's parts, some of which call :func:`refuse_unsafe_start`). A module
    that is missing or has no ``findings`` is an error: a concern never goes unchecked."""
    checks = []
    for name in names:
        check = getattr(importlib.import_module(name), "findings", None)
        if not callable(check):
            raise TypeError(f"{name} has no findings(settings, host) function")
        checks.append(check)
    return checks


def export_findings(settings: Settings, host: str | None = None) -> list[Finding]:
    """The "export" topic: whether the export in force matches the settings baked into it
    (:data:`lesionseg.models.baked_settings.BAKED_INTO_EXPORT`). A mismatch is "unsafe": the
    service would refuse to load its models and never become ready."""
    if settings.backend not in EXPORTED_BACKENDS:
        return [Finding("ok", "export", f"backend {settings.backend}: no export is served")]
    directory = exports_dir(settings)
    if not (directory / RECORD_FILE).is_file():
        return [
            Finding(
                "warn",
                "export",
                f"LESIONSEG_BACKEND={settings.backend} serves an export, but {directory} has "
                f"none ({RECORD_FILE} missing): run `make export models`",
            )
        ]
    problems = baked_mismatches(settings, directory)
    if problems:
        return [Finding("unsafe", "export", text) for text in problems]
    fields = [n for n, b in BAKED_INTO_EXPORT.items() if settings.backend in b.backends]
    values = ", ".join(f"{n}={_shown(getattr(settings, n))}" for n in fields)
    return [Finding("ok", "export", f"{directory} matches the settings baked into it: {values}")]


def _shown(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def gather(
    settings: Settings, host: str | None, checks: Iterable[Check] | None = None
) -> list[Finding]:
    """Every finding for ``settings`` served on ``host``: the concern modules' and the export's."""
    found: list[Finding] = []
    for check in [*(concern_checks() if checks is None else checks), export_findings]:
        found.extend(check(settings, host))
    return found


def refuse_unsafe_start(settings: Settings) -> None:
    """In a ``bentoml serve`` (service/bind.py): exit (status 1) with the first ``unsafe``
    finding of the concern modules (access, time limits, resources: the settings alone, not the
    export, which the model runner checks as it loads) in the process about to bind, before it
    binds. A worker serves a socket bound already, and exiting there would only have it started
    again: it logs the line (for access, the middleware answers 403 to every client not on
    loopback). Outside a serve, nothing."""
    serving = serving_host()
    if serving is None:
        return
    found = [f for check in concern_checks() for f in check(settings, serving.host)]
    unsafe = [f.text for f in found if f.level == "unsafe"]
    if unsafe and serving.binding:
        raise SystemExit(unsafe[0])
    if unsafe:
        log.error("%s (the start should have refused; clients not on loopback get 403)", unsafe[0])


def report(findings: Iterable[Finding]) -> str:
    """The findings grouped by topic (in order of first appearance), one line each, and a
    last line counting the unsafe ones."""
    topics: dict[str, list[Finding]] = {}
    for finding in findings:
        topics.setdefault(finding.topic, []).append(finding)
    lines = []
    for topic, items in topics.items():
        lines.append(topic)
        lines.extend(f"  {f.level:<6} {f.text}" for f in items)
    unsafe = sum(f.level == "unsafe" for items in topics.values() for f in items)
    lines.append(f"{unsafe} unsafe finding(s)" if unsafe else "no unsafe finding")
    return "\n".join(lines)


def settings_in_force() -> tuple[Settings, list[Finding]]:
    """The settings the service would run with: the environment, the models of the BentoML
    store (a bento's own, where ``$BENTO_PATH`` is set, as in the container) and their bundle;
    without stored models, the CLI's (the bundle in force and its export directory), with a
    finding that says so."""
    import bentoml

    from service.model_store import DETECTOR_MODEL, EXPORTS_MODEL, SAM_MODEL
    from service.runner import runtime_settings

    bento = os.environ.get("BENTO_PATH")
    if bento and (Path(bento) / "models").is_dir():  # where `bentoml serve` finds them
        from bentoml._internal.configuration.containers import BentoMLContainer
        from bentoml._internal.models import ModelStore

        BentoMLContainer.model_store.set(ModelStore(Path(bento) / "models"))
    settings = Settings()
    names = {"exports": EXPORTS_MODEL}
    if settings.backend == "torch":
        names = {"sam": SAM_MODEL, "detector": DETECTOR_MODEL}
    try:
        models = {key: bentoml.models.get(f"{name}:latest") for key, name in names.items()}
    except bentoml.exceptions.NotFound as exc:
        note = Finding(
            "warn",
            "export",
            f"no models in the BentoML store ({exc}): checked the bundle and export of this "
            "checkout instead; `make models` stores them",
        )
        return effective_settings(settings), [note]
    return runtime_settings(models), []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.doctor", description=__doc__)
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"interface the server will bind (default {DEFAULT_HOST}; the container: 0.0.0.0)",
    )
    args = parser.parse_args(argv)
    try:
        check_environment()
        settings, notes = settings_in_force()
        findings = [*gather(settings, args.host), *notes]
    except (LesionSegError, ValidationError) as exc:  # unusable settings or keys: one line
        findings = [Finding("unsafe", "settings", " ".join(str(exc).split()))]
    print(report(findings))
    return 1 if any(f.level == "unsafe" for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
