"""The intake app over real HTTP against a real Temporal dev server and worker, with a real SMTP sink.

API submissions, duplicates, rate limits, the Zendesk and generic ticket webhooks, identity confirmation
by link and by code, triage of an unclassified email: what is created is checked in Temporal, in the
ledger and in the mail the subject receives; what is refused must create nothing.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx
import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from dsr.config.settings import Settings, SmtpSettings
from dsr.domain.model import (
    Correspondence,
    IdentityConfirmation,
    IdentityMethod,
    Language,
    RequestKind,
    RequestStatus,
    TriageDecision,
    TriageStatus,
    Withdrawal,
)
from dsr.store.ledger import Ledger, LedgerEvent
from dsr.web.serve import serve_app
from intake.server import build_intake_app
from intake.service import IntakeService, TriageItem
from tests.harness import TEST_KEYRING, MailSink, attachments_of, exports_of, free_port, http_client, migrated, text_of
from tests.servers import validated_once
from worker import build_worker
from workflows.request import DataSubjectRequest

if TYPE_CHECKING:
    from dsr.store.attachments import AttachmentStore
    from intake.email.poller import Mailbox
    from tests.dovecot import Dovecot, ImapUser

T = TypeVar("T")

ZENDESK_SECRET = "zendesk-test-secret"
TICKET_SECRET = "ticket-test-secret"


@dataclass
class Intake:
    client: Client
    http: httpx.AsyncClient
    url: str
    settings: Settings
    ledger: Ledger
    mail: MailSink
    service: IntakeService


@pytest.fixture
def identity_method() -> str:
    """``DSR_IDENTITY_METHOD`` of the intake under test (a test parametrizes it to change it)."""
    return "email"


@pytest.fixture
def api_token() -> str | None:
    """``DSR_API_TOKEN`` of the intake under test (none: the API is open; a test parametrizes it to set one)."""
    return None


@pytest_asyncio.fixture
async def intake(
    dev_server: WorkflowEnvironment, mail: MailSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    identity_method: str, api_token: str | None,
) -> AsyncIterator[Intake]:
    port = free_port()
    if api_token:
        monkeypatch.setenv("DSR_API_TOKEN", api_token)
    else:
        monkeypatch.delenv("DSR_API_TOKEN", raising=False)
    monkeypatch.setenv("DSR_ZENDESK_WEBHOOK_SECRET", ZENDESK_SECRET)
    monkeypatch.setenv("DSR_TICKET_WEBHOOK_SECRET", TICKET_SECRET)
    settings = Settings.from_env({
        "DSR_HOME": str(tmp_path), "DSR_OPERATOR_EMAIL": "dpo@example.com", "DSR_MAIL_FROM": "privacy@example.com",
        "DSR_INTAKE_PORT": str(port), "DSR_RATE_PER_CLIENT_HOUR": "6", "DSR_TICKET_TRUST_AUTHENTICATED": "true",
        "DSR_IDENTITY_METHOD": identity_method,
    })
    settings = replace(settings, smtp=SmtpSettings(host="127.0.0.1", port=mail.port),
                       task_queue=f"intake-{uuid.uuid4()}")
    ledger = Ledger(migrated(settings.database_url), TEST_KEYRING)
    exports = exports_of(settings)
    app, service = build_intake_app(settings, TEST_KEYRING, ledger, exports, dev_server.client)
    server = await serve_app(app, host="127.0.0.1", port=port)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
            async with build_worker(dev_server.client, settings, ledger, executor=executor, exports=exports,
                                    workflow_runner=validated_once()), \
                    http_client(base_url=settings.intake_url, timeout=30) as http:
                yield Intake(dev_server.client, http, settings.intake_url, settings, ledger, mail, service)
    finally:
        await server.stop()
        for request in ledger.requests():
            handle = dev_server.client.get_workflow_handle(request.request_id)
            if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                await handle.terminate("test over")
        ledger.close()


async def wait_for_mail(mail: MailSink, count: int, *, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while len(mail.messages) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} emails, got {[m['Subject'] for _, m in mail.messages]}")
        await asyncio.sleep(0.1)


def found(pattern: str, text: str) -> str:
    """The first group of ``pattern`` in ``text``; fails the test when the text does not have it."""
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not found"
    return match.group(1)


def bodies(mail: MailSink, to: str) -> list[str]:
    return [text_of(m) for rcpt, m in mail.messages if to in rcpt]


async def status(intake: Intake, request_id: str) -> RequestStatus:
    handle: WorkflowHandle[DataSubjectRequest, RequestStatus] = intake.client.get_workflow_handle_for(
        DataSubjectRequest.run, request_id)
    return await handle.query(DataSubjectRequest.status)


async def poll(check: Callable[[], Awaitable[T | None]], *, seconds: float = 30) -> T:
    """The first truthy answer of ``check``, asked every 0.2 s for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition never met")
        await asyncio.sleep(0.2)


def reference_of(intake: Intake, email: str, kind: str) -> str:
    """The reference of the subject's open request of ``kind``: the API no longer tells it (issue 12, finding 4);
    the subject reads it in our emails, a test in the ledger."""
    from dsr.domain.model import RequestKind

    claim = intake.ledger.claim_of(email, RequestKind(kind))
    assert claim is not None, f"no open {kind} request for {email}"
    return claim.request_id


async def submit_api(intake: Intake, **overrides: object) -> str:
    """POST /api/requests (202 expected) and the reference of the request that holds the submission."""
    body = api_body(**overrides)
    response = await intake.http.post("/api/requests", json=body)
    assert response.status_code == 202, response.text
    return reference_of(intake, str(body["email"]), str(body["kind"]))


def api_body(**overrides: object) -> dict[str, object]:
    """The JSON body of an API request, with ``overrides`` (any JSON value: the API's refusals are tested too)."""
    body: dict[str, object] = {"kind": "access", "email": "camille.durand@example.org", "name": "Camille Durand",
                               "language": "fr"}
    body.update(overrides)
    return body


# --- the API ---------------------------------------------------------------------------------------------


async def test_api_request_is_started_acknowledged_and_confirmed_by_the_link(intake: Intake) -> None:
    response = await intake.http.post("/api/requests", json=api_body())
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert set(accepted) == {"status", "kind", "received", "deadline", "extended_deadline"}  # no reference
    assert accepted["deadline"] > accepted["received"]
    reference = reference_of(intake, "camille.durand@example.org", "access")
    assert re.fullmatch(r"dsr-\d{4}-\d{2}-[0-9A-Z]{6}", reference)
    assert intake.ledger.get_request(reference) is not None

    # The acknowledgement and the identity request go to the subject; the latter carries link and code.
    await wait_for_mail(intake.mail, 2)
    text = "\n".join(bodies(intake.mail, "camille.durand@example.org"))
    link = re.search(rf"{re.escape(intake.url)}/verify/(\S+)", text)
    code = re.search(r"\b([2-9A-Z]{4}-[2-9A-Z]{4})\b", text.split("code", 1)[-1])
    assert link and code, text
    assert (await status(intake, reference)).identity_confirmed is False

    # Opening the link does not confirm (mail scanners open links); the button does.
    page = await intake.http.get(f"/verify/{link.group(1)}", headers={"Accept-Language": "fr"})
    assert page.status_code == 200 and reference in page.text and "<script" not in page.text
    assert (await status(intake, reference)).identity_confirmed is False
    form = found(r'name="form" value="([^"]+)"', page.text)
    confirmed = await intake.http.post(f"/verify/{link.group(1)}", data={"form": form})
    assert confirmed.status_code == 200 and "confirmée" in confirmed.text
    assert (await status(intake, reference)).identity_confirmed
    again = await intake.http.post(f"/verify/{link.group(1)}", data={"form": form})
    assert again.status_code == 200 and "déjà confirmée" in again.text


