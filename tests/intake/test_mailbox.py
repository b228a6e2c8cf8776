"""Email intake against a real Dovecot over IMAPS (tests/dovecot.py), with a real ledger database.

The sink is the unit's neighbour, so it is a recording fake of ``IntakeSink``: it validates with the real
``intake.submission.prepare`` and, like ``IntakeService``, is idempotent by request id (a second submit
with the same id answers with the same request). The classifier is the real ``intake.email.classify.classify``
except where a test is about decoding and passes a small deterministic one.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aioimaplib
import pytest
from sqlalchemy import select
from sqlmodel import Session

from dsr.config.settings import Settings
from dsr.domain.model import Correspondence, Language, RequestKind
from dsr.store import FileStore, store_at
from dsr.store.attachments import AttachmentInfo, AttachmentLimitError, AttachmentStore
from dsr.store.crypto import DecryptionError
from dsr.store.inbox import InboundMessageRow, MessageState
from dsr.store.ledger import Ledger
from intake.email.classify import Classification
from intake.email.imap import parse_internaldate
from intake.email.mime import auto_reply_reason, html_to_text, parse_message
from intake.email.poller import Mailbox
from intake.email.settings import MailboxConnectionError, MailboxSettings, PollReport
from intake.service import Accepted, RateLimited, RepliedRequest, RequestClosed, TriageItem, reply_clues
from intake.submission import Submission, prepare
from tests.dovecot import CertificateAuthority, Dovecot, ImapUser, dovecot_binary, dovecot_required
from tests.harness import TEST_KEYRING

PARIS = timezone(timedelta(hours=1))
RECEIVED = datetime(2026, 3, 2, 9, 30, 15, tzinfo=PARIS)  # what INTERNALDATE says: our server's receipt
SENT = datetime(2026, 2, 27, 18, 0, tzinfo=UTC)  # the sender's Date header: not the legal receipt
REQUEST_ID = re.compile(r"dsr-\d{4}-\d{2}-[0-9A-Z]{6}")


# --- the server ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    binary = dovecot_binary()
    if binary is None:
        if dovecot_required():
            pytest.fail("DSR_REQUIRE_DOVECOT is set but dovecot is not installed: run scripts/ensure-dovecot")
        pytest.skip("dovecot is not installed (scripts/ensure-dovecot installs it; DSR_REQUIRE_DOVECOT=1 fails)")
    server = Dovecot(binary)
    atexit.register(server.stop)  # should the session be torn down abruptly
    try:
        server.start()
    except Exception:
        server.stop()
        raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def user(dovecot: Dovecot) -> ImapUser:
    return dovecot.new_user()


# --- the neighbours ------------------------------------------------------------------------------------


@dataclass
class RecordingSink:
    """``IntakeSink`` that records, validates like the service, and is idempotent by request id."""

    home: Path
    requests: dict[str, Submission] = field(default_factory=dict)
    submit_calls: list[str] = field(default_factory=list)
    triaged: dict[str, TriageItem] = field(default_factory=dict)
    triage_calls: list[str] = field(default_factory=list)
    crash_after_start: int = 0  # the next N submits start the request, then fail (the answer is lost)
    rate_limited: int = 0  # the next N submits are refused with RateLimited
    block: asyncio.Event | None = None  # submits start the request, then wait on this (to be cancelled)
    open_request: str | None = None  # the subject has this request open: submissions are attached to it
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def submit(self, submission: Submission, *, client: str | None = None) -> Accepted:
        self.submit_calls.append(submission.request_id or "")
        if self.rate_limited:
            self.rate_limited -= 1
            raise RateLimited("subject", 3600)
        request = prepare(submission, Settings(home=self.home, database_url="sqlite://"))
        if self.open_request is not None:
            return Accepted(
                reference=self.open_request,
                kind=request.kind,
                received_on=request.received_on,
                deadline=request.deadlines.normal.due,
                extended_deadline=request.deadlines.extended.due,
                attached=True,
            )
        self.requests.setdefault(request.request_id, submission)  # a second start with the id: same request
        self.started.set()
        if self.block is not None:
            await self.block.wait()
        if self.crash_after_start:
            self.crash_after_start -= 1
            raise ConnectionResetError("worker lost the answer")
        return Accepted(
            reference=request.request_id,
            kind=request.kind,
            received_on=request.received_on,
            deadline=request.deadlines.normal.due,
            extended_deadline=request.deadlines.extended.due,
        )

    async def triage(self, item: TriageItem) -> str:
        self.triage_calls.append(item.request_id)
        self.triaged.setdefault(item.request_id, item)
        return f"triage-{item.request_id}"


@dataclass
class ReplyAwareSink(RecordingSink):
    """Also a ``ReplySink``: ``request`` is open (or closed) for ``subject_email``; the update is recorded by
    message key, like the workflow. ``closed_on_update``/``unavailable`` script the service's answers."""

    subject_email: str = "jerome.lefevre@example.org"
    request: RepliedRequest | None = None
    lookups: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    lookup_failures: int = 0
    updates: list[str] = field(default_factory=list)  # message keys, in call order
    recorded: dict[str, Correspondence] = field(default_factory=dict)
    closed_on_update: bool = False
    unavailable: int = 0

    async def find_replied_request(self, sender: str, subject_line: str, thread_ids: Any) -> RepliedRequest | None:
        self.lookups.append((sender, subject_line, tuple(thread_ids)))
        if self.lookup_failures:
            self.lookup_failures -= 1
            raise ConnectionRefusedError("ledger down")
        return self.request if sender.lower() == self.subject_email else None

    async def record_correspondence(self, request_id: str, correspondence: Correspondence) -> None:
        self.updates.append(correspondence.message_key)
        if self.closed_on_update:
            raise RequestClosed(f"reply about closed request {request_id}")
        if self.unavailable:
            self.unavailable -= 1
            raise ConnectionResetError("engine unavailable")
        self.recorded.setdefault(correspondence.message_key, correspondence)


OPEN_REQUEST = "dsr-2026-02-7KQ3FJ"


def fixed(kind: RequestKind | None, language: Language | None = Language.FR) -> Callable[[str, str], Any]:
    """A deterministic classifier that also remembers what it was shown (to check decoding)."""
    seen: list[tuple[str, str]] = []

    def classify(subject: str, body: str) -> Classification:
        seen.append((subject, body))
        return Classification(kind=kind, language=language, confidence=1.0, reason="fixed")

    classify.seen = seen  # type: ignore[attr-defined]
    return classify


class SimulatedCrash(BaseException):
    """The process dies: nothing in the poller may catch it (BaseException, like a kill or KeyboardInterrupt)."""


