"""What the mailbox poller is told (:class:`MailboxSettings`) and what it tells back: a :class:`PollReport` of
counts, an :class:`Outcome` per message, and :class:`MailboxError` when the mailbox cannot be polled."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from dsr.errors import UnavailableError
from intake.email.mimescan import MAX_DEPTH, MAX_PARTS


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


class MailboxError(UnavailableError):
    """The mailbox could not be polled; the message says why (host and port, never mail content)."""


class MailboxConnectionError(MailboxError):
    """Connecting, TLS or login failed, or the connection broke: retried with backoff by :meth:`Mailbox.run`."""


class Outcome(StrEnum):
    """What became of one message in a poll; each is a counter of :class:`PollReport`."""

    CORRESPONDED = "corresponded"
    SUBMITTED = "submitted"
    TRIAGED = "triaged"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    DEFERRED = "deferred"
