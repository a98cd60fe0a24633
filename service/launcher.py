"""Start a real `bentoml serve` of this service in a subprocess (tests and benchmarks)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

# The repository's top, where `bentoml serve service.app:LesionSeg` and `make serve` run (this
# module serves a checkout; the installed library knows nothing of the repository).
REPO_ROOT = Path(__file__).resolve().parents[1]

# What service/app.py logs when loading fails: it stays unready, so waiting longer is useless.
UNREADY_FOREVER = re.compile(r"loading (the models )?failed; the (runner|service) stays unready")


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(env: dict[str, str], log: Path, **options) -> Iterator[str]:
    """Serve on a free loopback port with ``env`` added; yield the base URL once ready
    (``options`` as :func:`server_process`)."""
    with server_process(env, log, **options) as (url, _):
        yield url


@contextlib.contextmanager
def server_process(
    env: dict[str, str],
    log: Path,
    *,
    timeout: float = 300,
    ready_path: str = "/readyz",
    make_serve: bool = False,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Serve on a free loopback port with ``env`` added; yield ``(url, process)`` once
    ``ready_path`` answers 200 (``/livez`` to talk to the API before the models are loaded).

    ``make_serve``: run `make serve` (export and store import included) instead of
    `bentoml serve` alone. The server's output goes to ``log``. ``process`` is BentoML's
    arbiter (:func:`process_tree` lists it with its workers, for the fault tests). On exit
    every process of the server is stopped, workers orphaned by a killed arbiter included.
    """
    port = free_port()
    if make_serve:
        cmd = ["make", "serve", "HOST=127.0.0.1", f"PORT={port}"]
    else:
        cmd = [sys.executable, "-m", "bentoml", "serve", "service.app:LesionSeg"]
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with Path(log).open("w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited:\n{Path(log).read_text()[-3000:]}")
            if UNREADY_FOREVER.search(Path(log).read_text(errors="replace")):
                raise RuntimeError(f"loading failed:\n{Path(log).read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready in {timeout}s:\n{Path(log).read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}{ready_path}", timeout=2).status_code == 200:
                    break
            time.sleep(1)
        started = process_tree(proc)
        yield url, proc
    finally:
        stop_server(proc, started)


def process_tree(proc: subprocess.Popen) -> list[psutil.Process]:
    """The server's processes: ``proc`` and all its descendants. Circus starts each BentoML
    worker in a session of its own, so signalling ``proc``'s process group misses them."""
    try:
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def signal_tree(processes: list[psutil.Process], sig: int) -> None:
    """Send ``sig`` to each of ``processes`` that still runs (psutil checks the pid was not
    reused)."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)


def stop_server(proc: subprocess.Popen, known: list[psutil.Process], timeout: float = 60) -> None:
    """SIGTERM the server's process group (BentoML stops its workers), SIGKILL after
    ``timeout`` s every process of it still running (``known`` ones included: workers
    orphaned by a killed arbiter); then reap."""
    tree = {*known, *process_tree(proc)}
    with contextlib.suppress(ProcessLookupError):  # the group may be gone already
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    signal_tree(list(tree), signal.SIGKILL)
    psutil.wait_procs(list(tree), timeout=30)
    proc.wait()
