"""Celery tasks: thin, they pass ids to the runner (a job) or to worker/preparation.py (a dataset) where the
logic lives."""
from __future__ import annotations

from celery import Task

from worker.broker import Sender
from worker.celery_app import app
from worker.config import get_settings
from worker.queues import PREPARE_DATASET, RUN_JOB


@app.task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_job(self: Task, job_id: str) -> str:
    from worker.runner import LEASED_ELSEWHERE, execute  # imported here so the worker's parent never loads torch

    outcome = execute(job_id, send=Sender(self.app))
    if outcome == LEASED_ELSEWHERE:
        # Another delivery holds the lease. If its worker is alive, this retry finds the job ended and
        # does nothing; if it died, the lease lapses within lease_ttl_s and the retry resumes the job
        # from its last epoch checkpoint. Either way the job is never dropped nor run twice at once.
        raise self.retry(countdown=get_settings().lease_ttl_s)
    return outcome


@app.task(name=PREPARE_DATASET, acks_late=True, reject_on_worker_lost=True)
def prepare_dataset(art_id: str, store_key: str) -> str:
    from worker.preparation import run_preparation  # imported here so the worker's parent never loads torch

    return run_preparation(art_id, store_key)
