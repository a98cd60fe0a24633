"""Limits and logs of a real `bentoml serve`: 413 for an oversized body (declared, or streamed
past the limit), 504 past the request deadline with the work stopped, one log line for a bad
request, the trace id of a server error in the log and in the response, and JSON log lines;
503 when the model runner sheds calls over its latency budget."""

from __future__ import annotations

import gzip
import io
import json
import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from service.launcher import REPO_ROOT, running_server
from service.limits import FORM_OVERHEAD_BYTES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_UPLOAD = 8_000_000
SLICES = 100  # of 128 x 128 int16: 3.3 MB uncompressed, decoded in ~1.6 s
LIMIT = MAX_UPLOAD + FORM_OVERHEAD_BYTES
DEADLINE_S = 6.0
PNG = REPO_ROOT / "data" / "examples" / "lits117-z110.png"
VOLUME = REPO_ROOT / "data" / "examples" / "lits117.nii.gz"


@pytest.fixture(scope="module")
def served(model_store, tmp_path_factory) -> tuple[str, Path]:
    """The service with JSON logs, an 8 MB upload limit and a 6 s request deadline (a PNG
    takes ~0.3 s; the 100-slice volume's decoding ~2 s, its model calls over 10 s). No
    per-image cache: the volume's repeated slices must each cost the models."""
    log = tmp_path_factory.mktemp("limits") / "serve.log"
    env = {
        "LESIONSEG_LOG_FORMAT": "json",
        "LESIONSEG_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "LESIONSEG_REQUEST_TIMEOUT_S": str(DEADLINE_S),
        "LESIONSEG_EMBEDDING_CACHE_MB": "0",
    }
    with running_server(env, log) as url:
        yield url, log


def log_lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def healthy(url: str) -> None:
    """Ready, and a PNG still answered."""
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    files = {"image": ("a.png", PNG.read_bytes(), "image/png")}
    response = httpx.post(f"{url}/segment", files=files, timeout=60)
    assert response.status_code == 200, response.text


def stream_chunked(url: str, total: int, chunk: int = 2**16) -> tuple[int, bytes, float]:
    """POST /segment as one multipart file part of ``total`` bytes, chunked (no
    Content-Length), until the server answers. (bytes sent, the answer, seconds)."""
    host, port = url.removeprefix("http://").split(":")
    prelude = (
        b'--B\r\nContent-Disposition: form-data; name="image"; filename="big.dcm"\r\n'
        b"Content-Type: application/dicom\r\n\r\n"
    )
    head = (
        b"POST /segment HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=B\r\n\r\n"
    )
    payload = b"%x\r\n%s\r\n" % (chunk, b"\0" * chunk)
    sent, answer, started = 0, b"", time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + b"%x\r\n%s\r\n" % (len(prelude), prelude))
        while sent < total:
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                break
            assert writable, "the server neither reads nor answers"
            sock.sendall(payload)
            sent += chunk
        sock.settimeout(30)
        while b"\r\n\r\n" not in answer and (data := sock.recv(65536)):
            answer += data
    return sent, answer, time.monotonic() - started


@pytest.mark.timeout(600)
def test_a_declared_length_over_the_limit_is_refused_at_once(served):
    """2 GB announced, not one byte of body sent: the answer comes all the same."""
    url, _ = served
    host, port = url.removeprefix("http://").split(":")
    head = (
        b"POST /segment HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n"
        b"Content-Type: multipart/form-data; boundary=B\r\n\r\n" % (2 * 2**30)
    )
    answer = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        while data := sock.recv(65536):
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"LESIONSEG_MAX_UPLOAD_BYTES" in answer
    healthy(url)


@pytest.mark.timeout(600)
def test_a_streamed_2_gb_body_is_cut_soon_after_the_limit(served):
    url, log = served
    sent, answer, seconds = stream_chunked(url, total=2 * 2**30)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    # What the client had sent when the answer came: the limit plus the socket buffers.
    assert sent < LIMIT + 64 * 2**20, sent
    refused = [r for r in log_lines(log) if "refused (413)" in r["message"]]
    read = int(refused[-1]["message"].split("over ")[1].split(" bytes received")[0])
    assert LIMIT < read <= LIMIT + 2**20, read  # the server read one chunk past the limit
    print(f"client sent {sent} B, server read {read} B, answered in {seconds:.2f} s")
    healthy(url)


