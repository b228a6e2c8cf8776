"""A local HubSpot CRM v3 for tests and the demo: the endpoints the HubSpot connector uses, faithfully.

What it reproduces from the real API (see ../shared/APIS.md):

* ``Authorization: Bearer <private-app token>``; 401 ``INVALID_AUTHENTICATION`` otherwise.
* Rate limits per token: N requests per rolling window (HubSpot: 100 per 10 s) -> 429 with ``policyName``
  and the ``X-HubSpot-RateLimit-*`` headers; the search endpoint has its own, lower limit (4/s by default).
* Paging: ``paging.next.after`` (search and list: an offset as a string; v4 associations: opaque token).
* Error bodies ``{"status": "error", "message", "correlationId", "category", ...}`` (injected faults too).
* Shapes as HubSpot's OpenAPI descriptions give them (tests/apispec checks every answer): property values
  are strings and an unset property is left out (never ``null``); v4 associations carry ``toObjectId`` as a
  string and an unlabelled association no ``label``.
* Search: ``after`` (an offset, as a string), ``sorts`` (``{"propertyName", "direction"}`` objects, as
  HubSpot's guide and clients send them), ``EQ``/``NEQ``/``IN``/``CONTAINS_TOKEN``/``HAS_PROPERTY`` filters;
  ``hs_additional_emails`` holds secondary addresses separated by ``;``.
* ``gdpr-delete`` deletes permanently (and blocklists the address); plain ``DELETE`` only archives, and an
  archived contact stays restorable (``restore``) and is still in the state, which tests can inspect.

Serve it with ``dsr.web.serve.serve_app(hubspot_app(state, token=...), host="127.0.0.1", port=0)``.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sandbox.faults import DropConnections, FaultMiddleware, Faults

OBJECT_TYPES = ("contacts", "notes", "deals", "tickets", "emails")
ASSOCIATED_TYPES = ("notes", "deals", "tickets", "emails")

# HubSpot-defined association type ids (contact -> X), as the v4 API reports them.
ASSOCIATION_TYPE_IDS = {"notes": 202, "deals": 4, "tickets": 15, "emails": 198}
_SINGULAR = {"contacts": "contact", "notes": "note", "deals": "deal", "tickets": "ticket", "emails": "email"}

# Properties the sandbox knows per object type (the real portal has hundreds; unknown names are refused on
# write and ignored on read, as HubSpot does).
KNOWN_PROPERTIES: dict[str, frozenset[str]] = {
    "contacts": frozenset({
        "email", "firstname", "lastname", "salutation", "phone", "mobilephone", "fax", "address", "city",
        "state", "zip", "country", "company", "jobtitle", "website", "date_of_birth", "hs_language",
        "hs_additional_emails", "lifecyclestage", "hs_lead_status", "hubspot_owner_id", "ip_city",
        "ip_country", "hs_analytics_source", "hs_email_optout", "createdate", "lastmodifieddate",
        "hs_object_id",
        # A custom property the demo portal defines, as the README asks an admin to (single-line text): the
        # restriction mark (Art. 18). A portal without it refuses the write (PROPERTY_DOESNT_EXIST), like HubSpot.
        "dsr_restricted",
    }),
    "notes": frozenset({"hs_note_body", "hs_timestamp", "hubspot_owner_id", "hs_attachment_ids",
                        "hs_createdate", "hs_lastmodifieddate", "hs_object_id"}),
    "deals": frozenset({"dealname", "amount", "dealstage", "pipeline", "closedate", "description",
                        "hubspot_owner_id", "createdate", "hs_lastmodifieddate", "hs_object_id"}),
    "tickets": frozenset({"subject", "content", "hs_pipeline", "hs_pipeline_stage", "hs_ticket_priority",
                          "hs_ticket_category", "source_type", "hubspot_owner_id", "createdate",
                          "hs_lastmodifieddate", "hs_object_id"}),
    "emails": frozenset({"hs_timestamp", "hs_email_direction", "hs_email_status", "hs_email_subject",
                         "hs_email_text", "hs_email_html", "hs_email_headers", "hs_email_from_email",
                         "hs_email_to_email", "hubspot_owner_id", "hs_createdate", "hs_lastmodifieddate",
                         "hs_object_id"}),
}
_READ_ONLY = frozenset({"createdate", "lastmodifieddate", "hs_object_id", "hs_createdate", "hs_lastmodifieddate"})

# What a read returns when no ``properties`` are asked for (HubSpot's defaults per object type).
DEFAULT_PROPERTIES: dict[str, tuple[str, ...]] = {
    "contacts": ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"),
    "notes": ("hs_createdate", "hs_lastmodifieddate", "hs_object_id"),
    "deals": ("amount", "closedate", "createdate", "dealname", "dealstage", "hs_lastmodifieddate",
              "hs_object_id", "pipeline"),
    "tickets": ("content", "createdate", "hs_lastmodifieddate", "hs_object_id", "hs_pipeline",
                "hs_pipeline_stage", "hs_ticket_category", "hs_ticket_priority", "subject"),
    "emails": ("hs_createdate", "hs_lastmodifieddate", "hs_object_id"),
}
_CREATED = {"contacts": "createdate", "deals": "createdate", "tickets": "createdate"}  # else hs_createdate
_MODIFIED = {"contacts": "lastmodifieddate"}  # else hs_lastmodifieddate

SEARCH_MAX_LIMIT = 200
SEARCH_MAX_RESULTS = 10_000
LIST_MAX_LIMIT = 100
BATCH_MAX_INPUTS = 100
ASSOCIATIONS_MAX_LIMIT = 500


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class HubObject:
    """One CRM object as the sandbox stores it. Property values are strings, as in HubSpot."""

    type: str
    id: str
    properties: dict[str, str]
    created_at: datetime
    updated_at: datetime
    archived: bool = False

    def view(self, names: Iterable[str] | None, *, always: Iterable[str] = ()) -> dict[str, Any]:
        """The object as the API returns it: the requested properties that have a value (HubSpot's
        description types every value as a string: an unset or unknown property is left out)."""
        wanted = list(DEFAULT_PROPERTIES[self.type] if names is None else names) + list(always)
        props: dict[str, str] = {}
        for name in wanted:
            value = self.properties.get(name)
            if name in KNOWN_PROPERTIES[self.type] and value is not None:
                props[name] = value
        return {
            "id": self.id,
            "properties": props,
            "createdAt": _iso(self.created_at),
            "updatedAt": _iso(self.updated_at),
            "archived": self.archived,
            **({"archivedAt": _iso(self.updated_at)} if self.archived else {}),
        }


class HubSpotState:
    """The portal's data, in memory. Seed it before serving; inspect it after the connector ran.

    Seeding: :meth:`add_contact`, then :meth:`add_note`, :meth:`add_deal`, :meth:`add_ticket`,
    :meth:`add_email` (each associated with a contact), or :meth:`seed_activity` for many at once.
    Inspecting: :meth:`contact`, :meth:`find_contacts`, :meth:`was_gdpr_deleted`, :meth:`is_archived`,
    :meth:`is_blocklisted`, :meth:`associated`, :attr:`requests`, :attr:`patches`, :attr:`rate_limited`.
    """

    def __init__(self, *, first_id: int = 101, now: Callable[[], datetime] | None = None) -> None:
        self._next_id = first_id
        self._now = now or (lambda: datetime.now(UTC))
        self.objects: dict[str, dict[str, HubObject]] = {t: {} for t in OBJECT_TYPES}
        # contact id -> object type -> associated ids, in association order
        self.associations: dict[str, dict[str, list[str]]] = {}
        self.gdpr_deleted: set[str] = set()  # contact ids deleted permanently
        self.blocklist: set[str] = set()  # lower-cased addresses blocked by gdpr-delete
        self.purge_pending: set[tuple[str, str]] = set()  # (type, id) of content purged "within 30 days"
        self.requests: list[tuple[str, str]] = []  # (method, path) of every authenticated request
        self.patches: list[tuple[str, dict[str, Any]]] = []  # (contact id, properties) of every PATCH
        self.rate_limited: int = 0  # how many 429s the sandbox's own limits answered
        self.loose_tokens = False  # CONTAINS_TOKEN splitting addresses on "@" and "." too (see _matches)
        self.accepted_at: list[float] = []  # monotonic arrival time of every request the general limit let through
        # Communication preferences (v3): the portal's email subscription types, and per address (lower-cased,
        # contact or not, as in HubSpot) each type's status with the legal basis it was last set under.
        self.subscription_definitions: list[dict[str, Any]] = [
            {"id": sub_id, "name": name, "description": description, "purpose": "Marketing",
             "communicationMethod": "Email", "isActive": True, "isDefault": sub_id == "7001",
             "isInternal": False, "createdAt": "2024-01-15T09:00:00Z", "updatedAt": "2024-01-15T09:00:00Z"}
            for sub_id, name, description in DEFAULT_SUBSCRIPTION_TYPES
        ]
        self.subscriptions: dict[str, dict[str, dict[str, str]]] = {}

    # --- seeding -----------------------------------------------------------------------------------

    def _new_id(self) -> str:
        self._next_id += 1
        return str(self._next_id - 1)

    def _create(self, object_type: str, properties: dict[str, Any], created_at: datetime | None) -> HubObject:
        unknown = set(properties) - KNOWN_PROPERTIES[object_type]
        if unknown:
            raise ValueError(f"unknown {object_type} properties: {sorted(unknown)}")
        moment = created_at or self._now()
        object_id = self._new_id()
        props = {k: str(v) for k, v in properties.items() if v is not None}
        props[_CREATED.get(object_type, "hs_createdate")] = _iso(moment)
        props[_MODIFIED.get(object_type, "hs_lastmodifieddate")] = _iso(moment)
        props["hs_object_id"] = object_id
        obj = HubObject(object_type, object_id, props, moment, moment)
        self.objects[object_type][object_id] = obj
        return obj

    def add_contact(self, email: str | None = None, *, created_at: datetime | None = None, **properties: Any) -> str:
        """A contact; keyword properties are HubSpot names (firstname, lastname, phone, address, city, zip,
        state, country, company, jobtitle, ...). Emails are unique and stored lower-cased, as in HubSpot."""
        if email is not None:
            email = email.strip().lower()
            if self.find_contacts(email, include_archived=True):
                raise ValueError("a contact with this email already exists")
            properties["email"] = email
        return self._create("contacts", properties, created_at).id

    def _add_associated(self, object_type: str, contact_id: str, properties: dict[str, Any],
                        created_at: datetime | None) -> str:
        if contact_id not in self.objects["contacts"]:
            raise KeyError(f"no contact {contact_id}")
        obj = self._create(object_type, properties, created_at)
        self.associate(contact_id, object_type, obj.id)
        return obj.id

    def add_note(self, contact_id: str, body: str, *, created_at: datetime | None = None, **properties: Any) -> str:
        properties.setdefault("hs_timestamp", _iso(created_at or self._now()))
        return self._add_associated("notes", contact_id, {"hs_note_body": body, **properties}, created_at)

    def add_deal(self, contact_id: str, name: str, amount: str | float | None = None, *,
                 created_at: datetime | None = None, **properties: Any) -> str:
        properties.setdefault("pipeline", "default")
        properties.setdefault("dealstage", "appointmentscheduled")
        return self._add_associated("deals", contact_id, {"dealname": name, "amount": amount, **properties},
                                    created_at)

    def add_ticket(self, contact_id: str, subject: str, content: str = "", *,
                   created_at: datetime | None = None, **properties: Any) -> str:
        properties.setdefault("hs_pipeline", "0")
        properties.setdefault("hs_pipeline_stage", "1")
        return self._add_associated("tickets", contact_id, {"subject": subject, "content": content, **properties},
                                    created_at)

    def add_email(self, contact_id: str, subject: str, text: str = "", *, direction: str = "INCOMING_EMAIL",
                  created_at: datetime | None = None, **properties: Any) -> str:
        properties.setdefault("hs_timestamp", _iso(created_at or self._now()))
        properties.setdefault("hs_email_status", "SENT")
        address = self.objects["contacts"][contact_id].properties.get("email") \
            if contact_id in self.objects["contacts"] else None
        if address:
            properties.setdefault("hs_email_from_email" if direction == "INCOMING_EMAIL" else "hs_email_to_email",
                                  address)
        return self._add_associated("emails", contact_id, {
            "hs_email_subject": subject, "hs_email_text": text, "hs_email_direction": direction, **properties,
        }, created_at)

    def associate(self, contact_id: str, object_type: str, object_id: str) -> None:
        """Associate an existing object with a contact (an object may belong to several contacts)."""
        if object_type not in ASSOCIATED_TYPES or object_id not in self.objects[object_type]:
            raise KeyError(f"no {object_type} {object_id}")
        ids = self.associations.setdefault(contact_id, {}).setdefault(object_type, [])
        if object_id not in ids:
            ids.append(object_id)

    def seed_activity(self, contact_id: str, *, notes: int = 0, deals: int = 0, tickets: int = 0,
                      emails: int = 0) -> dict[str, list[str]]:
        """Many synthetic associated objects at once (paging tests, the demo's heavy customer)."""
        made: dict[str, list[str]] = {"notes": [], "deals": [], "tickets": [], "emails": []}
        for i in range(notes):
            made["notes"].append(self.add_note(contact_id, f"Call #{i + 1}: asked about delivery times."))
        for i in range(deals):
            made["deals"].append(self.add_deal(contact_id, f"Order #{i + 1}", f"{100 + i}.00"))
        for i in range(tickets):
            made["tickets"].append(self.add_ticket(contact_id, f"Support request #{i + 1}", "My parcel is late."))
        for i in range(emails):
            made["emails"].append(self.add_email(contact_id, f"Re: your order #{i + 1}", "Thank you!"))
        return made

    # --- inspecting ----------------------------------------------------------------------------------

    def contact(self, contact_id: str) -> dict[str, str] | None:
        """The contact's properties (archived ones too), or None once gdpr-deleted / never created."""
        obj = self.objects["contacts"].get(contact_id)
        return None if obj is None else dict(obj.properties)

    def find_contacts(self, email: str, *, include_archived: bool = False) -> list[str]:
        wanted = email.strip().lower()
        return [o.id for o in self.objects["contacts"].values()
                if (o.properties.get("email") or "").lower() == wanted and (include_archived or not o.archived)]

    def was_gdpr_deleted(self, contact_id: str) -> bool:
        return contact_id in self.gdpr_deleted

    def is_archived(self, contact_id: str) -> bool:
        """Archived by a plain DELETE: gone from reads and search, but restorable (not an erasure)."""
        obj = self.objects["contacts"].get(contact_id)
        return obj is not None and obj.archived

    def subscribe(self, email: str, subscription_id: str, *, legal_basis: str = "CONSENT_WITH_NOTICE") -> None:
        """Seed: the address opted in to a subscription type (as a form with consent would)."""
        if subscription_id not in {d["id"] for d in self.subscription_definitions}:
            raise ValueError(f"unknown subscription type {subscription_id}")
        self.subscriptions.setdefault(email.strip().lower(), {})[subscription_id] = {
            "status": "SUBSCRIBED", "legalBasis": legal_basis, "legalBasisExplanation": "opted in"}

    def subscription_status(self, email: str, subscription_id: str) -> str:
        """SUBSCRIBED, NOT_SUBSCRIBED, or NOT_SPECIFIED (never set) for the address and type."""
        entry = self.subscriptions.get(email.strip().lower(), {}).get(subscription_id)
        return entry["status"] if entry else "NOT_SPECIFIED"

    def is_blocklisted(self, email: str) -> bool:
        return email.strip().lower() in self.blocklist

    def associated(self, contact_id: str, object_type: str) -> list[str]:
        return list(self.associations.get(contact_id, {}).get(object_type, []))

    def restore(self, contact_id: str) -> None:
        """Undo an archive (HubSpot's recycle bin, 90 days): what makes plain DELETE no erasure."""
        self.objects["contacts"][contact_id].archived = False

    def run_purge(self) -> int:
        """Purge the content of gdpr-deleted contacts (HubSpot does it within 30 days); returns how many."""
        for object_type, object_id in self.purge_pending:
            self.objects[object_type].pop(object_id, None)
        purged = len(self.purge_pending)
        self.purge_pending.clear()
        return purged

    # --- mutations the API performs ------------------------------------------------------------------

    def live(self, object_type: str, object_id: str, *, archived: bool = False) -> HubObject | None:
        obj = self.objects[object_type].get(object_id)
        if obj is None or obj.archived != archived:
            return None
        return obj

    def gdpr_delete(self, contact_id: str) -> None:
        obj = self.objects["contacts"].pop(contact_id)
        self.gdpr_deleted.add(contact_id)
        # HubSpot blocklists the contact's addresses, "primary or additional" (its knowledge base).
        for address in [obj.properties.get("email") or "", *_additional(obj.properties)]:
            if address:
                self.blocklist.add(address.lower())
        for object_type, ids in self.associations.pop(contact_id, {}).items():
            for object_id in ids:
                still_linked = any(object_id in links.get(object_type, []) for links in self.associations.values())
                # Engagements (notes, emails) go with the contact; deals and tickets only lose the link.
                if object_type in ("notes", "emails") and not still_linked:
                    self.purge_pending.add((object_type, object_id))

    def touch(self, obj: HubObject) -> None:
        obj.updated_at = self._now()
        obj.properties[_MODIFIED.get(obj.type, "hs_lastmodifieddate")] = _iso(obj.updated_at)


# --- HTTP ----------------------------------------------------------------------------------------------


def _additional(properties: dict[str, str]) -> list[str]:
    """A contact's secondary addresses (``hs_additional_emails``, separated by semicolons)."""
    return [a.strip() for a in (properties.get("hs_additional_emails") or "").split(";") if a.strip()]


DEFAULT_SUBSCRIPTION_TYPES = (
    ("7001", "Newsletter", "Our monthly newsletter"),
    ("7002", "Offers", "Promotions and offers"),
    ("7003", "Partner offers", "Offers from our partners"),
)
"""The portal's email subscription types (ids as HubSpot gives them: numeric strings)."""

UNSUBSCRIBE_LEGAL_BASES = frozenset({
    "LEGITIMATE_INTEREST_PQL", "LEGITIMATE_INTEREST_CLIENT", "PERFORMANCE_OF_CONTRACT", "CONSENT_WITH_NOTICE",
    "NON_GDPR", "PROCESS_AND_STORE", "LEGITIMATE_INTEREST_OTHER",
})


def _fault_body(status: int) -> bytes:
    """An injected fault in HubSpot's error shape (the description requires category and correlationId)."""
    category = "RATE_LIMITS" if status == 429 else "INTERNAL_ERROR"
    return json.dumps({"status": "error", "message": "injected fault", "correlationId": str(uuid.uuid4()),
                       "category": category}).encode()


def _error(status: int, message: str, category: str | None, *, headers: dict[str, str] | None = None,
           **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"status": "error", "message": message, "correlationId": str(uuid.uuid4())}
    if category is not None:
        body["category"] = category
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers)


