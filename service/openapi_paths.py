"""The hand-written part of the contract (service/openapi.py): the routes of the mounted apps
(``/jobs``, the viewer, ``/docs.json``) and BentoML's infrastructure routes, with the error
responses every route shares. tests/service/test_contract.py checks that, with the
``@bentoml.api`` routes, they are every route the app answers."""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import TypeAdapter

from lesionseg.pacs.job import (
    JOB_STATES,
    MAX_UID,
    PRIVATE_FIELDS,
    PUSH_STATES,
    UID_PATTERN,
    Job,
)
from lesionseg.settings import Settings
from service.forms import (
    BOXES,
    FALSE_WORDS,
    TRANSACTION_ID_PATTERN,
    TRUE_WORDS,
    window_schema,
    words_pattern,
)

REF = "#/components/schemas/{model}"
ERROR = {"$ref": "#/components/schemas/ErrorOut"}  # service.schemas.ErrorOut
# Why each status is sent; "auth": every route but /livez and /readyz (service.auth, when
# LESIONSEG_API_KEYS[_FILE] are set); "upload": every POST (service.limits).
REASONS = {
    400: "bad input: a missing or malformed field, or an upload that is not a readable image",
    401: "API keys are configured and the request has no valid `Authorization: Bearer` key",
    404: "no such job (or it belongs to another key), result or file",
    409: "the job exists already (same transaction_id) or is not done yet",
    413: "the request body is over the upload limit (LESIONSEG_MAX_UPLOAD_BYTES)",
    415: "a body type the API does not take (BentoML's internal pickle format)",
    429: "too many requests in flight for this API key (LESIONSEG_MAX_REQUESTS_PER_KEY)",
    500: "an internal error (a bug: see the service log)",
    503: "models still loading, overloaded, or the model runner unreachable: retry later",
    504: "no answer within the request deadline (LESIONSEG_REQUEST_TIMEOUT_S)",
    507: "the job store's disk is full",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}
BINARY = {"type": "string", "format": "binary"}


def error_responses(*statuses: int) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in statuses:
        response: dict[str, Any] = {
            "description": REASONS[status],
            "content": {"application/json": {"schema": ERROR}},
        }
        if status in (429, 503):
            response["headers"] = RETRY_AFTER
        responses[str(status)] = response
    return responses


