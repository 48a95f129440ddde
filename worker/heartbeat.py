"""Worker liveness in Redis, for /readyz and for routing `device: auto` jobs to a GPU when one is up.

A live process is not enough: a worker whose consumer stopped taking messages (its event loop stuck
or frozen, or its broker connection dead after a Redis restart while the process lives on) takes no
jobs. So the heartbeat proves consumption. A consumer bootstep, running in the worker's own event
loop, sends a ping message to the worker's private queue `kd.ping.<name>` every
`worker_heartbeat_s` and consumes that queue beside the task queues; only a ping taken off the broker
refreshes the worker's expiring key (three periods). A worker that stops consuming drops out of
/readyz within three periods, and /readyz names it as stale.

A solo-pool worker (one per GPU) runs its job inside that event loop, so it cannot consume while it
trains; its job watcher refreshes the key instead, marked `busy` (see `beat_while_busy`).

A thread does the periodic sweeps that need no consumer (worker/lifecycle.py's `sweep`): re-sending jobs
whose worker died, sending jobs the API wrote but died before sending, and sending held-back jobs whose
teacher jobs have succeeded. It sends on the worker's own Celery app, handed over by the ready signal.
Beside it, a thread delivers job webhooks from the outbox (worker/webhooks.py): in the main process, so
a slow webhook receiver never holds up training, which runs in the pool.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import redis
from celery import bootsteps
from celery.signals import worker_ready, worker_shutdown
from kombu import Consumer, Exchange, Producer, Queue

from worker.broker import Sender
from worker.config import get_settings
from worker.lifecycle import Lifecycle
from worker.store import JobStore
from worker.webhooks import start_deliverer

log = logging.getLogger("distillery.worker")
_stop = threading.Event()
PING_EXCHANGE = Exchange("kd.ping", type="direct", durable=False)
# Filled in the worker's main process once its consumer runs: name, queues, pid, solo.
_me: dict[str, Any] = {}
_last_busy_beat = [0.0]


def _heartbeat_store() -> JobStore:
    # Short timeouts: this client is used inside the worker's event loop, which must not hang on Redis.
    return JobStore(redis.Redis.from_url(get_settings().redis, decode_responses=True, socket_timeout=2,
                                         socket_connect_timeout=2))


class ConsumptionHeartbeat(bootsteps.ConsumerStep):
    """Ping through the broker, pong into the heartbeat key. Restarted with the consumer after a lost
    broker connection, so the key is refreshed again only once consumption has resumed."""

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.period = get_settings().worker_heartbeat_s
        self.name: str = c.hostname
        self.queue = Queue(f"kd.ping.{self.name}", PING_EXCHANGE, routing_key=self.name, durable=False)
        self.tref: Any = None
        self.producer: Producer | None = None
        self.store: JobStore | None = None

    def get_consumers(self, channel: Any) -> list[Consumer]:
        return [Consumer(channel, queues=[self.queue], callbacks=[self.on_ping], accept=["json"], no_ack=True)]

    def start(self, c: Any) -> None:
        queues = sorted(c.app.amqp.queues.consume_from.keys())
        solo = type(c.pool).__module__.endswith(".solo") if c.pool is not None else False
        _me.update(name=self.name, queues=queues, pid=os.getpid(), solo=solo)
        self.store = self.store or _heartbeat_store()
        super().start(c)
        self.producer = Producer(c.connection.channel())
        self.tref = c.timer.call_repeatedly(self.period, self.ping)
        self.ping()

    def ping(self) -> None:
        try:
            assert self.producer is not None
            self.producer.publish({"worker": self.name, "sent": time.time()}, exchange=PING_EXCHANGE,
                                  routing_key=self.name, declare=[self.queue], serializer="json", retry=False)
        except Exception as e:  # broker away: the consumer reconnects and restarts this step
            log.warning("heartbeat ping: %s", e)

    def on_ping(self, body: dict[str, Any], message: Any) -> None:
        try:
            assert self.store is not None
            self.store.heartbeat(self.name, _me.get("queues", []), ttl_s=self.period * 3, pid=os.getpid(),
                                 ping_ms=round((time.time() - float(body.get("sent", time.time()))) * 1000, 1))
        except Exception as e:
            log.warning("heartbeat: %s", e)

    def _cancel(self) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        if self.producer is not None:
            try:
                self.producer.channel.close()
            except Exception:
                pass
            self.producer = None

    def stop(self, c: Any) -> None:
        self._cancel()
        super().stop(c)

    def shutdown(self, c: Any) -> None:
        self._cancel()
        super().shutdown(c)


def beat_while_busy(store: JobStore, period: float) -> None:
    """Called by a job's watcher thread: in a solo-pool worker's main process, whose event loop the job
    blocks, it refreshes the heartbeat (marked busy) at most once a period. Elsewhere it does nothing:
    a prefork pool process training a job says nothing about its parent's consumer."""
    if not _me.get("solo") or _me.get("pid") != os.getpid():
        return
    now = time.monotonic()
    if now - _last_busy_beat[0] < period:
        return
    _last_busy_beat[0] = now
    store.heartbeat(_me["name"], _me["queues"], ttl_s=period * 3, pid=os.getpid(), busy=True)


def _sweep(app: Any) -> None:
    settings = get_settings()
    lifecycle = Lifecycle(JobStore.from_url(settings.redis), Sender(app))
    while not _stop.is_set():
        try:
            lifecycle.sweep(settings.unsent_grace_s)
        except Exception as e:  # Redis restarting: try again next period
            log.warning("sweep: %s", e)
        _stop.wait(settings.worker_heartbeat_s)


@worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    # sender: the worker's consumer; its app is the worker's own Celery app (its broker connection)
    threading.Thread(target=_sweep, args=(sender.app,), daemon=True, name="kd-sweep").start()
    start_deliverer(get_settings(), _stop)


@worker_shutdown.connect
def _shutdown(sender: Any = None, **_: Any) -> None:
    _stop.set()
    name = _me.get("name") or getattr(sender, "hostname", None)
    if name:
        try:
            _heartbeat_store().remove_worker(name)
        except Exception:
            pass
