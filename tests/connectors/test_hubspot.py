"""The HubSpot connector over real HTTP against the local HubSpot sandbox (sandbox/hubspot.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.base import (
    Connector,
    ExportJob,
    OperationJob,
    PermanentConnectorError,
    RetentionRule,
    TransientConnectorError,
    unexpected_remains,
)
from connectors.http import READ_TRIES, RateLimiter
from connectors.hubspot import DATASETS_AT_ONCE, SECONDARY, HubSpotConnector
from dsr.domain.model import RecordAction, Subject
from dsr.store.exports import ExportStore
from dsr.web.serve import RunningServer, serve_app
from sandbox.faults import Faults
from sandbox.hubspot import HubSpotState, hubspot_app
from tests.apispec import SpecCheck, Tally, hubspot_contract
from tests.gatekeeper import Gatekeeper, Query
from tests.harness import counted_beyond_the_store, file_exports, http_client, raw_dataset, stored_slowly

TOKEN = "pat-eu1-test-token"
REQUEST = "dsr-2026-11-HUBSPT"
EMAIL = "lea.petit@example.org"
SUBJECT = Subject(email="Lea.Petit@Example.ORG", name="Léa Petit")


@dataclass
class Portal:
    state: HubSpotState
    faults: Faults
    server: RunningServer
    spec: Tally  # every request and answer, checked against HubSpot's OpenAPI descriptions
    connectors: list[HubSpotConnector] = field(default_factory=list)
    ids: dict[str, Any] = field(default_factory=dict)  # the records of :func:`seeded`, by dataset
    searches_per_second: int | None = None  # the connectors' search limiter when the sandbox allows more

    def connector(self, **kwargs: Any) -> HubSpotConnector:
        kwargs.setdefault("token", TOKEN)
        if self.searches_per_second is not None:
            kwargs.setdefault("search_rate_limit", RateLimiter(self.searches_per_second, 1.0))
        connector = HubSpotConnector(base_url=self.server.url, **kwargs)
        self.connectors.append(connector)
        return connector


async def start_portal(state: HubSpotState, **app_kwargs: Any) -> Portal:
    faults = Faults()
    checked = SpecCheck(hubspot_app(state, token=TOKEN, faults=faults, **app_kwargs), hubspot_contract())
    server = await serve_app(checked, host="127.0.0.1", port=0)
    return Portal(state, faults, server, checked.tally)


async def stop_portal(portal: Portal) -> None:
    for connector in portal.connectors:
        await connector.aclose()
    await portal.server.stop()
    portal.spec.assert_clean()  # what crossed the wire fits HubSpot's descriptions (or a listed exception)


def seeded() -> tuple[HubSpotState, dict[str, Any]]:
    state = HubSpotState()
    lea = state.add_contact(EMAIL, firstname="Lea", lastname="Petit", phone="+33 6 12 34 56 78",
                            address="12 rue des Lilas", city="Lyon", zip="69001", country="France",
                            company="Atelier Petit", lifecyclestage="customer",
                            created_at=datetime(2021, 3, 4, 10, 0, tzinfo=UTC))
    ids = {
        "contact": lea,
        "notes": [state.add_note(lea, "Called about her order."), state.add_note(lea, "Prefers email.")],
        "deals": [state.add_deal(lea, "Spring order", "240.00")],
        "tickets": [state.add_ticket(lea, "Parcel damaged", "The box was crushed.")],
        "emails": [state.add_email(lea, "Where is my parcel?", "Hello..."),
                   state.add_email(lea, "Re: Where is my parcel?", "It ships today.", direction="EMAIL")],
    }
    other = state.add_contact("someone.else@example.org", firstname="Paul", lastname="Martin")
    state.add_note(other, "Not Léa's note.")
    state.add_deal(other, "Not Léa's deal", "10.00")
    return state, ids


FAST_SEARCHES = 40
"""Searches per second the ``portal`` fixture's sandbox allows, and its connectors take (half): HubSpot's real
4 per second made each test of five searches or more wait out a window in real time (about 1.3 s a test, 15 s
of the fast loop), for a limit only the rate-limit tests below are about; they keep HubSpot's real limits."""


@pytest.fixture
async def portal() -> AsyncIterator[Portal]:
    state, ids = seeded()
    running = await start_portal(state, search_rate_limit=(FAST_SEARCHES, 1.0))
    running.ids = ids
    running.searches_per_second = FAST_SEARCHES // 2
    try:
        yield running
    finally:
        await stop_portal(running)


@pytest.fixture
def store(tmp_path: Path) -> ExportStore:
    return file_exports(tmp_path / "storage")


def searches_sent(portal: Portal) -> int:
    """Searches that reached the fault layer, whether or not it let them through."""
    return sum(1 for line in portal.faults.log if line.endswith("/search"))


def searches(state: HubSpotState) -> int:
    return sum(1 for method, path in state.requests if path.endswith("/search"))


# --- protocol and locate ---------------------------------------------------------------------------


async def test_is_a_connector(portal: Portal) -> None:
    connector = portal.connector()
    assert isinstance(connector, Connector)
    assert connector.name == "hubspot"
    assert (await connector.check()).startswith("auth OK")


async def test_locate_is_case_insensitive_and_deduplicated(portal: Portal) -> None:
    connector = portal.connector()
    found = await connector.locate(SUBJECT)
    assert [(loc.dataset, loc.record_id) for loc in found] == [("contact", portal.ids["contact"])]
    assert searches(portal.state) == 2  # as given, then lower-cased: one contact, reported once
    assert await connector.locate(Subject(email="nobody@example.org")) == []
    assert searches(portal.state) == 3  # already lower-case: one search


# --- export --------------------------------------------------------------------------------------


