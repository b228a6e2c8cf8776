"""The local SMTP sink ``dsr up`` runs when no SMTP server is configured.

Every message it receives is written as one ``.eml`` file in the outbox directory (``DSR_HOME/outbox``),
so a developer can open what the engine would have sent. The files hold personal data: they are created
with mode 0600 in a 0700 directory, and appear atomically (temp file + rename) so a reader never sees half
a message. The sink listens on loopback only.

Messages carry identity codes and download links: they are deleted once those links have expired
(``retention``, ``DSR_LINK_DAYS`` under ``dsr up``), at start, after each message filed and every hour. The
age of a message is the UTC time in its name (its file time if the name has none), so whichever process
purges, whichever wrote it, the same files go: several sinks (or a developer's `dsr up` run twice on one
DSR_HOME) may share the directory, and a file another process removed first is simply skipped. A writer's
temporary file is only removed after a day, so a message being filed is never taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["OutboxSink"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_STAMP = "%Y%m%dT%H%M%S%fZ"
_STAMP_RE = re.compile(r"^(\d{8}T\d{12}Z)-")
_STALE_TEMP = timedelta(days=1)
PURGE_EVERY = timedelta(hours=1)

logger = logging.getLogger(__name__)


class OutboxSink:
    """An aiosmtpd handler that files each message as ``<UTC timestamp>-<Message-ID>.eml``.

    Use ``await sink.start(port=8025)`` / ``await sink.stop()``, or ``async with OutboxSink(dir) as sink``.
    The server runs in the caller's event loop (no thread).
    """

    def __init__(self, directory: str | os.PathLike[str], *, retention: timedelta | None = None) -> None:
        """``retention``: how long a filed message is kept (the links it carries expire by then); None keeps
        them all."""
        if retention is not None and retention <= timedelta(0):
            raise ValueError("retention must be a positive timedelta")
        self.directory = Path(directory)
        self.retention = retention
        self.saved: list[Path] = []  # files written since start, oldest first
        self.host: str | None = None
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[SMTP] = set()
        self._purger: asyncio.Task[None] | None = None

    # --- aiosmtpd handler hooks -------------------------------------------------------------------

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        # Bcc never appears in the headers: record the envelope, like aiosmtpd's own Message handler.
        trace = f"X-MailFrom: {envelope.mail_from}\r\nX-RcptTo: {', '.join(envelope.rcpt_tos)}\r\n"
        path = await asyncio.to_thread(self._write, trace.encode("utf-8", "replace") + content)
        self.saved.append(path)
        await asyncio.to_thread(self.purge)
        return "250 OK message filed in the outbox"

    # --- expiry -----------------------------------------------------------------------------------

    def purge(self, now: datetime | None = None) -> list[Path]:
        """Delete the messages older than ``retention`` (and stale temporary files); return what went."""
        if self.retention is None:
            return []
        now = now or datetime.now(UTC)
        removed: list[Path] = []
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.name.endswith(".eml"):
                limit = self.retention
            elif entry.name.startswith(".incoming-"):
                limit = max(self.retention, _STALE_TEMP)
            else:
                continue
            if now - _filed_at(entry) < limit:
                continue
            with contextlib.suppress(FileNotFoundError):  # another process purged it first
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        return removed

    async def _purge_every(self, period: timedelta) -> None:
        while True:
            await asyncio.sleep(period.total_seconds())
            try:
                await asyncio.to_thread(self.purge)
            except OSError as err:  # a full or unmounted disk: say so, try again later
                logger.warning("outbox: could not delete expired messages: %s", err.strerror or err)

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 8025) -> int:
        """Listen on ``host:port`` (``port=0`` picks a free one) and return the bound port."""
        if self._server is not None:
            raise RuntimeError("the outbox sink is already running")
        if not _is_loopback(host):
            raise ValueError(f"the outbox sink only listens on loopback, not {host!r}")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()

        def protocol() -> SMTP:
            smtp = _TrackedSMTP(self, hostname="localhost", loop=loop, enable_SMTPUTF8=True)
            return smtp

        self._server = await loop.create_server(protocol, host=host, port=port)
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]
        if self.retention is not None:
            await asyncio.to_thread(self.purge)
            self._purger = asyncio.create_task(self._purge_every(PURGE_EVERY), name="outbox-purge")
        return self.port

    async def stop(self) -> None:
        """Stop listening and drop open connections; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        purger, self._purger = self._purger, None
        if purger is not None:
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
        server.close()
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.close()
        self._connections.clear()
        await server.wait_closed()

    async def __aenter__(self) -> OutboxSink:
        if self._server is None:
            await self.start(port=0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- files ------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> Path:
        headers = BytesHeaderParser(policy=compat32).parsebytes(data)
        message_id = str(headers.get("Message-ID") or "").strip().strip("<>")
        stem = _UNSAFE.sub("_", message_id)[:100].strip("._") or uuid.uuid4().hex
        stamp = datetime.now(UTC).strftime(_STAMP)
        target = self.directory / f"{stamp}-{stem}.eml"
        # mkstemp creates the file 0600 whatever the umask; the rename makes it appear complete.
        fd, temp = tempfile.mkstemp(prefix=".incoming-", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temp, 0o600)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return target


class _TrackedSMTP(SMTP):
    """An SMTP session that the sink can close on stop()."""

    def __init__(self, sink: OutboxSink, **kwargs: Any) -> None:
        super().__init__(sink, **kwargs)
        self._sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sink._connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._sink._connections.discard(self)
        super().connection_lost(error)


def _filed_at(entry: os.DirEntry[str]) -> datetime:
    """When a message was filed: the stamp its name starts with, else its file's modification time."""
    found = _STAMP_RE.match(entry.name)
    if found:
        with contextlib.suppress(ValueError):
            return datetime.strptime(found.group(1), _STAMP).replace(tzinfo=UTC)
    return datetime.fromtimestamp(entry.stat(follow_symlinks=False).st_mtime, UTC)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
