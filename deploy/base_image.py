"""A local Debian base image, for machines that reach no container registry.

`bentoml containerize` builds ``FROM python:3.11-slim``, which needs a registry. Where none
answers, :func:`ensure_local_base` makes the same kind of base from Debian packages alone:
``debootstrap --variant=minbase`` of bookworm (Python 3.11, as the slim image) from this
machine's Debian mirror, turned into an image with ``podman import`` (~1 min, once: the tag
carries a digest of the recipe, so an unchanged recipe reuses the image).

The image build downloads packages (apt, uv) through the same network as this machine, so the
base carries what this machine trusts and how it reaches package indexes: its extra CA
certificates (``/usr/local/share/ca-certificates``), and its pip index and timeout translated
for uv, which does the installing. uv itself is copied from the project's venv (pinned in
requirements.lock), so the build does not ``pip install`` it. None of this is in the
product's files: it is the base of a locally built image only.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from deploy.engine import Engine, as_root

RELEASE = "bookworm"  # Debian 12: Python 3.11, as bentofile.yaml's python:3.11-slim
PACKAGES = ("python3", "ca-certificates")  # minbase has bash, apt and useradd already
NAME = "lesionseg-base"
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
FALLBACK_MIRROR = "http://deb.debian.org/debian"


def debian_mirror() -> str:
    """The first Debian archive named by this machine's apt sources (deb822 or one-line)."""
    apt = Path("/etc/apt")
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    files += sorted((apt / "sources.list.d").glob("*.sources"))
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] == ["deb"]:
                urls = [w for w in words[1:] if "://" in w]
            elif words[:1] == ["URIs:"]:
                urls = words[1:]
            else:
                continue
            urls = [u for u in urls if "security" not in u]
            if urls:
                return urls[0].rstrip("/")
    return FALLBACK_MIRROR


def uv_binary() -> Path:
    uv = Path(sys.executable).parent / "uv"
    if not uv.is_file():
        raise SystemExit(f"{uv} is missing: run `make setup` (uv is pinned in requirements.lock)")
    return uv


def package_index_env() -> dict[str, str]:
    """This machine's pip index, timeout and CA bundle, as the variables uv reads."""
    config = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    pip: dict[str, str] = {}
    for line in config.splitlines():  # e.g. global.index-url='https://...' / :env:.timeout='60'
        key, _, value = line.partition("=")
        pip[key.split(".", 1)[-1]] = value.strip("'\"")
    env = {"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"}  # the base's bundle
    if pip.get("index-url", "").startswith("http"):
        env["UV_DEFAULT_INDEX"] = pip["index-url"]
    if timeout := pip.get("timeout") or pip.get("default-timeout"):
        env["UV_HTTP_TIMEOUT"] = timeout
    return env


def recipe() -> dict:
    """Everything the base is made of; its digest names the image."""
    cas = sorted(LOCAL_CA_DIR.glob("*.crt")) if LOCAL_CA_DIR.is_dir() else []
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    return {
        "release": RELEASE,
        "packages": PACKAGES,
        "mirror": debian_mirror(),
        "ca": {p.name: digest(p) for p in cas},
        "uv": digest(uv_binary()),
        "env": package_index_env(),
        "script": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }


def local_base_tag(spec: dict | None = None) -> str:
    spec = spec or recipe()
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return f"localhost/{NAME}:{RELEASE}-{key}"


def _populate(root: Path, spec: dict) -> None:
    """debootstrap into ``root``, then add the CA certificates and uv; drop apt's caches.
    Everything in ``root`` is root's, hence the commands (through sudo when not root)."""

    def sh(*argv: str) -> None:
        subprocess.run(as_root(list(argv)), check=True, stdout=subprocess.DEVNULL)

    packages = ",".join(spec["packages"])
    sh("debootstrap", "--variant=minbase", f"--include={packages}", RELEASE, str(root),
       spec["mirror"])  # fmt: skip
    if spec["ca"]:
        sh("cp", *(str(LOCAL_CA_DIR / n) for n in spec["ca"]), f"{root}/{LOCAL_CA_DIR}/")
    sh("chroot", str(root), "update-ca-certificates")
    sh("cp", str(uv_binary()), f"{root}/usr/local/bin/uv")
    caches = ("var/lib/apt/lists", "var/cache/apt/archives", "usr/share/doc", "usr/share/man")
    sh("sh", "-c", " ".join(f"rm -rf {root}/{c}/*;" for c in caches))


def ensure_local_base(engine: Engine, fresh: bool = False) -> str:
    """The tag of the local base image, made first when this recipe has none yet (or when
    ``fresh``)."""
    if engine.name != "podman":
        raise SystemExit("the local base image is made with podman import (no registry here)")
    spec = recipe()
    tag = local_base_tag(spec)
    if engine.image_exists(tag) and not fresh:
        return tag
    print(f"making the local base image {tag} (debootstrap {RELEASE} from {spec['mirror']})")
    with tempfile.TemporaryDirectory(prefix="lesionseg-base-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "rootfs"
        _populate(root, spec)
        changes = [f"ENV {k}={v}" for k, v in spec["env"].items()]
        changes += ["ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]']
        tar = subprocess.Popen(
            [*as_root(["tar"]), "-C", str(root), "-c", "."], stdout=subprocess.PIPE
        )
        args = ["import", *(a for c in changes for a in ("--change", c)), "-", tag]
        engine.run(*args, stdin=tar.stdout)
        assert tar.wait() == 0, "tar of the base root file system failed"
        subprocess.run(as_root(["rm", "-rf", str(root)]), check=True)
    return tag
