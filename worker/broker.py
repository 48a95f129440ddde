"""The Celery side of sending: the app's delivery settings, and the one function that puts a job id
on a queue. The API, the runner and the workers' sweeps all send through `Sender`; a message carries
only the job id (the job record in Redis holds everything else).

Delivery settings: a message is acknowledged only after its job ended (acks_late), a worker takes one
message at a time (prefetch 1), a message whose worker process died goes back to the queue
(reject_on_worker_lost), and the broker's visibility timeout is longer than any job, so the Redis
transport does not hand a running job to a second worker. The job lease makes a second delivery
harmless anyway (docs/architecture.md).
"""
from __future__ import annotations

from collections.abc import Sequence

from celery import Celery
from kombu import Queue as KombuQueue

from worker.config import WorkerSettings
from worker.queues import PREPARE_DATASET, QUEUES, RUN_JOB, Queue


def make_celery(settings: WorkerSettings, include: Sequence[str] = ()) -> Celery:
    """A Celery app on the settings' Redis. The API makes one to send; the worker's app (worker/celery_app.py)
    adds its tasks and the heartbeat step."""
    app = Celery("distillery", broker=settings.redis, include=list(include))
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # results live in the job record
        task_queues=[KombuQueue(q) for q in QUEUES],
        task_default_queue=Queue.CPU.value,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # keep reconnecting through a Redis restart
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


class Sender:
    """Sends a job id to a queue on a given Celery app (the lifecycle's `send`)."""

    def __init__(self, app: Celery):
        self.app = app

    def __call__(self, job_id: str, queue: str) -> None:
        self.app.send_task(RUN_JOB, args=[job_id], queue=str(queue))

    def prepare(self, art_id: str, store_key: str, queue: str) -> None:
        """Asks a worker to prepare upload `art_id` into prepared store `store_key` (worker/preparation.py)."""
        self.app.send_task(PREPARE_DATASET, args=[art_id, store_key], queue=str(queue))
