"""The supplementary letter's activities against a real ledger (SQLite and PostgreSQL) and a real SMTP server
(aiosmtpd): written from what the ledger holds when it is sent, in the reply's thread, and sent once whatever the
retries or the number of workers (its key comes from the reference alone)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.notices import Mailer
from activities.outside import LINK_GRACE, OutsideActivities, supplement_key
from connectors.outside import OutsideSystem
from dsr.config.settings import SmtpSettings
from dsr.domain.aftercare import PendingAnswers, SupplementInput, SupplementPlan
from dsr.domain.model import AnswerStatus, ConsentAction, ConsentPurpose, Language, OutsideAnswer, RequestKind, Subject
from dsr.domain.outside import OutsideMail, OutsideTaskInput
from dsr.store.ledger import Ledger
from dsr.store.links import DownloadLinks
from dsr.store.tasks import OutsideTasks
from tests.activities.test_notices import Collector, smtp_server
from tests.activities.test_reply_sends import REQUEST, SUBJECT, opened_ledger, sent_events
from tests.harness import TEST_KEYRING
from worker import LedgerSentLog

SYSTEMS = [OutsideSystem(name="mailer", type="processor", contact="privacy@mailer.example", label="Mailing tool"),
           OutsideSystem(name="paper", type="manual", contact="owner@example.com")]
REPLY_ID = "<reply-of-the-request@example.com>"
NOW = datetime(2026, 12, 1, 9, tzinfo=UTC)


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    with opened_ledger(database_url) as opened:
        yield opened


def worker(port: int, ledger: Ledger, *, timezone: str = "UTC") -> OutsideActivities:
    """One worker's activities (each worker builds its own, on the shared ledger)."""
    mailer = Mailer(SmtpSettings(host="127.0.0.1", port=port, timeout_seconds=5), mail_from="privacy@example.com",
                    from_name="Privacy", mail_domain="example.com")
    return OutsideActivities(SYSTEMS, OutsideTasks(ledger.engine, TEST_KEYRING), mailer, DownloadLinks(TEST_KEYRING),
                             public_url="http://127.0.0.1:8000", controller_name="Kestio SAS",
                             sent_log=LedgerSentLog(ledger), timezone=timezone)


def letter(kind: RequestKind = RequestKind.CONSENT_WITHDRAWAL, subject: Subject = SUBJECT) -> SupplementInput:
    purpose = ConsentPurpose(key="newsletter", name_fr="Lettre d'information", name_en="Newsletter",
                             actions={"mailer": ConsentAction(purpose="newsletter", task_en="remove"),
                                      "paper": ConsentAction(purpose="newsletter", task_en="strike")})
    return SupplementInput(request_id=REQUEST, language=Language.EN, plan=SupplementPlan(
        kind=kind, subject=subject, systems=["mailer", "paper"], received=date(2026, 12, 1),
        reply_message_id=REPLY_ID, purposes=[purpose]))


def opened_tasks(ledger: Ledger) -> OutsideTasks:
    tasks = OutsideTasks(ledger.engine, TEST_KEYRING)
    for system in SYSTEMS:
        tasks.open(REQUEST, system.name, system.type, answer_by=NOW + timedelta(days=10), now=NOW, asked_on=NOW.date())
    return tasks


def given(status: AnswerStatus, **fields: object) -> OutsideAnswer:
    return OutsideAnswer(status=status, answered_by="processor", answered_at=NOW, **fields)  # type: ignore[arg-type]


async def test_pending_answers_reads_the_ledger_and_gives_up_at_the_answer_pages_last_day(ledger: Ledger) -> None:
    tasks = opened_tasks(ledger)
    assert tasks.record_answer(REQUEST, "mailer", given(AnswerStatus.NO_ANSWER))  # the operator's: no answer
    assert tasks.record_answer(REQUEST, "paper", given(AnswerStatus.DONE))
    found = await ActivityEnvironment().run(worker(1, ledger).pending_answers, PendingAnswers(REQUEST,
                                                                                              ["mailer", "paper"]))
    assert found.answered == ["paper"]
    assert found.give_up_at is not None
    # The answer page takes an answer until the answer-by date and its grace, never less than the grace from now.
    assert found.give_up_at >= max(NOW + timedelta(days=10), datetime.now(UTC)) + LINK_GRACE - timedelta(seconds=5)
    # The processor's own answer replaces the operator's no_answer, once.
    assert tasks.record_answer(REQUEST, "mailer", given(AnswerStatus.DONE))
    assert not tasks.record_answer(REQUEST, "mailer", given(AnswerStatus.CANNOT, reason="late"))
    found = await ActivityEnvironment().run(worker(1, ledger).pending_answers, PendingAnswers(REQUEST,
                                                                                              ["mailer", "paper"]))
    assert found.answered == ["mailer", "paper"] and found.give_up_at is None