async def test_export_streams_every_dataset_to_the_encrypted_store(portal: Portal, store: ExportStore) -> None:
    cursors: list[Mapping[str, Any]] = []
    outcome = await portal.connector().export(ExportJob(
        request_id=REQUEST, subject=SUBJECT, sink=store.sink(REQUEST), checkpoint=cursors.append))

    assert outcome.connector == "hubspot" and outcome.found == 1
    assert {(d.dataset, d.records, d.provided) for d in outcome.datasets} == {
        ("contact", 1, True), ("notes", 2, False), ("deals", 1, False), ("tickets", 1, False), ("emails", 2, False),
    }
    assert outcome.counts == {"exported": 7}
    assert {(d.system, d.dataset, d.records) for d in store.datasets(REQUEST)} == {
        ("hubspot", "contact", 1), ("hubspot", "notes", 2), ("hubspot", "deals", 1),
        ("hubspot", "tickets", 1), ("hubspot", "emails", 2),
    }
    [contact] = store.read(REQUEST, "hubspot", "contact")
    assert contact["id"] == portal.ids["contact"]
    assert contact["properties"]["email"] == EMAIL
    assert contact["properties"]["firstname"] == "Lea"
    assert contact["properties"]["zip"] == "69001"
    assert contact["properties"]["lifecyclestage"] == "customer"  # derived data is part of access
    notes = list(store.read(REQUEST, "hubspot", "notes"))
    assert [n["id"] for n in notes] == portal.ids["notes"]
    assert notes[0]["properties"]["hs_note_body"] == "Called about her order."
    assert all(n["contact_id"] == portal.ids["contact"] for n in notes)
    [deal] = store.read(REQUEST, "hubspot", "deals")
    assert deal["properties"]["dealname"] == "Spring order" and deal["properties"]["amount"] == "240.00"
    [ticket] = store.read(REQUEST, "hubspot", "tickets")
    assert ticket["properties"]["subject"] == "Parcel damaged"
    emails = list(store.read(REQUEST, "hubspot", "emails"))
    assert [e["properties"]["hs_email_subject"] for e in emails] == ["Where is my parcel?", "Re: Where is my parcel?"]
    # Encrypted at rest; one checkpoint per page (contact + 4 association pages).
    raw = b"".join(raw_dataset(store, REQUEST, "hubspot", "contact"))
    assert b"lea.petit" not in raw and b"Lyon" not in raw
    assert len(cursors) == 5 and cursors[-1]["written"] == {
        "contact": 1, "notes": 2, "deals": 1, "tickets": 1, "emails": 2}
    # Nothing personal in the outcome that goes into workflow history.
    assert "lea" not in repr(outcome).lower()


async def test_portability_exports_only_what_the_subject_provided(portal: Portal, store: ExportStore) -> None:
    outcome = await portal.connector().export(ExportJob(
        request_id=REQUEST, subject=SUBJECT, sink=store.sink(REQUEST), provided_only=True))
    # Only the contact is exported; the associated records are counted so the reply can say what was left out.
    assert [(d.dataset, d.records, d.provided) for d in outcome.datasets] == [
        ("contact", 1, True), ("notes", 2, False), ("deals", 1, False), ("tickets", 1, False), ("emails", 2, False)]
    assert [(d.dataset, d.provided) for d in store.datasets(REQUEST)] == [("contact", True)]
    [contact] = store.read(REQUEST, "hubspot", "contact")
    assert contact["properties"]["firstname"] == "Lea" and contact["properties"]["address"] == "12 rue des Lilas"
    assert "lifecyclestage" not in contact["properties"] and "createdAt" not in contact
    assert any("portability" in note for note in outcome.notes)


async def test_export_pages_through_many_associations(portal: Portal, store: ExportStore) -> None:
    made = portal.state.seed_activity(portal.ids["contact"], notes=250)
    cursors: list[Mapping[str, Any]] = []
    outcome = await portal.connector().export(ExportJob(
        request_id=REQUEST, subject=SUBJECT, sink=store.sink(REQUEST), checkpoint=cursors.append))
    assert {d.dataset: d.records for d in outcome.datasets}["notes"] == 252
    assert [n["id"] for n in store.read(REQUEST, "hubspot", "notes")] == portal.ids["notes"] + made["notes"]
    assert len(cursors) == 1 + 3 + 3  # contact, notes in 3 pages of 100, deals, tickets, emails
    association_calls = [p for m, p in portal.state.requests if "/associations/notes" in p]
    assert len(association_calls) == 3


def _dataset_page(method: str, path: str, query: Query) -> bool:
    """An export's call for one of her datasets: her contact, or a page of one of its associations."""
    return method == "GET" and path.startswith(("/crm/v3/objects/contacts/", "/crm/v4/objects/contacts/"))


async def test_an_export_pages_its_datasets_side_by_side_never_more_than_its_bound(store: ExportStore) -> None:
    state, ids = seeded()
    made = state.seed_activity(ids["contact"], notes=250, emails=130)
    gatekeeper = Gatekeeper(hubspot_app(state, token=TOKEN, search_rate_limit=(FAST_SEARCHES, 1.0)), _dataset_page)
    gatekeeper.together, gatekeeper.hold = DATASETS_AT_ONCE, 0.3  # as if each call took HubSpot a while
    server = await serve_app(gatekeeper, host="127.0.0.1", port=0)
    connector = HubSpotConnector(base_url=server.url, token=TOKEN)
    cursors: list[Mapping[str, Any]] = []
    try:
        await connector.export(ExportJob(request_id=REQUEST, subject=SUBJECT, sink=store.sink(REQUEST),
                                         checkpoint=cursors.append))
    finally:
        await connector.aclose()
        await server.stop()
    assert gatekeeper.most == DATASETS_AT_ONCE
    # each dataset in its pages' order, once
    assert [n["id"] for n in store.read(REQUEST, "hubspot", "notes")] == ids["notes"] + made["notes"]
    assert [e["id"] for e in store.read(REQUEST, "hubspot", "emails")] == ids["emails"] + made["emails"]
    # side by side: the deals were checkpointed before the notes' last page
    notes_done = next(i for i, c in enumerate(cursors) if c["written"]["notes"] == 252)
    deals_done = next(i for i, c in enumerate(cursors) if c["written"]["deals"] == 1)
    assert deals_done < notes_done
    for dataset in ("contact", "notes", "deals", "tickets", "emails"):  # each one's count only moves on
        assert [c["written"][dataset] for c in cursors] == sorted(c["written"][dataset] for c in cursors)
    assert cursors[-1]["lanes"] == {d: [1, None] for d in ("contact", "notes", "deals", "tickets", "emails")}


