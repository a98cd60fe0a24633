"""A job worker of its own: ``python -m service.worker [--host HOST] [--port PORT]``.

Runs the jobs of the store that the API processes fill (``LESIONSEG_JOBS_WORKER=false`` on
them): the same settings, the same models (the BentoML store's, as ``bentoml serve`` loads
them, run here in-process by the engine: no runner, no batching across jobs, one job at a
time), the same worker and pusher (service/job_worker.py). Any number of workers may run on
any number of machines against one PostgreSQL job table (``LESIONSEG_JOBS_DATABASE_URL``)
and one shared ``LESIONSEG_JOBS_DIR``; with the default sqlite store, only one.

HTTP (no patient data, no job routes): ``/livez`` (the process answers), ``/readyz`` (200 once
the models are loaded and the job store is open, else 503 with what it waits for) and
``/metrics`` (Prometheus, the job gauges included). SIGTERM: no new job is claimed; the job
under way may finish within ``LESIONSEG_REQUEST_TIMEOUT_S``, else it goes back to the queue
for another worker (service/deadlines.py sizes the pods' grace for it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lesionseg.pipeline.prediction import Options
from lesionseg.settings import Settings
from service.jobs import Jobs

log = logging.getLogger("lesionseg.worker")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def store_models(settings: Settings) -> dict:
    """The BentoML store's models of the configured backend (what ``bentoml serve`` loads)."""
    import bentoml

    from service.model_store import DETECTOR_MODEL, EXPORTS_MODEL, SAM_MODEL

    if settings.backend == "torch":
        names = {"sam": SAM_MODEL, "detector": DETECTOR_MODEL}
    else:
        names = {"exports": EXPORTS_MODEL}
    get = bentoml.models.get
    bento = os.environ.get("BENTO_PATH")  # the image: the bento's models, as `bentoml serve`
    if bento and (Path(bento) / "models").is_dir():  # (bentoml/_internal/service/loader.py)
        from bentoml._internal.models import ModelStore

        get = ModelStore(Path(bento) / "models").get
    return {key: get(f"{name}:latest") for key, name in names.items()}


class LocalService:
    """The service as the job worker sees it: the engine on models loaded in this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.served = None
        self.failed: str | None = None

    def __is_ready__(self) -> bool:
        return self.served is not None

    def load(self) -> None:
        """Load the store's models (blocking: run it in a thread)."""
        from lesionseg.pipeline.local import local_engine
        from service.routes.served import Served
        from service.runner import model_info, runtime_settings

        models = store_models(self.settings)
        settings = runtime_settings(models)
        engine, local = local_engine(settings)
        info = model_info(models, settings, local.segmenter, local.detector)
        self.served = Served(settings, engine, info)
        log.info("worker ready: %s", info)

    async def segment_to_reports(
        self, files: list[Path], *, window: str | None = None, sr: bool = False, **options
    ) -> tuple[bytes, dict, bytes | None]:
        from service.routes.volumes import segment_to_reports

        return await segment_to_reports(self.served, files, Options(**options), window, sr=sr)


class Worker:
    """The worker process's parts and its small HTTP app (``self.app``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = LocalService(settings)
        # The store, its recovery, the worker and the pusher as the service runs them (opened
        # again in the background while the database is unreachable); this process always
        # runs jobs, whatever LESIONSEG_JOBS_WORKER says to the API beside it.
        self.jobs = Jobs(settings.model_copy(update={"jobs_worker": True}), lambda: self.service)
        self._loading: asyncio.Task | None = None
        self.app = Starlette(
            routes=[
                Route("/livez", self.livez),
                Route("/readyz", self.readyz),
                Route("/metrics", self.metrics),
            ],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette):
        self._loading = asyncio.create_task(self._load(), name="worker-models")
        await self.jobs.start()
        try:
            yield
        finally:
            self._loading.cancel()
            await asyncio.gather(self._loading, return_exceptions=True)
            await self.jobs.stop(grace_s=self.settings.request_timeout_s)

    async def _load(self) -> None:
        try:
            await asyncio.to_thread(self.service.load)
        except Exception as exc:  # stays unready; /readyz says why
            self.service.failed = f"{type(exc).__name__}: {exc}"
            log.exception("loading the models failed; the worker stays unready")

    async def livez(self, request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        waiting = []
        if not self.service.__is_ready__():
            waiting.append(self.service.failed or "loading the models")
        if self.jobs.worker is None:
            waiting.append("opening the job store")
        if waiting:
            return JSONResponse({"status": "not ready", "waiting_for": waiting}, status_code=503)
        return JSONResponse({"status": "ready", "worker": self.jobs.store.worker_id})

    async def metrics(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        registry = REGISTRY
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from lesionseg.settings import check_environment
    from service.logs import configure_logging

    parser = argparse.ArgumentParser(
        prog="python -m service.worker", description="Run queued jobs (LESIONSEG_* settings)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="HTTP interface (health, metrics)")
    parser.add_argument("--port", type=int, default=3000, help="HTTP port (default 3000)")
    args = parser.parse_args(argv)
    check_environment()
    settings = Settings()
    # One handler on the root logger (what `bentoml serve` sets up for the service), which
    # configure_logging turns to JSON lines with LESIONSEG_LOG_FORMAT=json; uvicorn's loggers
    # propagate to it. No access log: the probes would fill it.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    configure_logging(settings)
    uvicorn.run(
        Worker(settings).app, host=args.host, port=args.port, log_config=None, access_log=False
    )


if __name__ == "__main__":
    main()
