"""DICOMweb STOW-RS client (PS3.18 section 10.5) and the push step of the job store; the
connection settings every DICOMweb client here shares (lesionseg/pacs/wado.py fetches).

``StowClient.store`` POSTs Part-10 instances as ``multipart/related; type="application/dicom"``
to ``<root>/studies`` and checks the server's answer (a DICOM JSON dataset with
ReferencedSOPSequence (0008,1199) and FailedSOPSequence (0008,1198)): an instance is stored
only if it is referenced and not failed. Failures raise :class:`PushError`, retryable or not.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import httpx
import pydicom

from lesionseg.errors import PushError
from lesionseg.pacs.job import Job, backoff_delay
from lesionseg.pacs.job_store import JobStore
from lesionseg.settings import Settings

log = logging.getLogger("lesionseg.pacs.dicomweb")

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
RETRYABLE_STATUS = frozenset({408, 429})
# PS3.4 C.4.2.1.4: A7xx "refused: out of resources" may pass; other codes will not.
RETRYABLE_FAILURE_REASONS = range(0xA700, 0xA800)


@dataclass(frozen=True)
class StowResult:
    """What the server confirmed: the SOP Instance UIDs it stored."""

    stored: tuple[str, ...]


def _values(item: dict, tag: str) -> list:
    return (item.get(tag) or {}).get("Value") or []


def retry_after(response: httpx.Response) -> float | None:
    """The server's Retry-After in seconds, when it gave one as a number."""
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


def _sop_instance_uid(data: bytes, index: int) -> str:
    try:
        return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
    except (pydicom.errors.InvalidDicomError, AttributeError, EOFError) as exc:
        raise PushError(
            f"instance {index + 1} is not a DICOM Part-10 file with a SOP Instance UID",
            retryable=False,
        ) from exc


class DicomwebClient:
    """One DICOMweb server: its root URL (e.g. ``http://pacs:8042/dicom-web``), the
    Authorization header sent with every request, and the timeout (s) of each operation."""

    def __init__(
        self, root: str, *, authorization: str | None = None, timeout_s: float = 30.0
    ) -> None:
        self.root = root.rstrip("/")
        self._headers = {"Authorization": authorization} if authorization else {}
        self.timeout_s = timeout_s

    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        """The client of ``dicomweb_url`` with its authorization and timeout, or None when
        ``dicomweb_url`` is unset."""
        if not settings.dicomweb_url:
            return None
        auth = settings.dicomweb_authorization
        return cls(
            settings.dicomweb_url,
            authorization=auth.get_secret_value() if auth else None,
            timeout_s=settings.dicomweb_timeout_s,
        )


class StowClient(DicomwebClient):
    """STOW-RS to one DICOMweb server, e.g. ``StowClient("http://pacs:8042/dicom-web")``."""

    def __init__(
        self, root: str, *, authorization: str | None = None, timeout_s: float = 30.0
    ) -> None:
        super().__init__(root, authorization=authorization, timeout_s=timeout_s)
        self.url = self.root + "/studies"

    def store(self, instances: Sequence[bytes]) -> StowResult:
        """Send Part-10 ``instances`` in one request; return once the server confirmed all.

        Raises :class:`PushError` (``retryable`` for connection errors, timeouts, 408, 429,
        5xx and out-of-resources failures; permanent for other refusals).
        """
        expected = [_sop_instance_uid(data, i) for i, data in enumerate(instances)]
        boundary = uuid.uuid4().hex
        body = (
            b"".join(
                b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), data)
                for data in instances
            )
            + b"--%s--\r\n" % boundary.encode()
        )
        headers = {
            **self._headers,
            "Accept": "application/dicom+json",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        }
        try:
            response = httpx.post(self.url, content=body, headers=headers, timeout=self.timeout_s)
        except httpx.TransportError as exc:  # refused, reset, DNS, timeouts
            raise PushError(
                f"DICOMweb server unreachable ({type(exc).__name__}: {exc})", retryable=True
            ) from exc
        status = response.status_code
        if status >= 300 and status not in (409,):  # 409: all failed, described in the body
            raise PushError(
                f"STOW-RS to {self.url} answered HTTP {status} {response.reason_phrase}",
                retryable=status >= 500 or status in RETRYABLE_STATUS,
                retry_after_s=retry_after(response),
            )
        return self._check(response, expected)

    def _check(self, response: httpx.Response, expected: list[str]) -> StowResult:
        try:
            answer = response.json()
        except ValueError as exc:
            raise PushError(
                f"STOW-RS answered HTTP {response.status_code} without a DICOM JSON body",
                retryable=False,
            ) from exc
        answer = answer[0] if isinstance(answer, list) and answer else answer
        if not isinstance(answer, dict):
            raise PushError("STOW-RS answer is not a DICOM JSON dataset", retryable=False)
        failed = {}
        for item in _values(answer, FAILED_SOP_SEQUENCE):
            uid = next(iter(_values(item, REFERENCED_SOP_INSTANCE_UID)), "?")
            failed[uid] = next(iter(_values(item, FAILURE_REASON)), None)
        stored = tuple(
            uid
            for item in _values(answer, REFERENCED_SOP_SEQUENCE)
            for uid in _values(item, REFERENCED_SOP_INSTANCE_UID)
        )
        missing = [uid for uid in expected if uid not in stored or uid in failed]
        if missing:
            codes = [r if isinstance(r, int) else None for r in failed.values()]
            named = sorted({"none" if c is None else f"0x{c:04X}" for c in codes})
            raise PushError(
                f"the DICOMweb server did not store {len(missing)} of {len(expected)} "
                f"instance(s) (failure reasons: {', '.join(named) or 'not given'})",
                retryable=bool(codes) and all(c in RETRYABLE_FAILURE_REASONS for c in codes),
            )
        return StowResult(stored)


def push_due(
    store: JobStore, client: StowClient, settings: Settings, now: float | None = None
) -> list[Job]:
    """One pass of the pusher: send every due result (the SEG, and the SR if any) once;
    record success or the failure and the next try (exponential back-off). Returns the jobs
    as recorded after their try."""
    done = []
    for job in store.due_pushes(now):
        # SEG + SR by C-STORE: connect, associate, two answers, release: 5 timeouts at most
        if not store.claim_push(job, lease_s=5 * settings.dicomweb_timeout_s + 60, now=now):
            continue
        try:
            client.store([path.read_bytes() for path in store.outputs(job.id)])
        except PushError as exc:
            delay = None
            if exc.retryable:
                delay = backoff_delay(
                    job.push_attempts + 1, settings.push_initial_delay_s, settings.push_max_delay_s
                )
                delay = max(delay, exc.retry_after_s or 0.0)
            log.warning(
                "push of job %s failed (try %d, %s): %s",
                job.id, job.push_attempts + 1,
                f"next in {delay:.1f} s" if delay is not None else "not retried", exc,
            )  # fmt: skip
            done.append(store.push_failed(job.id, str(exc), retry_in_s=delay, now=now))
        else:
            log.info("pushed job %s to %s", job.id, client.url)
            done.append(store.push_succeeded(job.id, now=now))
    return done