def _association_page(method: str, path: str, query: Query) -> bool:
    """A page of one of a contact's associations (portability counts them without reading them)."""
    return method == "GET" and path.startswith("/crm/v4/objects/contacts/") and "/associations/" in path


async def test_portability_counts_the_associations_at_once_each_listing_s_pages_in_order(store: ExportStore) -> None:
    state, ids = seeded()
    merged = state.add_contact("l.petit@work.example", hs_additional_emails=f"old@example.org;{EMAIL}")
    state.seed_activity(ids["contact"], notes=250)  # 3 pages, each asked after the one before
    state.seed_activity(merged, notes=1, deals=2)  # 4 datasets x 2 contacts: 8 listings
    gatekeeper = Gatekeeper(hubspot_app(state, token=TOKEN, search_rate_limit=(FAST_SEARCHES, 1.0)),
                            _association_page)
    gatekeeper.together, gatekeeper.hold = DATASETS_AT_ONCE, 0.3  # as if each call took HubSpot a while
    server = await serve_app(gatekeeper, host="127.0.0.1", port=0)
    connector = HubSpotConnector(base_url=server.url, token=TOKEN)
    try:
        outcome = await connector.export(ExportJob(request_id=REQUEST, subject=SUBJECT, sink=store.sink(REQUEST),
                                                   provided_only=True))
    finally:
        await connector.aclose()
        await server.stop()
    assert gatekeeper.most == DATASETS_AT_ONCE
    assert [(d.dataset, d.records, d.provided) for d in outcome.datasets] == [
        ("contact", 2, True), ("notes", 253, False), ("deals", 3, False), ("tickets", 1, False), ("emails", 2, False)]
    assert sum(1 for _, path in state.requests if path.endswith(f"/{ids['contact']}/associations/notes")) == 3
    assert not [t for t in asyncio.all_tasks() if "side_by_side" in getattr(t.get_coro(), "__qualname__", "")]


async def test_no_checkpoint_counts_a_record_not_yet_stored(portal: Portal, store: ExportStore) -> None:
    # The notes' chunks take a while to store; the datasets paged beside them checkpoint meanwhile, and what their
    # cursors count of the notes must already be on the store (a retry on another machine trusts it).
    portal.state.seed_activity(portal.ids["contact"], notes=250)
    stored_slowly(store, "notes")
    behind, checkpoint = counted_beyond_the_store(store, REQUEST)
    outcome = await portal.connector().export(ExportJob(request_id=REQUEST, subject=SUBJECT, sink=store.sink(REQUEST),
                                                        checkpoint=checkpoint))
    assert {d.dataset: d.records for d in outcome.datasets}["notes"] == 252
    assert behind == []


class Crash(Exception):
    pass


def a_worker_dying_at(fatal: Callable[[Mapping[str, Any]], bool],
                      ) -> tuple[list[Mapping[str, Any]], Callable[[Mapping[str, Any]], None]]:
    """The heartbeats that reached Temporal, and a checkpoint that dies at the first cursor ``fatal`` picks and at
    every one after it (a dead worker sends nothing more, whichever dataset paged beside would have)."""
    heartbeats: list[Mapping[str, Any]] = []
    dead = False

    def checkpoint(cursor: Mapping[str, Any]) -> None:
        nonlocal dead
        if dead or fatal(cursor):
            dead = True
            raise Crash
        heartbeats.append(dict(cursor))

    return heartbeats, checkpoint


async def test_export_resumes_after_a_crash_without_duplicates(portal: Portal, store: ExportStore) -> None:
    made = portal.state.seed_activity(portal.ids["contact"], notes=250, emails=130)
    # The worker dies at the third page of notes: written to the store, its heartbeat never reached Temporal.
    heartbeats, dies = a_worker_dying_at(lambda cursor: cursor["written"]["notes"] > 200)
    sink = store.sink(REQUEST)
    with pytest.raises(Crash):
        await portal.connector().export(ExportJob(request_id=REQUEST, subject=SUBJECT, sink=sink, checkpoint=dies))
    assert heartbeats[-1]["written"]["notes"] == 200
    assert heartbeats[-1]["lanes"]["notes"][0] == 0 and heartbeats[-1]["lanes"]["notes"][1]  # after its 2nd page
    assert {d.dataset: d.records for d in store.datasets(REQUEST)}["notes"] == 252  # a page past the cursor

    calls_before = len(portal.state.requests)
    outcome = await portal.connector().export(ExportJob(request_id=REQUEST, subject=SUBJECT, sink=sink,
                                                        resume=heartbeats[-1]))
    assert any("resumed" in note for note in outcome.notes)
    notes = [n["id"] for n in store.read(REQUEST, "hubspot", "notes")]
    assert notes == portal.ids["notes"] + made["notes"] and len(set(notes)) == 252
    emails = [e["id"] for e in store.read(REQUEST, "hubspot", "emails")]
    assert emails == portal.ids["emails"] + made["emails"] and len(set(emails)) == 132
    assert [c["id"] for c in store.read(REQUEST, "hubspot", "contact")] == [portal.ids["contact"]]
    assert {d.dataset: d.records for d in outcome.datasets} == {
        "contact": 1, "notes": 252, "deals": 1, "tickets": 1, "emails": 132}
    # The retry did not search again nor re-read the contact or the first two pages of notes.
    resumed_calls = portal.state.requests[calls_before:]
    assert not any(p.endswith("/search") for _, p in resumed_calls)
    assert sum(1 for _, p in resumed_calls if "/associations/notes" in p) == 1


