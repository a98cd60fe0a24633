"""Volume JSON (with ``lesions_3d``), DICOM SEG and NIfTI outputs of the ``LesionSeg``
service, as a mixin of its class.

``segment_to_reports`` (the SEG, and the SR when asked) is also what the async job worker
(service/jobs.py) calls. The host class provides ``settings``, ``models``, ``_ready``,
``_decode``, ``_run``, ``_segment_frames`` and ``_segment_volume`` (service/lesions3d.py).
"""

import asyncio
import time
from pathlib import Path

from starlette.responses import Response

from lesionseg.errors import InputError
from lesionseg.io.images import check_frames
from lesionseg.io.nifti import label_mask
from lesionseg.io.uploads import Upload, uploads_geometry
from lesionseg.measure.lesions3d import Lesion3D, link_lesions, measure_lesions
from lesionseg.outputs.dicom_seg import build_seg, seg_to_bytes, segment_labels, source_frames
from lesionseg.outputs.dicom_sr import build_sr
from lesionseg.outputs.result_json import frame_source, lesion_3d_to_dict, result_to_dict
from lesionseg.pipeline.engine import PROMPT_LABEL
from lesionseg.types import SegmentationResult
from service.metrics import STAGE_SECONDS, timed


class VolumeOutputs:
    """Per-frame JSON payloads, ``segment_to_seg`` (DICOM SEG) and the NIfTI label mask."""

    def _frame_dicts(self, upload: Upload, results: list[SegmentationResult]) -> list[dict]:
        start = time.perf_counter()
        payloads = []
        for index, result in enumerate(results):
            payload = result_to_dict(result, self.models)
            if (source := frame_source(upload.dicom, upload.nifti, index)) is not None:
                payload["source"] = source
            payloads.append(payload)
        elapsed = time.perf_counter() - start
        STAGE_SECONDS.labels("encode_response").observe(elapsed)
        for payload, result in zip(payloads, results, strict=True):
            timings = {**result.timings_ms, "encode_response": elapsed * 1000}
            payload["timings_ms"] = {k: round(v, 2) for k, v in timings.items()}
        return payloads

    def _volume_body(
        self,
        uploads: list[Upload],
        results: list[SegmentationResult],
        ids: list[list[int]] | None = None,
    ) -> tuple[dict, list[Lesion3D], list[list[int]]]:
        """The multi-frame JSON of ``uploads`` (one volume, or the files of one series): per
        frame the /segment result with each lesion's ``lesion_id``, and ``lesions_3d``; the 3-D
        lesions; their ids per frame (``ids`` when given: propagation's, else linked)."""
        geometry = uploads_geometry(uploads)
        if ids is None:
            ids = link_lesions(results, geometry)
        lesions = measure_lesions(results, ids, geometry)
        frames, start = [], 0
        for upload in uploads:
            frames += self._frame_dicts(upload, results[start : start + len(upload.frames)])
            start += len(upload.frames)
        for index, (payload, frame_ids) in enumerate(zip(frames, ids, strict=True)):
            payload["frame"] = index
            del payload["models"]
            for lesion, lesion_id in zip(payload["lesions"], frame_ids, strict=True):
                lesion["lesion_id"] = lesion_id
        body = {
            "number_of_frames": len(frames),
            "frames": frames,
            "lesions_3d": [lesion_3d_to_dict(x) for x in lesions],
            "models": self.models,
        }
        return body, lesions, ids

    async def _decode_dicom_files(
        self, files: list[Path], window: str | None, timings: dict[str, float]
    ) -> list[Upload]:
        """One DICOM object, or the single-frame files of one series, decoded within the
        request's pixel budget (``LESIONSEG_MAX_TOTAL_PIXELS`` over all the files)."""
        if not files:
            raise InputError("no DICOM file given (multipart field 'image')")
        uploads, budget = [], self.settings.max_total_pixels  # pixels, over all the files
        with timed("decode_image", timings):
            for index, path in enumerate(files):
                upload = await asyncio.to_thread(self._decode, path, window, budget)
                budget -= sum(f.height * f.width for f in upload.frames)
                if upload.dicom is None:
                    raise InputError(
                        f"file {index} is not DICOM: a series (and /segment/dicom-seg) takes DICOM "
                        "files only; "
                        "use /segment for PNG/JPEG/TIFF and /segment/nifti for NIfTI"
                    )
                uploads.append(upload)
        n_frames = source_frames([u.dicom.dataset for u in uploads])  # one series
        check_frames(n_frames, self.settings.max_frames)
        return uploads

    def _default_labels(self, boxes: list | None) -> list[str]:
        return (
            [PROMPT_LABEL]
            if boxes is not None
            else list(self.models["detector"]["classes"].values())
        )

    async def segment_to_seg(self, files: list[Path], **options) -> tuple[bytes, dict]:
        """DICOM files (one multi-frame object, or single-frame files of one series) -> (a
        DICOM SEG as Part-10 bytes, a JSON-ready summary: the SEG's UIDs and segments, per
        frame the /segment result and the 3-D lesions). Options as :meth:`_segment_series`.
        Waits for the models to load. Raises InputError subclasses for bad input."""
        seg, summary, _ = await self.segment_to_reports(files, **options)
        return seg, summary

    async def segment_to_reports(
        self, files: list[Path], *, sr: bool = False, **options
    ) -> tuple[bytes, dict, bytes | None]:
        """As :meth:`segment_to_seg`, plus the DICOM SR measurement report when ``sr`` (its
        UIDs in the summary's ``sr``): what a job stores and pushes."""
        sources, seg, summary, lesions = await self._segment_series(files, **options)
        report = None
        if sr:
            report = await asyncio.to_thread(build_sr, sources, seg, lesions)
            summary["sr"] = {
                "sop_instance_uid": str(report.SOPInstanceUID),
                "series_instance_uid": str(report.SeriesInstanceUID),
            }
            report = await asyncio.to_thread(seg_to_bytes, report)
        return await asyncio.to_thread(seg_to_bytes, seg), summary, report

    async def _segment_series(
        self,
        files: list[Path],
        *,
        boxes: list | None = None,
        window: str | None = None,
        propagate: bool = False,
        **options,
    ) -> tuple[list, object, dict, list[Lesion3D]]:
        """(the source datasets, the SEG dataset, the summary, the 3-D lesions). ``boxes`` as in
        /segment/boxes (a fifth value names the 0-based frame when there are several); without
        them the detector finds lesions; ``propagate``: one box per lesion, carried through
        the frames (/segment/propagate). The SEG has one segment per 3-D lesion."""
        await self._ready.wait()
        timings: dict[str, float] = {}
        uploads = await self._decode_dicom_files(files, window, timings)
        sources = [u.dicom.dataset for u in uploads]
        results, ids = await self._segment_volume(
            uploads, boxes=boxes, propagate=propagate, timings=timings, **options
        )
        body, lesions, ids = await asyncio.to_thread(self._volume_body, uploads, results, ids)
        labels = self._default_labels(boxes)
        seg = await asyncio.to_thread(
            build_seg,
            sources,
            results,
            labels=labels,
            lesion_ids=ids,
            semiautomatic=boxes is not None,
            algorithm_parameters={
                "sam": self.models["sam"]["name"],
                "detector": self.models["detector"]["weights"],
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
            **body,
        }
        return sources, seg, summary, lesions

    async def _dicom_seg_response(self, path: list[Path], **options) -> Response:
        data, summary = await self.segment_to_seg(path, **options)
        uid = summary["seg"]["sop_instance_uid"]
        return Response(data, media_type="application/dicom", headers={"X-SOP-Instance-UID": uid})

    async def _nifti_response(
        self, path: Path, *, window: str | None = None, **options
    ) -> Response:
        upload, results = await self._run(path, window=window, **options)
        if upload.nifti is None:
            raise InputError(
                "/segment/nifti takes a NIfTI volume (.nii or .nii.gz); use /segment for "
                "images and /segment/dicom-seg for DICOM"
            )
        labels = segment_labels(results, self._default_labels(options.get("boxes")))
        data = await asyncio.to_thread(label_mask, upload.nifti, results, labels)
        legend = ",".join(f"{i + 1}={name}" for i, name in enumerate(labels))
        return Response(data, media_type="application/gzip", headers={"X-Labels": legend})
