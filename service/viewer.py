"""The viewer page: its static files, its settings, and the frames as the models see them.

- ``Viewer.app``, a small Starlette app mounted on ``LesionSeg``: ``/viewer`` (the page, plain
  files from ``service/viewer/``), ``/viewer/config.json`` (window presets, the default window,
  the score threshold's default and floor), ``/`` (a redirect to ``/viewer``) and ``/docs``
  (BentoML's own API page, which ``/`` used to be: the same file, its assets and ``/docs.json``
  unchanged).
- :func:`preview_body`, the answer of ``POST /segment/preview`` (service/routes/preview.py):
  each frame's pixels after the intensity mapping (DICOM/NIfTI window included) as a PNG, so
  that the page shows exactly what the models saw.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from lesionseg.io.uploads import Upload
from lesionseg.outputs.overlay import encode_png
from lesionseg.outputs.result_json import frame_source
from lesionseg.settings import Settings
from service.schemas import FrameSource

STATIC_DIR = Path(__file__).parent / "viewer"
MEDIA_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}


class PreviewFrame(BaseModel):
    frame: int = Field(description="0-based frame (DICOM frame, series file, NIfTI slice)")
    width: int
    height: int
    png: str = Field(description="base64 PNG of the (H, W, 3) pixels the models see")
    pixel_spacing_mm: list[float] | None = Field(description="[row, column] spacing or null")
    source: FrameSource | None = Field(None, description="DICOM/NIfTI only: the frame's origin")


class PreviewResponse(BaseModel):
    """POST /segment/preview: the upload's frames after the intensity mapping."""

    kind: str = Field(description="'image', 'dicom' or 'nifti'")
    number_of_frames: int
    frames: list[PreviewFrame]


def preview_body(uploads: list[Upload]) -> PreviewResponse:
    frames = []
    for upload in uploads:
        for index, image in enumerate(upload.frames):
            spacing = image.pixel_spacing_mm
            frames.append(
                PreviewFrame(
                    frame=len(frames),
                    width=image.width,
                    height=image.height,
                    png=base64.b64encode(encode_png(image.pixels)).decode("ascii"),
                    pixel_spacing_mm=None if spacing is None else [float(s) for s in spacing],
                    source=frame_source(upload.dicom, upload.nifti, index),
                )
            )
    first = uploads[0]
    kind = "dicom" if first.dicom is not None else "nifti" if first.nifti is not None else "image"
    return PreviewResponse(kind=kind, number_of_frames=len(frames), frames=frames)


def _bentoml_api_page() -> Path:
    """The HTML BentoML serves at ``/`` (it loads its assets and ``docs.json`` relatively, so
    it works from ``/docs`` as well)."""
    from _bentoml_impl.server import app as bentoml_app
    from bentoml._internal.configuration.containers import BentoMLContainer

    name = "main-ui.html" if BentoMLContainer.new_index else "main-openapi.html"
    return Path(bentoml_app.__file__).parent / name


class Viewer:
    """The page's routes; ``get_settings()`` returns the running service's settings (the
    model bundle's threshold and window included), which say what the page offers."""

    def __init__(self, get_settings: Callable[[], Settings]) -> None:
        self._get_settings = get_settings
        self.files = {p.name: p for p in STATIC_DIR.iterdir() if p.suffix in MEDIA_TYPES}
        self.app = Starlette(
            routes=[
                Route("/", self.home, methods=["GET"]),
                Route("/docs", self.docs, methods=["GET"]),
                Route("/viewer", self.page, methods=["GET"]),
                Route("/viewer/config.json", self.config, methods=["GET"]),
                Route("/viewer/{name}", self.static, methods=["GET"]),
            ]
        )

    async def home(self, _request: Request) -> Response:
        return RedirectResponse("/viewer", status_code=307)

    async def docs(self, _request: Request) -> Response:
        return FileResponse(_bentoml_api_page(), media_type="text/html")

    async def page(self, _request: Request) -> Response:
        return self._file("index.html")

    async def static(self, request: Request) -> Response:
        return self._file(request.path_params["name"])

    async def config(self, _request: Request) -> Response:
        s = self._get_settings()
        return JSONResponse(
            {
                "window_presets": {k: list(v) for k, v in s.window_presets.items()},
                "default_window": s.default_window,
                "score_threshold": s.score_threshold,
                "score_floor": s.detector_score_floor,
            }
        )

    def _file(self, name: str) -> Response:
        path = self.files.get(name)
        if path is None:
            return JSONResponse({"error": f"no viewer file {name!r}"}, status_code=404)
        # no-cache: a browser revalidates, so a new version of the page is never mixed with
        # an old script.
        return FileResponse(
            path, media_type=MEDIA_TYPES[path.suffix], headers={"Cache-Control": "no-cache"}
        )
