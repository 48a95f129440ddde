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
        except Exception as e:  # Redis restarting: try again next period
            log.warning("heartbeat: %s", e)
        _stop.wait(period)
    try:
        store.r.delete(f"{P}worker:{name}")
    except Exception:
        pass


@worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    name = getattr(sender, "hostname", None) or "worker"
    queues = sorted(sender.app.amqp.queues.consume_from.keys()) if sender is not None else ["cpu"]
    threading.Thread(target=_beat, args=(name, queues), daemon=True, name="kd-heartbeat").start()


@worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    _stop.set()
