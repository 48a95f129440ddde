from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import StoreDep
from api.errors import Problem

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The API process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Redis answers and at least one worker is alive",
            responses={503: {"description": "not ready, with the reason"}})
def readyz(store: StoreDep) -> dict[str, Any]:
    try:
        store.r.ping()
        workers = store.live_workers()
    except Exception as e:
        raise Problem(503, f"redis unreachable: {e}") from e
    if not workers:
        raise Problem(503, "no live worker: start one with `distillery worker`")
    return {"status": "ready", "redis": "ok", "workers": workers}
