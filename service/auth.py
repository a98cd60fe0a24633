"""API keys: ``Authorization: Bearer <key>`` on every route but the health checks.

- ``ApiKeys`` reads the keys of ``LESIONSEG_API_KEYS`` (comma-separated) and
  ``LESIONSEG_API_KEYS_FILE`` (one per line, '#' comments) once, at start: each entry is a key
  or the SHA-256 hex digest of one (64 hex digits; a key itself never has that form). Only
  digests are kept; a presented key is hashed and compared with every digest in constant time.
- ``ApiKeyMiddleware``, the outermost middleware of ``LesionSeg`` (service/middleware.py): without a
  valid key, 401 before the request's body is read. The key's id (16 hex digits of its digest,
  never the key) goes to the app in ``scope["state"]`` (``key_id``): jobs belong to it
  (service/jobs.py), and ``max_requests_per_key`` bounds its synchronous requests (429).

Neither a key nor an Authorization header is ever logged. Without keys the service is open;
it says so once, in a warning, at start.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from lesionseg.errors import LesionSegError
from lesionseg.settings import Settings

log = logging.getLogger("lesionseg.auth")

STATE_KEY = "lesionseg_key_id"
KEY_ID_HEX = 16
MIN_KEY_LENGTH = 16
HEALTH_PATHS = frozenset({"/livez", "/readyz"})
DIGEST = re.compile(r"(?:sha256:)?([0-9a-fA-F]{64})")
# RFC 6750's b64token: what a Bearer credential may hold.
TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
OPEN_WARNING = (
    "no API keys configured (LESIONSEG_API_KEYS, LESIONSEG_API_KEYS_FILE): this service, its "
    "job results (DICOM SEG/SR with patient data) included, is open to anyone who can reach it"
)


class ApiKeysError(LesionSegError):
    """The configured API keys are unusable; the service must not start (a message that
    names the setting and the line, never the key)."""


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(scope: Scope) -> str | None:
    """The id of the API key a request was authenticated with; None when the service has no
    keys (jobs then have no owner)."""
    return scope.get("state", {}).get(STATE_KEY)


def _digest_of(entry: str, where: str) -> bytes:
    if match := DIGEST.fullmatch(entry):
        return bytes.fromhex(match.group(1))
    if not TOKEN.fullmatch(entry):
        raise ApiKeysError(
            f"{where}: a key may hold only letters, digits and -._~+/ (and trailing '='), "
            "as a Bearer token does"
        )
    if len(entry) < MIN_KEY_LENGTH:
        raise ApiKeysError(
            f"{where}: a key of {len(entry)} characters is too short to be a secret (at "
            f"least {MIN_KEY_LENGTH}; e.g. python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')"
        )
    return hashlib.sha256(entry.encode()).digest()


class ApiKeys:
    """The SHA-256 digests (32 bytes each) of the accepted keys."""

    def __init__(self, digests: Iterable[bytes]) -> None:
        self.digests = tuple(dict.fromkeys(digests))
        assert self.digests and all(len(d) == 32 for d in self.digests)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys | None:
        """The keys of ``api_keys`` and ``api_keys_file`` together; None if neither is set.
        Raises ``ApiKeysError`` for a keys file that is missing, unreadable or holds no key,
        an ``api_keys`` that holds none, or an entry that is no usable key."""
        digests: list[bytes] = []
        if settings.api_keys is not None:
            entries = [e.strip() for e in settings.api_keys.get_secret_value().split(",")]
            entries = [e for e in entries if e]
            if not entries:
                raise ApiKeysError(
                    "LESIONSEG_API_KEYS is set but holds no key: set keys (comma-separated) "
                    "or unset it"
                )
            for n, entry in enumerate(entries, 1):
                digests.append(_digest_of(entry, f"LESIONSEG_API_KEYS, entry {n}"))
        if settings.api_keys_file is not None:
            digests += _read_keys_file(Path(settings.api_keys_file))
        return cls(digests) if digests else None

    def identify(self, presented: str) -> str | None:
        """The id of ``presented`` if it is one of the keys, else None. Every stored digest is
        compared (``hmac.compare_digest``), so the time taken says nothing of which matched."""
        digest = hashlib.sha256(presented.encode()).digest()
        found = False
        for stored in self.digests:
            found |= hmac.compare_digest(digest, stored)
        return digest.hex()[:KEY_ID_HEX] if found else None


def _read_keys_file(path: Path) -> list[bytes]:
    where = f"LESIONSEG_API_KEYS_FILE={path}"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ApiKeysError(f"{where}: no such file") from None
    except OSError as exc:
        raise ApiKeysError(f"{where}: unreadable ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ApiKeysError(f"{where}: unreadable (not UTF-8 text)") from None
    digests = []
    for n, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            digests.append(_digest_of(entry, f"{where}, line {n}"))
    if not digests:
        raise ApiKeysError(f"{where}: the file holds no key (only blank lines or comments)")
    return digests


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            return credential.strip() if scheme.lower() == "bearer" else None
    return None


class ApiKeyMiddleware:
    """ASGI middleware: ``keys`` None -> everything passes (one warning at start). Otherwise a
    request to anything but ``public_paths`` needs a valid Bearer key (401 without, before the
    body is read); at most ``max_requests_per_key`` requests of one key to ``limited_paths``
    (the synchronous model routes) in flight at once (429 over it)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: ApiKeys | None,
        public_paths: frozenset[str] = HEALTH_PATHS,
        limited_paths: frozenset[str] = frozenset(),
        max_requests_per_key: int | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.public_paths = public_paths
        self.limited_paths = limited_paths
        self.max_requests_per_key = max_requests_per_key
        self.in_flight: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.keys is None:
            return await self.app(scope, self._warn_at_startup(receive), send)
        if scope["type"] not in ("http", "websocket") or self.keys is None:
            return await self.app(scope, receive, send)
        if scope["path"] in self.public_paths:
            return await self.app(scope, receive, send)
        presented = _bearer(scope)
        kid = None if presented is None else self.keys.identify(presented)
        if kid is None:
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            message = (
                "a valid API key is required: send 'Authorization: Bearer <key>'"
                if presented is None
                else "the API key is not valid"
            )
            challenge = "Bearer" if presented is None else 'Bearer error="invalid_token"'
            response = JSONResponse(
                {"error": message}, status_code=401, headers={"WWW-Authenticate": challenge}
            )
            return await response(scope, receive, send)
        scope.setdefault("state", {})[STATE_KEY] = kid
        limit = self.max_requests_per_key
        if limit is None or scope["path"] not in self.limited_paths:
            return await self.app(scope, receive, send)
        if self.in_flight[kid] >= limit:
            response = JSONResponse(
                {
                    "error": f"this API key has {self.in_flight[kid]} requests in flight, its "
                    f"limit (LESIONSEG_MAX_REQUESTS_PER_KEY={limit}); retry once one is answered"
                },
                status_code=429,
                headers={"Retry-After": "1"},
            )
            return await response(scope, receive, send)
        self.in_flight[kid] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[kid] -= 1
            if not self.in_flight[kid]:
                del self.in_flight[kid]

    @staticmethod
    def _warn_at_startup(receive: Receive) -> Receive:
        async def receive_and_warn():
            message = await receive()
            if message["type"] == "lifespan.startup":
                log.warning(OPEN_WARNING)
            return message

        return receive_and_warn


def api_key_options(settings: Settings, service) -> dict:
    """``ApiKeyMiddleware``'s options for the BentoML ``service`` (``LesionSeg``), whose
    ``@bentoml.api`` routes are the synchronous ones that ``max_requests_per_key`` bounds.
    Raises ``ApiKeysError`` (at import: the service does not start) for unusable keys."""
    public = set(HEALTH_PATHS)
    if settings.metrics_public:
        public.add("/metrics")
    if settings.viewer_public:
        # The page's own files only: its data (/viewer/config.json, /segment...) needs a key,
        # which the page sends from its key field.
        public |= {"/", "/viewer", *(f"/viewer/{name}" for name in _viewer_files())}
    return {
        "keys": ApiKeys.from_settings(settings),
        "public_paths": frozenset(public),
        "limited_paths": frozenset(api.route for api in service.apis.values()),
        "max_requests_per_key": settings.max_requests_per_key,
    }


def _viewer_files() -> list[str]:
    from service.viewer import MEDIA_TYPES, STATIC_DIR

    return sorted(p.name for p in STATIC_DIR.iterdir() if p.suffix in MEDIA_TYPES)