async def test_a_cursor_without_a_dataset_s_place_or_count_starts_over_rather_than_export_twice(
        portal: Portal, store: ExportStore) -> None:
    made = portal.state.seed_activity(portal.ids["contact"], notes=150)
    cursors: list[Mapping[str, Any]] = []
    await portal.connector().export(ExportJob(request_id=REQUEST, subject=SUBJECT, sink=store.sink(REQUEST),
                                              checkpoint=cursors.append))
    first_page = next(c for c in cursors if c["written"]["notes"] == 100)
    without_place = {**first_page, "lanes": {d: p for d, p in first_page["lanes"].items() if d != "notes"}}
    without_count = {**first_page, "written": {d: n for d, n in first_page["written"].items() if d != "notes"}}
    for damaged in (without_place, without_count):
        outcome = await portal.connector().export(ExportJob(request_id=REQUEST, subject=SUBJECT,
                                                            sink=store.sink(REQUEST), resume=damaged))
        assert [n["id"] for n in store.read(REQUEST, "hubspot", "notes")] == portal.ids["notes"] + made["notes"]
        assert not any("resumed" in note for note in outcome.notes)


async def test_a_dataset_failing_mid_export_fails_it_transiently_with_nothing_left_running(
        portal: Portal, store: ExportStore) -> None:
    portal.state.seed_activity(portal.ids["contact"], notes=250)

    def then_hubspot_fails(cursor: Mapping[str, Any]) -> None:
        portal.faults.statuses = [503] * 50  # every call from here on, every try in place

    with pytest.raises(TransientConnectorError):
        await portal.connector().export(ExportJob(request_id=REQUEST, subject=SUBJECT, sink=store.sink(REQUEST),
                                                  checkpoint=then_hubspot_fails))
    assert not [t for t in asyncio.all_tasks() if "side_by_side" in getattr(t.get_coro(), "__qualname__", "")]
    portal.faults.clear()


async def test_a_resume_with_its_datasets_at_different_contacts_writes_each_record_once(
        portal: Portal, store: ExportStore) -> None:
    # Two contacts hold her address; each dataset walks them in order, at its own pace: the crash finds the notes
    # in the second contact's pages while the other datasets are wherever they got to.
    lea = portal.ids["contact"]
    merged = portal.state.add_contact("l.petit@work.example", hs_additional_emails=f"old@example.org;{EMAIL}")
    made = {c: portal.state.seed_activity(c, notes=150, deals=1) for c in (lea, merged)}
    # The worker dies at the first page of the second contact's notes.
    heartbeats, dies = a_worker_dying_at(lambda cursor: cursor["lanes"]["notes"][0] == 1
                                         and bool(cursor["lanes"]["notes"][1]))
    sink = store.sink(REQUEST)
    with pytest.raises(Crash):
        await portal.connector().export(ExportJob(request_id=REQUEST, subject=SUBJECT, sink=sink, checkpoint=dies))
    assert heartbeats[-1]["lanes"]["notes"] == [1, None]  # the first contact's notes done, the second's not begun
    outcome = await portal.connector().export(ExportJob(request_id=REQUEST, subject=SUBJECT, sink=sink,
                                                        resume=heartbeats[-1]))
    # not looked up again, and still saying what the lookup found
    assert "1 contact(s) found by a secondary address (hs_additional_emails); exported with everything they hold" \
        in outcome.notes and any("resumed" in note for note in outcome.notes)
    assert heartbeats[-1]["contacts"] == [lea, merged]  # as the search sorts them: by hs_object_id
    notes = [n["id"] for n in store.read(REQUEST, "hubspot", "notes")]
    assert notes == [*portal.ids["notes"], *made[lea]["notes"], *made[merged]["notes"]] and len(set(notes)) == 302
    deals = [d["id"] for d in store.read(REQUEST, "hubspot", "deals")]
    assert sorted(deals) == sorted([*portal.ids["deals"], *made[lea]["deals"], *made[merged]["deals"]])
    assert len(set(deals)) == len(deals) == 3
    assert sorted(c["id"] for c in store.read(REQUEST, "hubspot", "contact")) == sorted([lea, merged])


async def test_export_without_a_cursor_starts_over_cleanly(portal: Portal, store: ExportStore) -> None:
    sink = store.sink(REQUEST)

    def crash(cursor: Mapping[str, Any]) -> None:
        raise Crash

    with pytest.raises(Crash):  # dies before its first heartbeat: Temporal has no cursor to give back
        await portal.connector().export(ExportJob(request_id=REQUEST, subject=SUBJECT, sink=sink, checkpoint=crash))
    await portal.connector().export(ExportJob(request_id=REQUEST, subject=SUBJECT, sink=sink))
    assert {d.dataset: d.records for d in store.datasets(REQUEST)} == {
        "contact": 1, "notes": 2, "deals": 1, "tickets": 1, "emails": 2}


async def test_export_of_an_unknown_subject_writes_nothing(portal: Portal, store: ExportStore) -> None:
    outcome = await portal.connector().export(ExportJob(
        request_id=REQUEST, subject=Subject(email="nobody@example.org"), sink=store.sink(REQUEST)))
    assert outcome.found == 0 and outcome.counts == {"exported": 0} and store.datasets(REQUEST) == []


# --- erase ---------------------------------------------------------------------------------------


