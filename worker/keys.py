"""Every Redis key name the service uses, defined once (prefix `kd:`). The store, the lifecycle, the
heartbeat and the API's quotas and reads build their keys here and nowhere else.

  job:{id}              hash: the job record (fields in worker/store.py)
  job:{id}:events       stream of events {type, data (JSON), ts}
  jobs:{tenant}         sorted set of the tenant's job ids by creation time (listing, newest first)
  lease:{id}            the worker token holding the job (SET NX with expiry, renewed while it runs)
  reaped:{id}           set for a minute when an orphaned job was re-sent (one re-send a minute at most)
  idem:{tenant}:{key}   job id submitted under an Idempotency-Key (24 h)
  artifact:{id}         hash: an upload's metadata
  worker:{name}         heartbeat of a live worker (JSON with its queues), expiring
  workers:seen          hash: worker name -> unix time of its last heartbeat (to name workers gone stale)
  active                ids of jobs that started and have not ended (to find those whose worker died)
  waiting               ids of queued jobs held back until their teacher jobs succeed (not yet sent)
  unsent                sorted set: ids of jobs written `queued` whose message is not yet confirmed sent
  tenant:{t}:open       sorted set: the tenant's admitted open jobs and reservations (api/quotas.py)
  tenant:{t}:upload_bytes / upload_inflight / upload_touched   the tenant's upload quota (api/quotas.py)
  outbox                sorted set: ids of ended jobs with a webhook to deliver -> unix time it is due
                        (written with the terminal status, worker/store.py; delivered by worker/webhooks.py)
  stats:jobs            hash: "status|queue" -> jobs in that status (kept by every status change; /metrics)
  stats:durations       hash: run-time histogram of ended jobs, "status|bucket", "status|sum" (/metrics)
  cpu, gpu              the broker's queue lists (kombu's Redis transport names them after the queue)
  prepared:{key}        hash: the state of prepared store {key} (worker/preparation.py)
  prepare_lock:{key}    token of the worker preparing store {key} (SET NX with expiry, renewed while it works)
  artifact:{id}:prepared  set: the prepared-store keys asked for, or prepared from, upload {id}
"""
from __future__ import annotations

PREFIX = "kd:"
JOB_PREFIX = f"{PREFIX}job:"  # + id: the job hash (Lua scripts build job keys from it)
WORKER_PREFIX = f"{PREFIX}worker:"
WORKERS_SEEN = f"{PREFIX}workers:seen"
ACTIVE = f"{PREFIX}active"
WAITING = f"{PREFIX}waiting"
UNSENT = f"{PREFIX}unsent"
OUTBOX = f"{PREFIX}outbox"
JOB_COUNTS = f"{PREFIX}stats:jobs"
DURATIONS = f"{PREFIX}stats:durations"


def job(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}"


def events(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}:events"


def tenant_jobs(tenant: str) -> str:
    return f"{PREFIX}jobs:{tenant}"


def lease(job_id: str) -> str:
    return f"{PREFIX}lease:{job_id}"


def reaped(job_id: str) -> str:
    return f"{PREFIX}reaped:{job_id}"


def idempotency(tenant: str, key: str) -> str:
    return f"{PREFIX}idem:{tenant}:{key}"


def artifact(art_id: str) -> str:
    return f"{PREFIX}artifact:{art_id}"


def worker(name: str) -> str:
    return f"{WORKER_PREFIX}{name}"


def tenant(tenant_name: str, what: str) -> str:
    """A tenant's quota keys: `open`, `upload_bytes`, `upload_inflight`, `upload_touched`."""
    return f"{PREFIX}tenant:{tenant_name}:{what}"


def broker_queue(queue: str) -> str:
    """The list kombu's Redis transport keeps a queue's waiting messages in (its name is the queue's)."""
    return queue


def prepared(store_key: str) -> str:
    return f"{PREFIX}prepared:{store_key}"


def prepare_lock(store_key: str) -> str:
    return f"{PREFIX}prepare_lock:{store_key}"


def artifact_prepared(art_id: str) -> str:
    return f"{PREFIX}artifact:{art_id}:prepared"
