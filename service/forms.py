"""Forms read as the contract (service/openapi.py) says: files are files, values are exact.

- BentoML 1.4 (``_bentoml_impl.serde.MultipartSerde.ensure_file``) takes a *text* value of a
  file field (``-F image=http://...`` or a url-encoded form) as a URL and downloads it from the
  server: a request could make the service fetch any address it can reach, and where that
  fails it answers 500. ``FilesOnlyMultipart``, put in BentoML's registry of body parsers
  (``ALL_SERDE``), answers 400 naming the field instead; a body that is no form (a multipart
  type without its boundary) gets 400 too, not 500. Files are parsed as before.
- BentoML validates the API's arguments in pydantic's lax mode: ``false`` passes for
  ``refine_iterations=0``, ``"5"`` for ``max_lesions=5``, ``true`` for a box coordinate.
  The inputs are made strict: a value of another JSON type than documented is a 400.
- The rules of the fields whose library check is more lenient than the contract (``window``,
  ``boxes``, the /jobs form's ``transaction_id`` and flags): their schema and their check, side
  by side (tests/service/test_contract.py holds each pair to the same answers).
"""

from __future__ import annotations

import json
import re
from typing import Any, get_args

from _bentoml_impl.serde import ALL_SERDE, MultipartSerde
from _bentoml_sdk.typing_utils import is_list_type, is_union_type
from bentoml.exceptions import BadInput
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from lesionseg.errors import InputError
from lesionseg.settings import Settings


async def read_form(request: Request, **limits) -> FormData:
    """``request.form()``, or InputError for a body that is no form (a multipart type without
    its boundary, a broken part: Starlette raises KeyError, a parse error or HTTPException)."""
    try:
        return await request.form(**limits)
    except (KeyError, ValueError, HTTPException) as exc:
        kind = request.headers.get("content-type", "").split(";")[0][:60]
        what = getattr(exc, "detail", None) or type(exc).__name__
        raise InputError(f"the body is not a valid {kind or 'form'} body ({what})") from None


def takes_text(annotation: Any) -> bool:
    """``str`` or ``str | None``: a field whose part is its text, verbatim."""
    return annotation is str or (
        is_union_type(annotation) and set(get_args(annotation)) == {str, type(None)}
    )


class FilesOnlyMultipart(MultipartSerde):
    """``MultipartSerde.parse_request`` with file fields that take file parts only and text
    fields (``str``) read verbatim; other fields are JSON (a part that is no JSON: its text),
    as BentoML reads them."""

    async def parse_request(self, request: Request, cls):
        try:
            form = await read_form(request)
        except InputError as exc:
            raise BadInput(str(exc)) from None
        data: dict[str, Any] = {}
        for name in form:
            annotation = cls.model_fields[name].annotation if name in cls.model_fields else None
            if name in cls.multipart_fields:
                files = form.getlist(name)
                if any(not isinstance(f, UploadFile) for f in files):
                    raise BadInput(
                        f"'{name}' must be a file upload (a multipart part with a filename), "
                        "not a text field; the service does not download URLs"
                    )
                if is_union_type(annotation):
                    annotation = get_args(annotation)[0]
                data[name] = files if is_list_type(annotation) else files[0]
                continue
            value = form[name]
            if isinstance(value, UploadFile):
                value = await value.read()
            if takes_text(annotation):
                data[name] = value if isinstance(value, str) else value.decode("utf-8", "replace")
                continue
            try:
                data[name] = json.loads(value)
            except json.JSONDecodeError:
                data[name] = value
        return cls.model_validate(data)


def exact_forms(service) -> None:
    """Parse multipart and url-encoded bodies with ``FilesOnlyMultipart``; validate the
    arguments of every API of ``service`` (a ``bentoml.Service``) strictly."""
    ALL_SERDE["multipart/form-data"] = FilesOnlyMultipart
    ALL_SERDE["application/x-www-form-urlencoded"] = FilesOnlyMultipart
    for api in service.apis.values():
        api.input_spec.model_config["strict"] = True
        api.input_spec.model_rebuild(force=True)


# --- the form fields' rules, as the contract has them -------------------------------------
# 'center,width', width > 0 (lesionseg.io.dicom.parse_window takes any two floats; this is its
# positive-width, no-exponent subset)
WINDOW_PATTERN = r"^-?[0-9]+(\.[0-9]+)?,(0*[1-9][0-9]*(\.[0-9]+)?|0*\.[0-9]*[1-9][0-9]*)$"


# The /jobs form's text fields, as service/jobs.py reads them (an empty field = left out).
# What str.strip() strips (str.isspace), as a pattern's character class: the service reads a
# blank field as an empty one.
SPACE = (
    r"[\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a"
    r"\u2028\u2029\u202f\u205f\u3000]"
)
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
TRANSACTION_ID_PATTERN = r"^[ -~]{0,128}$"  # printable ASCII


def words_pattern(words: tuple[str, ...]) -> str:
    """Any of ``words`` in any case, with spaces around, or nothing (as ``_flag`` reads it)."""
    alternatives = "|".join(
        "".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in w) for w in words
    )
    return rf"^({SPACE}*({alternatives}){SPACE}*)?$"


def window_schema(settings: Settings) -> dict[str, Any]:
    """A preset of LESIONSEG_WINDOW_PRESETS or 'center,width' (modality units, width > 0)."""
    presets = "|".join(re.escape(name) for name in sorted(settings.window_presets))
    return {
        "description": f"DICOM/NIfTI intensity window: a preset ({presets}) or 'center,width' in "
        "modality units (HU for CT), width > 0, e.g. '40,400'. Empty or absent: the file's own "
        "window or the model bundle's. An ordinary image (PNG...) takes none (400).",
        # One pattern, not anyOf(enum, pattern): a test generator that breaks one branch of an
        # anyOf may well write a value of another ("" breaks the enum, and is blank).
        "type": "string",
        "pattern": f"^({SPACE}*|{presets}|{WINDOW_PATTERN[1:-1]})$",
        "examples": [*sorted(settings.window_presets), "40,400"],
    }


BOXES = {
    "type": "array",
    "description": "[x0, y0, x1, y1] boxes in original pixels (one image), or [x0, y0, x1, y1, "
    "frame] with a 0-based frame (slice) index (volumes and series); as a JSON text field",
    "items": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 5},
}


def check_window(window: str | None, settings: Settings) -> str | None:
    """``window`` as the contract has it (a preset, 'center,width' or empty), else InputError."""
    if not window or window.isspace():
        return None
    if window in settings.window_presets or re.fullmatch(WINDOW_PATTERN, window):
        return window
    raise InputError(
        f"window must be one of {sorted(settings.window_presets)} or 'center,width' with "
        f"width > 0 (e.g. '40,400'), got {window[:40]!r}"
    )


def check_transaction_id(transaction_id: str | None) -> str | None:
    if transaction_id and not re.fullmatch(TRANSACTION_ID_PATTERN, transaction_id):
        raise InputError("transaction_id must be 1-128 printable ASCII characters")
    return transaction_id


def check_boxes(boxes: object) -> list:
    """A JSON list of boxes of 4 or 5 numbers (BOXES), else InputError."""
    if not isinstance(boxes, list):
        raise InputError("boxes must be a JSON list of [x0, y0, x1, y1(, frame)] lists")
    for box in boxes:
        if not (
            isinstance(box, list)
            and len(box) in (4, 5)
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
        ):
            raise InputError(
                f"each box is 4 or 5 numbers, [x0, y0, x1, y1(, frame)], got {str(box)[:60]}"
            )
    return boxes
