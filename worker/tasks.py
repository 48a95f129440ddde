"""Celery tasks: thin, they pass the job id to the runner where the logic lives."""
from __future__ import annotations

from worker.celery_app import RUN_JOB, app


@app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str:
    from worker.runner import execute  # imported here so that the worker's parent never loads torch

    return execute(job_id)
