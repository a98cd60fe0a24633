"""Closed by default (issue 23): without API keys the service serves loopback only, refuses to
start bound elsewhere unless LESIONSEG_ALLOW_ANONYMOUS=true, and says so in one line; the one
rule (service/auth.py ``findings``) that the start, the middleware and the doctor share. The
middleware's 403: tests/service/test_auth.py; a loopback server without keys:
tests/service/test_auth_serve.py."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time

import click
import pytest

from lesionseg.settings import Settings
from service.auth import (
    LOOPBACK_ONLY,
    OPEN_WARNING,
    findings,
    refusal,
)
from service.bind import Serving, is_loopback, serving_host
from service.doctor import refuse_unsafe_start
from service.launcher import REPO_ROOT, free_port

KEY = "alpha-key-0123456789abcdef"
ACCESS_ENV = ("LESIONSEG_API_KEYS", "LESIONSEG_API_KEYS_FILE", "LESIONSEG_ALLOW_ANONYMOUS")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.1.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("unix:/tmp/x.sock", True),
        (None, True),  # an ASGI client of a Unix socket
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("fe80::1%eth0", False),
        ("testclient", False),  # a name is not resolved: not loopback
    ],
)
def test_which_hosts_are_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("settings", "host", "levels"),
    [
        (Settings(), "127.0.0.1", ["ok"]),
        (Settings(), None, ["ok"]),
        (Settings(), "0.0.0.0", ["unsafe"]),
        (Settings(), "::", ["unsafe"]),
        (Settings(allow_anonymous=True), "0.0.0.0", ["warn"]),
        (Settings(api_keys=KEY), "0.0.0.0", ["ok"]),
        (Settings(api_keys=KEY, allow_anonymous=True), "0.0.0.0", ["ok", "warn"]),
        (Settings(api_keys=KEY, metrics_public=True, viewer_public=True), "::", ["ok"] * 3),
    ],
)
def test_access_findings(settings, host, levels):
    found = findings(settings, host)
    assert [f.level for f in found if f.topic == "access"] == levels
    assert [f.topic for f in found][-1] == "logs"
    texts = " ".join(f.text for f in found)
    if "unsafe" in levels:
        assert found[0].text == refusal(host)
        assert {"LESIONSEG_API_KEYS", "LESIONSEG_API_KEYS_FILE"} <= set(texts.split())
        assert "LESIONSEG_ALLOW_ANONYMOUS=true" in texts
    if settings.api_keys is not None:
        assert "1 API key(s)" in texts
    assert (OPEN_WARNING in texts) == (levels == ["warn"])
    assert (LOOPBACK_ONLY in texts) == (levels == ["ok"] and settings.api_keys is None)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_log_format_is_a_finding(log_format):
    (logs,) = [f for f in findings(Settings(log_format=log_format), None) if f.topic == "logs"]
    assert logs.text.startswith(f"LESIONSEG_LOG_FORMAT={log_format}:")


def in_command(params: dict):
    """A click context as BentoML's `serve` (``host``) or its worker (``fd``) has at import."""
    context = click.Context(click.Command("serve"))
    context.params.update(params)
    return context


def test_serving_host_of_the_serve_command_and_of_a_worker(tmp_path):
    assert serving_host() is None  # no `bentoml serve`: a test, `bentoml build`
    with in_command({"host": "0.0.0.0", "port": 3000}):
        assert serving_host() == Serving("0.0.0.0", binding=True)
    with in_command({"host": None, "port": 3000}):  # no --host, no BENTOML_HOST
        from bentoml._internal.container import BentoMLContainer

        assert serving_host() == Serving(BentoMLContainer.http.host.get(), binding=True)
    for address, family in (("127.0.0.1", socket.AF_INET), ("0.0.0.0", socket.AF_INET)):
        with socket.socket(family) as bound:
            bound.bind((address, 0))
            with in_command({"fd": bound.fileno()}):
                assert serving_host() == Serving(address, binding=False)
            assert bound.getsockname()[0] == address  # the worker's socket stays open
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(tmp_path / "s.sock"))
        with in_command({"fd": bound.fileno()}):
            assert serving_host() == Serving(f"unix:{tmp_path / 's.sock'}", binding=False)


def test_refuse_unsafe_start_exits_before_binding_and_logs_in_a_worker(caplog):
    refuse_unsafe_start(Settings())  # not serving: nothing
    with in_command({"host": "0.0.0.0"}), pytest.raises(SystemExit) as caught:
        refuse_unsafe_start(Settings())
    assert caught.value.code == refusal("0.0.0.0")
    with in_command({"host": "0.0.0.0"}):
        refuse_unsafe_start(Settings(api_keys=KEY))
        refuse_unsafe_start(Settings(allow_anonymous=True))
    with in_command({"host": "127.0.0.1"}):
        refuse_unsafe_start(Settings())
    with socket.socket() as bound, caplog.at_level(logging.ERROR, logger="lesionseg.service"):
        bound.bind(("0.0.0.0", 0))
        with in_command({"fd": bound.fileno()}):
            refuse_unsafe_start(Settings())  # a worker: its socket is bound already
    assert [r.getMessage() for r in caplog.records] == [
        f"{refusal('0.0.0.0')} (the start should have refused; clients not on loopback get 403)"
    ]


@pytest.mark.parametrize("host_args", [["--host", "0.0.0.0"], []], ids=["0.0.0.0", "default"])
def test_bentoml_serve_without_keys_refuses_at_once_with_one_line(host_args):
    env = {k: v for k, v in os.environ.items() if k not in (*ACCESS_ENV, "BENTOML_HOST")}
    command = [sys.executable, "-m", "bentoml", "serve", "service.app:LesionSeg", *host_args]
    start = time.monotonic()
    out = subprocess.run(
        [*command, "--port", str(free_port())],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert lines == [refusal("0.0.0.0")]
    assert time.monotonic() - start < 60  # no workers started and restarted


def test_make_serve_binds_loopback_by_default():
    out = subprocess.run(
        ["make", "-n", "serve"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    (serve,) = [line for line in out.stdout.splitlines() if "bentoml serve" in line]
    assert "--host 127.0.0.1 " in serve, serve
