"""Final replies, end to end, one test per kind: a request goes through the three connectors (HubSpot and
WooCommerce sandboxes over HTTP, the Stripe sandbox), the reply reaches the SMTP sink, the subject follows the
link in it to download the bundle, and recipients and operators get what is theirs.

Every test runs in its own world (tests/workflows/e2e_systems.py): its own time-skipping Temporal server,
the sandboxes, holding the subject and another customer in each of the three systems.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import re
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import pytest
import pytest_asyncio
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle

from connectors import woocommerce
from connectors.base import RetentionRule
from connectors.stripe import DEFAULT_RETENTION, LEGAL_BASIS
from dsr.config.settings import Settings
from dsr.domain.aftercare import AftercareStatus, aftercare_id
from dsr.domain.model import Outcome, RequestInput, ResidualsCleared, Stage
from dsr.mail.replies import legal_basis_wording
from dsr.store.ledger import Ledger
from templates import format_date
from tests.harness import MailSink, http_client
from tests.workflows.e2e_systems import (
    OTHER,
    SUBJECT,
    UNKNOWN,
    Holdings,
    Mail,
    World,
    download,
    mentions,
    open_link,
    open_world,
    seed,
)
from tests.workflows.support import OPERATOR_EMAIL, demo_profile
from workflows import search_attributes as sa
from workflows.aftercare import RequestAftercare
from workflows.request import DataSubjectRequest

pytestmark = pytest.mark.slow  # every reply end to end, seconds each

PROFILE = demo_profile()
assert PROFILE is not None
RECIPIENTS = PROFILE.art19_recipients  # [[controller.art19_recipients]] of sandbox/demo_profile.toml
ORDERS, GUEST_ORDERS, CHARGES, NOTES = 130, 2, 110, 2  # more than one page (100) of orders and of charges


@pytest_asyncio.fixture
async def world(settings: Settings, ledger: Ledger, mail: MailSink) -> AsyncIterator[World]:
    async with open_world(settings, ledger, mail) as world:
        await seed(world.systems, SUBJECT, orders=ORDERS, guest_orders=GUEST_ORDERS, charges=CHARGES, notes=NOTES)
        await seed(world.systems, OTHER, orders=3, guest_orders=1, charges=3, notes=1)
        yield world


def label(connector: str, language: str) -> str:
    return PROFILE.system_label(connector, language)  # type: ignore[union-attr]


def section(text: str, heading: str) -> str:
    """The lines under ``heading`` in a plain-text reply, up to the next blank line."""
    lines = text.splitlines()
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return "\n".join(lines[start:end])


def states_dates_and_rights(reply: Mail, request: RequestInput, language: str) -> None:
    """Every reply: the reference, when the request was received, its deadline, and the right to complain."""
    for shown in (reply.text, reply.html_text):
        assert request.request_id in shown
        assert format_date(request.received_on, language) in shown
        assert format_date(request.deadlines.normal.due, language) in shown
        assert "CNIL" in shown and ("réclamation" if language == "fr" else "complaint") in shown
    assert request.request_id in reply.subject


def mails_to_others(world: World, *expected: str) -> list[str]:
    """Addresses the sink received mail for, beyond ``expected``."""
    return sorted({rcpt for rcpts, _ in world.mail.messages for rcpt in rcpts} - set(expected))


# --- portability ---------------------------------------------------------------------------------------


async def test_portability_reply_links_to_the_data_the_subject_provided_and_nobody_elses(world: World) -> None:
    request, handle = await world.submit("portability", language="en")
    await world.until_event(request, "reply_sent")
    [reply] = world.sent(request, "reply_portability")

    states_dates_and_rights(reply, request, "en")
    for shown in (reply.text, reply.html_text):  # Art. 20(2): how the data can go to another controller
        assert "transmit them directly to another controller" in shown and "Article 20(2)" in shown
        # What portability leaves out is named, with the way to get it (an access request).
        assert "does not include data you did not provide yourself" in shown
        assert "(notes from our team: 2)" in shown and "access request (Article 15 GDPR)" in shown

    link, code = reply.download_link()
    got = await download(link, code)
    assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
    bundle = zipfile.ZipFile(io.BytesIO(got.content))

    # manifest.json: every other file, with its size and SHA-256; nothing unlisted.
    manifest = json.loads(bundle.read("manifest.json"))
    listed = {f["name"]: f for f in manifest["files"]}
    assert set(bundle.namelist()) == {*listed, "manifest.json"}
    for name, entry in listed.items():
        content = bundle.read(name)
        assert (len(content), hashlib.sha256(content).hexdigest()) == (entry["size"], entry["sha256"]), name
    assert manifest["reference"] == request.request_id and manifest["provided_only"] is True

    # Only what the subject provided: the CRM's notes, Stripe's invoices and payment intents are derived.
    data = json.loads(bundle.read("data.json"))
    datasets = {(system, name) for system, by_name in data.items() for name in by_name}
    assert datasets == {("hubspot", "contact"), ("woocommerce", "customer"), ("woocommerce", "orders"),
                        ("stripe", "customer"), ("stripe", "charges"), ("stripe", "payment_methods"),
                        ("stripe", "subscriptions"), ("stripe", "checkout_sessions")}
    # JSON and one CSV per dataset holding records, row for record.
    filled = {(s, d) for s, d in datasets if data[s][d]}
    assert {n for n in listed if n.startswith("csv/")} == {f"csv/{s}/{d}.csv" for s, d in filled}
    for system, name in filled:
        rows = list(csv.reader(io.StringIO(bundle.read(f"csv/{system}/{name}.csv").decode("utf-8-sig"))))
        assert max(len(rows) - 1, 0) == len(data[system][name]), f"{system}/{name}.csv"
    [contact] = data["hubspot"]["contact"]
    assert "lifecyclestage" not in contact["properties"], "a CRM classification is not data the subject gave"
    assert all("outcome" not in charge for charge in data["stripe"]["charges"]), "Stripe's risk assessment"

    # Every record the sandboxes hold for the subject, each once.
    mine = world.systems.held[SUBJECT.email]
    assert ids(data, "hubspot", "contact") == [mine.hubspot_contact]
    assert ids(data, "woocommerce", "customer") == [mine.woo_customer]
    assert sorted(ids(data, "woocommerce", "orders")) == sorted(mine.woo_orders)
    assert len(mine.woo_orders) == ORDERS + GUEST_ORDERS
    assert ids(data, "stripe", "customer") == [mine.stripe_customer]
    assert sorted(ids(data, "stripe", "charges")) == sorted(mine.stripe_charges)
    assert len(mine.stripe_charges) == CHARGES
    assert ids(data, "stripe", "payment_methods") == mine.stripe_payment_methods
    assert data["stripe"]["subscriptions"] == data["stripe"]["checkout_sessions"] == []

    # Nothing of the other customer, in any file of the bundle.
    theirs = world.systems.held[OTHER.email]
    everything = "\n".join(bundle.read(n).decode("utf-8", errors="replace") for n in bundle.namelist())
    assert [i for i in [*OTHER.identifiers, *theirs.stripe_ids] if mentions(everything, i)] == []
    assert all(mentions(everything, i) for i in [*SUBJECT.identifiers, *mine.stripe_ids])  # the search works
    assert theirs.hubspot_contact not in ids(data, "hubspot", "contact")
    assert theirs.woo_customer not in ids(data, "woocommerce", "customer")
    assert not set(theirs.woo_orders) & set(ids(data, "woocommerce", "orders"))

    assert "export_downloaded" in world.events(request)
    assert mails_to_others(world, SUBJECT.email) == []
    assert [i for i in OTHER.identifiers if mentions(reply.everything, i)] == []
    # The request ends with its answer; its aftercare keeps the link until it expires (the world ends it).
    await world.until_event(request, "aftercare_started")
    for _ in range(100):
        if (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED:
            break
        await asyncio.sleep(0.05)
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED


def ids(data: dict, system: str, dataset: str) -> list:
    return [record["id"] for record in data[system][dataset]]


# --- erasure -------------------------------------------------------------------------------------------


async def test_erasure_reply_says_what_each_system_did_and_each_recipient_is_told(world: World) -> None:
    theirs_before = await world.systems.snapshot(OTHER)
    mine: Holdings = world.systems.held[SUBJECT.email]
    charges = await world.systems.stripe_list("/v1/charges", customer=mine.stripe_customer)
    request, _ = await world.submit("erasure")  # left open on its residual data: the world terminates it
    await world.until_event(request, "reply_sent")
    [reply] = world.sent(request, "reply_erasure")
    states_dates_and_rights(reply, request, "fr")

    # Per system: what was deleted, anonymised, retained (legal basis, until when) and what is left.
    hubspot = section(reply.text, label("hubspot", "fr"))
    assert hubspot.splitlines() == ["  - Effacé : fiche contact : 1"]
    stripe = section(reply.text, label("stripe", "fr"))
    assert "  - Effacé : compte client : 1" in stripe.splitlines()
    charge_days = [datetime.fromtimestamp(c["created"], UTC).date() for c in charges]
    assert (f"  - Conservé en l'état : paiements : {CHARGES} — conservé {until_words(charge_days, CHARGES_RULE)} ; "
            f"fondement : {legal_basis_wording(LEGAL_BASIS, 'fr')}") in stripe.splitlines()
    assert "accounting records" not in stripe  # the connector's English basis, worded in French
    assert "L123-22" in stripe
    woo = section(reply.text, label("woocommerce", "fr")).splitlines()
    assert "  - Effacé : compte client : 1" in woo
    orders = ORDERS + GUEST_ORDERS
    [anonymised] = [line for line in woo if line.startswith("  - Pseudonymisé")]
    order_days = [date.fromisoformat(world.systems.woo.orders[i]["date_created_gmt"][:10]) for i in mine.woo_orders]
    assert f"commandes : {orders} — conservé {until_words(order_days, ORDERS_RULE)} ;" in anonymised
    assert "L123-22" in anonymised
    assert (f"  - Non effacé automatiquement : commandes : {orders} — données concernées : adresse IP, "
            "informations sur le navigateur") in woo
    for name in ("hubspot", "stripe", "woocommerce"):
        assert label(name, "fr") in reply.html_text
    assert "L123-22" in reply.html_text and "adresse IP, informations sur le navigateur" in reply.html_text

    # Art. 19: one notice to each configured recipient, named in the subject's reply.
    assert len(world.sent(request, "art19_notice")) == len(RECIPIENTS) == 2
    for recipient in RECIPIENTS:
        [notice] = world.mails_to(str(recipient.email))
        assert request.request_id in notice.subject and "effacement" in notice.text
        assert SUBJECT.email in notice.text  # how the recipient finds the person; never by name
        assert not names_outside_the_address(notice)
        assert recipient.name in reply.text and recipient.name in reply.html_text
    assert mails_to_others(world, SUBJECT.email, OPERATOR_EMAIL, *(str(r.email) for r in RECIPIENTS)) == []

    # The subject's data is gone, but for the accounting records, anonymised; the other customer's is untouched.
    systems = world.systems
    assert systems.hubspot.find_contacts(SUBJECT.email, include_archived=True) == []
    assert systems.hubspot.was_gdpr_deleted(mine.hubspot_contact)
    assert systems.woo.customer_by_email(SUBJECT.email) is None
    kept = [systems.woo.orders[i] for i in mine.woo_orders]
    assert all(o["billing"]["email"] == "" and o["billing"]["last_name"] == "" for o in kept)
    # The reply's residual line is true: the API left every order's IP address for the team to clear.
    assert all(o["customer_ip_address"] for o in kept)
    assert await systems.stripe_customer(mine.stripe_customer) is None
    assert await systems.snapshot(OTHER) == theirs_before


async def test_erasure_residual_data_is_followed_up_with_the_operator_until_cleared(world: World) -> None:
    request, handle = await world.submit("erasure")
    # The reply is out and the request has ended (Completed); its aftercare follows WooCommerce's residual data
    # until it is cleared by hand.
    await world.until_event(request, "residuals_reported")
    await world.until(lambda: len(world.sent(request, "operator_residual")) == 1, "the operator's notice")
    assert world.events(request).index("reply_sent") < world.events(request).index("residuals_reported")
    await world.until_event(request, "aftercare_started")
    for _ in range(100):
        if (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED:
            break
        await asyncio.sleep(0.05)
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    aftercare: WorkflowHandle[RequestAftercare, AftercareStatus] = world.env.client.get_workflow_handle_for(
        RequestAftercare.run, aftercare_id(request.request_id))
    described = await aftercare.describe()
    assert described.status == WorkflowExecutionStatus.RUNNING
    assert described.typed_search_attributes.get(sa.DSR_RESIDUAL) is True
    status = await handle.query(DataSubjectRequest.status)
    assert (status.stage, status.outcome) == (Stage.CLOSED, Outcome.FULFILLED)
    care = await aftercare.query(RequestAftercare.status)
    assert [line.split(":")[0] for line in care.residuals] == ["woocommerce"] == \
        [line.split(":")[0] for line in status.residuals]
    [notice] = world.sent(request, "operator_residual")
    assert world.mails_to(OPERATOR_EMAIL) == [notice]
    assert request.request_id in notice.subject
    assert "customer_ip_address" in notice.text and f"dsr clear-residuals {request.request_id}" in notice.text
    assert no_personal_data(notice)
    # The orders' billing email is blank by now: the notice says how to find them (tagged with the request).
    assert "dsr_erasure" in notice.text
    tagged = [o for o in world.systems.woo.orders.values()
              if {"key": "dsr_erasure", "value": request.request_id} in
              [{"key": m["key"], "value": m["value"]} for m in o["meta_data"]]]
    assert tagged and all(o["customer_ip_address"] for o in tagged)

    # Nobody acts for escalation_repeat_days: the operator is reminded, still without personal data.
    await world.env.sleep(timedelta(days=world.settings.policy.escalation_repeat_days, hours=1))
    await world.until(lambda: len(world.sent(request, "operator_residual")) == 2, "the operator's reminder")
    assert "residuals_reminded" in world.events(request)
    [_, reminder] = world.mails_to(OPERATOR_EMAIL)
    assert "Rappel" in reminder.text and no_personal_data(reminder)

    await aftercare.execute_update(RequestAftercare.clear_residuals,
                                   ResidualsCleared(cleared_by="operator:alice", note="eraser run on the orders"))
    final = await aftercare.result()
    assert final.residuals_cleared and final.residuals == []
    described = await aftercare.describe()
    assert described.status == WorkflowExecutionStatus.COMPLETED
    assert described.typed_search_attributes.get(sa.DSR_RESIDUAL) is False
    [cleared] = [e for e in world.ledger.events(request.request_id) if e.event == "residuals_cleared"]
    assert cleared.actor == "operator:alice"


CHARGES_RULE = next(rule for rule in DEFAULT_RETENTION if rule.dataset == "charges")
ORDERS_RULE = next(rule for rule in woocommerce.DEFAULT_RETENTION if rule.dataset == "orders")


def until_words(days: list[date], rule: RetentionRule) -> str:
    """When records of these days stop being kept, as the French reply says it (one date, or a range)."""
    ends = sorted({rule.until(day) for day in days})
    if len(ends) == 1:
        return f"jusqu'au {format_date(ends[0], 'fr')}"
    return f"jusqu'à une date comprise entre le {format_date(ends[0], 'fr')} et le {format_date(ends[-1], 'fr')}"


def names_outside_the_address(mail: Mail) -> list[str]:
    """The subject's names where an Art. 19 notice shows them, the email address (which holds both) set aside."""
    rest = re.sub(re.escape(SUBJECT.email), "", mail.everything, flags=re.IGNORECASE)
    return [name for name in (SUBJECT.first_name, SUBJECT.last_name) if mentions(rest, name)]


