"""Email intake: requests sent to the privacy address, read from an IMAP mailbox over TLS.

:class:`Mailbox` polls one folder (``INBOX``) over IMAPS (implicit TLS, certificates always verified) and
hands every message to an :class:`~intake.service.IntakeSink`: a request when the classifier recognises the
kind, the operators' triage when it does not (never a guess). The sender's address is the subject's
*claimed* address, never proof of identity: submissions are not ``trusted``, so identity is checked as for
any other channel. The receipt instant is the message's IMAP INTERNALDATE -- when our server received it,
which is what starts the Art. 12(3) clock -- not the sender-controlled ``Date`` header.

Exactly once
------------
A poll may die at any instant (crash, kill, lost connection) and the next poll must neither lose the
message nor start a second request for it. Each message goes through these steps, each durable before the
next begins (table ``inbound_messages``, :mod:`intake.inbox`, in the ledger's database):

1. **look up** the message by a keyed hash of its Message-ID and sender (a message without Message-ID gets
   a synthetic one from a hash of its raw bytes);
2. if absent, **reserve**: a new request id (``new_request_id``) is committed as ``reserved``;
3. **attachments** are stored encrypted under the reserved id (cleared and stored again if a previous
   attempt died half-way; never again once recorded as stored, so an ID copy deleted after identity
   confirmation cannot come back);
4. **submit** with ``request_id=`` the reserved id (or **triage** with it). The service starts workflows
   idempotently by id, so re-submitting after a crash here answers with the same request, never a second;
5. mark ``submitted`` / ``triaged``;
6. **move** the message to the processed folder (UID MOVE, or COPY + STORE \\Deleted + EXPUNGE on servers
   without MOVE), then mark ``moved``.

A crash before 5 re-submits the same id (idempotent); between 5 and 6 the next poll finds the row and only
moves the message; after the move the message is no longer in the inbox. A message that is delivered
again with the same Message-ID and sender is moved without a second request.

Replies about a request
-----------------------
Before anything is stored or classified (between 2 and 3), a sink that is also a
:class:`~intake.service.ReplySink` is asked whether the message answers a request: a reference
(``dsr-2026-11-7KQ3FJ``, any case) in its Subject or one of our Message-IDs in In-Reply-To/References, *and*
the sender being that request's subject (blind index in the ledger). Otherwise -- no reference, no such
request, someone else writing -- the steps above apply unchanged. The decision is committed on the row
(``reason`` ``correspondence`` or ``closed_reply``, ``reference`` the request) before anything else, so a
retry takes the same path:

* open request: 3') the attachments are stored under the *request's* id, each tagged with the message's key
  and part, so a retry stores only what is missing and never clears the request's other files;
  4') the ``record_correspondence`` update, idempotent by the message key (a crash after it and before 5
  sends it again: the workflow recognises the key and does nothing); 5) ``submitted``; 6) processed folder.
* closed request (or one that refuses the update because it closed meanwhile, its files then moved back
  under the reserved id): triage, with the reason "reply about closed request dsr-...", never a new request.

Rejections
----------
Mail that cannot become a request is moved to the rejected folder and logged in one line without personal
data, so it never loops and is never silently dropped: automatic replies and bounces (``Auto-Submitted``
other than ``no``, ``Precedence: bulk/junk/list``, ``X-Autoreply``, MAILER-DAEMON, ``Return-Path: <>``,
delivery reports) -- never acknowledged, which would start a mail loop --, a sender that is not a valid
address, a message over the size limit, and anything the service refuses with ``SubmissionError``.
``RateLimited`` and an unavailable engine leave the message in the inbox for the next poll.

Logs name IMAP UIDs, request ids and reason codes only: never addresses, names, subjects or bodies.
``aioimaplib`` logs whole protocol lines (message content) at DEBUG and INFO; those records are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.header
import email.policy
import email.utils
import hashlib
import logging
import mimetypes
import re
import secrets
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage, Message
from enum import StrEnum
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Protocol

import aioimaplib
from sqlalchemy import Engine

from dsr.domain.deadlines import receipt_date
from dsr.domain.model import Channel, Correspondence, Language, RequestKind, display_name, is_valid_email
from dsr.store.attachments import AttachmentInfo, AttachmentLimitError, AttachmentStore  # noqa: F401 - re-exported
from dsr.store.attachments import safe_filename as _safe_filename
from dsr.store.crypto import KeyRing
from intake.authresults import UNCHECKED, SenderCheck, sender_check
from intake.inbox import InboundMessage, Inbox, MessageState
from intake.mimescan import MAX_DEPTH, MAX_PARTS, MessageTooComplex, check_mime_caps
from intake.service import IntakeSink, RateLimited, ReplySink, RequestClosed, TriageItem
from intake.submission import MAX_DETAILS, MAX_NAME, Submission, SubmissionError, new_request_id

log = logging.getLogger("dsr.intake.mailbox")

MAX_SUBJECT = 1_000
TRUNCATED_MARK = "\n[…]"


class _NoProtocolDump(logging.Filter):
    """Drops aioimaplib's DEBUG/INFO records: they quote protocol lines, hence message content."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


for _name in ("aioimaplib", "aioimaplib.aioimaplib"):
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, _NoProtocolDump) for f in _logger.filters):
        _logger.addFilter(_NoProtocolDump())


