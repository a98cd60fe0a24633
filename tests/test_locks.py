"""The two locks: requirements.lock (development and training, everything) and
requirements-serve.lock (serving exported models with onnxruntime, no torch)."""

from service.launcher import REPO_ROOT

TRAINING_ONLY = {"torch", "torchvision", "ultralytics", "transformers", "monai", "peft"}


def _pins(name: str) -> dict[str, str]:
    """Normalised package name -> the exact pin line, of a lock file."""
    pins = {}
    for line in (REPO_ROOT / name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            package, version = line.split("==")
            pins[package.lower().replace("_", "-").replace(".", "-")] = f"{package}=={version}"
    return pins


def test_every_serving_pin_is_the_development_pin():
    serve, full = _pins("requirements-serve.lock"), _pins("requirements.lock")
    assert {"bentoml", "onnxruntime", "numpy", "pydicom", "highdicom"} <= set(serve)
    assert {name: pin for name, pin in serve.items() if full.get(name) != pin} == {}


def test_the_serving_lock_has_no_training_packages():
    serve = _pins("requirements-serve.lock")
    assert not TRAINING_ONLY & set(serve)
    gpu = [n for n in serve if n.startswith(("nvidia-", "cuda-", "triton"))]
    assert gpu == ["nvidia-ml-py"]  # pure Python, BentoML's GPU metrics (one of its dependencies)
