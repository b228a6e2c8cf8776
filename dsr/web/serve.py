"""Serving an ASGI app (the intake, the codec server, the sandboxes) with uvicorn inside a running event loop.

Every server of the project is started this way: bound by us (a busy port is an ``OSError`` here, not uvicorn's
``sys.exit``), no signal handlers of its own, no logging configuration, ``X-Forwarded-*`` believed only from
the proxies named.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

LOOPBACK = "127.0.0.1"


_POLL_SECONDS = 0.005
"""How often a stopping server looks whether its connections and requests are done (uvicorn: every 0.1 s)."""


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves the host program's signal handlers alone, and stops as soon as it is done.

    uvicorn notices ``should_exit`` at its next tick (every 0.1 s), then sleeps another 0.1 s before it waits for
    its connections, polling every 0.1 s: a fifth of a second per stop, even idle. The tests start and stop
    hundreds of servers, and `dsr up` stops two at every exit; here the tick also wakes when :meth:`RunningServer.stop`
    asks, and the wait for in-flight requests polls every few milliseconds. What a stop waits for is unchanged:
    every request being answered finishes (within ``stop``'s grace), idle keep-alive connections are closed.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit_asked = asyncio.Event()

    def ask_exit(self) -> None:
        """What uvicorn's ``should_exit = True`` does, noticed at once rather than at the next tick."""
        self.should_exit = True
        self._exit_asked.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # uvicorn >= 0.29
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn
        pass

    async def main_loop(self) -> None:
        # uvicorn's loop (``on_tick``: the Date header each second, ``should_exit``), woken at once by stop().
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_asked.wait(), 0.1)
            should_exit = await self.on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's shutdown (no new connections; idle ones closed, busy ones closed once their response is sent;
        # then the requests still running), without its fixed and polling sleeps of 0.1 s.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        # uvicorn signals nothing when its last connection closes, hence the poll.
        while (self.server_state.connections or self.server_state.tasks) and not self.force_exit:  # noqa: ASYNC110
            await asyncio.sleep(_POLL_SECONDS)
        for server in self.servers:
            await server.wait_closed()
        if not self.force_exit:
            await self.lifespan.shutdown()


@dataclass
class RunningServer:
    """Handle on a server started by :func:`serve_app`; ``await stop()`` (or ``async with``)."""

    server: _EmbeddedServer
    task: asyncio.Task[None]
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def wait(self) -> None:
        """Run until the server exits (after :meth:`stop`, or on error); cancelling this stops it."""
        try:
            await asyncio.shield(self.task)
        except asyncio.CancelledError:
            if not self.task.done():
                await self.stop()
            raise

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Ask the server to exit, wait for in-flight requests (up to ``grace_seconds``), then cut them: their
        handlers are cancelled and their connections closed, so a client learns at once that no answer comes."""
        if self.task.done():
            return
        self.server.ask_exit()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), grace_seconds)
        except TimeoutError:
            self.server.force_exit = True
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            for handler in list(self.server.server_state.tasks):
                handler.cancel()
            for connection in list(self.server.server_state.connections):
                connection.transport.abort()

    async def __aenter__(self) -> RunningServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def serve_app(
    app: ASGIApp,
    host: str = LOOPBACK,
    port: int = 0,
    *,
    log_level: str = "warning",
    trusted_proxies: Sequence[str] = (),
) -> RunningServer:
    """Start ``app`` with uvicorn in the running event loop; return once it accepts connections.

    ``trusted_proxies`` (addresses or CIDR networks): peers whose ``X-Forwarded-For``/``X-Forwarded-Proto``
    headers are believed. None by default: the client is the socket's peer, whatever headers it sends
    (uvicorn itself would trust 127.0.0.1, letting any local process, or a proxy forwarding them unchecked,
    pick the client address).

    Binds ``host`` (loopback by default) itself, so a busy port raises ``OSError`` here instead of
    uvicorn's ``sys.exit``; ``port=0`` picks a free port (see ``.port``). No signal handlers are
    installed and logging configuration is left to the host program. Stop with
    ``await running.stop()``; ``await running.wait()`` runs until then (cancelling it stops the server).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: with proto 0 asyncio never sets TCP_NODELAY, and Nagle costs ~40 ms a call.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        host=host,
        port=bound_port,
        lifespan="off",
        log_config=None,
        log_level=log_level,
        access_log=False,
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=list(trusted_proxies) or None,
    )
    server = _EmbeddedServer(config)

    async def run() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()

    task = asyncio.create_task(run(), name=f"http-server:{bound_port}")
    while not server.started:
        if task.done():
            task.result()  # re-raise the startup error
            raise RuntimeError(f"the server on {host}:{bound_port} stopped during startup")
        await asyncio.sleep(0.01)
    return RunningServer(server=server, task=task, host=host, port=bound_port)

