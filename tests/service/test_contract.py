"""The HTTP contract (service/openapi.py, service/errors.py): /docs.json is valid OpenAPI 3.1
and lists every route the app answers; the service's own field checks agree with the schemas
they enforce; one error body everywhere; and schemathesis, with all its default checks, finds
nothing against a real `bentoml serve` (integration)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema
import jsonschema_rs
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31
from starlette.routing import Mount, Route

from lesionseg.errors import InputError
from lesionseg.settings import Settings
from service.errors import error_body
from service.forms import (
    BOXES,
    FALSE_WORDS,
    TRANSACTION_ID_PATTERN,
    TRUE_WORDS,
    check_boxes,
    check_transaction_id,
    check_window,
    window_schema,
    words_pattern,
)
from service.launcher import REPO_ROOT
from service.openapi import contract

SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")
KEY = "contract-test-key-0123456789"
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}  # HEAD answers as GET; not documented


@pytest.fixture(scope="module")
def service():
    from service.app import LesionSeg

    return LesionSeg


def app_routes(service) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every route of the ASGI app, mounted apps included."""
    found = set()

    def walk(routes, prefix=""):
        for route in routes:
            if isinstance(route, Route):
                for method in (route.methods or {"GET"}) & METHODS:
                    found.add((prefix + route.path, method.lower()))
            elif isinstance(route, Mount) and getattr(route.app, "routes", None) is not None:
                walk(route.app.routes, prefix + route.path)
            elif isinstance(route, Mount):  # static files: any path below it
                found.add((f"{route.path}/{{path}}", "get"))

    walk(service.to_asgi().routes)
    return found


def test_contract_is_valid_openapi_and_lists_every_route(service):
    spec = contract(service, Settings())
    jsonschema.validators.validator_for(OPENAPI_31)(OPENAPI_31).validate(spec)
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert documented == app_routes(service)
    # every $ref resolves
    for ref in set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(spec))):
        assert ref in spec["components"]["schemas"], ref
    # every error status answers the one error body
    for path, ops in spec["paths"].items():
        for op in ops.values():
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (path, status)


