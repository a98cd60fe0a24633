"""API keys: ``Authorization: Bearer <key>`` on every route but the health checks; without
keys, closed to all but loopback clients unless ``LESIONSEG_ALLOW_ANONYMOUS`` opens it.

- ``ApiKeys`` reads the keys of ``LESIONSEG_API_KEYS`` (comma-separated) and
  ``LESIONSEG_API_KEYS_FILE`` (one per line, '#' comments) once, at start: each entry is a key,
  or the SHA-256 digest of one written ``sha256:<64 hex digits>``. A bare entry of 64 hex digits
  is refused: it may be a key (``openssl rand -hex 32``) or a digest stored bare (read as one
  before issue 23), and guessing wrong either lets the digest in or locks the key out. Only
  digests are kept; a presented key is hashed and compared with every digest in constant time.
- ``ApiKeyMiddleware``, the outermost middleware of ``LesionSeg`` (service/middleware.py): without a
  valid key, 401 before the request's body is read. The key's id (16 hex digits of its digest,
  never the key) goes to the app in ``scope["state"]`` (``key_id``): jobs belong to it
  (service/jobs.py), and ``max_requests_per_key`` bounds its synchronous requests (429).

Neither a key nor an Authorization header is ever logged.

Without keys the service is *closed* (:func:`findings`, the one rule that the start-up refusal,
the middleware and ``python -m service.doctor`` share): ``bentoml serve`` bound to an interface
other than loopback refuses to start (``service.doctor.refuse_unsafe_start``, in the process
that binds, before it binds), and the middleware answers 403 to every client that is not on
loopback, so a bind that was misjudged never opens it. ``LESIONSEG_ALLOW_ANONYMOUS=true`` opens
it to everyone on purpose. Either way one line at start says which.
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
from service.bind import is_loopback
from service.findings import Finding

log = logging.getLogger("lesionseg.auth")

STATE_KEY = "lesionseg_key_id"
KEY_ID_HEX = 16
MIN_KEY_LENGTH = 16
HEALTH_PATHS = frozenset({"/livez", "/readyz"})
DIGEST = re.compile(r"sha256:([0-9a-fA-F]{64})")
BARE_HEX = re.compile(r"[0-9a-fA-F]{64}")
# RFC 6750's b64token: what a Bearer credential may hold.
TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
HOW_TO_OPEN = (
    "set LESIONSEG_API_KEYS or LESIONSEG_API_KEYS_FILE (docs/security.md), or "
    "LESIONSEG_ALLOW_ANONYMOUS=true to serve everyone without keys on a trusted network"
)
LOOPBACK_ONLY = (
    "no API keys configured: this service answers loopback clients only (others get 403); "
    f"to serve other machines {HOW_TO_OPEN}"
)
OPEN_WARNING = (
    "no API keys configured and LESIONSEG_ALLOW_ANONYMOUS=true: this service, its job results "
    "(DICOM SEG/SR with patient data) included, is open to anyone who can reach it; set "
    "LESIONSEG_API_KEYS or LESIONSEG_API_KEYS_FILE to close it"
)
ANONYMOUS_WITH_KEYS = "LESIONSEG_ALLOW_ANONYMOUS=true does nothing while API keys are set"
METRICS_PUBLIC = "/metrics answers without a key (LESIONSEG_METRICS_PUBLIC=true): no patient data"
VIEWER_PUBLIC = (
    "the /viewer page's own files answer without a key (LESIONSEG_VIEWER_PUBLIC=true); its data "
    "needs one"
)
CLOSED_403 = f"this service has no API keys and answers loopback clients only: {HOW_TO_OPEN}"


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
    if BARE_HEX.fullmatch(entry):
        raise ApiKeysError(
            f"{where}: 64 hex digits may be a key or a SHA-256 digest, so it is refused: "
            "write a digest as sha256:<hex>; for a key of this form (openssl rand -hex 32) "
            'store its digest, sha256:$(printf %s "$KEY" | sha256sum | cut -c1-64), or '
            "make keys with openssl rand -base64 32"
        )
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
    """ASGI middleware. ``keys`` None: closed, loopback clients only (403 for any other), or,
    with ``allow_anonymous``, open to all; one line at start says which. Otherwise a request to
    anything but ``public_paths`` needs a valid Bearer key (401 without, before the body is
    read); at most ``max_requests_per_key`` requests of one key to ``limited_paths`` (the
    synchronous model routes) in flight at once (429 over it)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: ApiKeys | None,
        allow_anonymous: bool = False,
        public_paths: frozenset[str] = HEALTH_PATHS,
        limited_paths: frozenset[str] = frozenset(),
        max_requests_per_key: int | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.allow_anonymous = allow_anonymous
        self.public_paths = public_paths
        self.limited_paths = limited_paths
        self.max_requests_per_key = max_requests_per_key
        self.in_flight: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.keys is None:
            line = OPEN_WARNING if self.allow_anonymous else LOOPBACK_ONLY
            return await self.app(scope, _say_at_startup(receive, line), send)
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        if self.keys is None:
            client = scope.get("client")
            if self.allow_anonymous or is_loopback(None if client is None else client[0]):
                return await self.app(scope, receive, send)
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await JSONResponse({"error": CLOSED_403}, status_code=403)(scope, receive, send)
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