def body(media_type: str, schema: dict, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": schema}}}


def plain(schema: Any) -> Any:
    """A pydantic schema -> OpenAPI: BentoML's files as binary strings, no ``default: null``."""
    if isinstance(schema, list):
        return [plain(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: plain(v) for k, v in schema.items() if not (k == "default" and v is None)}
    if out.get("type") == "file":
        out["type"] = "string"
    branches = out.get("anyOf", [])
    if len(branches) == 2 and branches[1] == {"type": "null"} and "type" in branches[0]:
        # X | None as one schema of type [X, null]: a generator breaking one branch of an
        # anyOf may write null, which the other accepts
        del out["anyOf"]
        out.update({**branches[0], "type": [branches[0]["type"], "null"]})
    return out


def _pushes(settings: Settings) -> bool:
    """Whether jobs can push their results: an archive (STOW-RS) or C-STORE destinations."""
    return bool(settings.dicomweb_url or settings.dicom_destinations)


def job_status_schema() -> dict[str, Any]:
    schema = plain(TypeAdapter(Job).json_schema())
    for name in (*PRIVATE_FIELDS, "title"):
        schema.get("properties", {}).pop(name, None)
        schema.pop(name, None)
    schema["required"] = [f.name for f in dataclasses.fields(Job) if f.name not in PRIVATE_FIELDS]
    props = schema["properties"]
    props["state"] = {"type": "string", "enum": list(JOB_STATES)}
    props["push_state"] = {"type": "string", "enum": list(PUSH_STATES)}
    props["location"] = {"type": "string", "description": "/jobs/{id}: poll it"}
    props["result"] = {"type": "string", "description": "done: /jobs/{id}/result, the SEG"}
    props["sr"] = {"type": "string", "description": "done with sr=true: /jobs/{id}/sr"}
    props["queue_position"] = {
        "type": "integer",
        "description": "queued: 1 = the next job a free worker runs",
    }
    props["expected_wait_s"] = {
        "type": ["integer", "null"],
        "description": "queued: seconds until it starts, estimated from recent jobs' run times "
        "and the workers running jobs now; null until a job has run",
    }
    props["summary"] = {
        "anyOf": [{"type": "object"}, {"type": "null"}],
        "description": "done: the SEG's UIDs and segments",
    }
    schema["required"].append("location")
    return schema


def job_routes(settings: Settings) -> dict[str, Any]:
    job_id = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    auth = error_responses(401)
    dicom = body("application/dicom", BINARY)
    flag = {"type": "string", "pattern": words_pattern(TRUE_WORDS + FALSE_WORDS)}
    submit = {
        "type": "object",
        "required": ["files"],
        "properties": {
            "files": {
                "type": "array",
                "items": {**BINARY, "minLength": 1},
                "minItems": 1,
                "maxItems": 5000,  # service.jobs.MAX_FILES
                "description": "the DICOM files of one study or series (repeat the field)",
            },
            "transaction_id": {
                "type": "string",
                "pattern": TRANSACTION_ID_PATTERN,
                "description": "the caller's id, printable ASCII: a second job with it answers 409",
            },
            "window": window_schema(settings),
            "push": {
                "type": "string",
                # true needs a DICOMweb server: 400 without one
                "pattern": words_pattern(
                    TRUE_WORDS + FALSE_WORDS if _pushes(settings) else FALSE_WORDS
                ),
                "description": "push the SEG to LESIONSEG_DICOMWEB_URL (default: when set)",
            },
            "boxes": BOXES,
            "propagate": {**flag, "description": "carry one box per lesion through frames"},
            "sr": {**flag, "description": "a DICOM SR (TID 1500) too"},
        },
        # propagate needs boxes, one per lesion
        "anyOf": [
            {"required": ["boxes"], "properties": {"boxes": {"minItems": 1}}},
            {"properties": {"propagate": {"pattern": words_pattern(FALSE_WORDS)}}},
        ],
    }
    content = {
        "multipart/form-data": {
            "schema": submit,
            "encoding": {"boxes": {"contentType": "application/json"}},
        }
    }
    if settings.dicomweb_url:  # jobs by reference: only with an archive to fetch from
        content["application/json"] = {"schema": reference_body(submit, flag)}
        # The form takes `study` and `series` text fields instead of files too; only the JSON
        # body documents them: a oneOf of files or a reference, with binary parts in it, is
        # more than schemathesis 4.32's coverage phase can judge ("Unsupported type: Binary").
        submit["properties"]["files"]["description"] += (
            "; or, instead of files, the text fields study and series, as the JSON body"
        )
    return {
        "/jobs": {
            "post": {
                "operationId": "submit_job",
                "tags": ["jobs"],
                "summary": "Queue a study (files, or a series of the archive by reference): 202 "
                "and its Location once stored.",
                "requestBody": {"required": True, "content": content},
                "responses": {
                    "202": {
                        **body("application/json", {"$ref": REF.format(model="JobStatus")}),
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    },
                    **error_responses(400, 401, 409, 413, 429, 500, 503, 504, 507),
                },
            }
        },
        "/jobs/{job_id}": {
            "get": {
                "operationId": "job_status",
                "tags": ["jobs"],
                "summary": "A job's state, failure reason, push state and times.",
                "parameters": job_id,
                "responses": {
                    "200": body("application/json", {"$ref": REF.format(model="JobStatus")}),
                    **error_responses(404),
                    **auth,
                },
            }
        },
        **{
            f"/jobs/{{job_id}}/{kind}": {
                "get": {
                    "operationId": f"job_{kind}",
                    "tags": ["jobs"],
                    "summary": f"The job's {name} (application/dicom) once it is done.",
                    "parameters": job_id,
                    "responses": {
                        "200": dicom,
                        **error_responses(404),
                        "409": {
                            **error_responses(409)["409"],
                            "headers": RETRY_AFTER,
                        },
                        **auth,
                    },
                }
            }
            for kind, name in (("result", "DICOM SEG"), ("sr", "DICOM SR"))
        },
    }


def uid_schema(name: str) -> dict[str, Any]:
    """A DICOM UID field, as lesionseg.pacs.job.check_uid reads it."""
    return {"type": "string", "maxLength": MAX_UID, "pattern": UID_PATTERN, "description": name}


def reference_body(submit: dict[str, Any], flag: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a job by reference: the form's fields, flags as booleans too
    (service.job_requests.json_form)."""
    form = submit["properties"]
    json_flag = {**flag, "type": ["boolean", "string", "null"]}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["study", "series"],
        "properties": {
            "study": uid_schema("StudyInstanceUID of the series"),
            "series": uid_schema("SeriesInstanceUID in the archive"),
            "transaction_id": {**form["transaction_id"], "type": ["string", "null"]},
            "window": {**form["window"], "type": ["string", "null"]},
            "push": {**form["push"], "type": ["boolean", "string", "null"]},
            "boxes": {**BOXES, "type": ["array", "null"], "description": "as a list"},
            "propagate": {**json_flag, "description": form["propagate"]["description"]},
            "sr": {**json_flag, "description": form["sr"]["description"]},
        },
        "anyOf": [  # propagate needs boxes, one per lesion
            {"required": ["boxes"], "properties": {"boxes": {"type": "array", "minItems": 1}}},
            {
                "properties": {
                    "propagate": {
                        "anyOf": [
                            {"type": "null"},
                            {"const": False},
                            {"type": "string", "pattern": words_pattern(FALSE_WORDS)},
                        ]
                    }
                }
            },
        ],
    }


VIEWER_CONFIG = {
    "type": "object",
    "required": ["window_presets", "default_window", "score_threshold", "score_floor"],
    "properties": {
        "window_presets": {
            "type": "object",
            "additionalProperties": {
                "type": "array",
                "items": {"type": "number"},
                "minItems": 2,
                "maxItems": 2,
                "description": "[center, width]",
            },
        },
        "default_window": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "score_threshold": {"type": "number"},
        "score_floor": {"type": "number"},
    },
}


def _get(op_id: str, summary: str, responses: dict, tag: str = "infrastructure") -> dict:
    return {
        "get": {"operationId": op_id, "tags": [tag], "summary": summary, "responses": responses}
    }


def other_routes() -> dict[str, Any]:
    text = body("text/plain", {"type": "string"})
    html = body("text/html", {"type": "string"})
    auth = error_responses(401)
    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    path = [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}]
    readyz = "200 once the models are loaded and warmed, else 503"
    static = {
        **_get("viewer_file", "The page's script and style sheet.", {}, "viewer"),
    }
    static["get"]["parameters"] = name
    static["get"]["responses"] = {
        "200": {
            "description": "OK",
            "content": {
                t: {"schema": {"type": "string"}}
                for t in ("text/css", "text/javascript", "text/html")
            },
        },
        **error_responses(404),
        **auth,
    }
    assets = _get("docs_assets", "Static files of the /docs page.", {}, "documentation")
    assets["get"]["parameters"] = path
    assets["get"]["responses"] = {
        "200": {"description": "OK", "content": {"*/*": {"schema": BINARY}}},
        **error_responses(404),
        **auth,
    }
    return {
        "/livez": _get("livez", "200 while the process lives", {"200": text}),
        "/healthz": _get("healthz", "= /livez (deprecated; needs a key)", {"200": text, **auth}),
        "/readyz": _get("readyz", readyz, {"200": text, **error_responses(503)}),
        "/metrics": _get(
            "metrics",
            "Prometheus metrics (public with LESIONSEG_METRICS_PUBLIC=true)",
            {"200": body("text/plain", {"type": "string"}), **auth},
        ),
        "/": _get(
            "home",
            "Redirects to /viewer.",
            {
                "307": {
                    "description": "to /viewer",
                    "headers": {"Location": {"schema": {"type": "string"}}},
                },
                **auth,
            },
            "viewer",
        ),
        "/viewer": _get("viewer", "The viewer page.", {"200": html, **auth}, "viewer"),
        "/viewer/config.json": _get(
            "viewer_config",
            "Window presets, default window, score threshold and floor.",
            {"200": body("application/json", VIEWER_CONFIG), **auth},
            "viewer",
        ),
        "/viewer/{name}": static,
        "/docs": _get("docs", "This contract as a page.", {"200": html, **auth}, "documentation"),
        "/docs.json": _get(
            "contract",
            "This contract (OpenAPI 3.1).",
            {"200": body("application/json", {"type": "object"}), **auth},
            "documentation",
        ),
        "/schema.json": _get(
            "bentoml_schema",
            "BentoML's description of the service's APIs (used by BentoML clients).",
            {"200": body("application/json", {"type": "object"}), **auth},
            "documentation",
        ),
        "/static_content/{path}": assets,
    }