def _not_found(object_type: str, object_id: str) -> JSONResponse:
    return _error(404, "Object not found.  objectId are usually numeric.", "OBJECT_NOT_FOUND",
                  context={"id": [object_id]})


def _validation(message: str) -> JSONResponse:
    return _error(400, message, "VALIDATION_ERROR")


class _Window:
    """A rolling window of request times for one token."""

    def __init__(self, requests: int, seconds: float) -> None:
        self.max = requests
        self.seconds = seconds
        self.hits: deque[float] = deque()

    def take(self, now: float) -> tuple[bool, int, float]:
        """(allowed, remaining after this request, seconds until a slot frees)."""
        while self.hits and now - self.hits[0] >= self.seconds:
            self.hits.popleft()
        if len(self.hits) >= self.max:
            return False, 0, self.seconds - (now - self.hits[0])
        self.hits.append(now)
        return True, self.max - len(self.hits), 0.0

    @property
    def policy(self) -> str:
        if math.isclose(self.seconds, 10.0):
            return "TEN_SECONDLY_ROLLING"
        if math.isclose(self.seconds, 1.0):
            return "SECONDLY"
        return "ROLLING"


def _encode_after(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode().rstrip("=")


def _decode_after(token: str) -> int:
    padded = token + "=" * (-len(token) % 4)
    value = int(base64.urlsafe_b64decode(padded.encode()).decode())
    if value < 0:
        raise ValueError("negative offset")
    return value


def _properties_param(request: Request) -> list[str] | None:
    values = request.query_params.getlist("properties")
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    return default if raw is None else int(raw)


Handler = Callable[[Request], Awaitable[Response]]


class _HubSpotApi:
    def __init__(self, state: HubSpotState, token: str, rate_limit: tuple[int, float] | None,
                 search_rate_limit: tuple[int, float] | None) -> None:
        self.state = state
        self.token = token
        self.rate_limit = rate_limit
        self.search_rate_limit = search_rate_limit
        self.windows: dict[str, _Window] = {}
        self.search_windows: dict[str, _Window] = {}

    # --- auth and rate limits, around every endpoint --------------------------------------------

    def guarded(self, handler: Handler, *, search: bool = False) -> Handler:
        async def endpoint(request: Request) -> Response:
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token:
                return _error(401, "Authentication credentials not found. This API supports OAuth 2.0 "
                                   "authentication and you can find more details at "
                                   "https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                              "INVALID_AUTHENTICATION")
            if token != self.token:
                return _error(401, "The access token provided is invalid or has been revoked.",
                              "INVALID_AUTHENTICATION")
            limit = self.search_rate_limit if search else self.rate_limit
            headers: dict[str, str] = {}
            if limit is not None:
                windows = self.search_windows if search else self.windows
                window = windows.setdefault(token, _Window(*limit))
                arrived = time.monotonic()
                allowed, remaining, wait = window.take(arrived)
                if allowed and not search:
                    self.state.accepted_at.append(arrived)
                if not search:  # HubSpot's search endpoints do not send the rate-limit headers
                    headers = {
                        "X-HubSpot-RateLimit-Max": str(window.max),
                        "X-HubSpot-RateLimit-Remaining": str(remaining),
                        "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(window.seconds * 1000)),
                    }
                if not allowed:
                    self.state.rate_limited += 1
                    headers["Retry-After"] = str(max(1, math.ceil(wait)))
                    policy = window.policy
                    return JSONResponse({
                        "status": "error",
                        "message": f"You have reached your {policy.lower().replace('_', '-')} limit.",
                        "errorType": "RATE_LIMIT",
                        "category": "RATE_LIMITS",
                        "correlationId": str(uuid.uuid4()),
                        "policyName": policy,
                        "groupName": "publicapi-crm-search" if search else "publicapi",
                    }, status_code=429, headers=headers)
            self.state.requests.append((request.method, request.url.path))
            try:
                response = await handler(request)
            except (ValueError, TypeError, KeyError, AttributeError):
                response = _validation("Invalid input JSON or query parameters.")
            response.headers.update(headers)
            return response

        return endpoint

    @staticmethod
    async def _json(request: Request) -> dict[str, Any]:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("body must be an object")
        return body

    # --- objects ------------------------------------------------------------------------------------

    async def list_objects(self, request: Request) -> Response:
        object_type = request.path_params["object_type"]
        limit = _int_param(request, "limit", 10)
        if not 1 <= limit <= LIST_MAX_LIMIT:
            return _validation(f"limit must be between 1 and {LIST_MAX_LIMIT}")
        offset = int(request.query_params.get("after", "0"))
        archived = request.query_params.get("archived", "false") == "true"
        objects = sorted((o for o in self.state.objects[object_type].values() if o.archived == archived),
                         key=lambda o: int(o.id))
        page = objects[offset:offset + limit]
        body: dict[str, Any] = {"results": [o.view(_properties_param(request)) for o in page]}
        if offset + limit < len(objects):
            after = str(offset + limit)
            body["paging"] = {"next": {"after": after,
                                       "link": f"{request.url.path}?limit={limit}&after={after}"}}
        return JSONResponse(body)

    def _by_id_or_property(self, request: Request, object_type: str, object_id: str,
                           archived: bool) -> HubObject | None:
        id_property = request.query_params.get("idProperty")
        if id_property is None:
            return self.state.live(object_type, object_id, archived=archived)
        if object_type != "contacts" or id_property != "email":
            raise ValueError("unsupported idProperty")
        for found in self.state.find_contacts(object_id, include_archived=True):
            obj = self.state.live("contacts", found, archived=archived)
            if obj is not None:
                return obj
        return None

    async def get_object(self, request: Request) -> Response:
        object_type = request.path_params["object_type"]
        object_id = request.path_params["object_id"]
        archived = request.query_params.get("archived", "false") == "true"
        obj = self._by_id_or_property(request, object_type, object_id, archived)
        if obj is None:
            return _not_found(object_type, object_id)
        body = obj.view(_properties_param(request))
        wanted = [a.strip() for v in request.query_params.getlist("associations") for a in v.split(",") if a.strip()]
        if object_type == "contacts" and wanted:
            associations: dict[str, Any] = {}
            for to_type in wanted:
                ids = self.state.associated(obj.id, to_type)
                if ids:
                    kind = f"contact_to_{_SINGULAR.get(to_type, to_type)}"
                    associations[to_type] = {"results": [{"id": i, "type": kind} for i in ids]}
            if associations:
                body["associations"] = associations
        return JSONResponse(body)

    async def batch_read(self, request: Request) -> Response:
        object_type = request.path_params["object_type"]
        body = await self._json(request)
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not all(isinstance(i, dict) and "id" in i for i in inputs):
            return _validation("inputs must be a list of {\"id\": ...}")
        if len(inputs) > BATCH_MAX_INPUTS:
            return _validation(f"Batch input is limited to {BATCH_MAX_INPUTS} inputs.")
        properties = body.get("properties")
        started = datetime.now(UTC)
        results, missing = [], []
        for item in inputs:
            obj = self.state.live(object_type, str(item["id"]))
            if obj is None:
                missing.append(str(item["id"]))
            else:
                results.append(obj.view(properties if properties else None))
        answer: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": _iso(started),
                                  "completedAt": _iso(datetime.now(UTC))}
        if missing:
            answer["numErrors"] = 1
            answer["errors"] = [{
                "status": "error",
                "category": "OBJECT_NOT_FOUND",
                "message": f"Could not get some {_SINGULAR[object_type].upper()} objects, they may be deleted "
                           "or not exist. Check that ids are valid.",
                "context": {"ids": missing},
                "errors": [],  # the description's StandardError requires both, empty when there is nothing more
                "links": {},
            }]
            return JSONResponse(answer, status_code=207)
        return JSONResponse(answer)

    async def patch_contact(self, request: Request) -> Response:
        object_id = request.path_params["object_id"]
        obj = self.state.live("contacts", object_id)
        if obj is None:
            return _not_found("contacts", object_id)
        body = await self._json(request)
        properties = body.get("properties")
        if not isinstance(properties, dict):
            return _validation("properties must be an object")
        problems = [{"isValid": False, "message": f'Property "{name}" does not exist',
                     "error": "PROPERTY_DOESNT_EXIST", "name": name}
                    for name in properties if name not in KNOWN_PROPERTIES["contacts"]]
        problems += [{"isValid": False, "message": f'"{name}" is a read only property; its value cannot be set.',
                      "error": "READ_ONLY_VALUE", "name": name}
                     for name in properties if name in _READ_ONLY]
        if problems:
            return _validation(f"Property values were not valid: {json.dumps(problems)}")
        if properties.get("email"):
            new_email = str(properties["email"]).strip().lower()
            clash = [c for c in self.state.find_contacts(new_email, include_archived=True) if c != obj.id]
            if clash:
                return _error(409, f"Contact already exists. Existing ID: {clash[0]}", "CONFLICT")
            properties = {**properties, "email": new_email}
        self.state.patches.append((obj.id, dict(properties)))
        for name, value in properties.items():
            if value is None or value == "":
                obj.properties.pop(name, None)
            else:
                obj.properties[name] = str(value)
        self.state.touch(obj)
        return JSONResponse(obj.view(list(properties)))

    async def archive_contact(self, request: Request) -> Response:
        obj = self.state.live("contacts", request.path_params["object_id"])
        if obj is not None:
            obj.archived = True
            self.state.touch(obj)
        return Response(status_code=204)

    async def gdpr_delete(self, request: Request) -> Response:
        body = await self._json(request)
        object_id = body.get("objectId")
        if not isinstance(object_id, str) or not object_id:
            return _validation("objectId is required")
        id_property = body.get("idProperty")
        if id_property not in (None, "email", "hs_object_id"):
            return _validation("idProperty must be email when given")
        if id_property == "email":
            found = self.state.find_contacts(object_id, include_archived=True)
            if not found:
                self.state.blocklist.add(object_id.strip().lower())  # unknown address: blocklisted
            for contact_id in found:
                self.state.gdpr_delete(contact_id)
            return Response(status_code=204)
        if object_id not in self.state.objects["contacts"]:
            return _not_found("contacts", object_id)
        self.state.gdpr_delete(object_id)
        return Response(status_code=204)

    async def search(self, request: Request) -> Response:
        object_type = request.path_params["object_type"]
        body = await self._json(request)
        limit = int(body.get("limit", 10))
        if not 1 <= limit <= SEARCH_MAX_LIMIT:
            return _validation(f"limit must be between 1 and {SEARCH_MAX_LIMIT}")
        offset = int(body.get("after") or 0)
        if offset < 0:
            return _validation("after must be a non-negative offset")
        if offset + limit > SEARCH_MAX_RESULTS:
            return _validation(f"Search results are limited to {SEARCH_MAX_RESULTS} records.")
        groups = body.get("filterGroups") or []
        if not isinstance(groups, list) or len(groups) > 5:
            return _validation("filterGroups: at most 5 groups")
        if sum(len(g.get("filters") or []) for g in groups) > 18:
            return _validation("at most 18 filters in total")
        objects = [o for o in self.state.objects[object_type].values() if not o.archived]
        loose = self.state.loose_tokens
        matched = [o for o in objects
                   if not groups or any(self._matches(o, g.get("filters") or [], loose) for g in groups)]
        matched.sort(key=lambda o: int(o.id))  # HubSpot's order without sorts is unspecified; ids here
        sorts = body.get("sorts") or []
        if not isinstance(sorts, list) or len(sorts) > 1:
            return _validation("sorts: at most one sort")
        for sort in sorts:
            if not isinstance(sort, dict) or not isinstance(sort.get("propertyName"), str):
                return _validation("sorts: each sort is {\"propertyName\": ..., \"direction\": ...}")
            name = sort["propertyName"]
            numeric = name == "hs_object_id"
            def sort_key(record: Any, n: str = name, num: bool = numeric) -> Any:
                return int(record.id) if num else (record.properties.get(n) or "")

            matched.sort(key=sort_key,
                         reverse=sort.get("direction", "ASCENDING") == "DESCENDING")
        page = matched[offset:offset + limit]
        properties = body.get("properties") or None
        always = ("hs_object_id", _CREATED.get(object_type, "hs_createdate"),
                  _MODIFIED.get(object_type, "hs_lastmodifieddate"))
        answer: dict[str, Any] = {"total": len(matched),
                                  "results": [o.view(properties, always=always) for o in page]}
        if offset + limit < len(matched):
            answer["paging"] = {"next": {"after": str(offset + limit)}}
        return JSONResponse(answer)

    @staticmethod
    def _matches(obj: HubObject, filters: list[dict[str, Any]], loose: bool = False) -> bool:
        for spec in filters:
            name, operator = spec["propertyName"], spec["operator"]
            actual = obj.properties.get(name)
            # HubSpot compares strings case-insensitively in search filters (email EQ included).
            folded = actual.lower() if actual is not None else None
            if operator == "EQ":
                ok = folded is not None and folded == str(spec["value"]).lower()
            elif operator == "NEQ":
                ok = folded != str(spec["value"]).lower()
            elif operator == "IN":
                ok = folded is not None and folded in {str(v).lower() for v in spec["values"]}
            elif operator == "CONTAINS_TOKEN":
                # Tokens of a multi-valued text such as hs_additional_emails (one address per ";"). HubSpot
                # does not document its tokeniser; its own example (``email`` CONTAINS_TOKEN ``*@hubspot.com``)
                # keeps an address whole. ``loose``: a full-text tokeniser splitting on "@" and "." too, every
                # token of the value to be among the property's (a looser match the connector must filter).
                split = r"[;\s@.]+" if loose else r"[;\s]+"
                tokens = {t for t in re.split(split, (actual or "").lower()) if t}
                value = str(spec["value"]).strip().lower()
                wanted = {t for t in re.split(split, value) if t} if loose else {value}
                ok = bool(wanted) and wanted <= tokens
            elif operator == "HAS_PROPERTY":
                ok = actual is not None
            elif operator == "NOT_HAS_PROPERTY":
                ok = actual is None
            else:
                raise ValueError(f"operator {operator} not supported by the sandbox")
            if not ok:
                return False
        return True

    async def associations_v4(self, request: Request) -> Response:
        from_type = request.path_params["object_type"]
        object_id = request.path_params["object_id"]
        to_type = request.path_params["to_type"]
        if from_type != "contacts" or to_type not in ASSOCIATED_TYPES:
            return _validation(f"Unknown object type: {to_type}")
        if self.state.live("contacts", object_id) is None:
            return _not_found(from_type, object_id)
        limit = _int_param(request, "limit", ASSOCIATIONS_MAX_LIMIT)
        if not 1 <= limit <= ASSOCIATIONS_MAX_LIMIT:
            return _validation(f"limit must be between 1 and {ASSOCIATIONS_MAX_LIMIT}")
        after = request.query_params.get("after")
        offset = _decode_after(after) if after else 0
        ids = self.state.associated(object_id, to_type)
        page = ids[offset:offset + limit]
        # toObjectId a string, no label on an unlabelled association: the v4 description's shape.
        body: dict[str, Any] = {"results": [{
            "toObjectId": i,
            "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": ASSOCIATION_TYPE_IDS[to_type]}],
        } for i in page]}
        if offset + limit < len(ids):
            token = _encode_after(offset + limit)
            body["paging"] = {"next": {"after": token, "link": f"{request.url.path}?limit={limit}&after={token}"}}
        return JSONResponse(body)

    # --- communication preferences (v3) -------------------------------------------------------------

    async def subscription_definitions(self, request: Request) -> Response:
        return JSONResponse({"subscriptionDefinitions": self.state.subscription_definitions})

    def _statuses(self, email: str) -> list[dict[str, Any]]:
        """The address's statuses, in HubSpot's shape: one per subscription type it has a status on (a type it
        never opted in to or out of has none, and is not listed)."""
        known = self.state.subscriptions.get(email, {})
        return [{
            "id": definition["id"], "name": definition["name"], "description": definition["description"],
            "status": known[definition["id"]]["status"], "sourceOfStatus": "SUBSCRIPTION_STATUS",
            "legalBasis": known[definition["id"]]["legalBasis"],
            "legalBasisExplanation": known[definition["id"]]["legalBasisExplanation"],
        } for definition in self.state.subscription_definitions if definition["id"] in known]

    async def subscription_status(self, request: Request) -> Response:
        email = request.path_params["email"].strip().lower()
        return JSONResponse({"recipient": email, "subscriptionStatuses": self._statuses(email)})

    async def unsubscribe(self, request: Request) -> Response:
        """One address off one subscription type; HubSpot refuses one already off it, and, in a portal with
        GDPR features on (as ours is), a change without a legal basis and its explanation."""
        body = await self._json(request)
        email, sub_id = str(body.get("emailAddress", "")).strip().lower(), str(body.get("subscriptionId", ""))
        if "@" not in email or not sub_id:
            return _validation("emailAddress and subscriptionId are required.")
        if sub_id not in {d["id"] for d in self.state.subscription_definitions}:
            return _error(404, f"Subscription {sub_id} not found.", "OBJECT_NOT_FOUND")
        basis = body.get("legalBasis")
        if basis not in UNSUBSCRIBE_LEGAL_BASES or not str(body.get("legalBasisExplanation", "")).strip():
            return _validation("A legal basis and its explanation are required for a portal with GDPR enabled.")
        entries = self.state.subscriptions.setdefault(email, {})
        entry = entries.get(sub_id)
        if entry is not None and entry["status"] == "NOT_SUBSCRIBED":
            return _validation(f"{email} is already unsubscribed from subscription {sub_id}")
        entries[sub_id] = {"status": "NOT_SUBSCRIBED", "legalBasis": str(basis),
                           "legalBasisExplanation": str(body["legalBasisExplanation"])}
        return JSONResponse(next(s for s in self._statuses(email) if s["id"] == sub_id))

    def routes(self) -> list[Route]:
        types = "{object_type:str}"
        g = self.guarded
        return [
            Route("/crm/v3/objects/contacts/gdpr-delete", g(self.gdpr_delete), methods=["POST"]),
            Route(f"/crm/v3/objects/{types}/search", g(self.search, search=True), methods=["POST"]),
            Route(f"/crm/v3/objects/{types}/batch/read", g(self.batch_read), methods=["POST"]),
            Route(f"/crm/v3/objects/{types}", g(self.list_objects), methods=["GET"]),
            Route(f"/crm/v3/objects/{types}/{{object_id:str}}", g(self.get_object), methods=["GET"]),
            Route("/crm/v3/objects/contacts/{object_id:str}", g(self.patch_contact), methods=["PATCH"]),
            Route("/crm/v3/objects/contacts/{object_id:str}", g(self.archive_contact), methods=["DELETE"]),
            Route(f"/crm/v4/objects/{types}/{{object_id:str}}/associations/{{to_type:str}}",
                  g(self.associations_v4), methods=["GET"]),
            Route("/communication-preferences/v3/definitions", g(self.subscription_definitions), methods=["GET"]),
            Route("/communication-preferences/v3/status/email/{email:str}", g(self.subscription_status),
                  methods=["GET"]),
            Route("/communication-preferences/v3/unsubscribe", g(self.unsubscribe), methods=["POST"]),
        ]


