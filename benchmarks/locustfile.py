"""Locust users for the lesionseg API: the README example first, real slices and DICOM, all checked.

    locust -f benchmarks/locustfile.py --host http://localhost:3000

The mix per user, by weight: 4 ``/segment (example)``, the README's curl example
(``data/examples/lits117-z110.png``, the request the targets are about); 1
``/segment/boxes (re-prompt)``, the exact image this user last sent as the example with the
boxes its answer held, as a viewer does when a radiologist fixes a box (an embedding cache may
answer it); 1 ``/segment`` and 1 ``/segment/boxes`` (ground-truth boxes) on LiTS validation
slices; 1 ``/segment (DICOM)`` (pydicom-data's ``CT_small.dcm``, 0.66 mm pixels). Every image
but the re-prompts' is a fresh copy (``benchmarks/payloads.py``), so no cache answers it. A
request counts as failed unless it is 200 and well formed (image size, one RLE mask per lesion
of the image's size, boxes in the order sent, for DICOM areas in mm² from the pixel spacing).
Set LESIONSEG_LOAD_STEPS="1,2,4,8" (and LESIONSEG_LOAD_STEP_SECONDS) for a stepped load shape
instead of a fixed user count, and LESIONSEG_LOAD_RECORD=file.csv to have every completed
request appended to that file (end time, name, ms, error): ``benchmarks.load`` computes exact
percentiles and throughput from it, where Locust's own stats round to 2 significant digits.
"""

from __future__ import annotations

import csv
import json
import os
import time

from locust import HttpUser, LoadTestShape, constant, events, task
from pydicom.data import get_testdata_file

from benchmarks.payloads import (
    EXAMPLE_BOXES,
    fresh_dicom,
    fresh_png,
    png_bytes,
    read_dicom,
    read_example,
    result_problem,
)
from lesionseg.datasets.lits import LitsCase
from lesionseg.settings import Settings

SLICES = [
    {"image": sl.image, "boxes": sl.boxes[:3].round(1).tolist()}
    for sl in LitsCase(Settings().cache_dir).slices("val", step=3)
]
EXAMPLE = read_example()
DICOM = read_dicom(get_testdata_file("CT_small.dcm"))
DICOM_HW = (int(DICOM.Rows), int(DICOM.Columns))
DICOM_PIXEL_MM2 = float(DICOM.PixelSpacing[0]) * float(DICOM.PixelSpacing[1])


def check(
    response, hw: tuple[int, int], boxes: list | None = None, pixel_mm2: float | None = None
) -> dict | None:
    """Mark the response failed unless it is a well-formed result for this image; its body."""
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
        return None
    try:
        body = response.json()
    except ValueError as exc:
        response.failure(f"malformed response: {exc}")
        return None
    problem = result_problem(body, hw, boxes, pixel_mm2)
    if problem:
        response.failure(problem)
        return None
    response.success()
    return body


def rounded(boxes: list) -> list:
    """Boxes as the service echoes them (2 decimals)."""
    return [[round(v, 2) for v in b] for b in boxes]


class LesionSegUser(HttpUser):
    """A closed-loop client: sends the next request as soon as the last one is answered."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.i = 0
        self.last_example = png_bytes(EXAMPLE)  # until this user has sent one of its own
        self.last_boxes = EXAMPLE_BOXES

    def _slice(self) -> dict:
        self.i += 1
        return SLICES[self.i % len(SLICES)]

    @task(4)
    def segment_example(self) -> None:
        png = fresh_png(EXAMPLE)
        files = {"image": ("example.png", png, "image/png")}
        with self.client.post(
            "/segment", files=files, catch_response=True, name="/segment (example)"
        ) as response:
            body = check(response, EXAMPLE.shape[:2])
        if body and body["lesions"]:
            self.last_example, self.last_boxes = png, [x["box"] for x in body["lesions"]]

    @task(1)
    def reprompt(self) -> None:
        files = {"image": ("example.png", self.last_example, "image/png")}
        data = {"boxes": json.dumps(self.last_boxes)}
        with self.client.post(
            "/segment/boxes",
            files=files,
            data=data,
            catch_response=True,
            name="/segment/boxes (re-prompt)",
        ) as response:
            check(response, EXAMPLE.shape[:2], rounded(self.last_boxes))

    @task(1)
    def segment(self) -> None:
        image = self._slice()["image"]
        files = {"image": ("slice.png", fresh_png(image), "image/png")}
        with self.client.post("/segment", files=files, catch_response=True) as response:
            check(response, image.shape[:2])

    @task(1)
    def segment_boxes(self) -> None:
        sl = self._slice()
        files = {"image": ("slice.png", fresh_png(sl["image"]), "image/png")}
        data = {"boxes": json.dumps(sl["boxes"])}
        with self.client.post(
            "/segment/boxes", files=files, data=data, catch_response=True, name="/segment/boxes"
        ) as response:
            check(response, sl["image"].shape[:2], rounded(sl["boxes"]))

    @task(1)
    def segment_dicom(self) -> None:
        files = {"image": ("ct.dcm", fresh_dicom(DICOM), "application/dicom")}
        with self.client.post(
            "/segment", files=files, catch_response=True, name="/segment (DICOM)"
        ) as response:
            check(response, DICOM_HW, pixel_mm2=DICOM_PIXEL_MM2)


if os.environ.get("LESIONSEG_LOAD_RECORD"):

    @events.request.add_listener
    def record(name: str, response_time: float, exception: Exception | None, **_) -> None:
        with open(os.environ["LESIONSEG_LOAD_RECORD"], "a", newline="") as handle:
            error = "" if exception is None else str(exception)[:300]
            csv.writer(handle).writerow([f"{time.time():.4f}", name, f"{response_time:.1f}", error])


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