async def test_same_subject_and_kind_is_attached_and_told_not_started_twice(intake: Intake) -> None:
    """Issue 12 finding 4: the second submission gets the very receipt a new request gets (no reference, no
    "attached", its own dates); the subject is told of the attachment by email only."""
    first = await intake.http.post("/api/requests", json=api_body(kind="erasure"))
    second = await intake.http.post("/api/requests", json=api_body(kind="erasure", email="CAMILLE.Durand@example.org"))
    assert first.status_code == second.status_code == 202
    assert second.json() == first.json()
    assert set(second.json()) == {"status", "kind", "received", "deadline", "extended_deadline"}
    reference = reference_of(intake, "camille.durand@example.org", "erasure")
    assert reference not in second.text
    other_kind = await submit_api(intake, kind="access")
    assert other_kind != reference
    assert len(intake.ledger.requests()) == 2
    events = await poll(lambda: _events(intake, reference, "duplicate_attached"))
    assert events
    await poll(lambda: _sent(intake, reference, "duplicate"))


async def _events(intake: Intake, request_id: str, name: str) -> list[LedgerEvent]:
    return [e for e in intake.ledger.events(request_id) if e.event == name]


async def _sent(intake: Intake, request_id: str, template: str) -> list[LedgerEvent]:
    return [e for e in intake.ledger.events(request_id)
            if e.event == "notice_sent" and e.details.get("template") == template]


@pytest.mark.parametrize(
    ("content", "headers", "status", "field"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400, None),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400, None),
        (json.dumps(api_body(kind="forget-me")).encode(), {"Content-Type": "application/json"}, 422, "kind"),
        (json.dumps(api_body(email="not-an-address")).encode(), {"Content-Type": "application/json"}, 422, "email"),
        (json.dumps(api_body(email="a@b.org\r\nBcc: x@y.org")).encode(), {"Content-Type": "application/json"},
         422, "email"),
        (json.dumps(api_body(extra="x")).encode(), {"Content-Type": "application/json"}, 422, "extra"),
        (json.dumps(api_body(kind="rectification")).encode(), {"Content-Type": "application/json"}, 422, None),
        (json.dumps(api_body(details="x" * 70_000)).encode(), {"Content-Type": "application/json"}, 413, None),
        (json.dumps(api_body()).encode(), {"Content-Type": "text/plain"}, 415, None),
        (b"\xff\xfe", {"Content-Type": "application/json"}, 400, None),
    ],
)
async def test_bad_api_input_is_a_clear_4xx_and_creates_nothing(
    intake: Intake, content: bytes, headers: dict, status: int, field: str | None
) -> None:
    response = await intake.http.post("/api/requests", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]
    if field:
        assert response.json().get("field", "").startswith(field) or field in response.json()["error"]
    assert intake.ledger.requests() == []


@pytest.mark.slow
async def test_api_rectification_with_changes_runs_and_with_text_only_waits_for_staff(intake: Intake) -> None:
    # Subjects of their own: earlier tests' requests of Camille, on the same server, are no business of these.
    paired = await submit_api(intake, kind="rectification", email="lina.roux@example.org", changes={"city": " Lyon "})
    text_only = await submit_api(intake, kind="rectification", email="noa.bernard@example.org",
                                 details="Mon adresse a changé, je vis à Lyon maintenant.")
    for reference in (paired, text_only):
        await intake.client.get_workflow_handle(reference).execute_update(
            DataSubjectRequest.confirm_identity, IdentityConfirmation(method=IdentityMethod.EMAIL, confirmed_by="t"))
    waiting = await poll(lambda: _status_if(intake, text_only, lambda s: s.awaiting_changes))
    assert waiting.stage.value == "needs_attention"
    done = await poll(lambda: _status_if(intake, paired, lambda s: s.outcome is not None))
    assert done.outcome is not None and done.outcome.value == "fulfilled" and not done.awaiting_changes


async def _status_if(intake: Intake, reference: str,
                     check: Callable[[RequestStatus], object]) -> RequestStatus | None:
    state = await status(intake, reference)
    return state if check(state) else None


@pytest.mark.parametrize(("changes", "message"), [
    ({"city": "   "}, "no correct value given for city"),
    ({"iban": "FR76"}, "cannot rectify iban"),
    ({"email": "camille@"}, "the new email is not a valid address"),
])
async def test_api_changes_that_cannot_be_applied_are_422_on_changes(intake: Intake, changes: dict,
                                                                       message: str) -> None:
    response = await intake.http.post("/api/requests", json=api_body(kind="rectification", changes=changes))
    assert response.status_code == 422, response.text
    assert message in response.json()["error"] and response.json()["field"] == "changes"
    assert intake.ledger.requests() == []


@pytest.mark.slow
@pytest.mark.parametrize("api_token", ["partner-token"])
async def test_api_submission_received_long_ago_is_warned_and_acknowledged_with_an_apology(intake: Intake) -> None:
    intake.http.headers["Authorization"] = "Bearer partner-token"
    # A request received by a partner desk 40 days ago and passed on only now: the month is over.
    received = (datetime.now(UTC) - timedelta(days=40)).isoformat()
    response = await intake.http.post("/api/requests", json=api_body(received_at=received))
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert "deadline passed" in accepted["warning"] and accepted["deadline"] in accepted["warning"]
    assert "camille" not in accepted["warning"].lower()
    await wait_for_mail(intake.mail, 1)
    text = "\n".join(bodies(intake.mail, "camille.durand@example.org"))
    assert "a expiré le" in text and "excuser de ce retard" in text, text  # no date in the past promised
    # The operators hear of it at once too: the ledger records the request overdue, and they are sent the escalation.
    late = reference_of(intake, "camille.durand@example.org", "access")
    assert await poll(lambda: _events(intake, late, "overdue"))
    assert await poll(lambda: _sent(intake, late, "operator_escalation"))

    # Received yesterday: plenty of time, no warning; in the future, or without its offset: refused.
    fresh = await intake.http.post("/api/requests", json=api_body(
        kind="erasure", received_at=(datetime.now(UTC) - timedelta(days=1)).isoformat()))
    assert fresh.status_code == 202 and "warning" not in fresh.json()
    future = await intake.http.post("/api/requests", json=api_body(
        kind="portability", received_at=(datetime.now(UTC) + timedelta(days=2)).isoformat()))
    assert future.status_code == 422 and future.json()["field"] == "received_at"
    ancient = await intake.http.post("/api/requests", json=api_body(kind="portability",
                                                                  received_at="1802-01-01T00:00:00Z"))
    assert ancient.status_code == 422 and ancient.json()["field"] == "received_at"
    seconds = await intake.http.post("/api/requests", json=api_body(kind="portability", received_at=0))
    assert seconds.status_code == 422 and seconds.json()["field"] == "received_at"
    naive = await intake.http.post("/api/requests",
                                   json=api_body(kind="portability", received_at="2026-01-05T10:00:00"))
    assert naive.status_code == 422 and naive.json()["field"] == "received_at"
    assert len(intake.ledger.requests()) == 2


async def test_an_open_api_does_not_take_a_receipt_date(intake: Intake) -> None:
    # Without DSR_API_TOKEN anyone may call the API: the receipt date, the controller's evidence, is not theirs to set.
    received = (datetime.now(UTC) - timedelta(days=40)).isoformat()
    response = await intake.http.post("/api/requests", json=api_body(received_at=received))
    assert response.status_code == 422 and response.json()["field"] == "received_at"
    assert "DSR_API_TOKEN" in response.json()["error"]
    assert intake.ledger.requests() == []


