"""The FastAPI app factory. `uvicorn --factory api.main:create_app`, or `distillery api`."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors
from api.routes import artifacts, catalog, chains, health, jobs
from api.settings import Settings, get_settings
from api.sse import async_client
from worker.artifacts import ArtifactStore
from worker.celery_app import make_celery
from worker.store import JobStore

DESCRIPTION = """
Knowledge distillation as a service. Upload a teacher (`POST /v1/artifacts`) or train one
(`distillation.method: none`), submit a JobSpec (`POST /v1/jobs`), follow its progress
(`GET /v1/jobs/{id}`, `/events`), and download the student (`/artifacts/student.safetensors`).

The KD loss is `L = alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y)`:
**alpha weighs the teacher's soft term**; some frameworks use the opposite convention.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.aredis = async_client(settings.redis)  # made on the serving loop: it binds to it
        yield
        await app.state.aredis.aclose()
        app.state.store.r.close()

    app = FastAPI(title="Distillery", version="1.0.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.store = JobStore.from_url(settings.redis)
    app.state.artifacts = ArtifactStore(settings.artifacts)
    app.state.celery = make_celery(settings)
    app.state.keys = settings.tenants_by_key()
    errors.install(app)
    for module in (health, catalog, artifacts, jobs, chains):
        app.include_router(module.router)
    return app