@dataclass
class MailIntake:
    dovecot: Dovecot
    user: ImapUser
    tmp: Path
    ledger: Ledger
    sink: RecordingSink
    store: AttachmentStore

    def settings(self, **overrides: Any) -> MailboxSettings:
        values: dict[str, Any] = {
            "host": self.dovecot.host,
            "port": self.dovecot.port,
            "username": self.user.username,
            "password": self.user.password,
            "cafile": self.dovecot.cafile,
            "timeout": 15.0,
        }
        values.update(overrides)
        return MailboxSettings(**values)

    def mailbox(self, classifier: Callable[[str, str], Any] | None = None, **overrides: Any) -> Mailbox:
        return Mailbox(
            self.settings(**overrides),
            self.sink,
            engine=self.ledger.engine,
            keyring=TEST_KEYRING,
            attachments=self.store,
            classifier=classifier,
        )

    def deliver(self, message: EmailMessage | bytes, received_at: datetime = RECEIVED) -> None:
        raw = message if isinstance(message, bytes) else message.as_bytes()
        self.dovecot.deliver(self.user, raw, received_at=received_at)

    def count(self, folder: str) -> int:
        return self.dovecot.count(self.user, folder)

    def rows(self) -> list[InboundMessageRow]:
        with Session(self.ledger.engine) as session:
            return list(session.exec(select(InboundMessageRow)).scalars())  # type: ignore[call-overload]


@pytest.fixture
def mail_intake(dovecot: Dovecot, user: ImapUser, tmp_path: Path) -> Iterator[MailIntake]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", TEST_KEYRING)
    try:
        yield MailIntake(
            dovecot=dovecot,
            user=user,
            tmp=tmp_path,
            ledger=ledger,
            sink=RecordingSink(home=tmp_path),
            store=AttachmentStore(FileStore(tmp_path / "storage"), TEST_KEYRING),
        )
    finally:
        ledger.close()


# --- messages ------------------------------------------------------------------------------------------

_counter = 0


