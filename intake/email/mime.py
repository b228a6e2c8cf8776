"""Reading one email: MIME structure, transfer encodings, charsets, RFC 2047 words, HTML bodies made text.

:func:`parse_message` decodes a raw RFC 5322 message into an :class:`InboundEmail` (sender, subject, body
text, attachments within the limits, the Message-IDs it answers, what our mail server said of the sender),
after :func:`~intake.email.mimescan.check_mime_caps` has measured its shape; :func:`unread_message` is a
message known by its headers only (over the caps: for triage); :func:`auto_reply_reason` recognises the
automatic replies and bounces that must never be answered. Pure functions of bytes: no I/O, no Temporal.
Everything they return is personal data: never log it.
"""

from __future__ import annotations

import contextlib
import email
import email.header
import email.policy
import email.utils
import hashlib
import mimetypes
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage, Message, MIMEPart
from html.parser import HTMLParser
from typing import Any

from dsr.domain.model import display_name
from dsr.store.attachments import safe_filename as _safe_filename
from intake.email.authresults import UNCHECKED, SenderCheck, sender_check
from intake.email.mimescan import MAX_DEPTH, MAX_PARTS, check_mime_caps
from intake.submission import MAX_NAME

MAX_SUBJECT = 1_000


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

    Raises :class:`~intake.email.mimescan.MessageTooComplex` (before any parsing) over ``max_parts`` parts or
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


def _body_part(message: EmailMessage) -> MIMEPart | None:
    try:
        found = message.get_body(preferencelist=("plain", "html"))
    except Exception:
        found = None
    if found is not None:
        return found
    if not message.is_multipart() and message.get_content_maintype() == "text":
        return message
    return None


def _attachment_parts(message: EmailMessage, body_part: MIMEPart | None) -> Iterable[EmailMessage]:
    """Every leaf that is a file: named or declared attachment, or any non-text part (an inline scan)."""
    for part in message.walk():
        if part is body_part or part.is_multipart() or part.get_content_maintype() == "message":
            continue
        disposition = (part.get_content_disposition() or "").lower()
        named = _filename(part) is not None
        if disposition == "attachment" or named or part.get_content_maintype() != "text":
            yield part


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
