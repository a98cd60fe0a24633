"""The service's container image: ``bentoml build`` + ``bentoml containerize``.

    python -m deploy.container build [--gpu]     (make container / make container-gpu)

1. The engine: Docker when its daemon answers, else podman (deploy/engine.py).
2. The base: bentofile.yaml's (python:3.11-slim) where a registry answers; else a local Debian
   bookworm base made from this machine's Debian mirror (deploy/base_image.py).
3. ``bentoml build`` of bentofile.yaml (the base swapped in when local; ``--gpu``: onnxruntime-gpu
   and TensorRT, deploy/requirements-gpu.txt, with their CUDA libraries as wheels).
4. ``bentoml containerize`` with that engine, in Docker's image format, then the last stage
   (:data:`FINAL_STAGE`): BentoML's build tools purged, the writable directory of a read-only
   container, a HEALTHCHECK on ``/livez``. Tags ``<name>:<bento version>`` and ``<name>:latest``.

:func:`running_container` runs an image the way the README says (read-only root, one volume,
non-root) for the tests and the benchmark. The image logs JSON (bentofile.yaml's envs) and needs
API keys or :data:`ANONYMOUS_ENV` to start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from deploy.base_image import ensure_local_base
from deploy.engine import Engine, as_root, find_engine
from service.launcher import REPO_ROOT

NAME = "lesionseg"
GPU_NAME = "lesionseg-gpu"
DATA_DIR = "/var/lib/lesionseg"  # the one writable volume (FINAL_STAGE)
PORT = 3000
USER_ID = 1034  # the user bentoml of BentoML's images (its BENTO_UID_GID)
REGISTRY_PROBE = "https://registry-1.docker.io/v2/"
GPU_REQUIREMENTS = Path(__file__).parent / "requirements-gpu.txt"
GPU_ENV = {
    "LESIONSEG_DEVICE": "cuda",
    # The CUDA 13 and cuDNN wheels' libraries (and TensorRT's), for onnxruntime-gpu to load.
    "LD_LIBRARY_PATH": ":".join(
        f"/app/.venv/lib/python3.11/site-packages/{d}"
        for d in ("nvidia/cu13/lib", "nvidia/cudnn/lib", "tensorrt_libs")
    ),
}
LIVEZ = (
    "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/livez' "
    "% os.environ.get('BENTOML_PORT', '3000'), timeout=4)"
)
HEALTHCHECK = "HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 CMD " + (
    json.dumps(["python", "-c", LIVEZ])
)
# The start: the deployment check (service/doctor.py; exit 1 on an unsafe finding stops it), then
# what BentoML's entrypoint runs without arguments, exec'd so that it gets SIGTERM.
START_SCRIPT = (
    'cd "$BENTO_PATH/src" && python -m service.doctor --host 0.0.0.0 '
    '&& cd "$BENTO_PATH" && exec bentoml serve "$BENTO_PATH"'
)
START = "CMD " + json.dumps(["sh", "-c", START_SCRIPT])
# The last stage, on top of BentoML's image:
# - BentoML's Dockerfile installs build-essential and git (~640 MB) for packages built from
#   source; every package here is a wheel, so they go, and podman squashes the image into one
#   layer so that this shrinks it (Docker's builder cannot squash: there they are only hidden);
# - the one writable directory of a read-only container, owned by the service's user (a new
#   volume mounted there takes that): the jobs, BentoML's home (Prometheus' files; the bento's
#   models stay in the image) and temporary files. Set here, not in bentofile.yaml's envs:
#   BentoML's Dockerfile sets BENTOML_HOME itself, after them;
# - the HEALTHCHECK, which BentoML does not write.
DATA_ENV = {
    "LESIONSEG_JOBS_DIR": f"{DATA_DIR}/jobs",
    "LESIONSEG_CACHE_DIR": f"{DATA_DIR}/cache",
    "BENTOML_HOME": f"{DATA_DIR}/bentoml",
    "TMPDIR": DATA_DIR,
}
# The image binds 0.0.0.0, so without API keys it refuses to start (service/auth.py): callers
# that run it without keys on purpose (the tests, the benchmark) pass this.
ANONYMOUS_ENV = {"LESIONSEG_ALLOW_ANONYMOUS": "true"}
FINAL_STAGE = f"""FROM {{stage}}
USER root
RUN apt-get purge -y -q --auto-remove -o APT::AutoRemove::RecommendsImportant=false \\
        -o APT::AutoRemove::SuggestsImportant=false build-essential git gnupg2 \\
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \\
    && install -d -o bentoml -g bentoml -m 0770 {DATA_DIR}
