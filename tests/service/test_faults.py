"""Faults against real `bentoml serve` processes (issue 14): the model runner SIGKILLed under
load, the whole service SIGKILLed mid-job and SIGTERMed with jobs queued, a full jobs volume
(a real tmpfs), a corrupt or locked job database. Every process a test starts is stopped, even
when it fails (``service.launcher.server_process`` stops a server's whole process tree)."""

from __future__ import annotations

import collections
import contextlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pydicom
import pytest
from pydicom.uid import generate_uid

from lesionseg.datasets.examples import dicom_bytes, lits_ct
from service.launcher import process_tree, server_process, signal_tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FINAL = ("done", "failed")


def series(lits, indices) -> tuple[str, list[bytes]]:
    """LiTS slices as the CT files of one new study: (StudyInstanceUID, files)."""
    study = generate_uid()
    files = []
    for data in lits_ct(lits, indices):
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.StudyInstanceUID = study
        files.append(dicom_bytes(ds))
    return study, files


def submit(url: str, files: list[bytes], **fields) -> httpx.Response:
    parts = [("files", (f"{i}.dcm", data, "application/dicom")) for i, data in enumerate(files)]
    return httpx.post(f"{url}/jobs", files=parts, data=fields, timeout=60)


def poll(url: str, job_id: str, until, timeout: float = 240, every: float = 0.5) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError):
            status = httpx.get(f"{url}/jobs/{job_id}", timeout=30).json()
            if until(status):
                return status
        assert time.monotonic() < deadline, status
        time.sleep(every)


def db_states(jobs: Path) -> dict[str, str]:
    """Job id -> state, read from the database itself (no server needed)."""
    with contextlib.closing(sqlite3.connect(jobs / "jobs.sqlite3")) as db:
        return dict(db.execute("SELECT id, state FROM jobs").fetchall())


def seg_uids(orthanc, study: str) -> list[str]:
    """SOPInstanceUID of every SEG instance Orthanc holds in ``study``."""
    found = httpx.post(
        f"{orthanc.url}/tools/find",
        json={"Level": "Instance", "Query": {"StudyInstanceUID": study, "Modality": "SEG"}},
        timeout=10,
    ).json()
    return [
        httpx.get(f"{orthanc.url}/instances/{i}/simplified-tags", timeout=10).json()[
            "SOPInstanceUID"
        ]
        for i in found
    ]


def assert_done_and_pushed_once(url: str, orthanc, job_id: str, study: str) -> dict:
    status = poll(url, job_id, lambda s: s["state"] in FINAL and s["push_state"] != "pending")
    status = poll(url, job_id, lambda s: s["push_state"] not in ("pending", "retrying"))
    assert (status["state"], status["push_state"]) == ("done", "pushed"), status
    assert seg_uids(orthanc, study) == [status["summary"]["seg"]["sop_instance_uid"]], status
    return status