def no_personal_data(mail: Mail) -> bool:
    return not any(mentions(mail.everything, i) for i in (SUBJECT.email, SUBJECT.first_name, SUBJECT.last_name))


# --- rectification -------------------------------------------------------------------------------------


async def test_rectification_reply_names_the_fields_changed_never_their_values(world: World) -> None:
    # In English, while the recipients of sandbox/demo_profile.toml are told in their own language, French.
    theirs_before = await world.systems.snapshot(OTHER)
    request, handle = await world.submit("rectification", language="en", changes={"city": "Roubaix"})
    final = await handle.result()  # no download link, no residual data: it completes with the reply
    assert final.outcome == Outcome.FULFILLED
    [reply] = world.sent(request, "reply_rectification")
    states_dates_and_rights(reply, request, "en")

    assert section(reply.text, label("hubspot", "en")).splitlines() == ["  - Corrected — contact record: city"]
    assert section(reply.text, label("stripe", "en")).splitlines() == ["  - Corrected — customer account: city"]
    assert section(reply.text, label("woocommerce", "en")).splitlines() == [
        "  - Corrected — customer account: city"]
    assert "Corrected — contact record: city" in reply.html_text
    # Neither the old value nor the new one, in any email of the request: an email may be read by someone else.
    for _, message in world.mail.messages:
        assert not mentions(Mail.of(message).everything, SUBJECT.city)
        assert not mentions(Mail.of(message).everything, "Roubaix")

    # Art. 19, scoped: the accountant receives Stripe's data (a customer account was corrected there) and is
    # told; the carrier receives only WooCommerce orders, none of which changed: it learns nothing of this
    # person, and the reply does not name it as a recipient the data was disclosed to.
    accountant, carrier = RECIPIENTS
    assert accountant.receives == ["stripe", "woocommerce.orders"] and carrier.receives == ["woocommerce.orders"]
    [notice] = world.sent(request, "art19_notice")
    assert world.mails_to(str(accountant.email)) == [notice] and world.mails_to(str(carrier.email)) == []
    assert accountant.language.value == "fr" and "Informations rectifiées : ville" in notice.text
    assert request.request_id in notice.subject and SUBJECT.email in notice.text
    assert accountant.name in reply.text and accountant.name in reply.html_text
    assert carrier.name not in reply.text and carrier.name not in reply.html_text

    systems, mine = world.systems, world.systems.held[SUBJECT.email]
    assert (systems.hubspot.contact(mine.hubspot_contact) or {})["city"] == "Roubaix"
    assert systems.woo.customers[mine.woo_customer]["billing"]["city"] == "Roubaix"
    assert ((await systems.stripe_customer(mine.stripe_customer)) or {})["address"]["city"] == "Roubaix"
    assert await systems.snapshot(OTHER) == theirs_before
    assert mails_to_others(world, SUBJECT.email, *(str(r.email) for r in RECIPIENTS)) == []


