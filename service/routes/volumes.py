"""The routes of volumes and series: ``/segment/dicom-seg`` (a DICOM SEG), ``/segment/nifti``
(a NIfTI label mask), ``/segment/propagate`` (one box per lesion carried through the frames:
the volume JSON) and ``/segment/dicom-sr`` (SEG + TID 1500 SR, zipped); and
:func:`segment_to_reports`, what the async jobs (service/jobs.py) run."""

from __future__ import annotations

import asyncio
import io
import zipfile
from pathlib import Path

from starlette.responses import JSONResponse, Response

from lesionseg.errors import InputError
from lesionseg.io.nifti import label_mask
from lesionseg.outputs.dicom_seg import build_seg, seg_to_bytes, segment_labels
from lesionseg.outputs.dicom_sr import build_sr
from lesionseg.pipeline.prediction import Options
from lesionseg.pipeline.results import PROMPT_LABEL
from service.routes.decode import decode_dicom_files, decode_one, decode_volume
from service.routes.segment import body, encode
from service.routes.served import Served


def default_labels(served: Served, options: Options) -> list[str]:
    """The segment labels: "lesion" for caller boxes, else the detector's classes."""
    return [PROMPT_LABEL] if options.boxes is not None else served.class_names()


async def segment_to_reports(
    served: Served, files: list[Path], options: Options, window: str | None, *, sr: bool = False
) -> tuple[bytes, dict, bytes | None]:
    """DICOM files (one multi-frame object, or single-frame files of one series) -> (a DICOM
    SEG as Part-10 bytes, a JSON-ready summary: the SEG's UIDs and segments, per frame the
    /segment result and the 3-D lesions, a DICOM SR's bytes when ``sr``: its UIDs in the
    summary's ``sr``). The SEG has one segment per 3-D lesion. Raises InputError subclasses
    for bad input."""
    timings: dict[str, float] = {}
    uploads = await decode_dicom_files(served.settings, files, window, timings)
    sources = [u.dicom.dataset for u in uploads]
    prediction = await served.engine.run(uploads, options, timings, volume=True)
    seg = await asyncio.to_thread(
        build_seg,
        sources,
        prediction.results,
        labels=default_labels(served, options),
        lesion_ids=prediction.lesion_ids,
        semiautomatic=options.boxes is not None,
        algorithm_parameters={
            "sam": served.models["sam"]["name"],
            "detector": served.models["detector"]["weights"],
        },
    )
    summary = {
        "seg": {
            "sop_instance_uid": str(seg.SOPInstanceUID),
            "series_instance_uid": str(seg.SeriesInstanceUID),
            "segments": [
                {
                    "number": int(s.SegmentNumber),
                    "label": str(s.SegmentLabel),
                    **({"tracking_id": str(s.TrackingID)} if "TrackingID" in s else {}),
                }
                for s in seg.SegmentSequence
            ],
        },
        **await asyncio.to_thread(body, served, prediction),
    }
    report = None
    if sr:
        report = await asyncio.to_thread(build_sr, sources, seg, list(prediction.lesions_3d))
        summary["sr"] = {
            "sop_instance_uid": str(report.SOPInstanceUID),
            "series_instance_uid": str(report.SeriesInstanceUID),
        }
        report = await asyncio.to_thread(seg_to_bytes, report)
    return await asyncio.to_thread(seg_to_bytes, seg), summary, report


async def dicom_seg(
    served: Served, paths: list[Path], options: Options, window: str | None
) -> Response:
    data, summary, _ = await segment_to_reports(served, paths, options, window)
    uid = summary["seg"]["sop_instance_uid"]
    return Response(data, media_type="application/dicom", headers={"X-SOP-Instance-UID": uid})


async def dicom_sr(
    served: Served, paths: list[Path], options: Options, window: str | None
) -> Response:
    seg, summary, sr = await segment_to_reports(served, paths, options, window, sr=True)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("seg.dcm", seg)
        z.writestr("sr.dcm", sr)
    return Response(
        archive.getvalue(),
        media_type="application/zip",
        headers={
            "X-SOP-Instance-UID": summary["sr"]["sop_instance_uid"],
            "X-SEG-SOP-Instance-UID": summary["seg"]["sop_instance_uid"],
        },
    )


async def nifti(served: Served, path: Path, options: Options, window: str | None) -> Response:
    timings: dict[str, float] = {}
    upload = await decode_one(served.settings, path, window, timings)
    if upload.nifti is None:
        raise InputError(
            "/segment/nifti takes a NIfTI volume (.nii or .nii.gz); use /segment for "
            "images and /segment/dicom-seg for DICOM"
        )
    prediction = await served.engine.run([upload], options, timings, volume=False)
    labels = segment_labels(prediction.results, default_labels(served, options))
    data = await asyncio.to_thread(label_mask, upload.nifti, prediction.results, labels)
    legend = ",".join(f"{i + 1}={name}" for i, name in enumerate(labels))
    return Response(data, media_type="application/gzip", headers={"X-Labels": legend})


async def propagate(
    served: Served, paths: list[Path], options: Options, window: str | None
) -> JSONResponse:
    """The volume JSON of the lesions carried from ``options.boxes`` through the frames."""
    timings: dict[str, float] = {}
    uploads = await decode_volume(served.settings, paths, window, timings)
    prediction = await served.engine.run(uploads, options, timings, volume=True)
    return await asyncio.to_thread(encode, served, prediction)
