"""The final reply's send intent (issue 11): a worker lost between the SMTP server's 250 and the sent-log write.

Real pieces: aiosmtpd on 127.0.0.1, the ledger (SQLite and PostgreSQL) with its send intents, the reply activity
in an ActivityEnvironment (whose activity identity, like a Temporal retry's, is the same on every run: same
idempotency key, same Message-ID). The "kill" is the sent-log write raising after the server's 250: nothing of
the attempt runs after it, as with a SIGKILL.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.ledger import LedgerActivities
from activities.notices import Mailer
from activities.replies import ReplyActivities
from dsr.config.settings import SmtpSettings
from dsr.domain.model import (
    AuditEvent,
    Channel,
    ConnectorOutcome,
    EventBatch,
    Language,
    ReplyInput,
    RequestKind,
    RequestRecordInput,
    Subject,
)
from dsr.store.ledger import Ledger
from dsr.store.links import DownloadLinks
from dsr.store.mail_sends import SENDING, SENT, MailSends
from intake.email.settings import MailboxSettings
from tests.activities.test_notices import Collector, free_port, smtp_server
from tests.dovecot import Dovecot
from tests.harness import TEST_KEYRING, file_exports, migrated
from tests.intake.test_mailbox import dovecot  # noqa: F401  (fixture: a real IMAP server)
from worker import ImapSentCopies, LedgerSentLog

REQUEST = "dsr-2026-12-REPLY1"
SUBJECT = Subject(email="zoe.martin@example.com", name="Zoé Martin")


class WorkerLost(BaseException):
    """The worker dies: no ``except Exception`` of the activity runs after it (like SIGKILL)."""


class LostAfterAccepted(LedgerSentLog):
    """The ledger adapter of a worker that dies once after the SMTP server's 250, before the sent-log write."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(ledger)
        self.lost = False

    def record_sent(self, *args: Any, **kwargs: Any) -> None:
        if not self.lost:
            self.lost = True
            raise WorkerLost
        super().record_sent(*args, **kwargs)


def opened_ledger(url: str) -> Ledger:
    opened = Ledger(migrated(url), TEST_KEYRING)
    opened.record_request(RequestRecordInput(
        request_id=REQUEST, kind=RequestKind.ERASURE, channel=Channel.FORM, subject=SUBJECT,
        received_at=datetime(2026, 12, 1, 9, tzinfo=UTC), deadline=date(2027, 1, 1), language=Language.EN,
    ), now=datetime(2026, 12, 1, 9, tzinfo=UTC))
    return opened


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    with opened_ledger(database_url) as opened:
        yield opened


def replies(port: int, ledger: Ledger, tmp_path: Path, sent_log: LedgerSentLog,
            sent_copies: ImapSentCopies | None = None) -> ReplyActivities:
    mailer = Mailer(SmtpSettings(host="127.0.0.1", port=port, timeout_seconds=5), mail_from="privacy@example.com",
                    from_name="Privacy", mail_domain="example.com")
    return ReplyActivities(mailer, sent_log=sent_log, exports=file_exports(tmp_path / "exports"),
                           links=DownloadLinks(TEST_KEYRING), public_url="http://127.0.0.1:8000",
                           profile=lambda: None, sent_copies=sent_copies, ledger=ledger)


def reply_input() -> ReplyInput:
    # Nothing found anywhere: the shortest reply (no bundle, no Art. 19 notice), one email to the subject.
    return ReplyInput(request_id=REQUEST, kind=RequestKind.ERASURE, language=Language.EN, subject=SUBJECT,
                      received=date(2026, 12, 1), deadline=date(2027, 1, 1),
                      outcomes=[ConnectorOutcome(connector="crm", found=0)])


def sent_events(ledger: Ledger) -> list[dict[str, str]]:
    return [event.details for event in ledger.events(REQUEST) if event.event == "notice_sent"]


