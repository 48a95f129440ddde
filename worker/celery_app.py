"""The worker's Celery app: `celery -A worker.celery_app:app worker` (or `distillery worker`).

Only the worker process and its task module use this module-level app; everything else that sends
(the API, the runner, the sweeps) gets its app passed in (worker/broker.py's `Sender`).
"""
from __future__ import annotations

from worker.broker import make_celery
from worker.config import get_settings
from worker.heartbeat import ConsumptionHeartbeat

app = make_celery(get_settings(), include=["worker.tasks"])
app.steps["consumer"].add(ConsumptionHeartbeat)
