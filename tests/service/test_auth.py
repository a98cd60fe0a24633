"""API keys (service/auth.py): parsing the keys, the middleware's decisions and the settings
that open routes, in-process on a small app (fast). The real service, its routes, jobs and
logs: tests/service/test_auth_serve.py."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import subprocess
import threading
import time
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from lesionseg.settings import Settings
from service.auth import (
    CLOSED_403,
    LOOPBACK_ONLY,
    OPEN_WARNING,
    ApiKeyMiddleware,
    ApiKeys,
    ApiKeysError,
    api_key_options,
    key_id,
)
from tests.docs_pages import REPO, code_lines

KEY_A = "alpha-key-0123456789abcdef"
KEY_B = "bravo-key-0123456789abcdef"
KEY_C = "charlie-key-0123456789abcd"
KEY_D = "delta-key-0123456789abcdef"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys"
    path.write_text(text)
    return path


def test_keys_from_both_sources_plain_and_as_digests(tmp_path):
    path = keys_file(tmp_path, f"# team A\n{KEY_C}  # a comment\n\n   \nsha256:{sha(KEY_D)}\n")
    settings = Settings(api_keys=f" {KEY_A} ,sha256:{sha(KEY_B).upper()},", api_keys_file=path)
    keys = ApiKeys.from_settings(settings)
    assert len(keys.digests) == 4
    for key in (KEY_A, KEY_B, KEY_C, KEY_D):
        assert keys.identify(key) == sha(key)[:16]
    for wrong in ("", KEY_A + "x", KEY_A.upper(), sha(KEY_B)):  # a digest is not a key
        assert keys.identify(wrong) is None
    assert ApiKeys.from_settings(Settings()) is None


@pytest.mark.parametrize(
    ("api_keys", "file_text", "message"),
    [
        (None, None, "no such file"),
        (None, "# nothing but comments\n\n", "holds no key"),
        (" , ,", "", "LESIONSEG_API_KEYS is set but holds no key"),
        ("short-secret", "", "LESIONSEG_API_KEYS, entry 1: a key of 12 characters is too short"),
        (None, f"{KEY_A}\nwith space inside the key\n", "line 2: a key may hold only"),
        # `openssl rand -hex 32`, or a digest stored bare as before issue 23: not guessed
        (f"{KEY_A},{'0f' * 32}", "", "entry 2: 64 hex digits may be a key or a SHA-256 digest"),
        (None, f"{sha(KEY_A)}\n", "line 1: 64 hex digits may be a key or a SHA-256 digest"),
    ],
)
def test_unusable_keys_stop_the_start_with_a_clear_message(tmp_path, api_keys, file_text, message):
    path = tmp_path / "missing" if file_text is None else keys_file(tmp_path, file_text)
    if api_keys is not None and not file_text:
        path = None
    with pytest.raises(ApiKeysError, match=message) as caught:
        ApiKeys.from_settings(Settings(api_keys=api_keys, api_keys_file=path))
    for secret in (KEY_A, "short-secret", "with space", "0f" * 32, sha(KEY_A)):
        assert secret not in str(caught.value)  # a message never quotes a key


def test_the_security_page_makes_a_hex_key_that_works_by_its_digest(tmp_path):
    """docs/security.md's first two lines: `openssl rand -hex 32` (64 hex digits, which bare
    would be refused) stored as sha256:<digest> in keys.txt."""
    page = code_lines(REPO / "docs" / "security.md")
    lines = [line for line in page if line.startswith(("KEY=", 'echo "sha256:'))]
    assert len(lines) == 2, lines
    script = "\n".join([*lines, 'printf %s "$KEY"'])
    made = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    key = made.stdout
    assert made.returncode == 0 and len(key) == 64, made.stderr
    keys = ApiKeys.from_settings(Settings(api_keys_file=tmp_path / "keys.txt"))
    assert keys.identify(key) == sha(key)[:16]
    assert keys.identify(sha(key)) is None  # the stored digest is no key
    with pytest.raises(ApiKeysError, match="64 hex digits may be a key or a SHA-256 digest"):
        ApiKeys.from_settings(Settings(api_keys=key))  # the same key bare: refused, not guessed


def test_an_unreadable_keys_file_stops_the_start(tmp_path):
    directory = tmp_path / "a-directory"  # unreadable as a file, by root too
    directory.mkdir()
    with pytest.raises(ApiKeysError, match=r"unreadable \(Is a directory\)"):
        ApiKeys.from_settings(Settings(api_keys_file=directory))
    binary = tmp_path / "keys.bin"
    binary.write_bytes(b"\xff\xfe" + KEY_A.encode())
    with pytest.raises(ApiKeysError, match=r"unreadable \(not UTF-8 text\)"):
        ApiKeys.from_settings(Settings(api_keys_file=binary))


def small_app(seen: list, gate: threading.Event | None = None) -> Starlette:
    async def record(request):
        seen.append((request.url.path, key_id(request.scope), dict(request.scope["state"])))
        if gate is not None:
            await asyncio.to_thread(gate.wait, 30)
        return JSONResponse({"ok": True})

    paths = ["/livez", "/readyz", "/metrics", "/segment", "/jobs", "/viewer", "/", "/docs"]
    paths += ["/viewer/config.json", "/viewer/viewer.js"]
    return Starlette(routes=[Route(p, record, methods=["GET", "POST"]) for p in paths])


def guarded(settings: Settings, seen: list, gate=None, client="127.0.0.1") -> TestClient:
    """``settings``' middleware around :func:`small_app`, called from the address ``client``."""
    from service.app import LesionSeg

    app = ApiKeyMiddleware(small_app(seen, gate), **api_key_options(settings, LesionSeg))
    return TestClient(app, client=(client, 50000))


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_401_without_a_valid_key_and_the_key_id_seen_by_the_app():
    seen: list = []
    client = guarded(Settings(api_keys=KEY_A), seen)
    for path in ("/livez", "/readyz"):
        assert client.get(path).status_code == 200
    for path in ("/metrics", "/segment", "/jobs", "/viewer", "/", "/docs", "/viewer/viewer.js"):
        for headers, challenge in (
            ({}, "Bearer"),
            (bearer("not-the-key-0123456789"), 'Bearer error="invalid_token"'),
            ({"Authorization": f"Basic {KEY_A}"}, "Bearer"),  # only the Bearer scheme
        ):
            response = client.get(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["WWW-Authenticate"] == challenge
            assert set(response.json()) == {"error"}
        assert client.get(path, headers={"authorization": f"bearer {KEY_A}"}).status_code == 200
    # Reached the app: the health checks without an identity, the others with the key's id,
    # never the key itself.
    assert [s[:2] for s in seen[:2]] == [("/livez", None), ("/readyz", None)]
    assert {s[1] for s in seen[2:]} == {sha(KEY_A)[:16]}
    assert KEY_A not in repr(seen)


def test_metrics_public_opens_metrics_only():
    seen: list = []
    client = guarded(Settings(api_keys=KEY_A, metrics_public=True), seen)
    assert client.get("/metrics").status_code == 200
    assert client.get("/segment").status_code == 401
    assert guarded(Settings(api_keys=KEY_A), seen).get("/metrics").status_code == 401


def test_viewer_public_opens_the_page_files_not_its_data():
    seen: list = []
    client = guarded(Settings(api_keys=KEY_A, viewer_public=True), seen)
    for path in ("/", "/viewer", "/viewer/viewer.js"):
        assert client.get(path).status_code == 200, path
    for path in ("/viewer/config.json", "/segment", "/docs", "/metrics"):
        assert client.get(path).status_code == 401, path


@pytest.mark.parametrize("client", ["127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1"])
def test_without_keys_loopback_clients_pass_and_one_line_says_so(caplog, client):
    seen: list = []
    with (
        caplog.at_level(logging.WARNING, logger="lesionseg.auth"),
        guarded(Settings(max_requests_per_key=1), seen, client=client) as test_client,
    ):
        assert test_client.get("/segment").status_code == 200
        assert test_client.get("/metrics").status_code == 200
    assert [r.getMessage() for r in caplog.records] == [LOOPBACK_ONLY]
    assert [s[1] for s in seen] == [None, None]  # no owner for jobs


@pytest.mark.parametrize("client", ["203.0.113.7", "10.0.0.2", "::ffff:10.0.0.2", "testclient"])
def test_without_keys_other_clients_get_403_unless_anonymous_is_allowed(caplog, client):
    """The defence behind the start-up refusal: a bind misjudged as loopback still serves
    nobody else."""
    seen: list = []
    closed = guarded(Settings(), seen, client=client)
    for path in ("/livez", "/segment", "/metrics", "/viewer/viewer.js"):
        response = closed.get(path)
        assert response.status_code == 403, path
        assert response.json() == {"error": CLOSED_403}
    assert "LESIONSEG_ALLOW_ANONYMOUS=true" in CLOSED_403 and seen == []
    with (
        caplog.at_level(logging.WARNING, logger="lesionseg.auth"),
        guarded(Settings(allow_anonymous=True), seen, client=client) as opened,
    ):
        assert opened.get("/segment").status_code == 200
    assert [r.getMessage() for r in caplog.records] == [OPEN_WARNING]
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING, logger="lesionseg.auth"),
        guarded(Settings(api_keys=KEY_A, allow_anonymous=True), seen, client=client) as keyed,
    ):
        assert keyed.get("/segment").status_code == 401  # keys set: allow_anonymous is moot
        assert keyed.get("/segment", headers=bearer(KEY_A)).status_code == 200
    assert caplog.records == []  # nothing to say with keys