async def test_a_worker_lost_between_250_and_the_sent_log_resends_the_same_message_id_flagged(
    ledger: Ledger, tmp_path: Path,
) -> None:
    collector = Collector()
    sent_log = LostAfterAccepted(ledger)
    async with smtp_server(collector) as port:
        activities = replies(port, ledger, tmp_path, sent_log)
        with pytest.raises(WorkerLost):
            await ActivityEnvironment().run(activities.send_reply, reply_input())
        # The server took it; the ledger has no sent-log, only the open intent written before the transaction.
        assert len(collector.envelopes) == 1 and sent_events(ledger) == []
        [first] = collector.messages()
        row = MailSends(ledger.engine).get(f"reply-{first['Message-ID'].strip('<>').split('@')[0]}")
        assert row is not None and row.state == SENDING and row.attempts == 1 and not row.possible_duplicate

        result = await ActivityEnvironment().run(activities.send_reply, reply_input())  # Temporal's retry
        again = await ActivityEnvironment().run(activities.send_reply, reply_input())  # a later, needless one

    # SMTP allows no better: the subject got the reply twice, with one Message-ID (clients de-duplicate on it) ...
    assert len(collector.envelopes) == 2
    assert [m["Message-ID"] for m in collector.messages()] == [first["Message-ID"]] * 2
    assert result.message_id == again.message_id == first["Message-ID"]
    # ... and the operator can see it: the one sent-log entry and the intent say "possible duplicate".
    assert sent_events(ledger) == [{"template": "reply_no_data", "message_id": first["Message-ID"],
                                    "possible_duplicate": "true"}]
    row = MailSends(ledger.engine).get(row.send_key)
    assert row is not None and row.state == SENT and row.attempts == 2 and row.possible_duplicate
    assert [r.send_key for r in MailSends(ledger.engine).possible_duplicates(REQUEST)] == [row.send_key]


async def test_the_events_a_reply_carries_are_written_first_and_once_whoever_writes_them_again(
    ledger: Ledger, tmp_path: Path,
) -> None:
    """The request's events noted before its reply go with the first try, written before anything that may fail;
    the request cannot tell whether a failed try wrote them, so its writer writes the batch again under the
    batch's key, as may the retried reply: the ledger holds them once."""
    batch = EventBatch(key=f"{REQUEST}/run/final-reply/events", events=[
        AuditEvent(request_id=REQUEST, event="connector_done", details={"connector": "crm"}),
        AuditEvent(request_id=REQUEST, event="replying")])
    carrying = dataclasses.replace(reply_input(), events=batch)
    activities = replies(free_port(), ledger, tmp_path, LedgerSentLog(ledger))  # nobody listens: SMTP down
    with pytest.raises(ApplicationError, match="unreachable"):
        await ActivityEnvironment().run(activities.send_reply, carrying)
    assert [e.event for e in ledger.events(REQUEST)] == ["connector_done", "replying"]
    # The writer's activity is another one (its own id): only the batch's key makes its write a no-op.
    writer = ActivityEnvironment()
    writer.info = dataclasses.replace(writer.info, activity_id="writer-7")
    assert writer.run(LedgerActivities(ledger).record_event_batch, batch) == 0
    collector = Collector()
    async with smtp_server(collector) as port:
        await ActivityEnvironment().run(replies(port, ledger, tmp_path, LedgerSentLog(ledger)).send_reply, carrying)
    assert len(collector.envelopes) == 1
    assert [e.event for e in ledger.events(REQUEST)] == ["connector_done", "replying", "notice_sent"]


async def test_retries_through_an_smtp_outage_are_not_possible_duplicates(ledger: Ledger, tmp_path: Path) -> None:
    """A transaction that certainly delivered nothing (connection refused) closes its intent as unsent."""
    down = free_port()
    activities = replies(down, ledger, tmp_path, LedgerSentLog(ledger))
    with pytest.raises(ApplicationError, match="unreachable"):
        await ActivityEnvironment().run(activities.send_reply, reply_input())
    collector = Collector()
    async with smtp_server(collector) as port:
        result = await ActivityEnvironment().run(replies(port, ledger, tmp_path, LedgerSentLog(ledger)).send_reply,
                                                 reply_input())
    assert len(collector.envelopes) == 1
    assert sent_events(ledger) == [{"template": "reply_no_data", "message_id": result.message_id}]
    assert MailSends(ledger.engine).possible_duplicates(REQUEST) == []


