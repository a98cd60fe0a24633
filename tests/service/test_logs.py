"""Unit tests of service/logs.py's filter of BentoML's exception log: what is one line, what
keeps its traceback."""

from __future__ import annotations

import logging
import sys

import pytest
from bentoml.exceptions import BadInput, ServiceUnavailable

from service.logs import BENTOML_EXCEPTIONS_LOGGER, ClientErrorsAsOneLine


def record_of(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except type(exc):
        info = sys.exc_info()
    return logging.LogRecord(
        BENTOML_EXCEPTIONS_LOGGER, logging.ERROR, __file__, 1, "Exception on /segment", (), info
    )


@pytest.mark.parametrize(
    ("exc", "level", "status"),
    [
        (BadInput("the field 'image' is missing"), logging.INFO, 400),
        (ServiceUnavailable("the model runner restarted and is loading"), logging.WARNING, 503),
    ],
)
def test_refusals_by_design_are_one_line_without_a_traceback(exc, level, status):
    record = record_of(exc)
    assert ClientErrorsAsOneLine().filter(record)
    assert (record.levelno, record.exc_info) == (level, None)
    line = logging.Formatter().format(record)
    assert f"({status})" in line and "Traceback" not in line and "\n" not in line


def test_a_validation_error_is_the_error_body_s_sentence_without_its_values():
    from pydantic import BaseModel, Field, ValidationError

    class Form(BaseModel):
        max_lesions: int = Field(le=1000)

    try:
        Form(max_lesions=1234567)
    except ValidationError as exc:
        record = record_of(exc)
    assert ClientErrorsAsOneLine().filter(record)
    line = logging.Formatter().format(record)
    assert "(400): invalid field 'max_lesions': Input should be" in line
    assert "1234567" not in line and "Traceback" not in line


def test_a_server_error_keeps_its_level_and_traceback():
    record = record_of(RuntimeError("a bug"))
    assert ClientErrorsAsOneLine().filter(record)
    assert record.levelno == logging.ERROR
    assert "Traceback" in logging.Formatter().format(record)