def test_per_key_limit_on_the_model_routes():
    seen: list = []
    gate = threading.Event()
    client = guarded(Settings(api_keys=f"{KEY_A},{KEY_B}", max_requests_per_key=2), seen, gate)
    answers: list[int] = []

    def send(path: str, key: str) -> threading.Thread:
        def post():
            answers.append(client.post(path, headers=bearer(key)).status_code)

        thread = threading.Thread(target=post)
        thread.start()
        return thread

    def until_in_app(n: int) -> None:
        deadline = time.monotonic() + 30
        while len(seen) < n:  # the requests wait on the gate, in the app
            assert time.monotonic() < deadline, seen
            time.sleep(0.01)

    held = [send("/segment", KEY_A), send("/segment", KEY_A)]
    try:
        until_in_app(2)
        refused = client.post("/segment", headers=bearer(KEY_A))
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        assert "LESIONSEG_MAX_REQUESTS_PER_KEY=2" in refused.json()["error"]
        # Another key, and the routes that are not model routes, are not limited.
        held += [send("/segment", KEY_B), send("/jobs", KEY_A)]
        until_in_app(4)
    finally:
        gate.set()
        for thread in held:
            thread.join()
    assert answers == [200] * 4
    assert client.post("/segment", headers=bearer(KEY_A)).status_code == 200  # released
