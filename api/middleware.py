"""Request body size limit (413), enforced on Content-Length and on the bytes actually received; and the bound on
requests in flight per API process (503 with Retry-After beyond it)."""

from __future__ import annotations

import json
from typing import Any

Scope = dict[str, Any]


class BodySizeLimit:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
        received = 0
        response_started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not response_started:
                await self._reject(send)

    async def _reject(self, send: Any) -> None:
        body = json.dumps({"detail": f"request body larger than {self.max_bytes} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class InFlightLimit:
    """At most `limit` requests in flight in this process: one more is answered `503` with `Retry-After` at once,
    before it reads its body or takes a thread or a database session, so a burst is shed instead of queueing
    for seconds. The probes (`exempt` paths) are always answered and are not counted. Every `503` this process
    sends, the probes' included, carries `Retry-After`."""

    def __init__(self, app: Any, limit: int, retry_after_s: int, exempt: frozenset[str]) -> None:
        self.app = app
        self.limit = limit
        self.retry_after = str(retry_after_s).encode()
        self.exempt = exempt
        self.in_flight = 0  # requests of this process's event loop: no lock needed between awaits

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counted = scope.get("path") not in self.exempt
        if counted and self.in_flight >= self.limit:
            await self._shed(send)
            return

        async def send_with_retry_after(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    message = {**message, "headers": [*headers, (b"retry-after", self.retry_after)]}
            await send(message)

        if counted:
            self.in_flight += 1
        try:
            await self.app(scope, receive, send_with_retry_after)
        finally:
            if counted:
                self.in_flight -= 1

    async def _shed(self, send: Any) -> None:
        body = json.dumps(
            {"detail": f"the service is at capacity ({self.limit} requests in flight in this process); retry shortly"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", self.retry_after),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
