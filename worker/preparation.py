"""Preparing an uploaded dataset into the prepared store (kdcore.datasets.store): from a job (the runner's
`prepare` phase) or from `POST /v1/datasets/{artifact}/prepare` (the `distillery.prepare_dataset` task). One
preparation per store key at a time, whatever the number of workers; its state is kept in Redis.

Redis (names in worker/keys.py):
  prepared:{key}          hash, the state of store `key`: key, state, format, image_size and channels (as
                          asked, null for the default), progress {done, total, fraction}, counts {train,
                          test}, shape [C, H, W], bytes (on disk), error, requested_at, started_at,
                          finished_at, worker (host:pid of the latest preparation)
  prepare_lock:{key}      the token of the worker preparing `key` (SET NX with expiry, renewed while it works)
  artifact:{id}:prepared  the store keys asked for, or prepared from, upload `id` (the API's listing)

The lock: the worker that takes it decodes; any other worker that needs the same key (a second job on the
same upload, a repeated POST's message) waits until it is released, then finds the store on disk and reuses
it. A holder that dies stops renewing; its lock lapses within the TTL, the next one prepares again, and the
half-written attempt is invisible (the store writes into a .tmp-* folder and renames it when complete).

With a shared storage (worker/storage.py), a store built here is published there, and a host that lacks a
store copies it from there (under no lock: the copy is atomic) instead of decoding the upload again.

The record is keyed by content (the store key comes from the upload's sha256), not by tenant: two uploads
of the same bytes share one store and one record.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

from redis.exceptions import LockError

from kdcore.datasets.store import PreparedData, PreparedStore, store_key
from kdcore.digests import file_sha256
from kdcore.errors import Cancelled, DatasetError
from worker import keys
from worker.artifacts import ArtifactStore
from worker.config import WorkerSettings, get_settings
from worker.storage import Storage
from worker.store import JobStore, now_iso

log = logging.getLogger("distillery.preparation")
LOCK_POLL_S = 0.25  # how often a worker waiting for another's preparation asks again
PROGRESS_EVERY_S = 0.5  # progress written to the record at most this often (and at the start and end)


class PrepState(StrEnum):
    PENDING = "pending"  # asked for (POST); no worker has started on it yet
    PREPARING = "preparing"  # a worker holds the key's lock and decodes
    READY = "ready"  # the store is complete on the worker host named in `worker`
    ERROR = "error"  # the latest preparation failed; `error` says why (a bad member is named)
    INTERRUPTED = "interrupted"  # read-time only: recorded `preparing`, but no worker holds the lock any more


def _lock_ttl_s(settings: WorkerSettings) -> float:
    return float(settings.lease_ttl_s)  # a dead holder's lock lapses as fast as a dead worker's job lease


class Preparations:
    """The prepared stores' state records and their per-key locks, on the job store's Redis."""

    def __init__(self, store: JobStore, lock_ttl_s: float = 60.0):
        self.r = store.r
        self.lock_ttl_s = lock_ttl_s

    def get(self, key: str, artifact: str | None = None) -> dict[str, Any] | None:
        """The record of store `key`; with `artifact`, None unless that upload asked for it."""
        if artifact is not None and not self.r.sismember(keys.artifact_prepared(artifact), key):
            return None
        raw = self.r.hgetall(keys.prepared(key))
        if not raw:
            return None
        rec = {k: json.loads(v) for k, v in raw.items()}
        if rec.get("state") == PrepState.PREPARING and not self.r.exists(keys.prepare_lock(key)):
            rec["state"] = PrepState.INTERRUPTED.value
        return rec

    def set(self, key: str, **fields: Any) -> None:
        mapping = {"key": json.dumps(key), **{k: json.dumps(v) for k, v in fields.items()}}
        self.r.hset(keys.prepared(key), mapping=mapping)

    def for_artifact(self, art_id: str) -> list[dict[str, Any]]:
        """The records of every store asked for from upload `art_id`, oldest request first."""
        recs = [r for k in self.r.smembers(keys.artifact_prepared(art_id)) if (r := self.get(k)) is not None]
        return sorted(recs, key=lambda r: (r.get("requested_at") or r.get("started_at") or "", r["key"]))

    def remember(self, art_id: str, key: str) -> None:
        self.r.sadd(keys.artifact_prepared(art_id), key)

    def request(self, art_id: str, key: str, fmt: str, image_size: tuple[int, int] | None,
                channels: int | None) -> tuple[dict[str, Any], bool]:
        """Records that upload `art_id` asks for store `key`. Returns the record and whether a worker must be
        sent: not when the store is ready or a worker is preparing it now; yes when it is new, pending (a
        message may have been lost: one more is harmless, the lock and the store's reuse absorb it), failed
        or interrupted."""
        self.remember(art_id, key)
        rec = self.get(key)
        if rec is not None and rec.get("state") in (PrepState.READY, PrepState.PREPARING):
            return rec, False
        self.set(key, state=PrepState.PENDING.value, format=fmt,
                 image_size=list(image_size) if image_size else None, channels=channels, requested_at=now_iso(),
                 error=None, progress=None)
        return self.get(key) or {}, True

    @contextmanager
    def locked(self, key: str, should_stop: Callable[[], bool] = lambda: False,
               on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Holds the key's lock (renewed by a thread while held). While another worker holds it, waits;
        calls on_wait() once when it starts waiting; raises Cancelled when should_stop() says so."""
        lock = self.r.lock(keys.prepare_lock(key), timeout=self.lock_ttl_s, thread_local=False)
        waiting = False
        while not lock.acquire(blocking=False):
            if should_stop():
                raise Cancelled(f"stopped while waiting for prepared store {key[:12]}")
            if not waiting and on_wait is not None:
                on_wait()
            waiting = True
            time.sleep(LOCK_POLL_S)
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.lock_ttl_s / 3):
                try:
                    lock.reacquire()
                except Exception as e:  # Redis away for a moment, or the lock lapsed: try again next tick
                    log.warning("renewing the preparation lock of %s: %s", key[:12], e)

        renewer = threading.Thread(target=renew, daemon=True, name=f"prepare-lock-{key[:12]}")
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join(timeout=5)
            try:
                lock.release()
            except LockError:  # it lapsed (this process was paused past the TTL): nothing of ours to release
                pass


