"""The IMAP side of the mailbox: one TLS connection, the commands the poller needs, and their answers parsed.

:func:`connect` opens an IMAPS connection (implicit TLS, certificates always verified, TLS 1.2 at least) and
logs in; :class:`ImapSession` runs the few commands a poll needs on it (folders in the server's own
spelling, SELECT, UID SEARCH, UID FETCH, UID MOVE or its RFC 6851 fallback), each bounded by the settings'
timeout, a broken connection raised as :class:`~intake.email.settings.MailboxConnectionError` and a NO/BAD
answer as :class:`~intake.email.settings.MailboxError`. Error messages name the host and the command, never
mail content. ``aioimaplib`` logs whole protocol lines (message content) at DEBUG and INFO; those records
are dropped here, for every user of the library in the process.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import aioimaplib

from intake.email.settings import MailboxConnectionError, MailboxError, MailboxSettings


class _NoProtocolDump(logging.Filter):
    """Drops aioimaplib's DEBUG/INFO records: they quote protocol lines, hence message content."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


for _name in ("aioimaplib", "aioimaplib.aioimaplib"):
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, _NoProtocolDump) for f in _logger.filters):
        _logger.addFilter(_NoProtocolDump())


_MONTHS = {
    "Jan": 1, "Feb": 2, "Mar": 3, "Apr": 4, "May": 5, "Jun": 6,
    "Jul": 7, "Aug": 8, "Sep": 9, "Oct": 10, "Nov": 11, "Dec": 12,
}
_INTERNALDATE = re.compile(r"\s?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})")
_FETCH_START = re.compile(rb"^\d+ FETCH \(")
_LIST_DELIMITER = re.compile(rb'^(?:LIST )?\([^)]*\) (?:"((?:\\.|[^"\\])*)"|NIL)')
_MESSAGE_ID = re.compile(r"<[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.\[\]:-]+>")


def parse_internaldate(value: str) -> datetime:
    """``"02-Mar-2026 09:30:00 +0100"`` -> an aware datetime (month names are not locale-dependent)."""
    match = _INTERNALDATE.fullmatch(value.strip('"'))
    if not match or match.group(2).title() not in _MONTHS:
        raise MailboxError("the server sent an INTERNALDATE that is not RFC 3501")
    day, month, year, hh, mm, ss, sign, oh, om = match.groups()
    offset = timedelta(hours=int(oh), minutes=int(om)) * (-1 if sign == "-" else 1)
    return datetime(int(year), _MONTHS[month.title()], int(day), int(hh), int(mm), int(ss), tzinfo=timezone(offset))


@dataclass
class Fetched:
    """What a UID FETCH answered about one message (each item only when asked for)."""

    uid: int | None = None
    size: int | None = None
    internaldate: str | None = None
    literal: bytes | None = None


def parse_fetch(lines: Iterable[Any], uid: int) -> Fetched | None:
    """The FETCH response for ``uid`` among aioimaplib's response lines (literals come as bytearray)."""
    records: list[Fetched] = []
    current: Fetched | None = None
    for line in lines:
        if isinstance(line, bytearray):
            if current is not None and current.literal is None:
                current.literal = bytes(line)
            continue
        if not isinstance(line, bytes):
            continue
        if _FETCH_START.match(line):
            current = Fetched()
            records.append(current)
        elif current is None or line[:1] not in (b" ", b")"):
            continue  # the tagged completion text, or something unrelated
        text = line.decode("ascii", errors="replace")
        if (found := re.search(r"\bUID (\d+)", text)) is not None:
            current.uid = int(found.group(1))
        if (found := re.search(r"\bRFC822\.SIZE (\d+)", text)) is not None:
            current.size = int(found.group(1))
        if (found := re.search(r'\bINTERNALDATE "([^"]+)"', text)) is not None:
            current.internaldate = found.group(1)
    return next((r for r in records if r.uid == uid), None)


def _quoted(value: str) -> str:
    return aioimaplib.quoted(value)