# --- no data -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["access", "erasure"])
async def test_subject_unknown_to_every_system_gets_the_no_data_reply(world: World, kind: str) -> None:
    request, handle = await world.submit(kind, UNKNOWN)
    final = await handle.result()  # nothing to download, nothing to clear: it completes with the reply
    assert final.outcome == Outcome.FULFILLED and final.link_expires_at is None
    assert world.templates_sent(request) == ["acknowledgement", "reply_no_data"]
    [reply] = world.sent(request, "reply_no_data")
    states_dates_and_rights(reply, request, "fr")
    for shown in (reply.text, reply.html_text):
        assert "Nous n'y avons trouvé aucune donnée personnelle vous concernant" in shown
        assert all(label(name, "fr") in shown for name in ("hubspot", "stripe", "woocommerce"))
    assert "/exports/" not in reply.everything
    assert not world.exports.objects.exists(world.exports.bundle_key(request.request_id))
    # An access export that found nothing still wrote empty dataset files: with no link, they go at once.
    assert not world.exports.holds(request.request_id)
    [sent] = [e for e in world.ledger.events(request.request_id) if e.event == "reply_sent"]
    assert sent.details["no_data"] == "true" and sent.details["recipients_notified"] == "0"
    # Nobody else is written to: no Art. 19 notice when nothing was erased, no operator notice.
    assert mails_to_others(world, UNKNOWN.email) == []


