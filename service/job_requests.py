"""What a POST /jobs asks for: its fields, from a form (multipart or url-encoded) or a JSON
object, read into one ``FormData``; the job's options; its study/series reference.

A form carries the files (``files``) or a reference (``study`` and ``series`` text fields);
a JSON object carries a reference only, with the same option fields: flags as booleans (or
the form's words), ``boxes`` as a list. An empty field is a field left out.
"""

from __future__ import annotations

import json

from starlette.datastructures import FormData
from starlette.requests import Request

from lesionseg.errors import InputError
from lesionseg.pacs.job import SeriesReference
from service.forms import FALSE_WORDS, TRUE_WORDS, check_boxes, read_form

MAX_JSON_BYTES = 64 * 1024
FLAGS = ("push", "propagate", "sr")
JSON_FIELDS = ("study", "series", "transaction_id", "window", "boxes", *FLAGS)


def text(form, name: str) -> str | None:
    """The text field ``name`` (None if absent or empty); a file there is an InputError."""
    value = form.get(name)
    if value is not None and not isinstance(value, str):
        raise InputError(f"{name} must be a text field, not a file")
    return value or None


def flag(value: str | None, name: str) -> bool | None:
    """A true/false word (any case, spaces around) as a bool; None when absent."""
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise InputError(f"{name} must be true or false, got {value[:20]!r}")


def job_options(form) -> dict:
    """The segmentation options of a job: ``boxes`` (JSON, as /segment/boxes), ``propagate``
    (one box per lesion, carried through the frames), ``sr`` (a DICOM SR too)."""
    options: dict = {}
    if (boxes := text(form, "boxes")) is not None:
        try:
            options["boxes"] = json.loads(boxes)
        except json.JSONDecodeError as exc:
            raise InputError(f"boxes must be JSON, e.g. [[x0, y0, x1, y1, frame]]: {exc}") from None
        check_boxes(options["boxes"])
    for name in ("propagate", "sr"):
        if flag(text(form, name), name):
            options[name] = True
    if options.get("propagate") and not options.get("boxes"):
        raise InputError("propagate needs boxes: one [x0, y0, x1, y1, frame] per lesion")
    return options


def reference(form) -> SeriesReference | None:
    """The study/series reference of the request (None if it names neither)."""
    study, series = text(form, "study"), text(form, "series")
    if study is None and series is None:
        return None
    if study is None or series is None:
        raise InputError(
            "a job by reference needs both study and series (the StudyInstanceUID and the "
            "SeriesInstanceUID of the series in the archive)"
        )
    return SeriesReference(study, series)


def json_form(body: bytes) -> FormData:
    """A JSON object ``{"study": UID, "series": UID, ...}`` as the form it stands for."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError('the JSON body must be an object: {"study": UID, "series": UID}')
    if unknown := sorted(set(data) - set(JSON_FIELDS)):
        raise InputError(
            f"unknown field(s) {unknown}: a JSON body takes {', '.join(JSON_FIELDS)}; files "
            "are uploaded as multipart/form-data"
        )
    items = []
    for name, value in data.items():
        if value is None:
            continue
        if name == "boxes":
            value = json.dumps(value)
        elif name in FLAGS and isinstance(value, bool):
            value = "true" if value else "false"
        elif not isinstance(value, str):
            kind = "a boolean" if name in FLAGS else "a string"
            raise InputError(f"{name} must be {kind}, got {type(value).__name__}")
        items.append((name, value))
    return FormData(items)


async def read_job_form(request: Request, *, max_files: int) -> FormData:
    """The fields of a POST /jobs: its form, or its JSON object (at most MAX_JSON_BYTES)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        return await read_form(request, max_files=max_files)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise InputError(
                f"the JSON body is over {MAX_JSON_BYTES} bytes: a job by reference names its "
                "series, files are uploaded as multipart/form-data"
            )
    return json_form(bytes(body))