def _say_at_startup(receive: Receive, line: str) -> Receive:
    async def receive_and_say():
        message = await receive()
        if message["type"] == "lifespan.startup":
            log.warning(line)
        return message

    return receive_and_say


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
        "allow_anonymous": settings.allow_anonymous,
        "public_paths": frozenset(public),
        "limited_paths": frozenset(api.route for api in service.apis.values()),
        "max_requests_per_key": settings.max_requests_per_key,
    }


def _viewer_files() -> list[str]:
    from service.viewer import MEDIA_TYPES, STATIC_DIR

    return sorted(p.name for p in STATIC_DIR.iterdir() if p.suffix in MEDIA_TYPES)


def findings(settings: Settings, host: str | None) -> list[Finding]:
    """Who may call the service with ``settings`` served on ``host`` (an address; None: not
    known), which routes answer without a key, and the log format. ``unsafe``: no keys, no
    ``allow_anonymous``, and a host that is not loopback; the start refuses exactly that
    (``service.doctor.refuse_unsafe_start``). Raises ``ApiKeysError`` for unusable keys."""
    keys = ApiKeys.from_settings(settings)
    if keys is None and settings.allow_anonymous:
        return [Finding("warn", "access", OPEN_WARNING), _log_finding(settings)]
    if keys is None:
        if host is None or is_loopback(host):
            return [Finding("ok", "access", LOOPBACK_ONLY), _log_finding(settings)]
        return [Finding("unsafe", "access", refusal(host)), _log_finding(settings)]
    sources = "LESIONSEG_API_KEYS, LESIONSEG_API_KEYS_FILE"
    found = [Finding("ok", "access", f"{len(keys.digests)} API key(s) ({sources}): every route "
                     "but /livez and /readyz needs one")]  # fmt: skip
    if settings.allow_anonymous:
        found.append(Finding("warn", "access", ANONYMOUS_WITH_KEYS))
    if settings.metrics_public:
        found.append(Finding("ok", "access", METRICS_PUBLIC))
    if settings.viewer_public:
        found.append(Finding("ok", "access", VIEWER_PUBLIC))
    return [*found, _log_finding(settings)]


def _log_finding(settings: Settings) -> Finding:
    form = "one JSON object per line" if settings.log_format == "json" else "text, for people"
    return Finding("ok", "logs", f"LESIONSEG_LOG_FORMAT={settings.log_format}: {form}")


def refusal(host: str) -> str:
    """The one line of a start refused on ``host`` for want of keys."""
    return (
        f"lesionseg refuses to serve on {host} without API keys: {HOW_TO_OPEN}; or serve on "
        "127.0.0.1 (loopback clients only)"
    )
