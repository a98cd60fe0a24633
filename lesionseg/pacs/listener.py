"""The DICOM listener: a Storage SCP (C-STORE in, C-ECHO answered) whose series become jobs.

Senders (a PACS, a router, a modality) send instances to ``LESIONSEG_DICOM_AE_TITLE`` on
``LESIONSEG_DICOM_PORT``. Each instance is written durably to the spool
(:mod:`lesionseg.pacs.spool`) before the success status is sent; a series quiet for
``LESIONSEG_SERIES_QUIET_S`` becomes a job of the job store, whose SEG (and SR, with
``LESIONSEG_DICOM_SR``) the service's job worker pushes to ``LESIONSEG_DICOMWEB_URL``.

Closed by default: only the callers of ``LESIONSEG_DICOM_ALLOWED_CALLERS``
(:mod:`lesionseg.settings.callers`; unset: loopback peers) may associate; any other is rejected
with A-ASSOCIATE-RJ "calling AE title not recognised". Bad input gets a failure status and one
log line with UIDs only (never patient data), and the listener keeps running:

- a SOP class that is not an image storage class of :data:`SOP_CLASSES`: its presentation
  context is rejected at association (abstract syntax not supported);
- a dataset that cannot be decoded, or whose pixel data is cut short: 0xC210 (cannot
  understand);
- a dataset without its study, series or SOP instance UID, with UIDs other than the C-STORE
  request's, or without pixel data: 0xA900 (dataset does not match SOP class);
- the instance cannot be written (e.g. a full volume): 0xA700 (out of resources).

``python -m lesionseg.pacs.listener`` runs it alone, with the settings of the environment (the
jobs then wait in the store for a service's worker); the service runs it in its API process.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from pydicom.dataset import Dataset
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from lesionseg.pacs import spool
from lesionseg.pacs.job_store import Job, JobStore
from lesionseg.settings import Settings, check_environment
from lesionseg.settings.callers import AllowedCallers

log = logging.getLogger("lesionseg.pacs.listener")

# Image storage SOP classes: what the pipeline segments. SEG, SR, RTSTRUCT, ... are refused at
# association, so a study routed back to the listener never makes a job of a result.
SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "Enhanced CT": "1.2.840.10008.5.1.4.1.1.2.1",
    "Legacy Converted Enhanced CT": "1.2.840.10008.5.1.4.1.1.2.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "Enhanced MR": "1.2.840.10008.5.1.4.1.1.4.1",
    "Legacy Converted Enhanced MR": "1.2.840.10008.5.1.4.1.1.4.4",
    "PET": "1.2.840.10008.5.1.4.1.1.128",
    "Enhanced PET": "1.2.840.10008.5.1.4.1.1.130",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX for presentation": "1.2.840.10008.5.1.4.1.1.1.1",
    "DX for processing": "1.2.840.10008.5.1.4.1.1.1.1.1",
    "MG for presentation": "1.2.840.10008.5.1.4.1.1.1.2",
    "MG for processing": "1.2.840.10008.5.1.4.1.1.1.2.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "US multi-frame": "1.2.840.10008.5.1.4.1.1.3.1",
    "Secondary capture": "1.2.840.10008.5.1.4.1.1.7",
    "Multi-frame grayscale byte SC": "1.2.840.10008.5.1.4.1.1.7.2",
    "Multi-frame grayscale word SC": "1.2.840.10008.5.1.4.1.1.7.3",
}
# Every syntax the installed pydicom + pylibjpeg decoders read.
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian (retired, still sent)
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE lossless
]
STORED, CANNOT_UNDERSTAND, NOT_MATCHING, OUT_OF_RESOURCES = 0x0000, 0xC210, 0xA900, 0xA700
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected permanent, service user, calling AE unknown
RETRY_BIND_S = 5.0


def _noop(_: str) -> None:
    return None


@dataclasses.dataclass
class ListenerHooks:
    """Callbacks for metrics: ``association("accepted" | "rejected")``, ``instance("stored" |
    "undecodable" | "not-matching" | "write-failed")``, ``job(job)`` for
    each series queued as a job. Called from the listener's threads."""

    association: Callable[[str], None] = _noop
    instance: Callable[[str], None] = _noop
    job: Callable[[Job], None] = lambda job: None


