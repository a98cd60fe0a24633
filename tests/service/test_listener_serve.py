"""A real CT series sent by dcmtk's `storescu` to the DICOM listener of a real `bentoml serve`:
without any HTTP call to the service, its SEG and SR appear in a real Orthanc (STOW-RS push),
referencing the series sent."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pydicom
import pytest

from lesionseg.datasets.examples import lits_ct
from service.launcher import free_port, running_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PATIENT = ("Listener^Test", "LSTN1")


def find_series(orthanc, modality: str) -> list[pydicom.Dataset]:
    """The first instance of each series of ``modality`` stored in Orthanc."""
    found = httpx.post(
        f"{orthanc.url}/tools/find",
        json={"Level": "Series", "Query": {"Modality": modality}, "Expand": True},
        timeout=10,
    ).json()
    return [orthanc.instance_file(orthanc_sop_uid(orthanc, s["Instances"][0])) for s in found]


def orthanc_sop_uid(orthanc, instance_id: str) -> str:
    tags = httpx.get(f"{orthanc.url}/instances/{instance_id}/simplified-tags", timeout=10)
    return tags.json()["SOPInstanceUID"]


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk's storescu is not installed")
def test_storescu_series_comes_back_as_seg_and_sr_in_orthanc(model_store, orthanc, lits, tmp_path):
    files = lits_ct(lits, [109, 110, 111], patient=PATIENT)
    paths = []
    for n, data in enumerate(files):
        paths.append(tmp_path / f"slice{n}.dcm")
        paths[-1].write_bytes(data)
    series = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    port = free_port()
    env = {
        "LESIONSEG_JOBS_DIR": str(tmp_path / "jobs"),
        "LESIONSEG_DICOMWEB_URL": orthanc.dicomweb_url,
        "LESIONSEG_DICOM_PORT": str(port),
        "LESIONSEG_SERIES_QUIET_S": "1",
        "LESIONSEG_MAX_QUEUED_JOBS": "5",
    }
    with running_server(env, tmp_path / "serve.log") as url:
        command = ["storescu", "-aet", "CT1", "-aec", "LESIONSEG", "127.0.0.1", str(port)]
        sent = subprocess.run(
            [*command, *map(str, paths)], capture_output=True, text=True, timeout=60
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        # The modality of docs/pacs-integration.md, pointed at this listener: C-ECHO passes.
        modality = {**docs_modality(), "Host": "127.0.0.1", "Port": port}
        put = httpx.put(f"{orthanc.url}/modalities/lesionseg", json=modality, timeout=10)
        assert put.status_code == 200, put.text
        assert httpx.post(
            f"{orthanc.url}/modalities/lesionseg/echo", json={}, timeout=30
        ).is_success
        deadline = time.monotonic() + 240
        while True:  # nothing asks the service: the listener queues the job, the worker pushes
            segs = [s for s in find_series(orthanc, "SEG") if references(s, series)]
            srs = [s for s in find_series(orthanc, "SR") if references(s, series)]
            if segs and srs:
                break
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert len(segs) == len(srs) == 1
    assert segs[0].ReferencedSeriesSequence[0].SeriesInstanceUID == series
    assert (
        segs[0].StudyInstanceUID
        == srs[0].StudyInstanceUID
        == pydicom.dcmread(paths[0]).StudyInstanceUID
    )
    assert 'lesionseg_dicom_instances_total{outcome="stored"} 3.0' in metrics
    assert "lesionseg_dicom_series_queued_total 1.0" in metrics
    log = (tmp_path / "serve.log").read_text()
    assert series in log and not any(identifier in log for identifier in PATIENT)


def docs_modality() -> dict:
    """The lesionseg entry of Orthanc's DicomModalities, as docs/pacs-integration.md has it."""
    from tests.test_orthanc_routing import docs_modality as documented

    return documented()[1]  # {"AET": ..., "Host": ..., "Port": ...}


def references(dataset: pydicom.Dataset, series: str) -> bool:
    """Whether a SEG or SR names ``series`` among the series it was made from."""
    if dataset.Modality == "SEG":
        return any(s.SeriesInstanceUID == series for s in dataset.ReferencedSeriesSequence)
    return any(
        s.SeriesInstanceUID == series
        for study in dataset.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
    )
