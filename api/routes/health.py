from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import StoreDep
from api.errors import Problem

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The API process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Redis answers and at least one worker is consuming its queues",
            responses={503: {"description": "not ready, with the reason"}})
def readyz(store: StoreDep) -> dict[str, Any]:
    """A worker counts as live while its heartbeat is fresh, and its heartbeat is refreshed only by a
    ping it took off the broker (worker/heartbeat.py): a worker process that lives on but no longer
    consumes turns stale. Stale workers are named, in the 503 reason and in the 200 body."""
    try:
        store.r.ping()
        workers = store.live_workers()
        stale = store.stale_workers()
    except Exception as e:
        raise Problem(503, f"redis unreachable: {e}") from e
    if not workers:
        why = "no live worker: start one with `distillery worker`"
        if stale:
            why = "no live worker; stale (alive but not consuming, or dead): " + ", ".join(
                f"{name} (last heartbeat {age:.0f} s ago)" for name, age in sorted(stale.items()))
        raise Problem(503, why)
    return {"status": "ready", "redis": "ok", "workers": workers, "stale_workers": stale}
