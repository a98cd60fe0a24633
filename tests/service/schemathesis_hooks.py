"""schemathesis hooks of tests/service/test_contract.py (loaded through schemathesis.toml).

One filter of generated cases. It drops only cases whose request on the wire is not the one
schemathesis 4.32 checks, so that a 2xx to them would be reported as "schema-violating request
accepted" although the request the server got is valid:

- a field holding an empty list: a list goes out as one form part per item
  (``transport/requests.py``: ``_is_already_serialized`` takes ``[]`` as serialized), so ``[]``
  is no part at all: e.g. "refine_iterations: []" arrives as a form without refine_iterations;
- a text field (``type: string``, sent as text/plain) holding another type: a form part is text,
  so the number -4.4e16 arrives as the string "-4.40736461760549e+16". schemathesis skips this
  type change itself for query, path, header and url-encoded fields (``change_type`` in
  ``specs/openapi/negative/mutations.py``), not for multipart parts.
"""

import schemathesis


def _text_fields(case) -> set[str]:
    media_type = case.media_type or "multipart/form-data"
    body = case.operation.get_body_for_media_type(media_type)
    schema = (body.resolved_schema if body is not None else None) or {}
    encoding = (body.definition.get("encoding", {}) if body is not None else None) or {}
    return {
        name
        for name, prop in schema.get("properties", {}).items()
        if isinstance(prop, dict)
        and prop.get("type") == "string"
        and prop.get("format") != "binary"
        and encoding.get(name, {}).get("contentType", "text/plain") == "text/plain"
    }


@schemathesis.hook
def filter_case(context, case) -> bool:
    body = case.body
    if not isinstance(body, dict):
        return True
    if any(value == [] for value in body.values()):
        return False
    text = _text_fields(case)
    return not any(name in text and not isinstance(body[name], str) for name in body)
