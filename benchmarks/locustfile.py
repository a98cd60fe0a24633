"""Locust users for the lesionseg API: real LiTS slices and a real CT DICOM, all checked.

    locust -f benchmarks/locustfile.py --host http://localhost:3000

The mix is 3 : 1 : 1 of ``/segment`` (PNG), ``/segment/boxes`` (PNG + ground-truth boxes) and
``/segment`` with DICOM (pydicom-data's ``CT_small.dcm``, 128x128, 0.66 mm pixels). A request
counts as failed unless it is 200 and well formed (image size, one RLE mask per lesion of the
image's size, boxes in the order sent, for DICOM areas in mm² from the pixel spacing). Set
LESIONSEG_LOAD_STEPS="1,2,4,8" (and LESIONSEG_LOAD_STEP_SECONDS) for a stepped load shape
instead of a fixed user count.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pydicom
from locust import HttpUser, LoadTestShape, constant, task
from PIL import Image
from pydicom.data import get_testdata_file

from lesionseg.data import LitsCase
from lesionseg.settings import Settings


def _load_images() -> list[dict]:
    """PNG bytes and ground-truth boxes of LiTS validation slices, loaded once per process."""
    case = LitsCase(Settings().cache_dir)
    out = []
    for sl in case.slices("val", step=3):
        buffer = io.BytesIO()
        Image.fromarray(sl.image).save(buffer, format="PNG")
        out.append(
            {
                "png": buffer.getvalue(),
                "hw": sl.image.shape[:2],
                "boxes": sl.boxes[:3].round(1).tolist(),
            }
        )
    return out


IMAGES = _load_images()
DICOM_PATH = get_testdata_file("CT_small.dcm")
DICOM = Path(DICOM_PATH).read_bytes()
_ds = pydicom.dcmread(DICOM_PATH, stop_before_pixels=True)
DICOM_HW = (int(_ds.Rows), int(_ds.Columns))
DICOM_PIXEL_MM2 = float(_ds.PixelSpacing[0]) * float(_ds.PixelSpacing[1])


def check(
    response, hw: tuple[int, int], boxes: list | None = None, pixel_mm2: float | None = None
) -> None:
    """Mark the response failed unless it is a well-formed result for this image."""
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
        return
    try:
        body = response.json()
        assert (body["height"], body["width"]) == tuple(hw), "wrong image size"
        for lesion in body["lesions"]:
            assert lesion["mask"]["size"] == list(hw), "mask size"
            assert len(lesion["box"]) == 4 and lesion["area_px"] >= 0
        if boxes is not None:
            assert [lesion["box"] for lesion in body["lesions"]] == boxes, "box order"
        if pixel_mm2 is not None:
            for lesion in body["lesions"]:
                expected = lesion["area_px"] * pixel_mm2
                assert abs(lesion["area_mm2"] - expected) <= 1e-3 * max(1.0, expected), "area_mm2"
    except (AssertionError, KeyError, ValueError) as exc:
        response.failure(f"malformed response: {exc}")
    else:
        response.success()


class LesionSegUser(HttpUser):
    """A closed-loop client: sends the next request as soon as the last one is answered."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.i = 0

    def _next(self) -> dict:
        self.i += 1
        return IMAGES[self.i % len(IMAGES)]

    @task(3)
    def segment(self) -> None:
        image = self._next()
        files = {"image": ("slice.png", image["png"], "image/png")}
        with self.client.post("/segment", files=files, catch_response=True) as response:
            check(response, image["hw"])

    @task(1)
    def segment_boxes(self) -> None:
        image = self._next()
        files = {"image": ("slice.png", image["png"], "image/png")}
        data = {"boxes": json.dumps(image["boxes"])}
        with self.client.post(
            "/segment/boxes", files=files, data=data, catch_response=True, name="/segment/boxes"
        ) as response:
            check(response, image["hw"], [[round(v, 2) for v in b] for b in image["boxes"]])

    @task(1)
    def segment_dicom(self) -> None:
        files = {"image": ("ct.dcm", DICOM, "application/dicom")}
        with self.client.post(
            "/segment", files=files, catch_response=True, name="/segment (DICOM)"
        ) as response:
            check(response, DICOM_HW, pixel_mm2=DICOM_PIXEL_MM2)


if os.environ.get("LESIONSEG_LOAD_STEPS"):

    class StepShape(LoadTestShape):
        """Steps of concurrency, e.g. 1, 2, 4, 8 users, each for LESIONSEG_LOAD_STEP_SECONDS."""

        steps = tuple(int(n) for n in os.environ["LESIONSEG_LOAD_STEPS"].split(","))
        seconds = float(os.environ.get("LESIONSEG_LOAD_STEP_SECONDS", "30"))

        def tick(self):
            step = int(self.get_run_time() // self.seconds)
            if step >= len(self.steps):
                return None
            return self.steps[step], self.steps[step]