def message(
    subject: str,
    body: str,
    *,
    sender: str = "jerome.lefevre@example.org",
    name: str = "Jérôme Lefèvre",
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    global _counter
    _counter += 1
    msg = EmailMessage()
    msg["From"] = f"{name} <{sender}>" if name else sender
    msg["To"] = "privacy@example.com"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(SENT)
    msg["Message-ID"] = message_id or f"<test-{_counter}.{os.getpid()}@mail.example.org>"
    for key, value in (headers or {}).items():
        msg[key] = value
    msg.set_content(body)
    return msg


FRENCH_ERASURE = (
    "Suppression de mes données",
    "Bonjour,\n\nJe vous demande de supprimer toutes mes données personnelles de vos fichiers, "
    "conformément à l'article 17 du RGPD.\n\nCordialement,\nJérôme Lefèvre",
)
ENGLISH_ACCESS = (
    "Subject access request",
    "Hello,\n\nPlease send me a copy of all the personal data you hold about me, under Article 15 of the "
    "GDPR.\n\nKind regards,\nJane Doe",
)


# --- through Dovecot -----------------------------------------------------------------------------------


async def test_french_and_english_requests_become_submissions(
    mail_intake: MailIntake, caplog: pytest.LogCaptureFixture,
) -> None:
    french = message(*FRENCH_ERASURE)
    english = message(*ENGLISH_ACCESS, sender="jane.doe@example.net", name="Jane Doe")
    mail_intake.deliver(french)
    mail_intake.deliver(english, received_at=RECEIVED + timedelta(minutes=3))

    with caplog.at_level(logging.DEBUG):  # every logger, aioimaplib's protocol dump included
        report = await mail_intake.mailbox().poll_once()  # the real classifier
    _assert_no_personal_data(caplog, "jerome", "Jérôme", "jane.doe", "Jane Doe", "Suppression", "access request",
                             "supprimer", french["Message-ID"].strip("<>"), mail_intake.user.password)

    assert report == PollReport(submitted=2)
    by_sender = {s.email: s for s in mail_intake.sink.requests.values()}
    fr, en = by_sender["jerome.lefevre@example.org"], by_sender["jane.doe@example.net"]
    assert (fr.kind, fr.language, fr.channel) == ("erasure", "fr", "email")
    assert (en.kind, en.language, en.channel) == ("access", "en", "email")
    assert fr.received_at == RECEIVED and en.received_at == RECEIVED + timedelta(minutes=3)  # INTERNALDATE
    assert fr.in_reply_to == french["Message-ID"] and en.in_reply_to == english["Message-ID"]
    assert fr.name == "Jérôme Lefèvre" and en.name == "Jane Doe"
    assert "supprimer toutes mes données" in fr.details
    assert not fr.trusted and not en.trusted  # a From address is a claim: identity is still checked
    for request_id, submission in mail_intake.sink.requests.items():
        assert REQUEST_ID.fullmatch(request_id) and submission.request_id == request_id
        assert request_id.startswith("dsr-2026-03-")  # reserved from the receipt date
    assert mail_intake.count("INBOX") == 0 and mail_intake.count("Processed") == 2

    rows = mail_intake.rows()
    assert {r.state for r in rows} == {"moved"} and {r.outcome for r in rows} == {"submitted"}
    assert {r.request_id for r in rows} == set(mail_intake.sink.requests)
    for row in rows:  # the key is a keyed hash: neither the Message-ID nor the address is stored
        assert "example" not in row.message_key and len(row.message_key) == 64

    again = await mail_intake.mailbox().poll_once()
    assert again == PollReport()
    assert len(mail_intake.sink.submit_calls) == 2


async def test_unclassifiable_message_goes_to_triage_never_a_guess(mail_intake: MailIntake) -> None:
    msg = message("Question", "Hello, where is my parcel? Order 1234 has not arrived yet. Thanks",
                  sender="sam@example.org", name="Sam")
    mail_intake.deliver(msg)

    report = await mail_intake.mailbox().poll_once()

    assert report == PollReport(triaged=1)
    assert mail_intake.sink.requests == {}
    (item,) = mail_intake.sink.triaged.values()
    assert REQUEST_ID.fullmatch(item.request_id)
    assert (item.email, item.name, item.language) == ("sam@example.org", "Sam", Language.EN)
    assert item.subject_line == "Question" and "parcel" in item.body
    assert item.received_at == RECEIVED and item.in_reply_to == msg["Message-ID"]
    assert item.reason  # why, without personal data
    assert mail_intake.count("INBOX") == 0 and mail_intake.count("Processed") == 1
    assert (await mail_intake.mailbox().poll_once()) == PollReport()
    assert len(mail_intake.sink.triage_calls) == 1


async def test_triage_folder_when_configured(mail_intake: MailIntake) -> None:
    mail_intake.deliver(message("Hello", "Hi"))
    report = await mail_intake.mailbox(triage_folder="Triage").poll_once()
    assert report == PollReport(triaged=1)
    assert mail_intake.count("Triage") == 1 and mail_intake.count("Processed") == 0


async def test_nested_folder_names_follow_the_servers_delimiter(mail_intake: MailIntake) -> None:
    mail_intake.deliver(message(*ENGLISH_ACCESS))
    mail_intake.deliver(message(*FRENCH_ERASURE, headers={"Auto-Submitted": "auto-replied"}))
    mailbox = mail_intake.mailbox(processed_folder="DSR/Processed", rejected_folder="DSR/Rejected")
    assert (await mailbox.poll_once()) == PollReport(submitted=1, rejected=1)
    # This Dovecot stores maildir++, whose hierarchy delimiter is ".".
    assert mail_intake.count("DSR.Processed") == 1 and mail_intake.count("DSR.Rejected") == 1
    assert mail_intake.count("INBOX") == 0


async def test_crash_after_the_workflow_started_but_before_the_answer(mail_intake: MailIntake) -> None:
    mail_intake.deliver(message(*ENGLISH_ACCESS))
    mail_intake.sink.crash_after_start = 1

    first = await mail_intake.mailbox().poll_once()

    assert first == PollReport(deferred=1)
    assert mail_intake.count("INBOX") == 1  # not moved: the next poll retries
    (row,) = mail_intake.rows()
    assert row.state == "reserved"

    second = await mail_intake.mailbox().poll_once()

    assert second == PollReport(submitted=1)
    assert mail_intake.sink.submit_calls == [row.request_id, row.request_id]  # the same reserved id, twice
    assert list(mail_intake.sink.requests) == [row.request_id]  # hence exactly one request
    assert mail_intake.count("INBOX") == 0 and mail_intake.count("Processed") == 1


async def test_killed_between_submit_and_move(mail_intake: MailIntake, monkeypatch: pytest.MonkeyPatch) -> None:
    mail_intake.deliver(message(*FRENCH_ERASURE))
    original_move = Mailbox._move

    async def die(self: Mailbox, client: Any, uid: int, folder: str) -> None:
        raise SimulatedCrash

    monkeypatch.setattr(Mailbox, "_move", die)
    with pytest.raises(SimulatedCrash):
        await mail_intake.mailbox().poll_once()
    (row,) = mail_intake.rows()
    assert row.state == "submitted" and mail_intake.count("INBOX") == 1

    monkeypatch.setattr(Mailbox, "_move", original_move)
    report = await mail_intake.mailbox().poll_once()  # a new process: nothing in memory survives

    assert report == PollReport(skipped=1)
    assert mail_intake.sink.submit_calls == [row.request_id]  # not submitted again
    assert list(mail_intake.sink.requests) == [row.request_id]
    assert mail_intake.count("INBOX") == 0 and mail_intake.count("Processed") == 1
    (row,) = mail_intake.rows()
    assert (row.state, row.outcome) == ("moved", "submitted")


async def test_poll_cancelled_while_the_request_starts(mail_intake: MailIntake) -> None:
    mail_intake.deliver(message(*ENGLISH_ACCESS))
    mail_intake.sink.block = asyncio.Event()
    poll = asyncio.ensure_future(mail_intake.mailbox().poll_once())
    await asyncio.wait_for(mail_intake.sink.started.wait(), 20)
    poll.cancel()  # stopped (SIGTERM, deploy) while the service was starting the workflow
    with pytest.raises(asyncio.CancelledError):
        await poll
    mail_intake.sink.block = None

    report = await mail_intake.mailbox().poll_once()

    assert report == PollReport(submitted=1)
    assert len(mail_intake.sink.submit_calls) == 2 and len(set(mail_intake.sink.submit_calls)) == 1
    assert len(mail_intake.sink.requests) == 1
    assert mail_intake.count("INBOX") == 0


async def test_same_message_delivered_twice_is_one_request(mail_intake: MailIntake) -> None:
    msg = message(*ENGLISH_ACCESS)
    mail_intake.deliver(msg)
    mail_intake.deliver(msg, received_at=RECEIVED + timedelta(seconds=5))  # e.g. two aliases of the privacy address

    report = await mail_intake.mailbox().poll_once()

    assert report == PollReport(submitted=1, skipped=1)
    assert len(mail_intake.sink.requests) == 1 and len(mail_intake.sink.submit_calls) == 1
    assert mail_intake.count("Processed") == 2


async def test_message_without_message_id_gets_a_synthetic_one(mail_intake: MailIntake) -> None:
    msg = message(*ENGLISH_ACCESS)
    del msg["Message-ID"]
    mail_intake.deliver(msg)
    mail_intake.sink.crash_after_start = 1
    assert (await mail_intake.mailbox().poll_once()) == PollReport(deferred=1)
    assert (await mail_intake.mailbox().poll_once()) == PollReport(submitted=1)
    (submission,) = mail_intake.sink.requests.values()
    assert submission.in_reply_to is None  # nothing to thread under
    assert len(set(mail_intake.sink.submit_calls)) == 1


@pytest.mark.parametrize(
    "headers, sender",
    [
        ({"Auto-Submitted": "auto-replied"}, "jerome.lefevre@example.org"),
        ({"Precedence": "bulk"}, "jerome.lefevre@example.org"),
        ({"X-Autoreply": "yes"}, "jerome.lefevre@example.org"),
        ({"Return-Path": "<>"}, "jerome.lefevre@example.org"),
        ({}, "MAILER-DAEMON@mx.example.org"),
    ],
    ids=["auto-submitted", "precedence", "x-autoreply", "null-return-path", "mailer-daemon"],
)
async def test_automatic_replies_are_rejected_never_acknowledged(
    mail_intake: MailIntake, headers: dict[str, str], sender: str, caplog: pytest.LogCaptureFixture
) -> None:
    mail_intake.deliver(message("Absence du bureau : Suppression de mes données", FRENCH_ERASURE[1],
                        sender=sender, headers=headers))
    with caplog.at_level(logging.INFO, logger="dsr.intake.mailbox"):
        report = await mail_intake.mailbox().poll_once()
    assert report == PollReport(rejected=1)
    assert mail_intake.sink.submit_calls == [] and mail_intake.sink.triage_calls == []
    assert mail_intake.count("INBOX") == 0 and mail_intake.count("Rejected") == 1
    assert (await mail_intake.mailbox().poll_once()) == PollReport()  # no loop
    _assert_no_personal_data(caplog, sender)


async def test_a_human_saying_auto_submitted_no_is_accepted(mail_intake: MailIntake) -> None:
    mail_intake.deliver(message(*ENGLISH_ACCESS, headers={"Auto-Submitted": "no"}))
    assert (await mail_intake.mailbox().poll_once()) == PollReport(submitted=1)


async def test_delivery_report_is_rejected(mail_intake: MailIntake) -> None:
    raw = (
        b"From: Mail Delivery System <mailer-daemon@mx.example.org>\r\n"
        b"To: privacy@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        b"Message-ID: <bounce-1@mx.example.org>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain\r\n\r\nThis is the mail system. Please delete my data.\r\n"
        b"--b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n"
        b"Final-Recipient: rfc822; someone@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b1--\r\n"
    )
    mail_intake.deliver(raw)
    assert (await mail_intake.mailbox().poll_once()) == PollReport(rejected=1)
    assert mail_intake.count("Rejected") == 1


async def test_invalid_sender_is_rejected_with_one_log_line(
    mail_intake: MailIntake, caplog: pytest.LogCaptureFixture,
) -> None:
    mail_intake.deliver(message(*ENGLISH_ACCESS, sender="jane@localhost", name="Jane Doe"))
    ok = message(*ENGLISH_ACCESS, sender="jane.doe@example.net", name="Jane Doe")
    mail_intake.deliver(ok)
    with caplog.at_level(logging.INFO, logger="dsr.intake.mailbox"):
        report = await mail_intake.mailbox().poll_once()
    assert report == PollReport(submitted=1, rejected=1)  # one bad message does not block the next
    assert mail_intake.count("Rejected") == 1 and mail_intake.count("Processed") == 1
    rejected = [r for r in caplog.records if "message uid" in r.getMessage() and "rejected" in r.getMessage()]
    assert len(rejected) == 1 and "invalid_sender" in rejected[0].getMessage()
    _assert_no_personal_data(caplog, "jane@localhost", "Jane Doe", "Subject access request")


async def test_submission_error_from_the_service_is_rejected_and_its_files_deleted(mail_intake: MailIntake) -> None:
    # A rectification with no text at all: the service's validation refuses it (SubmissionError).
    msg = message("Rectification", "", sender="jane.doe@example.net")
    msg.add_attachment(b"%PDF-1.4 identity card", maintype="application", subtype="pdf", filename="id.pdf")
    mail_intake.deliver(msg)

    report = await mail_intake.mailbox(classifier=fixed(RequestKind.RECTIFICATION)).poll_once()

    assert report == PollReport(rejected=1)
    assert mail_intake.sink.requests == {}
    (row,) = mail_intake.rows()
    assert (row.state, row.outcome, row.reason) == ("moved", "rejected", "invalid_submission")
    assert mail_intake.store.list(row.request_id) == []  # no request will ever review the ID copy
    assert mail_intake.count("Rejected") == 1
    assert (await mail_intake.mailbox(classifier=fixed(RequestKind.RECTIFICATION)).poll_once()) == PollReport()


async def test_rate_limited_message_stays_for_the_next_poll(mail_intake: MailIntake) -> None:
    mail_intake.deliver(message(*ENGLISH_ACCESS))
    mail_intake.sink.rate_limited = 1
    assert (await mail_intake.mailbox().poll_once()) == PollReport(deferred=1)
    assert mail_intake.count("INBOX") == 1
    assert (await mail_intake.mailbox().poll_once()) == PollReport(submitted=1)
    assert len(set(mail_intake.sink.submit_calls)) == 1 and len(mail_intake.sink.requests) == 1


async def test_id_document_attachment_is_stored_encrypted(mail_intake: MailIntake) -> None:
    scan = b"\xff\xd8\xff\xe0JFIF PASSPORT-NUMBER-12AB34567 " + os.urandom(2048)
    msg = message(*ENGLISH_ACCESS)
    msg.add_attachment(scan, maintype="image", subtype="jpeg", filename="passeport Jérôme.jpg")
    mail_intake.deliver(msg)

    assert (await mail_intake.mailbox().poll_once()) == PollReport(submitted=1)

    (request_id,) = mail_intake.sink.requests
    assert mail_intake.store.list(request_id) == [AttachmentInfo(1, "passeport Jérôme.jpg", "image/jpeg", len(scan),
                                                         "sender not checked (DSR_MAIL_AUTHSERV_ID is not set)")]
    assert mail_intake.store.read(request_id, 1) == scan
    directory = mail_intake.tmp / "storage" / "attachments" / request_id
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        on_disk = path.read_bytes()
        assert b"PASSPORT-NUMBER" not in on_disk and b"passeport" not in on_disk
        assert scan[:64] not in on_disk
    # Bound to its request and index: a file copied under another request does not open.
    other = mail_intake.tmp / "storage" / "attachments" / "dsr-2026-03-ZZZZZZ"
    other.mkdir(mode=0o700)
    for path in directory.iterdir():
        (other / path.name).write_bytes(path.read_bytes())
    with pytest.raises(DecryptionError):
        mail_intake.store.read("dsr-2026-03-ZZZZZZ", 1)

    assert mail_intake.store.delete_all(request_id) == 1  # once identity is confirmed
    assert mail_intake.store.list(request_id) == [] and not directory.exists()
    assert (await mail_intake.mailbox().poll_once()) == PollReport()  # never re-stored


async def test_message_attached_to_an_open_request_brings_its_files(mail_intake: MailIntake) -> None:
    mail_intake.sink.open_request = "dsr-2026-02-OPEN01"
    msg = message(*ENGLISH_ACCESS)
    msg.add_attachment(b"%PDF id card", maintype="application", subtype="pdf", filename="id.pdf")
    mail_intake.deliver(msg)

    assert (await mail_intake.mailbox().poll_once()) == PollReport(submitted=1)

    (row,) = mail_intake.rows()
    assert row.reference == "dsr-2026-02-OPEN01" and row.request_id != row.reference
    assert mail_intake.store.list(row.request_id) == []
    assert mail_intake.store.read("dsr-2026-02-OPEN01", 1) == b"%PDF id card"


async def test_attachments_over_the_limits_are_not_kept(mail_intake: MailIntake) -> None:
    msg = message(*ENGLISH_ACCESS)
    for n in range(3):
        msg.add_attachment(f"page {n}".encode(), maintype="application", subtype="pdf", filename=f"p{n}.pdf")
    msg.add_attachment(b"x" * 5000, maintype="image", subtype="png", filename="big.png")
    mail_intake.deliver(msg)
    report = await mail_intake.mailbox(max_attachments=2, max_attachment_bytes=4000).poll_once()
    assert report == PollReport(submitted=1)
    (request_id,) = mail_intake.sink.requests
    assert [a.filename for a in mail_intake.store.list(request_id)] == ["p0.pdf", "p1.pdf"]


async def test_decoding_real_world_mime(mail_intake: MailIntake) -> None:
    quoted_printable = (
        "From: =?utf-8?q?Ren=C3=A9e_L=C3=A9vesque?= <renee@example.fr>\r\n"
        "To: privacy@example.com\r\nMessage-ID: <qp-1@example.fr>\r\n"
        "Subject: =?utf-8?b?RGVtYW5kZSBkJ2FjY8OocyDDoCBtZXMgZG9ubsOpZXM=?=\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        "Bonjour,=0D=0A=0D=0AJe souhaite acc=C3=A9der =C3=A0 mes donn=C3=A9es, o=C3=B9 qu'elles soient =\r\n"
        "stock=C3=A9es. D=C3=A9j=C3=A0 merci.\r\n"
    ).encode("ascii")
    latin1 = (
        b"From: =?iso-8859-1?q?Fran=E7ois_M=FCller?= <francois@example.fr>\r\n"
        b"To: privacy@example.com\r\nMessage-ID: <latin1-1@example.fr>\r\nSubject: =?ISO-8859-1?Q?donn=E9es?=\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        b"Veuillez effacer mes donn\xe9es. Co\xfbt : 0 \x80, \x93merci\x94.\r\n"  # 0x80 0x93 0x94: windows-1252
    )
    html_only = (
        b"From: ana@example.org\r\nTo: privacy@example.com\r\nMessage-ID: <html-1@example.org>\r\n"
        b"Subject: Access\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=windows-1252\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(
            "<html><head><style>p{color:red}</style><title>t</title></head><body><p>Hello,</p>"
            "<p>I want a <b>copy</b> of my data &amp; the r\u00e9sum\u00e9 you hold.<br>Thanks</p>"
            "<script>alert(1)</script></body></html>".encode("cp1252")
        ).replace(b"\n", b"\r\n")
    )
    alternative = EmailMessage()
    alternative["From"] = "Zoë <zoe@example.org>"
    alternative["To"] = "privacy@example.com"
    alternative["Message-ID"] = "<alt-1@example.org>"
    alternative["Subject"] = "Accès"
    alternative.set_content("Texte brut préféré.")
    alternative.add_alternative("<p>HTML <i>ignoré</i></p>", subtype="html")
    for n, raw in enumerate([quoted_printable, latin1, html_only, alternative.as_bytes()]):
        mail_intake.deliver(raw, received_at=RECEIVED + timedelta(seconds=n))
    classifier = fixed(RequestKind.ACCESS)

    assert (await mail_intake.mailbox(classifier=classifier).poll_once()) == PollReport(submitted=4)

    by_sender = {s.email: s for s in mail_intake.sink.requests.values()}
    seen = dict(classifier.seen)  # type: ignore[attr-defined]
    qp = by_sender["renee@example.fr"]
    assert qp.name == "Renée Lévesque"
    assert qp.details == "Bonjour,\n\nJe souhaite accéder à mes données, où qu'elles soient stockées. Déjà merci."
    assert "Demande d'accès à mes données" in seen  # RFC 2047 (base64) subject
    latin = by_sender["francois@example.fr"]
    assert latin.name == "François Müller"
    assert latin.details == "Veuillez effacer mes données. Coût : 0 €, “merci”."
    assert "données" in seen
    html = by_sender["ana@example.org"]
    assert html.details == "Hello,\nI want a copy of my data & the résumé you hold.\nThanks"
    assert "alert" not in html.details and "color" not in html.details
    assert by_sender["zoe@example.org"].details == "Texte brut préféré."