def _store_facts(data: PreparedData) -> dict[str, Any]:
    counts = {"train": len(data.train), "test": len(data.test)}
    size = sum(f.stat().st_size for f in Path(data.path).iterdir() if f.is_file())
    return {"counts": counts, "shape": list(data.train.shape[1:]), "bytes": size}


class LockedPreparer:
    """What `kdcore.datasets.load_dataset` calls to prepare (its `Preparer`): a PreparedStore, with the store
    key's lock held while decoding and the state recorded in Redis. A store already on disk is returned at
    once, without the lock."""

    def __init__(self, prepared: PreparedStore, preps: Preparations, *, artifact: str | None = None,
                 fmt: str | None = None, should_stop: Callable[[], bool] = lambda: False,
                 on_wait: Callable[[], None] | None = None, storage: Storage | None = None):
        self.prepared, self.preps, self.artifact, self.fmt = prepared, preps, artifact, fmt
        self.storage = storage or Storage()
        self.should_stop, self.on_wait = should_stop, on_wait
        self.decoded = False  # whether this preparer decoded (False: it found the store, or waited and reused it)

    def prepare(self, source: Path, *, image_size: tuple[int, int] | None = None, channels: int | None = None,
                on_progress: Callable[[int, int], None] | None = None,
                source_sha256: str | None = None) -> PreparedData:
        sha = source_sha256 or file_sha256(source)
        key = store_key(sha, image_size, channels)
        if self.artifact:
            self.preps.remember(self.artifact, key)
        found = self._local_or_shared(key)
        if found is None:
            with self.preps.locked(key, self.should_stop, self.on_wait):
                found = self._local_or_shared(key)  # another worker may have finished while we waited
                if found is None:
                    found = self._decode(source, key, sha, image_size, channels, on_progress)
                    self.storage.publish_dir(found.path, "prepared", key)  # meta.json last: whole or absent
        rec = self.preps.get(key) or {}
        if rec.get("state") != PrepState.READY:
            self.preps.set(key, state=PrepState.READY.value, format=self.fmt, **_store_facts(found),
                           finished_at=now_iso(), error=None)
        return found

    def _local_or_shared(self, key: str) -> PreparedData | None:
        """The store on this host; else, with a shared storage that holds it, its shards copied into this
        host's prepared dir (memory-mapped from there); else None."""
        found = self.prepared.get(key)
        if found is None and self.storage.fetch_dir(self.prepared.path(key), "prepared", key):
            found = self.prepared.get(key)
        return found

    def _decode(self, source: Path, key: str, sha: str, image_size: tuple[int, int] | None, channels: int | None,
                on_progress: Callable[[int, int], None] | None) -> PreparedData:
        self.preps.set(key, state=PrepState.PREPARING.value, format=self.fmt,
                       image_size=list(image_size) if image_size else None, channels=channels, started_at=now_iso(),
                       finished_at=None, error=None, worker=f"{socket.gethostname()}:{os.getpid()}",
                       progress={"done": 0, "total": None, "fraction": 0.0})
        last = [0.0]

        def progress(done: int, total: int) -> None:
            if done in (0, total) or time.monotonic() - last[0] >= PROGRESS_EVERY_S:
                last[0] = time.monotonic()
                self.preps.set(key, progress={"done": done, "total": total,
                                              "fraction": round(done / max(1, total), 4)})
            if on_progress is not None:
                on_progress(done, total)

        self.decoded = True
        try:
            return self.prepared.prepare(source, image_size=image_size, channels=channels, on_progress=progress,
                                         source_sha256=sha)
        except Exception as e:
            # a bad upload's message names the member; anything else is ours, named by its type
            message = str(e) if isinstance(e, DatasetError) else f"{type(e).__name__}: {e}"
            self.preps.set(key, state=PrepState.ERROR.value, error=message, finished_at=now_iso())
            raise