def volume(slices: int) -> bytes:
    """The example CT volume's slices repeated to ``slices`` (a gzipped int16 NIfTI)."""
    example = nib.load(VOLUME)
    data = np.asarray(example.dataobj)
    stacked = np.concatenate([data] * (slices // data.shape[2] + 1), axis=2)[..., :slices]
    stacked = np.round(stacked).astype(np.int16)  # HU: 2 bytes a voxel, under the upload limit
    return gzip.compress(nib.Nifti1Image(stacked, example.affine).to_bytes())


def runner_calls(url: str) -> float:
    """Completed model-runner requests, from the API's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("bentoml_service_request_total") and "lesionseg-models" in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.timeout(600)
def test_past_the_deadline_504_and_the_work_stops(served):
    url, log = served
    before = runner_calls(url)
    files = {"image": ("ct.nii.gz", volume(SLICES), "application/gzip")}
    started = time.monotonic()
    response = httpx.post(f"{url}/segment", files=files, timeout=120)
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text[:300]
    assert "LESIONSEG_REQUEST_TIMEOUT_S" in response.json()["error"]
    assert DEADLINE_S <= elapsed < DEADLINE_S + 10, elapsed
    trace_id = response.headers["X-Trace-Id"]
    errors = [r for r in log_lines(log) if r["trace_id"] == trace_id and r["level"] == "ERROR"]
    assert len(errors) == 1 and "request deadline" in errors[0]["message"], errors

    # The calls in flight at the deadline finish in the runner (and count) a little later.
    after, deadline = runner_calls(url), time.monotonic() + 60
    while time.sleep(3) or (now := runner_calls(url)) != after:
        assert time.monotonic() < deadline, "the runner calls never stopped"
        after = now
    # The whole volume takes at least one detect call per slice; the request stopped early.
    assert 0 < after - before < SLICES, (before, after)
    print(f"504 after {elapsed:.1f} s; {after - before:g} runner calls of {SLICES} slices")
    time.sleep(5)
    assert runner_calls(url) == after, "the cancelled request still calls the models"
    healthy(url)


@pytest.mark.timeout(600)
def test_a_bad_request_is_one_log_line_without_traceback(served):
    url, log = served
    files = {"image": ("a.png", PNG.read_bytes(), "image/png")}
    response = httpx.post(f"{url}/segment", files=files, data={"score_threshold": "2"})
    assert response.status_code == 400, response.text
    trace_id = response.headers["X-Trace-Id"]
    time.sleep(0.5)
    ours = [
        r for r in log_lines(log) if r["trace_id"] == trace_id and r["logger"] != "bentoml.access"
    ]
    assert len(ours) == 1, ours
    assert ours[0]["level"] == "INFO" and "score_threshold" in ours[0]["message"]
    assert "exception" not in ours[0] and "Traceback" not in json.dumps(ours[0])


@pytest.mark.timeout(600)
def test_every_log_line_is_one_json_object(served):
    url, log = served
    healthy(url)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert len(lines) > 10
    for line in lines:
        record = json.loads(line)  # raises on a line that is not JSON
        assert {"time", "level", "logger", "message", "trace_id"} <= record.keys(), line
    loggers = {json.loads(line)["logger"] for line in lines}
    # the API's and the runner's own loggers, BentoML's and its access log
    assert {"lesionseg.service", "bentoml.access"} <= loggers, loggers
    processes = {json.loads(line)["process"] for line in lines}
    assert len(processes) >= 2, processes  # the API and the model runner (and the arbiter)


@pytest.mark.timeout(600)
def test_the_runner_sheds_calls_over_its_latency_budget_as_503(model_store, tmp_path):
    """A model runner with a 1 ms latency budget refuses the calls it cannot batch in time:
    the client gets 503 with Retry-After naming the setting, never a 500 or a hang."""
    env = {"LESIONSEG_MAX_LATENCY_MS": "1", "LESIONSEG_WARMUP": "false"}
    # 16 different images: requests for one image would share one runner call (the cache).
    pixels = np.asarray(Image.open(PNG).convert("RGB"))
    uploads = []
    for n in range(16):
        image = pixels.copy()
        image[0, 0] = (n, n, n)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        uploads.append({"image": (f"{n}.png", buffer.getvalue(), "image/png")})
    with running_server(env, tmp_path / "serve.log") as url, ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda f: httpx.post(f"{url}/segment", files=f, timeout=120), uploads)
        )
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 503} and 503 in codes, codes
    for shed in (a for a in answers if a.status_code == 503):
        assert "LESIONSEG_MAX_LATENCY_MS" in shed.json()["error"] and shed.headers["Retry-After"]
    # Each refusal is one WARNING line in the runner's log, not an ERROR traceback.
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log and "(503)" in log, log[-3000:]
