"""Resident memory of every process of a running `bentoml serve`, sampled in the background.

The server is the `bentoml serve` process listening on a given port (BentoML's arbiter) and all
its descendants: the API worker(s) (``--service-name lesionseg``) and the model runner
(``--service-name lesionseg-models``), each named by its role and worker id.
"""

from __future__ import annotations

import threading
import time

import psutil


def role(process: psutil.Process, root: psutil.Process) -> str:
    """``arbiter`` for the serve process, else ``<service name>#<worker id>`` (or the
    process's name when it is neither)."""
    if process.pid == root.pid:
        return "arbiter"
    args = process.cmdline()
    if "--service-name" in args:
        name = args[args.index("--service-name") + 1]
        worker = args[args.index("--worker-id") + 1] if "--worker-id" in args else "?"
        return f"{name}#{worker}"
    return process.name()


def serve_process(port: int) -> psutil.Process:
    """The `bentoml serve ... --port <port>` process among this process's descendants."""
    for process in psutil.Process().children(recursive=True):
        args = process.cmdline()
        if "serve" in args and "--port" in args and args[args.index("--port") + 1] == str(port):
            return process
    raise RuntimeError(f"no `bentoml serve --port {port}` among this process's children")


class MemorySampler:
    """Every ``every_s`` seconds, (epoch s, role, pid, RSS MiB) of each process of the server
    rooted at ``root``, into ``samples``; a background thread between start() and stop()."""

    def __init__(self, root: psutil.Process, every_s: float = 2.0) -> None:
        self.root = root
        self.every_s = every_s
        self.samples: list[tuple[float, str, int, float]] = []
        self.error = ""  # why sampling stopped early (the server is gone)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> None:
        now = time.time()
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess as exc:
            raise RuntimeError(f"the server (pid {self.root.pid}) is gone") from exc
        for process in processes:
            try:
                rss = process.memory_info().rss / 2**20
                name = role(process, self.root)
            except psutil.NoSuchProcess:  # ended between the listing and the reading
                continue
            self.samples.append((now, name, process.pid, round(rss, 1)))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.sample()
            except RuntimeError as exc:
                self.error = str(exc)
                return

    def start(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if not self.error:
            self.sample()
