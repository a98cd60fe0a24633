"""API keys in a real `bentoml serve` (BentoML's middleware order, its access log, real jobs):
401 on every route the app has but the health checks, the four forms of a key, jobs and
transaction ids per key, 429 per key, an unauthenticated upload refused before its body is read,
no key in the server's output; without keys loopback only, said once; a bad keys file stops the
start."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import socket
import subprocess
import time
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.routing import Mount

from lesionseg.datasets.examples import write_examples
from service.launcher import REPO_ROOT, running_server
from tests.docs_pages import curl_lines

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY_A = "alpha-key-0123456789abcdef"  # LESIONSEG_API_KEYS, plain
KEY_B = "bravo-key-0123456789abcdef"  # LESIONSEG_API_KEYS, as sha256:<digest>
KEY_C = "charlie-key-0123456789abcd"  # the keys file, plain
KEY_D = "delta-key-0123456789abcdef"  # the keys file, as sha256:<digest>
WRONG = "wrong-key-0123456789abcdef"
UNKNOWN_JOB = "0" * 32
SERIES = [REPO_ROOT / "data" / "examples" / "lits117-ct" / f"z{z}.dcm" for z in (109, 110, 111)]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def served(model_store, lits, tmp_path_factory):
    if not all(p.exists() for p in SERIES):  # `make data` writes them; a bare pytest run too
        write_examples(lits, SERIES[0].parent.parent, 110)
    root = tmp_path_factory.mktemp("auth")
    keys_file = root / "keys"
    keys_file.write_text(f"# rotated 2026-11\n{KEY_C}\n\nsha256:{sha(KEY_D)}  # ops\n")
    env = {
        "LESIONSEG_API_KEYS": f"{KEY_A},sha256:{sha(KEY_B)}",
        "LESIONSEG_API_KEYS_FILE": str(keys_file),
        "LESIONSEG_MAX_REQUESTS_PER_KEY": "1",
        "LESIONSEG_JOBS_DIR": str(root / "jobs"),
    }
    with running_server(env, root / "serve.log") as url:
        yield url, root / "serve.log"


def app_routes() -> list[tuple[str, str]]:
    """(method, path) of every route of the service's real app, mounted apps included;
    path parameters filled with an unknown id, static mounts with a file name."""
    from service.app import LesionSeg

    found = []

    def walk(routes, prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount) and not route.routes:  # static files
                found.append(("GET", f"{prefix}{route.path}/main.js"))
            elif getattr(route, "routes", None):
                walk(route.routes, prefix + getattr(route, "path", ""))
            else:
                path = re.sub(r"\{[^}]+\}", UNKNOWN_JOB, prefix + route.path)
                found.extend((m, path) for m in sorted(route.methods - {"HEAD"}))

    walk(LesionSeg.to_asgi().routes, "")
    return sorted(set(found))


@pytest.mark.timeout(600)
def test_every_route_but_the_health_checks_needs_a_key(served):
    url, _ = served
    routes = app_routes()
    paths = {p for _, p in routes}
    assert {"/segment", "/jobs", f"/jobs/{UNKNOWN_JOB}/result", "/viewer", "/docs.json"} <= paths
    assert {"/metrics", "/livez", "/readyz"} <= paths and len(routes) >= 20
    for method, path in routes:
        for headers in ({}, auth(WRONG), {"Authorization": f"Basic {KEY_A}"}):
            response = httpx.request(method, f"{url}{path}", headers=headers, timeout=30)
            if path in ("/livez", "/readyz"):
                assert response.status_code == 200, (method, path)
                continue
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert set(response.json()) == {"error"}, response.text


@pytest.mark.timeout(300)
@pytest.mark.parametrize("key", [KEY_A, KEY_B, KEY_C, KEY_D])
def test_keys_from_both_sources_plain_or_as_digests(served, key):
    url, _ = served
    for path in ("/metrics", "/viewer/config.json", "/docs.json", "/viewer"):
        response = httpx.get(f"{url}{path}", headers=auth(key), timeout=30)
        assert response.status_code == 200, (path, response.text)
    assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401  # not public by default


def submit(url: str, key: str, **fields) -> httpx.Response:
    """The example CT series (3 slices with lesions, so that its SR has measurements)."""
    files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in SERIES]
    return httpx.post(f"{url}/jobs", files=files, data=fields, headers=auth(key), timeout=60)


@pytest.mark.timeout(600)
def test_jobs_and_transaction_ids_belong_to_the_key_that_submitted_them(served):
    url, _ = served
    first = submit(url, KEY_A, transaction_id="study-1", sr="true")
    assert first.status_code == 202, first.text
    job = first.json()
    # Another key may use the same transaction id: its own job, no collision, nothing seen.
    other = submit(url, KEY_B, transaction_id="study-1")
    assert other.status_code == 202, other.text
    assert other.json()["id"] != job["id"]
    again = submit(url, KEY_A, transaction_id="study-1")
    assert (again.status_code, again.json()["job_id"]) == (409, job["id"])

    def get(path: str, key: str) -> httpx.Response:
        return httpx.get(f"{url}{path}", headers=auth(key), timeout=30)

    deadline = time.monotonic() + 300
    while (status := get(job["location"], KEY_A).json())["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status["state"] == "done", status
    assert "owner" not in status
    for path in (job["location"], status["result"], status["sr"]):
        assert get(path, KEY_A).status_code == 200, path
        unknown = get(path.replace(job["id"], UNKNOWN_JOB), KEY_B)
        for key in (KEY_B, KEY_C):  # as if the job did not exist: the same 404, nothing else
            response = get(path, key)
            assert response.status_code == 404, (path, key)
            assert response.text.replace(job["id"], UNKNOWN_JOB) == unknown.text
        assert httpx.get(f"{url}{path}", timeout=30).status_code == 401
    assert get(other.json()["location"], KEY_A).status_code == 404
    assert get(other.json()["location"], KEY_B).status_code == 200


def open_upload(url: str, length: int, key: str | None) -> socket.socket:
    """A POST /segment whose headers announce ``length`` bytes of body, of which 64 KiB are
    sent; the rest never is, so the request stays in flight until the socket closes."""
    address = urlsplit(url)
    sock = socket.create_connection((address.hostname, address.port), timeout=30)
    head = (
        f"POST /segment HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {length}\r\n"
        + (f"Authorization: Bearer {key}\r\n" if key else "")
        + "\r\n"
    )
    body = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    sock.sendall(head.encode() + body + b"\0" * 65536)
    return sock


def status_line(sock: socket.socket) -> str:
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {answer!r}"
        answer += chunk
    return answer.split(b"\r\n")[0].decode()


@pytest.mark.timeout(300)
def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(served):
    """Auth is the outermost of the service's middleware: a 2 GB upload without a key gets
    401 at once (not the upload limit's 413, not a wait for the body)."""
    url, _ = served
    sock = open_upload(url, 2_000_000_000, key=None)
    try:
        assert status_line(sock) == "HTTP/1.1 401 Unauthorized"
    finally:
        sock.close()


@pytest.mark.timeout(300)
def test_per_key_limit_on_synchronous_requests(served, lits_png):
    url, _ = served
    held = open_upload(url, 1_000_000, key=KEY_C)  # KEY_C's one request in flight
    try:
        files = {"image": ("ct.png", lits_png, "image/png")}
        # Until the server has passed the held request's headers on, KEY_C's slot is free and
        # a request is answered (200): ask again until the held one counts.
        deadline = time.monotonic() + 60
        while (
            refused := httpx.post(f"{url}/segment", files=files, headers=auth(KEY_C), timeout=120)
        ).status_code == 200:
            assert time.monotonic() < deadline, "the held request never took KEY_C's slot"
            time.sleep(0.5)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert "LESIONSEG_MAX_REQUESTS_PER_KEY=1" in refused.json()["error"]
        # Another key is not limited by KEY_C's request, nor are KEY_C's other routes.
        other = httpx.post(f"{url}/segment", files=files, headers=auth(KEY_D), timeout=120)
        assert other.status_code == 200, other.text
        assert httpx.get(f"{url}/metrics", headers=auth(KEY_C), timeout=30).status_code == 200
    finally:
        held.close()
    deadline = time.monotonic() + 30  # the abandoned upload ends, and its place is free
    while (
        answer := httpx.post(f"{url}/segment", files=files, headers=auth(KEY_C), timeout=120)
    ).status_code == 429:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.5)
    assert answer.status_code == 200, answer.text


