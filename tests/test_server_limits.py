"""The limits of tests/server_limits.py are in force for the whole session (fast)."""

from __future__ import annotations

import os

from lesionseg.settings import Settings
from tests.server_limits import SERVER_LIMITS


def test_the_session_serves_with_the_test_limits_not_the_production_defaults():
    assert {k: os.environ.get(k) for k in SERVER_LIMITS} == SERVER_LIMITS
    settings = Settings()  # what an in-process service and every `bentoml serve` read
    assert settings.max_queue_wait_s == 600 and settings.max_pending_requests == 256
    assert settings.request_timeout_s == 300 and settings.max_latency_ms == 120_000
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    assert settings.max_queue_wait_s > defaults["max_queue_wait_s"]