# --- settings, results, errors -------------------------------------------------------------------------


@dataclass(frozen=True)
class MailboxSettings:
    """Where the privacy mailbox is and how to poll it."""

    host: str
    username: str
    password: str = field(repr=False)
    port: int = 993  # IMAPS: TLS from the first byte (no STARTTLS downgrade to worry about)
    # Folder names use "/" between levels ("DSR/Processed"), whatever the server's own delimiter.
    folder: str = "INBOX"
    processed_folder: str = "Processed"
    rejected_folder: str = "Rejected"
    triage_folder: str | None = None  # unclassified messages; None: the processed folder
    poll_interval: float = 60.0  # seconds between polls
    cafile: Path | None = None  # trust only this CA (e.g. a private CA, or the tests'); None: system CAs
    ssl_context: ssl.SSLContext | None = None  # overrides cafile; must verify certificates
    max_message_bytes: int = 25 * 1024 * 1024
    max_attachments: int = 5  # per message; more are not kept (the operator still has the email)
    max_attachment_bytes: int = 10 * 1024 * 1024
    timeout: float = 60.0  # per IMAP command
    timezone: str = "Europe/Paris"  # the controller's: the month in the reserved request id
    max_backoff: float = 300.0  # seconds, between reconnection attempts
    # The authserv-id of the server that receives mail for this mailbox: only its Authentication-Results
    # headers are believed (RFC 8601); None: no sender is checked (operators are told so).
    authserv_id: str | None = None
    # MIME caps, checked by a linear scan before the stdlib parser (whose cost grows with the parts) sees the
    # message; over them, or when parsing takes longer than parse_timeout, the message goes to triage unread.
    max_parts: int = MAX_PARTS
    max_depth: int = MAX_DEPTH
    parse_timeout: float = 30.0  # seconds

    def __post_init__(self) -> None:
        for name in ("folder", "processed_folder", "rejected_folder", "triage_folder"):
            value = getattr(self, name)
            # Non-ASCII names would need modified UTF-7 (RFC 3501 5.1.3); keep configuration simple.
            if value is not None and (not value or not value.isascii() or not value.isprintable()):
                raise ValueError(f"mailbox {name} must be a non-empty printable ASCII folder name")
        if self.ssl_context is not None and self.ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("mailbox ssl_context must verify certificates (verify_mode CERT_REQUIRED)")


@dataclass
class PollReport:
    """What one poll did, in counts (no personal data)."""

    submitted: int = 0  # new requests (or attached to an open one)
    triaged: int = 0  # handed to the operators' triage
    rejected: int = 0  # moved to the rejected folder
    skipped: int = 0  # already handled (a crash or a redelivery): only moved
    deferred: int = 0  # left in the inbox for the next poll (rate limited, engine unavailable)
    corresponded: int = 0  # replies recorded on the open request they are about

    @property
    def total(self) -> int:
        return self.submitted + self.triaged + self.rejected + self.skipped + self.deferred + self.corresponded


class MailboxError(Exception):
    """The mailbox could not be polled; the message says why (host and port, never mail content)."""


class MailboxConnectionError(MailboxError):
    """Connecting, TLS or login failed, or the connection broke: retried with backoff by :meth:`Mailbox.run`."""


# --- classification ----------------------------------------------------------------------------------


class ClassificationLike(Protocol):
    @property
    def kind(self) -> RequestKind | None: ...

    @property
    def language(self) -> Language | None: ...

    @property
    def reason(self) -> str: ...


Classifier = Callable[[str, str], ClassificationLike]
"""``classify(subject, body)``; ``kind`` None means unsure: the message goes to triage."""


def _default_classifier(subject: str, body: str) -> ClassificationLike:
    from intake.classify import classify  # imported late: the classifier is its own module

    return classify(subject, body)


# --- reading a message -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class InboundEmail:
    """A decoded message. Personal data throughout: never log it."""

    message_id: str | None  # as sent, e.g. "<abc@mail.example.org>"; None when absent
    sender: str  # the From address (claimed, not verified)
    name: str  # the From display name
    subject: str
    body: str  # text: text/plain preferred, else HTML reduced to text
    attachments: tuple[Attachment, ...] = ()
    attachments_dropped: int = 0  # over the count or size limit
    thread_ids: tuple[str, ...] = ()  # In-Reply-To, then References from the most recent: what it answers
    sender_check: SenderCheck = UNCHECKED  # what our mail server said of the From
    unread: str = ""  # why the body and attachments were not read (over the MIME caps): triage, from headers only

    def key_id(self, raw: bytes) -> str:
        """The Message-ID, or a synthetic one from a hash of the raw bytes when there is none."""
        return self.message_id or f"<sha256.{hashlib.sha256(raw).hexdigest()}@dsr.invalid>"


_MSG_ID = re.compile(r"<[^<>\s]{1,900}>")
_AUTO_PRECEDENCE = {"bulk", "junk", "list", "auto_reply"}


