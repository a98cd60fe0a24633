"""The ASGI middleware of ``LesionSeg``, in one place and in order.

Outermost first; BentoML's own access log, tracing and concurrency limits wrap them all:

1. API keys (service/auth.py): 401 before an unauthenticated upload's body is read; the
   per-key limit (429);
2. ``X-Trace-Id`` on every answer, 413 and 504 included (service/logs.py);
3. the request-body limit: 413 before a body over it is read (service/limits.py);
4. the bytes in flight: 503 (or 413) before a body that would pass them is read
   (service/inflight.py); after the body limit, so that an oversized body gets its 413;
5. the request deadline: 504 past ``LESIONSEG_REQUEST_TIMEOUT_S`` (service/limits.py);
6. innermost, the contract (service/openapi.py): ``/docs.json``, every error body
   ``{"error": ...}``, strictly typed forms.
"""

from __future__ import annotations

from lesionseg.settings import Settings
from service.auth import ApiKeyMiddleware, api_key_options
from service.inflight import InflightBytes
from service.limits import BodyLimit, RequestDeadline
from service.logs import TraceIdHeader
from service.openapi import hold_to_contract


def install_middleware(service, settings: Settings) -> None:
    """Add the middleware above to the BentoML ``service`` class (at import, once).
    Raises ``ApiKeysError`` for unusable API keys: the service must not start."""
    service.add_asgi_middleware(ApiKeyMiddleware, **api_key_options(settings, service))
    service.add_asgi_middleware(TraceIdHeader)
    service.add_asgi_middleware(BodyLimit)
    service.add_asgi_middleware(InflightBytes)
    service.add_asgi_middleware(RequestDeadline)
    hold_to_contract(service)
