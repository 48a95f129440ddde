"""`Server-Timing: app;dur=<ms>` on every HTTP response: the time from the request reaching the app to
its response headers. A client that also measures the round trip can tell server time from time spent
in queues, the network or its own event loop (benchmarks/load.py reports both)."""
from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ServerTiming:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def send_timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                dur = (time.perf_counter() - t0) * 1000
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"server-timing", f"app;dur={dur:.2f}".encode())]
            await send(message)

        await self.app(scope, receive, send_timed)
