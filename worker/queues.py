"""The queues jobs are sent to, and which one a job goes to. Kept free of Celery and torch imports so
that the `distillery` command can name queues without loading either."""
from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Queue(StrEnum):
    CPU = "cpu"
    GPU = "gpu"


QUEUES: tuple[str, ...] = tuple(q.value for q in Queue)
RUN_JOB = "distillery.run_job"  # the one task name: its message carries only the job id


def queue_for(device: str, live_worker_queues: Iterable[Iterable[str]]) -> Queue:
    """`resources.device` -> queue: cpu and cuda route to their queues; auto goes to the GPU queue when
    some live worker serves it, else to the CPU queue."""
    if device != "auto":
        return Queue.GPU if device == "cuda" else Queue.CPU
    return Queue.GPU if any(Queue.GPU in qs for qs in live_worker_queues) else Queue.CPU
