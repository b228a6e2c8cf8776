"""An ASGI middleware over a sandbox that holds the calls it is told to watch: a vendor slow enough for calls made
side by side to overlap, without a race against the clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

Query = Mapping[str, list[str]]


class Gatekeeper:
    """Counts the watched calls being answered at once (``now``, ``most``) and holds each until ``together`` are in
    (or ``hold`` seconds have passed), and those of a page in ``gates`` until its event is set. ``watched(method,
    path, query)`` says which calls count. The app runs on one event loop (a served sandbox's); ``now`` and
    ``most`` may be read from another thread."""

    def __init__(self, app: Any, watched: Callable[[str, str, Query], bool]) -> None:
        self.app = app
        self.watched = watched
        self.together, self.hold = 1, 0.0
        self.now = self.most = 0
        self.gates: dict[int, asyncio.Event] = {}
        self._arrival: asyncio.Event | None = None  # set, and replaced, at each arrival (made on the app's loop)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        query = parse_qs(scope.get("query_string", b"").decode()) if scope["type"] == "http" else {}
        if not (scope["type"] == "http" and self.watched(scope["method"], scope["path"], query)):
            await self.app(scope, receive, send)
            return
        self.now += 1
        self.most = max(self.most, self.now)
        if self._arrival is not None:
            self._arrival.set()
        self._arrival = asyncio.Event()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_in(), timeout=self.hold)
            gate = self.gates.get(int(query.get("page", ["1"])[0]))
            if gate is not None:
                await gate.wait()
            await self.app(scope, receive, send)
        finally:
            self.now -= 1

    async def _all_in(self) -> None:
        while self.now < self.together:
            assert self._arrival is not None
            await self._arrival.wait()

    async def until_holding(self, count: int) -> None:
        for _ in range(500):
            if self.now == count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{self.now} calls held, never {count}")