USER bentoml
ENV {" ".join(f"{k}={v}" for k, v in DATA_ENV.items())}
{HEALTHCHECK.replace("{", "{{").replace("}", "}}")}
{START}
"""


@dataclass(frozen=True)
class Built:
    """What :func:`build` made: the image tags, the bento and its base, and how long it took."""

    image: str
    latest: str
    bento: str
    base_image: str
    seconds: float


def registry_reachable(url: str = REGISTRY_PROBE, timeout: float = 5.0) -> bool:
    """Whether Docker Hub answers at all (its API answers 401 without credentials)."""
    try:
        httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return False
    return True


def _bentoml(*args: str) -> list[str]:
    return [sys.executable, "-m", "bentoml", *args]


def _env(engine: Engine) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ, **engine.env, "PATH": f"{venv_bin}:{os.environ['PATH']}"}


def _bentofile(base_image: str | None, gpu: bool, workdir: Path) -> Path:
    """bentofile.yaml, with the local base swapped in, and for ``gpu`` the GPU requirements
    and environment. Written under ``workdir`` (inside the build context: BentoML reads no
    requirements from outside it)."""
    config = yaml.safe_load((REPO_ROOT / "bentofile.yaml").read_text())
    docker = config.setdefault("docker", {})
    if base_image:
        docker.pop("python_version", None)  # a custom base brings its own Python
        docker["base_image"] = base_image
    if gpu:
        serve = (REPO_ROOT / config["python"]["requirements_txt"]).read_text().splitlines()
        cpu_runtime = [line for line in serve if not line.startswith("onnxruntime==")]
        requirements = workdir / "requirements-gpu.lock"
        requirements.write_text("\n".join([*cpu_runtime, GPU_REQUIREMENTS.read_text()]))
        config["python"]["requirements_txt"] = str(requirements.relative_to(REPO_ROOT))
        envs = {e["name"]: e for e in config.get("envs", [])}
        envs |= {k: {"name": k, "value": v} for k, v in GPU_ENV.items()}
        config["envs"] = list(envs.values())
    path = workdir / "bentofile.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def build_bento(engine: Engine, base_image: str | None, gpu: bool = False) -> str:
    """``bentoml build`` into ``$BENTOML_HOME``; returns the bento tag."""
    scratch = REPO_ROOT / "out" / "container"  # not hidden: BentoML refuses dot-paths
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        bentofile = _bentofile(base_image, gpu, Path(tmp))
        out = subprocess.run(
            _bentoml("build", "-f", str(bentofile), "-o", "tag", str(REPO_ROOT)),
            cwd=REPO_ROOT,
            env=_env(engine),
            capture_output=True,
            text=True,
        )
    if out.returncode != 0:
        raise SystemExit(f"bentoml build failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")


def containerize(engine: Engine, bento: str, name: str, no_cache: bool = False) -> tuple[str, str]:
    """``bentoml containerize`` the bento (tagged ``<name>-bento:<version>``, kept as the build
    cache of the next one), then the last stage (:data:`FINAL_STAGE`); returns the version tag
    and the latest tag. Earlier versions of both are removed."""
    version = bento.split(":", 1)[1]
    stage = f"{name}-bento:{version}"
    command = _bentoml("containerize", bento, "--backend", engine.name, "-t", stage)
    command += ["--opt", "no-cache"] if no_cache else []
    if engine.name == "podman":
        command += ["--opt", "format=docker"]  # the OCI format has no HEALTHCHECK
        command = as_root(command)
    subprocess.run(command, env=_env(engine), check=True)
    image, latest = f"{name}:{version}", f"{name}:latest"
    options = ["--format", "docker", "--squash-all"] if engine.name == "podman" else []
    with tempfile.TemporaryDirectory() as context:  # the stage needs no files
        engine.run("build", *options, "-t", image, "-t", latest, "-f", "-", context,
                   input=FINAL_STAGE.format(stage=stage))  # fmt: skip
    prune_older(engine, stage)
    prune_older(engine, image)  # squashed, each version is a whole copy (~1.2 GB)
    return image, latest


def prune_older(engine: Engine, keep: str) -> None:
    """Remove the other versions of ``keep``'s repository (and the layers only they use);
    ``latest`` stays."""
    repository, version = keep.split(":")
    listed = engine.run("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    for tag in listed:
        repo, _, other = tag.rpartition(":")
        if repo.rsplit("/", 1)[-1] == repository and other not in (version, "latest"):
            engine.run("rmi", tag, check=False)


def build(name: str = NAME, gpu: bool = False, no_cache: bool = False) -> Built:
    """The whole recipe (module docstring). Needs the models in the BentoML store (`make
    export models`). ``no_cache``: make the local base again and build every layer anew."""
    engine = find_engine()
    if engine is None:
        raise SystemExit("no container engine: install podman (`make container-deps`) or Docker")
    start = time.monotonic()
    base = None if registry_reachable() else ensure_local_base(engine, fresh=no_cache)
    bento = build_bento(engine, base, gpu=gpu)
    image, latest = containerize(engine, bento, name, no_cache=no_cache)
    return Built(image, latest, bento, base or "bentofile.yaml's", time.monotonic() - start)


def image_size(engine: Engine, image: str) -> int:
    """The image's size in bytes, as the engine reports it (all layers, uncompressed)."""
    return int(engine.run("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


@dataclass
class Container:
    engine: Engine
    name: str
    url: str
    started: float  # time.monotonic() just before `run`
    ready_s: float  # from `run` to /readyz 200

    def logs(self) -> str:
        out = self.engine.run("logs", self.name, check=False)
        return out.stdout + out.stderr

    def exec(self, *argv: str) -> str:
        return self.engine.run("exec", self.name, *argv).stdout


@contextlib.contextmanager
def running_container(
    engine: Engine,
    image: str,
    volume: str,
    port: int,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> Iterator[Container]:
    """Run ``image`` with a read-only root (no writable tmpfs either), the named ``volume`` at
    DATA_DIR, the image's own (non-root) user and ``port`` published on loopback; yield once
    ``/readyz`` answers 200. The container is removed on exit (stop it first to see how it
    ends)."""
    name = f"lesionseg-{os.getpid()}-{port}"
    args = ["run", "-d", "--name", name, "--read-only", "-v", f"{volume}:{DATA_DIR}"]
    if engine.name == "podman":  # no tmpfs on /tmp, /var/tmp, /run: as Docker and Kubernetes
        args.append("--read-only-tmpfs=false")
    args += ["-p", f"127.0.0.1:{port}:{PORT}"]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    started = time.monotonic()
    engine.run(*args, image)
    url = f"http://127.0.0.1:{port}"
    container = Container(engine, name, url, started, 0.0)
    try:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            state = engine.run("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if state != "running":
                raise RuntimeError(f"container {state}:\n{container.logs()[-3000:]}")
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"not ready in {timeout}s:\n{container.logs()[-3000:]}")
            time.sleep(0.2)
        container.ready_s = time.monotonic() - started
        yield container
    finally:
        engine.run("rm", "-f", *(["-t", "0"] if engine.name == "podman" else []), name,
                   check=False)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="build the image (make container)")
    build_parser.add_argument("--gpu", action="store_true", help="the CUDA variant")
    build_parser.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    args = parser.parse_args(argv)
    built = build(GPU_NAME if args.gpu else NAME, gpu=args.gpu, no_cache=args.no_cache)
    print(f"built {built.image} and {built.latest} from {built.bento} on {built.base_image} "
          f"in {built.seconds:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
