"""Withdrawals of consent (Art. 7(3)) on the time-skipping server: the purposes the profile maps, carried out the
same day without an identity check, remembered as a blind index, answered per system in both languages."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

import pytest
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError

from connectors.base import CONSENT, OperationJob
from dsr.config.settings import Settings
from dsr.domain.model import (
    ConnectorOutcome,
    ConsentAction,
    Outcome,
    RecordAction,
    RecordReport,
    RequestInput,
    RequestStatus,
    ResidualsCleared,
    Stage,
)
from dsr.store.links import ConsentLinks
from dsr.store.suppressions import SuppressionList
from intake.submission import Submission, SubmissionError, prepare, start
from tests.harness import TEST_KEYRING, ScriptedConnector, keep_history, text_of
from tests.workflows.support import SUBJECT_EMAIL, SUBJECT_NAME, Engine, clear_residuals, wait_for_event
from workflows.request import DataSubjectRequest

PROFILE = '''
[controller]
legal_name = "Kestio SAS"

[[controller.purposes]]
key = "newsletter"
marketing = true
name = { fr = "Lettre d'information", en = "Newsletter" }
legal_basis = "consent"
[controller.purposes.withdrawal]
crm = { subscriptions = ["Newsletter"] }
billing = { residual = "untick the newsletter box in the billing tool" }

[[controller.purposes]]
key = "partner_offers"
marketing = true
name = { fr = "Offres des partenaires", en = "Partner offers" }
legal_basis = "consent"
[controller.purposes.withdrawal]
crm = { subscriptions = ["Partner offers"] }

[[controller.purposes]]
name = "Orders"
legal_basis = "contract"
'''


@dataclass
class ConsentConnector(ScriptedConnector):
    """A scripted system that can withdraw consent (like HubSpot's subscription types): remembers what it was
    asked and what is withdrawn already, as the real one reads the statuses back."""

    asked: list[list[ConsentAction]] = field(default_factory=list)
    withdrawn: set[str] = field(default_factory=set)

    async def withdraw_consent(self, job: OperationJob) -> ConnectorOutcome:
        self._fail_if_scripted("withdraw_consent", job.request_id)
        self.asked.append(list(job.consent))
        report = []
        for action in job.consent:
            done = action.purpose in self.withdrawn
            self.withdrawn.add(action.purpose)
            report.append(RecordReport(CONSENT, action.purpose,
                                       RecordAction.UNCHANGED if done else RecordAction.WITHDRAWN,
                                       note=f"{', '.join(action.subscriptions)}: unsubscribed"))
        return ConnectorOutcome(connector=self.name, found=len(report), report=report,
                                counts={"withdrawn": len(report)})


@pytest.fixture
def connectors() -> list[ScriptedConnector]:
    return [ConsentConnector("crm"), ScriptedConnector("billing"), ScriptedConnector("shop")]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The intake reads the consent purposes from dsr.toml when a withdrawal is submitted."""
    Path(settings.config_file).write_text(PROFILE, encoding="utf-8")
    return settings


async def submit(engine: Engine, purposes: list[str], *, language: str = "fr") -> tuple[RequestInput, WorkflowHandle]:
    now = await engine.env.get_current_time()
    request = prepare(Submission(kind="consent_withdrawal", email=SUBJECT_EMAIL, name=SUBJECT_NAME,
                                 language=language, purposes=purposes), engine.settings, now=now)
    return request, await start(engine.client, request, task_queue=engine.task_queue)


async def until(handle: WorkflowHandle, check: Callable[[RequestStatus], bool], tries: int = 150) -> RequestStatus:
    for _ in range(tries):
        try:
            current: RequestStatus = await handle.query(DataSubjectRequest.status)
            if check(current):
                return current
        except RPCError:  # the first workflow task has not run yet
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"never reached the expected state: {await handle.query(DataSubjectRequest.status)}")


def bodies(engine: Engine) -> list[tuple[str, str]]:
    return [(str(m["Subject"]), " ".join(text_of(m).split()))
            for m in engine.mail.to(SUBJECT_EMAIL)]