class RefusedError(Exception):
    """An instance refused with DIMSE ``status`` for ``reason`` (a metrics label)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


def check_instance(dataset: Dataset, sop_class: str, sop_instance: str) -> str:
    """The series UID of a received ``dataset``; raises :class:`RefusedError` with the status to
    send when it cannot be segmented (``sop_class``, ``sop_instance``: the C-STORE request's
    Affected SOP Class / Instance UIDs)."""
    try:
        uids = [str(dataset.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID")]
        own = (str(dataset.get("SOPClassUID", "")), str(dataset.get("SOPInstanceUID", "")))
        pixels = dataset.get("PixelData")
        native = not UID(dataset.file_meta.TransferSyntaxUID).is_compressed
        expected = get_expected_length(dataset, "bytes") if pixels and native else 0
    except Exception as exc:  # pydicom raises many kinds for bytes it cannot parse
        raise RefusedError(
            CANNOT_UNDERSTAND, "undecodable", f"undecodable ({type(exc).__name__})"
        ) from None
    if not all(spool.is_uid(u) for u in uids) or own != (sop_class, sop_instance):
        raise RefusedError(
            NOT_MATCHING, "not-matching", "study/series UID missing or SOP UIDs unlike the request"
        )
    if not pixels:
        raise RefusedError(NOT_MATCHING, "not-matching", "no pixel data (truncated?)")
    if len(pixels) < expected:
        raise RefusedError(CANNOT_UNDERSTAND, "undecodable", "pixel data cut short (truncated)")
    return uids[1]


def _decoded(event: evt.Event) -> Dataset:
    """The C-STORE's dataset with its file meta; :class:`RefusedError` if it cannot be parsed."""
    try:
        dataset = event.dataset
    except Exception as exc:  # pydicom raises many kinds for bytes it cannot parse
        raise RefusedError(
            CANNOT_UNDERSTAND, "undecodable", f"undecodable ({type(exc).__name__})"
        ) from None
    dataset.file_meta = event.file_meta
    return dataset


