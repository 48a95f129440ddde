"""The FastAPI app factory. `uvicorn --factory api.main:create_app`, or `distillery api`."""
from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from api import docs_ui, errors
from api.body_limit import BodyLimit
from api.reads import AsyncReads, async_client
from api.routes import artifacts, catalog, chains, datasets, health, jobs, metrics, ui
from api.settings import Settings, get_settings
from api.timing import ServerTiming
from worker.artifacts import ArtifactStore
from worker.broker import Sender, make_celery
from worker.lifecycle import Lifecycle
from worker.storage import Storage
from worker.store import JobStore

log = logging.getLogger("distillery.api")

DESCRIPTION = """
Knowledge distillation as a service. Upload a teacher (`POST /v1/artifacts`) or train one
(`distillation.method: none`), submit a JobSpec (`POST /v1/jobs`), follow its progress
(`GET /v1/jobs/{id}`, `/events`), and download the student (`/artifacts/student.safetensors`).

The KD loss is `L = alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y)`:
**alpha weighs the teacher's soft term**; some frameworks use the opposite convention.
"""


async def warm_up(app: FastAPI) -> None:
    """Opens the Redis connections and the broker connection, and loads Celery's lazily imported parts,
    as soon as the API starts: otherwise the first requests after a start (often a burst: clients
    retrying while the API restarted) pay for them, and the event loop stalls while they do. Run in the
    background, so a Redis that is not up yet delays nothing (/readyz reports it)."""
    celery = app.state.celery

    def warm_sync() -> None:
        app.state.store.r.ping()
        celery.backend  # noqa: B018 - the property imports the result backend on first use
        with celery.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)

    try:
        await app.state.aredis.ping()
        await anyio.to_thread.run_sync(warm_sync)
    except Exception as e:  # noqa: BLE001 - any failure here only means a slower first request
        log.warning("warm-up skipped: %s", e)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.aredis = async_client(settings.redis)  # made on the serving loop: it binds to it
        app.state.reads = AsyncReads(app.state.aredis)
        # Plain `def` routes (submits, cancels, uploads' checks) run in this pool. Each thread in it
        # competes with the event loop for the GIL; a few threads keep writes flowing without making the
        # loop (status polls, event streams) wait its turn behind dozens of them.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        warming = asyncio.create_task(warm_up(app))  # in the background: a Redis still starting delays nothing
        # The process holds about 240k objects from its imports (torch among them), and a full garbage
        # collection walks them all: about 110 ms here, during which no request moves. Frozen, they are
        # left out of every collection; objects made while serving are still collected.
        gc.collect()
        gc.freeze()
        yield
        warming.cancel()
        await app.state.aredis.aclose()
        app.state.store.r.close()

    # docs_url/redoc_url None: FastAPI's pages load their scripts from a CDN; docs_ui serves them from here
    app = FastAPI(title="Distillery", version="1.0.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.store = JobStore.from_url(settings.redis)
    app.state.artifacts = ArtifactStore(settings.artifacts, Storage(settings.storage_url))
    app.state.celery = make_celery(settings)
    app.state.lifecycle = Lifecycle(app.state.store, Sender(app.state.celery))
    app.state.keys = settings.tenants_by_key()
    errors.install(app)
    docs_ui.install(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(ServerTiming)
    for module in (health, catalog, artifacts, datasets, jobs, chains, metrics, ui):
        app.include_router(module.router)
    metrics.install(app, app.state.store)  # last: its latency middleware is the outermost
    return app
