"""`bentoml build` packages the service with the models its backend serves, offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bentoml import bentos

from service.launcher import REPO_ROOT

pytestmark = pytest.mark.slow


def test_bentoml_build_packages_service_and_models(model_store):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    bentoml = [sys.executable, "-m", "bentoml"]
    subprocess.run([*bentoml, "build"], cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    info = subprocess.run(
        [*bentoml, "get", "lesionseg:latest", "-o", "json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    bento = json.loads(info)
    services = {s["name"]: s for s in bento["services"]}
    assert set(services) == {"lesionseg", "lesionseg-models"}
    runner_models = {m["tag"].split(":")[0] for m in services["lesionseg-models"]["models"]}
    assert runner_models == {"lesionseg-exports"}  # the default backend serves the exports
    source = Path(bentos.get("lesionseg:latest").path) / "src"  # the same store, in-process
    assert (source / "service" / "viewer" / "viewer.js").is_file()  # the viewer page
