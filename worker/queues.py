"""The queues jobs are sent to, and which one a job goes to. Kept free of Celery and torch imports so
that the `distillery` command can name queues without loading either."""
from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Queue(StrEnum):
    CPU = "cpu"
    GPU = "gpu"


QUEUES: tuple[str, ...] = tuple(q.value for q in Queue)
RUN_JOB = "distillery.run_job"  # a job's task: its message carries only the job id
PREPARE_DATASET = "distillery.prepare_dataset"  # POST /v1/datasets/{id}/prepare: upload id and store key


def queue_for(device: str, live_worker_queues: Iterable[Iterable[str]]) -> Queue:
    """`resources.device` -> queue: cpu and cuda route to their queues; auto goes to the GPU queue when
    some live worker serves it, else to the CPU queue."""
    if device != "auto":
        return Queue.GPU if device == "cuda" else Queue.CPU
    return Queue.GPU if any(Queue.GPU in qs for qs in live_worker_queues) else Queue.CPU


def prepare_queue(live_worker_queues: Iterable[Iterable[str]]) -> Queue:
    """Where a dataset preparation goes: decoding is CPU work, so the CPU queue when some live worker serves
    it; else the GPU queue when some worker serves that (its host's CPUs decode); else the CPU queue."""
    served = {q for qs in live_worker_queues for q in qs}
    return Queue.GPU if Queue.CPU not in served and Queue.GPU in served else Queue.CPU
