"""The DICOM listener (lesionseg/pacs/listener.py) in the API process, with its metrics.

Off unless ``LESIONSEG_DICOM_PORT`` is set. When set, ``service.app`` starts it with the service
(once the job worker has recovered the store, so that the store's start-up sweep never meets a
series being submitted) and stops it at shutdown; ``/readyz`` answers 503 while it is not
listening (its port taken: it binds again every few seconds). Its series become jobs of the
same store, run and pushed by the job worker of service/jobs.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from lesionseg.pacs.job_store import Job
from lesionseg.settings import Settings
from lesionseg.settings.callers import AllowedCallers
from service.findings import Finding
from service.metrics import DICOM_ASSOCIATIONS, DICOM_INSTANCES, DICOM_SERIES_QUEUED


def findings(settings: Settings, host: str | None) -> list[Finding]:
    """Who may send to the DICOM listener (nothing without ``LESIONSEG_DICOM_PORT``): always
    "ok", as it is closed to all but loopback peers unless an allow-list opens it."""
    if settings.dicom_port is None:
        return []
    callers = AllowedCallers.parse(settings.dicom_allowed_callers).describe()
    text = (f"DICOM listener {settings.dicom_ae_title} on port {settings.dicom_port} (all "
            f"interfaces): associations from {callers}")  # fmt: skip
    return [Finding("ok", "access", text)]


def _queued(job: Job) -> None:
    DICOM_SERIES_QUEUED.inc()


class DicomIngest:
    """Start, stop and readiness of the listener of ``settings`` (nothing if no port)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.listener = None
        self._starting: asyncio.Task | None = None

    def ready(self) -> bool:
        """True without a port; with one, once it is listening."""
        return self.settings.dicom_port is None or (
            self.listener is not None and self.listener.listening
        )

    def start(self, after: Callable[[], bool]) -> None:
        """Start in the background once ``after()`` is true (the job store recovered)."""
        if self.settings.dicom_port is not None:
            self._starting = asyncio.create_task(self._start(after), name="dicom-listener-start")

    async def _start(self, after: Callable[[], bool]) -> None:
        from lesionseg.pacs.listener import DicomListener, ListenerHooks

        while not after():
            await asyncio.sleep(0.1)
        hooks = ListenerHooks(
            association=lambda outcome: DICOM_ASSOCIATIONS.labels(outcome).inc(),
            instance=lambda outcome: DICOM_INSTANCES.labels(outcome).inc(),
            job=_queued,
        )
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per PDU otherwise
        self.listener = await asyncio.to_thread(DicomListener, self.settings, hooks=hooks)
        self.listener.start()

    async def stop(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        if self.listener is not None:
            await asyncio.to_thread(self.listener.stop)
            self.listener = None
