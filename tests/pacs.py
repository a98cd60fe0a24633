"""Test helpers for the PACS integration: a real Orthanc on loopback and a small real SEG.

Orthanc and its DICOMweb plugin come from Debian (`make pacs-deps`). Each ``OrthancServer`` has
its own config, ports and storage in a temp directory, so it can be stopped and started again on
the same ports and storage (the outage tests).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pydicom

from service.launcher import free_port

ORTHANC_SEARCH_PATH = "/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_missing() -> str | None:
    """Why Orthanc with DICOMweb cannot run here (None if it can)."""
    if shutil.which("Orthanc", path=ORTHANC_SEARCH_PATH) is None:
        return "Orthanc is not installed (run `make pacs-deps`)"
    if not DICOMWEB_PLUGIN.exists():
        return f"the DICOMweb plugin {DICOMWEB_PLUGIN} is missing (run `make pacs-deps`)"
    return None


class OrthancServer:
    """One Orthanc process on 127.0.0.1 with the DICOMweb plugin; restartable in place.

    ``extra``: more ``orthanc.json`` settings, which replace the defaults they name (e.g. a
    test's ``StableAge``, ``DicomModalities``, ``LuaScripts``); the storage, ports and access
    settings stay the test's. ``lua``: Lua scripts by file name, written next to
    ``orthanc.json`` for ``extra``'s ``LuaScripts`` to name."""

    def __init__(
        self, root: Path, *, extra: dict | None = None, lua: dict[str, str] | None = None
    ) -> None:
        self.root = Path(root)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.config = self.root / "orthanc.json"
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        for name, script in (lua or {}).items():
            assert Path(name).name == name, f"a Lua script's name, not a path: {name!r}"
            (self.root / name).write_text(script)
        own = {
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
        }
        self.config.write_text(
            json.dumps(
                {
                    "Name": "lesionseg-test",
                    "Plugins": [str(DICOMWEB_PLUGIN)],
                    "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                    **(extra or {}),
                    **own,
                },
                indent=2,
            )
        )
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        self._proc: subprocess.Popen | None = None
        self._starts = 0

    def start(self, timeout: float = 60) -> None:
        """Start Orthanc and wait until ``/system`` answers and the DICOMweb plugin is loaded."""
        assert self._proc is None, "already running"
        self._starts += 1
        log = (self.root / f"orthanc-{self._starts}.log").open("w")
        binary = shutil.which("Orthanc", path=ORTHANC_SEARCH_PATH)
        assert binary, orthanc_missing()
        self._proc = subprocess.Popen(
            [binary, str(self.config)], stdout=log, stderr=subprocess.STDOUT, cwd=self.root
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Orthanc did not answer in {timeout}s:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/system", timeout=2).status_code == 200:
                    plugins = httpx.get(f"{self.url}/plugins", timeout=2).json()
                    assert "dicom-web" in plugins, plugins
                    return
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL) and wait until its HTTP port is closed."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return (self.root / f"orthanc-{self._starts}.log").read_text()[-chars:]

    def sop_instance_uids(self) -> list[str]:
        """SOPInstanceUID of every instance stored, one entry per stored instance."""
        ids = httpx.get(f"{self.url}/instances", timeout=10).json()
        return [
            httpx.get(f"{self.url}/instances/{i}/simplified-tags", timeout=10).json()[
                "SOPInstanceUID"
            ]
            for i in ids
        ]

    def instance_file(self, sop_instance_uid: str) -> pydicom.Dataset:
        """The stored Part-10 file of one instance, read back over the REST API."""
        found = httpx.post(
            f"{self.url}/tools/find",
            json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}},
            timeout=10,
        ).json()
        assert len(found) == 1, found
        data = httpx.get(f"{self.url}/instances/{found[0]}/file", timeout=30).content
        return pydicom.dcmread(io.BytesIO(data))


def ct_small() -> pydicom.Dataset:
    """pydicom-data's CT_small.dcm (128 x 128, 16-bit, with pixel spacing)."""
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def make_test_seg(source: pydicom.Dataset) -> bytes:
    """A real binary DICOM SEG of ``source`` (one square segment) as Part-10 bytes.

    Built directly with highdicom so that the push path is tested independently of the
    service's own SEG writer.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    mask = np.zeros((source.Rows, source.Columns), bool)
    mask[40:60, 50:80] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="lesionseg-test", version="0", family=codes.DCM.ArtificialIntelligence
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="lesionseg tests",
        manufacturer_model_name="lesionseg",
        software_versions="0",
        device_serial_number="0",
        series_description="test SEG - not for clinical use",
    )
    return part10(seg)


def part10(dataset: pydicom.Dataset) -> bytes:
    """``dataset`` as DICOM Part-10 file bytes."""
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


class StandIn:
    """The part of ``LesionSeg`` the job worker uses, with a highdicom SEG instead of models."""

    def __init__(self) -> None:
        self.ready = True
        self.calls: list[tuple[int, str | None]] = []

    def __is_ready__(self) -> bool:
        return self.ready

    async def segment_to_seg(self, files: list[Path], *, boxes=None, window=None):
        from lesionseg.errors import InvalidImageError

        self.calls.append((len(files), window))
        try:
            source = pydicom.dcmread(files[0])
        except pydicom.errors.InvalidDicomError:
            raise InvalidImageError("file 1 is not a DICOM file") from None
        return make_test_seg(source), {"frames": len(files)}

    async def segment_to_reports(self, files: list[Path], *, window=None, **options):
        seg, summary = await self.segment_to_seg(files, window=window, **options)
        return seg, summary, None
