"""The Celery app. Messages carry only a job id; the job record in Redis holds everything else.

Delivery settings follow DESIGN.md: a message is acknowledged only after its job ended (acks_late),
a worker takes one message at a time (prefetch 1), a message whose worker process died goes back to
the queue (reject_on_worker_lost), and the broker's visibility timeout is longer than any job, so the
Redis transport does not hand a running job to a second worker. The job lease makes a second
delivery harmless anyway.
"""
from __future__ import annotations

from celery import Celery
from kombu import Queue

from api.settings import Settings, get_settings

QUEUES = ("cpu", "gpu")
RUN_JOB = "distillery.run_job"


def make_celery(settings: Settings) -> Celery:
    """The API builds one from its own (possibly test-overridden) settings to send; workers use `app`."""
    app = Celery("distillery", broker=settings.redis, include=["worker.tasks", "worker.heartbeat"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # results live in the job record
        task_queues=[Queue(q) for q in QUEUES],
        task_default_queue="cpu",
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # keep reconnecting through a Redis restart
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    from worker.heartbeat import ConsumptionHeartbeat  # here: heartbeat imports this module's app lazily

    app.steps["consumer"].add(ConsumptionHeartbeat)
    return app


app = make_celery(get_settings())
