"""The soak's counting and verdicts, without a server: a request that goes missing fails the run.

The whole soak against a real server (60 s) runs in tests/service/test_soak.py."""

from __future__ import annotations

import itertools

import httpx
import pytest

from benchmarks.ledger import Ledger
from benchmarks.soak_mix import WEIGHTS, Mix, expect, send
from benchmarks.soak_report import (
    answered_verdicts,
    latency_verdict,
    memory_rows,
    memory_verdict,
)


def test_every_request_answered_is_counted_by_status():
    ledger = Ledger()
    for status in (200, 200, 202):
        ledger.answer(ledger.send("/segment"), status)
    ledger.answer(ledger.send("/jobs/{id}", poll=True), 200)
    tally = ledger.tally()
    assert (tally.sent, tally.answered, tally.failed) == (4, 4, 0)
    assert tally.by_status == {200: 3, 202: 1}
    assert tally.complete
    assert all(v["passed"] for v in answered_verdicts(tally, scheduled=3, finished=3))


def test_a_request_sent_and_never_answered_fails_the_run():
    ledger = Ledger()
    ledger.answer(ledger.send("/segment"), 200)
    ledger.send("/segment (DICOM)")  # dropped: neither an answer nor an error ever came
    tally = ledger.tally()
    assert (tally.sent, tally.answered, tally.open, tally.failed) == (2, 1, 1, 1)
    assert not tally.complete
    assert "sent, never answered nor timed out (open)" in tally.messages
    verdicts = answered_verdicts(tally, scheduled=2, finished=2)
    assert [v["passed"] for v in verdicts] == [False, False]


def test_no_answer_and_a_failed_answer_are_failures():
    ledger = Ledger()
    ledger.no_answer(ledger.send("/segment"), "ReadTimeout: timed out")
    ledger.answer(ledger.send("/segment"), 503, "HTTP 503: busy")
    tally = ledger.tally()
    assert (tally.answered, tally.no_answer, tally.failed, tally.by_status) == (1, 1, 2, {503: 1})
    assert not tally.complete
    assert tally.messages == {"/segment: no answer: ReadTimeout: timed out": 1,
                              "/segment: HTTP 503: busy": 1}  # fmt: skip
    with pytest.raises(AssertionError, match="settled twice"):
        request = ledger.send("/segment")
        ledger.answer(request, 200)
        ledger.answer(request, 200)


def test_an_operation_that_never_finished_fails_the_run():
    ledger = Ledger()
    ledger.answer(ledger.send("/segment"), 200)
    verdicts = answered_verdicts(ledger.tally(), scheduled=2, finished=1)
    assert verdicts[0]["passed"] is False and "1 finished / 2" in verdicts[0]["measured"]


def test_requests_through_a_real_client_are_settled_whatever_happens():
    """send() over httpx: an answer, a failed answer, a timeout and a dropped connection."""

    def server(request: httpx.Request) -> httpx.Response:
        match request.url.path:
            case "/ok":
                return httpx.Response(200, json={})
            case "/busy":
                return httpx.Response(503, text="busy")
            case "/slow":
                raise httpx.ReadTimeout("timed out", request=request)
            case _:
                raise httpx.RemoteProtocolError("Server disconnected", request=request)

    ledger = Ledger()
    with httpx.Client(transport=httpx.MockTransport(server), base_url="http://test") as client:
        results = [
            send(client, ledger, path, "GET", path, expect(200))
            for path in ("/ok", "/busy", "/slow", "/dropped")
        ]
    assert [r is not None for r in results] == [True, False, False, False]
    tally = ledger.tally()
    assert (tally.sent, tally.answered, tally.no_answer, tally.open) == (4, 2, 2, 0)
    assert tally.failed == 3 and not tally.complete
    assert "/dropped: no answer: RemoteProtocolError: Server disconnected" in tally.messages


def test_windows_count_and_time_the_successful_requests():
    clock = iter([0.0, 0.5, 1.0, 1.2, 5.0, 5.4, 11.0, 13.0, 14.0, 14.1])
    ledger = Ledger(clock=lambda: next(clock))
    for status, problem, poll in [
        (200, "", False),  # sent 0.0, 500 ms
        (200, "", False),  # sent 1.0, 200 ms
        (200, "", True),  # a poll: counted, not timed
        (500, "HTTP 500", False),  # sent 11.0, failed
        (200, "", False),  # sent 14.0, ended after the run: in the last window
    ]:
        ledger.answer(ledger.send("/segment", poll=poll), status, problem)
    rows = ledger.windows(start=0.0, seconds=14.0, width=10.0)
    assert [(r["from_s"], r["to_s"]) for r in rows] == [(0, 10), (10, 14)]
    assert [(r["sent"], r["answered"], r["failed"]) for r in rows] == [(3, 3, 0), (2, 2, 1)]
    assert rows[0]["p50_ms"] == pytest.approx(350.0)
    assert rows[1]["p99_ms"] == pytest.approx(100.0)  # the only successful one of the window


def test_memory_growth_per_process_and_processes_that_came_or_went():
    samples = [(t, "runner", 7, 1000.0 + t) for t in range(0, 121, 2)]
    samples += [(t, "api", 8, 500.0) for t in range(0, 61, 2)]  # gone after 60 s
    rows = {r["process"]: r for r in memory_rows(samples, warm=60.0)}
    assert rows["runner"]["warm_mib"] == pytest.approx(1055.0)  # median of 50..60 s
    assert rows["runner"]["growth"] == pytest.approx(1115.0 / 1055.0 - 1, abs=1e-4)
    assert rows["api"]["end_mib"] is None and rows["api"]["growth"] is None
    verdict = memory_verdict(list(rows.values()), error="")
    assert verdict["passed"] is False and "api (pid 8)" in verdict["measured"]
    assert memory_verdict([rows["runner"]], error="")["passed"] is True
    grown = [{**rows["runner"], "growth": 0.12}]
    assert memory_verdict(grown, error="")["passed"] is False


def test_latency_verdict_compares_the_last_window_with_the_first_after_the_warmup():
    def windows(*p99s):
        return [{"from_s": 60 * i, "p99_ms": p} for i, p in enumerate(p99s)]

    assert latency_verdict(windows(900.0, 500.0, 510.0, 600.0), 120)["passed"] is True
    assert latency_verdict(windows(900.0, 500.0, 500.0, 601.0), 60)["passed"] is False
    assert latency_verdict(windows(900.0), 120)["passed"] is None  # too short: not measured


def test_the_mix_holds_every_operation_in_its_weight():
    names = list(itertools.islice(Mix.sequence(seed=3), 2 * sum(WEIGHTS.values())))
    assert {n: names.count(n) for n in WEIGHTS} == {n: 2 * w for n, w in WEIGHTS.items()}
