"""KD_MAX_BODY_BYTES for every request body but an upload's (POST /v1/artifacts streams its body itself,
up to KD_MAX_UPLOAD_BYTES). An announced Content-Length over the limit is answered before a byte of the
body is read; a body without one (chunked) is counted as it arrives and stopped when it passes the limit.
Both answer 413 problem+json naming the limit, and the route never runs, so nothing is written."""
from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem_response

UPLOAD_PATH = "/v1/artifacts"  # the artifacts router's prefix: its POST streams and limits its own body


def body_too_large(limit: int) -> str:
    return (f"request body over {limit} bytes (KD_MAX_BODY_BYTES); a JobSpec is a few kilobytes, files go to "
            f"POST {UPLOAD_PATH}")


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") == UPLOAD_PATH:
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await problem_response(413, body_too_large(self.limit))(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # raised inside the route's body parsing: the app's 413 handler answers
                raise HTTPException(413, body_too_large(self.limit))
            return message

        await self.app(scope, counted, send)