async def test_message_over_the_size_limit_is_rejected_not_crashing(mail_intake: MailIntake) -> None:
    big = message(*ENGLISH_ACCESS, sender="big@example.org")
    big.add_attachment(os.urandom(120_000), maintype="application", subtype="octet-stream", filename="dump.bin")
    mail_intake.deliver(big)
    mail_intake.deliver(message(*FRENCH_ERASURE))

    report = await mail_intake.mailbox(max_message_bytes=100_000).poll_once()

    assert report == PollReport(submitted=1, rejected=1)
    assert mail_intake.count("Rejected") == 1 and mail_intake.count("Processed") == 1
    assert mail_intake.count("INBOX") == 0
    assert [s.email for s in mail_intake.sink.requests.values()] == ["jerome.lefevre@example.org"]


async def test_certificate_from_another_ca_fails_the_connection(mail_intake: MailIntake) -> None:
    other = CertificateAuthority(name="someone else's CA")
    cafile = mail_intake.tmp / "other-ca.pem"
    cafile.write_bytes(other.cert_pem)
    mail_intake.deliver(message(*ENGLISH_ACCESS))

    with pytest.raises(MailboxConnectionError, match=r"certificate .* could not be verified") as info:
        await mail_intake.mailbox(cafile=cafile).poll_once()

    assert f"{mail_intake.dovecot.host}:{mail_intake.dovecot.port}" in str(info.value)
    assert mail_intake.sink.submit_calls == [] and mail_intake.count("INBOX") == 1


