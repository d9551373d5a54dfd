"""A bound on request bodies: a job spec is a few kilobytes, so anything far larger is refused
with 413 before it is read into memory, parsed or stored (and later served back on every
status poll)."""
from __future__ import annotations

import json


def _refusal(limit: int) -> tuple[dict, dict]:
    body = json.dumps({"detail": f"request body larger than {limit} bytes"}).encode()
    start = {"type": "http.response.start", "status": 413,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()), (b"connection", b"close")]}
    return start, {"type": "http.response.body", "body": body}


class BodySizeLimitMiddleware:
    def __init__(self, app, max_bytes: int, larger: dict[str, int] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        # Paths that take bigger bodies (an uploaded picture), each with its own bound.
        self.larger = larger or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.larger.get(scope.get("path", ""), self.max_bytes)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    for message in _refusal(limit):
                        await send(message)
                    return
        # Chunked bodies carry no length: count while they arrive. Past the limit the client
        # gets the 413 at once and the app sees a disconnect (whatever it answers is dropped).
        received = 0
        started = False
        refused = False

        async def counting_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and not started:
                    refused = True
                    for reply in _refusal(limit):
                        await send(reply)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message):
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counting_receive, tracking_send)
