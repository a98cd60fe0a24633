"""The soak's operations: the Locust mix's PNG and DICOM requests and a ``/jobs`` series.

One operation is one of :data:`WEIGHTS` (an arrival of the open loop, a step of a closed-loop
user): ``png`` (``/segment`` of a fresh copy of the README example), ``slice_boxes``
(``/segment/boxes`` of a fresh LiTS validation slice with its ground-truth boxes), ``dicom``
(``/segment`` of pydicom-data's ``CT_small.dcm``, a fresh copy), ``dicom_seg``
(``/segment/dicom-seg`` of a real LiTS CT slice as DICOM), ``job`` (``POST /jobs`` of a
2-slice LiTS CT series, ``GET /jobs/{id}`` every 0.5 s until done, ``GET`` its SEG). Every
HTTP request goes through :meth:`Mix.call`, which enters it in the :class:`~.ledger.Ledger`
and settles it with its answer or the reason none came; every answer is checked (status,
body), as ``locustfile.py`` does. Nothing is sent twice with the same pixels
(``payloads.py``), so no embedding cache answers for the models.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import time
from collections.abc import Callable, Iterator

import httpx
import pydicom
from pydicom.data import get_testdata_file

from benchmarks.ledger import Ledger
from benchmarks.payloads import fresh_dicom, fresh_png, fresh_series, read_dicom, read_example
from benchmarks.payloads import result_problem as json_problem
from lesionseg.datasets.examples import lits_ct
from lesionseg.datasets.lits import LitsCase
from lesionseg.settings import Settings

# Jobs run one at a time in the service's job worker, a few per second at most on 2 cores:
# one in 18 operations keeps their queue short at 80 % of the capacity.
WEIGHTS = {"png": 10, "slice_boxes": 2, "dicom": 3, "dicom_seg": 2, "job": 1}
SERIES = (108, 110)  # LiTS slices of the job's series (lesions on both)
DICOM_SEG_SLICE = 110
POLL_S = 0.5

Check = Callable[[httpx.Response], str]


def expect(status: int, then: Check | None = None) -> Check:
    """A check: the answer has ``status`` (and passes ``then``)."""

    def check(response: httpx.Response) -> str:
        if response.status_code != status:
            return f"HTTP {response.status_code}: {response.text[:200]}"
        return then(response) if then else ""

    return check


def segmentation(response: httpx.Response) -> str:
    """Why ``response`` is not a DICOM SEG ("" when it is)."""
    if response.headers.get("content-type") != "application/dicom":
        return f"content-type {response.headers.get('content-type')}"
    try:
        modality = pydicom.dcmread(io.BytesIO(response.content)).Modality
    except (pydicom.errors.InvalidDicomError, AttributeError, ValueError) as exc:
        return f"not a DICOM SEG: {exc!r}"
    return "" if modality == "SEG" else f"modality {modality}, not SEG"


def json_result(hw: tuple[int, int], **expected) -> Check:
    def check(response: httpx.Response) -> str:
        try:
            body = response.json()
        except ValueError as exc:
            return f"malformed response: {exc}"
        return json_problem(body, hw, **expected)

    return check


def send(
    client: httpx.Client,
    ledger: Ledger,
    name: str,
    method: str,
    path: str,
    check: Check,
    *,
    poll: bool = False,
    **kwargs,
) -> httpx.Response | None:
    """One request, entered in ``ledger`` before it goes and settled with its answer (a failure
    when ``check`` says why) or the reason none came: the response, None on a failure."""
    request = ledger.send(name, poll=poll)
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:  # timeout, refused, reset: no answer
        ledger.no_answer(request, f"{type(exc).__name__}: {str(exc)[:200]}")
        return None
    problem = check(response)
    ledger.answer(request, response.status_code, problem)
    return None if problem else response


class Mix:
    """The operations against the server at ``url``; every request in ``ledger``.
    ``timeout_s``: the client's limit per request (a request over it counts as unanswered);
    ``job_timeout_s``: from a job's submission until it must be done."""

    def __init__(self, url: str, ledger: Ledger, timeout_s: float, job_timeout_s: float) -> None:
        self.ledger = ledger
        self.job_timeout_s = job_timeout_s
        # the longest an operation can take: a job's submission, its deadline, then one more
        # poll and the result, each within the client's timeout
        self.longest_s = job_timeout_s + 3 * timeout_s
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self.client = httpx.Client(base_url=url, timeout=timeout_s, limits=limits)
        case = LitsCase(Settings().cache_dir)
        self.example = read_example()
        self.slices = [
            (sl.image, sl.boxes[:3].round(1).tolist()) for sl in case.slices("val", step=3)
        ]
        self.ct_small = read_dicom(get_testdata_file("CT_small.dcm"))
        self.series = [read_dicom(io.BytesIO(data)) for data in lits_ct(case, SERIES)]
        (ct,) = lits_ct(case, [DICOM_SEG_SLICE])
        self.ct_slice = read_dicom(io.BytesIO(ct))
        self._slice_index = itertools.count()

    def close(self) -> None:
        self.client.close()

    @staticmethod
    def sequence(seed: int) -> Iterator[str]:
        """The operations' names, endlessly: each block of sum(WEIGHTS) holds every name its
        weight's times, in an order shuffled by ``seed``."""
        block = [name for name, weight in WEIGHTS.items() for _ in range(weight)]
        rng = random.Random(seed)
        while True:
            rng.shuffle(block)
            yield from block

    def run(self, name: str) -> bool:
        """Run operation ``name``: whether all of its requests succeeded."""
        assert name in WEIGHTS, name
        return getattr(self, name)()

    def call(
        self, name: str, method: str, path: str, check: Check, *, poll: bool = False, **kwargs
    ) -> httpx.Response | None:
        return send(self.client, self.ledger, name, method, path, check, poll=poll, **kwargs)

    # --- the operations ------------------------------------------------------------------

    def png(self) -> bool:
        files = {"image": ("example.png", fresh_png(self.example), "image/png")}
        check = expect(200, json_result(self.example.shape[:2]))
        return self.call("/segment (example)", "POST", "/segment", check, files=files) is not None

    def slice_boxes(self) -> bool:
        image, boxes = self.slices[next(self._slice_index) % len(self.slices)]
        files = {"image": ("slice.png", fresh_png(image), "image/png")}
        rounded = [[round(v, 2) for v in b] for b in boxes]
        check = expect(200, json_result(image.shape[:2], boxes=rounded))
        data = {"boxes": json.dumps(boxes)}
        response = self.call(
            "/segment/boxes", "POST", "/segment/boxes", check, files=files, data=data
        )
        return response is not None

    def dicom(self) -> bool:
        ds = self.ct_small
        files = {"image": ("ct.dcm", fresh_dicom(ds), "application/dicom")}
        mm2 = float(ds.PixelSpacing[0]) * float(ds.PixelSpacing[1])
        check = expect(200, json_result((int(ds.Rows), int(ds.Columns)), pixel_mm2=mm2))
        return self.call("/segment (DICOM)", "POST", "/segment", check, files=files) is not None

    def dicom_seg(self) -> bool:
        files = {"image": ("ct.dcm", fresh_dicom(self.ct_slice), "application/dicom")}
        check = expect(200, segmentation)
        data = {"window": "abdomen"}
        response = self.call(
            "/segment/dicom-seg", "POST", "/segment/dicom-seg", check, files=files, data=data
        )
        return response is not None

    def job(self) -> bool:
        files = [
            ("files", (f"ct{n}.dcm", data, "application/dicom"))
            for n, data in enumerate(fresh_series(self.series))
        ]
        submitted = self.call(
            "/jobs", "POST", "/jobs", expect(202), files=files, data={"window": "abdomen"}
        )
        if submitted is None:
            return False
        location = submitted.json()["location"]
        deadline = time.monotonic() + self.job_timeout_s

        def state(response: httpx.Response) -> str:
            status = response.json()
            if status["state"] == "failed":
                return f"job failed: {status.get('reason')}"
            if status["state"] != "done" and time.monotonic() > deadline:
                return f"job not done {self.job_timeout_s:.0f} s after its submission: {status}"
            return ""

        while True:
            polled = self.call("/jobs/{id}", "GET", location, expect(200, state), poll=True)
            if polled is None:
                return False
            if polled.json()["state"] == "done":
                break
            time.sleep(POLL_S)
        result = self.call(
            "/jobs/{id}/result", "GET", f"{location}/result", expect(200, segmentation)
        )
        return result is not None