async def test_wrong_password_is_a_clear_error(mail_intake: MailIntake) -> None:
    # A server of its own: after a failed login Dovecot delays every login from the same IP for a while
    # (anvil's auth penalty), which would slow the other tests down.
    with Dovecot(mail_intake.dovecot.binary) as other:
        user = other.new_user()
        settings = mail_intake.settings(port=other.port, username=user.username, password="not-the-password",
                                cafile=other.cafile)
        mailbox = Mailbox(settings, mail_intake.sink, engine=mail_intake.ledger.engine, keyring=TEST_KEYRING,
                          attachments=mail_intake.store)
        with pytest.raises(MailboxConnectionError, match="refused the login"):
            await mailbox.poll_once()


async def test_server_without_move_gets_copy_store_expunge(mail_intake: MailIntake) -> None:
    class OldServer(Mailbox):
        async def _connect(self) -> aioimaplib.IMAP4_SSL:
            client = await super()._connect()
            client.protocol.capabilities -= {"MOVE", "UIDPLUS"}
            return client

    mail_intake.deliver(message(*ENGLISH_ACCESS))
    mail_intake.deliver(message("Hello", "Hi"))
    mailbox = OldServer(mail_intake.settings(), mail_intake.sink, engine=mail_intake.ledger.engine,
                        keyring=TEST_KEYRING, attachments=mail_intake.store)
    assert (await mailbox.poll_once()) == PollReport(submitted=1, triaged=1)
    assert mail_intake.count("INBOX") == 0 and mail_intake.count("Processed") == 2


async def test_run_polls_until_stopped_and_survives_a_bad_connection(
    mail_intake: MailIntake, caplog: pytest.LogCaptureFixture
) -> None:
    mail_intake.deliver(message(*ENGLISH_ACCESS))
    stop = asyncio.Event()
    with caplog.at_level(logging.INFO, logger="dsr.intake.mailbox"):
        bad = asyncio.ensure_future(mail_intake.mailbox(port=_closed_port(), poll_interval=0.05).run(stop))
        good = asyncio.ensure_future(mail_intake.mailbox(poll_interval=0.05).run(stop))
        for _ in range(200):
            if mail_intake.sink.requests:
                break
            await asyncio.sleep(0.05)
        mail_intake.deliver(message(*FRENCH_ERASURE))
        for _ in range(200):
            if len(mail_intake.sink.requests) == 2:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(asyncio.gather(bad, good), 20)
    assert len(mail_intake.sink.requests) == 2
    assert any("mailbox poll failed" in r.getMessage() for r in caplog.records)
    _assert_no_personal_data(caplog, "jerome", "Jane", "example.org")


def reply_env(mail_intake: MailIntake, *, closed: bool = False) -> ReplyAwareSink:
    sink = ReplyAwareSink(home=mail_intake.tmp, request=RepliedRequest(OPEN_REQUEST, closed=closed))
    mail_intake.sink = sink
    return sink


def reply(subject: str = f"Re: Votre demande (réf. {OPEN_REQUEST})", **kwargs: Any) -> EmailMessage:
    msg = message(subject, "Bonjour, voici ma pièce d'identité.", **kwargs)
    msg["In-Reply-To"] = "<" + "ab" * 16 + "@example.com>"
    msg["References"] = "<" + "ab" * 16 + "@example.com>"
    msg.add_attachment(b"%PDF-1.4 id card", maintype="application", subtype="pdf", filename="id.pdf")
    return msg


async def test_reply_from_the_subject_is_filed_under_the_open_request_once(mail_intake: MailIntake) -> None:
    sink = reply_env(mail_intake)
    mail_intake.store.save(OPEN_REQUEST, "first.pdf", "application/pdf", b"%PDF came with the request")
    msg = reply()
    mail_intake.deliver(msg)
    sink.unavailable = 1  # the engine is down at the first poll: the files are stored, the update is not

    assert (await mail_intake.mailbox(classifier=fixed(RequestKind.ACCESS)).poll_once()) == PollReport(deferred=1)
    assert (await mail_intake.mailbox(classifier=fixed(RequestKind.ACCESS)).poll_once()) == PollReport(corresponded=1)

    (row,) = mail_intake.rows()
    assert (row.state, row.outcome, row.reason, row.reference) == ("moved", "submitted", "correspondence",
                                                                    OPEN_REQUEST)
    # Added beside what the request held, never clearing it; stored once although the update was sent twice.
    assert [a.filename for a in mail_intake.store.list(OPEN_REQUEST)] == ["first.pdf", "id.pdf"]
    assert mail_intake.store.list(row.request_id) == []
    assert sink.updates == [row.message_key, row.message_key]
    letter = sink.recorded[row.message_key]
    assert (letter.attachments, letter.message_id, letter.received_at) == (1, msg["Message-ID"], RECEIVED)
    assert sink.requests == {} and sink.triaged == {}  # not a submission, not a triage item
    sender, subject, thread = sink.lookups[0]
    assert sender == "jerome.lefevre@example.org" and OPEN_REQUEST in subject
    assert thread == ("<" + "ab" * 16 + "@example.com>",)
    assert mail_intake.count("Processed") == 1 and mail_intake.count("INBOX") == 0


