"""C-STORE of results to one DICOM destination (a Storage SCP: a PACS, a router, a viewer).

:class:`CStoreClient` sends Part-10 instances (the job's SEG and SR) in one association, as the
AE title ``dicom_ae_title`` to ``AE@host:port`` of ``dicom_destinations``
(:mod:`lesionseg.settings.destinations`). It proposes a presentation context per SOP class of
the instances with each instance's own transfer syntax (Explicit VR Little Endian for the SEG
and SR) and, for an uncompressed one, another with the other uncompressed little-endian syntax,
which pynetdicom converts to if the destination takes only that one.

Failures raise :class:`PushError`; ``retryable`` when the same send may succeed later:

- no TCP connection (refused, unreachable, host name not resolved, timed out): retryable;
- association rejected, PS3.8 9.3.4: "rejected-transient" retryable, "rejected-permanent" (e.g.
  called AE title not recognised) not; aborted or no answer in time: retryable; accepted but
  none of the instances' SOP classes / transfer syntaxes taken: not retryable;
- C-STORE response statuses (PS3.4 B.2.3, PS3.7 Annex C): 0x0000 stored; warnings 0x0001,
  0xB000 (coercion of data elements), 0xB006 (elements discarded), 0xB007 (data set does not
  match SOP class) stored, logged; 0x0111 (duplicate SOP instance: an earlier send of the same
  result arrived) counted as stored, logged. Retryable failures: 0xA7xx (refused: out of
  resources), 0x0213 (resource limitation), 0x0110 (processing failure, the SCP's own fault,
  like HTTP 5xx), 0xFE00 (cancelled). Every other failure is permanent: the data is refused,
  e.g. 0xA9xx (data set does not match SOP class), 0xCxxx (cannot understand), 0x0122 (SOP
  class not supported), 0x0124 (not authorised), 0x0117 (invalid SOP instance), 0x0211/0x0212;
- no response (DIMSE timeout, connection lost mid-send): retryable.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association

from lesionseg.errors import PushError
from lesionseg.settings.destinations import Destination

log = logging.getLogger("lesionseg.pacs.cstore")

STORED_WITH_WARNING = frozenset({0x0001, 0xB000, 0xB006, 0xB007})
DUPLICATE_SOP_INSTANCE = 0x0111
RETRYABLE_STATUSES = frozenset({0x0110, 0x0213, 0xFE00})
OUT_OF_RESOURCES = range(0xA700, 0xA800)
REJECTED_TRANSIENT = 0x02


def _dataset(data: bytes, index: int) -> Dataset:
    """Instance ``index`` (0-based) parsed, with its file meta's transfer syntax."""
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except (pydicom.errors.InvalidDicomError, EOFError, ValueError) as exc:
        raise PushError(
            f"instance {index + 1} is not a DICOM Part-10 file ({exc})", retryable=False
        ) from exc
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID") if k not in dataset]
    if "TransferSyntaxUID" not in dataset.file_meta:
        missing.append("TransferSyntaxUID")
    if missing:
        raise PushError(
            f"instance {index + 1} has no {', '.join(missing)}: it cannot be sent", retryable=False
        )
    return dataset


def _contexts(datasets: list[Dataset]) -> list[tuple[UID, tuple[UID, ...]]]:
    """The presentation contexts to propose, (SOP class, transfer syntaxes) each: per SOP class
    one with each instance's own syntax alone (a destination that takes it keeps the instance
    as it is), and for an uncompressed little-endian one another with the syntaxes pynetdicom
    converts it to, for a destination that does not."""
    contexts = {}
    for ds in datasets:
        sop_class, syntax = UID(ds.SOPClassUID), UID(ds.file_meta.TransferSyntaxUID)
        contexts[sop_class, (syntax,)] = None
        if not syntax.is_compressed and syntax.is_little_endian:
            others = [s for s in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if s != syntax]
            contexts[sop_class, tuple(others)] = None
    return list(contexts)


def failure_retryable(status: int) -> bool | None:
    """How a C-STORE response status is taken: None = stored; True = a retryable failure;
    False = a permanent failure (see the module's docstring)."""
    if status == 0x0000 or status in STORED_WITH_WARNING or status == DUPLICATE_SOP_INSTANCE:
        return None
    return status in OUT_OF_RESOURCES or status in RETRYABLE_STATUSES