def auto_reply_reason(headers: Message) -> str | None:
    """Why this message is an automatic one (RFC 3834 and common practice), or None for a human's.

    Answering those (an acknowledgement to an out-of-office reply or a bounce) starts mail loops.
    """
    auto = _header_text(headers, "Auto-Submitted")
    if auto and auto.split(";", 1)[0].strip().lower() != "no":
        return "auto_submitted"
    if _header_text(headers, "Precedence").lower() in _AUTO_PRECEDENCE:
        return "precedence"
    for name in ("X-Autoreply", "X-Autorespond", "X-Auto-Reply"):
        if headers.get(name) is not None:
            return "autoreply_header"
    for value in headers.get_all("Return-Path") or ():
        if str(value).strip() in {"<>", ""}:
            return "null_return_path"
    sender, _name = _sender(headers)
    if sender.split("@", 1)[0].lower() == "mailer-daemon":
        return "mailer_daemon"
    if headers.get_content_type() == "multipart/report":
        return "delivery_report"
    return None


def parse_message(
    raw: bytes,
    *,
    max_attachments: int = 5,
    max_attachment_bytes: int = 10 * 1024 * 1024,
    authserv_id: str | None = None,
    max_parts: int = MAX_PARTS,
    max_depth: int = MAX_DEPTH,
) -> InboundEmail:
    """Decode a raw RFC 5322 message: MIME structure, transfer encodings, charsets, RFC 2047 words.

    Raises :class:`~intake.mimescan.MessageTooComplex` (before any parsing) over ``max_parts`` parts or
    ``max_depth`` levels of nesting.
    """
    check_mime_caps(raw, max_parts=max_parts, max_depth=max_depth)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    sender, name = _sender(message)
    body_part = _body_part(message)
    body = ""
    if body_part is not None:
        text = _decode_text(body_part)
        body = html_to_text(text) if body_part.get_content_type() == "text/html" else _tidy(text)
    attachments: list[Attachment] = []
    dropped = 0
    for part in _attachment_parts(message, body_part):
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes) or not data:
            continue
        if len(attachments) >= max_attachments or len(data) > max_attachment_bytes:
            dropped += 1
            continue
        content_type = part.get_content_type()
        filename = _safe_filename(_filename(part))
        if filename == "attachment":
            filename = f"attachment-{len(attachments) + 1}{mimetypes.guess_extension(content_type) or '.bin'}"
        attachments.append(Attachment(filename=filename, content_type=content_type, data=data))
    return InboundEmail(
        message_id=_message_id(message),
        sender=sender,
        name=display_name(name)[:MAX_NAME],
        subject=" ".join(_header_text(message, "Subject").split())[:MAX_SUBJECT],
        body=body,
        attachments=tuple(attachments),
        attachments_dropped=dropped,
        thread_ids=_thread_ids(message),
        sender_check=sender_check(message.raw_items(), authserv_id),
    )


def unread_message(headers: Message, why: str, *, authserv_id: str | None = None) -> InboundEmail:
    """A message known by its headers only (``why`` says why its body was not read): for triage."""
    sender, name = _sender(headers)
    return InboundEmail(
        message_id=_message_id(headers),
        sender=sender,
        name=display_name(name)[:MAX_NAME],
        subject=" ".join(_header_text(headers, "Subject").split())[:MAX_SUBJECT],
        body="",
        thread_ids=_thread_ids(headers),
        sender_check=sender_check(headers.raw_items(), authserv_id),
        unread=why,
    )


MAX_THREAD_IDS = 50


def _thread_ids(message: Message) -> tuple[str, ...]:
    """The Message-IDs a message answers: In-Reply-To first, then References newest first (RFC 5322 3.6.4
    lists them oldest first); bounded, since the headers are the sender's to fill."""
    found: list[str] = []
    replied = _MSG_ID.findall(_header_text(message, "In-Reply-To"))
    references = _MSG_ID.findall(_header_text(message, "References"))
    for message_id in [*replied, *reversed(references)]:
        if message_id not in found:
            found.append(message_id)
        if len(found) >= MAX_THREAD_IDS:
            break
    return tuple(found)


def _header_text(message: Message, name: str) -> str:
    try:
        value = message.get(name)
    except Exception:  # a header the parser chokes on: read it undecoded
        value = next((v for k, v in message.raw_items() if k.lower() == name.lower()), None)
    return str(value).strip() if value is not None else ""


def _sender(message: Message) -> tuple[str, str]:
    """The (address, display name) of From, decoded; ("", "") when there is none."""
    with contextlib.suppress(Exception):
        header: Any = message.get("From")
        addresses = getattr(header, "addresses", None)
        if addresses:
            first = addresses[0]
            return str(first.addr_spec).strip(), str(first.display_name or "")
    raw = next((str(v) for k, v in message.raw_items() if k.lower() == "from"), "")
    display, address = email.utils.parseaddr(raw)
    with contextlib.suppress(Exception):
        display = str(email.header.make_header(email.header.decode_header(display)))
    return address.strip(), display


def _message_id(message: Message) -> str | None:
    value = _header_text(message, "Message-ID")
    if not value:
        return None
    found = _MSG_ID.search(value)
    if found:
        return found.group(0)
    token = value.split()[0] if value.split() else ""
    return f"<{token[:900]}>" if token else None


def _filename(part: Message) -> str | None:
    try:
        return part.get_filename()
    except Exception:
        return None