async def test_erase_uses_gdpr_delete_and_is_idempotent(portal: Portal) -> None:
    connector = portal.connector()
    contact = portal.ids["contact"]
    job = OperationJob(request_id=REQUEST, subject=SUBJECT)

    outcome = await connector.erase(job)
    assert [(r.dataset, r.record_id, r.action) for r in outcome.report] == [("contact", contact, RecordAction.DELETED)]
    assert outcome.counts == {"deleted": 1}
    assert any("30 days" in note for note in outcome.notes)
    assert portal.state.was_gdpr_deleted(contact) and not portal.state.is_archived(contact)
    assert portal.state.contact(contact) is None
    assert ("POST", "/crm/v3/objects/contacts/gdpr-delete") in portal.state.requests
    assert not any(method == "DELETE" for method, _ in portal.state.requests)  # never the restorable archive
    assert portal.state.find_contacts("someone.else@example.org")  # nobody else touched

    # Verification, as the fan-out activity does it: locate again, nothing may remain.
    found_again = await connector.locate(SUBJECT)
    assert found_again == [] and unexpected_remains(outcome, found_again) == []

    # Run again for the same request (its journal): the same outcome, nothing asked twice. For a later
    # request the contact was gone before it: "already gone".
    assert await connector.erase(job) == outcome
    again = await connector.erase(OperationJob(request_id=REQUEST + "2", subject=SUBJECT))
    assert [r.action for r in again.report] == [RecordAction.ALREADY_GONE]
    assert again.counts == {"already_gone": 1}
    assert sum(1 for _, p in portal.state.requests if p.endswith("gdpr-delete")) == 1
    assert "lea" not in (repr(outcome) + repr(again)).lower()


async def test_erase_of_a_contact_deleted_meanwhile_is_already_gone(portal: Portal) -> None:
    connector = portal.connector()
    contact = portal.ids["contact"]
    portal.state.gdpr_delete(contact)
    # Located a moment before, deleted since: gdpr-delete answers 404 for the id.
    connector._contacts = _returns([{"id": contact}])  # type: ignore[method-assign]
    outcome = await connector.erase(OperationJob(request_id=REQUEST, subject=SUBJECT))
    assert [(r.record_id, r.action) for r in outcome.report] == [(contact, RecordAction.ALREADY_GONE)]


def _returns(value: list[dict[str, Any]]) -> Any:
    async def contacts(*emails: str) -> list[dict[str, Any]]:
        return value

    return contacts


async def test_a_retention_rule_keeps_the_contact_with_its_basis_and_date(portal: Portal) -> None:
    rule = RetentionRule("contact", "Art. 17(3)(b) GDPR; Code de commerce L123-22", years=10)
    connector = portal.connector(retention=[rule])
    outcome = await connector.erase(OperationJob(request_id=REQUEST, subject=SUBJECT))
    [report] = outcome.report
    assert report.action == RecordAction.RETAINED and report.retained_until == date(2031, 3, 4)
    assert report.legal_basis == rule.legal_basis
    assert not portal.state.gdpr_deleted
    assert unexpected_remains(outcome, await connector.locate(SUBJECT)) == []
    with pytest.raises(ValueError, match="only the 'contact' dataset"):
        HubSpotConnector(token=TOKEN, retention=[RetentionRule("deals", "x")])


# --- rectify -------------------------------------------------------------------------------------


async def test_rectify_patches_only_what_differs_and_is_idempotent(portal: Portal) -> None:
    connector = portal.connector()
    contact = portal.ids["contact"]
    changes = {"first_name": "Léa", "last_name": "Petit", "city": "Paris", "postcode": "75011",
               "address_line2": "Bâtiment B"}
    job = OperationJob(request_id=REQUEST, subject=SUBJECT, changes=changes)

    outcome = await connector.rectify(job)
    [report] = outcome.report
    assert report.record_id == contact and report.action == RecordAction.CHANGED
    assert report.fields == ["city", "first_name", "postcode"]
    assert portal.state.patches == [(contact, {"firstname": "Léa", "city": "Paris", "zip": "75011"})]
    props = portal.state.contact(contact) or {}
    assert (props["firstname"], props["lastname"], props["city"], props["zip"]) == ("Léa", "Petit", "Paris", "75011")
    assert any("address_line2" in note for note in outcome.notes)
    # No old or new values anywhere in the outcome.
    text = repr(outcome)
    assert not any(value in text for value in ("Léa", "Paris", "75011", "Lyon", "69001", "Bâtiment"))

    assert await connector.rectify(job) == outcome and len(portal.state.patches) == 1  # a retry: its journal
    # Without the journal (what a later request sees): nothing differs any more.
    again = await connector.rectify(OperationJob(request_id=REQUEST, subject=SUBJECT, changes=changes))
    assert [(r.record_id, r.action) for r in again.report] == [(contact, RecordAction.UNCHANGED)]
    assert again.counts == {"unchanged": 1} and len(portal.state.patches) == 1


async def test_rectify_email_is_idempotent_under_the_new_address(portal: Portal) -> None:
    connector = portal.connector()
    job = OperationJob(request_id=REQUEST, subject=SUBJECT, changes={"email": "Lea.Dupont@Example.org"})
    first = await connector.rectify(job)
    assert [(r.action, r.fields) for r in first.report] == [(RecordAction.CHANGED, ["email"])]
    assert portal.state.find_contacts("lea.dupont@example.org") == [portal.ids["contact"]]
    assert await connector.rectify(job) == first  # a retry, from its journal
    # Without the journal: the old address finds nothing any more; the new one does.
    second = await connector.rectify(OperationJob(request_id=REQUEST, subject=SUBJECT, changes=job.changes))
    assert [r.action for r in second.report] == [RecordAction.UNCHANGED]


async def test_already_up_to_date_only_for_what_hubspot_holds_exactly(portal: Portal) -> None:
    connector = portal.connector()
    contact = portal.ids["contact"]
    # HubSpot has no property for the second address line: this contact is neither corrected nor "up to date".
    only_unmapped = await connector.rectify(OperationJob(request_id=REQUEST, subject=SUBJECT,
                                                         changes={"address_line2": "Bâtiment B"}))
    assert only_unmapped.report == [] and any("address_line2" in note for note in only_unmapped.notes)
    # Read and equal: the line names the fields compared, and only those (not the unmapped one).
    equal = await connector.rectify(OperationJob(request_id=REQUEST + "2", subject=SUBJECT,
                                                 changes={"city": "Lyon", "address_line2": "Bâtiment B"}))
    assert [(r.record_id, r.action, r.fields) for r in equal.report] == [(contact, RecordAction.UNCHANGED, ["city"])]
    # A value differing only by spaces or case differs: it is corrected, not "already up to date".
    portal.state.objects["contacts"][contact].properties["city"] = "Lyon "
    spaced = await connector.rectify(OperationJob(request_id=REQUEST + "3", subject=SUBJECT, changes={"city": "Lyon"}))
    assert [(r.action, r.fields) for r in spaced.report] == [(RecordAction.CHANGED, ["city"])]
    cased = await connector.rectify(OperationJob(request_id=REQUEST + "4", subject=SUBJECT, changes={"city": "LYON"}))
    assert [(r.action, r.fields) for r in cased.report] == [(RecordAction.CHANGED, ["city"])]
    assert (portal.state.contact(contact) or {})["city"] == "LYON"
    assert len(portal.state.patches) == 2