def _ssl_context(settings: MailboxSettings) -> ssl.SSLContext:
    if settings.ssl_context is not None:
        return settings.ssl_context
    context = ssl.create_default_context(cafile=str(settings.cafile) if settings.cafile is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def connect(settings: MailboxSettings) -> aioimaplib.IMAP4_SSL:
    """A logged-in IMAPS connection to the mailbox, its capabilities read again after login."""
    where = f"{settings.host}:{settings.port}"
    try:
        context = _ssl_context(settings)
    except (OSError, ssl.SSLError) as exc:
        raise MailboxConnectionError(f"cannot load the CA file for the mailbox at {where}: {exc}") from None
    client = aioimaplib.IMAP4_SSL(settings.host, settings.port, timeout=settings.timeout, ssl_context=context)
    try:
        await client.wait_hello_from_server()
    except ssl.SSLCertVerificationError as exc:
        _abort(client)
        raise MailboxConnectionError(
            f"the TLS certificate of the mailbox server {where} could not be verified "
            f"({exc.verify_message or exc.reason}); check the host name and the CA file (cafile)"
        ) from None
    except ssl.SSLError as exc:
        _abort(client)
        raise MailboxConnectionError(f"TLS with the mailbox server {where} failed: {exc.reason}") from None
    except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
        _abort(client)
        raise MailboxConnectionError(f"cannot connect to the mailbox server {where}: {_describe(exc)}") from None
    try:
        response = await client.login(_quoted(settings.username), settings.password)
    except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
        _abort(client)
        raise MailboxConnectionError(f"login to the mailbox server {where} failed: {_describe(exc)}") from None
    if response.result != "OK":
        _abort(client)
        raise MailboxConnectionError(f"the mailbox server {where} refused the login (check username/password)")
    # The capabilities announced before login omit MOVE and UIDPLUS on many servers (Dovecot included).
    await asyncio.wait_for(client.protocol.capability(), settings.timeout)
    return client


class ImapSession:
    """The commands of one poll on a logged-in connection. Folder names are given with "/" between levels
    ("DSR/Processed"), whatever the server's own delimiter, learnt by :meth:`learn_delimiter`."""

    def __init__(self, client: aioimaplib.IMAP4_SSL, *, timeout: float) -> None:
        self.client = client
        self._timeout = timeout
        self._delimiter: str | None = "/"

    async def _command(self, what: str, call: Awaitable[aioimaplib.Response], *,
                       overall_timeout: bool = True) -> aioimaplib.Response:
        """Run one IMAP command; a broken connection or a NO/BAD answer becomes a MailboxError.

        aioimaplib bounds some commands only (FETCH by inactivity; UID MOVE not at all), so every command
        gets the settings' timeout here -- except FETCH of a whole message, which may take longer on a slow
        link and is bounded by inactivity instead.
        """
        try:
            response = await (asyncio.wait_for(call, self._timeout) if overall_timeout else call)
        except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
            raise MailboxConnectionError(
                f"the mailbox server stopped answering during {what}: {_describe(exc)}"
            ) from None
        if response.result != "OK":
            raise MailboxError(f"the mailbox server refused {what}: {_status_text(response)}")
        return response

    async def learn_delimiter(self) -> None:
        """The server's hierarchy delimiter (``LIST "" ""``): "/" on many servers, "." on Dovecot's maildir."""
        response = await self._command("LIST", self.client.list('""', '""'))
        self._delimiter = None
        for line in _bytes_lines(response)[:-1]:
            found = _LIST_DELIMITER.search(line)
            if found:
                raw = found.group(1) or b""  # NIL: a flat namespace
                self._delimiter = raw.removeprefix(b"\\").decode("ascii", errors="replace") or None
                return

    def _on_server(self, folder: str) -> str:
        """A configured folder name ("DSR/Processed": "/" separates levels) in the server's own spelling."""
        if self._delimiter and self._delimiter != "/":
            return folder.replace("/", self._delimiter)
        return folder

    async def ensure_folder(self, folder: str) -> None:
        try:
            response = await asyncio.wait_for(self.client.create(_quoted(self._on_server(folder))), self._timeout)
        except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
            raise MailboxConnectionError(
                f"the mailbox server stopped answering during CREATE: {_describe(exc)}"
            ) from None
        if response.result == "OK" or b"ALREADYEXISTS" in b" ".join(_bytes_lines(response)).upper():
            return
        # A server without the ALREADYEXISTS response code (RFC 5530): is the folder listed?
        listed = await self._command("LIST", self.client.list('""', _quoted(self._on_server(folder))))
        if not _bytes_lines(listed)[:-1]:
            raise MailboxError(f"cannot create the mailbox folder {folder!r}: {_status_text(response)}")

    async def select(self, folder: str) -> None:
        await self._command("SELECT", self.client.select(_quoted(self._on_server(folder))))

    async def uids(self) -> list[int]:
        """Every message of the selected folder, by UID, in ascending order."""
        search = await self._command("UID SEARCH", self.client.uid_search("ALL", charset=None))
        return _search_uids(search)

    async def uids_with_message_id(self, message_id: str) -> list[int]:
        """The messages of the selected folder whose Message-ID header holds ``message_id`` (``<id@domain>``)."""
        if not _MESSAGE_ID.fullmatch(message_id):
            raise ValueError("not a Message-ID of the form <id@domain>")
        search = await self._command("UID SEARCH", self.client.uid_search(
            "HEADER", "Message-ID", _quoted(message_id), charset=None))
        return _search_uids(search)

    async def fetch(self, uid: int, items: str) -> Fetched | None:
        """``items`` of message ``uid``; None when it is gone (expunged meanwhile by another client)."""
        response = await self._command("UID FETCH", self.client.uid("fetch", str(uid), items), overall_timeout=False)
        return parse_fetch(response.lines, uid)

    async def move(self, uid: int, folder: str) -> None:
        target = _quoted(self._on_server(folder))
        client = self.client
        if client.has_capability("MOVE"):
            await self._command("UID MOVE", client.uid("move", str(uid), target))
            return
        # RFC 6851 fallback. Without UIDPLUS a plain EXPUNGE also removes other messages flagged \Deleted by
        # another client -- which is what \Deleted asks for anyway.
        await self._command("UID COPY", client.uid("copy", str(uid), target))
        await self._command("UID STORE", client.uid("store", str(uid), "+FLAGS.SILENT", r"(\Deleted)"))
        if client.has_capability("UIDPLUS"):
            await self._command("UID EXPUNGE", client.uid("expunge", str(uid)))
        else:
            await self._command("EXPUNGE", client.expunge())

    async def logout(self) -> None:
        """Log out if still logged in, and close the connection whatever happens."""
        try:
            if self.client.get_state() in ("AUTH", "SELECTED"):
                await self.client.logout()
        except (OSError, TimeoutError, aioimaplib.AioImapException):
            pass
        finally:
            _abort(self.client)


def _bytes_lines(response: aioimaplib.Response) -> list[bytes]:
    return [bytes(line) for line in response.lines if isinstance(line, bytes | bytearray)]


def _status_text(response: aioimaplib.Response) -> str:
    lines = _bytes_lines(response)
    text = lines[-1].decode("ascii", errors="replace") if lines else ""
    return f"{response.result} {text}"[:200]


def _search_uids(response: aioimaplib.Response) -> list[int]:
    """UIDs of a UID SEARCH answer. aioimaplib strips "* SEARCH" from the untagged line (not always: accept
    both); the last line is the tagged completion text, which may hold numbers too."""
    uids: list[int] = []
    for line in _bytes_lines(response)[:-1]:
        tokens = line.split()
        if tokens and tokens[0].upper() == b"SEARCH":
            tokens = tokens[1:]
        uids.extend(int(tok) for tok in tokens if tok.isdigit())
    return sorted(set(uids))


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _abort(client: aioimaplib.IMAP4_SSL) -> None:
    transport = getattr(client.protocol, "transport", None)
    if transport is not None:
        transport.close()