@pytest.mark.timeout(300)
def test_docs_api_key_curl_line(served, tmp_path):
    """The security page's curl line (tests/service/test_docs_examples.py runs the others)."""
    url, _ = served
    (line,) = [line for _, line in curl_lines() if "Bearer $KEY" in line]
    command = line.replace("http://localhost:3000", url).replace("@data/", f"@{REPO_ROOT}/data/")
    for key, status in ((KEY_A, 200), (WRONG, 401)):
        argv = [a.replace("$KEY", key) for a in shlex.split(command)]
        argv[1:1] = ["-w", "\\n%{http_code}"]
        out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=True)
        body, code = out.stdout.rsplit("\n", 1)
        assert int(code) == status, out.stdout
        assert ("lesions" in json.loads(body)) == (status == 200), body


@pytest.mark.timeout(300)
def test_no_key_in_the_server_output(served):
    """Runs last in this module: everything above, keys right and wrong, has been logged."""
    url, log = served
    httpx.get(f"{url}/viewer/config.json", headers=auth(WRONG), timeout=30)
    time.sleep(1)
    output = log.read_text(errors="replace")
    assert re.search(r"/jobs.*202|202.*/jobs", output), "no access log to check"
    assert "401" in output
    for secret in (KEY_A, KEY_B, KEY_C, KEY_D, WRONG, "Bearer"):
        assert secret not in output, secret
    assert "authorization" not in output.lower()


@pytest.mark.timeout(300)
def test_without_keys_it_serves_loopback_and_one_line_says_so(model_store, tmp_path):
    """Closed by default, as `make serve` runs it (127.0.0.1, no keys): it starts, answers a
    loopback client, and says once how to open it (tests/service/test_closed.py: the refusal
    elsewhere; tests/service/test_auth.py: 403 to other clients)."""
    from service.auth import LOOPBACK_ONLY

    env = {"LESIONSEG_JOBS_DIR": str(tmp_path / "jobs")}
    with running_server(env, tmp_path / "serve.log", ready_path="/livez") as url:
        assert httpx.get(f"{url}/viewer/config.json", timeout=30).status_code == 200
    assert (tmp_path / "serve.log").read_text().count(LOOPBACK_ONLY) == 1


@pytest.mark.timeout(300)
def test_a_bad_keys_file_stops_the_start(model_store, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# all keys revoked\n")
    env = {"LESIONSEG_API_KEYS_FILE": str(keys_file), "LESIONSEG_JOBS_DIR": str(tmp_path)}
    serve = running_server(env, tmp_path / "serve.log", ready_path="/livez", timeout=120)
    with pytest.raises(RuntimeError, match="bentoml serve exited") as caught, serve:
        pass
    assert f"LESIONSEG_API_KEYS_FILE={keys_file}: the file holds no key" in str(caught.value)
