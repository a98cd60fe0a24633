"""Patient identifiers never reach the logs or error messages (issue 5, part 6)."""

from __future__ import annotations

import io
import logging
import warnings

import pydicom
import pydicom.config
import pytest

from .dicom_inputs import dicom_file, lits_ct, to_bytes

pytestmark = pytest.mark.slow

NAME, PATIENT_ID, BIRTH = "Qwxzyk^Privatus", "PID-SECRET-7319", "19010203"
SECRETS = ("Qwxzyk", "Privatus", PATIENT_ID, BIRTH)


def with_patient(data: bytes, *, name: str = NAME) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.PatientName, dataset.PatientID, dataset.PatientBirthDate = name, PATIENT_ID, BIRTH
    return to_bytes(dataset)


def inputs(lits) -> dict[str, tuple[str, bytes, dict, int]]:
    """route, body, fields, expected status: good input, and malformed input that fails."""
    ct = with_patient(lits_ct(lits, [110])[0])
    truncated = ct[: len(ct) - 9000]  # header intact, pixel data cut short
    # an invalid PN value (over 64 chars per component): pydicom's default would log it
    with pydicom.config.disable_value_validation():
        long_name = with_patient(ct, name=NAME * 6)
    rtplan = with_patient(dicom_file("rtplan.dcm"))
    multi = with_patient(dicom_file("emri_small.dcm"))
    return {
        "segment": ("/segment", ct, {"window": "abdomen"}, 200),
        "seg": ("/segment/dicom-seg", ct, {"window": "abdomen"}, 200),
        "truncated": ("/segment", truncated, {}, 400),
        "truncated-seg": ("/segment/dicom-seg", truncated, {}, 400),
        "long-name": ("/segment", long_name[:-9000], {}, 400),
        "no-image": ("/segment", rtplan, {}, 400),
        "seg-unsupported": ("/segment/dicom-seg", multi, {"boxes": "[[1, 1, 9, 9, 0]]"}, 400),
    }


def test_patient_identifiers_never_appear_in_logs_or_errors(client, lits, caplog):
    caplog.set_level(logging.DEBUG)
    service_log = logging.getLogger("lesionseg.service")
    service_log.addHandler(caplog.handler)  # in case the service logger does not propagate
    cases = inputs(lits)
    seen_warnings = []
    try:
        with warnings.catch_warnings(record=True) as seen_warnings:
            warnings.simplefilter("always")
            for case, (route, body, fields, status) in cases.items():
                files = {"image": ("x.dcm", body, "application/dicom")}
                response = client.post(route, files=files, data=fields)
                assert response.status_code == status, (case, response.text)
                if status != 200 or response.headers["content-type"].startswith("application/json"):
                    for secret in SECRETS:
                        assert secret not in response.text, (case, secret)
    finally:
        service_log.removeHandler(caplog.handler)
    assert caplog.records, "nothing was logged: the capture is not working"
    logged = caplog.text + "\n".join(str(w.message) for w in seen_warnings)
    for secret in SECRETS:
        assert secret not in logged, secret
