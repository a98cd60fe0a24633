"""The HTTP contract: an OpenAPI 3.1 document of every route the service answers, at /docs.json.

BentoML 1.4 generates ``/docs.json`` from its ``@bentoml.api`` methods only (no mounted app: not
``/jobs``, not the viewer), with nullable fields dropped, its own error bodies, and a 404/500 on
every API. ``contract(service, settings)`` writes the document instead:

- the ``/segment*`` APIs from BentoML's own input models (``service.apis``: a new API appears by
  itself), with ``window`` as a preset name or ``'center,width'``, the box formats and each
  status the route sends; their JSON bodies from the pydantic models of ``service.schemas``;
- the routes of the mounted apps (``/jobs``, the viewer) and BentoML's infrastructure routes
  from the tables of ``service.openapi_paths`` (tests/service/test_contract.py checks that they
  list every route);
- one error body for every status >= 400 (``service.errors`` makes every answer fit it).

``Contract.app`` serves it, mounted before BentoML's own ``/docs.json`` route;
``hold_to_contract(service)`` mounts it and makes the answers and the form parsing fit it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import bentoml
from pydantic.json_schema import models_json_schema
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import lesionseg
from lesionseg.settings import Settings
from service.auth import HEALTH_PATHS
from service.errors import ErrorBodies
from service.forms import BOXES, exact_forms, takes_text, window_schema
from service.openapi_paths import (
    BINARY,
    REF,
    body,
    error_responses,
    job_routes,
    job_status_schema,
    other_routes,
    plain,
)
from service.schemas import ErrorOut, FramesResponse, SegmentResponse
from service.viewer import PreviewResponse

# Which models a JSON API answers with (/segment: one image, or a volume's frames).
JSON_BODIES = {
    "/segment": (SegmentResponse, FramesResponse),
    "/segment/boxes": (SegmentResponse, FramesResponse),
    "/segment/preview": (PreviewResponse,),
    "/segment/propagate": (FramesResponse,),
}
API_STATUSES = (400, 401, 413, 415, 429, 500, 503, 504)


def _or_null(schema: dict[str, Any], nullable: bool) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"]} if nullable else schema


def _api_operation(api, settings: Settings) -> dict[str, Any]:
    """The operation of one ``@bentoml.api`` (multipart in, JSON or one file out)."""
    doc = " ".join((api.func.__doc__ or "").split())
    schema = plain(api.input_spec.model_json_schema())
    schema.pop("title", None)
    properties = schema["properties"]
    encoding = {}
    for name, prop in properties.items():
        if name in api.input_spec.multipart_fields:
            if prop.get("type") == "array":
                prop["minItems"] = 1
            continue
        if takes_text(api.input_spec.model_fields[name].annotation):  # service.forms
            encoding[name] = {"contentType": "text/plain"}
            properties[name] = window_schema(settings) if name == "window" else {"type": "string"}
            continue
        # Every other part is JSON (a part that is no JSON: its text), so JSON null is an
        # optional field's default, as leaving the field out.
        encoding[name] = {"contentType": "application/json"}
        if name == "boxes":
            properties[name] = _or_null(BOXES, "null" in prop.get("type", []))
    media_type = api.output_spec.mime_type()
    if media_type == "application/json":
        models = JSON_BODIES[api.route]  # a new JSON API must say what it answers here
        refs = [{"$ref": REF.format(model=m.__name__)} for m in models]
        ok = body(media_type, refs[0] if len(refs) == 1 else {"anyOf": refs})
    else:
        ok = body(media_type, BINARY)
    return {
        "operationId": api.name,
        "tags": ["segmentation"],
        "summary": doc.split(". ")[0].split(": ")[0],
        "description": doc,
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": schema, "encoding": encoding}},
        },
        "responses": {"200": ok, **error_responses(*API_STATUSES)},
    }


def _null_means_absent(schema: dict[str, Any]) -> None:
    """A model dumped with ``exclude_none``: a field that may be null is left out instead."""
    nullable = {
        name
        for name, prop in schema["properties"].items()
        if {"type": "null"} in prop.get("anyOf", [])
    }
    schema["required"] = [r for r in schema.get("required", []) if r not in nullable]


def contract(service, settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``service`` (the ``bentoml.Service``) served with
    ``settings`` (the window presets)."""
    paths = {api.route: {"post": _api_operation(api, settings)} for api in service.apis.values()}
    paths.update(job_routes(settings))
    paths.update(other_routes())
    _, schemas = models_json_schema(
        [(m, "validation") for m in (SegmentResponse, FramesResponse, PreviewResponse, ErrorOut)],
        ref_template=REF,
    )
    components = copy.deepcopy(schemas["$defs"])
    for name in ("PreviewResponse", "PreviewFrame"):  # dumped with exclude_none
        _null_means_absent(components[name])
    components["JobStatus"] = job_status_schema()
    spec = {
        "openapi": "3.1.0",
        "info": {
            "title": "lesionseg",
            "version": lesionseg.__version__,
            "description": "Automatic lesion segmentation (YOLO boxes -> LiteMedSAM masks) of "
            'images, DICOM and NIfTI. Every error answers `{"error": "..."}` with an '
            "optional `detail`.",
        },
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": components},
    }
    if settings.api_keys or settings.api_keys_file:
        _require_keys(spec, settings)
    return spec


def _require_keys(spec: dict[str, Any], settings: Settings) -> None:
    """With API keys: a bearer key on every route but those service.auth leaves public."""
    spec["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
    spec["security"] = [{"apiKey": []}]
    public = set(HEALTH_PATHS) | ({"/metrics"} if settings.metrics_public else set())
    if settings.viewer_public:
        public |= {"/", "/viewer"}
        # the page's files answer without a key, any other name needs one
        spec["paths"]["/viewer/{name}"]["get"]["security"] = [{"apiKey": []}, {}]
    for path in public:
        spec["paths"][path]["get"]["security"] = []


class Contract:
    """``/docs.json`` as a small Starlette app to mount on the service (it wins over
    BentoML's route of the same path). ``get_service()`` returns the running service
    instance (its ``bento_service`` and ``settings``)."""

    def __init__(self, get_service: Callable[[], Any]) -> None:
        self._get_service = get_service
        self.app = Starlette(routes=[Route("/docs.json", self.docs_json, methods=["GET"])])

    async def docs_json(self, _request: Request) -> Response:
        instance = self._get_service()
        return JSONResponse(contract(instance.bento_service, instance.settings))


def hold_to_contract(service) -> None:
    """Hold ``service`` (``LesionSeg``) to its contract: serve /docs.json (mounted, so ahead of
    BentoML's route), answer every error with ``ErrorOut`` (``ErrorBodies``: add it after the
    other middleware, innermost) and read forms as documented (``service.forms``)."""
    service.mount_asgi_app(Contract(bentoml.get_current_service).app, path="/")
    service.add_asgi_middleware(ErrorBodies)
    exact_forms(service)