async def test_reply_from_someone_else_takes_the_normal_path(mail_intake: MailIntake) -> None:
    sink = reply_env(mail_intake)
    mail_intake.deliver(reply(sender="mallory@example.net", name="Mallory"))

    assert (await mail_intake.mailbox(classifier=fixed(None)).poll_once()) == PollReport(triaged=1)

    assert sink.updates == [] and mail_intake.store.list(OPEN_REQUEST) == []
    (item,) = sink.triaged.values()
    assert item.reason == "fixed"  # the classifier's reason: nothing about the other request
    assert [a.filename for a in mail_intake.store.list(item.request_id)] == ["id.pdf"]


async def test_reply_about_a_closed_request_goes_to_triage_not_a_new_request(mail_intake: MailIntake) -> None:
    sink = reply_env(mail_intake, closed=True)
    mail_intake.deliver(reply())

    assert (await mail_intake.mailbox(classifier=fixed(RequestKind.ERASURE)).poll_once()) == PollReport(triaged=1)

    assert sink.requests == {} and sink.updates == []
    (item,) = sink.triaged.values()
    assert item.reason == f"reply about closed request {OPEN_REQUEST}"
    assert [a.filename for a in mail_intake.store.list(item.request_id)] == ["id.pdf"]
    assert mail_intake.store.list(OPEN_REQUEST) == []


async def test_request_closed_between_lookup_and_update_takes_its_files_to_triage(mail_intake: MailIntake) -> None:
    sink = reply_env(mail_intake)
    sink.closed_on_update = True
    mail_intake.deliver(reply())

    assert (await mail_intake.mailbox(classifier=fixed(RequestKind.ACCESS)).poll_once()) == PollReport(triaged=1)

    (item,) = sink.triaged.values()
    assert item.reason == f"reply about closed request {OPEN_REQUEST}"
    assert mail_intake.store.list(OPEN_REQUEST) == []  # moved with the message, not left with a closed request
    assert [a.filename for a in mail_intake.store.list(item.request_id)] == ["id.pdf"]
    (row,) = mail_intake.rows()
    assert (row.state, row.outcome, row.reason) == ("moved", "triaged", "closed_reply")


async def test_failed_reply_lookup_leaves_the_message_for_the_next_poll(
    mail_intake: MailIntake, caplog: pytest.LogCaptureFixture
) -> None:
    sink = reply_env(mail_intake)
    sink.lookup_failures = 1
    mail_intake.deliver(reply())
    with caplog.at_level(logging.INFO, logger="dsr.intake.mailbox"):
        assert (await mail_intake.mailbox().poll_once()) == PollReport(deferred=1)
        assert mail_intake.store.list(OPEN_REQUEST) == [] and mail_intake.count("INBOX") == 1
        assert (await mail_intake.mailbox().poll_once()) == PollReport(corresponded=1)
    _assert_no_personal_data(caplog, "jerome", "Jérôme", "id.pdf", "pièce", "ab" * 16)


async def test_works_on_postgresql_too(dovecot: Dovecot, user: ImapUser, tmp_path: Path, postgres_url: str) -> None:
    ledger = Ledger(postgres_url, TEST_KEYRING)
    try:
        mail_intake = MailIntake(dovecot, user, tmp_path, ledger, RecordingSink(home=tmp_path),
                  AttachmentStore(FileStore(tmp_path / "storage"), TEST_KEYRING))
        mail_intake.deliver(message(*ENGLISH_ACCESS))
        mail_intake.sink.crash_after_start = 1
        assert (await mail_intake.mailbox().poll_once()) == PollReport(deferred=1)
        assert (await mail_intake.mailbox().poll_once()) == PollReport(submitted=1)
        assert len(mail_intake.sink.requests) == 1
        (row,) = mail_intake.rows()
        assert (row.state, row.outcome) == ("moved", "submitted")
    finally:
        ledger.close()


def _closed_port() -> int:
    from tests.harness import free_port

    return free_port()  # nothing listens there


def _assert_no_personal_data(caplog: pytest.LogCaptureFixture, *values: str) -> None:
    text = "\n".join(r.getMessage() for r in caplog.records)
    for value in values:
        assert value not in text


# --- units without a server ----------------------------------------------------------------------------


def test_parse_internaldate() -> None:
    assert parse_internaldate(" 2-Mar-2026 09:30:15 +0100") == RECEIVED
    assert parse_internaldate("02-Mar-2026 08:30:15 +0000") == RECEIVED


def test_html_to_text_keeps_blocks_and_drops_code() -> None:
    assert html_to_text("<div>a<br/>b</div><ul><li>c</li><li>d &eacute;</li></ul>") == "a\nb\nc\nd é"


def test_auto_reply_detection_on_headers() -> None:
    human = parse_headers("From: a@example.org\r\nSubject: x\r\n\r\n")
    assert auto_reply_reason(human) is None
    assert auto_reply_reason(parse_headers("From: a@example.org\r\nPrecedence: junk\r\n\r\n")) == "precedence"
    assert auto_reply_reason(parse_headers("From: a@example.org\r\nAuto-Submitted: auto-generated\r\n\r\n"))


def parse_headers(text: str) -> Any:
    import email
    import email.policy

    return email.message_from_bytes(text.encode(), policy=email.policy.default)


def test_parse_message_without_from_or_body() -> None:
    parsed = parse_message(b"Subject: x\r\n\r\n")
    assert (parsed.sender, parsed.name, parsed.body, parsed.message_id) == ("", "", "", None)


def test_attachment_store_limits(storage_url: str) -> None:
    store = AttachmentStore(store_at(storage_url), TEST_KEYRING, max_bytes=10, max_count=2)
    with pytest.raises(AttachmentLimitError):
        store.save("dsr-2026-03-AAAAAA", "a.pdf", "application/pdf", b"x" * 11)
    store.save("dsr-2026-03-AAAAAA", "../../etc/passwd", "not a type", b"1")
    store.save("dsr-2026-03-AAAAAA", "b.pdf", "application/pdf", b"2")
    with pytest.raises(AttachmentLimitError):
        store.save("dsr-2026-03-AAAAAA", "c.pdf", "application/pdf", b"3")
    assert store.list("dsr-2026-03-AAAAAA") == [
        AttachmentInfo(1, "passwd", "application/octet-stream", 1),
        AttachmentInfo(2, "b.pdf", "application/pdf", 1),
    ]
    with pytest.raises(ValueError):
        store.list("../escape")
    assert store.transfer("dsr-2026-03-AAAAAA", "dsr-2026-03-BBBBBB") == 2
    assert store.read("dsr-2026-03-BBBBBB", 2) == b"2" and store.list("dsr-2026-03-AAAAAA") == []
    with pytest.raises(FileNotFoundError):
        store.read("dsr-2026-03-BBBBBB", 3)


