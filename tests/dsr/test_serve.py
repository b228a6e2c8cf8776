"""How a server started by ``dsr.web.serve.serve_app`` stops: what is being answered is answered, idle connections do
not hold the stop, and a request outliving the grace is cut."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from dsr.web.serve import RunningServer, serve_app
from tests.harness import http_client


class Held:
    """A route that answers only once the test releases it."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.released = asyncio.Event()

    async def answer(self, request: Request) -> PlainTextResponse:
        self.arrived.set()
        await self.released.wait()
        return PlainTextResponse("answered")


@pytest.fixture
def held() -> Held:
    return Held()


@pytest_asyncio.fixture
async def server(held: Held) -> AsyncIterator[RunningServer]:
    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok")), Route("/held", held.answer)])
    running = await serve_app(app)
    try:
        yield running
    finally:
        held.released.set()
        await running.stop()


async def test_a_stop_lets_the_request_being_answered_finish_then_refuses_connections(
        server: RunningServer, held: Held) -> None:
    async with http_client(base_url=server.url) as http:
        request = asyncio.create_task(http.get("/held"))
        await held.arrived.wait()
        stopping = asyncio.create_task(server.stop())
        for _ in range(20):  # the stop runs on, and waits
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert not stopping.done(), "the stop did not wait for the request being answered"
        held.released.set()
        response = await request
        await stopping
    assert (response.status_code, response.text) == (200, "answered")
    assert server.server.force_exit is False
    async with http_client(base_url=server.url) as late:
        with pytest.raises(httpx.ConnectError):
            await late.get("/")


async def test_an_idle_keep_alive_connection_does_not_hold_the_stop(server: RunningServer) -> None:
    async with http_client(base_url=server.url) as http:
        assert (await http.get("/")).status_code == 200  # the connection stays open in the client's pool
        await asyncio.wait_for(server.stop(grace_seconds=60), timeout=10)
        assert server.task.done()
        assert server.server.force_exit is False  # closed as idle, not cut at the end of the grace


async def test_a_request_outliving_the_grace_is_cut(server: RunningServer, held: Held) -> None:
    async with http_client(base_url=server.url) as http:
        request = asyncio.create_task(http.get("/held"))
        await held.arrived.wait()
        await server.stop(grace_seconds=0.2)
        assert server.server.force_exit is True
        assert server.task.done()
        with pytest.raises(httpx.TransportError):
            await request