def _body_part(message: EmailMessage) -> EmailMessage | None:
    try:
        found = message.get_body(preferencelist=("plain", "html"))
    except Exception:
        found = None
    if found is not None:
        return found
    if not message.is_multipart() and message.get_content_maintype() == "text":
        return message
    return None


def _attachment_parts(message: EmailMessage, body_part: EmailMessage | None) -> Iterable[EmailMessage]:
    """Every leaf that is a file: named or declared attachment, or any non-text part (an inline scan)."""
    for part in message.walk():
        if part is body_part or part.is_multipart() or part.get_content_maintype() == "message":
            continue
        disposition = (part.get_content_disposition() or "").lower()
        named = _filename(part) is not None
        if disposition == "attachment" or named or part.get_content_maintype() != "text":
            yield part  # type: ignore[misc]


_LATIN1 = {"iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "iso_8859-1", "cp819"}
_ASCII = {"", "us-ascii", "ascii", "ansi_x3.4-1968"}


def _decode_text(part: Message) -> str:
    """The text of a part, transfer encoding undone, decoded by its charset, tolerant of lying labels."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = (part.get_content_charset() or "").strip().lower()
    if charset in _LATIN1:
        # Mail labelled ISO-8859-1 is most often windows-1252 (curly quotes, euro sign): as browsers do.
        candidates = ["cp1252"]
    elif charset in _ASCII:
        candidates = ["utf-8", "cp1252"]  # undeclared 8-bit text: UTF-8 today, windows-1252 yesterday
    else:
        candidates = [charset, "utf-8", "cp1252"]
    for candidate in candidates:
        try:
            return payload.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return payload.decode("latin-1")  # every byte is a character: never fails


class _TextOfHtml(HTMLParser):
    _BLOCK = frozenset({
        "p", "div", "br", "li", "tr", "table", "ul", "ol", "blockquote", "pre", "hr",
        "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "header", "footer",
    })
    _HIDDEN = frozenset({"script", "style", "title", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Readable text of an HTML body: tags dropped, entities decoded, one line per block."""
    parser = _TextOfHtml()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # html.parser is lenient; this is only a last resort for pathological input
        return _tidy(re.sub(r"<[^>]*>", " ", html), blank_lines=False)
    return _tidy("".join(parser.parts), blank_lines=False)


def _tidy(text: str, *, blank_lines: bool = True) -> str:
    """Whitespace collapsed inside lines; runs of blank lines made one (HTML: none, blocks are lines)."""
    lines = [" ".join(line.split()) for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    tidy: list[str] = []
    for line in lines:
        if line or (blank_lines and tidy and tidy[-1]):
            tidy.append(line)
    return "\n".join(tidy).strip()


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATED_MARK)] + TRUNCATED_MARK


# --- IMAP --------------------------------------------------------------------------------------------

_MONTHS = {
    "Jan": 1, "Feb": 2, "Mar": 3, "Apr": 4, "May": 5, "Jun": 6,
    "Jul": 7, "Aug": 8, "Sep": 9, "Oct": 10, "Nov": 11, "Dec": 12,
}
_INTERNALDATE = re.compile(r"\s?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})")
_FETCH_START = re.compile(rb"^\d+ FETCH \(")
_LIST_DELIMITER = re.compile(rb'^(?:LIST )?\([^)]*\) (?:"((?:\\.|[^"\\])*)"|NIL)')


def parse_internaldate(value: str) -> datetime:
    """``"02-Mar-2026 09:30:00 +0100"`` -> an aware datetime (month names are not locale-dependent)."""
    match = _INTERNALDATE.fullmatch(value.strip('"'))
    if not match or match.group(2).title() not in _MONTHS:
        raise MailboxError("the server sent an INTERNALDATE that is not RFC 3501")
    day, month, year, hh, mm, ss, sign, oh, om = match.groups()
    offset = timedelta(hours=int(oh), minutes=int(om)) * (-1 if sign == "-" else 1)
    return datetime(int(year), _MONTHS[month.title()], int(day), int(hh), int(mm), int(ss), tzinfo=timezone(offset))


@dataclass
class _Fetched:
    uid: int | None = None
    size: int | None = None
    internaldate: str | None = None
    literal: bytes | None = None


def _parse_fetch(lines: Iterable[Any], uid: int) -> _Fetched | None:
    """The FETCH response for ``uid`` among aioimaplib's response lines (literals come as bytearray)."""
    records: list[_Fetched] = []
    current: _Fetched | None = None
    for line in lines:
        if isinstance(line, bytearray):
            if current is not None and current.literal is None:
                current.literal = bytes(line)
            continue
        if not isinstance(line, bytes):
            continue
        if _FETCH_START.match(line):
            current = _Fetched()
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


CORRESPONDENCE = "correspondence"
"""Inbox reason code: a reply about the open request named in ``reference``."""
CLOSED_REPLY = "closed_reply"
"""Inbox reason code: a reply about the closed request named in ``reference``: to triage."""
FORGED_REPLY = "dmarc_fail_reply"
"""Inbox reason code: a reply naming the open request ``reference`` whose sender failed DMARC: to triage."""


class Outcome(StrEnum):
    CORRESPONDED = "corresponded"
    SUBMITTED = "submitted"
    TRIAGED = "triaged"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    DEFERRED = "deferred"


