"""Jobs that wait for other jobs: a teacher-assistant chain's later links, or any job whose teacher is
an earlier job that has not succeeded yet (`teacher: {job: <id>}`).

Such a job is written `queued` but held in the store's `waiting` set instead of being enqueued. Whoever
sees a job end (the worker that ran it, right after; every worker's heartbeat, every few seconds; the
API, right after creating a held job, in case its teacher ended meanwhile) calls `enqueue_ready`, which
enqueues the held jobs whose teachers have all succeeded and fails those whose teacher failed.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from worker.store import JobStore

log = logging.getLogger("distillery.worker")
Send = Callable[[str, str], None]  # (job id, queue)


def enqueue_ready(store: JobStore, send: Send) -> list[str]:
    sent = []
    for job_id, queue in store.ready_waiting():
        send(job_id, queue)  # before the release: a crash in between re-sends, never loses the job
        store.release_waiting(job_id)
        log.info("job %s: its teacher jobs succeeded; enqueued on %s", job_id, queue)
        sent.append(job_id)
    return sent


def celery_sender() -> Send:
    from worker.celery_app import RUN_JOB, app

    return lambda job_id, queue: app.send_task(RUN_JOB, args=[job_id], queue=queue)
