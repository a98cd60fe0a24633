"""The container engine: a Docker daemon when one answers, else podman (Debian's, rootful).

Podman runs here with a project-local ``containers.conf`` (``CONTAINERS_CONF``, written under
``.cache/podman/``), so the machine's own files stay as they are. What it sets was measured on
this project's machines (podman 4.3, a kernel with hybrid cgroups v1/v2):

- ``runtime = "runc"`` and ``cgroup_manager = "cgroupfs"``: crun refuses the hybrid cgroups and
  there is no systemd to manage them;
- ``default_ulimits`` no higher than this process's own: podman's defaults ask for more than the
  kernel lets a container have (``error setting rlimit``). The process limit is also capped at
  ``kernel.pid_max``: above it runc's setrlimit was refused here.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from service.launcher import REPO_ROOT

CONF_DIR = REPO_ROOT / ".cache" / "podman"


def as_root(argv: list[str]) -> list[str]:
    """``argv`` run as root: as it is when this process is root, else through sudo."""
    keep = "--preserve-env=CONTAINERS_CONF,BENTOML_HOME"  # bentoml containerize needs both
    return argv if os.geteuid() == 0 else ["sudo", keep, *argv]


@dataclass(frozen=True)
class Engine:
    """A container CLI (``docker`` or ``podman``) and the environment it runs with."""

    name: str
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, *args: str) -> list[str]:
        return as_root([self.name, *args]) if self.name == "podman" else [self.name, *args]

    def run(self, *args: str, check: bool = True, capture: bool = True, **kwargs):
        """Run ``<engine> args...``; output captured as text unless ``capture`` is False."""
        return subprocess.run(
            self.argv(*args),
            env={**os.environ, **self.env},
            check=check,
            capture_output=capture,
            text=True,
            **kwargs,
        )

    def version(self) -> str:
        return self.run("--version").stdout.strip()

    def image_exists(self, tag: str) -> bool:
        return self.run("image", "inspect", tag, check=False).returncode == 0


def _limit(kind: int) -> int:
    soft, hard = resource.getrlimit(kind)
    limits = [v for v in (soft, hard) if v != resource.RLIM_INFINITY]
    return min(limits) if limits else 1 << 20


def podman_conf() -> Path:
    """Write the project's containers.conf (see the module docstring) and return its path."""
    nofile = _limit(resource.RLIMIT_NOFILE)
    nproc = _limit(resource.RLIMIT_NPROC)
    pid_max = Path("/proc/sys/kernel/pid_max")
    if pid_max.is_file():
        nproc = min(nproc, int(pid_max.read_text()))
    text = (
        "# Written by deploy/engine.py; see its docstring for why.\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    path = CONF_DIR / "containers.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def docker_daemon_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return False
    return info.returncode == 0


def find_engine() -> Engine | None:
    """Docker when its daemon answers, else podman when installed, else None
    (``make container-deps`` installs podman)."""
    if docker_daemon_answers():
        return Engine("docker")
    if shutil.which("podman"):
        return Engine("podman", {"CONTAINERS_CONF": str(podman_conf())})
    return None
