"""Serve one image the way the service does with LESIONSEG_BACKEND=onnxruntime or openvino, then
report
which heavy training packages got imported (none may be: issue 12's lean serving image).

``python -m tests.serve_without_torch`` prints one JSON line; tests/test_serve_without_torch.py
runs it in a fresh interpreter, and so can a serving-only virtual environment
(requirements-serve.lock), which has none of those packages to import.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEAVY = ("torch", "torchvision", "ultralytics", "transformers", "monai", "peft")
EXAMPLE = Path(__file__).resolve().parent.parent / "data" / "examples" / "lits117-z110.png"


def main() -> dict:
    import service.app  # noqa: F401  (the service module and its mixins, as bentoml loads them)
    from lesionseg.io.images import decode_image
    from lesionseg.models.bundle_settings import effective_settings
    from lesionseg.models.detector import Detector
    from lesionseg.models.segmenter import Segmenter
    from lesionseg.settings import Settings

    settings = effective_settings(Settings())
    assert settings.backend in ("onnxruntime", "openvino"), settings.backend
    image = decode_image(EXAMPLE.read_bytes(), max_pixels=settings.max_image_pixels).pixels
    detector = Detector.from_settings(settings)
    segmenter = Segmenter.from_settings(settings)
    (found,) = detector.detect([image])
    (prediction,) = segmenter.predict(segmenter.embed([image]), [found.boxes])
    return {
        "lesions": len(found),
        "labels": list(found.labels),
        "mask_pixels": [int(m.sum()) for m in prediction.masks],
        "runtime_imported": settings.backend in sys.modules,
        "heavy_imported": [name for name in HEAVY if name in sys.modules],
    }


if __name__ == "__main__":
    print(json.dumps(main()))