class CStoreClient:
    """C-STORE to ``destination`` as AE title ``calling_ae``; ``timeout_s`` bounds each step:
    the TCP connect, the association's answer, each response, and any silence on the network.
    """

    def __init__(self, destination: Destination, calling_ae: str, timeout_s: float = 30.0) -> None:
        self.destination = destination
        self.calling_ae = calling_ae
        self.timeout_s = timeout_s
        self.url = destination.url

    def store(self, instances: Sequence[bytes]) -> None:
        """Send Part-10 ``instances`` in one association; return once every one is stored.

        Raises :class:`PushError` (retryable or not, see the module's docstring); for refused
        instances it names their SOP Instance UIDs and statuses (not the destination: the
        caller, :class:`lesionseg.pacs.destinations.Destinations`, does).
        """
        datasets = [_dataset(data, i) for i, data in enumerate(instances)]
        ae = AE(ae_title=self.calling_ae)
        for attr in ("connection_timeout", "acse_timeout", "dimse_timeout", "network_timeout"):
            setattr(ae, attr, self.timeout_s)
        for sop_class, syntaxes in _contexts(datasets):
            ae.add_requested_context(sop_class, list(syntaxes))
        connected: list[bool] = []
        target = self.destination
        try:
            assoc = ae.associate(
                target.host,
                target.port,
                ae_title=target.ae_title,
                evt_handlers=[(evt.EVT_CONN_OPEN, lambda _: connected.append(True))],
            )
        except OSError as exc:  # the host name does not resolve
            raise PushError(
                f"C-STORE: cannot resolve {self.destination.host!r}: {exc}", retryable=True
            ) from exc
        if not assoc.is_established:
            raise self._not_associated(assoc, bool(connected))
        try:
            self._send_all(assoc, datasets)
        finally:
            if assoc.is_established:
                assoc.release()

    def _not_associated(self, assoc: Association, connected: bool) -> PushError:
        if not connected:
            return PushError(
                f"C-STORE: no connection (refused, unreachable or no answer within "
                f"{self.timeout_s:g} s)",
                retryable=True,
            )
        answer = assoc.acceptor.primitive
        if assoc.is_rejected and answer is not None:
            return PushError(
                f"C-STORE: association rejected ({answer.result_str}, {answer.source_str}: "
                f"{answer.reason_str})",
                retryable=answer.result == REJECTED_TRANSIENT,
            )
        if answer is not None and answer.result == 0x00 and not assoc.accepted_contexts:
            classes = ", ".join(sorted({cx.abstract_syntax.name for cx in assoc.rejected_contexts}))
            return PushError(
                f"C-STORE: the destination accepts none of the SOP classes sent ({classes}) "
                "with their transfer syntaxes",
                retryable=False,
            )
        return PushError(
            f"C-STORE: association aborted or not answered within {self.timeout_s:g} s",
            retryable=True,
        )

    def _send_all(self, assoc: Association, datasets: list[Dataset]) -> None:
        """C-STORE each dataset; raise one :class:`PushError` for those not stored."""
        failures: list[tuple[str, str, bool]] = []  # (SOP Instance UID, what, retryable)
        for message_id, ds in enumerate(datasets, start=1):
            uid = str(ds.SOPInstanceUID)
            try:
                answer = assoc.send_c_store(ds, msg_id=message_id)
            except ValueError as exc:  # no accepted context for its SOP class, or not encodable
                failures.append((uid, str(exc), False))
                continue
            if "Status" not in answer:  # DIMSE timeout, abort, or an invalid response
                raise PushError(
                    f"C-STORE: no response for {uid} within {self.timeout_s:g} s "
                    f"(association {'aborted' if assoc.is_aborted else 'timed out'})",
                    retryable=True,
                )
            status = int(answer.Status)
            retryable = failure_retryable(status)
            comment = f" {answer.ErrorComment}" if answer.get("ErrorComment") else ""
            if retryable is None:
                if status:
                    log.warning(
                        "C-STORE of %s to %s: stored with status 0x%04X%s",
                        uid, self.url, status, comment,
                    )  # fmt: skip
                continue
            failures.append((uid, f"status 0x{status:04X}{comment}", retryable))
        if failures:
            named = "; ".join(f"{uid}: {what}" for uid, what, _ in failures)
            raise PushError(
                f"C-STORE: the destination did not store {len(failures)} of {len(datasets)} "
                f"instance(s): {named}",
                retryable=all(r for _, _, r in failures),
            )