async def test_ticket_webhook_received_long_ago_is_warned(intake: Intake) -> None:
    received = (datetime.now(UTC) - timedelta(days=45)).replace(hour=12, minute=0).isoformat()  # same day in Paris
    body = json.dumps({"ticket_id": "T-77", "email": "sam.roux@example.org", "kind": "access",
                       "received_at": received}).encode()
    response = await intake.http.post("/webhooks/ticket", content=body, headers=ticket_headers(body))
    assert response.status_code == 202, response.text
    assert "deadline passed" in response.json()["warning"]
    # Zendesk too (the trigger may send the ticket's creation time).
    body = zendesk_body(ticket_id="4522", received_at=received)
    response = await intake.http.post("/webhooks/zendesk", content=body, headers=zendesk_headers(body))
    assert response.status_code == 202, response.text
    assert "deadline passed" in response.json()["warning"]
    assert response.json()["received"] == received[:10]


async def test_rate_limit_per_client_answers_429_with_retry_after(intake: Intake) -> None:
    answers = [
        (await intake.http.post("/api/requests", json=api_body(email=f"p{i}@example.org"))).status_code
        for i in range(7)
    ]
    assert answers[:6] == [202] * 6 and answers[6] == 429
    refused = await intake.http.post("/api/requests", json=api_body(email="late@example.org"))
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert len(intake.ledger.requests()) == 6


@pytest.mark.slow
async def test_rate_limit_per_subject_counts_every_channel(intake: Intake) -> None:
    kinds = ["access", "erasure", "portability", "access", "erasure"]
    for kind in kinds:  # 5 per day for one subject (duplicates count too: they cost a notice each)
        assert (await intake.http.post("/api/requests", json=api_body(kind=kind))).status_code == 202
    limited = await intake.http.post("/api/requests", json=api_body(kind="portability"))
    assert limited.status_code == 429 and "subject" in limited.json()["error"]


