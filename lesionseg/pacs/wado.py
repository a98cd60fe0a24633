"""DICOMweb QIDO-RS and WADO-RS client (PS3.18 sections 10.6 and 10.4): list one series of the
archive, and retrieve it as Part-10 files.

``WadoClient.list_instances`` asks ``GET <root>/studies/{study}/series/{series}/instances``
(``application/dicom+json``) for the SOP Instance UIDs; ``WadoClient.retrieve`` asks ``GET
<root>/studies/{study}/series/{series}`` for ``multipart/related; type="application/dicom"``
(``transfer-syntax=*``: as stored, nothing transcoded), streams the answer to disk within a
byte bound and splits it into one file per part. Failures raise :class:`FetchError`,
retryable (the archive unreachable, 5xx, 408, 429, an answer cut short) or not
(:class:`SeriesNotFoundError`, a refusal, a series over the limits).
"""

from __future__ import annotations

import contextlib
import email.message
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom

from lesionseg.errors import LesionSegError
from lesionseg.pacs.dicomweb import RETRYABLE_STATUS, DicomwebClient, retry_after
from lesionseg.pacs.durable_files import fsync_dir
from lesionseg.pacs.job import SeriesReference

ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
SOP_INSTANCE_UID = "00080018"
BODY_SLACK = 1024 * 1024  # the parts' headers and boundaries, beyond the files' bytes
_CHUNK = 1024 * 1024