class DicomListener:
    """A Storage SCP on ``settings.dicom_port`` (``port`` overrides it; 0: any free port)
    feeding the job store of ``settings.jobs_dir``. :meth:`start` returns at once: binding,
    and binding again while the port is taken, and the spool's ticks run in a thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        port: int | None = None,
        host: str = "0.0.0.0",
        hooks: ListenerHooks | None = None,
    ) -> None:
        self.settings = settings
        self.port = settings.dicom_port if port is None else port
        assert self.port is not None, "no port: set LESIONSEG_DICOM_PORT"
        self.host = host
        self.hooks = hooks or ListenerHooks()
        self.callers = AllowedCallers.parse(settings.dicom_allowed_callers)
        self.store = JobStore.from_settings(settings)
        options = {"sr": True} if settings.dicom_sr else {}
        self.spool = spool.SeriesSpool(
            spool.spool_root(settings.jobs_dir),
            self.store,
            quiet_s=settings.series_quiet_s,
            options=options,
            push=settings.dicomweb_url is not None or settings.dicom_destinations is not None,
            on_job=self.hooks.job,
        )
        self.ae = AE(ae_title=settings.dicom_ae_title)
        for uid in SOP_CLASSES.values():
            self.ae.add_supported_context(uid, TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        self._server = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def bound_port(self) -> int | None:
        return None if self._server is None else self._server.server_address[1]

    def start(self) -> None:
        log.info(
            "DICOM listener %s on port %s; callers: %s",
            self.settings.dicom_ae_title, self.port, self.callers.describe(),
        )  # fmt: skip
        self._thread = threading.Thread(target=self._run, name="dicom-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting associations and ticking (associations in progress are ended)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _run(self) -> None:
        tick_s = min(1.0, self.settings.series_quiet_s / 4)
        bind_at = 0.0  # monotonic s of the next try while the port is not bound
        while not self._stop.is_set():
            if self._server is None and time.monotonic() >= bind_at:
                self._bind()
                bind_at = time.monotonic() + RETRY_BIND_S
            try:
                self.spool.tick()
            except Exception:  # a background thread has no caller: log, tick again
                log.exception("the DICOM spool's tick failed; retrying")
            self._stop.wait(tick_s)

    def _bind(self) -> None:
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_STORE, self._on_store),
        ]
        try:
            self._server = self.ae.start_server(
                (self.host, self.port), block=False, evt_handlers=handlers
            )
        except OSError as exc:
            log.error(
                "DICOM listener: port %s: %s; trying again every %.0f s (unready meanwhile)",
                self.port, exc, RETRY_BIND_S,
            )  # fmt: skip
            return
        log.info("DICOM listener listening on %s:%d", self.host, self.bound_port)

    # --- pynetdicom's events (each association runs in a thread of its own) ------------------

    def _on_requested(self, event: evt.Event) -> None:
        """A-ASSOCIATE-RQ: a caller not on the allow-list is rejected before negotiation."""
        assoc = event.assoc
        ae_title = str(assoc.requestor.primitive.calling_ae_title).strip()
        host = assoc.requestor.address
        if self.callers.allows(ae_title, host):
            return
        log.warning(
            "DICOM association from %r at %s rejected: not in LESIONSEG_DICOM_ALLOWED_CALLERS "
            "(allowed: %s)", ae_title, host, self.callers.describe(),
        )  # fmt: skip
        assoc.acse.send_reject(*REJECT_CALLING_AE)
        assoc.kill()  # waits until the A-ASSOCIATE-RJ is sent, as pynetdicom's own rejections
        self.hooks.association("rejected")

    def _on_accepted(self, event: evt.Event) -> None:
        """Senders propose many SOP classes at once (Orthanc ~100): one line names those not
        taken, so that an instance of them, which the sender cannot send, is explained."""
        self.hooks.association("accepted")
        refused = sorted(
            {c.abstract_syntax for c in event.assoc.rejected_contexts} - {Verification}
        )
        if refused:
            more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
            log.info(
                "DICOM association from %r: %d SOP class(es) proposed but not taken (not image "
                "storage classes the listener segments): %s%s",
                str(event.assoc.requestor.ae_title).strip(), len(refused),
                ", ".join(refused[:5]), more,
            )  # fmt: skip

    def _on_store(self, event: evt.Event) -> int:
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        sop_instance = str(request.AffectedSOPInstanceUID)
        caller = str(event.assoc.requestor.ae_title).strip()
        try:
            series = check_instance(_decoded(event), sop_class, sop_instance)
        except RefusedError as exc:
            log.warning(
                "C-STORE of %s (SOP class %s) from %r refused with 0x%04X: %s",
                sop_instance, sop_class, caller, exc.status, exc,
            )  # fmt: skip
            self.hooks.instance(exc.reason)
            return exc.status
        try:
            self.spool.put(series, sop_instance, event.encoded_dataset())
        except OSError as exc:
            log.error(
                "C-STORE of %s refused with 0xA700: it could not be stored (%s)",
                sop_instance, exc.strerror or type(exc).__name__,
            )  # fmt: skip
            self.hooks.instance("write-failed")
            return OUT_OF_RESOURCES
        self.hooks.instance("stored")
        return STORED


def main(argv: list[str] | None = None) -> None:
    """Run the listener alone until SIGTERM/SIGINT (``--port`` overrides the setting)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m lesionseg.pacs.listener")
    parser.add_argument("--port", type=int, help="TCP port (default: LESIONSEG_DICOM_PORT)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    check_environment()
    settings = Settings()
    if args.port is None and settings.dicom_port is None:
        parser.error("set LESIONSEG_DICOM_PORT or pass --port")
    listener = DicomListener(settings, port=args.port)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    listener.start()
    stopped.wait()
    listener.stop()


if __name__ == "__main__":
    main()
