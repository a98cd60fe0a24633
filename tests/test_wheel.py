"""The installable product: the wheel, installed in a clean virtual environment, runs from
outside the repository (``lesionseg --help``, ``predict`` on the README example, ``train
--help``) and ``lesionseg train`` without the training extra names it before any work.

The clean environment gets its dependencies without the repository: ``python -m venv``, then a
``.pth`` file listing a copy of the project venv's site-packages made of symlinks, every entry
but the training extra's packages (peft, monai) and the editable install of this repository.
A path line in a ``.pth`` file does not run the ``.pth`` files of that directory, so nothing of
the editable install could leak in anyway; the wheel is installed with ``--no-deps``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "data" / "examples" / "lits117-z110.png"  # the README's example (make data)
TRAIN_EXTRA = ("peft", "monai")  # hidden: `lesionseg train` must name the extra
# Not copied into the wheel's build tree: environments, caches, data, build outputs.
NOT_SOURCES = (".venv", ".git", ".cache", "data", "runs", "out", "build", "dist", "site")


def _run(cmd: list, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    print(f"$ {' '.join(map(str, cmd))}\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


def _hidden(name: str) -> bool:
    """An entry of site-packages the clean environment must not see."""
    stem = name.split("-")[0].split(".")[0].lower()
    editable = name.startswith("__editable__") or (stem == "lesionseg" and name.endswith("info"))
    return stem in TRAIN_EXTRA or editable or name.endswith(".pth")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The wheel built from this working tree, installed in a clean venv: its paths and env."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    shutil.copytree(
        REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCES, "*.egg-info", "__pycache__")
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    result = _run([*build, "-w", root / "dist", source], root, env)
    assert result.returncode == 0, result.stderr
    (wheel,) = (root / "dist").glob("lesionseg-*.whl")

    venv = root / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", venv], root, env).returncode == 0
    python = venv / "bin" / "python"
    deps = root / "deps"  # the project's site-packages without the extra and the repository
    deps.mkdir()
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        if not _hidden(entry.name):
            (deps / entry.name).symlink_to(entry)
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   root, env).stdout.strip()  # fmt: skip
    (Path(purelib) / "project-deps.pth").write_text(f"{deps}\n")
    install = [python, "-m", "pip", "install", "--no-deps", "--ignore-installed", wheel]
    result = _run(install, root, env)
    assert result.returncode == 0, result.stderr
    cwd = root / "elsewhere"  # not the repository: nothing found relative to the cwd
    cwd.mkdir()
    return {"python": python, "cli": venv / "bin" / "lesionseg", "cwd": cwd, "env": env}


def test_the_installed_package_is_the_wheel_not_the_repository(installed):
    script = (
        "import json, pkgutil, importlib, lesionseg, lesionseg.models.bundle as b\n"
        "names = [m.name for m in pkgutil.walk_packages(lesionseg.__path__, 'lesionseg.')\n"
        "         if not m.name.startswith('lesionseg.train')]\n"
        "files = [importlib.import_module(n).__file__ for n in names]\n"
        "print(json.dumps({'package': lesionseg.__file__, 'bundle': str(b.SHIPPED_BUNDLE),\n"
        "                  'files': files}))\n"
    )
    result = _run([installed["python"], "-c", script], installed["cwd"], installed["env"])
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.splitlines()[-1])
    site = Path(found["package"]).parents[1]
    assert site.name == "site-packages" and REPO not in Path(found["package"]).parents
    assert len(found["files"]) > 40
    assert [f for f in found["files"] if Path(f).is_relative_to(REPO)] == []
    assert all(Path(f).is_relative_to(site) for f in found["files"])
    bundle = Path(found["bundle"])
    assert bundle.is_relative_to(site) and (bundle / "model.json").is_file()
    assert (bundle / "detector.pt").is_file()


def test_help_and_train_help_run_from_the_wheel(installed):
    for args, expected in ((["--help"], "predict"), (["train", "--help"], "--from-scratch")):
        result = _run([installed["cli"], *args], installed["cwd"], installed["env"])
        assert result.returncode == 0 and expected in result.stdout, result.stderr


def test_predict_the_readme_example_from_the_wheel(installed, lits):
    if not EXAMPLE.is_file():  # `make data` writes it; a bare pytest run needs it too
        from lesionseg.datasets.examples import write_examples

        write_examples(lits, EXAMPLE.parent, 110)
    image = installed["cwd"] / EXAMPLE.name  # the user's own copy, outside the repository
    shutil.copyfile(EXAMPLE, image)
    out = installed["cwd"] / "out"
    result = _run(
        [installed["cli"], "predict", image, "--out", out], installed["cwd"], installed["env"]
    )
    assert result.returncode == 0, result.stderr
    body = json.loads((out / "lits117-z110.json").read_text())
    assert body["lesions"] and body["models"]["bundle"]
    assert (out / "lits117-z110.overlay.png").read_bytes()[:4] == b"\x89PNG"


def test_train_without_the_extra_names_it_before_any_work(installed, tmp_path):
    hidden = [installed["python"], "-c", "import peft"]
    assert _run(hidden, installed["cwd"], installed["env"]).returncode != 0  # really hidden
    cwd, dataset, out = tmp_path / "cwd", tmp_path / "dataset", tmp_path / "bundle"
    cwd.mkdir()
    dataset.mkdir()
    result = _run([installed["cli"], "train", dataset, "--out", out], cwd, installed["env"])
    assert result.returncode == 2
    assert result.stderr.startswith("lesionseg train: error: the training extra is not installed")
    assert "peft" in result.stderr and "pip install 'lesionseg[train]'" in result.stderr
    # Before any work: the empty dataset folder was not even read, nothing was written.
    assert not out.exists() and list(cwd.iterdir()) == []
