"""Fault injection shared by the sandboxes: tests ask for 5xx, slow answers, dropped connections, or answers
lost after the call took effect."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass
class Faults:
    """What the next requests suffer. Tests mutate it between calls; every field is consumed in order."""

    statuses: list[int] = field(default_factory=list)  # answer the next requests with these statuses
    delay_seconds: float = 0.0  # every answer waits this long first
    drop_next: int = 0  # close the connection without answering for the next N requests
    retry_after: str | None = None  # Retry-After header sent with injected 429/503
    lose_answers: list[str] = field(default_factory=list)
    """``"METHOD /path-prefix"`` each: the next request matching the first one is carried out, then its
    answer is lost (the connection closes mid-response), as when a proxy or the network fails after the
    vendor acted. Consumed in order."""
    log: list[str] = field(default_factory=list)  # "METHOD /path" of every request, as it arrived

    def clear(self) -> None:
        self.statuses.clear()
        self.delay_seconds = 0.0
        self.drop_next = 0
        self.retry_after = None
        self.lose_answers.clear()

    def _loses(self, request: str) -> bool:
        method, _, prefix = self.lose_answers[0].partition(" ") if self.lose_answers else ("", "", "")
        if self.lose_answers and request.startswith(f"{method} {prefix}"):
            self.lose_answers.pop(0)
            return True
        return False


class FaultMiddleware:
    """ASGI middleware applying :class:`Faults` before the sandbox sees the request."""

    def __init__(self, app: ASGIApp, faults: Faults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = f"{scope['method']} {scope['path']}"
        self.faults.log.append(request)
        if self.faults._loses(request):
            async def swallow(message: dict) -> None:
                return None

            await self.app(scope, receive, swallow)  # the call takes effect...
            # ...and its answer never arrives: a response announced and abandoned makes uvicorn close the
            # connection, which the client sees as a transport error.
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")]})
            return
        if self.faults.delay_seconds:
            await asyncio.sleep(self.faults.delay_seconds)
        if self.faults.drop_next > 0:
            self.faults.drop_next -= 1
            # Raising before a response starts makes uvicorn answer 500; starting one and then raising
            # makes it close the connection mid-response: what a client sees when a proxy drops it.
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"partial": ', "more_body": True})
            raise ConnectionAbortedError("sandbox fault: dropped connection")
        if self.faults.statuses:
            status = self.faults.statuses.pop(0)
            headers = [(b"content-type", b"application/json")]
            if self.faults.retry_after is not None:
                headers.append((b"retry-after", self.faults.retry_after.encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b'{"message": "injected fault"}'})
            return
        await self.app(scope, receive, send)
