"""The persistent job store and the push bookkeeping (no models, no servers)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from lesionseg.errors import DuplicateJobError, InputError, JobNotFoundError, PushError
from lesionseg.pacs.dicomweb import StowClient, push_due
from lesionseg.pacs.job_store import JobStore, backoff_delay
from lesionseg.settings import Settings
from tests.pacs import ct_small, part10


@pytest.fixture
def files(tmp_path) -> list[Path]:
    paths = []
    for i in range(3):
        path = tmp_path / f"upload-{i}"
        path.write_bytes(b"DICM" + bytes([i]) * 100)
        paths.append(path)
    return paths


def test_submit_round_trip_keeps_inputs_in_order(tmp_path, files):
    store = JobStore(tmp_path / "jobs")
    job = store.submit(files, transaction_id="tx-1", window="abdomen", push=True, now=100.0)
    assert (job.state, job.transaction_id, job.window) == ("queued", "tx-1", "abdomen")
    assert job.n_files == 3
    assert (job.push_state, job.created_at) == ("pending", 100.0)
    for upload in files:
        upload.unlink()  # the store owns its copies: the uploads may vanish after the 202
    reopened = JobStore(tmp_path / "jobs")
    assert reopened.get(job.id) == job
    assert reopened.find("tx-1") == job
    assert [p.read_bytes()[4] for p in reopened.inputs(job.id)] == [0, 1, 2]
    assert reopened.find("tx-unknown") is None
    with pytest.raises(JobNotFoundError):
        reopened.get("nope")


def test_duplicate_transaction_id_is_refused_and_keeps_the_first(tmp_path, files):
    store = JobStore(tmp_path)
    first = store.submit(files[:1], transaction_id="tx-dup")
    with pytest.raises(DuplicateJobError) as caught:
        store.submit(files[1:], transaction_id="tx-dup")
    assert caught.value.job_id == first.id
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [first.id]
    assert store.submit(files[1:]).transaction_id is None  # no id: never a duplicate
    assert store.submit(files[1:]).id != first.id


def test_concurrent_duplicates_accept_exactly_one(tmp_path, files):
    store = JobStore(tmp_path)
    outcomes: list[str] = []

    def submit() -> None:
        try:
            outcomes.append(store.submit(files, transaction_id="tx-race").id)
        except DuplicateJobError as exc:
            outcomes.append(f"duplicate of {exc.job_id}")

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [o for o in outcomes if not o.startswith("duplicate")]
    assert len(accepted) == 1, outcomes
    assert outcomes.count(f"duplicate of {accepted[0]}") == 3, outcomes


@pytest.mark.parametrize("bad", ["", "x" * 129, "tab\there"])
def test_bad_submissions_are_input_errors(tmp_path, files, bad):
    store = JobStore(tmp_path)
    with pytest.raises(InputError):
        store.submit(files, transaction_id=bad)
    with pytest.raises(InputError, match="no files"):
        store.submit([])


def test_claim_complete_and_restart_requeues_running(tmp_path, files):
    store = JobStore(tmp_path)
    a = store.submit(files[:1], now=1.0)
    b = store.submit(files[1:], now=2.0)
    assert store.claim_next(now=3.0).id == a.id  # oldest first
    assert store.claim_next(now=4.0).id == b.id
    assert store.claim_next(now=4.5) is None  # both held (leases until 63 and 64)
    store.complete(a.id, b"SEG-BYTES", {"frames": 1}, now=5.0)
    (tmp_path / ".incoming-deadbeef").mkdir()  # a submission cut off before its 202

    restarted = JobStore(tmp_path)  # the service died while b was running
    assert restarted.recover() == 1
    assert not (tmp_path / ".incoming-deadbeef").exists()
    assert restarted.get(b.id).state == "queued" and restarted.get(b.id).started_at is None
    done = restarted.get(a.id)
    assert (done.state, done.finished_at, done.push_state) == ("done", 5.0, "none")
    assert restarted.result_path(a.id).read_bytes() == b"SEG-BYTES"
    assert restarted.summary(a.id) == {"frames": 1}
    assert restarted.claim_next().id == b.id


def test_failure_reason_is_kept(tmp_path, files):
    store = JobStore(tmp_path)
    job = store.submit(files, push=True)
    store.claim_next()
    failed = store.fail(job.id, "not a DICOM file: file 2 has no DICM preamble")
    assert failed.state == "failed" and "file 2" in failed.reason
    assert failed.push_state == "none"  # nothing to push
    assert JobStore(tmp_path).get(job.id).reason == failed.reason
    assert json.loads(json.dumps(failed.to_dict()))["reason"] == failed.reason


def test_backoff_schedule_doubles_up_to_the_cap():
    assert [backoff_delay(n, 2.0, 30.0) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]
    assert backoff_delay(10_000, 0.5, 300.0) == 300.0


class FakeStow:
    """Stands in for a DICOMweb server: fails with the queued errors, then stores."""

    url = "fake://stow"

    def __init__(self, errors: list[PushError]) -> None:
        self.errors = errors
        self.stored: list[bytes] = []

    def store(self, instances):
        if self.errors:
            raise self.errors.pop(0)
        self.stored.extend(instances)


def test_push_bookkeeping_backs_off_and_lands_once(tmp_path, files):
    settings = Settings(push_initial_delay_s=2.0, push_max_delay_s=5.0)
    store = JobStore(tmp_path)
    job = store.submit(files, push=True)
    store.claim_next()
    assert store.due_pushes(now=0.0) == []  # not done yet: nothing to push
    store.complete(job.id, b"SEG", {}, now=10.0)
    down = PushError("DICOMweb server unreachable", retryable=True)
    stow = FakeStow([down, down, PushError("HTTP 503", retryable=True, retry_after_s=9), down])

    now, schedule = 10.0, []
    while (pushed := store.get(job.id)).push_state != "pushed":
        assert push_due(store, stow, settings, now=now), f"nothing was due at {now}"
        record = store.get(job.id)
        assert push_due(store, stow, settings, now=now) == []  # not due again before the delay
        schedule.append(record.push_next_at - now if record.push_next_at else None)
        now = record.push_next_at or now
        assert store.result_path(job.id).read_bytes() == b"SEG"  # never dropped
    # 2, 4, then the server's Retry-After (9 > 5), then the cap; the 5th try stores it
    assert schedule == [2.0, 4.0, 9.0, 5.0, None]
    assert (pushed.push_attempts, pushed.push_error, pushed.pushed_at) == (5, None, now)
    assert stow.stored == [b"SEG"]
    assert push_due(store, stow, settings, now=now + 1000) == []  # pushed exactly once


def test_permanent_push_failure_stops_retrying_and_keeps_the_result(tmp_path, files):
    store = JobStore(tmp_path)
    job = store.submit(files, push=True)
    store.claim_next()
    store.complete(job.id, b"SEG", {}, now=0.0)
    stow = FakeStow([PushError("HTTP 400 Bad Request", retryable=False)])
    (record,) = push_due(store, stow, Settings(), now=0.0)
    assert (record.push_state, record.push_attempts, record.push_error) == (
        "failed",
        1,
        "HTTP 400 Bad Request",
    )
    assert push_due(store, stow, Settings(), now=1e12) == []
    assert store.result_path(job.id).read_bytes() == b"SEG"


def test_a_claimed_push_is_not_sent_twice(tmp_path, files):
    store = JobStore(tmp_path)
    job = store.submit(files, push=True)
    store.claim_next()
    store.complete(job.id, b"SEG", {}, now=0.0)
    (due,) = store.due_pushes(now=0.0)
    assert store.claim_push(due, lease_s=60, now=0.0)
    assert not store.claim_push(due, lease_s=60, now=0.0)  # a second pusher loses
    assert store.due_pushes(now=59.0) == []


def respond(status: int, body: dict | None = None, headers: dict | None = None):
    return httpx.MockTransport(lambda request: httpx.Response(status, json=body, headers=headers))


@pytest.mark.parametrize(
    ("status", "retryable"), [(400, False), (403, False), (404, False), (408, True), (429, True),
                              (500, True), (502, True), (503, True)],
)  # fmt: skip
def test_stow_status_codes_are_classified(monkeypatch, status, retryable):
    monkeypatch.setattr(httpx, "post", _post_via(respond(status, {}, {"Retry-After": "7"})))
    with pytest.raises(PushError) as caught:
        StowClient("http://pacs/dicom-web").store([part10(ct_small())])
    assert caught.value.retryable is retryable
    assert str(status) in str(caught.value)
    assert caught.value.retry_after_s == 7


def test_stow_failed_sop_in_a_200_answer_is_a_failure(monkeypatch):
    uid = str(ct_small().SOPInstanceUID)
    failed = {
        "00081198": {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [0xC000]}}
        ]},
        "00081199": {"vr": "SQ"},
    }  # fmt: skip
    monkeypatch.setattr(httpx, "post", _post_via(respond(200, failed)))
    with pytest.raises(PushError, match=r"did not store 1 of 1 .*0xC000") as caught:
        StowClient("http://pacs/dicom-web").store([part10(ct_small())])
    assert not caught.value.retryable
    stored = {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [uid]}}]}}
    sent = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=stored)

    data = part10(ct_small())
    client = StowClient("http://pacs/dicom-web/", authorization="Bearer t0ken")
    monkeypatch.setattr(httpx, "post", _post_via(httpx.MockTransport(server)))
    assert client.store([data]).stored == (uid,)
    (request,) = sent
    assert str(request.url) == "http://pacs/dicom-web/studies"
    assert request.headers["Authorization"] == "Bearer t0ken"
    content_type = request.headers["Content-Type"]
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    boundary = content_type.rsplit("=", 1)[1].encode()
    part = b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"
    assert request.content == part + b"--" + boundary + b"--\r\n"


def _post_via(transport: httpx.MockTransport):
    def post(url, **kwargs):
        with httpx.Client(transport=transport) as client:
            return client.post(url, **kwargs)

    return post