async def test_the_letter_is_sent_once_whatever_the_retries_and_workers(ledger: Ledger) -> None:
    tasks = opened_tasks(ledger)
    tasks.record_answer(REQUEST, "mailer", given(AnswerStatus.DONE))
    tasks.record_answer(REQUEST, "paper", given(AnswerStatus.CANNOT, reason="archived off site"))
    collector = Collector()
    async with smtp_server(collector) as port:
        first = await ActivityEnvironment().run(worker(port, ledger).send_supplement, letter())
        retried = await ActivityEnvironment().run(worker(port, ledger).send_supplement, letter())  # a retry
        other = await ActivityEnvironment().run(worker(port, ledger).send_supplement, letter())  # a second worker
    assert len(collector.envelopes) == 1
    assert first.message_id == retried.message_id == other.message_id
    assert first.message_id == f"<{supplement_key(REQUEST).split('-', 1)[1]}@example.com>"
    assert first.told == {"mailer": "done", "paper": "cannot"}
    [mail] = collector.messages()
    assert mail["In-Reply-To"] == REPLY_ID and mail["Message-ID"] == first.message_id
    assert collector.envelopes[0][1] == [SUBJECT.email]
    text = " ".join(mail.get_body(("plain",)).get_content().split())  # type: ignore[union-attr]
    assert "Done: our processor, who runs this system on our behalf, confirmed it: your data is no longer used " \
           "there for Newsletter." in text
    assert "Not done there: the member of our team in charge of this system told us that it cannot be done" in text
    assert "archived off site" not in text
    assert sent_events(ledger) == [{"template": "supplement", "message_id": first.message_id}]


async def test_an_unanswered_system_cleared_by_the_operator_is_told_as_done_by_our_team(ledger: Ledger) -> None:
    tasks = opened_tasks(ledger)
    tasks.record_answer(REQUEST, "paper", given(AnswerStatus.NO_DATA))
    collector = Collector()
    async with smtp_server(collector) as port:
        gave_up = letter()
        gave_up.cleared = True
        sent = await ActivityEnvironment().run(worker(port, ledger).send_supplement, gave_up)
    assert sent.told == {"mailer": "staff", "paper": "no_data"}
    assert "complaint" not in collector.messages()[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]


async def test_a_cannot_the_operator_saw_to_is_told_as_done_by_our_team(ledger: Ledger) -> None:
    """The operator cleared the residual data (``dsr clear-residuals``): what the system could not do, our team
    did, so the letter says so rather than that it is still being done."""
    tasks = opened_tasks(ledger)
    tasks.record_answer(REQUEST, "mailer", given(AnswerStatus.CANNOT, reason="no such setting"))
    tasks.record_answer(REQUEST, "paper", given(AnswerStatus.DONE))
    collector = Collector()
    async with smtp_server(collector) as port:
        cleared = letter()
        cleared.cleared = True
        sent = await ActivityEnvironment().run(worker(port, ledger).send_supplement, cleared)
    assert sent.told == {"mailer": "staff", "paper": "done"}


async def test_an_address_the_server_refuses_fails_for_good(ledger: Ledger) -> None:
    opened_tasks(ledger)
    collector = Collector(rcpt_reply="550 5.1.1 <{address}>: no such user")
    async with smtp_server(collector) as port:
        with pytest.raises(ApplicationError) as refused:
            await ActivityEnvironment().run(worker(port, ledger).send_supplement, letter(RequestKind.ERASURE))
    assert refused.value.non_retryable and refused.value.type == "NoticeRejected"
    assert SUBJECT.email not in str(refused.value)  # failure messages are stored in plain text
    with pytest.raises(ApplicationError) as invalid:
        await ActivityEnvironment().run(worker(1, ledger).send_supplement,
                                        letter(RequestKind.ERASURE, Subject(email="a@b.example, c@d.example")))
    assert invalid.value.non_retryable and invalid.value.type == "NoticeInvalidAddress"


async def test_a_system_asked_after_midnight_in_paris_is_asked_on_the_controllers_day(ledger: Ledger) -> None:
    """23:30 UTC on 5 December is 00:30 on 6 December in Paris, the controller's day the request was received:
    the task is asked that day, its answer-by day ends at Paris's midnight, and the processor's email says so."""
    now = datetime(2026, 12, 5, 23, 30, tzinfo=UTC)
    collector = Collector()
    async with smtp_server(collector) as port:
        paris = worker(port, ledger, timezone="Europe/Paris")
        opened = await ActivityEnvironment().run(paris.open_outside_task, OutsideTaskInput(
            request_id=REQUEST, system="mailer", kind=RequestKind.ERASURE, subject=SUBJECT,
            deadline=date(2027, 1, 6), now=now))
        assert opened.asked_on == date(2026, 12, 6)  # not UTC's 5 December
        assert opened.answer_by == datetime(2026, 12, 16, 23, tzinfo=UTC)  # the end of 16 December in Paris
        await ActivityEnvironment().run(paris.send_outside_mail, OutsideMail(
            request_id=REQUEST, system="mailer", kind=RequestKind.ERASURE, subject=SUBJECT,
            answer_by=opened.answer_by))
    [mail] = collector.messages()
    text = " ".join(mail.get_body(("plain",)).get_content().split())  # type: ignore[union-attr]
    assert "16 December 2026" in text
    assert "The link works until 30 December 2026" in text  # 14 days after the answer-by day, in Paris


async def test_the_answer_page_closes_at_the_end_of_a_day_of_the_controllers_calendar(ledger: Ledger) -> None:
    """Fourteen days after the answer-by day, across the change to summer time (28 March 2027 in Paris): the
    answer page's last day ends at Paris's midnight (22:00 UTC in summer), not an hour later."""
    tasks = OutsideTasks(ledger.engine, TEST_KEYRING)
    tasks.open(REQUEST, "mailer", "processor", answer_by=datetime(2027, 3, 20, 23, tzinfo=UTC),  # end of 20 March
               now=NOW, asked_on=NOW.date())
    found = await ActivityEnvironment().run(worker(1, ledger, timezone="Europe/Paris").pending_answers,
                                            PendingAnswers(REQUEST, ["mailer"]))
    assert found.give_up_at == datetime(2027, 4, 3, 22, tzinfo=UTC)  # the end of 3 April in Paris
