"""Every place a job's results go: the DICOMweb archive (STOW-RS, ``dicomweb_url``) and the
C-STORE destinations (``dicom_destinations``), behind the one ``.url`` / ``.store`` that the
pusher (:func:`lesionseg.pacs.dicomweb.push_due`) calls.

:meth:`Destinations.store` sends the same instances to every target at once (one thread each,
so a push takes as long as its slowest target, not their sum). If any target failed, one
:class:`PushError` names each failed target and its error; it is retryable only if every failure
is. The retry sends to every target again: a target that stored the instances before gets the
same SOP Instance UIDs, which archives keep as one copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, Self

from lesionseg.errors import PushError
from lesionseg.pacs.cstore import CStoreClient
from lesionseg.pacs.dicomweb import StowClient
from lesionseg.settings import Settings
from lesionseg.settings.destinations import parse_destinations


class Target(Protocol):
    """One destination of the pusher: a display name and a ``store`` that raises
    :class:`PushError` when the instances were not all stored."""

    url: str

    def store(self, instances: Sequence[bytes]) -> object: ...


class Destinations:
    """All ``targets`` (at least one) of a push, e.g. a :class:`StowClient` and
    :class:`CStoreClient`\\ s."""

    def __init__(self, targets: Sequence[Target]) -> None:
        assert targets, "no targets: use from_settings, which returns None then"
        self.targets = tuple(targets)
        self.url = ", ".join(t.url for t in self.targets)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        """The STOW-RS client of ``dicomweb_url`` (if set), then one C-STORE client per entry
        of ``dicom_destinations`` (calling AE title ``dicom_ae_title``, timeout
        ``dicomweb_timeout_s``); None when neither is set."""
        stow = StowClient.from_settings(settings)
        targets: list[Target] = [stow] if stow is not None else []
        targets += [
            CStoreClient(d, settings.dicom_ae_title, settings.dicomweb_timeout_s)
            for d in parse_destinations(settings.dicom_destinations)
        ]
        return cls(targets) if targets else None

    def store(self, instances: Sequence[bytes]) -> None:
        """Send Part-10 ``instances`` to every target; raise one :class:`PushError` if any
        failed (retryable if all failures are; the longest Retry-After of them)."""
        with ThreadPoolExecutor(len(self.targets), thread_name_prefix="push") as pool:
            futures = [pool.submit(t.store, instances) for t in self.targets]
        failed: list[tuple[Target, PushError]] = []
        for target, future in zip(self.targets, futures, strict=True):
            exc = future.exception()
            if isinstance(exc, PushError):
                failed.append((target, exc))
            elif exc is not None:
                raise exc  # a fault of ours, not the target's: loud
        if not failed:
            return
        delays = [e.retry_after_s for _, e in failed if e.retry_after_s is not None]
        raise PushError(
            f"{len(failed)} of {len(self.targets)} destination(s) failed: "
            + "; ".join(f"{t.url}: {e}" for t, e in failed),
            retryable=all(e.retryable for _, e in failed),
            retry_after_s=max(delays, default=None),
        )