async def test_openapi_schema_is_served(intake: Intake) -> None:
    schema = (await intake.http.get("/openapi.json")).json()
    assert {"/api/requests", "/webhooks/zendesk", "/webhooks/ticket"} <= set(schema["paths"])
    body = schema["paths"]["/api/requests"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "kind" in json.dumps(body)


# --- support desks -----------------------------------------------------------------------------------------


def zendesk_headers(body: bytes, *, at: datetime | None = None, secret: str = ZENDESK_SECRET) -> dict[str, str]:
    stamp = (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    signature = base64.b64encode(hmac.new(secret.encode(), stamp.encode() + body, hashlib.sha256).digest())
    return {"Content-Type": "application/json", "X-Zendesk-Webhook-Signature": signature.decode(),
            "X-Zendesk-Webhook-Signature-Timestamp": stamp}


def zendesk_body(**overrides: str) -> bytes:
    # A ticket's request id is a keyed hash of the ticket (the same test key ring everywhere) and the dev server is
    # shared by the module: two tests that accept the same ticket id name one workflow id, and the second finds the
    # first's closed workflow (its worker gone). Each accepting test therefore gives its own ticket_id.
    body = {"ticket_id": "4521", "requester_email": "lea.petit@example.org", "requester_name": "Léa Petit",
            "requester_locale": "fr-FR", "tags": "vip dsr_erasure", "description": "Merci de supprimer mon compte."}
    body.update(overrides)
    return json.dumps(body).encode()


async def test_zendesk_webhook_starts_a_request_bound_to_its_ticket(intake: Intake) -> None:
    body = zendesk_body()
    response = await intake.http.post("/webhooks/zendesk", content=body, headers=zendesk_headers(body))
    assert response.status_code == 202, response.text
    reference = reference_of(intake, "lea.petit@example.org", "erasure")
    assert reference not in response.text
    state = await poll(lambda: _status_or_none(intake, reference))
    assert state.kind.value == "erasure" and state.channel.value == "support_desk"
    assert state.language == Language.FR and state.identity == IdentityMethod.EMAIL  # trust is off for Zendesk

    # Zendesk retries a delivery it thinks failed: same ticket, new timestamp, so a new signature.
    retried = await intake.http.post("/webhooks/zendesk", content=body,
                                     headers=zendesk_headers(body, at=datetime.now(UTC) + timedelta(seconds=2)))
    assert retried.status_code == 202 and retried.json() == response.json()
    assert len(intake.ledger.requests()) == 1


async def _status_or_none(intake: Intake, reference: str) -> RequestStatus | None:
    try:
        return await status(intake, reference)
    except Exception:
        return None


@pytest.mark.parametrize("case", ["no_signature", "wrong_secret", "tampered", "stale", "future", "bad_time"])
async def test_zendesk_webhook_refuses_unsigned_tampered_or_stale_deliveries(intake: Intake, case: str) -> None:
    body = zendesk_body()
    headers = {
        "no_signature": {"Content-Type": "application/json"},
        "wrong_secret": zendesk_headers(body, secret="guess"),
        "tampered": zendesk_headers(zendesk_body(requester_email="attacker@example.org")),
        "stale": zendesk_headers(body, at=datetime.now(UTC) - timedelta(minutes=6)),
        "future": zendesk_headers(body, at=datetime.now(UTC) + timedelta(minutes=6)),
        "bad_time": {**zendesk_headers(body), "X-Zendesk-Webhook-Signature-Timestamp": "yesterday"},
    }[case]
    response = await intake.http.post("/webhooks/zendesk", content=body, headers=headers)
    assert response.status_code == 401 and response.json()["error"]
    assert intake.ledger.requests() == []


async def test_zendesk_replay_and_missing_kind_are_refused(intake: Intake) -> None:
    body = zendesk_body(tags="vip", ticket_id="77")
    headers = zendesk_headers(body)
    first = await intake.http.post("/webhooks/zendesk", content=body, headers=headers)
    assert first.status_code == 422 and first.json()["field"] == "kind"
    replay = await intake.http.post("/webhooks/zendesk", content=body, headers=headers)
    assert replay.status_code == 409
    two_kinds = zendesk_body(tags="dsr_access dsr_erasure", ticket_id="78")
    assert (await intake.http.post("/webhooks/zendesk", content=two_kinds,
                                   headers=zendesk_headers(two_kinds))).status_code == 422
    assert intake.ledger.requests() == []


def ticket_headers(body: bytes, *, at: int | None = None, secret: str = TICKET_SECRET) -> dict[str, str]:
    stamp = str(at or int(time.time()))
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-DSR-Timestamp": stamp, "X-DSR-Signature": f"sha256={digest}"}


async def test_generic_ticket_from_a_signed_in_customer_is_trusted_when_configured(intake: Intake) -> None:
    body = json.dumps({"desk": "freshdesk", "ticket_id": "FD-1009", "email": "sam.hill@example.com",
                       "name": "Sam Hill", "kind": "access", "language": "en", "authenticated": True}).encode()
    response = await intake.http.post("/webhooks/ticket", content=body, headers=ticket_headers(body))
    assert response.status_code == 202, response.text
    state = await poll(lambda: _status_or_none(intake, reference_of(intake, "sam.hill@example.com", "access")))
    assert state.identity == IdentityMethod.TRUSTED and state.language == Language.EN
    bad = await intake.http.post("/webhooks/ticket", content=body, headers=ticket_headers(body, secret="nope"))
    assert bad.status_code == 401


# --- identity by code ----------------------------------------------------------------------------------------


async def test_code_confirmation_counts_wrong_codes_then_locks(intake: Intake) -> None:
    reference = await submit_api(intake, language="en")
    await wait_for_mail(intake.mail, 2)
    text = "\n".join(bodies(intake.mail, "camille.durand@example.org"))
    code = found(r"confirmation code: ([2-9A-Z]{4}-[2-9A-Z]{4})", text)
    wrong = "2222-2222" if code != "2222-2222" else "3333-3333"
    for _ in range(4):
        answer = await intake.http.post("/verify", data={"reference": reference, "code": wrong},
                                        headers={"Accept-Language": "en"})
        assert answer.status_code == 403 and "do not match" in answer.text
    typed = code.replace("-", "").lower()  # any case, with or without the dash
    right = await intake.http.post("/verify", data={"reference": reference.lower(), "code": typed},
                                   headers={"Accept-Language": "en"})
    assert right.status_code == 200 and "confirmed" in right.text
    assert (await status(intake, reference)).identity_confirmed

    other = await submit_api(intake, kind="erasure")
    for _ in range(5):
        await intake.http.post("/verify", data={"reference": other, "code": wrong})
    locked = await intake.http.post("/verify", data={"reference": other, "code": wrong})
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("identity_method", ["document"])
async def test_a_document_request_is_not_confirmed_by_the_right_code(intake: Intake) -> None:
    """Issue 12 finding 1: no code is sent under the document policy, and the right one (derived with the
    key, as an attacker who guessed it would type it) gets the same page as a wrong one: no confirmation."""
    from dsr.store.links import IdentityLinks

    reference = await submit_api(intake, language="en")
    await wait_for_mail(intake.mail, 2)
    text = "\n".join(bodies(intake.mail, "camille.durand@example.org"))
    assert "/verify" not in text and "confirmation code" not in text
    code = IdentityLinks(TEST_KEYRING, ttl=timedelta(days=30)).request_code(reference)
    answer = await intake.http.post("/verify", data={"reference": reference, "code": code},
                                    headers={"Accept-Language": "en"})
    assert answer.status_code == 403 and "do not match" in answer.text
    assert (await status(intake, reference)).identity_confirmed is False
    assert not await _events(intake, reference, "identity_confirmed")


@pytest.mark.slow
async def test_wrong_codes_close_the_code_for_good_and_the_operator_is_told_once(intake: Intake) -> None:
    """Issue 12 finding 2: 10 wrong codes in all (whatever the lockouts' windows) close the request's code, even
    the right one then answers "do not match"; the ledger records it and the operator gets one alert; the
    emailed link still confirms. An erasure is sent no code, and its right code is refused."""
    reference = await submit_api(intake, language="en")
    await wait_for_mail(intake.mail, 2)
    text = "\n".join(bodies(intake.mail, "camille.durand@example.org"))
    code = found(r"confirmation code: ([2-9A-Z]{4}-[2-9A-Z]{4})", text)
    link = found(rf"{re.escape(intake.url)}/verify/(\S+)", text)
    wrong = "2222-2222" if code != "2222-2222" else "3333-3333"
    guards = intake.service.guards
    for attempt in range(10):
        if attempt == 5:  # the lockout of the first five is served: a day later, five more
            with intake.ledger.engine.begin() as connection:
                connection.exec_driver_sql("UPDATE attempt_limits SET locked_until = NULL, failures = 0")
        answer = await intake.http.post("/verify", data={"reference": reference, "code": wrong},
                                        headers={"Accept-Language": "en"})
        assert answer.status_code == 403 and "do not match" in answer.text, attempt
    assert guards.wrong_answers("verify", reference) == (10, True)
    with intake.ledger.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE attempt_limits SET locked_until = NULL, failures = 0")
    right = await intake.http.post("/verify", data={"reference": reference, "code": code},
                                   headers={"Accept-Language": "en"})
    assert right.status_code == 403 and "do not match" in right.text
    assert (await status(intake, reference)).identity_confirmed is False
    [locked] = await poll(lambda: _events(intake, reference, "code_locked"))
    assert locked.details == {"page": "verify", "wrong": "10"}
    await poll(lambda: _sent(intake, reference, "operator_code_locked"))
    alert = [m for rcpt, m in intake.mail.messages if "dpo@example.com" in rcpt and "wrong codes" in str(m["Subject"])]
    assert len(alert) == 1 and "camille" not in alert[0].as_string().lower()
    # The link still works.
    page = await intake.http.get(f"/verify/{link}")
    form = found(r'name="form" value="([^"]+)"', page.text)
    assert (await intake.http.post(f"/verify/{link}", data={"form": form})).status_code == 200
    assert (await status(intake, reference)).identity_confirmed

    # An erasure: the link only.
    erasure = {"reference": await submit_api(intake, kind="erasure", language="en")}
    # Its identity request, waited for by name: counting mails raced the first request's reply (sent once its
    # identity was confirmed above), which made the count with the erasure's acknowledgement alone.
    await _identity_request_to(intake, "camille.durand@example.org", erasure["reference"])
    mails = [m for _, m in intake.mail.messages if erasure["reference"] in str(m["Subject"])]
    told = "\n".join(text_of(m) for m in mails)
    assert "/verify/" in told and "confirmation code" not in told
    from dsr.store.links import IdentityLinks

    erasure_code = IdentityLinks(TEST_KEYRING, ttl=timedelta(days=30)).request_code(erasure["reference"])
    refused = await intake.http.post("/verify", data={"reference": erasure["reference"], "code": erasure_code},
                                     headers={"Accept-Language": "en"})
    assert refused.status_code == 403 and "do not match" in refused.text
    assert (await status(intake, erasure["reference"])).identity_confirmed is False


async def test_verify_link_tampered_is_403(intake: Intake) -> None:
    answer = await intake.http.get("/verify/v1.AAAA.BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB")
    assert answer.status_code == 403 and "<script" not in answer.text


# --- triage ----------------------------------------------------------------------------------------------------


async def test_unclassified_email_waits_for_an_operator_then_becomes_the_request(intake: Intake) -> None:
    from intake.submission import new_request_id
    from workflows.triage import TriageMessageWorkflow

    received = datetime.now(UTC) - timedelta(days=3)
    reserved = new_request_id(received.date())
    item = TriageItem(request_id=reserved, received_at=received, email="noa.bernard@example.org", name="Noa Bernard",
                      language=Language.FR, subject_line="Question", body="Bonjour, que faites-vous de mes infos ?",
                      in_reply_to="<abc@mail.example.org>", reason="no kind recognised")
    triage_id = await intake.service.triage(item)
    assert triage_id == f"triage-{reserved}"
    assert await intake.service.triage(item) == triage_id  # a re-polled message: the same triage
    await poll(lambda: _mail_to(intake, "dpo@example.com"))
    operator_mail = "\n".join(bodies(intake.mail, "dpo@example.com"))
    assert triage_id in operator_mail and "noa.bernard" not in operator_mail

    handle: WorkflowHandle[TriageMessageWorkflow, TriageStatus] = intake.client.get_workflow_handle_for(
        TriageMessageWorkflow.run, triage_id)
    result = await handle.execute_update(TriageMessageWorkflow.classify, TriageDecision(kind=RequestKind.ACCESS))
    assert result.state == "classified" and result.request_id == reserved
    state = await status(intake, reserved)
    assert state.kind.value == "access" and state.channel.value == "email"
    assert state.received == received.astimezone(UTC).date() or state.received < datetime.now(UTC).date()
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED


async def _mail_to(intake: Intake, address: str) -> list[EmailMessage]:
    return [m for rcpt, m in intake.mail.messages if address in rcpt]


# --- the web form, through the real service -----------------------------------------------------------------


async def test_web_form_submission_starts_the_request_and_confirms_it(intake: Intake) -> None:
    page = await intake.http.get("/", headers={"Accept-Language": "en-GB,en;q=0.9"})
    assert page.status_code == 200 and 'lang="en"' in page.text and "<script" not in page.text
    csrf = found(r'name="csrf" value="([^"]+)"', page.text)
    answer = await intake.http.post("/", data={
        "csrf": csrf, "kind": "portability", "email": "ines.roux@example.org", "name": "Inès Roux",
        "details": "Please send my order history in a machine-readable format.", "language": "en",
    })
    assert answer.status_code == 303, answer.text
    confirmation = await intake.http.get(answer.headers["location"])
    assert confirmation.status_code == 200
    assert not re.search(r"dsr-\d{4}-\d{2}-[0-9A-Z]{6}", confirmation.text)  # the reference goes by email
    reference = reference_of(intake, "ines.roux@example.org", "portability")
    state = await poll(lambda: _status_or_none(intake, reference))
    assert state.kind.value == "portability" and state.channel.value == "form" and state.language == Language.EN
    assert [r.request_id for r in intake.ledger.requests()] == [reference]


# --- email intake, end to end: Dovecot -> classifier -> service -> workflow --------------------------------

from tests.intake.test_mailbox import dovecot  # noqa: E402,F401 - the module's real IMAPS server fixture


async def test_email_becomes_a_request_answered_in_its_thread_and_its_id_copy_is_deleted(
    intake: Intake, dovecot: Dovecot  # noqa: F811
) -> None:
    from email.message import EmailMessage

    from intake.email.poller import Mailbox
    from intake.email.settings import MailboxSettings

    user = dovecot.new_user()
    message = EmailMessage()
    message["From"] = "Ruth Evans <ruth.evans@example.co.uk>"
    message["To"] = "privacy@example.com"
    message["Subject"] = "Subject access request"
    message["Message-ID"] = "<sar-2026-11-24.1@mail.example.co.uk>"
    message.set_content("Hello,\n\nUnder Article 15 GDPR, please send me a copy of all the personal data you "
                        "hold about me.\n\nKind regards,\nRuth Evans")
    message.add_attachment(b"%PDF-1.4 passport scan", maintype="application", subtype="pdf", filename="id.pdf")
    dovecot.deliver(user, message.as_bytes(), received_at=datetime.now(UTC) - timedelta(hours=1))

    store = attachments_of(intake.settings)
    mailbox = Mailbox(
        MailboxSettings(host="127.0.0.1", port=dovecot.port, username=user.username, password=user.password,
                        ssl_context=dovecot.ssl_context(), processed_folder="DSR/Processed"),
        intake.service, engine=intake.ledger.engine, keyring=TEST_KEYRING, attachments=store,
    )
    report = await mailbox.poll_once()
    assert report.submitted == 1, report
    assert (await mailbox.poll_once()).submitted == 0  # moved out: nothing new
    [request] = intake.ledger.requests()
    assert request.kind.value == "access" and request.channel.value == "email"
    assert [a.filename for a in store.list(request.request_id)] == ["id.pdf"]

    await wait_for_mail(intake.mail, 2)
    for _, sent in intake.mail.messages:
        assert sent["In-Reply-To"] == "<sar-2026-11-24.1@mail.example.co.uk>"
    text = "\n".join(bodies(intake.mail, "ruth.evans@example.co.uk"))
    code = found(r"confirmation code: ([2-9A-Z]{4}-[2-9A-Z]{4})", text)
    confirmed = await intake.http.post("/verify", data={"reference": request.request_id, "code": code})
    assert confirmed.status_code == 200
    await poll(lambda: _events(intake, request.request_id, "identity_documents_deleted"))
    assert store.list(request.request_id) == []


# --- replies about a request, end to end: Dovecot -> mailbox -> service -> record_correspondence ------------


class SimulatedCrash(BaseException):
    """The intake process dies: nothing in the poller may catch it (like a kill)."""


def _privacy_mailbox(intake: Intake, dovecot: Dovecot, user: ImapUser,  # noqa: F811
                     authserv_id: str | None = None) -> tuple[Mailbox, AttachmentStore]:
    from intake.email.poller import Mailbox
    from intake.email.settings import MailboxSettings

    store = attachments_of(intake.settings)
    mailbox = Mailbox(
        MailboxSettings(host="127.0.0.1", port=dovecot.port, username=user.username, password=user.password,
                        ssl_context=dovecot.ssl_context(), processed_folder="DSR/Processed",
                        triage_folder="DSR/Triage", authserv_id=authserv_id),
        intake.service, engine=intake.ledger.engine, keyring=TEST_KEYRING, attachments=store,
    )
    return mailbox, store


def _reply(to_notice: EmailMessage, *, sender: str, subject: str | None = None, thread: bool = True,
           attachment: tuple[str, bytes] | None = ("carte-identite.pdf", b"%PDF-1.4 carte d'identite"),
           ) -> EmailMessage:
    """A reply as a mail client writes it: "Re:" and the notice's subject, In-Reply-To/References its id."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "privacy@example.com"
    message["Subject"] = subject if subject is not None else f"Re: {to_notice['Subject']}"
    message["Message-ID"] = f"<reply-{uuid.uuid4().hex}@mail.example.org>"
    if thread:
        message["In-Reply-To"] = to_notice["Message-ID"]
        message["References"] = to_notice["Message-ID"]
    message.set_content("Bonjour,\n\nVoici la copie de ma pièce d'identité demandée.\n\nCamille Durand")
    if attachment is not None:
        message.add_attachment(attachment[1], maintype="application", subtype="pdf", filename=attachment[0])
    return message


def _decoded(message: EmailMessage) -> str:
    """Headers and the decoded text and HTML parts: quoted-printable may split an address in the raw body."""
    parts = [message.get_body((kind,)) for kind in ("plain", "html")]
    return "\n".join([str(message["Subject"]), str(message["To"]),
                      *(part.get_content() for part in parts if part is not None)])


async def _identity_request_to(intake: Intake, address: str, reference: str) -> EmailMessage:
    async def found() -> list[EmailMessage]:
        return [m for rcpt, m in intake.mail.messages
                if address in rcpt and reference in str(m["Subject"]) and "identit" in str(m["Subject"])]
    return (await poll(found))[0]


async def test_reply_from_the_subject_with_an_id_copy_is_correspondence_not_from_someone_else(
    intake: Intake, dovecot: Dovecot  # noqa: F811
) -> None:
    reference = await submit_api(intake)
    identity_mail = await _identity_request_to(intake, "camille.durand@example.org", reference)
    user = dovecot.new_user()
    now = datetime.now(UTC)
    # The subject answers the identity email with an ID copy (their client capitalises the address).
    mine = _reply(identity_mail, sender="Camille Durand <Camille.Durand@Example.org>")
    dovecot.deliver(user, mine.as_bytes(), received_at=now - timedelta(minutes=2))
    # Someone else sends the very same reply (they saw the reference): never filed under this request.
    theirs = _reply(identity_mail, sender="Mallory <mallory@example.net>",
                    attachment=("fake-id.pdf", b"%PDF-1.4 not camille"))
    dovecot.deliver(user, theirs.as_bytes(), received_at=now - timedelta(minutes=1))
    mailbox, store = _privacy_mailbox(intake, dovecot, user)
    mails_before = len(intake.mail.messages)

    report = await mailbox.poll_once()

    assert report.corresponded == 1 and report.submitted + report.triaged == 1, report
    assert [(a.filename, store.read(reference, a.index)) for a in store.list(reference)] == [
        ("carte-identite.pdf", b"%PDF-1.4 carte d'identite")]
    wrote = await _events(intake, reference, "subject_wrote")
    # Besides these, the message's key and receipt time (workflows.audit.correspondence_details).
    assert [(e.actor, {k: e.details[k] for k in ("attachments", "sender_check")}) for e in wrote] == [
        ("subject", {"attachments": "1", "sender_check": "sender not checked (DSR_MAIL_AUTHSERV_ID is not set)"})]
    assert set(wrote[0].details) == {"attachments", "sender_check", "message_key", "received_at"}
    assert len(await _sent(intake, reference, "operator_correspondence")) == 1
    # The subject's reply started nothing new; Mallory's message took the normal path, with its own file.
    assert [r.request_id for r in intake.ledger.requests() if r.subject.email == "camille.durand@example.org"] \
        == [reference]
    others = [r for r in intake.ledger.requests() if r.request_id != reference]
    assert all(r.subject.email == "mallory@example.net" for r in others)
    assert dovecot.count(user, "INBOX") == 0 and dovecot.count(user, "DSR.Processed") >= 1
    assert (await mailbox.poll_once()).total == 0  # moved exactly once

    # The operator is told, without the subject's name or address (decoded parts, not the raw body).
    await wait_for_mail(intake.mail, mails_before + 1)
    [notice] = [m for rcpt, m in intake.mail.messages
                if "dpo@example.com" in rcpt and reference in str(m["Subject"]) and "message du demandeur"
                in str(m["Subject"])]
    text = _decoded(notice)
    for secret in ("camille", "Camille", "Durand", "carte-identite", "mail.example.org", "mallory"):
        assert secret not in text, secret
    assert f"dsr attachments list {reference}" in text and f"dsr attachments get {reference}" in text
    assert f"dsr confirm-identity {reference} --method document" in text  # awaiting identity

    # The operator checks the document and confirms: an API request, yet its ID copy is deleted (new patch).
    await intake.client.get_workflow_handle(reference).execute_update(
        DataSubjectRequest.confirm_identity,
        IdentityConfirmation(method=IdentityMethod.DOCUMENT, confirmed_by="operator:alice"))
    await poll(lambda: _events(intake, reference, "identity_documents_deleted"))
    assert store.list(reference) == []


async def test_forged_reply_failing_dmarc_is_triaged_and_the_genuine_ones_verdict_shown_to_the_operator(
    intake: Intake, dovecot: Dovecot  # noqa: F811
) -> None:
    from workflows.request import DataSubjectRequest
    from workflows.triage import TriageMessageWorkflow

    reference = await submit_api(intake)
    identity_mail = await _identity_request_to(intake, "camille.durand@example.org", reference)
    user = dovecot.new_user()
    now = datetime.now(UTC)
    # What our receiving server (authserv-id mx.privacy.example.com) wrote on top of each message.
    verdict = "Authentication-Results: mx.privacy.example.com; dmarc={} header.from=example.org; dkim={}; spf={}\r\n"
    forged = _reply(identity_mail, sender="Camille Durand <camille.durand@example.org>",
                    attachment=("fake-id.pdf", b"%PDF-1.4 not camille"))
    dovecot.deliver(user, verdict.format("fail", "none", "fail").encode() + forged.as_bytes(),
                    received_at=now - timedelta(minutes=2))
    genuine = _reply(identity_mail, sender="Camille Durand <camille.durand@example.org>")
    dovecot.deliver(user, verdict.format("pass", "pass", "pass").encode() + genuine.as_bytes(),
                    received_at=now - timedelta(minutes=1))
    mailbox, store = _privacy_mailbox(intake, dovecot, user, authserv_id="mx.privacy.example.com")
    mails_before = len(intake.mail.messages)

    report = await mailbox.poll_once()

    assert report.corresponded == 1 and report.triaged == 1 and report.submitted == 0, report
    checked = "dmarc=pass dkim=pass spf=pass (mx.privacy.example.com)"
    # Only the genuine file is under the request, with the verdict beside it (what `dsr attachments list` shows).
    assert [(a.filename, a.sender_check) for a in store.list(reference)] == [("carte-identite.pdf", checked)]
    wrote = await _events(intake, reference, "subject_wrote")
    assert [(e.details["attachments"], e.details["sender_check"]) for e in wrote] == [("1", checked)]  # `dsr history`
    handle = intake.client.get_workflow_handle(reference)
    state = await handle.query(DataSubjectRequest.status)  # `dsr status`
    assert len(state.correspondence) == 1 and state.correspondence[0].endswith(f"1 file(s) kept; {checked}")
    from temporalio.api.sdk.v1 import WorkflowMetadata

    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)  # the UI's details
    assert "the subject wrote" in metadata.current_details and checked in metadata.current_details
    await wait_for_mail(intake.mail, mails_before + 1)
    [notice] = [m for rcpt, m in intake.mail.messages
                if "dpo@example.com" in rcpt and reference in str(m["Subject"]) and "message du demandeur"
                in str(m["Subject"])]
    assert checked in _decoded(notice)
    # The forged one waits in triage, its file with it, never under the request.
    [row] = [r for r in _inbox_rows(intake) if r.outcome == "triaged"]
    assert (row.reason, row.reference) == ("dmarc_fail_reply", reference)
    triage_handle: WorkflowHandle[TriageMessageWorkflow, TriageStatus] = intake.client.get_workflow_handle_for(
        TriageMessageWorkflow.run, f"triage-{row.request_id}")
    triage = await triage_handle.query(TriageMessageWorkflow.status)
    assert triage.reason.startswith(f"reply about {reference} from a sender that failed DMARC")
    assert [a.filename for a in store.list(row.request_id)] == ["fake-id.pdf"]
    assert [r.request_id for r in intake.ledger.requests()] == [reference]  # nothing new started


async def test_reply_about_a_closed_request_goes_to_triage(intake: Intake, dovecot: Dovecot) -> None:  # noqa: F811
    from intake.service import RequestClosed
    from workflows.triage import TriageMessageWorkflow

    reference = await submit_api(intake, kind="erasure")
    identity_mail = await _identity_request_to(intake, "camille.durand@example.org", reference)
    await intake.client.get_workflow_handle(reference).execute_update(DataSubjectRequest.withdraw,
                                                                      Withdrawal(requested_by="subject"))
    await poll(lambda: _closed(intake, reference))
    # Were the ledger read before the closure, the workflow itself would refuse the reply.
    with pytest.raises(RequestClosed, match=f"reply about closed request {reference}"):
        await intake.service.record_correspondence(reference, Correspondence(
            message_key="6a" * 32, received_at=datetime.now(UTC), attachments=0))
    user = dovecot.new_user()
    # Only the reference, typed back in the Subject (lower case), and no thread headers.
    reply = _reply(identity_mail, sender="camille.durand@example.org", thread=False,
                   subject=f"Encore une question sur {reference.lower()}")
    dovecot.deliver(user, reply.as_bytes(), received_at=datetime.now(UTC) - timedelta(minutes=1))
    mailbox, store = _privacy_mailbox(intake, dovecot, user)

    report = await mailbox.poll_once()

    assert report.triaged == 1 and report.corresponded == 0 and report.submitted == 0, report
    assert [r.request_id for r in intake.ledger.requests()] == [reference]  # no new request
    assert await _events(intake, reference, "subject_wrote") == []
    assert store.list(reference) == []
    [row] = _inbox_rows(intake)
    assert (row.state, row.outcome, row.reason, row.reference) == ("moved", "triaged", "closed_reply", reference)
    triage_handle: WorkflowHandle[TriageMessageWorkflow, TriageStatus] = intake.client.get_workflow_handle_for(
        TriageMessageWorkflow.run, f"triage-{row.request_id}")
    state = await triage_handle.query(TriageMessageWorkflow.status)
    assert state.reason == f"reply about closed request {reference}"
    # Its file waits with the message, under the id it would have if an operator made it a request.
    assert [a.filename for a in store.list(state.request_id)] == ["carte-identite.pdf"]
    assert dovecot.count(user, "DSR.Triage") == 1 and dovecot.count(user, "INBOX") == 0


async def test_crash_between_storing_and_telling_the_request_and_after_telling_it(
    intake: Intake, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from intake.service import IntakeService

    reference = await submit_api(intake, language="en")
    identity_mail = await _identity_request_to(intake, "camille.durand@example.org", reference)
    user = dovecot.new_user()
    dovecot.deliver(user, _reply(identity_mail, sender="camille.durand@example.org").as_bytes(),
                    received_at=datetime.now(UTC) - timedelta(minutes=1))
    original = IntakeService.record_correspondence
    calls: list[str] = []

    async def crash_before(self: IntakeService, request_id: str, correspondence: Correspondence) -> None:
        calls.append("before")
        raise SimulatedCrash

    async def crash_after(self: IntakeService, request_id: str, correspondence: Correspondence) -> None:
        calls.append("after")
        await original(self, request_id, correspondence)
        raise SimulatedCrash  # told, but the row never learns it

    for crash, told in ((crash_before, 0), (crash_after, 1)):
        monkeypatch.setattr(IntakeService, "record_correspondence", crash)
        mailbox, store = _privacy_mailbox(intake, dovecot, user)  # a new process each time
        with pytest.raises(SimulatedCrash):
            await mailbox.poll_once()
        assert dovecot.count(user, "INBOX") == 1
        assert [a.filename for a in store.list(reference)] == ["carte-identite.pdf"]
        assert len(await _events(intake, reference, "subject_wrote")) == told
    monkeypatch.setattr(IntakeService, "record_correspondence", original)
    mailbox, store = _privacy_mailbox(intake, dovecot, user)

    report = await mailbox.poll_once()

    assert calls == ["before", "after"] and report.corresponded == 1, report
    assert [a.filename for a in store.list(reference)] == ["carte-identite.pdf"]  # stored once
    assert len(await _events(intake, reference, "subject_wrote")) == 1
    assert len(await _sent(intake, reference, "operator_correspondence")) == 1
    await asyncio.sleep(1)  # a second notice, if any, would have been sent by now
    assert len([m for rcpt, m in intake.mail.messages
                if "dpo@example.com" in rcpt and "subject wrote" in str(m["Subject"])]) == 1
    assert dovecot.count(user, "INBOX") == 0 and dovecot.count(user, "DSR.Processed") == 1


async def _closed(intake: Intake, reference: str) -> bool:
    row = intake.ledger.get_request(reference)
    return row is not None and row.stage.value == "closed"


def _inbox_rows(intake: Intake) -> list:
    from sqlalchemy import select
    from sqlmodel import Session

    from dsr.store.inbox import InboundMessageRow

    with Session(intake.ledger.engine) as session:
        return list(session.execute(select(InboundMessageRow)).scalars())


# --- objections ---------------------------------------------------------------------------------------------


async def test_api_objection_takes_its_scope_and_refuses_a_scope_elsewhere(intake: Intake) -> None:
    response = await intake.http.post("/api/requests", json=api_body(kind="objection", scope="marketing"))
    assert response.status_code == 202, response.text
    [reference] = [r.request_id for r in intake.ledger.requests()]  # a marketing objection claims nothing
    state = await poll(lambda: _status_or_none(intake, reference))
    assert state.kind.value == "objection" and state.scope == "marketing"
    for bad in ({"kind": "objection", "scope": "everything"}, {"kind": "access", "scope": "marketing"}):
        response = await intake.http.post("/api/requests", json=api_body(email="other@example.org", **bad))
        assert response.status_code == 422 and response.json()["field"] == "scope", response.text
    assert [r.kind for r in intake.ledger.requests()] == ["objection"]


@pytest.mark.slow
async def test_api_restriction_takes_its_ground_and_a_zendesk_ticket_its_ground_tag(intake: Intake) -> None:
    for bad in ({"kind": "restriction"}, {"kind": "restriction", "ground": "e"}, {"kind": "access", "ground": "a"}):
        response = await intake.http.post("/api/requests", json=api_body(email="other@example.org", **bad))
        assert response.status_code == 422 and response.json()["field"] == "ground", response.text
    assert intake.ledger.requests() == []
    response = await intake.http.post("/api/requests", json=api_body(kind="restriction", ground="c"))
    assert response.status_code == 202, response.text
    body = zendesk_body(tags="dsr_restriction dsr_ground_a", ticket_id="91", requester_email="zoe.roux@example.org",
                        description="Mon adresse est fausse : limitez son usage le temps de vérifier.")
    response = await intake.http.post("/webhooks/zendesk", content=body, headers=zendesk_headers(body))
    assert response.status_code == 202, response.text
    for request in intake.ledger.requests():
        state = await poll(functools.partial(_status_or_none, intake, request.request_id))
        assert state.kind.value == "restriction"
    grounds = sorted([(await status(intake, r.request_id)).ground for r in intake.ledger.requests()])
    assert grounds == ["a", "c"]


async def test_zendesk_objection_tag_and_marketing_tag(intake: Intake) -> None:
    body = zendesk_body(tags="dsr_objection dsr_marketing", ticket_id="90",
                        description="Je ne veux plus recevoir vos offres.")
    response = await intake.http.post("/webhooks/zendesk", content=body, headers=zendesk_headers(body))
    assert response.status_code == 202, response.text
    [reference] = [r.request_id for r in intake.ledger.requests()]
    state = await poll(lambda: _status_or_none(intake, reference))
    assert state.kind.value == "objection" and state.scope == "marketing"


@pytest.mark.slow
async def test_a_marketing_objection_is_never_attached_to_an_objection_waiting_for_a_decision(
    intake: Intake,
) -> None:
    other = await submit_api(intake, kind="objection", scope="other", details="Stop your usage statistics.")
    response = await intake.http.post("/api/requests", json=api_body(kind="objection", scope="marketing"))
    assert response.status_code == 202, response.text
    requests = intake.ledger.requests()
    assert len(requests) == 2
    [marketing] = [r.request_id for r in requests if r.request_id != other]
    state = await poll(lambda: _status_or_none(intake, marketing))
    assert state.scope == "marketing"
    assert (await status(intake, other)).scope == "other"


# --- withdrawal of consent ----------------------------------------------------------------------------------


def _consent_profile(intake: Intake) -> None:
    """The demo's controller profile as dsr.toml: the intake reads the consent purposes from it."""
    demo = Path(__file__).resolve().parents[2] / "sandbox" / "demo_profile.toml"
    Path(intake.settings.config_file).write_text(demo.read_text(encoding="utf-8"), encoding="utf-8")


async def test_api_consent_withdrawal_takes_its_purposes_and_refuses_unknown_ones(intake: Intake) -> None:
    await asyncio.to_thread(_consent_profile, intake)
    response = await intake.http.post("/api/requests", json=api_body(kind="consent_withdrawal",
                                                                      purposes=["partner_offers"]))
    assert response.status_code == 202, response.text
    [reference] = [r.request_id for r in intake.ledger.requests()]  # a withdrawal claims nothing
    state = await poll(lambda: _status_or_none(intake, reference))
    assert state.kind.value == "consent_withdrawal"
    for bad in ({"kind": "consent_withdrawal", "purposes": ["orders"]}, {"kind": "access", "purposes": ["newsletter"]}):
        response = await intake.http.post("/api/requests", json=api_body(email="other@example.org", **bad))
        assert response.status_code == 422 and response.json()["field"] == "purposes", response.text
    assert [r.kind for r in intake.ledger.requests()] == ["consent_withdrawal"]


async def test_zendesk_consent_withdrawal_tag_withdraws_every_purpose(intake: Intake) -> None:
    await asyncio.to_thread(_consent_profile, intake)
    body = zendesk_body(tags="dsr_consent_withdrawal", ticket_id="93", description="Je retire mon consentement.")
    response = await intake.http.post("/webhooks/zendesk", content=body, headers=zendesk_headers(body))
    assert response.status_code == 202, response.text
    [reference] = [r.request_id for r in intake.ledger.requests()]
    state = await poll(lambda: _status_or_none(intake, reference))
    assert state.kind.value == "consent_withdrawal"


async def test_the_one_click_link_of_an_email_starts_one_withdrawal_on_the_running_intake(intake: Intake) -> None:
    from dsr.store.links import ConsentLinks

    await asyncio.to_thread(_consent_profile, intake)
    token = ConsentLinks(TEST_KEYRING).issue_for("camille.durand@example.org", "fr", now=datetime.now(UTC))
    one_click = {"content": b"List-Unsubscribe=One-Click",
                 "headers": {"Content-Type": "application/x-www-form-urlencoded"}}
    answer = await intake.http.post(f"/consent/{token}", **one_click)  # type: ignore[arg-type]
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "withdrawn", "purposes": ["newsletter", "partner_offers"]}
    again = await intake.http.post(f"/consent/{token}", **one_click)  # type: ignore[arg-type]
    assert again.json()["status"] == "already_withdrawn"
    [reference] = [r.request_id for r in intake.ledger.requests()]
    state = await poll(lambda: _status_or_none(intake, reference))
    assert state.kind.value == "consent_withdrawal"
    page = await intake.http.get(f"/consent/{token}")
    assert page.status_code == 200 and "Retirer votre consentement" in page.text
    assert (await intake.http.get("/consent/nope")).status_code == 403


# --- requests about a deceased person (loi 78-17 art. 85) -----------------------------------------------------


async def test_api_post_mortem_names_the_deceased_person_and_the_senders_quality(intake: Intake) -> None:
    response = await intake.http.post("/api/requests", json=api_body(
        kind="post_mortem", deceased_email="henri.dupont@example.org", quality="executor", scope="estate"))
    assert response.status_code == 202, response.text
    [reference] = [r.request_id for r in intake.ledger.requests()]
    state = await poll(lambda: _status_if(intake, reference, lambda s: s.stage.value == "awaiting_identity"))
    # Whatever the API's identity policy, the sender's quality is checked on a document.
    assert state.kind.value == "post_mortem" and state.scope == "estate" and state.identity.value == "document"
    for bad, field in (({"deceased_email": ""}, "deceased_email"), ({"quality": "cousin"}, "quality"),
                       ({"deceased_email": "x@example.org", "scope": "marketing"}, "scope")):
        response = await intake.http.post("/api/requests", json=api_body(email="other@example.org",
                                                                          kind="post_mortem", **bad))
        assert response.status_code == 422 and response.json()["field"] == field, response.text
    response = await intake.http.post("/api/requests", json=api_body(email="other@example.org",
                                                                      deceased_email="x@example.org"))
    assert response.status_code == 422 and response.json()["field"] == "deceased_email", response.text
    assert [r.kind for r in intake.ledger.requests()] == ["post_mortem"]


async def test_zendesk_post_mortem_tag(intake: Intake) -> None:
    body = json.dumps({**json.loads(zendesk_body(tags="dsr_post_mortem", ticket_id="94",
                                                 description="Mon père est décédé.")),
                       "deceased_email": "henri.dupont@example.org", "quality": "heir"}).encode()
    response = await intake.http.post("/webhooks/zendesk", content=body, headers=zendesk_headers(body))
    assert response.status_code == 202, response.text
    [reference] = [r.request_id for r in intake.ledger.requests()]
    state = await poll(lambda: _status_or_none(intake, reference))
    assert state.kind.value == "post_mortem" and state.scope == "closure"


@pytest.mark.slow
async def test_zendesk_consent_withdrawal_names_its_purposes_by_tag_or_field(intake: Intake) -> None:
    """Tags ``dsr_purpose_<key>`` and/or the ``purposes`` custom field (keys or such tags); an unknown key is a
    422 on ``purposes`` and starts nothing; a purpose tag left on a ticket of another kind is ignored."""
    await asyncio.to_thread(_consent_profile, intake)
    bad = zendesk_body(tags="dsr_consent_withdrawal dsr_purpose_orders", ticket_id="9401",
                       requester_email="zoe.martin@example.org")
    response = await intake.http.post("/webhooks/zendesk", content=bad, headers=zendesk_headers(bad))
    assert response.status_code == 422 and response.json()["field"] == "purposes", response.text
    assert "newsletter, partner_offers" in response.json()["error"]
    assert intake.ledger.requests() == []
    for ticket, email, fields, expected in (
        ("9402", "zoe.martin@example.org", {"tags": "dsr_consent_withdrawal dsr_purpose_partner_offers"},
         ["partner_offers"]),
        ("9403", "yann.martin@example.org", {"tags": "dsr_consent_withdrawal", "purposes": "newsletter"},
         ["newsletter"]),
        ("9404", "xavier.martin@example.org",
         {"tags": "dsr_consent_withdrawal dsr_purpose_newsletter", "purposes": "dsr_purpose_partner_offers"},
         ["newsletter", "partner_offers"]),
    ):
        before = {r.request_id for r in intake.ledger.requests()}
        body = zendesk_body(ticket_id=ticket, requester_email=email, description="Je retire mon consentement.",
                            **fields)
        response = await intake.http.post("/webhooks/zendesk", content=body, headers=zendesk_headers(body))
        assert response.status_code == 202, response.text
        [reference] = [r.request_id for r in intake.ledger.requests() if r.request_id not in before]
        state = await poll(functools.partial(_status_or_none, intake, reference))
        assert state.kind.value == "consent_withdrawal" and state.purposes == expected
    erasure = zendesk_body(tags="dsr_erasure dsr_purpose_newsletter", ticket_id="9405",
                           requester_email="willy.martin@example.org")
    response = await intake.http.post("/webhooks/zendesk", content=erasure, headers=zendesk_headers(erasure))
    assert response.status_code == 202, response.text


@pytest.mark.slow
async def test_triage_classify_refuses_an_unknown_purpose_and_starts_nothing(intake: Intake) -> None:
    from temporalio.client import WorkflowUpdateFailedError

    from intake.submission import new_request_id
    from workflows.triage import TriageMessageWorkflow

    await asyncio.to_thread(_consent_profile, intake)
    received = datetime.now(UTC) - timedelta(hours=1)
    reserved = new_request_id(received.date())
    item = TriageItem(request_id=reserved, received_at=received, email="vera.bernard@example.org", name="Véra",
                      language=Language.FR, subject_line="Consentement", body="Je retire mon consentement.",
                      reason="no kind recognised")
    triage_id = await intake.service.triage(item)
    handle: WorkflowHandle[TriageMessageWorkflow, TriageStatus] = intake.client.get_workflow_handle_for(
        TriageMessageWorkflow.run, triage_id)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(TriageMessageWorkflow.classify, TriageDecision(
            kind=RequestKind.CONSENT_WITHDRAWAL, purposes=["orders"]))
    assert "purposes must be among newsletter, partner_offers" in str(refused.value.cause)
    assert intake.ledger.get_request(reserved) is None
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(TriageMessageWorkflow.classify, TriageDecision(
            kind=RequestKind.ACCESS, purposes=["newsletter"]))
    assert "purposes are only for consent_withdrawal requests" in str(refused.value.cause)
    assert intake.ledger.get_request(reserved) is None
    result = await handle.execute_update(TriageMessageWorkflow.classify, TriageDecision(
        kind=RequestKind.CONSENT_WITHDRAWAL, purposes=["newsletter"]))
    assert result.state == "classified" and result.request_id == reserved
    state = await poll(lambda: _status_or_none(intake, reserved))
    assert state.purposes == ["newsletter"]
    [event] = [e for e in intake.ledger.events(reserved) if e.event == "triage_classified"]
    assert event.details["purposes"] == "newsletter"
