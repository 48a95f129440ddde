"""Worker liveness in Redis, for /readyz and for routing `device: auto` jobs to a GPU when one is up.

A thread started on Celery's `worker_ready` refreshes an expiring key; when the worker process ends,
the key expires within three periods and the worker drops out of /readyz.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from api.settings import get_settings
from worker.store import JobStore, P

log = logging.getLogger("distillery.worker")
_stop = threading.Event()


def _beat(name: str, queues: list[str]) -> None:
    settings = get_settings()
    store = JobStore.from_url(settings.redis)
    period = settings.worker_heartbeat_s
    while not _stop.is_set():
        try:
            store.heartbeat(name, queues, ttl_s=period * 3)
            requeue_orphans(store)
        except Exception as e:  # Redis restarting: try again next period
            log.warning("heartbeat: %s", e)
        _stop.wait(period)
    try:
        store.r.delete(f"{P}worker:{name}")
    except Exception:
        pass


def requeue_orphans(store: JobStore) -> int:
    """Sends a fresh message for each started job whose lease lapsed (its worker process died, and
    the broker would keep the unacked message until the visibility timeout). The new delivery takes
    the lease and resumes from the job's last epoch checkpoint; a duplicate is harmless (lease)."""
    from worker.celery_app import RUN_JOB, app

    orphans = store.orphaned_jobs()
    for job_id, queue in orphans:
        log.warning("job %s lost its worker; re-enqueueing it on %s to resume", job_id, queue)
        store.add_event(job_id, "log", {"message": "worker lost; the job is queued again and will resume "
                                        "from its last epoch checkpoint"})
        app.send_task(RUN_JOB, args=[job_id], queue=queue)
    return len(orphans)


@worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    name = getattr(sender, "hostname", None) or "worker"
    queues = sorted(sender.app.amqp.queues.consume_from.keys()) if sender is not None else ["cpu"]
    threading.Thread(target=_beat, args=(name, queues), daemon=True, name="kd-heartbeat").start()


@worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    _stop.set()
