"""Bytes in flight bounded in a real `bentoml serve` (service/inflight.py): 40 concurrent 50 MiB
uploads against LESIONSEG_MAX_INFLIGHT_BYTES=512MiB. The excess is refused with 503 at once,
before its body is sent; the API process's resident memory stays under the bound plus what it
held before (its models), its temporary files under twice the bound (the sizing of
docs/deployment.md); the server answers on, every process of it alive."""

from __future__ import annotations

import os
import re
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from benchmarks.memory import role
from service.launcher import REPO_ROOT, process_tree, server_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIB = 2**20
BOUND = 512 * MIB
UPLOAD = 50 * MIB
CLIENTS = 40
BOUNDARY = b"lesionseg-burst"
PRELUDE = (
    b'--%s\r\nContent-Disposition: form-data; name="image"; filename="big.dcm"\r\n'
    b"Content-Type: application/dicom\r\n\r\n" % BOUNDARY
)
EPILOGUE = b"\r\n--%s--\r\n" % BOUNDARY
LENGTH = len(PRELUDE) + UPLOAD + len(EPILOGUE)
ADMITTED = BOUND // LENGTH  # 10 uploads of 50 MiB fit in 512 MiB
PNG = REPO_ROOT / "data" / "examples" / "lits117-z110.png"


@pytest.fixture(scope="module")
def served(model_store, tmp_path_factory):
    """The service with the bound of the test and an upload limit above 50 MiB; the other
    limits (count, deadline) are tests/server_limits.py's, generous."""
    root = tmp_path_factory.mktemp("inflight")
    (root / "tmp").mkdir()
    env = {
        "LESIONSEG_MAX_INFLIGHT_BYTES": "512MiB",
        "LESIONSEG_MAX_UPLOAD_BYTES": "64MiB",
        "TMPDIR": str(root / "tmp"),  # where uploads are spooled and copied
    }
    with server_process(env, root / "serve.log") as (url, proc):
        yield url, proc, root / "tmp"


def temp_bytes(pid: int, tmpdir: Path) -> int:
    """Bytes of the files under ``tmpdir``: those with a name (BentoML's copies), and those
    unlinked but held open by process ``pid`` (the multipart parser's spooled files)."""
    total = 0
    for path in tmpdir.rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except FileNotFoundError:
            continue  # deleted while walking: its request ended
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
            if target.startswith(str(tmpdir)) and target.endswith(" (deleted)"):
                total += os.stat(fd).st_size
        except FileNotFoundError:
            continue  # closed while reading
    return total


class Sampler(threading.Thread):
    """The peak RSS and temporary bytes of process ``api``, every 50 ms until ``stop``."""

    def __init__(self, api: psutil.Process, tmpdir: Path) -> None:
        super().__init__(daemon=True)
        self.api, self.tmpdir, self.stop = api, tmpdir, threading.Event()
        self.rss = self.temp = 0

    def run(self) -> None:
        while not self.stop.wait(0.05):
            self.rss = max(self.rss, self.api.memory_info().rss)
            self.temp = max(self.temp, temp_bytes(self.api.pid, self.tmpdir))


def body_chunks():
    """The multipart body, 1 MiB at a time: the upload is never held whole here."""
    yield PRELUDE
    zeros = bytes(MIB)
    for _ in range(UPLOAD // MIB):
        yield zeros
    yield EPILOGUE


def read_answer(sock: socket.socket, timeout: float = 120) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 answer (with Content-Length) on ``sock``."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-answer: {data[:200]!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-body: {head!r}"
        body += chunk
    return int(head.split(b" ", 2)[1]), head + b"\r\n\r\n" + body


def api_process(proc) -> psutil.Process:
    root = psutil.Process(proc.pid)
    (api,) = [p for p in process_tree(proc) if role(p, root).startswith("lesionseg#")]
    return api


@pytest.mark.timeout(600)
def test_40_uploads_of_50_mib_the_excess_503_at_once_and_memory_bounded(served):
    url, proc, tmpdir = served
    host, port = url.removeprefix("http://").split(":")
    processes = {p.pid for p in process_tree(proc)}
    api = api_process(proc)
    baseline = api.memory_info().rss
    head = (
        b"POST /segment HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n"
        b"Content-Type: multipart/form-data; boundary=%s\r\n\r\n" % (LENGTH, BOUNDARY)
    )
    sockets = [socket.create_connection((host, int(port)), timeout=30) for _ in range(CLIENTS)]
    sampler = Sampler(api, tmpdir)
    sampler.start()
    try:
        # Every request announces its 50 MiB; none sends a byte of it yet.
        started = time.monotonic()
        for sock in sockets:
            sock.sendall(head)
        refused: dict[socket.socket, tuple[int, bytes, float]] = {}
        deadline = started + 30
        while len(refused) < CLIENTS - ADMITTED and time.monotonic() < deadline:
            waiting = [s for s in sockets if s not in refused]
            readable, _, _ = select.select(waiting, [], [], 1.0)
            for sock in readable:
                status, answer = read_answer(sock)
                refused[sock] = (status, answer, time.monotonic() - started)
        time.sleep(1.0)  # any further refusal would come now
        waiting = [s for s in sockets if s not in refused]
        assert not select.select(waiting, [], [], 0)[0], "more refused than the bound needs"
        assert len(refused) == CLIENTS - ADMITTED, len(refused)
        for status, answer, seconds in refused.values():
            assert status == 503, answer[:300]
            assert b"\r\nretry-after: " in answer.lower(), answer[:300]
            assert b"LESIONSEG_MAX_INFLIGHT_BYTES" in answer
            assert seconds < 10, seconds  # at once: the bodies were never sent
        # The admitted uploads stream their bodies together.
        with ThreadPoolExecutor(len(waiting)) as pool:
            answers = list(pool.map(send_body, waiting))
    finally:
        sampler.stop.set()
        sampler.join()
        for sock in sockets:
            sock.close()
    for status, answer in answers:
        assert status == 400, answer[:300]  # zeros are no image: read whole, then refused
    print(
        f"{len(refused)} refused in {max(r[2] for r in refused.values()):.2f} s; API RSS "
        f"{baseline / MIB:.0f} MiB before, {sampler.rss / MIB:.0f} MiB at most; temporary "
        f"files {sampler.temp / MIB:.0f} MiB at most"
    )
    assert sampler.rss < baseline + BOUND, (baseline, sampler.rss)
    assert UPLOAD <= sampler.temp < 2 * BOUND, sampler.temp
    assert {p.pid for p in process_tree(proc)} == processes  # no process died or restarted
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert re.search(r'lesionseg_inflight_rejected_total\{status="503"\} 30\.0', metrics)
    assert re.search(r"\nlesionseg_inflight_bytes 0\.0", metrics), metrics
    files = {"image": ("a.png", PNG.read_bytes(), "image/png")}
    assert httpx.post(f"{url}/segment", files=files, timeout=60).status_code == 200


def send_body(sock: socket.socket) -> tuple[int, bytes]:
    for chunk in body_chunks():
        sock.sendall(chunk)
    return read_answer(sock)