def test_reply_clues_point_at_our_emails_and_references_only() -> None:
    ours = "<" + "ab" * 16 + "@example.com>"
    keys, references = reply_clues(
        "Re: Re: votre demande DSR-2026-02-7kq3fj (et dsr-2026-02-7KQ3FJ, dsr-2026-02-ILLOU1)",
        [ours, "<" + "cd" * 16 + "@elsewhere.example>", "<not-ours@example.com>"],
        "Example.com",
    )
    assert keys == ["notice-" + "ab" * 16, "reply-" + "ab" * 16]  # another domain or shape: not ours
    assert references == ["dsr-2026-02-7KQ3FJ"]  # any case, once; I, L, O, U are not in our alphabet
    many = [f"<{n:032x}@example.com>" for n in range(500)]
    assert len(reply_clues("", many, "example.com")[0]) <= 20  # a hostile References header stays bounded


def test_thread_ids_are_in_reply_to_then_references_newest_first() -> None:
    raw = (b"From: a@example.org\r\nSubject: Re: x\r\nMessage-ID: <m3@example.org>\r\n"
           b"In-Reply-To: <m2@example.com>\r\nReferences: <m1@example.com>\r\n <m2@example.com>\r\n\r\nhi\r\n")
    assert parse_message(raw).thread_ids == ("<m2@example.com>", "<m1@example.com>")
    assert parse_message(b"Subject: x\r\n\r\n").thread_ids == ()


def test_message_state_machine_values() -> None:
    assert [s.value for s in MessageState] == ["reserved", "submitted", "triaged", "rejected", "moved"]


# --- the sender as our mail server checked it (Authentication-Results, RFC 8601) ---------------------------

AUTHSERV = "mx.privacy.example.com"


def authenticated(msg: EmailMessage, *results: str) -> bytes:
    """The message as our receiving server hands it to the mailbox: its verdict headers on top, in order."""
    on_top = b"".join(f"Authentication-Results: {AUTHSERV};\r\n\t{r}\r\n".encode() for r in results)
    return on_top + msg.as_bytes().replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")


DMARC_FAIL = "dmarc=fail (p=reject dis=reject) header.from=example.org; dkim=none; spf=fail smtp.mailfrom=example.org"
DMARC_PASS = "dmarc=pass (p=quarantine) header.from=example.org; dkim=pass header.d=example.org; spf=pass"


async def test_forged_reply_failing_dmarc_goes_to_triage_not_to_the_request(mail_intake: MailIntake) -> None:
    sink = reply_env(mail_intake)
    forged = reply()  # the subject's address in From, the reference in Subject, an "ID copy" attached
    # The forger also wrote an Authentication-Results claiming our server and a pass, below our server's.
    forged["Authentication-Results"] = f"{AUTHSERV}; dmarc=pass header.from=example.org; dkim=pass; spf=pass"
    mail_intake.deliver(authenticated(forged, DMARC_FAIL))

    report = await mail_intake.mailbox(classifier=fixed(RequestKind.ACCESS), authserv_id=AUTHSERV).poll_once()

    assert report == PollReport(triaged=1)
    assert sink.updates == [] and sink.recorded == {}  # the request is not told
    assert mail_intake.store.list(OPEN_REQUEST) == []  # and holds none of the forger's files
    (item,) = sink.triaged.values()
    assert item.reason == (f"reply about {OPEN_REQUEST} from a sender that failed DMARC: the From address may be "
                           f"forged (dmarc=fail dkim=none spf=fail ({AUTHSERV}))")
    (kept,) = mail_intake.store.list(item.request_id)  # the file waits with the message, for a person to look at
    assert kept.filename == "id.pdf" and kept.sender_check.startswith("dmarc=fail")
    (row,) = mail_intake.rows()
    assert (row.outcome, row.reason, row.reference) == ("triaged", "dmarc_fail_reply", OPEN_REQUEST)


async def test_reply_passing_dmarc_is_recorded_with_the_verdict_beside_its_files(mail_intake: MailIntake) -> None:
    sink = reply_env(mail_intake)
    # A verdict of another server (the sender's own, say) sits between ours and anything lower: not believed.
    genuine = reply()
    genuine["Authentication-Results"] = "mail.example.org; dmarc=fail"
    mail_intake.deliver(authenticated(genuine, DMARC_PASS))

    report = await mail_intake.mailbox(classifier=fixed(RequestKind.ACCESS), authserv_id=AUTHSERV).poll_once()

    assert report == PollReport(corresponded=1)
    (letter,) = sink.recorded.values()
    assert letter.sender_check == f"dmarc=pass dkim=pass spf=pass ({AUTHSERV})"
    (kept,) = mail_intake.store.list(OPEN_REQUEST)
    assert (kept.filename, kept.sender_check) == ("id.pdf", letter.sender_check)


async def test_without_a_trusted_server_nothing_is_believed_and_operators_are_told(mail_intake: MailIntake) -> None:
    sink = reply_env(mail_intake)
    mail_intake.deliver(authenticated(reply(), DMARC_PASS))  # headers anyone could have written

    assert (await mail_intake.mailbox(classifier=fixed(RequestKind.ACCESS)).poll_once()) == PollReport(corresponded=1)

    (letter,) = sink.recorded.values()
    assert letter.sender_check == "sender not checked (DSR_MAIL_AUTHSERV_ID is not set)"
    assert mail_intake.store.list(OPEN_REQUEST)[0].sender_check == letter.sender_check


async def test_new_request_failing_dmarc_goes_to_triage_with_the_reason(mail_intake: MailIntake) -> None:
    mail_intake.deliver(authenticated(message(*FRENCH_ERASURE), DMARC_FAIL))
    mail_intake.deliver(authenticated(message(*ENGLISH_ACCESS, sender="jane.doe@example.net", name="Jane Doe"),
                              "dmarc=none header.from=example.net; dkim=none; spf=neutral"))

    report = await mail_intake.mailbox(authserv_id=AUTHSERV).poll_once()  # the real classifier: both are clear

    assert report == PollReport(submitted=1, triaged=1)
    (item,) = mail_intake.sink.triaged.values()
    assert item.email == "jerome.lefevre@example.org"
    assert item.reason == f"sender failed DMARC: the From address may be forged (dmarc=fail dkim=none spf=fail " \
                          f"({AUTHSERV}))"
    # No published policy (dmarc=none) proves nothing either way: that one is a request as before.
    (submission,) = mail_intake.sink.requests.values()
    assert submission.email == "jane.doe@example.net"