async def test_the_new_address_as_a_secondary_is_not_up_to_date_while_the_old_one_is_primary(portal: Portal) -> None:
    contact = portal.ids["contact"]
    portal.state.objects["contacts"][contact].properties[SECONDARY] = "lea.new@example.org"
    outcome = await portal.connector().rectify(OperationJob(request_id=REQUEST, subject=SUBJECT,
                                                            changes={"email": "lea.new@example.org"}))
    assert [(r.action, r.fields) for r in outcome.report] == [(RecordAction.CHANGED, ["email"])]
    assert (portal.state.contact(contact) or {})["email"] == "lea.new@example.org"


async def test_rectify_refuses_unknown_fields_without_calling_hubspot(portal: Portal) -> None:
    with pytest.raises(PermanentConnectorError, match="unknown field"):
        await portal.connector().rectify(OperationJob(request_id=REQUEST, subject=SUBJECT,
                                                      changes={"favourite_colour": "blue"}))
    assert portal.state.requests == []


# --- errors --------------------------------------------------------------------------------------


async def test_bad_credentials_are_permanent(portal: Portal) -> None:
    connector = portal.connector(token="pat-eu1-revoked")
    for call in (connector.check(), connector.locate(SUBJECT)):
        with pytest.raises(PermanentConnectorError) as raised:
            await call
        assert "check the credentials of connector hubspot" in str(raised.value)
        assert "INVALID_AUTHENTICATION" in str(raised.value)
        assert "lea" not in str(raised.value).lower()


async def test_injected_429_honours_retry_after(portal: Portal) -> None:
    # A wait longer than READ_WAIT_MAX is not spent in place: the attempt fails with the vendor's wait,
    # which Temporal honours.
    portal.faults.statuses.append(429)
    portal.faults.retry_after = "30"
    with pytest.raises(TransientConnectorError) as raised:
        await portal.connector().locate(SUBJECT)
    assert raised.value.retry_after == 30.0
    assert "lea" not in str(raised.value).lower()
    assert searches(portal.state) == 0  # the 429 was answered by the fault layer; no second try


async def test_a_short_retry_after_on_a_read_is_waited_out_in_place(portal: Portal) -> None:
    connector = portal.connector()
    assert len(await connector.locate(SUBJECT)) == 1
    clean = searches_sent(portal)
    portal.faults.statuses.append(429)
    portal.faults.retry_after = "1"
    found = await connector.locate(SUBJECT)
    assert [f.dataset for f in found] == ["contact"]
    assert searches_sent(portal) == 2 * clean + 1  # the throttled try, then the one that passed


async def test_server_errors_and_dropped_connections_are_transient(portal: Portal, store: ExportStore) -> None:
    connector = portal.connector()
    portal.faults.statuses.extend([503] * READ_TRIES)  # a read fails the attempt once every try failed
    with pytest.raises(TransientConnectorError, match="HTTP 503"):
        await connector.erase(OperationJob(request_id=REQUEST, subject=SUBJECT))
    portal.faults.drop_next = READ_TRIES
    with pytest.raises(TransientConnectorError, match="connection failed"):
        await connector.export(ExportJob(request_id=REQUEST, subject=SUBJECT, sink=store.sink(REQUEST)))
    assert portal.state.gdpr_deleted == set()
    # The same connector works again once the fault is gone.
    assert len(await connector.locate(SUBJECT)) == 1


async def test_one_failed_read_is_retried_in_place_but_a_write_never_is(portal: Portal) -> None:
    connector = portal.connector()
    assert len(await connector.locate(SUBJECT)) == 1
    clean = searches_sent(portal)
    portal.faults.statuses.append(503)
    portal.faults.drop_next = 1  # the second try is dropped too; the third passes
    assert len(await connector.locate(SUBJECT)) == 1
    assert searches_sent(portal) == 2 * clean + 2
    # A write whose answer is lost may have taken effect: it fails the attempt (the journal and the
    # activity's retry decide what it did), and is sent once.
    portal.faults.lose_answers.append("POST /crm/v3/objects/contacts/gdpr-delete")
    with pytest.raises(TransientConnectorError, match="connection failed"):
        await connector.erase(OperationJob(request_id=REQUEST, subject=SUBJECT))
    assert sum(1 for line in portal.faults.log if line.endswith("/gdpr-delete")) == 1


async def test_timeouts_are_transient(portal: Portal) -> None:
    portal.faults.delay_seconds = 0.5
    with pytest.raises(TransientConnectorError, match="timed out"):
        await portal.connector(timeout=0.1).check()


# --- rate limits ---------------------------------------------------------------------------------


async def test_the_sandbox_rate_limit_answers_429_to_a_burst() -> None:
    portal = await start_portal(HubSpotState(), rate_limit=(10, 1.0))
    try:
        connector = portal.connector(rate_limit=RateLimiter(1000, 1.0))  # effectively unlimited
        results = await asyncio.gather(*(connector.check() for _ in range(15)), return_exceptions=True)
        # Five calls over the limit got 429 with a Retry-After of at least a second, which a read waits out
        # in place: every check answers in the end.
        assert portal.state.rate_limited >= 5
        assert all(isinstance(r, str) and r.startswith("auth OK") for r in results), results
    finally:
        await stop_portal(portal)