class Chain:
    """One job store served by successive `bentoml serve` process groups."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.jobs = root, root / "jobs"
        self.env = {**env, "LESIONSEG_JOBS_DIR": str(self.jobs)}
        self.stack = contextlib.ExitStack()
        self.n = 0
        self.url: str | None = None
        self.proc: subprocess.Popen | None = None

    def start(self, ready_path: str = "/readyz") -> str:
        self.n += 1
        log = self.root / f"server-{self.n}.log"
        self.url, self.proc = self.stack.enter_context(
            server_process(self.env, log, ready_path=ready_path)
        )
        return self.url

    def ensure(self) -> str:
        """The URL of the running server; started (again) if none is running."""
        if self.proc is None or self.proc.poll() is not None:
            return self.start()
        return self.url

    def kill(self, sig: int, timeout: float = 120) -> float:
        """SIGKILL: every process of the server at once (as when its container is killed);
        SIGTERM: the arbiter only (as `podman stop` or Kubernetes send it to PID 1). Waits
        until every process is gone; returns the seconds that took."""
        started = time.monotonic()
        tree = process_tree(self.proc)
        signal_tree(tree if sig == signal.SIGKILL else tree[:1], sig)
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        assert not alive, f"still running {timeout} s after signal {sig}: {alive}"
        self.proc.wait(timeout=10)
        return time.monotonic() - started

    def runner_pid(self) -> int:
        return runner_process(self.proc).pid


def runner_process(proc: subprocess.Popen) -> psutil.Process:
    """The model runner's process (BentoML's worker of ``ModelRunner``; a killed one that is
    not reaped yet is a zombie and does not count)."""
    lines = {}
    for process in process_tree(proc):
        with contextlib.suppress(psutil.Error):  # gone, or a zombie
            lines[process] = " ".join(process.cmdline())
    found = [p for p, line in lines.items() if "--service-name lesionseg-models" in line]
    assert len(found) == 1, lines
    return found[0]


@pytest.fixture(scope="module")
def chain(model_store, orthanc, tmp_path_factory):
    env = {
        "LESIONSEG_DICOMWEB_URL": orthanc.dicomweb_url,
        "LESIONSEG_PUSH_INITIAL_DELAY_S": "0.5",
        "LESIONSEG_PUSH_MAX_DELAY_S": "2",
        "LESIONSEG_EMBEDDING_CACHE_MB": "0",  # repeated images reach the runner every time
    }
    chain = Chain(tmp_path_factory.mktemp("faults"), env)
    with chain.stack:
        yield chain


@pytest.mark.timeout(480, func_only=True)
def test_upload_on_disk_at_202_and_job_reruns_after_sigkill_of_the_group(chain, lits, orthanc):
    url = chain.start(ready_path="/livez")  # the models are still loading
    study, files = series(lits, range(100, 106))
    response = submit(url, files)
    assert response.status_code == 202, response.text
    job = response.json()
    # Durable before the 202: the inputs are in the store, whole, before the job ever runs.
    inputs = sorted((chain.jobs / job["id"] / "input").iterdir())
    assert [p.read_bytes() for p in inputs] == files
    assert db_states(chain.jobs)[job["id"]] == "queued"

    poll(url, job["id"], lambda s: s["state"] != "queued", every=0.05)
    chain.kill(signal.SIGKILL)
    assert db_states(chain.jobs)[job["id"]] == "running", "the job ended before the kill"

    restarted = time.time()
    url = chain.start()
    status = assert_done_and_pushed_once(url, orthanc, job["id"], study)
    assert status["started_at"] >= restarted, status  # run again by the new process


@pytest.mark.timeout(300, func_only=True)
def test_model_runner_sigkilled_under_load_answers_200_or_503_and_recovers(chain, lits, lits_png):
    url = chain.ensure()
    victim = chain.runner_pid()
    _, files = series(lits, range(104, 108))
    job = submit(url, files, push="false").json()  # a job in flight when the runner dies
    answers: list[tuple] = []  # (status or error, Retry-After, sent at, error message)
    stop = threading.Event()

    def user() -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = client.post(f"{url}/segment", files={"image": ("s.png", lits_png)})
                    error = r.json().get("error") if r.status_code != 200 else None
                    answers.append((r.status_code, r.headers.get("retry-after"), sent, error))
                except httpx.HTTPError as exc:
                    answers.append((repr(exc), None, sent, None))

    users = [threading.Thread(target=user, daemon=True) for _ in range(3)]
    for thread in users:
        thread.start()
    try:
        poll(url, job["id"], lambda s: s["state"] != "queued", every=0.05)
        time.sleep(1)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        deadline = killed + 180
        while not any(a[0] == 200 and a[2] > killed + 1 for a in answers):
            assert time.monotonic() < deadline, collections.Counter(a[0] for a in answers)
            time.sleep(0.2)
        recovered = min(a[2] for a in answers if a[0] == 200 and a[2] > killed + 1) - killed
    finally:
        stop.set()
        for thread in users:
            thread.join(timeout=150)
    assert not any(thread.is_alive() for thread in users), "a request never got an answer"
    after = [a for a in answers if a[2] >= killed - 5]
    counts = collections.Counter(a[0] for a in answers)
    print(f"runner killed: {dict(counts)}; a new request answered 200 {recovered:.1f} s later")
    print("503 errors:", collections.Counter(a[3] for a in answers if a[0] == 503))
    assert set(counts) <= {200, 503}, counts
    assert all(a[1] for a in answers if a[0] == 503), "a 503 without Retry-After"
    assert any(a[0] == 503 for a in after), "the kill was never seen: nothing to test"
    assert chain.runner_pid() != victim  # respawned by BentoML's arbiter
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    status = poll(url, job["id"], lambda s: s["state"] in FINAL)
    assert status["state"] == "done", status  # re-queued, not failed, by the runner's death


@pytest.mark.timeout(480, func_only=True)
def test_sigterm_with_jobs_queued_and_running_each_completes_and_is_pushed_once(
    chain, lits, orthanc
):
    url = chain.ensure()
    studies = [series(lits, range(100 + 2 * i, 103 + 2 * i)) for i in range(3)]
    jobs = []
    for _, files in studies:
        response = submit(url, files)
        assert response.status_code == 202, response.text
        jobs.append(response.json()["id"])
    poll(url, jobs[0], lambda s: s["state"] != "queued", every=0.05)
    stopped_in = chain.kill(signal.SIGTERM)
    before = db_states(chain.jobs)
    print(f"SIGTERM: stopped in {stopped_in:.1f} s; states {[before[j] for j in jobs]}")
    assert any(before[j] != "done" for j in jobs), "every job ended before the stop"

    url = chain.start()
    for job_id, (study, _) in zip(jobs, studies, strict=True):
        assert_done_and_pushed_once(url, orthanc, job_id, study)


@pytest.mark.timeout(240, func_only=True)
def test_model_runner_killed_in_a_container_the_server_exits_for_the_orchestrator(
    model_store, tmp_path, lits_png
):
    """BentoML's image sets BENTOML_CONTAINERIZED, which turns respawning off: the arbiter
    stops the API once its requests are answered (at the latest at the request deadline) and
    exits non-zero, for the orchestrator to restart the container."""
    env = {
        "BENTOML_CONTAINERIZED": "true",
        "LESIONSEG_JOBS_DIR": str(tmp_path / "jobs"),
        "LESIONSEG_REQUEST_TIMEOUT_S": "10",
        "LESIONSEG_EMBEDDING_CACHE_MB": "0",
    }
    answers: list = []

    def request(url: str) -> None:
        try:
            image = {"image": ("s.png", lits_png)}
            answers.append(httpx.post(f"{url}/segment", files=image, timeout=120).status_code)
        except httpx.TransportError as exc:  # the server exited with the connection open
            answers.append(type(exc).__name__)

    with server_process(env, tmp_path / "serve.log") as (url, proc):
        runner = runner_process(proc)
        users = [threading.Thread(target=request, args=(url,)) for _ in range(3)]
        for thread in users:
            thread.start()
        time.sleep(0.5)
        killed = time.monotonic()
        runner.kill()
        proc.wait(timeout=150)
        exited_in = time.monotonic() - killed
        for thread in users:
            thread.join(timeout=30)
    print(f"container mode: exited {proc.returncode} {exited_in:.0f} s after the kill; {answers}")
    assert proc.returncode != 0
    assert len(answers) == 3 and 500 not in answers, answers


# --- a full jobs volume --------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_volume(tmp_path_factory):
    """A real 24 MiB tmpfs for the job store (we run as root in CI; elsewhere: skipped)."""
    mount = tmp_path_factory.mktemp("small-volume")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the full-volume tests: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


@pytest.fixture(scope="module")
def volume_server(model_store, small_volume):
    env = {"LESIONSEG_JOBS_DIR": str(small_volume / "jobs")}
    log = small_volume.parent / "volume-server.log"
    with server_process(env, log) as (url, _):
        yield url, small_volume / "jobs", log


@contextlib.contextmanager
def filled(volume: Path, leave: int = 0):
    """Fill ``volume`` until at most ``leave`` bytes are free; free it again on exit."""
    filler = volume / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12):
            while os.statvfs(volume).f_bavail * os.statvfs(volume).f_frsize > leave + chunk:
                os.write(fd, b"\0" * chunk)
        if leave == 0:
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
        yield
    finally:
        os.close(fd)
        filler.unlink()


def listing(jobs: Path) -> list[str]:
    return sorted(str(p.relative_to(jobs)) for p in jobs.rglob("*") if "sqlite3" not in p.name)


@pytest.mark.timeout(300, func_only=True)
def test_full_volume_submit_is_507_keeps_nothing_and_the_service_keeps_serving(
    volume_server, lits, lits_png
):
    url, jobs, _ = volume_server
    _, files = series(lits, range(100, 102))
    earlier = submit(url, files, push="false")
    assert earlier.status_code == 202, earlier.text
    poll(url, earlier.json()["id"], lambda s: s["state"] in FINAL)
    before = listing(jobs)
    with filled(jobs.parent):
        refused = submit(url, files, transaction_id="full-1")
        assert refused.status_code == 507, refused.text
        assert "full" in refused.json()["error"], refused.text
        assert listing(jobs) == before  # the partial upload is gone
        # still serving: health, status reads, segmentation
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        assert poll(url, earlier.json()["id"], lambda s: True)["state"] == "done"
        image = {"image": ("s.png", lits_png)}
        assert httpx.post(f"{url}/segment", files=image, timeout=120).status_code == 200
    accepted = submit(url, files, transaction_id="full-1")  # nothing of the refused one left
    assert accepted.status_code == 202, accepted.text
    assert poll(url, accepted.json()["id"], lambda s: s["state"] in FINAL)["state"] == "done"


@pytest.mark.timeout(300, func_only=True)
def test_full_volume_while_a_result_is_stored_is_retried_until_space_is_freed(volume_server, lits):
    url, jobs, log = volume_server
    _, files = series(lits, range(100, 108))
    response = submit(url, files, push="false")
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    with filled(jobs.parent):
        deadline = time.monotonic() + 180
        while f"job {job_id}: the job store's volume is full" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        # (with not a byte free, even the reason cannot be recorded: the log has it)
        assert poll(url, job_id, lambda s: True)["state"] == "running"
        assert not (jobs / job_id / "result.dcm").exists()
        assert not list((jobs / job_id).glob(".*.tmp"))  # no partial result left
    status = poll(url, job_id, lambda s: s["state"] in FINAL, timeout=60)
    assert (status["state"], status["reason"]) == ("done", None), status


# --- a corrupt or locked job database --------------------------------------------------------

LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY)")
db.execute("PRAGMA locking_mode=EXCLUSIVE")
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(600)
"""


def serve_and_fail(jobs: Path, log: Path, timeout: float = 90) -> str:
    """`bentoml serve` on ``jobs``: it must exit non-zero by itself; returns its output."""
    env = {"LESIONSEG_JOBS_DIR": str(jobs)}
    with (
        pytest.raises(RuntimeError, match="bentoml serve exited"),
        server_process(env, log, timeout=timeout, ready_path="/livez"),
    ):
        pass
    return log.read_text()


@pytest.mark.timeout(120, func_only=True)
def test_corrupt_job_database_stops_the_service_with_the_file_named(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "jobs.sqlite3").write_bytes(os.urandom(8192))
    output = serve_and_fail(jobs, tmp_path / "serve.log")
    assert f"the job database {jobs / 'jobs.sqlite3'} is corrupt" in output, output[-3000:]
    assert "move it away" in output


@pytest.mark.timeout(120, func_only=True)
def test_locked_job_database_stops_the_service_with_the_file_named(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(jobs / "jobs.sqlite3")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout.readline().strip() == "locked"
        output = serve_and_fail(jobs, tmp_path / "serve.log")
    finally:
        locker.kill()
        locker.wait()
    assert f"the job database {jobs / 'jobs.sqlite3'} is locked" in output, output[-3000:]
