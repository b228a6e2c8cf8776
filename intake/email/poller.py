"""Email intake: requests sent to the privacy address, read from an IMAP mailbox over TLS.

:class:`Mailbox` polls one folder (``INBOX``) over IMAPS (implicit TLS, certificates always verified) and
hands every message to an :class:`~intake.service.IntakeSink`: a request when the classifier recognises the
kind, the operators' triage when it does not (never a guess). The sender's address is the subject's
*claimed* address, never proof of identity: submissions are not ``trusted``, so identity is checked as for
any other channel. The receipt instant is the message's IMAP INTERNALDATE -- when our server received it,
which is what starts the Art. 12(3) clock -- not the sender-controlled ``Date`` header.

One poll: connect (:mod:`intake.email.imap`), and for each message of the inbox read its headers, then its
bytes, decode it (:mod:`intake.email.mime`), take it in exactly once (:mod:`intake.email.taking_in`: the
state machine, in the ledger's database), then move it to the processed, triage or rejected folder and
record the move. A crash at any point is resumed by the next poll, on any machine.

Rejections
----------
Mail that cannot become a request is moved to the rejected folder and logged in one line without personal
data, so it never loops and is never silently dropped: automatic replies and bounces (``Auto-Submitted``
other than ``no``, ``Precedence: bulk/junk/list``, ``X-Autoreply``, MAILER-DAEMON, ``Return-Path: <>``,
delivery reports) -- never acknowledged, which would start a mail loop --, a sender that is not a valid
address, a message over the size limit, and anything the service refuses with ``SubmissionError``.
``RateLimited`` and an unavailable engine leave the message in the inbox for the next poll.

Logs name IMAP UIDs, request ids and reason codes only: never addresses, names, subjects or bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import logging
import secrets
from datetime import UTC, datetime

import aioimaplib
from sqlalchemy import Engine

from dsr.domain.model import is_valid_email
from dsr.store.attachments import AttachmentStore
from dsr.store.crypto import KeyRing
from dsr.store.inbox import Inbox, MessageState
from intake.email.imap import ImapSession, connect, parse_internaldate
from intake.email.mime import auto_reply_reason, parse_message, unread_message
from intake.email.mimescan import MessageTooComplex
from intake.email.settings import MailboxError, MailboxSettings, Outcome, PollReport
from intake.email.taking_in import Classifier, MessageIntake
from intake.service import IntakeSink

log = logging.getLogger("dsr.intake.mailbox")


class Mailbox:
    """Polls the privacy mailbox and turns each message into a request, exactly once.

    ``engine`` is the ledger's SQLAlchemy engine (``Ledger.engine``): the ``inbound_messages`` table is
    created there. ``classifier`` defaults to :func:`intake.email.classify.classify`.
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
        self._intake = MessageIntake(sink, inbox=Inbox(engine, keyring), attachments=attachments,
                                     classifier=classifier, timezone=settings.timezone)

    async def _connect(self) -> aioimaplib.IMAP4_SSL:
        return await connect(self.settings)

    async def poll_once(self) -> PollReport:
        """Connect, handle every message of the inbox folder, disconnect."""
        report = PollReport()
        session = ImapSession(await self._connect(), timeout=self.settings.timeout)
        try:
            await session.learn_delimiter()
            folders = {self.settings.processed_folder, self.settings.rejected_folder}
            if self.settings.triage_folder:
                folders.add(self.settings.triage_folder)
            for folder in sorted(folders):
                await session.ensure_folder(folder)
            await session.select(self.settings.folder)
            for uid in await session.uids():
                outcome = await self._handle(session, uid)
                setattr(report, outcome.value, getattr(report, outcome.value) + 1)
        finally:
            await session.logout()
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

    async def _handle(self, session: ImapSession, uid: int) -> Outcome:
        settings = self.settings
        meta = await session.fetch(uid, "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER])")
        if meta is None or meta.internaldate is None:
            return Outcome.SKIPPED  # expunged meanwhile (another client)
        if meta.size is not None and meta.size > settings.max_message_bytes:
            return await self._reject(session, uid, "too_large")
        headers = email.message_from_bytes(meta.literal or b"", policy=email.policy.default)
        auto = auto_reply_reason(headers)
        if auto is not None:
            return await self._reject(session, uid, auto)
        fetched = await session.fetch(uid, "(UID BODY.PEEK[])")
        if fetched is None or fetched.literal is None:
            return Outcome.SKIPPED
        raw = fetched.literal
        if len(raw) > settings.max_message_bytes:
            return await self._reject(session, uid, "too_large")
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
            return await self._reject(session, uid, "unparseable")
        if not is_valid_email(message.sender):
            return await self._reject(session, uid, "invalid_sender")

        taken = await self._intake.take_in(message, raw, received_at, uid)
        if taken.done is None:
            return Outcome.DEFERRED
        folder = {
            MessageState.REJECTED: settings.rejected_folder,
            MessageState.TRIAGED: settings.triage_folder or settings.processed_folder,
        }.get(taken.done, settings.processed_folder)
        await self._move(session, uid, folder)
        await self._intake.moved(taken.key)
        if taken.outcome == Outcome.SKIPPED:
            log.info("mailbox: message uid=%d already taken in as %s; moved", uid, taken.request_id)
        return taken.outcome

    async def _reject(self, session: ImapSession, uid: int, reason: str) -> Outcome:
        log.warning("mailbox: message uid=%d rejected (%s); moved to %s", uid, reason, self.settings.rejected_folder)
        await self._move(session, uid, self.settings.rejected_folder)
        return Outcome.REJECTED

    async def _move(self, session: ImapSession, uid: int, folder: str) -> None:
        await session.move(uid, folder)