class Mailbox:
    """Polls the privacy mailbox and turns each message into a request, exactly once.

    ``engine`` is the ledger's SQLAlchemy engine (``Ledger.engine``): the ``inbound_messages`` table is
    created there. ``classifier`` defaults to :func:`intake.classify.classify`.
    """

    def __init__(
        self,
        settings: MailboxSettings,
        sink: IntakeSink,
        *,
        engine: Engine,
        keyring: KeyRing,
        attachments: AttachmentStore,
        classifier: Classifier | None = None,
    ) -> None:
        self.settings = settings
        self._sink = sink
        # Replies about a request are recognised only by a sink that can look them up (the intake service).
        self._replies: ReplySink | None = sink if isinstance(sink, ReplySink) else None
        self._inbox = Inbox(engine, keyring)
        self._attachments = attachments
        self._classify: Classifier = classifier or _default_classifier
        self._delimiter: str | None = "/"  # learnt from the server at each poll

    # -- connection

    def _ssl_context(self) -> ssl.SSLContext:
        if self.settings.ssl_context is not None:
            return self.settings.ssl_context
        context = ssl.create_default_context(
            cafile=str(self.settings.cafile) if self.settings.cafile is not None else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    async def _connect(self) -> aioimaplib.IMAP4_SSL:
        where = f"{self.settings.host}:{self.settings.port}"
        try:
            context = self._ssl_context()
        except (OSError, ssl.SSLError) as exc:
            raise MailboxConnectionError(f"cannot load the CA file for the mailbox at {where}: {exc}") from None
        client = aioimaplib.IMAP4_SSL(
            self.settings.host, self.settings.port, timeout=self.settings.timeout, ssl_context=context
        )
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
            response = await client.login(_quoted(self.settings.username), self.settings.password)
        except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
            _abort(client)
            raise MailboxConnectionError(f"login to the mailbox server {where} failed: {_describe(exc)}") from None
        if response.result != "OK":
            _abort(client)
            raise MailboxConnectionError(f"the mailbox server {where} refused the login (check username/password)")
        # The capabilities announced before login omit MOVE and UIDPLUS on many servers (Dovecot included).
        await asyncio.wait_for(client.protocol.capability(), self.settings.timeout)
        return client

    async def _command(self, what: str, call: Any, *, overall_timeout: bool = True) -> aioimaplib.Response:
        """Run one IMAP command; a broken connection or a NO/BAD answer becomes a MailboxError.

        aioimaplib bounds some commands only (FETCH by inactivity; UID MOVE not at all), so every command
        gets the settings' timeout here -- except FETCH of a whole message, which may take longer on a slow
        link and is bounded by inactivity instead.
        """
        try:
            response = await (asyncio.wait_for(call, self.settings.timeout) if overall_timeout else call)
        except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
            raise MailboxConnectionError(
                f"the mailbox server stopped answering during {what}: {_describe(exc)}"
            ) from None
        if response.result != "OK":
            raise MailboxError(f"the mailbox server refused {what}: {_status_text(response)}")
        return response

    async def _hierarchy_delimiter(self, client: aioimaplib.IMAP4_SSL) -> str | None:
        """The server's hierarchy delimiter (``LIST "" ""``): "/" on many servers, "." on Dovecot's maildir."""
        response = await self._command("LIST", client.list('""', '""'))
        for line in _bytes_lines(response)[:-1]:
            found = _LIST_DELIMITER.search(line)
            if found:
                raw = found.group(1) or b""  # NIL: a flat namespace
                return raw.removeprefix(b"\\").decode("ascii", errors="replace") or None
        return None

    def _on_server(self, folder: str) -> str:
        """A configured folder name ("DSR/Processed": "/" separates levels) in the server's own spelling."""
        if self._delimiter and self._delimiter != "/":
            return folder.replace("/", self._delimiter)
        return folder

    async def _ensure_folder(self, client: aioimaplib.IMAP4_SSL, folder: str) -> None:
        try:
            response = await asyncio.wait_for(client.create(_quoted(self._on_server(folder))), self.settings.timeout)
        except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
            raise MailboxConnectionError(
                f"the mailbox server stopped answering during CREATE: {_describe(exc)}"
            ) from None
        if response.result == "OK" or b"ALREADYEXISTS" in b" ".join(_bytes_lines(response)).upper():
            return
        # A server without the ALREADYEXISTS response code (RFC 5530): is the folder listed?
        listed = await self._command("LIST", client.list('""', _quoted(self._on_server(folder))))
        if not _bytes_lines(listed)[:-1]:
            raise MailboxError(f"cannot create the mailbox folder {folder!r}: {_status_text(response)}")

    # -- polling

    async def poll_once(self) -> PollReport:
        """Connect, handle every message of the inbox folder, disconnect."""
        report = PollReport()
        client = await self._connect()
        try:
            self._delimiter = await self._hierarchy_delimiter(client)
            folders = {self.settings.processed_folder, self.settings.rejected_folder}
            if self.settings.triage_folder:
                folders.add(self.settings.triage_folder)
            for folder in sorted(folders):
                await self._ensure_folder(client, folder)
            await self._command("SELECT", client.select(_quoted(self._on_server(self.settings.folder))))
            search = await self._command("UID SEARCH", client.uid_search("ALL", charset=None))
            uids = _search_uids(search)
            for uid in uids:
                outcome = await self._handle(client, uid)
                setattr(report, outcome.value, getattr(report, outcome.value) + 1)
        finally:
            await _logout(client)
        if report.total:
            log.info(
                "mailbox poll: %d submitted, %d replies, %d triaged, %d rejected, %d skipped, %d deferred",
                report.submitted, report.corresponded, report.triaged, report.rejected, report.skipped,
                report.deferred,
            )
        return report

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every ``poll_interval`` seconds until ``stop`` is set; reconnect with backoff on errors."""
        backoff = 1.0
        while not stop.is_set():
            try:
                await self.poll_once()
                delay = self.settings.poll_interval
                backoff = 1.0
            except MailboxError as exc:
                delay = backoff * (0.5 + secrets.randbelow(1000) / 1000)  # jitter: pollers do not stampede
                log.warning("mailbox poll failed, retrying in %.0f s: %s", delay, exc)
                backoff = min(backoff * 2, self.settings.max_backoff)
            except Exception as exc:  # a bug or the ledger down: keep the poller alive, say what broke
                delay = backoff * (0.5 + secrets.randbelow(1000) / 1000)
                # The type only: messages of unexpected errors may quote data.
                log.error("mailbox poll failed unexpectedly (%s), retrying in %.0f s", type(exc).__name__, delay)
                backoff = min(backoff * 2, self.settings.max_backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    # -- one message

    async def _fetch(self, client: aioimaplib.IMAP4_SSL, uid: int, items: str) -> _Fetched | None:
        response = await self._command("UID FETCH", client.uid("fetch", str(uid), items), overall_timeout=False)
        return _parse_fetch(response.lines, uid)

    async def _handle(self, client: aioimaplib.IMAP4_SSL, uid: int) -> Outcome:
        settings = self.settings
        meta = await self._fetch(client, uid, "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER])")
        if meta is None or meta.internaldate is None:
            return Outcome.SKIPPED  # expunged meanwhile (another client)
        if meta.size is not None and meta.size > settings.max_message_bytes:
            return await self._reject(client, uid, "too_large")
        headers = email.message_from_bytes(meta.literal or b"", policy=email.policy.default)
        auto = auto_reply_reason(headers)
        if auto is not None:
            return await self._reject(client, uid, auto)
        fetched = await self._fetch(client, uid, "(UID BODY.PEEK[])")
        if fetched is None or fetched.literal is None:
            return Outcome.SKIPPED
        raw = fetched.literal
        if len(raw) > settings.max_message_bytes:
            return await self._reject(client, uid, "too_large")
        try:
            received_at = parse_internaldate(meta.internaldate).astimezone(UTC)
        except MailboxError:  # never seen from a real server; "now" is later, so never early on a deadline
            log.warning("mailbox: message uid=%d has an unreadable INTERNALDATE; using the current time", uid)
            received_at = datetime.now(UTC)
        try:  # in a thread: decoding 25 MB of base64 must not stall the intake app sharing this event loop
            message = await asyncio.wait_for(asyncio.to_thread(
                parse_message,
                raw,
                max_attachments=settings.max_attachments,
                max_attachment_bytes=settings.max_attachment_bytes,
                authserv_id=settings.authserv_id,
                max_parts=settings.max_parts,
                max_depth=settings.max_depth,
            ), settings.parse_timeout)
        except MessageTooComplex as exc:  # found by the pre-scan, before any parsing: a person looks at it
            log.warning("mailbox: message uid=%d not read (%s); sent to triage", uid, exc)
            message = unread_message(headers, f"message not read: {exc}", authserv_id=settings.authserv_id)
        except TimeoutError:
            # A shape the caps did not foresee. The thread cannot be stopped and finishes in the background,
            # but the poll goes on and nothing of the message was taken in: it goes to triage unread.
            log.warning("mailbox: message uid=%d took over %.0f s to read; sent to triage unread", uid,
                        settings.parse_timeout)
            message = unread_message(
                headers, f"message not read: reading it took over {settings.parse_timeout:.0f} s",
                authserv_id=settings.authserv_id,
            )
        except Exception:  # the stdlib parser is lenient; a crash here must not block the inbox forever
            return await self._reject(client, uid, "unparseable")
        if not is_valid_email(message.sender):
            return await self._reject(client, uid, "invalid_sender")

        key = self._inbox.key_for(message.key_id(raw), message.sender)
        row = await asyncio.to_thread(self._inbox.get, key)
        if row is None:
            request_id = new_request_id(receipt_date(received_at, settings.timezone))
            row = await asyncio.to_thread(self._inbox.reserve, key, request_id=request_id, received_at=received_at)
        if row.state == MessageState.RESERVED:
            row = await self._take_in(row, message, received_at, uid)
            if row.state == MessageState.RESERVED:
                return Outcome.DEFERRED
            fresh = True
        else:
            fresh = False  # handled by an earlier poll that did not get to move it, or delivered twice

        outcome = row.outcome or MessageState.SUBMITTED
        folder = {
            MessageState.REJECTED: settings.rejected_folder,
            MessageState.TRIAGED: settings.triage_folder or settings.processed_folder,
        }.get(outcome, settings.processed_folder)
        await self._move(client, uid, folder)
        await asyncio.to_thread(self._inbox.mark, key, MessageState.MOVED)
        if outcome == MessageState.REJECTED:
            return Outcome.REJECTED
        if not fresh:
            log.info("mailbox: message uid=%d already taken in as %s; moved", uid, row.request_id)
            return Outcome.SKIPPED
        if outcome == MessageState.TRIAGED:
            return Outcome.TRIAGED
        return Outcome.CORRESPONDED if row.reason == CORRESPONDENCE else Outcome.SUBMITTED

    async def _take_in(
        self, row: InboundMessage, message: InboundEmail, received_at: datetime, uid: int
    ) -> InboundMessage:
        """Steps 3-5 of the protocol for a reserved message; returns the row (still reserved: deferred)."""
        if row.reason is None and not row.attachments_stored and not message.unread:
            # Not decided yet (attachments stored means the normal path was taken before a crash: keep it).
            recognised = await self._recognise_reply(row, message, uid)
            if recognised is None:
                return row
            row = recognised
        if row.reason == CORRESPONDENCE and row.reference:
            return await self._correspond(row, message, received_at, uid)
        request_id = row.request_id
        if not row.attachments_stored:
            await asyncio.to_thread(self._store_attachments, request_id, message)
            await asyncio.to_thread(self._inbox.mark_attachments_stored, row.message_key)
        if message.attachments_dropped:
            log.warning(
                "mailbox: message uid=%d: %d attachment(s) over the limits not kept", uid, message.attachments_dropped
            )
        try:
            classification = self._classify(message.subject, message.body)
            kind, language_enum, reason = classification.kind, classification.language, classification.reason
        except Exception as exc:  # a classifier bug must not block the inbox: a human decides instead
            log.error("mailbox: classifier failed on message uid=%d (%s); sent to triage", uid, type(exc).__name__)
            kind, language_enum, reason = None, None, "classifier failed"
        if message.unread:
            kind, reason = None, f"{message.unread}; the email is in the mailbox's triage folder"
        if row.reason == CLOSED_REPLY:
            # Never a new request on its own, whatever it says: a person decides (the language still helps).
            kind, reason = None, f"reply about closed request {row.reference}"
        elif row.reason == FORGED_REPLY:
            kind, reason = None, f"reply about {row.reference} from a sender that failed DMARC"
        if message.sender_check.dmarc_failed:
            # The From domain publishes a DMARC policy and this message fails it: the address is likely forged.
            # A person looks before anything is asked of or sent to whoever really owns that address.
            kind = None
            if row.reason != FORGED_REPLY:
                reason = f"{reason}; " if row.reason == CLOSED_REPLY or message.unread else ""
                reason += "sender failed DMARC"
            reason += f": the From address may be forged ({message.sender_check.summary()})"
        language = language_enum.value if language_enum is not None else None
        details = _bounded(message.body, MAX_DETAILS)
        in_reply_to = message.message_id  # None for a synthetic id: there is no thread to answer in
        try:
            if kind is None:
                await self._sink.triage(
                    TriageItem(
                        request_id=request_id,
                        received_at=received_at,
                        email=message.sender,
                        name=message.name,
                        language=language_enum,
                        subject_line=message.subject,
                        body=details,
                        in_reply_to=in_reply_to,
                        reason=reason,
                    )
                )
                log.info("mailbox: message uid=%d sent to triage as %s", uid, request_id)
                return await asyncio.to_thread(self._inbox.mark, row.message_key, MessageState.TRIAGED)
            accepted = await self._sink.submit(
                Submission(
                    kind=kind.value,
                    email=message.sender,
                    name=message.name,
                    channel=Channel.EMAIL.value,
                    language=language,
                    details=details,
                    received_at=received_at,
                    in_reply_to=in_reply_to,
                    request_id=request_id,
                    trusted=False,  # a From address is a claim, not proof: identity is still checked
                )
            )
        except RateLimited:
            log.info("mailbox: message uid=%d rate limited; left in the inbox for the next poll", uid)
            return row
        except SubmissionError as exc:
            # Nothing was started (the service validates first), so the request id will never exist:
            # the stored attachments (perhaps an ID copy) have no request to be reviewed for.
            await asyncio.to_thread(self._attachments.delete_all, request_id)
            log.warning("mailbox: message uid=%d rejected by intake: %s", uid, _first_words(str(exc)))
            return await asyncio.to_thread(
                self._inbox.mark, row.message_key, MessageState.REJECTED, reason="invalid_submission"
            )
        except Exception as exc:  # engine unavailable, network: the reserved id makes the retry safe
            log.warning(
                "mailbox: message uid=%d could not be submitted (%s); left in the inbox", uid, type(exc).__name__
            )
            return row
        if accepted.reference != request_id:
            # Attached to the subject's open request of the same kind: the files belong to that one.
            await asyncio.to_thread(self._attachments.transfer, request_id, accepted.reference)
        log.info(
            "mailbox: message uid=%d %s %s",
            uid,
            "attached to" if accepted.attached else "submitted as",
            accepted.reference,
        )
        return await asyncio.to_thread(
            self._inbox.mark, row.message_key, MessageState.SUBMITTED, reference=accepted.reference
        )

    async def _recognise_reply(self, row: InboundMessage, message: InboundEmail, uid: int) -> InboundMessage | None:
        """Decide, durably, whether the message answers a request of its sender's; None: try again next poll."""
        if self._replies is None:
            return row
        try:
            found = await self._replies.find_replied_request(message.sender, message.subject, message.thread_ids)
        except Exception as exc:  # the ledger unreachable: deciding wrongly would misfile an ID copy
            log.warning(
                "mailbox: message uid=%d: could not check whether it answers a request (%s); left in the inbox",
                uid, type(exc).__name__,
            )
            return None
        if found is None:
            return row
        if found.closed:
            reason = CLOSED_REPLY
        elif message.sender_check.dmarc_failed:
            # Whoever forged the subject's address must not add files to their request: triage, never the request.
            reason = FORGED_REPLY
        else:
            reason = CORRESPONDENCE
        return await asyncio.to_thread(
            self._inbox.mark, row.message_key, MessageState.RESERVED, reason=reason, reference=found.request_id
        )

    async def _correspond(
        self, row: InboundMessage, message: InboundEmail, received_at: datetime, uid: int
    ) -> InboundMessage:
        """Steps 3'-5 for a reply about an open request: its files under the request, then the update."""
        assert self._replies is not None and row.reference is not None
        target, key = row.reference, row.message_key
        try:
            if not row.attachments_stored:
                await asyncio.to_thread(self._store_reply_attachments, target, key, message)
                await asyncio.to_thread(self._inbox.mark_attachments_stored, key)
            if message.attachments_dropped:
                log.warning("mailbox: message uid=%d: %d attachment(s) over the limits not kept", uid,
                            message.attachments_dropped)
            kept = len(await asyncio.to_thread(self._attachments.parts_from, target, key))
            await self._replies.record_correspondence(target, Correspondence(
                message_key=key, received_at=received_at, attachments=kept, message_id=message.message_id,
                sender_check=message.sender_check.summary(),
            ))
        except RequestClosed:
            # Closed since the ledger was read: the files leave the closed request with the message, and the
            # message goes to triage like any reply about a closed request (the move is safe to repeat).
            await asyncio.to_thread(self._attachments.move_from, target, row.request_id, key)
            row = await asyncio.to_thread(self._inbox.mark, key, MessageState.RESERVED, reason=CLOSED_REPLY)
            return await self._take_in(row, message, received_at, uid)
        except Exception as exc:  # engine unavailable, a disk error: the message key makes the retry safe
            log.warning(
                "mailbox: message uid=%d could not be recorded on %s (%s); left in the inbox",
                uid, target, type(exc).__name__,
            )
            return row
        log.info("mailbox: message uid=%d recorded as correspondence on %s (%d attachment(s))", uid, target, kept)
        return await asyncio.to_thread(self._inbox.mark, key, MessageState.SUBMITTED)

    def _store_reply_attachments(self, request_id: str, source: str, message: InboundEmail) -> None:
        # Never cleared first (the request has files of its own): parts already stored by an attempt that
        # died half-way are skipped instead.
        stored = self._attachments.parts_from(request_id, source)
        for part, attachment in enumerate(message.attachments, start=1):
            if part in stored:
                continue
            try:
                self._attachments.save(request_id, attachment.filename, attachment.content_type, attachment.data,
                                       source=source, part=part, sender_check=message.sender_check.summary())
            except AttachmentLimitError:
                log.warning("mailbox: an attachment of request %s is over the store's limits; not kept", request_id)

    def _store_attachments(self, request_id: str, message: InboundEmail) -> None:
        # Clear first: an earlier attempt may have died half-way (before attachments_stored was recorded).
        self._attachments.delete_all(request_id)
        for attachment in message.attachments:
            try:
                self._attachments.save(request_id, attachment.filename, attachment.content_type, attachment.data,
                                       sender_check=message.sender_check.summary())
            except AttachmentLimitError:
                log.warning("mailbox: an attachment of request %s is over the store's limits; not kept", request_id)

    async def _reject(self, client: aioimaplib.IMAP4_SSL, uid: int, reason: str) -> Outcome:
        log.warning("mailbox: message uid=%d rejected (%s); moved to %s", uid, reason, self.settings.rejected_folder)
        await self._move(client, uid, self.settings.rejected_folder)
        return Outcome.REJECTED

    async def _move(self, client: aioimaplib.IMAP4_SSL, uid: int, folder: str) -> None:
        target = _quoted(self._on_server(folder))
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


# --- small helpers -----------------------------------------------------------------------------------


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


def _first_words(text: str) -> str:
    # SubmissionError messages name the field and the rule, never the value (intake.submission).
    return " ".join(text.split())[:120]


def _abort(client: aioimaplib.IMAP4_SSL) -> None:
    transport = getattr(client.protocol, "transport", None)
    if transport is not None:
        transport.close()


async def _logout(client: aioimaplib.IMAP4_SSL) -> None:
    try:
        if client.get_state() in ("AUTH", "SELECTED"):
            await client.logout()
    except (OSError, TimeoutError, aioimaplib.AioImapException):
        pass
    finally:
        _abort(client)