def test_contract_marks_keys_and_the_window_presets():
    from service.app import LesionSeg

    presets = {"x": (1.0, 2.0)}
    settings = Settings(api_keys="k" * 20, metrics_public=True, window_presets=presets,
                        default_window="x")  # fmt: skip
    spec = contract(LesionSeg, settings)
    assert spec["security"] == [{"apiKey": []}]
    public = {
        p for p, ops in spec["paths"].items() for op in ops.values() if op.get("security") == []
    }
    assert public == {"/livez", "/readyz", "/metrics"}
    window = spec["paths"]["/segment"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert window["schema"]["properties"]["window"]["examples"] == ["x", "40,400"]
    assert "security" not in contract(LesionSeg, Settings())


def valid(schema: dict, value) -> bool:
    """JSON Schema's own reading of a pattern (ECMA-262: '$' is the end of the text, not
    Python's 'before a final newline'), as schemathesis checks it."""
    return jsonschema_rs.validator_for(schema).is_valid(value)


def accepts(check, *args) -> bool:
    try:
        check(*args)
    except InputError:
        return False
    return True


@pytest.mark.parametrize(
    "window",
    ["", "abdomen", "lung", "40,400", "-600,1500", "40.5,0.5", "0,1", "40,0", "40,-1",
     "ABDOMEN", " lung", "40, 400", "1e3,5", "40", "nan,1", "40,400\n", "abdomen,1", " ",
     "\u2003\t", "\ufeff", "\x1c"],
)  # fmt: skip
def test_the_job_window_check_is_the_contract(window):
    settings = Settings()
    assert accepts(check_window, window, settings) == valid(window_schema(settings), window)


@pytest.mark.parametrize("value", ["", "study-1", "x" * 128, "x" * 129, "é", "a\tb", "a\nb", "~ !"])
def test_the_transaction_id_check_is_the_contract(value):
    schema = {"type": "string", "pattern": TRANSACTION_ID_PATTERN}
    assert accepts(check_transaction_id, value) == valid(schema, value)


@pytest.mark.parametrize(
    "boxes",
    [[], [[1, 2, 3, 4]], [[1, 2, 3, 4, 0]], [[1, 2, 3]], [[1, 2, 3, 4, 5, 6]], [[1, 2, True, 4]],
     [["1", 2, 3, 4]], [1, 2, 3, 4], {"a": 1}],
)  # fmt: skip
def test_the_job_boxes_check_is_the_contract(boxes):
    assert accepts(check_boxes, boxes) == valid(BOXES, boxes)


@pytest.mark.parametrize(
    "value",
    ["", "true", " TRUE ", "Yes", "on", "1", "0", "off", "No", "maybe", "tru", "  ", "true false",
     "2", "\x1ctrue", "\ufefftrue", "\u3000no\n"],
)  # fmt: skip
def test_the_flag_pattern_is_what_jobs_reads(value):
    from service.job_requests import flag, text

    def read(v):
        return flag(text({"f": v}, "f"), "f")

    pattern = {"type": "string", "pattern": words_pattern(TRUE_WORDS + FALSE_WORDS)}
    assert accepts(read, value) == valid(pattern, value)


def test_space_is_what_strip_strips():
    from service.forms import SPACE

    pattern = re.compile(SPACE)
    assert [c for c in map(chr, range(0x110000)) if pattern.fullmatch(c)] == [
        c for c in map(chr, range(0x110000)) if c.isspace()
    ]


def test_error_bodies():
    bentoml_validation = json.dumps(
        {
            "error": "2 validation errors for Input",
            "detail": [
                {"type": "missing", "loc": ["image"], "msg": "Field required"},
                {"type": "le", "loc": ["max_lesions"], "msg": "Input should be <= 1000"},
            ],
        }
    ).encode()
    fixed = error_body(400, bentoml_validation, method="POST", path="/segment")
    assert fixed["error"] == (
        "invalid fields 'image': Field required; 'max_lesions': Input should be <= 1000"
    )
    assert fixed["detail"][0]["loc"] == ["image"]
    # BentoML's 4xx answer is a one-element list
    assert error_body(415, b'[{"error": "no pickle"}]', method="POST", path="/x") == {
        "error": "no pickle"
    }
    assert error_body(404, b"Not Found", method="GET", path="/nope") == {
        "error": "not found: no route or resource at GET /nope"
    }
    assert error_body(405, b"Method Not Allowed", method="PUT", path="/segment", allow="POST") == {
        "error": "method PUT is not allowed on /segment; use POST"
    }
    assert error_body(503, b"Service is not ready", method="GET", path="/readyz") == {
        "error": "Service is not ready"
    }
    assert error_body(503, b'{"detail": "x"}', method="GET", path="/") == {"error": "x"}
    assert error_body(400, b'{"error": "bad window"}', method="POST", path="/segment") is None


@pytest.fixture(scope="module")
def server(model_store, tmp_path_factory):
    """A real `bentoml serve` with API keys on, small limits so that no generated request
    costs much."""
    from service.launcher import running_server

    root = tmp_path_factory.mktemp("contract")
    env = {
        "LESIONSEG_API_KEYS": KEY,
        "LESIONSEG_JOBS_DIR": str(root / "jobs"),
        "LESIONSEG_MAX_FRAMES": "4",
        "LESIONSEG_MAX_IMAGE_PIXELS": str(256 * 256),
    }
    log = root / "serve.log"
    with running_server(env, log) as url:
        yield url, log


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_schemathesis_finds_nothing(server):
    """schemathesis 4.32 with every default check, 100 examples per operation (fewer where the
    schema allows fewer: a GET without parameters is one request), a fixed seed; its only
    configuration (schemathesis.toml): 400 counts as an acceptable answer to schema-valid data
    on the routes whose success depends on the image bytes. Also: no traceback in the log."""
    url, log = server
    auth = {"Authorization": f"Bearer {KEY}"}
    spec = httpx.get(f"{url}/docs.json", headers=auth, timeout=30).json()
    n_operations = sum(len(ops) for ops in spec["paths"].values())
    cli = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [str(cli), "--config-file", str(SCHEMATHESIS_CONFIG), "run", f"{url}/docs.json",
         "-H", f"Authorization: Bearer {KEY}"],
        capture_output=True, text=True, timeout=560, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},  # the config's hooks module
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    # every operation but GET /docs.json, which schemathesis leaves out when it loads the
    # schema from it
    tested = n_operations - 1
    assert f"Selected: {tested}/{tested}" in output, output[-3000:]
    assert f"Tested: {tested}" in output, output[-3000:]
    assert re.search(r"\d+ passed", output), output[-3000:]
    server_log = log.read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[-5000:]
    assert KEY not in server_log


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_every_error_has_the_one_body(server):
    url, _ = server
    auth = {"Authorization": f"Bearer {KEY}"}
    cases = [
        httpx.post(f"{url}/segment", headers=auth, data={"max_lesions": "0"}),
        httpx.post(f"{url}/segment", headers=auth, data={"image": "http://127.0.0.1/x"}),
        httpx.post(f"{url}/segment", headers={**auth, "Content-Type": "multipart/form-data"}),
        httpx.get(f"{url}/no-such-route", headers=auth),
        httpx.delete(f"{url}/segment", headers=auth),
        httpx.get(f"{url}/jobs/unknown", headers=auth),
        httpx.get(f"{url}/segment"),
    ]
    statuses = [r.status_code for r in cases]
    assert statuses == [400, 400, 400, 404, 405, 404, 401]
    for response in cases:
        body = response.json()
        assert isinstance(body["error"], str) and body["error"], body
        assert set(body) <= {"error", "detail"}, body
    assert "max_lesions" in cases[0].json()["error"] and "image" in cases[0].json()["error"]
    assert "does not download" in cases[1].json()["error"]
