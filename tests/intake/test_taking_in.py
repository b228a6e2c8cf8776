"""The exactly-once state machine of email intake on its own: no IMAP server, a real ledger database.

:class:`~intake.email.taking_in.MessageIntake` is what decides, durably, what becomes of a message; the poller
only moves it afterwards (tests/intake/test_mailbox.py drives both through Dovecot). Here each step is driven
directly, as a poller on another machine would after a crash. The sink is the recording fake of
test_mailbox (validation by the real ``prepare``, idempotent by request id).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dsr.domain.model import RequestKind
from dsr.store import FileStore
from dsr.store.attachments import AttachmentStore
from dsr.store.inbox import Inbox, MessageState
from dsr.store.ledger import Ledger
from intake.email.mime import parse_message
from intake.email.settings import Outcome
from intake.email.taking_in import MessageIntake
from tests.harness import TEST_KEYRING
from tests.intake.test_mailbox import ENGLISH_ACCESS, RecordingSink, fixed, message

RECEIVED = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", TEST_KEYRING)
    try:
        yield ledger
    finally:
        ledger.close()


def intake_for(ledger: Ledger, sink: RecordingSink, tmp_path: Path, kind: RequestKind | None) -> MessageIntake:
    """A fresh one each time: a new process, nothing in memory carried over."""
    return MessageIntake(
        sink,
        inbox=Inbox(ledger.engine, TEST_KEYRING),
        attachments=AttachmentStore(FileStore(tmp_path / "storage"), TEST_KEYRING),
        classifier=fixed(kind),
        timezone="Europe/Paris",
    )


async def test_a_deferred_message_is_submitted_later_under_the_id_reserved_first(
    ledger: Ledger, tmp_path: Path
) -> None:
    raw = message(*ENGLISH_ACCESS, sender="jane.doe@example.net", name="Jane Doe").as_bytes()
    sink = RecordingSink(home=tmp_path, rate_limited=1)

    first = await intake_for(ledger, sink, tmp_path, RequestKind.ACCESS).take_in(parse_message(raw), raw, RECEIVED, 7)
    assert (first.done, first.outcome) == (None, Outcome.DEFERRED)  # stays in the inbox

    second = await intake_for(ledger, sink, tmp_path, RequestKind.ACCESS).take_in(parse_message(raw), raw, RECEIVED, 7)
    assert (second.done, second.outcome) == (MessageState.SUBMITTED, Outcome.SUBMITTED)
    assert second.request_id == first.request_id
    assert sink.submit_calls == [first.request_id, first.request_id]
    assert list(sink.requests) == [first.request_id]


async def test_a_message_taken_in_but_not_moved_is_only_moved_next_time(ledger: Ledger, tmp_path: Path) -> None:
    raw = message(*ENGLISH_ACCESS, sender="jane.doe@example.net", name="Jane Doe").as_bytes()
    sink = RecordingSink(home=tmp_path)
    taken = await intake_for(ledger, sink, tmp_path, RequestKind.ACCESS).take_in(parse_message(raw), raw, RECEIVED, 7)
    assert taken.outcome == Outcome.SUBMITTED
    # The poller died before the move: the next one finds the row and submits nothing.
    again = await intake_for(ledger, sink, tmp_path, RequestKind.ACCESS).take_in(parse_message(raw), raw, RECEIVED, 9)
    assert (again.done, again.outcome, again.key) == (MessageState.SUBMITTED, Outcome.SKIPPED, taken.key)
    assert sink.submit_calls == [taken.request_id]

    await intake_for(ledger, sink, tmp_path, RequestKind.ACCESS).moved(again.key)
    row = Inbox(ledger.engine, TEST_KEYRING).get(again.key)
    assert row is not None and (row.state, row.outcome) == (MessageState.MOVED, MessageState.SUBMITTED)


async def test_an_unsure_message_goes_to_triage_never_to_a_request(ledger: Ledger, tmp_path: Path) -> None:
    raw = message("Hello", "A question about my account", sender="jane.doe@example.net").as_bytes()
    sink = RecordingSink(home=tmp_path)
    taken = await intake_for(ledger, sink, tmp_path, None).take_in(parse_message(raw), raw, RECEIVED, 3)
    assert (taken.done, taken.outcome) == (MessageState.TRIAGED, Outcome.TRIAGED)
    assert sink.submit_calls == [] and list(sink.triaged) == [taken.request_id]


def death_intake(ledger: Ledger, sink: RecordingSink, tmp_path: Path) -> MessageIntake:
    """The real classifier: a message about a deceased person is a post_mortem request."""
    from intake.email.classify import classify

    return MessageIntake(sink, inbox=Inbox(ledger.engine, TEST_KEYRING),
                         attachments=AttachmentStore(FileStore(tmp_path / "storage"), TEST_KEYRING),
                         classifier=classify, timezone="Europe/Paris")


async def test_a_death_reported_with_the_persons_address_starts_a_post_mortem_request(
    ledger: Ledger, tmp_path: Path,
) -> None:
    raw = message("Décès de mon père", "Bonjour, mon père Henri Dupont (henri.dupont@example.org) est décédé le "
                  "2 novembre. Merci de supprimer son compte. Écrivez-moi à claire@example.net.",
                  sender="claire@example.net", name="Claire Dupont").as_bytes()
    sink = RecordingSink(home=tmp_path)
    taken = await death_intake(ledger, sink, tmp_path).take_in(parse_message(raw), raw, RECEIVED, 4)
    assert (taken.done, taken.outcome) == (MessageState.SUBMITTED, Outcome.SUBMITTED)
    [submission] = sink.requests.values()
    assert (submission.kind, submission.email, submission.deceased_email, submission.scope) == (
        "post_mortem", "claire@example.net", "henri.dupont@example.org", "closure")


async def test_a_death_reported_without_the_persons_address_goes_to_triage_saying_so(
    ledger: Ledger, tmp_path: Path,
) -> None:
    raw = message("Décès", "Ma mère est décédée. Merci de fermer son compte.", sender="paul@example.net").as_bytes()
    sink = RecordingSink(home=tmp_path)
    taken = await death_intake(ledger, sink, tmp_path).take_in(parse_message(raw), raw, RECEIVED, 5)
    assert (taken.done, taken.outcome) == (MessageState.TRIAGED, Outcome.TRIAGED)
    [item] = sink.triaged.values()
    assert sink.submit_calls == [] and item.reason.startswith("post_mortem (closure): about a deceased person; "
                                                              "the deceased person's address is not")