# --- access, from the request to the link's expiry -----------------------------------------------------


async def test_access_link_works_until_it_expires_then_answers_410_and_the_exports_are_gone(world: World) -> None:
    request, handle = await world.submit("access")
    await world.until_event(request, "reply_sent")
    [reply] = world.sent(request, "reply_access")
    states_dates_and_rights(reply, request, "fr")
    link, code = reply.download_link()
    bundle = world.exports.bundle_key(request.request_id)
    assert world.exports.objects.exists(bundle)

    form = await open_link(link)
    got = await form.send(code)
    assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
    [sent] = [e for e in world.ledger.events(request.request_id) if e.event == "reply_sent"]
    assert hashlib.sha256(got.content).hexdigest() == sent.details["bundle_sha256"]
    data = json.loads(zipfile.ZipFile(io.BytesIO(got.content)).read("data.json"))
    assert len(data["hubspot"]["notes"]) == NOTES, "access includes what the subject did not provide"
    [downloaded] = [e for e in world.ledger.events(request.request_id) if e.event == "export_downloaded"]
    assert downloaded.details["proof"] == "code" and downloaded.actor == "subject"

    # The request ended with its answer; awaiting its aftercare lets the test server skip to the link's expiry:
    # the durable timer fires and the bundle and every exported record are deleted; the intake app's clock
    # follows the skip.
    answered = await handle.result()
    assert answered.aftercare is not None
    aftercare: WorkflowHandle[RequestAftercare, AftercareStatus] = world.env.client.get_workflow_handle_for(
        RequestAftercare.run, answered.aftercare)
    async with world.env.time_skipping_unlocked():  # type: ignore[attr-defined]
        final = await aftercare.result()
    assert final.exports_deleted and final.link_expires_at is not None
    assert "exports_deleted" in world.events(request)
    assert not world.exports.objects.exists(bundle) and not world.exports.holds(request.request_id)
    await world.clock.follow(world.env)
    assert world.clock() >= final.link_expires_at

    async with http_client() as http:
        opened = await http.get(link)
    sent_again = await form.send(code)  # from the page opened before the expiry
    for page in (opened, sent_again):
        assert page.status_code == 410
        assert "expired" in page.text or "expiré" in page.text
        assert nothing_leaks(page.text, request, link, code)

    # Even for a clock that still takes the link for valid, the files are gone: 410 too, nothing leaked.
    world.clock.skipped = timedelta(0)
    gone = await download(link, code)
    assert gone.status_code == 410 and "supprimés" in gone.text
    assert nothing_leaks(gone.text, request, link, code)


def nothing_leaks(page: str, request: RequestInput, link: str, code: str) -> bool:
    token = link.rsplit("/", 1)[1]
    return not any(mentions(page, secret) for secret in (
        request.request_id, SUBJECT.email, SUBJECT.first_name, SUBJECT.last_name, code, token))
