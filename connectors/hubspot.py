"""HubSpot CRM (v3 objects, v4 associations) behind the :class:`~connectors.base.Connector` protocol.

* locate: ``POST /crm/v3/objects/contacts/search``, two filter groups (OR): ``email EQ`` the address and
  ``hs_additional_emails CONTAINS_TOKEN`` it (a contact's secondary addresses, e.g. after a merge), the
  address as given and lower-cased when different; each hit is confirmed on the client (the primary
  address, or one of the ``;``-separated secondary ones, equal ignoring case), de-duplicated; contacts
  only (associated objects follow their contact). Sorted by ``hs_object_id``, paged with ``after``
  (``"0"`` first), both of which HubSpot's description requires.
* export: the contact's documented personal properties (``GET /crm/v3/objects/contacts/{id}``), then
  for each of notes, deals, tickets, emails: association pages (``GET /crm/v4/.../associations/{type}``,
  100 per page) read with ``POST /crm/v3/objects/{type}/batch/read``. The datasets are paged side by side
  (``DATASETS_AT_ONCE``), each one's pages in order; a checkpoint after every page holds each dataset's place.
  Portability exports the contact alone and counts the associations it leaves out, as many listings at a time.
* erase: ``POST /crm/v3/objects/contacts/gdpr-delete`` by object id — permanent — never the plain
  ``DELETE``, which only archives (restorable for 90 days). A contact found by a secondary address is
  deleted whole (HubSpot has no deletion of one address; its knowledge base says the primary and the
  additional addresses are then blocklisted), and the outcome says so.
* rectify: ``PATCH /crm/v3/objects/contacts/{id}`` with only the properties that differ; an email change
  on a contact found by a secondary address replaces that address in ``hs_additional_emails`` (the
  primary address is someone's other address, not the one being corrected).

No personal data in errors or notes: ids, counts and field names only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from connectors.base import (
    CANONICAL_FIELDS,
    CONSENT,
    RESTRICTION_MARK,
    DatasetWriter,
    ExportJob,
    JournalEntry,
    JournalState,
    Located,
    OperationJob,
    PermanentConnectorError,
    Places,
    RetentionRule,
    TransientConnectorError,
    close_datasets,
    lane_places,
    noted_when_found,
    open_datasets,
    side_by_side,
    tally,
    truncate_datasets,
)
from connectors.http import RateLimiter, send, tls_context
from dsr.domain.model import (
    ConnectorOutcome,
    DatasetSummary,
    RecordAction,
    RecordReport,
    RequestKind,
    Subject,
)

DEFAULT_BASE_URL = "https://api.hubapi.com"

CONTACT = "contact"
ASSOCIATED = ("notes", "deals", "tickets", "emails")
DATASETS = (CONTACT, *ASSOCIATED)
PROVIDED = frozenset({CONTACT})
"""Art. 20: the contact's own properties are what the subject provided; notes, deals, tickets and emails
are written by staff or by HubSpot (derived), so portability leaves them out."""

CONTACT_PROVIDED_PROPERTIES = (
    "email", "hs_additional_emails", "salutation", "firstname", "lastname", "phone", "mobilephone", "fax",
    "address", "city", "state", "zip", "country", "company", "jobtitle", "website", "date_of_birth",
    "hs_language",
)
"""Contact properties holding what the person gave (forms, signup, correspondence)."""

CONTACT_DERIVED_PROPERTIES = (
    "createdate", "lastmodifieddate", "lifecyclestage", "hs_lead_status", "hubspot_owner_id",
    "hs_email_optout", "hs_analytics_source", "ip_city", "ip_country",
)
"""Contact properties HubSpot or staff derive about the person (exported for access, not portability)."""

ASSOCIATED_PROPERTIES: dict[str, tuple[str, ...]] = {
    "notes": ("hs_timestamp", "hs_note_body", "hubspot_owner_id", "hs_attachment_ids", "hs_createdate"),
    "deals": ("dealname", "amount", "dealstage", "pipeline", "closedate", "description", "hubspot_owner_id",
              "createdate"),
    "tickets": ("subject", "content", "hs_pipeline", "hs_pipeline_stage", "hs_ticket_priority",
                "hs_ticket_category", "source_type", "hubspot_owner_id", "createdate"),
    "emails": ("hs_timestamp", "hs_email_direction", "hs_email_status", "hs_email_subject", "hs_email_text",
               "hs_email_html", "hs_email_headers", "hs_email_from_email", "hs_email_to_email",
               "hubspot_owner_id", "hs_createdate"),
}

FIELD_MAP = {
    "first_name": "firstname",
    "last_name": "lastname",
    "email": "email",
    "phone": "phone",
    "address_line1": "address",
    "city": "city",
    "postcode": "zip",
    "state": "state",
    "country": "country",
}
"""Canonical fields (connectors.base.CANONICAL_FIELDS) -> HubSpot contact properties."""

SUBSCRIPTIONS = "subscriptions"
OBJECTION_LEGAL_BASIS = "LEGITIMATE_INTEREST_OTHER"
"""The legal basis HubSpot records with an unsubscription made on an objection (one of its fixed values; the
explanation beside it names Art. 21 and the request)."""

CONSENT_LEGAL_BASIS = "CONSENT_WITH_NOTICE"
"""The legal basis HubSpot records with an unsubscription made on a withdrawal of consent (the explanation names
Art. 7(3) and the request)."""

SEARCH_PAGE = 100  # search allows up to 200; 100 keeps responses small
SEARCH_SORTS = [{"propertyName": "hs_object_id", "direction": "ASCENDING"}]
"""A stable order while paging (HubSpot's default order is unspecified). HubSpot's guide and clients send
sorts as objects; its OpenAPI description types them as strings (see tests/apispec/exceptions.py)."""
SECONDARY = "hs_additional_emails"
ASSOCIATION_PAGE = 100  # = the batch-read maximum, so one association page is one batch read
CURSOR_VERSION = 2  # 2: a place per dataset (the datasets are paged side by side)
DATASETS_AT_ONCE = 4
"""Datasets an export pages at once: the contact and three of its associations, then the fourth (and association
listings a portability export counts). Nine calls one after the other took a contact's export nine round trips to
HubSpot; every call still takes its turn in the connector's (shared) rate limit."""

PURGE_NOTE = (
    "HubSpot GDPR delete: the contact is deleted permanently (not archived) and HubSpot purges its "
    "associated content within 30 days"
)


def _created_on(created_at: str | None) -> date | None:
    if not created_at:
        return None
    try:
        return datetime.fromisoformat(created_at.replace("Z", "+00:00")).date()
    except ValueError:
        return None


class HubSpotConnector:
    """A HubSpot portal reached with a private-app token (scopes: crm.objects.contacts.read/write, the read
    scopes of deals, tickets and engagements, and communication_preferences.read_write for objections)."""

    def __init__(
        self,
        name: str = "hubspot",
        *,
        token: str,
        base_url: str = DEFAULT_BASE_URL,
        kinds: frozenset[RequestKind] = frozenset(RequestKind),
        retention: Sequence[RetentionRule] = (),
        rate_limit: RateLimiter | None = None,
        timeout: float = 30.0,
        search_rate_limit: RateLimiter | None = None,
    ) -> None:
        for rule in retention:
            if rule.dataset != CONTACT:
                raise ValueError(
                    f"connector {name}: retention rule for {rule.dataset!r}: HubSpot's GDPR delete removes the "
                    f"contact with its associated content, so only the {CONTACT!r} dataset can be retained"
                )
        self.name = name
        self.kinds = kinds
        self.retention = {rule.dataset: rule for rule in retention}
        # HubSpot Free/Starter: 100 requests per 10 s per app; search: ~4 per second per token. The windows
        # are a little longer than HubSpot's: our limiter stamps a call when it leaves, HubSpot counts it
        # when it arrives, and two bursts whose latencies differ would otherwise land in one of its windows.
        self._limiter = rate_limit or RateLimiter(100, 11.0)
        self._search_limiter = search_rate_limit or RateLimiter(4, 1.25)
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            verify=tls_context(),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout,
        )

    # --- plumbing ------------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, *, allow: tuple[int, ...] = (), safe: bool | None = None,
                    search: bool = False, **kwargs: Any) -> httpx.Response:
        # A search counts against the search limit as well as the general one, on every try.
        limits = (self._limiter, self._search_limiter) if search else self._limiter
        return await send(self._client, limits, self.name, method, path, allow=allow, safe=safe, **kwargs)

    def _json(self, response: httpx.Response) -> Any:
        try:
            return orjson.loads(response.content)  # 2x the standard decoder on a page of 100 records
        except ValueError:
            raise PermanentConnectorError(
                f"{self.name}: unexpected answer (HTTP {response.status_code}, not JSON)"
            ) from None

    async def aclose(self) -> None:
        await self._client.aclose()

    async def check(self) -> str:
        response = await self._call("GET", "/crm/v3/objects/contacts", params={"limit": 1})
        limit = response.headers.get("X-HubSpot-RateLimit-Max")
        interval = response.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds")
        if limit and interval and interval.isdigit():
            return f"auth OK (rate limit {limit} per {int(interval) / 1000:g} s)"
        return "auth OK"

    # --- locate --------------------------------------------------------------------------------------

    async def _search(self, email: str) -> list[dict[str, Any]]:
        """Every contact whose email or one of whose secondary emails equals ``email`` (HubSpot compares
        case-insensitively; the match is confirmed here, since a token search is looser than equality)."""
        # CONTAINS_TOKEN on hs_additional_emails (addresses joined by ";"): HubSpot documents the operator ("contains a
        # token"; wildcards complete a partial one) but not its tokeniser. Its own example, ``email`` CONTAINS_TOKEN
        # ``*@hubspot.com`` (developers.hubspot.com/docs/api/crm/search), keeps an address whole, so the full address
        # is one token. Were it split on "@" and "." as well, the search would answer contacts sharing only the
        # address's words: every result is checked here to hold the address exactly (:func:`_holds`), so a looser
        # tokeniser costs pages, never a wrong contact (tests: test_a_looser_token_search_finds_no_one_extra).
        found: list[dict[str, Any]] = []
        after: Any = "0"  # the paging cursor HubSpot returns (a string), "0" for the first page
        while True:
            body: dict[str, Any] = {
                "filterGroups": [
                    {"filters": [{"propertyName": "email", "operator": "EQ", "value": email}]},
                    {"filters": [{"propertyName": SECONDARY, "operator": "CONTAINS_TOKEN", "value": email}]},
                ],
                "properties": ["email", SECONDARY],
                "sorts": SEARCH_SORTS,
                "limit": SEARCH_PAGE,
                "after": after,
            }
            page = self._json(await self._call("POST", "/crm/v3/objects/contacts/search", json=body, safe=True,
                                               search=True))
            found.extend(r for r in page.get("results", [])
                         if isinstance(r, dict) and r.get("id") and _holds(r, email) is not None)
            after = ((page.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return found

    async def _contacts(self, *emails: str) -> list[dict[str, Any]]:
        """Contacts for each address as given and lower-cased, de-duplicated, in id order."""
        variants: list[str] = []
        for email in emails:
            for variant in (email.strip(), email.strip().lower()):
                if variant and variant not in variants:
                    variants.append(variant)
        by_id: dict[str, dict[str, Any]] = {}
        for variant in variants:
            for result in await self._search(variant):
                by_id.setdefault(str(result["id"]), result)
        return [by_id[i] for i in sorted(by_id, key=lambda i: (len(i), i))]

    async def locate(self, subject: Subject) -> list[Located]:
        return [Located(CONTACT, str(c["id"])) for c in await self._contacts(subject.email)]

    @staticmethod
    def _secondary_note(contacts: Sequence[Mapping[str, Any]], email: str, doing: str) -> list[str]:
        by_secondary = sum(1 for c in contacts if _holds(c, email) == SECONDARY)
        if not by_secondary:
            return []
        return [f"{by_secondary} contact(s) found by a secondary address (hs_additional_emails); {doing}"]

    # --- export --------------------------------------------------------------------------------------

    async def _read_contact(self, contact_id: str, provided_only: bool) -> dict[str, Any] | None:
        properties = CONTACT_PROVIDED_PROPERTIES if provided_only else (
            CONTACT_PROVIDED_PROPERTIES + CONTACT_DERIVED_PROPERTIES)
        response = await self._call("GET", f"/crm/v3/objects/contacts/{contact_id}",
                                    params={"properties": ",".join(properties)}, allow=(404,))
        if response.status_code == 404:
            return None  # erased or merged since it was located
        data = self._json(response)
        record: dict[str, Any] = {
            "id": str(data["id"]),
            "properties": {k: v for k, v in (data.get("properties") or {}).items() if v not in (None, "")},
        }
        if not provided_only:
            record["createdAt"] = data.get("createdAt")
            record["updatedAt"] = data.get("updatedAt")
        return record

    async def _association_page(self, contact_id: str, to_type: str, after: str | None) -> tuple[list[str], str | None]:
        params: dict[str, Any] = {"limit": ASSOCIATION_PAGE}
        if after:
            params["after"] = after
        response = await self._call("GET", f"/crm/v4/objects/contacts/{contact_id}/associations/{to_type}",
                                    params=params, allow=(404,))
        if response.status_code == 404:
            return [], None
        page = self._json(response)
        ids: list[str] = []
        for row in page.get("results", []):
            object_id = str(row.get("toObjectId", ""))
            if object_id and object_id not in ids:
                ids.append(object_id)
        return ids, ((page.get("paging") or {}).get("next") or {}).get("after") or None

    async def _count_associated(self, contacts: Sequence[str], datasets: Sequence[str]) -> dict[str, int]:
        """How many records of each of ``datasets`` the contacts have associated (association pages only, nothing
        read): one listing per dataset and contact, ``DATASETS_AT_ONCE`` side by side, each one's pages in order
        (a page's ``after`` comes from the page before)."""
        listings = [(ds, contact_id) for ds in datasets for contact_id in contacts]

        async def counted(to_type: str, contact_id: str) -> int:
            total, after = 0, None
            while True:
                ids, after = await self._association_page(contact_id, to_type, after)
                total += len(ids)
                if not after:
                    return total

        counts = await side_by_side([partial(counted, ds, contact_id) for ds, contact_id in listings],
                                    at_once=DATASETS_AT_ONCE)
        totals = dict.fromkeys(datasets, 0)
        for (ds, _), count in zip(listings, counts, strict=True):
            totals[ds] += count
        return totals

    async def _batch_read(self, object_type: str, ids: list[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        response = await self._call("POST", f"/crm/v3/objects/{object_type}/batch/read", safe=True, json={
            "properties": list(ASSOCIATED_PROPERTIES[object_type]),
            "propertiesWithHistory": [],  # required by HubSpot's description; no history is exported
            "inputs": [{"id": i} for i in ids],
        })
        # 207: some objects were deleted between listing and reading; they are simply no longer there.
        by_id = {str(r["id"]): r for r in self._json(response).get("results", [])}
        return [by_id[i] for i in ids if i in by_id]

    def _start(self, job: ExportJob, datasets: tuple[str, ...]) -> dict[str, Any] | None:
        """The cursor to resume from, if ``job.resume`` is one of ours for the same datasets."""
        cursor = job.resume
        if not isinstance(cursor, Mapping) or cursor.get("v") != CURSOR_VERSION:
            return None
        if tuple(cursor.get("datasets") or ()) != datasets:
            return None
        contacts = cursor.get("contacts")
        resumed = lane_places(cursor, datasets)
        if not isinstance(contacts, list) or resumed is None:
            return None
        places, counts = resumed
        return {"contacts": [str(c) for c in contacts], "places": places, "written": counts,
                "found": noted_when_found(cursor)}

    async def export(self, job: ExportJob) -> ConnectorOutcome:
        datasets = (CONTACT,) if job.provided_only else DATASETS
        state = self._start(job, datasets)
        resumed = state is not None
        # What finding the contacts noted (found by a secondary address): said by a resumed export as by the first.
        notes: list[str] = list(state["found"]) if state is not None else []
        if state is None:
            located = await self._contacts(job.subject.email)
            notes = self._secondary_note(located, job.subject.email, "exported with everything they hold")
            state = {"contacts": [str(c["id"]) for c in located], "places": dict.fromkeys(datasets, (0, None)),
                     "written": dict.fromkeys(datasets, 0)}
        contacts: list[str] = state["contacts"]
        found = list(notes)  # no personal data: counts only, like every connector note
        outcome = ConnectorOutcome(connector=self.name, found=len(contacts), notes=notes)
        if not contacts:
            outcome.counts = {"exported": 0}
            outcome.notes.append("no HubSpot contact matches the subject")
            return outcome

        writers: dict[str, DatasetWriter] = {}
        try:
            writers = await open_datasets(job.sink, self.name, datasets, PROVIDED)
            if resumed and any(writers[ds].count < state["written"][ds] for ds in datasets):
                # The store lost records the cursor counts (e.g. unflushed at a crash): start over.
                state = {"contacts": contacts, "places": dict.fromkeys(datasets, (0, None)),
                         "written": dict.fromkeys(datasets, 0)}
                resumed = False
                outcome.notes.append("the previous attempt's export was incomplete: exported again from the start")
            await truncate_datasets(writers, state["written"])  # drop what followed the last checkpoint (all, fresh)
            # Each dataset's place (the contact it is at, the association page after) and count, moved on by its
            # own lane once its page is flushed: another lane's records may still be on their way to the store.
            places: Places = dict(state["places"])
            stored: dict[str, int] = dict(state["written"])

            async def lane(ds: str) -> None:
                writer = writers[ds]
                contact, after = places[ds]
                while contact < len(contacts):
                    contact_id = contacts[contact]
                    next_after: str | None = None
                    if ds == CONTACT:
                        record = await self._read_contact(contact_id, job.provided_only)
                        if record is not None:
                            writer.write(record)
                    else:
                        ids, next_after = await self._association_page(contact_id, ds, after)
                        for obj in await self._batch_read(ds, ids):
                            writer.write({
                                "id": str(obj["id"]),
                                "contact_id": contact_id,
                                "properties": {k: v for k, v in (obj.get("properties") or {}).items()
                                               if v not in (None, "")},
                                "createdAt": obj.get("createdAt"),
                                "updatedAt": obj.get("updatedAt"),
                            })
                    if next_after:
                        after = next_after
                    else:
                        contact, after = contact + 1, None
                    await writer.flush()  # stored before the cursor that counts them is heartbeated
                    places[ds], stored[ds] = (contact, after), writer.count
                    job.checkpoint({
                        "v": CURSOR_VERSION,
                        "datasets": list(datasets),
                        "contacts": contacts,
                        "found": found,
                        "lanes": {name: list(place) for name, place in places.items()},
                        "written": dict(stored),
                    })

            await side_by_side([partial(lane, ds) for ds in datasets], at_once=DATASETS_AT_ONCE)
            summaries = [DatasetSummary(ds, writers[ds].count, provided=ds in PROVIDED) for ds in datasets]
        finally:
            await close_datasets(writers)

        outcome.counts = {"exported": sum(s.records for s in summaries)}
        if job.provided_only:
            # Counted, not exported: the reply tells the subject what portability leaves out (Art. 20 covers
            # what they provided) and that an access request gets it.
            counts = await self._count_associated(contacts, ASSOCIATED)
            summaries += [DatasetSummary(ds, counts[ds], provided=False) for ds in ASSOCIATED]
        outcome.datasets = summaries
        outcome.report = [RecordReport(CONTACT, c, RecordAction.EXPORTED) for c in contacts]
        if resumed:
            outcome.notes.append("export resumed from its last checkpoint")
        if job.provided_only:
            outcome.notes.append("portability: the contact's own properties only; notes, deals, tickets and "
                                 "emails are not data the subject provided")
        if len(contacts) > 1:
            outcome.notes.append(f"{len(contacts)} contacts match the subject; associated records carry contact_id")
        return outcome

    # --- erase ---------------------------------------------------------------------------------------

    async def erase(self, job: OperationJob) -> ConnectorOutcome:
        journal = await job.journal.state()
        found_now = {str(c["id"]): c for c in await self._contacts(job.subject.email)}
        # Contacts this request already erased (an earlier attempt) are no longer found: the journal has them.
        ids = _by_id({*found_now, *(e.line.record_id for e in journal.done_in(CONTACT)),
                      *(e.line.record_id for e in journal.pending_in(CONTACT))})
        outcome = ConnectorOutcome(connector=self.name, found=len(ids))
        if not ids:
            outcome.report.append(RecordReport(
                CONTACT, "", RecordAction.ALREADY_GONE,
                note="no HubSpot contact matches the subject: already erased, or never present",
            ))
            outcome.counts = {"already_gone": 1}
            return outcome
        rule = self.retention.get(CONTACT)
        for contact_id in ids:
            outcome.report.append(await self._erase_contact(job, journal, contact_id, found_now.get(contact_id), rule))
        outcome.counts = tally(outcome.report)
        if outcome.counts.get("deleted"):
            outcome.notes.append(PURGE_NOTE + "; the address is blocklisted from tracking")
            outcome.notes += self._secondary_note(
                list(found_now.values()), job.subject.email,
                "each was deleted whole with its primary address, which HubSpot blocklists as well")
        return outcome

    async def _erase_contact(self, job: OperationJob, journal: JournalState, contact_id: str,
                             contact: Mapping[str, Any] | None, rule: RetentionRule | None) -> RecordReport:
        done = journal.done.get((CONTACT, contact_id))
        if done is not None:  # an earlier attempt of this request did it: not redone
            return done.line
        intent = journal.pending.get((CONTACT, contact_id))
        if contact is None and intent is not None:
            # Asked to delete by an earlier attempt whose answer never came, and gone now: deleted by us.
            await job.journal.record([intent])
            return intent.line
        if rule is not None:
            created = _created_on((contact or {}).get("createdAt")) or date.today()
            report = RecordReport(CONTACT, contact_id, RecordAction.RETAINED, legal_basis=rule.legal_basis,
                                  retained_until=rule.until(created))
            await job.journal.record([JournalEntry(report, created=created)])
            return report
        report = RecordReport(CONTACT, contact_id, RecordAction.DELETED, note=PURGE_NOTE)
        await job.journal.intend([JournalEntry(report)])
        response = await self._call("POST", "/crm/v3/objects/contacts/gdpr-delete",
                                    json={"objectId": contact_id}, allow=(404,))
        if response.status_code == 404 and intent is None:
            report = RecordReport(CONTACT, contact_id, RecordAction.ALREADY_GONE,
                                  note="deleted before this erasure reached it")
        # (404 after an earlier attempt's intent: that attempt's call took effect, HubSpot's search lagging.)
        await job.journal.record([JournalEntry(report)])
        return report

    # --- objection to direct marketing ------------------------------------------------------------------

    async def stop_marketing(self, job: OperationJob) -> ConnectorOutcome:
        """Art. 21(3): the address is unsubscribed from every email subscription type of the portal through the
        communication-preferences API (v3), each change with its legal basis: never by editing a contact
        property, which HubSpot's own sending ignores. Idempotent: a type the address is already off is reported
        unchanged, and an address HubSpot never heard of is unsubscribed all the same (HubSpot keeps statuses per
        address, so a later import or form does not opt it back in silently). A type the address has no status on
        yet is opted out explicitly too: HubSpot's own subscribe then refuses to opt it back in."""
        email = job.subject.email.strip().lower()
        definitions = self._json(await self._call("GET", "/communication-preferences/v3/definitions"))
        active = [d for d in definitions.get("subscriptionDefinitions", [])
                  if isinstance(d, dict) and d.get("id") and d.get("isActive", True)]
        statuses = self._json(await self._call(
            "GET", f"/communication-preferences/v3/status/email/{quote(email, safe='@')}"))
        status_of = {str(s.get("id")): s.get("status") for s in statuses.get("subscriptionStatuses", [])
                     if isinstance(s, dict)}
        outcome = ConnectorOutcome(connector=self.name, found=len(active))
        for definition in sorted(active, key=lambda d: str(d["id"])):
            sub_id, name = str(definition["id"]), str(definition.get("name", ""))[:80]
            if status_of.get(sub_id) == "NOT_SUBSCRIBED":
                outcome.report.append(RecordReport(SUBSCRIPTIONS, sub_id, RecordAction.UNCHANGED,
                                                   note=f"{name}: already unsubscribed"))
                continue
            response = await self._call("POST", "/communication-preferences/v3/unsubscribe", json={
                "emailAddress": email, "subscriptionId": sub_id, "legalBasis": OBJECTION_LEGAL_BASIS,
                "legalBasisExplanation": f"Objection to direct marketing, Art. 21(2)-(3) GDPR ({job.request_id})",
            }, allow=(400,))
            # A 400 "already unsubscribed": an earlier attempt's call took effect and its answer was lost.
            if response.status_code == 400 and "already unsubscribed" not in str(
                    self._json(response).get("message", "")):
                raise PermanentConnectorError(f"{self.name}: unsubscribe refused (HTTP 400)")
            outcome.report.append(RecordReport(SUBSCRIPTIONS, sub_id, RecordAction.UNSUBSCRIBED, note=name))
        outcome.counts = tally(outcome.report)
        if not active:
            outcome.notes.append("the portal has no active email subscription type: nothing to unsubscribe from")
        return outcome

    # --- withdrawal of consent (Art. 7(3)) -----------------------------------------------------------------

    async def withdraw_consent(self, job: OperationJob) -> ConnectorOutcome:
        """Art. 7(3): the address is unsubscribed, through communication preferences v3 with the legal basis
        CONSENT_WITH_NOTICE, from the subscription types each purpose names (ids, or names as the portal shows
        them), and only those: the person's other subscriptions stay. Each type is read back afterwards and must
        say NOT_SUBSCRIBED. A type the portal does not have is an error for the operator (the profile is wrong),
        not a silent success."""
        email = job.subject.email.strip().lower()
        definitions = self._json(await self._call("GET", "/communication-preferences/v3/definitions"))
        known = [d for d in definitions.get("subscriptionDefinitions", []) if isinstance(d, dict) and d.get("id")]
        by_key = {str(d["id"]): d for d in known} | {str(d.get("name", "")).strip().lower(): d for d in known}
        outcome = ConnectorOutcome(connector=self.name)
        wanted: list[tuple[str, str, str]] = []  # (purpose, subscription id, name)
        for action in job.consent:
            for named in action.subscriptions:
                definition = by_key.get(named.strip()) or by_key.get(named.strip().lower())
                if definition is None:
                    raise PermanentConnectorError(
                        f"{self.name}: the subscription type {named[:60]!r} of purpose {action.purpose!r} is not "
                        "in the portal: correct controller.purposes.withdrawal")
                wanted.append((action.purpose, str(definition["id"]), str(definition.get("name", ""))[:80]))
        path = f"/communication-preferences/v3/status/email/{quote(email, safe='@')}"

        async def statuses() -> dict[str, object]:
            answer = self._json(await self._call("GET", path))
            return {str(s.get("id")): s.get("status") for s in answer.get("subscriptionStatuses", [])
                    if isinstance(s, dict)}

        before = await statuses()
        outcome.found = len(wanted)
        changed: list[tuple[str, str, str]] = []
        for purpose, sub_id, name in wanted:
            if before.get(sub_id) == "NOT_SUBSCRIBED" or (purpose, sub_id, name) in changed:
                outcome.report.append(RecordReport(CONSENT, purpose, RecordAction.UNCHANGED,
                                                   note=f"{name}: already unsubscribed"))
                continue
            response = await self._call("POST", "/communication-preferences/v3/unsubscribe", json={
                "emailAddress": email, "subscriptionId": sub_id, "legalBasis": CONSENT_LEGAL_BASIS,
                "legalBasisExplanation": f"Consent withdrawn, Art. 7(3) GDPR ({job.request_id})",
            }, allow=(400,))
            if response.status_code == 400 and "already unsubscribed" not in str(
                    self._json(response).get("message", "")):
                raise PermanentConnectorError(f"{self.name}: unsubscribe refused (HTTP 400)")
            changed.append((purpose, sub_id, name))
        after = await statuses() if changed else before
        for purpose, sub_id, name in changed:
            if after.get(sub_id) != "NOT_SUBSCRIBED":
                raise TransientConnectorError(f"{self.name}: subscription {sub_id} still subscribed after unsubscribe")
            outcome.report.append(RecordReport(CONSENT, purpose, RecordAction.WITHDRAWN,
                                               note=f"{name}: unsubscribed"))
        outcome.counts = tally(outcome.report)
        return outcome

    # --- restriction (Art. 18) ------------------------------------------------------------------------

    async def restrict(self, job: OperationJob) -> ConnectorOutcome:
        """Each contact of the subject gets the contact property ``dsr_restricted`` (a single-line text property
        the portal's admin creates once; README), set to the request's reference: active lists, workflows and
        sequences exclude contacts where it is known, and staff see it on the record. HubSpot has no native
        "restricted" state; the property is how the operator's tools respect it. Read back after the PATCH."""
        return await self._mark(job, job.request_id)

    async def lift_restriction(self, job: OperationJob) -> ConnectorOutcome:
        """The property is cleared (HubSpot unsets a property written as an empty string)."""
        return await self._mark(job, "")

    async def _mark(self, job: OperationJob, value: str) -> ConnectorOutcome:
        ids = _by_id({str(c["id"]) for c in await self._contacts(job.subject.email)})
        outcome = ConnectorOutcome(connector=self.name, found=len(ids))
        for contact_id in ids:
            path = f"/crm/v3/objects/contacts/{contact_id}"
            response = await self._call("GET", path, params={"properties": RESTRICTION_MARK}, allow=(404,))
            if response.status_code == 404:
                continue
            held = str((self._json(response).get("properties") or {}).get(RESTRICTION_MARK) or "")
            if bool(held) == bool(value):
                outcome.report.append(RecordReport(
                    CONTACT, contact_id, RecordAction.UNCHANGED,
                    note="already marked restricted" if value else "not marked restricted"))
                continue
            await self._call("PATCH", path, json={"properties": {RESTRICTION_MARK: value}})
            check = await self._call("GET", path, params={"properties": RESTRICTION_MARK})
            if str((self._json(check).get("properties") or {}).get(RESTRICTION_MARK) or "") != value:
                raise PermanentConnectorError(f"{self.name}: the contact's restriction property was not "
                                              f"{'set' if value else 'cleared'}")
            outcome.report.append(RecordReport(CONTACT, contact_id,
                                               RecordAction.RESTRICTED if value else RecordAction.LIFTED,
                                               fields=[RESTRICTION_MARK]))
        if not ids:
            outcome.notes.append("no HubSpot contact matches the subject")
        outcome.counts = tally(outcome.report)
        return outcome

    # --- rectify -------------------------------------------------------------------------------------

    async def rectify(self, job: OperationJob) -> ConnectorOutcome:
        unknown = sorted(set(job.changes) - CANONICAL_FIELDS)
        if unknown:
            raise PermanentConnectorError(f"{self.name}: cannot rectify unknown field(s) {', '.join(unknown)}")
        wanted = {FIELD_MAP[f]: (v or "").strip() for f, v in job.changes.items() if f in FIELD_MAP}
        unmapped = sorted(f for f in job.changes if f not in FIELD_MAP)
        journal = await job.journal.state()
        # After an email change the subject's old address no longer finds the contact: a repeated
        # rectification looks under the new one too, and the journal names what earlier attempts changed.
        emails = [job.subject.email] + ([job.changes["email"]] if job.changes.get("email") else [])
        ids = _by_id({*(str(c["id"]) for c in await self._contacts(*emails)),
                      *(e.line.record_id for e in journal.done_in(CONTACT)),
                      *(e.line.record_id for e in journal.pending_in(CONTACT))})
        outcome = ConnectorOutcome(connector=self.name, found=len(ids))
        if unmapped:
            outcome.notes.append(f"no HubSpot contact property for: {', '.join(unmapped)} (not applied)")
        if not ids:
            outcome.notes.append("no HubSpot contact matches the subject: nothing to rectify")
            return outcome
        reverse = {prop: canonical for canonical, prop in FIELD_MAP.items()}
        reverse[SECONDARY] = "email"
        for contact_id in ids:
            done = journal.done.get((CONTACT, contact_id))
            if done is not None:
                outcome.report.append(done.line)
                continue
            response = await self._call("GET", f"/crm/v3/objects/contacts/{contact_id}",
                                        params={"properties": ",".join(sorted({*wanted, "email", SECONDARY}))},
                                        allow=(404,))
            if response.status_code == 404:
                continue
            current = self._json(response).get("properties") or {}
            target = dict(wanted)
            settled: set[str] = set()  # canonical fields found held exactly without a property to compare
            if "email" in target and _holds({"properties": current}, job.subject.email) == SECONDARY:
                # The subject's address is a secondary one here: correct that one, leave the primary.
                target[SECONDARY] = ";".join(
                    target["email"] if a.lower() == job.subject.email.strip().lower() else a
                    for a in _addresses(current.get(SECONDARY)))
                del target["email"]
            elif ("email" in target and _holds({"properties": current}, target["email"]) == SECONDARY
                  and _holds({"properties": current}, job.subject.email) is None):
                # Corrected there already (an earlier attempt whose journal is gone): the old address is gone.
                # While the old one is still held (the primary, say), the new one as a secondary is not enough.
                del target["email"]
                settled.add("email")
            if not target and not settled:
                # Only fields HubSpot has no property for (noted above): this contact holds none of what is to be
                # corrected, so it is neither corrected nor "already up to date".
                continue
            diff = {prop: value for prop, value in target.items() if not _same(prop, current.get(prop), value)}
            intent = journal.pending.get((CONTACT, contact_id))
            if diff:
                report = RecordReport(CONTACT, contact_id, RecordAction.CHANGED,
                                      fields=sorted(reverse[p] for p in diff))
                if intent is not None:  # an earlier attempt changed some of it: report what it set out to change
                    report.fields = sorted({*report.fields, *intent.line.fields})
                await job.journal.intend([JournalEntry(report)])
                await self._call("PATCH", f"/crm/v3/objects/contacts/{contact_id}", json={"properties": diff})
                await job.journal.record([JournalEntry(report)])
            elif intent is not None:  # the earlier attempt's PATCH took effect, its answer was lost
                report = intent.line
                await job.journal.record([intent])
            else:
                # Read just now and equal, property by property: the fields named are exactly those compared.
                report = RecordReport(CONTACT, contact_id, RecordAction.UNCHANGED,
                                      fields=sorted({*(reverse[p] for p in target), *settled}),
                                      note="already up to date")
            outcome.report.append(report)
        outcome.counts = tally(outcome.report)
        return outcome


def _by_id(ids: set[str]) -> list[str]:
    """HubSpot ids in numeric order (the order contacts are searched and reported in)."""
    return sorted(ids, key=lambda i: (len(i), i))


def _addresses(value: Any) -> list[str]:
    return [a.strip() for a in str(value or "").split(";") if a.strip()]


def _holds(contact: Mapping[str, Any], email: str) -> str | None:
    """``"email"`` when ``email`` is the contact's primary address, ``hs_additional_emails`` when it is one
    of its secondary ones, None when neither (ignoring case, as HubSpot does)."""
    wanted = email.strip().lower()
    properties = contact.get("properties") or {}
    if str(properties.get("email") or "").strip().lower() == wanted:
        return "email"
    if any(a.lower() == wanted for a in _addresses(properties.get(SECONDARY))):
        return SECONDARY
    return None


def _same(prop: str, current: Any, wanted: str) -> bool:
    """Whether the contact already holds exactly ``wanted``: a value differing only by spaces or case differs
    (it is corrected). Addresses alone compare without case: HubSpot stores them lower-cased, so a case-only
    difference is one HubSpot cannot hold (writing it again would change nothing)."""
    have = "" if current is None else str(current)
    if prop in ("email", SECONDARY):
        return have.strip().lower() == wanted.lower()
    return have == wanted


__all__ = ["CONTACT_DERIVED_PROPERTIES", "CONTACT_PROVIDED_PROPERTIES", "DATASETS", "FIELD_MAP", "HubSpotConnector"]