class _KnownTypes:
    """404 (HubSpot-style body) for object types the sandbox does not model, before routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            parts = scope["path"].split("/")
            if len(parts) > 4 and parts[1] == "crm" and parts[3] == "objects" and parts[4] not in OBJECT_TYPES:
                response = _error(404, f"Unable to infer object type from: {parts[4]}", "OBJECT_NOT_FOUND")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)



class HubSpotSandbox(Starlette):
    """The Starlette app, with fault injection and connection drops outermost (before auth)."""

    def __init__(self, api: _HubSpotApi, faults: Faults) -> None:
        self.api = api
        self.faults = faults
        super().__init__(routes=api.routes())
        self.add_exception_handler(404, self._not_found)
        self.add_exception_handler(405, self._not_allowed)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return _error(404, "Resource not found", "OBJECT_NOT_FOUND")

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return _error(405, f"Method {request.method} not allowed", "VALIDATION_ERROR")

    def build_middleware_stack(self) -> ASGIApp:
        return DropConnections(FaultMiddleware(_KnownTypes(super().build_middleware_stack()), self.faults,
                                                error_body=_fault_body), b'{"results": [')


def hubspot_app(
    state: HubSpotState,
    *,
    token: str,
    rate_limit: tuple[int, float] | None = (100, 10.0),
    faults: Faults | None = None,
    search_rate_limit: tuple[int, float] | None = (4, 1.0),
) -> Starlette:
    """A HubSpot CRM v3 look-alike over ``state``; ``rate_limit`` is (requests, per seconds) per token,
    ``search_rate_limit`` the separate limit of the search endpoint; ``None`` disables a limit."""
    return HubSpotSandbox(_HubSpotApi(state, token, rate_limit, search_rate_limit), faults or Faults())


__all__ = [
    "ASSOCIATION_TYPE_IDS",
    "HubObject",
    "HubSpotSandbox",
    "HubSpotState",
    "hubspot_app",
]
