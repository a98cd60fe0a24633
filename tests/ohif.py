"""OHIF Viewer 3 (npm's prebuilt ``@ohif/app``) served same-origin with a real Orthanc's DICOMweb.

``fetch_ohif()`` unpacks the package into ``.cache/ohif/<version>/`` with ``npm pack`` (what
`make ohif-deps` runs: ``python -m tests.ohif``); ``serve_ohif()`` serves its ``dist/`` on
127.0.0.1 with an ``app-config.js`` whose one data source is ``/dicom-web`` on the same origin,
forwarded to Orthanc, so the browser needs no CORS. docs/viewer.md shows the same set-up for a
person's browser.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from service.launcher import REPO_ROOT, free_port

OHIF_VERSION = "3.13.2"  # the viewer the issue was tried with (npm: @ohif/app)
CACHE = REPO_ROOT / ".cache" / "ohif"
DIST = CACHE / OHIF_VERSION / "package" / "dist"

# One DICOMweb data source on this origin; Orthanc answers QIDO with includefield and
# serves frames and bulk data by WADO-RS (its DICOMweb plugin).
APP_CONFIG = """window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (lesionseg test)',
        name: 'orthanc',
        wadoUriRoot: '/wado',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        dicomUploadEnabled: false,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
"""
_TYPES = {
    ".js": "application/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def fetch_ohif(version: str = OHIF_VERSION) -> Path:
    """``dist/`` of ``@ohif/app@version``, fetched with ``npm pack`` once (cached).

    Raises:
        RuntimeError: npm is missing or the registry did not answer (the message says which).
    """
    dist = CACHE / version / "package" / "dist"
    if (dist / "index.html").exists():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed (Debian: apt-get install nodejs npm)")
    CACHE.mkdir(parents=True, exist_ok=True)
    # One quick retry: offline, npm's defaults (2 retries, 10-60 s apart) take over a minute.
    retries = [
        "--fetch-retries=1",
        "--fetch-retry-mintimeout=2000",
        "--fetch-retry-maxtimeout=5000",
    ]
    done = subprocess.run(
        [npm, "pack", f"@ohif/app@{version}", "--pack-destination", str(CACHE), *retries],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        why = [x for x in done.stderr.splitlines() if x.startswith("npm error code")]
        raise RuntimeError(
            f"npm pack @ohif/app@{version} failed: {why[0] if why else done.stderr[-1000:]}"
        )
    archive = CACHE / f"ohif-app-{version}.tgz"
    unpacked = CACHE / f"{version}.partial"
    shutil.rmtree(unpacked, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    shutil.rmtree(CACHE / version, ignore_errors=True)
    unpacked.rename(CACHE / version)
    archive.unlink()
    return dist


@contextlib.contextmanager
def serve_ohif(dist: Path, dicomweb_url: str) -> Iterator[str]:
    """OHIF's ``dist`` and ``/dicom-web`` (forwarded to ``dicomweb_url``) on one loopback
    origin; yields its URL."""
    upstream = httpx.Client(timeout=60)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path.startswith("/dicom-web/"):
                return self._forward()
            if path == "/app-config.js":
                return self._send(200, APP_CONFIG.encode(), "application/javascript")
            file = (dist / path.lstrip("/")).resolve()
            if not file.is_relative_to(dist.resolve()) or not file.is_file():
                file = dist / "index.html"  # the single-page app's routes (/viewer?...)
            return self._send(200, file.read_bytes(), _TYPES.get(file.suffix, "text/plain"))

        def _forward(self) -> None:
            suffix = self.path[len("/dicom-web") :]
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            answer = upstream.get(dicomweb_url + suffix, headers=headers)
            kind = answer.headers.get("content-type", "application/octet-stream")
            self._send(answer.status_code, answer.content, kind)

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            # SharedArrayBuffer (cornerstone's web workers) needs a cross-origin isolated page.
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # quiet: pytest shows failures, not requests
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        upstream.close()


if __name__ == "__main__":  # `make ohif-deps`
    try:
        print(fetch_ohif())
    except RuntimeError as exc:
        sys.exit(str(exc))