def test_sender_check_believes_only_the_top_run_of_the_trusted_server() -> None:
    from intake.email.authresults import sender_check

    def check(*headers: tuple[str, str], authserv_id: str | None = "mx.example.com") -> str:
        return sender_check(headers, authserv_id).summary()

    ar = "Authentication-Results"
    # Comments, quoted strings, folded lines, a method version, several signatures (one passing is DKIM's pass).
    assert check((ar, 'MX.example.com 1; dkim/1=fail (bad "sig; x") header.d=a.example;\r\n\tdkim=pass '
                      'header.d=b.example; spf=softfail (x (nested) y) smtp.mailfrom="a;b@c"; dmarc=pass')) == \
        "dmarc=pass dkim=pass spf=softfail (mx.example.com)"
    # Our server split its verdicts over two headers (milters): both count; a lower one after another
    # server's header is the sender's own writing.
    assert check((ar, "mx.example.com; dmarc=fail"), ("Received", "by mx.example.com"),
                 (ar, "mx.example.com; spf=pass; dkim=pass"), (ar, "relay.example.net; dmarc=pass"),
                 (ar, "mx.example.com; dmarc=pass")) == "dmarc=fail dkim=pass spf=pass (mx.example.com)"
    assert check((ar, "mx.example.com; none")) == "dmarc=unknown dkim=unknown spf=unknown (mx.example.com)"
    assert check((ar, "evil.example; dmarc=pass")) == \
        "sender not checked (no Authentication-Results from mx.example.com)"
    assert check((ar, "mx.example.com; dmarc=pass"), authserv_id=None) == \
        "sender not checked (DSR_MAIL_AUTHSERV_ID is not set)"
    assert check((ar, "mx.example.com.evil.example; dmarc=pass")).startswith("sender not checked")
    assert sender_check([(ar, "mx.example.com; dmarc=FAIL")], "mx.example.com").dmarc_failed
    assert not sender_check([(ar, "mx.example.com; dmarc=none")], "mx.example.com").dmarc_failed


def test_authserv_id_setting(tmp_path: Path) -> None:
    from dsr.config.settings import ConfigError

    base = {"DSR_HOME": str(tmp_path), "DSR_IMAP_HOST": "imap.example.com"}
    plain = Settings.from_env(base).imap
    given = Settings.from_env({**base, "DSR_MAIL_AUTHSERV_ID": " mx.example.com "}).imap
    assert plain is not None and plain.authserv_id is None
    assert given is not None and given.authserv_id == "mx.example.com"
    with pytest.raises(ConfigError, match="DSR_MAIL_AUTHSERV_ID"):
        Settings.from_env({**base, "DSR_MAIL_AUTHSERV_ID": "mx.example.com; dmarc=pass"})


# --- MIME bombs: caps checked before the parser sees the message ---------------------------------------------


def many_parts(parts: int, *, sender: str = "jerome.lefevre@example.org") -> bytes:
    """The review's probe: 40,000 tiny parts (3.6 MB) took a minute to read before the caps."""
    head = (f"From: Jérôme <{sender}>\r\nTo: privacy@example.com\r\nSubject: Suppression de mes données\r\n"
            f"Message-ID: <bomb-{parts}.{os.getpid()}@example.org>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n").encode()
    part = b"--B\r\nContent-Type: text/plain\r\n\r\nhello there, this is one part of a message of many parts\r\n"
    return head + part * parts + b"--B--\r\n"


async def test_forty_thousand_parts_go_to_triage_unread_by_the_cap(mail_intake: MailIntake) -> None:
    mail_intake.deliver(many_parts(40_000))
    mail_intake.deliver(message(*ENGLISH_ACCESS))  # the next message is read as usual in the same poll

    report = await mail_intake.mailbox(triage_folder="Triage").poll_once()

    assert report == PollReport(submitted=1, triaged=1)
    (item,) = mail_intake.sink.triaged.values()
    assert item.reason == "message not read: more than 100 MIME parts; the email is in the mailbox's triage folder"
    assert (item.email, item.subject_line, item.body) == ("jerome.lefevre@example.org",
                                                          "Suppression de mes données", "")
    assert mail_intake.store.list(item.request_id) == []  # nothing of its body taken in: never half-ingested
    assert mail_intake.count("Triage") == 1 and mail_intake.count("INBOX") == 0
    assert {(r.outcome, r.reason) for r in mail_intake.rows()} == {("triaged", None), ("submitted", None)}


async def test_a_message_that_takes_too_long_to_read_goes_to_triage_unread(mail_intake: MailIntake) -> None:
    msg = message(*FRENCH_ERASURE)
    msg.add_attachment(b"%PDF id", maintype="application", subtype="pdf", filename="id.pdf")
    mail_intake.deliver(msg)

    report = await mail_intake.mailbox(parse_timeout=0).poll_once()  # no time at all: the bound, not the caps

    assert report == PollReport(triaged=1)
    (item,) = mail_intake.sink.triaged.values()
    assert item.reason.startswith("message not read: reading it took over 0 s")
    assert mail_intake.store.list(item.request_id) == [] and mail_intake.sink.requests == {}


def test_mime_scan_counts_what_the_parser_would_split() -> None:
    from intake.email.mimescan import MessageTooComplex, check_mime_caps, mime_shape

    assert mime_shape(many_parts(40_000), stop_at_parts=100).parts == 101  # stops counting past the cap
    assert mime_shape(many_parts(3)).parts == 3 and mime_shape(many_parts(3)).depth == 1
    check_mime_caps(many_parts(100))
    with pytest.raises(MessageTooComplex, match="more than 100 MIME parts"):
        parse_message(many_parts(101))
    # Bare CRs end lines for the parser too: they cannot hide parts from the scan.
    with pytest.raises(MessageTooComplex):
        check_mime_caps(many_parts(101).replace(b"\r\n", b"\r"))
    # A boundary written as RFC 2231 continuations (which the scan does not assemble): every "--" line counts.
    continued = many_parts(101).replace(b'boundary="B"', b'boundary*0="B"')
    assert email_parts(continued) > 100 and mime_shape(continued).parts > 100
    # Nesting: eleven multiparts one in another.
    nested = b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n"
    for level in range(1, 12):
        nested += f"--b{level - 1}\r\nContent-Type: multipart/mixed; boundary=\"b{level}\"\r\n\r\n".encode()
    nested += b"--b11\r\nContent-Type: text/plain\r\n\r\nhi\r\n" + b"".join(
        f"--b{level}--\r\n".encode() for level in range(11, -1, -1))
    assert mime_shape(nested).depth == 12 == email_depth(nested)
    with pytest.raises(MessageTooComplex, match="nested more than 10 deep"):
        check_mime_caps(nested)
    # An ordinary message with an attachment is measured, not refused.
    ordinary = message(*ENGLISH_ACCESS)
    ordinary.add_attachment(b"%PDF", maintype="application", subtype="pdf", filename="id.pdf")
    assert mime_shape(ordinary.as_bytes()).parts == email_parts(ordinary.as_bytes()) == 2


def email_parts(raw: bytes) -> int:
    import email
    import email.policy

    return sum(1 for _ in email.message_from_bytes(raw, policy=email.policy.default).walk()) - 1


def email_depth(raw: bytes) -> int:
    import email
    import email.policy

    def depth(part: Any) -> int:
        return 1 + max((depth(p) for p in part.iter_parts()), default=0) if part.is_multipart() else 0

    return depth(email.message_from_bytes(raw, policy=email.policy.default))


def test_display_name_of_an_email_loses_bidi_and_control_characters() -> None:
    raw = ("From: =?utf-8?b?" + base64.b64encode("Zoé \u202eMartin\u202c\u200b".encode()).decode()
           + "?= <zoe@example.org>\r\nSubject: x\r\n\r\nhi\r\n").encode()
    assert parse_message(raw).name == "Zoé Martin"
