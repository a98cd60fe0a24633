"""Service fixtures: a private BentoML store with the default models imported."""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Read at import time: a private BentoML store, a metrics dir for /metrics, a job store.
_ROOT = Path(tempfile.mkdtemp(prefix="lesionseg-test-"))
os.environ["BENTOML_HOME"] = str(_ROOT / "bentoml")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_ROOT / "prometheus")
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
os.environ["LESIONSEG_JOBS_DIR"] = str(_ROOT / "jobs")  # the service's job store


@pytest.fixture(scope="session")
def model_store(exported) -> Path:
    """Import the default SAM, detector and their ONNX exports into the test store, as
    `make serve` does."""
    from lesionseg.models.bundle_settings import effective_settings
    from lesionseg.settings import Settings
    from service.model_store import import_detector, import_exports, import_sam

    settings = effective_settings(Settings(backend="torch"))
    import_sam(settings)
    import_detector(settings)
    import_exports(exported[0])
    return Path(os.environ["BENTOML_HOME"])


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def lits_png(lits) -> bytes:
    return png_bytes(lits.slice(110).image)


@pytest.fixture(scope="session")
def client(model_store):
    """The whole service in-process (startup and model loading included), once ready."""
    from starlette.testclient import TestClient

    from service.app import LesionSeg

    # A loopback client: without API keys the service answers no other (service/auth.py).
    with TestClient(LesionSeg.to_asgi(), client=("127.0.0.1", 50000)) as test_client:
        deadline = time.monotonic() + 300
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "service never became ready"
            time.sleep(0.5)
        yield test_client