async def test_the_connector_rate_limiter_keeps_a_burst_under_the_limit() -> None:
    # Twice the connector's rate per window: however the two bursts' latencies differ, one sandbox window
    # never sees more than two of the connector's windows' worth of calls.
    portal = await start_portal(HubSpotState(), rate_limit=(10, 1.0))
    try:
        connector = portal.connector(rate_limit=RateLimiter(5, 1.0))
        results = await asyncio.gather(*(connector.check() for _ in range(15)), return_exceptions=True)
        assert all(isinstance(r, str) and r.startswith("auth OK") for r in results), results
        assert portal.state.rate_limited == 0 and len(portal.state.requests) == 15
    finally:
        await stop_portal(portal)


async def test_searches_stay_under_the_search_limit() -> None:
    portal = await start_portal(seeded()[0])  # HubSpot's real limits, not the fixture's
    try:
        connector = portal.connector()  # default search limiter: under HubSpot's ~4 searches per second
        results = await asyncio.gather(*(connector.locate(Subject(email=EMAIL)) for _ in range(6)))
        assert all(len(found) == 1 for found in results)
        assert portal.state.rate_limited == 0 and searches(portal.state) == 6
    finally:
        await stop_portal(portal)


# --- secondary addresses (hs_additional_emails) -----------------------------------------------------


async def test_a_contact_with_the_subjects_address_as_a_secondary_one_is_located_exported_and_erased(
        portal: Portal, store: ExportStore) -> None:
    merged = portal.state.add_contact("l.petit@work.example", firstname="Léa", lastname="Petit",
                                      hs_additional_emails=f"old@example.org;{EMAIL.upper()}")
    note = portal.state.add_note(merged, "Merged from an old record.")
    portal.state.add_contact("someone@example.org", hs_additional_emails="not.lea.petit@example.org")
    connector = portal.connector()

    found = await connector.locate(SUBJECT)
    assert [loc.record_id for loc in found] == [portal.ids["contact"], merged]

    outcome = await connector.export(ExportJob(request_id=REQUEST, subject=SUBJECT, sink=store.sink(REQUEST)))
    assert outcome.found == 2
    assert [c["id"] for c in store.read(REQUEST, "hubspot", "contact")] == [portal.ids["contact"], merged]
    assert note in [n["id"] for n in store.read(REQUEST, "hubspot", "notes")]
    assert any("1 contact(s) found by a secondary address" in n for n in outcome.notes)

    erased = await connector.erase(OperationJob(request_id=REQUEST, subject=SUBJECT))
    assert [(r.record_id, r.action) for r in erased.report] == [
        (portal.ids["contact"], RecordAction.DELETED), (merged, RecordAction.DELETED)]
    assert portal.state.was_gdpr_deleted(merged)
    assert any("deleted whole with its primary address" in n for n in erased.notes)
    assert "lea" not in repr(erased).lower() and "petit" not in repr(outcome).lower()
    # HubSpot blocklists the deleted contact's addresses, primary and secondary.
    assert portal.state.is_blocklisted("l.petit@work.example") and portal.state.is_blocklisted(EMAIL)
    assert await connector.locate(SUBJECT) == []
    assert portal.state.find_contacts("someone@example.org")  # a token of another address is no match


