"""The admission, deadline and latency limits of every server the tests start.

Set explicitly (tests/conftest.py puts them in the environment of the test session, which
every ``bentoml serve`` the tests start inherits, and the in-process services read) instead of
the production defaults, which depend on the machine's speed: a fresh-clone CI run got ``503
overloaded: 5 requests in flight, an expected wait of 20 s`` from the slow torch backend in
tests/service/test_serve.py. Generous, because these tests are about correctness and must
never be shed; a test about shedding or deadlines sets its own tight limit in the ``env`` of
its server (``running_server(env, ...)`` puts ``env`` over these), or ``model_copy`` in
process.
"""

from __future__ import annotations

SERVER_LIMITS = {
    "LESIONSEG_MAX_QUEUE_WAIT_S": "600",  # admission control: no 503 for an expected wait
    "LESIONSEG_MAX_PENDING_REQUESTS": "256",  # per API worker: no 503 for requests in flight
    "LESIONSEG_REQUEST_TIMEOUT_S": "300",  # no 504 (pytest's own timeout is 900 s)
    "LESIONSEG_MAX_LATENCY_MS": "120000",  # the model runner's batch queue: no 503
}
