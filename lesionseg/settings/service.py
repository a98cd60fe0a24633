"""Settings of the service: input limits, deadlines, shutdown, access and logs.

Fields of :class:`lesionseg.settings.Settings`, grouped by concern; that class is the one
settings object (read from the environment with the ``LESIONSEG_`` prefix), not this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ByteSize, Field, SecretStr


class ServiceFields(BaseModel):
    """Limits, deadlines, shutdown, access and logging of the service."""

    # --- input limits -------------------------------------------------------------------------
    max_upload_bytes: ByteSize = Field(
        ByteSize(256 * 1024 * 1024),
        ge=1,
        description="Largest accepted upload (bytes, or with a unit: 256MiB): each file, and all "
        "the files of one request together (a series). The request body may be 1 MiB more "
        "(the other form fields); a larger one is refused with 413 before it is read "
        "(service/limits.py).",
    )
    max_inflight_bytes: ByteSize = Field(
        ByteSize(1024**3),
        ge=1,
        description="Most request-body bytes one API process holds at once, over all requests "
        "in flight (bytes, or with a unit: 512MiB). A request whose declared body would pass it "
        "gets 503 with Retry-After at once; one larger than the bound itself gets 413. Bounds "
        "the memory and the temporary disk of uploads, as max_pending_requests bounds their "
        "count.",
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest accepted image (width x height, per frame)."
    )
    max_frames: int = Field(
        256,
        ge=1,
        description="Most frames (DICOM multi-frame objects and series, NIfTI slices) one "
        "request may segment; each frame with a detection costs one SAM encoder pass.",
    )
    max_total_pixels: int = Field(
        100_000_000,
        ge=1,
        description="Largest pixel count of one request over all its frames (a DICOM "
        "multi-frame object or series, a NIfTI volume): bounds the memory of decoding, about "
        "7 bytes per pixel. 256 CT slices of 512 x 512 are 67 M.",
    )

    request_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Deadline of one synchronous request (s), from its arrival: past it the "
        "service stops working on it and answers 504. Async /jobs are not bound by it.",
    )

    # --- shutdown and timeouts ----------------------------------------------------------------
    drain_idle_s: float = Field(
        5.0,
        gt=0,
        description="On SIGTERM the model runner stays up for the API's requests in flight; it "
        "stops once no runner call came for this many seconds (service/drain.py).",
    )
    drain_timeout_s: float = Field(
        25.0,
        gt=0,
        description="Most seconds the model runner defers a SIGTERM (within Kubernetes' default "
        "grace period of 30 s).",
    )
    traffic_backstop_s: float = Field(
        30.0,
        gt=0,
        description="BentoML's own traffic timeout of both services is request_timeout_s plus "
        "this, so that the service's 504 (which names the setting) comes first.",
    )

    # --- access -------------------------------------------------------------------------------
    allow_anonymous: bool = Field(
        False,
        description="Without API keys, answer clients beyond this machine. Unset with no keys, "
        "the service is closed: it serves loopback clients only and refuses to start bound to "
        "another interface; set it to true to run open on purpose (a trusted network).",
    )
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated API keys (or their SHA-256 hex digests). With keys set, "
        "every route but /livez and /readyz needs 'Authorization: Bearer <key>'.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="File of API keys, one per line (a key or its SHA-256 hex digest; '#' "
        "starts a comment); combined with api_keys. Read at start.",
    )
    metrics_public: bool = Field(
        False, description="With API keys set, /metrics still answers without a key."
    )
    max_requests_per_key: int | None = Field(
        None,
        ge=1,
        description="Most synchronous requests (the /segment routes) one API key may have in "
        "flight in one API process (pod); over it, 429 with Retry-After. None: no per-key limit "
        "(the global limits still apply). Without API keys it does not apply: there is no key "
        "to count by.",
    )
    viewer_public: bool = Field(
        False,
        description="With API keys set, the /viewer page's own files (and the / redirect) "
        "answer without a key, so a browser can open it; the page sends the key typed into its "
        "key field with every call, and every data route still needs it.",
    )

    # --- logging ------------------------------------------------------------------------------
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Service log lines: 'text' for people, 'json' (one object per line) for "
        "log shippers.",
    )