async def test_a_looser_token_search_finds_no_one_extra(portal: Portal) -> None:
    """HubSpot does not document how CONTAINS_TOKEN splits ``hs_additional_emails``; a tokeniser splitting on "@"
    and "." would answer contacts sharing only the address's words. The connector keeps exact holders only."""
    portal.state.loose_tokens = True
    merged = portal.state.add_contact("l.petit@work.example", hs_additional_emails=f"old@example.org;{EMAIL}")
    shuffled = EMAIL.split("@")[0].split(".")
    lookalike = portal.state.add_contact(  # the same words in another order: every token is there
        "someone@example.org", hs_additional_emails=f"{'.'.join(reversed(shuffled))}@{EMAIL.split('@')[1]}")
    connector = portal.connector()
    found = [loc.record_id for loc in await connector.locate(SUBJECT)]
    assert found == [portal.ids["contact"], merged]
    # the loose search did answer the look-alike: only the connector's exact check left it out
    body = {"filterGroups": [{"filters": [{"propertyName": "hs_additional_emails", "operator": "CONTAINS_TOKEN",
                                           "value": EMAIL}]}], "properties": ["email"], "limit": 10, "after": "0",
            "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}]}
    async with http_client(base_url=portal.server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        answered = (await http.post("/crm/v3/objects/contacts/search", json=body)).json()["results"]
    assert {r["id"] for r in answered} == {merged, lookalike}


async def test_rectifying_the_email_of_a_secondary_match_corrects_that_address_only(portal: Portal) -> None:
    portal.state.gdpr_delete(portal.ids["contact"])
    merged = portal.state.add_contact("l.petit@work.example", hs_additional_emails=f"old@example.org;{EMAIL}")
    connector = portal.connector()
    job = OperationJob(request_id=REQUEST, subject=SUBJECT, changes={"email": "lea.new@example.org"})
    outcome = await connector.rectify(job)
    assert [(r.record_id, r.action, r.fields) for r in outcome.report] == [(merged, RecordAction.CHANGED, ["email"])]
    props = portal.state.contact(merged) or {}
    assert props["email"] == "l.petit@work.example"  # the primary address is not the one being corrected
    assert props["hs_additional_emails"] == "old@example.org;lea.new@example.org"
    # Without the journal (a later request): found under the new address, nothing left to change.
    again = await connector.rectify(OperationJob(request_id=REQUEST + "2", subject=SUBJECT, changes=job.changes))
    assert [r.action for r in again.report] == [RecordAction.UNCHANGED]
    assert len(portal.state.patches) == 1


async def test_searches_send_what_hubspots_description_requires(portal: Portal) -> None:
    await portal.connector().locate(SUBJECT)
    # Every request and answer passed the description (checked at teardown); the search's own shape:
    assert portal.spec.requests >= 2 and portal.spec.unexcused() == []
    assert {v.where for v in portal.spec.violations} <= {"sorts[]"}  # the one listed exception


# --- objection to direct marketing (communication preferences) --------------------------------------------


async def test_stop_marketing_unsubscribes_from_every_type_with_a_legal_basis_and_never_patches(
    portal: Portal,
) -> None:
    portal.state.subscribe(EMAIL, "7001")
    portal.state.subscribe(EMAIL, "7002")
    portal.state.subscriptions[EMAIL]["7003"] = {"status": "NOT_SUBSCRIBED", "legalBasis": "CONSENT_WITH_NOTICE",
                                                 "legalBasisExplanation": "opted out in 2024"}
    connector = portal.connector()
    outcome = await connector.stop_marketing(OperationJob(request_id=REQUEST, subject=SUBJECT))
    assert [(r.dataset, r.record_id, r.action) for r in outcome.report] == [
        ("subscriptions", "7001", RecordAction.UNSUBSCRIBED),
        ("subscriptions", "7002", RecordAction.UNSUBSCRIBED),
        ("subscriptions", "7003", RecordAction.UNCHANGED),
    ]
    assert outcome.counts == {"unsubscribed": 2, "unchanged": 1}
    for sub_id in ("7001", "7002", "7003"):
        assert portal.state.subscription_status(EMAIL, sub_id) == "NOT_SUBSCRIBED"
    newsletter = portal.state.subscriptions[EMAIL]["7001"]
    assert newsletter["legalBasis"] == "LEGITIMATE_INTEREST_OTHER"
    assert "Art. 21" in newsletter["legalBasisExplanation"] and REQUEST in newsletter["legalBasisExplanation"]
    assert portal.state.patches == []  # never by editing a contact property
    assert all(EMAIL not in note for note in outcome.notes) and all(EMAIL not in r.note for r in outcome.report)

    again = await connector.stop_marketing(OperationJob(request_id=REQUEST, subject=SUBJECT))
    assert again.counts == {"unchanged": 3}  # idempotent: a retry asks nothing twice


async def test_stop_marketing_covers_an_address_that_is_no_contact(portal: Portal) -> None:
    # HubSpot keeps statuses per address: an address it has no contact for is opted out all the same, so a
    # later import or form cannot bring it back into a campaign silently.
    stranger = "nobody.yet@example.net"
    outcome = await portal.connector().stop_marketing(
        OperationJob(request_id=REQUEST, subject=Subject(email=stranger)))
    assert outcome.counts == {"unsubscribed": 3}
    assert portal.state.subscription_status(stranger, "7002") == "NOT_SUBSCRIBED"


async def test_stop_marketing_takes_an_unsubscription_whose_answer_was_lost(portal: Portal) -> None:
    portal.state.subscribe(EMAIL, "7001")
    connector = portal.connector()
    real_call = connector._call

    async def status_read_before_a_lost_answer(method: str, path: str, **kwargs: Any) -> Any:
        response = await real_call(method, path, **kwargs)
        if path.startswith("/communication-preferences/v3/status/"):
            # An earlier attempt's unsubscribe took effect after this read; its answer never came back.
            portal.state.subscriptions[EMAIL]["7001"]["status"] = "NOT_SUBSCRIBED"
        return response

    connector._call = status_read_before_a_lost_answer  # type: ignore[method-assign]
    outcome = await connector.stop_marketing(OperationJob(request_id=REQUEST, subject=SUBJECT))
    assert ("7001", RecordAction.UNSUBSCRIBED) in [(r.record_id, r.action) for r in outcome.report]


async def test_stop_marketing_with_bad_credentials_is_permanent(portal: Portal) -> None:
    with pytest.raises(PermanentConnectorError, match="credentials") as raised:
        await portal.connector(token="wrong").stop_marketing(OperationJob(request_id=REQUEST, subject=SUBJECT))
    assert EMAIL not in str(raised.value).lower()


# --- restriction (Art. 18) ---------------------------------------------------------------------------------


async def test_restrict_sets_the_contact_property_read_back_and_lifting_clears_it(portal: Portal) -> None:
    contact = portal.ids["contact"]
    connector = portal.connector()
    job = OperationJob(request_id=REQUEST, subject=SUBJECT)
    outcome = await connector.restrict(job)
    assert [(r.dataset, r.record_id, r.action, r.fields) for r in outcome.report] == [
        ("contact", contact, RecordAction.RESTRICTED, ["dsr_restricted"])]
    assert (portal.state.contact(contact) or {})["dsr_restricted"] == REQUEST
    assert portal.state.patches == [(contact, {"dsr_restricted": REQUEST})]  # that property only
    assert (await connector.restrict(job)).counts == {"unchanged": 1}  # a retry writes nothing
    assert len(portal.state.patches) == 1
    other = portal.state.find_contacts("someone.else@example.org")[0]
    assert "dsr_restricted" not in (portal.state.contact(other) or {})

    lifted = await connector.lift_restriction(job)
    assert [(r.record_id, r.action) for r in lifted.report] == [(contact, RecordAction.LIFTED)]
    assert "dsr_restricted" not in (portal.state.contact(contact) or {})
    assert (await connector.lift_restriction(job)).counts == {"unchanged": 1}


async def test_a_portal_without_the_property_refuses_the_mark_for_good(portal: Portal) -> None:
    # HubSpot refuses a property its portal does not define (PROPERTY_DOESNT_EXIST): the admin must create it.
    from sandbox import hubspot as sandbox_hubspot

    known = sandbox_hubspot.KNOWN_PROPERTIES
    sandbox_hubspot.KNOWN_PROPERTIES = {**known, "contacts": known["contacts"] - {"dsr_restricted"}}
    try:
        with pytest.raises(PermanentConnectorError):
            await portal.connector().restrict(OperationJob(request_id=REQUEST, subject=SUBJECT))
    finally:
        sandbox_hubspot.KNOWN_PROPERTIES = known
