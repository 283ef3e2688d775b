"""Limits on unauthenticated work (CONTRACT.md section 3): body size, and lockout after failed authentications.

Both are plain ASGI middleware, so they act before any route reads a body or checks a key.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024
WINDOW_S = 60.0
MAX_TRACKED_ADDRESSES = 100_000  # a flood from many addresses must not grow memory without end
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes need no key and are never locked out


async def _reply(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    # Close the connection: the rest of a refused body is never read.
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """413 for a request body over `limit` bytes, declared in Content-Length or counted as it streams."""

    def __init__(self, app: ASGIApp, *, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _reply(send, 413, f"request body over {self.limit} bytes")
            return
        received = 0
        exceeded = False
        started = False

        async def limited() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True  # the app sees the client gone and stops reading
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # whatever the app answers to the cut-off body, the answer is 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, guarded)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await _reply(send, 413, f"request body over {self.limit} bytes")


class FailedAuthLimit:
    """After `failures` 401 answers to one client address within a minute, 429 for that address for a minute."""

    def __init__(self, app: ASGIApp, *, failures: int = 10, clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.failures = failures
        self.clock = clock
        self._recent: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    def retry_after(self, address: str) -> int:
        """Seconds until `address` may try again; 0 when it is not locked out."""
        until = self._locked_until.get(address)
        if until is None:
            return 0
        left = until - self.clock()
        if left <= 0:
            del self._locked_until[address]
            return 0
        return max(1, math.ceil(left))

    def record_failure(self, address: str) -> None:
        """Count one failed authentication; the `failures`-th within the window locks the address out."""
        now = self.clock()
        if len(self._recent) >= MAX_TRACKED_ADDRESSES and address not in self._recent:
            self._prune(now)
        recent = self._recent.setdefault(address, deque())
        recent.append(now)
        while recent and recent[0] <= now - WINDOW_S:
            recent.popleft()
        if len(recent) >= self.failures:
            self._locked_until[address] = now + WINDOW_S
            recent.clear()

    def _prune(self, now: float) -> None:
        for address in [a for a, times in self._recent.items() if not times or times[-1] <= now - WINDOW_S]:
            del self._recent[address]
        for address in [a for a, until in self._locked_until.items() if until <= now]:
            del self._locked_until[address]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "unknown"
        wait = self.retry_after(address)
        if wait:
            await _reply(
                send, 429, "too many failed authentications; retry later", [(b"retry-after", str(wait).encode())]
            )
            return

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                self.record_failure(address)
            await send(message)

        await self.app(scope, receive, counting)