class HangsUpAfterData:
    """A server that takes the message and drops the connection instead of answering the DATA: the sender cannot
    know whether it was accepted (it was)."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        self.received.append(envelope.original_content)
        assert isinstance(server.transport, asyncio.Transport)
        server.transport.abort()
        await asyncio.sleep(0)
        return "250 OK"


async def test_a_connection_lost_after_the_data_leaves_the_intent_open(ledger: Ledger, tmp_path: Path) -> None:
    hangs_up = HangsUpAfterData()
    async with smtp_server(hangs_up) as port:
        with pytest.raises(ApplicationError, match="unreachable"):
            await ActivityEnvironment().run(replies(port, ledger, tmp_path, LedgerSentLog(ledger)).send_reply,
                                            reply_input())
    assert len(hangs_up.received) == 1
    collector = Collector()
    async with smtp_server(collector) as port:
        await ActivityEnvironment().run(replies(port, ledger, tmp_path, LedgerSentLog(ledger)).send_reply,
                                        reply_input())
    assert len(collector.envelopes) == 1
    [event] = sent_events(ledger)
    assert event.get("possible_duplicate") == "true"


class FilesInSent:
    """A relay like Gmail's or Microsoft 365's: each message it accepts is filed in the account's Sent folder (a
    real IMAP server, Dovecot) before the 250."""

    def __init__(self, server: Dovecot, user: Any) -> None:
        self.dovecot, self.user = server, user
        self.envelopes: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        self.envelopes.append(envelope.original_content)
        await asyncio.to_thread(self.dovecot.deliver, self.user, envelope.original_content,
                                received_at=datetime.now(UTC), folder="Sent")
        return "250 OK"


@pytest.mark.parametrize("files_a_copy", [True, False])
async def test_with_a_sent_folder_a_lost_worker_s_accepted_reply_is_not_sent_again(
    dovecot: Dovecot, tmp_path: Path, files_a_copy: bool,  # noqa: F811
) -> None:
    """DSR_IMAP_SENT_FOLDER: the retry finds the earlier attempt's copy and sends nothing (exactly one email); a
    relay that files no copy (or not yet) leaves the retry to send again, flagged as before."""
    user = dovecot.new_user()
    with dovecot.imap(user) as client:
        client.create("Sent")
    relay = FilesInSent(dovecot, user) if files_a_copy else Collector()
    copies = ImapSentCopies(MailboxSettings(host=dovecot.host, port=dovecot.port, username=user.username,
                                            password=user.password, cafile=dovecot.cafile, timeout=15.0), "Sent")
    with opened_ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}") as ledger:
        async with smtp_server(relay) as port:
            activities = replies(port, ledger, tmp_path, LostAfterAccepted(ledger), copies)
            with pytest.raises(WorkerLost):
                await ActivityEnvironment().run(activities.send_reply, reply_input())
            result = await ActivityEnvironment().run(activities.send_reply, reply_input())
        [event] = sent_events(ledger)
        duplicates = MailSends(ledger.engine).possible_duplicates(REQUEST)
    delivered = relay.envelopes
    if files_a_copy:
        assert len(delivered) == 1 and dovecot.message_ids(user, "Sent") == [result.message_id]
        assert event == {"template": "reply_no_data", "message_id": result.message_id, "found_in_sent_folder": "true"}
        assert duplicates == []
    else:
        assert len(delivered) == 2
        assert event.get("possible_duplicate") == "true" and [d.message_id for d in duplicates] == [result.message_id]
