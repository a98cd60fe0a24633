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
        "gets 503 with Retry-After at once; one larger than the bound itself gets 413; a "
        "chunked body counts as the largest allowed. Bounds the memory and the temporary disk "
        "of uploads (twice this, in TMPDIR), as max_pending_requests bounds their count.",
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
    # One chain from the request deadline (service/deadlines.py, docs/deployment.md "Time
    # limits"): BentoML's traffic timeout, the drain on SIGTERM, the pod's grace period and the
    # ingress timeouts all follow request_timeout_s.
    drain_idle_s: float = Field(
        5.0,
        gt=0,
        description="On SIGTERM the model runner stays up for the API's requests in flight; once "
        "the API process is gone it stops after this many seconds without a runner call "
        "(service/drain.py).",
    )
    drain_timeout_s: float | None = Field(
        None,
        gt=0,
        description="Most seconds the model runner defers a SIGTERM while the API still answers "
        "its requests in flight. Unset: request_timeout_s + 5, so that a request that arrived "
        "just before the signal is answered; below request_timeout_s such a request may get "
        "503 (the deployment check calls it unsafe). The pod's terminationGracePeriodSeconds "
        "must cover it (docs/deployment.md, Time limits).",
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
        "the service is closed: it answers loopback clients only (403 to any other) and "
        "`bentoml serve` bound to another interface (0.0.0.0: the container, the pods) refuses "
        "to start with one line; set it to true to run open on purpose (a trusted network). "
        "With keys set it changes nothing.",
    )
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated API keys, or their SHA-256 digests written "
        "'sha256:<64 hex digits>'. A bare entry of 64 hex digits (openssl rand -hex 32, or a "
        "digest stored bare) is refused at start: write a digest with its 'sha256:' prefix. "
        "With keys set, every route but /livez and /readyz needs 'Authorization: Bearer <key>'.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="File of API keys, one per line (a key, or its SHA-256 digest written "
        "'sha256:<hex>', as in api_keys; '#' starts a comment); combined with api_keys. Read "
        "at start.",
    )
    metrics_public: bool = Field(
        False, description="With API keys set, /metrics still answers without a key."
    )
    max_requests_per_key: int | None = Field(
        None,
        ge=1,
        description="Most synchronous requests (the /segment routes) one API key may have in "
        "flight in one API process (pod), and most jobs it may have queued or running (POST "
        "/jobs); over it, 429 with Retry-After. None: no per-key limit "
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
        description="Service log lines: 'text' for people (`make serve`), 'json' (one object "
        "per line) for log shippers: the container image and the Kubernetes ConfigMap set "
        "json.",
    )