class FetchError(LesionSegError):
    """A series could not be fetched from the archive. ``retryable``: the archive was
    unreachable, timed out, overloaded or failed (5xx), so a later try may succeed; otherwise
    it refused (4xx), does not hold the series, or the series is over the service's limits."""

    def __init__(self, message: str, *, retryable: bool, retry_after_s: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class SeriesNotFoundError(FetchError):
    """The archive does not hold the series (QIDO-RS lists nothing, or WADO-RS answers 404)."""

    def __init__(self, reference: SeriesReference, root: str, answer: str = "") -> None:
        super().__init__(
            f"series {reference.series} of study {reference.study} is not in {root}{answer}: "
            "check both UIDs (study first), and that this is the archive's DICOMweb root and "
            "holds the series",
            retryable=False,
        )


class WadoClient(DicomwebClient):
    """QIDO-RS and WADO-RS of one series, e.g. ``WadoClient("http://pacs:8042/dicom-web")``."""

    def series_url(self, reference: SeriesReference) -> str:
        return f"{self.root}/studies/{reference.study}/series/{reference.series}"

    @contextlib.contextmanager
    def _get(self, url: str, accept: str, reference: SeriesReference) -> Iterator[httpx.Response]:
        """A streamed GET answered 2xx; any other answer, and a connection that fails before
        or while the caller reads the body, raise FetchError."""
        try:
            headers = {**self._headers, "Accept": accept}
            with httpx.stream("GET", url, headers=headers, timeout=self.timeout_s) as response:
                status = response.status_code
                if status == 404:
                    raise SeriesNotFoundError(reference, self.root, f" (GET {url}: HTTP 404)")
                if status >= 300:
                    hint = (
                        ": check LESIONSEG_DICOMWEB_AUTHORIZATION" if status in (401, 403) else ""
                    )
                    raise FetchError(
                        f"GET {url} answered HTTP {status} {response.reason_phrase}{hint}",
                        retryable=status >= 500 or status in RETRYABLE_STATUS,
                        retry_after_s=retry_after(response),
                    )
                yield response
        except httpx.TransportError as exc:  # refused, reset, DNS, timeouts, cut short
            raise FetchError(
                f"the archive {self.root} is unreachable or stopped answering "
                f"({type(exc).__name__}: {exc})",
                retryable=True,
            ) from exc

    def list_instances(self, reference: SeriesReference) -> list[str]:
        """QIDO-RS: the SOP Instance UIDs of the series (raises SeriesNotFoundError if none)."""
        url = f"{self.series_url(reference)}/instances"
        with self._get(url, "application/dicom+json", reference) as response:
            response.read()
        try:
            answer = response.json() if response.content else []
        except ValueError as exc:
            raise FetchError(f"QIDO-RS answer of {url} is no JSON", retryable=False) from exc
        if not isinstance(answer, list):
            raise FetchError(f"QIDO-RS answer of {url} is not a list", retryable=False)
        uids = [
            str(uid)
            for item in answer
            if isinstance(item, dict)
            for uid in ((item.get(SOP_INSTANCE_UID) or {}).get("Value") or [])
        ]
        if not uids:
            raise SeriesNotFoundError(reference, self.root)
        return uids

    def retrieve(self, reference: SeriesReference, target: Path, *, max_bytes: int) -> list[Path]:
        """WADO-RS: the series' instances as ``target``/0000.dcm, 0001.dcm ... (``target``
        exists and is empty), each fsynced, then the directory; at most ``max_bytes`` bytes
        of files in all. Raises FetchError; what it wrote stays for the caller to remove."""
        url = self.series_url(reference)
        body = target / ".body"
        with self._get(url, ACCEPT_DICOM, reference) as response, body.open("wb") as f:
            boundary = _boundary(response.headers.get("content-type", ""), url)
            received = 0
            for chunk in response.iter_bytes(_CHUNK):
                received += len(chunk)
                if received > max_bytes + BODY_SLACK:
                    raise _too_large(reference, max_bytes)
                f.write(chunk)
        try:
            files = split_multipart(body, boundary, target, url=url)
        finally:
            body.unlink()
        if sum(p.stat().st_size for p in files) > max_bytes:
            raise _too_large(reference, max_bytes)
        for i, path in enumerate(files):
            _check_instance(path, i, reference)
        fsync_dir(target)
        return files


def _too_large(reference: SeriesReference, max_bytes: int) -> FetchError:
    return FetchError(
        f"series {reference.series} is over {max_bytes} bytes (LESIONSEG_MAX_UPLOAD_BYTES): "
        "raise the limit, or upload a part of the series",
        retryable=False,
    )


def _boundary(content_type: str, url: str) -> bytes:
    """The boundary of a ``multipart/related`` Content-Type (quoted or not)."""
    message = email.message.Message()
    message["content-type"] = content_type
    boundary = message.get_param("boundary")
    if message.get_content_type() != "multipart/related" or not isinstance(boundary, str):
        raise FetchError(
            f"WADO-RS answer of {url} is {content_type[:80]!r}, not multipart/related with a "
            "boundary: is LESIONSEG_DICOMWEB_URL the archive's DICOMweb root?",
            retryable=False,
        )
    return boundary.encode()


def split_multipart(body: Path, boundary: bytes, target: Path, *, url: str = "") -> list[Path]:
    """Write each part of the multipart body in file ``body`` (RFC 2046 5.1.1: preamble,
    ``--boundary`` CRLF headers CRLF CRLF content, CRLF ``--boundary`` ..., ``--``) to
    ``target``/NNNN.dcm, each fsynced. A part whose Content-Type is not application/dicom
    raises FetchError; so does a body cut short (no closing delimiter: retryable)."""
    cut_short = FetchError(
        f"WADO-RS answer of {url} was cut short (no closing boundary)", retryable=True
    )
    if body.stat().st_size == 0:
        raise cut_short
    delimiter = b"\r\n--" + boundary
    files: list[Path] = []
    with body.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[: len(delimiter) - 2] == delimiter[2:]:  # the body opens with the boundary
            pos = len(delimiter) - 2
        elif (found := data.find(delimiter)) >= 0:  # after a preamble
            pos = found + len(delimiter)
        else:
            raise cut_short
        while data[pos : pos + 2] != b"--":  # pos: just after a boundary
            headers_end = data.find(b"\r\n\r\n", pos)
            end = data.find(delimiter, headers_end + 4) if headers_end >= 0 else -1
            if end < 0:
                raise cut_short
            headers = email.message.Message()
            for line in data[pos:headers_end].split(b"\r\n")[1:]:
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip()] = value.strip()
            kind = headers.get_content_type() if headers["content-type"] else "application/dicom"
            if kind != "application/dicom":
                raise FetchError(
                    f"WADO-RS answer of {url}: part {len(files) + 1} is {kind}, not "
                    "application/dicom",
                    retryable=False,
                )
            path = target / f"{len(files):04d}.dcm"
            with path.open("wb") as out:
                out.write(data[headers_end + 4 : end])
                out.flush()
                os.fsync(out.fileno())
            files.append(path)
            pos = end + len(delimiter)
    if not files:
        raise FetchError(f"WADO-RS answer of {url} holds no instance", retryable=True)
    return files


def _check_instance(path: Path, index: int, reference: SeriesReference) -> None:
    """The part is a DICOM file of the series asked for (the archive sent what was asked)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        series = str(ds.SeriesInstanceUID)
    except (pydicom.errors.InvalidDicomError, AttributeError, EOFError, ValueError) as exc:
        raise FetchError(
            f"instance {index + 1} from the archive is not a DICOM Part-10 file with a "
            f"SeriesInstanceUID ({type(exc).__name__})",
            retryable=False,
        ) from exc
    if series != reference.series:
        raise FetchError(
            f"the archive answered series {reference.series} with an instance of series {series}",
            retryable=False,
        )
