"""The API app served by a real uvicorn on a free port (in a thread of the test process), on a real
Redis: for what the in-memory TestClient cannot show, such as a request body that streams in chunks
or many requests at once."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn

from api.main import create_app
from api.settings import Settings
from distillery.redis_server import free_port


@contextmanager
def serve(settings: Settings, host: str = "127.0.0.1") -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while not server.started:
        assert thread.is_alive() and time.time() - t0 < 30, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(15)


def wait_for(check: Callable[[], bool], timeout: float = 30) -> None:
    t0 = time.time()
    while not check():
        assert time.time() - t0 < timeout, "condition not met in time"
        time.sleep(0.05)