def run_preparation(art_id: str, key: str, settings: WorkerSettings | None = None,
                    store: JobStore | None = None) -> str:
    """The `distillery.prepare_dataset` task's work: prepares upload `art_id` as record `key` asks (its
    image_size and channels). Returns the final state (for the Celery log); errors are in the record."""
    settings = settings or get_settings()
    store = store or JobStore.from_url(settings.redis)
    preps = Preparations(store, _lock_ttl_s(settings))
    rec, art = preps.get(key), store.get_artifact(art_id)
    if rec is None or art is None:
        log.warning("preparation %s of %s: no record or no upload; dropping the message", key[:12], art_id)
        return "unknown"
    size = tuple(rec["image_size"]) if rec.get("image_size") else None
    if store_key(art["sha256"], size, rec.get("channels")) != key:  # type: ignore[arg-type]
        # the API computed the key with another store format (a worker of another version)
        preps.set(key, state=PrepState.ERROR.value, error="this worker keys prepared stores differently from the "
                  "API that asked; ask again once both run the same version", finished_at=now_iso())
        return PrepState.ERROR.value
    arts = ArtifactStore(settings.artifacts, Storage(settings.storage_url))
    preparer = LockedPreparer(PreparedStore(settings.prepared), preps, artifact=art_id, fmt=art.get("format"),
                              storage=arts.storage)
    try:
        preparer.prepare(arts.local_upload(art), image_size=size, channels=rec.get("channels"),  # type: ignore[arg-type]
                         source_sha256=art.get("sha256"))
    except Exception as e:  # recorded by the preparer; the Celery log gets it too
        log.warning("preparation %s of %s failed: %s", key[:12], art_id, e)
        return PrepState.ERROR.value
    return PrepState.READY.value