@pytest.mark.parametrize(("language", "subject_line", "done", "by_hand", "lawful"), [
    ("fr", "Votre consentement est retiré", "Lettre d'information : fait, votre consentement est retiré",
     "notre équipe y met fin manuellement", "ne compromet pas la licéité du traitement"),
    ("en", "Your consent is withdrawn", "Newsletter: done, your consent is withdrawn in this system",
     "our team stops it by hand", "does not affect the lawfulness of the processing"),
])
async def test_a_withdrawal_is_carried_out_the_same_day_in_every_mapped_system(
    engine: Engine, language: str, subject_line: str, done: str, by_hand: str, lawful: str,
) -> None:
    request, handle = await submit(engine, ["newsletter"], language=language)
    assert [p.key for p in request.purposes] == ["newsletter"]
    current = await until(handle, lambda s: s.stage == Stage.CLOSED)
    assert current.outcome == Outcome.FULFILLED and current.identity_confirmed is False
    assert current.purposes == ["newsletter"]
    crm, billing, shop = engine.connectors
    assert isinstance(crm, ConsentConnector)
    assert [[(a.purpose, a.subscriptions) for a in asked] for asked in crm.asked] == [[("newsletter",
                                                                                       ["Newsletter"])]]
    assert billing.calls == [] and shop.calls == []  # billing: a residual line; shop: not mapped, not run
    assert sorted(current.connectors, key=lambda c: c.connector)[0].connector == "billing"
    assert {c.connector for c in current.connectors} == {"crm", "billing"}
    assert current.residuals == ["billing: consent newsletter - untick the newsletter box in the billing tool"]
    await wait_for_event(engine, request, "reply_sent")  # the ledger's last batch may trail the stage
    trail = [e.event for e in engine.ledger.events(request.request_id)]
    assert "identity_requested" not in trail and "identity_not_required" in trail
    assert trail.index("consent_withdrawn") < trail.index("connector_done") < trail.index("reply_sent")
    # The ledger keeps which purposes this address withdrew, as a blind index (any case of the address).
    assert list(SuppressionList(engine.ledger).withdrawn(SUBJECT_EMAIL.upper())) == ["newsletter"]

    mails = bodies(engine)
    assert len(mails) == 2  # the acknowledgement and the reply: no identity request
    assert ("aussi simple que de le donner (article 7, paragraphe 3, du RGPD)" if language == "fr"
            else "as easy as giving it (Article 7(3) GDPR)") in mails[0][1]  # the acknowledgement says why
    subject, reply = mails[-1]
    assert subject.startswith(subject_line) and request.request_id in subject
    assert done in reply and by_hand in reply and lawful in reply
    assert SUBJECT_NAME not in reply  # identity never confirmed: greeted without the name
    # Every email to the subject carries the one-click link, in its footer and as RFC 8058 headers; it opens for
    # the subject's address and the email's language.
    links = ConsentLinks(TEST_KEYRING)
    for message in engine.mail.to(SUBJECT_EMAIL):
        header = str(message["List-Unsubscribe"])
        assert re.fullmatch(r"<https?://[^>]+/consent/[^>]+>", header)
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        url = header[1:-1]
        assert url in text_of(message)
        token = unquote(url.rsplit("/consent/", 1)[1])
        assert links.open(token, now=datetime.now(UTC)) == (SUBJECT_EMAIL, language)
    await clear_residuals(engine.client, handle.id, ResidualsCleared(cleared_by="operator:alice"))
    await handle.result()
    await keep_history(handle, f"consent_withdrawal_{language}")


@pytest.mark.slow
async def test_a_second_withdrawal_says_what_was_already_withdrawn(engine: Engine) -> None:
    _, handle = await submit(engine, ["partner_offers"], language="en")
    await until(handle, lambda s: s.stage == Stage.CLOSED)
    await handle.result()
    # Then every purpose (none named): only the mapped systems run, and partner offers is "already" withdrawn.
    second, handle = await submit(engine, [], language="en")
    assert [p.key for p in second.purposes] == ["newsletter", "partner_offers"]
    await until(handle, lambda s: s.stage == Stage.CLOSED)
    _, reply = bodies(engine)[-1]
    assert "Partner offers (you had already withdrawn this consent before this request)" in reply
    assert "Newsletter (you had already" not in reply
    assert "Partner offers: nothing left to do, this system no longer used your data for it" in reply
    details = [e.details for e in engine.ledger.events(second.request_id) if e.event == "consent_withdrawn"]
    assert details == [{"purposes": "newsletter,partner_offers", "already_withdrawn": "partner_offers"}]
    assert sorted(SuppressionList(engine.ledger).withdrawn(SUBJECT_EMAIL)) == ["newsletter", "partner_offers"]


def test_a_withdrawal_names_purposes_the_profile_bases_on_consent(settings: Settings) -> None:
    for purposes, message in ((["orders"], "purposes must be among newsletter, partner_offers"),
                              (["nope"], "purposes must be among")):
        with pytest.raises(SubmissionError, match=message):
            prepare(Submission(kind="consent_withdrawal", email=SUBJECT_EMAIL, purposes=purposes), settings)
    with pytest.raises(SubmissionError, match="only for consent_withdrawal"):
        prepare(Submission(kind="access", email=SUBJECT_EMAIL, purposes=["newsletter"]), settings)
    chosen = prepare(Submission(kind="consent_withdrawal", email=SUBJECT_EMAIL, purposes=["ALL"]), settings)
    assert [p.key for p in chosen.purposes] == ["newsletter", "partner_offers"]
