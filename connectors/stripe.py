"""Stripe: customers, their payments and payment methods (Art. 15, 16, 17, 20).

Transport: the official ``stripe`` SDK — a ``StripeClient`` with its httpx-based async client, pointed at
``base_url`` through ``base_addresses={"api": base_url}`` (how tests and the demo reach the Stripe sandbox on
127.0.0.1). The SDK does authentication, form encoding of nested parameters, the ``Idempotency-Key`` header
and the parsing of Stripe's error bodies; calls go through its ``raw_request_async`` rather than the typed
``*.list_async`` services, which build a typed object per record only for the connector to turn it back into
JSON: that cost 1.6 s of CPU for 2,000 charges (blocking the worker's event loop), while an export through
``raw_request_async`` runs at the server's own paging speed. The SDK's own retries are off
(``max_network_retries=0``): Temporal owns retrying, and the SDK would not retry a plain 429 anyway. Every
call goes through the connector's :class:`~connectors.http.RateLimiter`.

Finding the subject. ``/v1/customers/search`` (``email:'...'``) is Stripe's only case-insensitive lookup, but its
index lags changes by up to a minute; ``GET /v1/customers?email=`` is exact and case-sensitive but strongly
consistent. So the connector searches, and at the same time lists with ``email=`` for the address as given and
lower-cased (two or three calls at once: one round trip); a search hit the listings did not confirm is read back
(the index may still hold a customer deleted or re-addressed since). The outcome's notes say when the search lagged
or found no one. A server without search gets a client-side scan of its customer list instead — affordable on a
sandbox, never done against ``api.stripe.com``, where only the exact lookups remain (and the notes say what that
misses). Guest payments have no customer: Checkout Sessions are looked up by ``customer_details[email]`` (as given
and lower-cased; Stripe offers no case-insensitive route for them, so one typed with other capitals is missed, and
the outcome's notes say so).

Export. Datasets, each paginated with ``limit=100`` / ``starting_after`` and streamed page by page into the export
sink, with a checkpoint after every page: ``customer``, ``charges`` (with their ``billing_details`` and
``shipping``), ``payment_intents``, ``invoices``, ``credit_notes``, ``quotes``, ``subscriptions`` (``status=all``,
so cancelled ones too), ``payment_methods``, ``setup_intents`` and ``checkout_sessions`` (the customer's, then guest
sessions for the address). Up to ``DATASETS_AT_ONCE`` datasets are paged at once, each one's listings (one per
customer, then the guest passes) one after the other. The checkpoint holds no personal data (customer ids, the notes
finding them made, and per dataset its listing, the last record id and the count written); a resumed export
truncates every dataset to its checkpointed count and continues each after its saved record, so nothing is written
twice.

Portability (Art. 20), decided here: the data the subject *provided* — including what they provided by their
own activity (EDPB WP242 rev.01: "observed" data), as with a shop's orders — is the ``customer`` profile and
addresses, the ``payment_methods``' billing details, the ``charges`` (payments made), ``subscriptions`` (plans
subscribed to) and ``checkout_sessions`` (what was typed at checkout). ``invoices``, ``credit_notes`` and
``quotes`` (documents the controller issues), ``payment_intents`` and ``setup_intents`` (Stripe's internal
state of a payment or of saving a card) are derived. A portability export writes only provided datasets, each
projected onto the fields the subject provided: Stripe's own assessments (risk ``outcome``,
``fraud_details``), fees and balance transactions are left out.

Erasure. Each payment intent's ``shipping`` is unset (``POST /v1/payment_intents/{id}`` with ``shipping=""``,
which Stripe's description allows; a refusal keeps it and the report says so), each payment method's billing
name, email, phone and address are unset (``POST /v1/payment_methods/{id}``: Stripe updates only an attached
method, and a detached one keeps them), then ``DELETE /v1/customers/{id}``: permanent; Stripe cancels the
customer's subscriptions and detaches its payment methods. Charges (with their billing details and shipping,
which Stripe cannot clear on a charge: ``billing_details`` is no parameter of ``POST /v1/charges/{id}``, and its
``shipping`` is an object whose name and address are required, with no empty value), invoices, payment intents
and credit notes stay: reported ``retained`` under the configured :class:`RetentionRule` (legal basis, created
date + years), or ``residual`` where no rule covers them. Quotes, setup intents, Checkout Sessions and cancelled
subscriptions cannot be deleted through the API either: ``retained`` when a rule names them, ``residual``
otherwise. Stripe's Redaction Jobs are not used (see the README: they redact the accounting records too, are a
preview API, and run asynchronously). The deletion carries the idempotency key ``<request id>:erase:<customer
id>``; every POST carries ``<request id>:<operation>:<object id>:<digest of its parameters>``, because Stripe
refuses a key sent again with other parameters (HTTP 400 ``idempotency_error``) and what a retried write sends
depends on what it read first. A refused write is logged and named in the error by its method and path
template (``POST /v1/payment_methods/{id}``), never its ids. A customer that answers 404 is already gone,
unless the request's journal shows an earlier attempt asked for its deletion (then that call took effect and its
answer was lost); a retrieved customer with ``deleted: true`` is skipped. Records are listed *before* the deletion
(side by side, ``DATASETS_AT_ONCE`` listings at a time, before any write; the writes go one after the other) and
their lines journaled before the call, so an attempt that dies after deleting is retried with the customer reported
deleted and its payments retained, from the journal, and nothing is asked twice. Verifying locates again: only
customers and guest Checkout Sessions are found by email, and the latter are declared kept, so a successful erasure
leaves nothing unexpected.

Rectification. Canonical fields map onto the customer's ``name`` (first and last name joined; the current
name is split at its first space), ``email``, ``phone`` and ``address``; ``shipping`` follows where it held the
same name, phone or address. Only differing fields are sent, with the idempotency key
``<request id>:rectify:<customer id>:<hash of the update>``; a changed email is looked up again under the new
address, so a retry reports "unchanged".

Errors. 429 (or ``rate_limit``), 409 (lock timeout), 5xx and connection failures are transient (with
``Retry-After``); 401/403 ask the operator to check the credentials; other refusals are permanent and carry the
HTTP status and Stripe's error *code* only — never its message, which can quote an email. Endpoints a server
does not implement (customer search where Stripe does not offer it, or an older Stripe-like server) are noted,
not fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from functools import partial
from typing import Any, TypeVar

import stripe

from connectors.base import (
    CANONICAL_FIELDS,
    FINANCIAL_YEAR_END,
    RESTRICTION_MARK,
    ConnectorError,
    DatasetWriter,
    ExportJob,
    JournalEntry,
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
    together,
    truncate_datasets,
)
from connectors.http import READ_TRIES, RateLimiter, parse_retry_after, tried_in_place
from dsr.domain.model import ConnectorOutcome, DatasetSummary, RecordAction, RecordReport, RequestKind, Subject

T = TypeVar("T")

log = logging.getLogger(__name__)

LEGAL_BASIS = "Art. 17(3)(b) GDPR; Code de commerce L123-22 (accounting records, 10 years)"
DEFAULT_RETENTION: tuple[RetentionRule, ...] = (
    RetentionRule("charges", LEGAL_BASIS, 10, counted_from=FINANCIAL_YEAR_END),
    RetentionRule("invoices", LEGAL_BASIS, 10, counted_from=FINANCIAL_YEAR_END),
    RetentionRule("payment_intents", LEGAL_BASIS, 10, counted_from=FINANCIAL_YEAR_END),
    RetentionRule("credit_notes", LEGAL_BASIS, 10, counted_from=FINANCIAL_YEAR_END),
)

PAGE = 100
DATASETS = ("customer", "charges", "payment_intents", "invoices", "credit_notes", "quotes", "subscriptions",
            "payment_methods", "setup_intents", "checkout_sessions")
PROVIDED = frozenset({"customer", "payment_methods", "charges", "subscriptions", "checkout_sessions"})
PORTABLE_FIELDS: dict[str, tuple[str, ...]] = {
    "customer": ("id", "object", "created", "email", "name", "phone", "address", "shipping",
                 "preferred_locales", "description"),
    "payment_methods": ("id", "object", "created", "type", "billing_details"),
    "charges": ("id", "object", "created", "amount", "amount_refunded", "currency", "description", "status",
                "paid", "refunded", "billing_details", "receipt_email", "shipping", "statement_descriptor"),
    "subscriptions": ("id", "object", "created", "status", "start_date", "canceled_at", "ended_at",
                      "cancel_at_period_end", "items", "plan", "quantity"),
    "checkout_sessions": ("id", "object", "created", "amount_total", "currency", "status", "payment_status",
                          "customer_details", "shipping_details", "collected_information", "line_items"),
}

# Optional endpoints: real Stripe has them, a Stripe-like server (or an account without search) may not.
SEARCH = "customer search"
PI_LIST = "payment intent listing by customer"
SESSIONS = "checkout sessions"
CUSTOMER_PMS = "/v1/customers/{id}/payment_methods"
SETUP_INTENTS = "setup intents"
CREDIT_NOTES = "credit notes"
QUOTES = "quotes"
# Listings by ``customer=``: dataset -> (path, optional feature name or None when every server has it).
_BY_CUSTOMER: dict[str, tuple[str, str | None]] = {
    "charges": ("/v1/charges", None),
    "payment_intents": ("/v1/payment_intents", PI_LIST),
    "invoices": ("/v1/invoices", None),
    "credit_notes": ("/v1/credit_notes", CREDIT_NOTES),
    "quotes": ("/v1/quotes", QUOTES),
    "setup_intents": ("/v1/setup_intents", SETUP_INTENTS),
}
_BILLING_FIELDS = ("address", "email", "name", "phone")

SEARCH_LAG = "Stripe's search index lags changes by up to a minute"
NOBODY_SEARCHED = (f"customer search found no one; {SEARCH_LAG}, so a customer created or re-addressed with other "
                   "capitals within it is not found yet (the exact email lookup was made too)")

GUEST_CASE = ("guest Checkout Sessions are looked up by the address as given and lower-cased: one typed at checkout "
              "with other capitals is not found (Stripe offers no case-insensitive lookup of Checkout Sessions)")
# Stripe's search (the case-insensitive route used for customers) covers charges, customers, invoices, payment
# intents, prices, products and subscriptions, not Checkout Sessions (https://docs.stripe.com/search); the
# sessions' list filter ``customer_details[email]`` is described without any case semantics (spec3, GET
# /v1/checkout/sessions: "Only return the Checkout Sessions for the Customer details specified").

_CODE = re.compile(r"^[a-z0-9_.-]{1,80}$")
_CURSOR_VERSION = 3  # 2: credit notes, quotes and setup intents joined the plan; 3: a position per dataset
DATASETS_AT_ONCE = 4
"""Datasets an export pages at once (each dataset's listings one after the other, so its records keep one order
and its count in the cursor means what it meant). 53 calls one after another took the heavy customer's export
5.3 s plus its processing against Stripe 100 ms away, where bare paging of her 20 pages of charges takes 2 s:
charges and payment intents (20 pages each) now page side by side, the small datasets beside them. The listings
an erasure, a portability count and the guest lookup read are made as many at a time. Every call still goes through
the connector's rate limiter."""


def _variants(email: str) -> list[str]:
    """The address as given, then lower-cased (Stripe's list filter is exact and case-sensitive)."""
    return list(dict.fromkeys([email, email.lower()]))


def _note(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)


def _note_in_order(notes: list[str], noted: Iterable[Sequence[str]]) -> None:
    """Add the notes of listings made side by side, each listing's kept apart, in the listings' order: the same
    notes in the same order as when they were listed one after the other, whichever finished first."""
    for apart in noted:
        for note in apart:
            _note(notes, note)


def _forget_nobody(notes: list[str], customers: Sequence[str]) -> None:
    """Drop the "search found no one" note where the request knows customers after all (its journal: a retry
    after the address was erased or changed)."""
    if customers and NOBODY_SEARCHED in notes:
        notes.remove(NOBODY_SEARCHED)


def _email_of(record: Mapping[str, Any]) -> str:
    return str(record.get("email") or "").lower()


def _created(record: Mapping[str, Any]) -> date:
    return datetime.fromtimestamp(int(record.get("created") or 0), UTC).date()


def _retry_after(headers: Any) -> float | None:
    """The SDK's headers are a plain mapping, its keys as the server spelled them."""
    for key in headers or ():
        if str(key).lower() == "retry-after":
            return parse_retry_after(headers[key])
    return None


@dataclass(frozen=True)
class _Step:
    """One paginated listing of an export: a dataset, for one customer or one guest address variant."""

    dataset: str
    customer: str | None = None
    variant: int | None = None  # index into _variants(subject.email): the cursor never holds the address


@dataclass
class _Page:
    records: list[dict[str, Any]]  # what to keep (a guest listing leaves out located customers' sessions)
    has_more: bool
    last: str | None = None  # the id the next page starts after, kept or not
    gone: bool = False  # the customer no longer exists (deleted since it was located)

    @classmethod
    def of(cls, result: Mapping[str, Any], keep: Callable[[dict[str, Any]], bool] = lambda r: True) -> _Page:
        data: list[dict[str, Any]] = list(result.get("data") or [])
        return cls([r for r in data if keep(r)], bool(result.get("has_more")) and bool(data),
                   str(data[-1]["id"]) if data else None)


class _Refused(Exception):  # internal control flow, never leaves the module: a write Stripe declined (400)
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class _Unsupported(Exception):  # internal control flow, never leaves the module
    def __init__(self, feature: str, status: int | None) -> None:
        super().__init__(feature)
        self.feature = feature
        self.status = status


class StripeConnector:
    """Customers, payments and payment methods in Stripe (or its sandbox), through the official SDK."""

    def __init__(
        self,
        name: str = "stripe",
        *,
        api_key: str,
        base_url: str = "https://api.stripe.com",
        kinds: frozenset[RequestKind] = frozenset(RequestKind),
        retention: Sequence[RetentionRule] = DEFAULT_RETENTION,
        rate_limit: RateLimiter | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.kinds = frozenset(kinds)
        self.retention = {rule.dataset: rule for rule in retention}
        self.live = api_key.startswith(("sk_live_", "rk_live_"))
        self._limiter = rate_limit
        self._http = stripe.HTTPXClient(timeout=timeout)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": base_url.rstrip("/")},
            http_client=self._http,
            max_network_retries=0,
        )
        self._unsupported: set[str] = set()
        # Without search, only a sandbox's customer list is small enough to scan (never real Stripe's).
        self._scan_without_search = "api.stripe.com" not in base_url

    # --- calls and errors ------------------------------------------------------------------------

    async def _request(self, method: str, path: str, params: Mapping[str, Any] | None = None, *,
                       idempotency_key: str | None = None) -> dict[str, Any]:
        """One call through the SDK's client, answered as plain JSON data (see the module's notes)."""
        options = {"idempotency_key": idempotency_key} if idempotency_key else {}
        response = await self._client.raw_request_async(method, path, **dict(params or {}), **options)
        data = response.data
        return data if isinstance(data, dict) else {}

    async def _call(self, factory: Callable[[], Awaitable[T]], *, optional: str | None = None,
                    write: bool = False) -> T:
        """One API call through the rate limiter, its errors turned into connector errors.

        With ``optional`` (a feature name), a 400/404 means the server lacks the endpoint (or the
        parameter): :class:`_Unsupported` is raised for the caller to note and skip. A read is tried again
        in place on a transient error (:func:`~connectors.http.tried_in_place`); a ``write`` never is.
        """
        return await self._call_or_missing(factory, optional=optional, missing_ok=False,  # type: ignore[return-value]
                                           write=write)

    async def _call_or_missing(self, factory: Callable[[], Awaitable[T]], *, optional: str | None = None,
                               missing_ok: bool = True, write: bool = False) -> T | None:
        """:meth:`_call`, answering None when the object is not there (404)."""
        return await tried_in_place(lambda: self._call_once(factory, optional=optional, missing_ok=missing_ok),
                                    tries=1 if write else READ_TRIES)

    async def _write(self, method: str, template: str, object_id: str, params: Mapping[str, Any] | None, *,
                     key: str, missing_ok: bool = False, refusal_ok: bool = False) -> dict[str, Any] | None:
        """One write (never tried again in place: Temporal retries the activity, and the idempotency key makes the
        retry safe), ``template`` its path with ``{id}`` for ``object_id``. A refused write is logged, and its
        error names, with the method and the path template only (no id, no personal data): an operator reading
        "idempotency_error" must know which write it was."""
        path = template.replace("{id}", object_id)

        async def once() -> dict[str, Any]:
            try:
                return await self._request(method, path, params, idempotency_key=key)
            except stripe.InvalidRequestError as err:
                if refusal_ok and err.http_status == 400 and self._code(err) != "idempotency_error":
                    raise _Refused(self._code(err)) from None
                raise

        try:
            return await self._call_or_missing(once, missing_ok=missing_ok, write=True)
        except PermanentConnectorError as err:
            where = f"{method.upper()} {template}"
            log.warning("%s: write refused: %s: %s", self.name, where, str(err).removeprefix(f"{self.name}: "))
            raise PermanentConnectorError(f"{err} on {where}") from None

    async def _call_once(self, factory: Callable[[], Awaitable[T]], *, optional: str | None,
                         missing_ok: bool) -> T | None:
        if optional is not None and optional in self._unsupported:
            raise _Unsupported(optional, None)
        if self._limiter is not None:
            await self._limiter.acquire()
        try:
            return await factory()
        except stripe.StripeError as err:
            if missing_ok and err.http_status == 404:
                return None
            if optional is not None and err.http_status in (400, 404):
                if self._code(err) != "resource_missing":
                    self._unsupported.add(optional)
                raise _Unsupported(optional, err.http_status) from None
            raise self._error(err) from None

    @staticmethod
    def _code(err: stripe.StripeError) -> str:
        code = err.code
        if not code and isinstance(err.json_body, dict):
            error = err.json_body.get("error")
            if isinstance(error, dict):
                code = error.get("code") or error.get("type")
        return code if isinstance(code, str) and _CODE.fullmatch(code) else ""

    @staticmethod
    def _headers(err: stripe.StripeError) -> Any:
        if err.headers:
            return err.headers
        body = err.json_body
        # The SDK (16.x) passes a non-JSON error's headers where the JSON body belongs.
        if body is not None and not (isinstance(body, dict) and "error" in body):
            return body
        return None

    def _error(self, err: stripe.StripeError) -> ConnectorError:
        """The connector error for an SDK error: status and Stripe's code only, never its message."""
        status = err.http_status
        code = self._code(err)
        if status is None:
            if isinstance(err, stripe.AuthenticationError):  # e.g. no API key at all
                return PermanentConnectorError(f"check the credentials of connector {self.name}")
            return TransientConnectorError(f"{self.name}: connection failed ({type(err).__name__})")
        detail = f"HTTP {status}" + (f" {code}" if code else "")
        if status == 429 or isinstance(err, stripe.RateLimitError):
            return TransientConnectorError(f"{self.name}: rate limited ({detail})",
                                           retry_after=_retry_after(self._headers(err)))
        if status >= 500 or status in (408, 409):
            return TransientConnectorError(f"{self.name}: {detail}", retry_after=_retry_after(self._headers(err)))
        if status in (401, 403):
            return PermanentConnectorError(f"check the credentials of connector {self.name} ({detail})")
        return PermanentConnectorError(f"{self.name}: request refused ({detail})")

    @staticmethod
    def _note_gone(notes: list[str], page: _Page) -> None:
        note = "a customer was deleted in Stripe while this request ran: its records were skipped"
        if page.gone and note not in notes:
            notes.append(note)

    def _note_unsupported(self, notes: list[str], feature: str) -> None:
        note = f"{feature}: not supported by this server"
        if note not in notes:
            notes.append(note)

    # --- finding the subject ---------------------------------------------------------------------

    async def _find_customers(self, email: str, notes: list[str] | None = None) -> list[str]:
        """Ids of the customers whose email matches ``email`` case-insensitively, in a stable order.

        Customer search first (Stripe's only case-insensitive lookup), with the exact ``email=`` listings (as
        given and lower-cased) beside it: those are strongly consistent, so a customer created or changed in
        the minute the search index lags behind is still found under its exact address. A search hit the exact
        listings did not confirm is read back, because the index may still hold a customer deleted or
        re-addressed since. Without search, a sandbox's customers are scanned; on api.stripe.com only the
        exact listings remain, and the notes say so.
        """
        notes = notes if notes is not None else []
        wanted = email.lower()

        without_search = False

        async def search() -> list[str]:
            nonlocal without_search
            try:
                return await self._search_customers(email)
            except _Unsupported:
                without_search = True
                return []

        # Side by side: one round trip to Stripe, not three (an export waits for them before anything else).
        searched, exact = await together([search(), self._exact_customers(email)])
        if without_search:
            self._note_unsupported(notes, SEARCH)
            if self._scan_without_search:
                _note(notes, "customers located by listing every customer instead (a server without search; "
                             "never done against api.stripe.com)")
                return await self._scan_customers(wanted)
            _note(notes, "customers located by their exact email only (as given and lower-cased): one "
                         "registered with other capitals is not found")
            return exact
        confirmed: list[str] = []
        for cid in searched:
            if cid in exact:
                confirmed.append(cid)
                continue
            record = await self._call_or_missing(partial(self._request, "get", f"/v1/customers/{cid}"))
            if record is not None and not record.get("deleted") and _email_of(record) == wanted:
                confirmed.append(cid)
        lagging = [cid for cid in exact if cid not in searched]
        if lagging:
            _note(notes, f"customer search had not yet indexed {len(lagging)} customer(s) found by the exact "
                         f"email lookup ({SEARCH_LAG})")
        elif not searched:
            _note(notes, NOBODY_SEARCHED)
        return list(dict.fromkeys([*confirmed, *exact]))

    async def _exact_customers(self, email: str) -> list[str]:
        """The ``email=`` listing (exact, case-sensitive) for the address as given and lower-cased."""
        wanted = email.lower()

        async def listed(variant: str) -> list[str]:
            ids: list[str] = []
            after: str | None = None
            while True:
                params: dict[str, Any] = {"email": variant, "limit": PAGE}
                if after:
                    params["starting_after"] = after
                page = _Page.of(await self._call(partial(self._request, "get", "/v1/customers", params)),
                                lambda c: _email_of(c) == wanted)
                ids += [c["id"] for c in page.records]
                if not page.has_more or page.last == after:
                    return ids
                after = page.last

        # Both spellings at once; the ids in the order of the spellings, as when they were listed one by one.
        spellings = await together([listed(variant) for variant in _variants(email)])
        return list(dict.fromkeys(cid for ids in spellings for cid in ids))

    async def _search_customers(self, email: str) -> list[str]:
        quoted = email.replace("\\", "\\\\").replace("'", "\\'")
        wanted = email.lower()
        ids: list[str] = []
        page_token: str | None = None
        while True:
            params: dict[str, Any] = {"query": f"email:'{quoted}'", "limit": PAGE}
            if page_token:
                params["page"] = page_token
            result = await self._call(partial(self._request, "get", "/v1/customers/search", params),
                                      optional=SEARCH)
            ids += [c["id"] for c in result.get("data") or [] if _email_of(c) == wanted]
            page_token = result.get("next_page")
            if not result.get("has_more") or not page_token:
                return ids

    async def _scan_customers(self, wanted: str) -> list[str]:
        """Every customer, filtered on the client: only for servers without search (sandboxes)."""
        ids: list[str] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": PAGE}
            if after:
                params["starting_after"] = after
            page = _Page.of(await self._call(partial(self._request, "get", "/v1/customers", params)),
                            lambda c: _email_of(c) == wanted)
            ids += [c["id"] for c in page.records]
            if not page.has_more or page.last == after:
                return ids
            after = page.last

    async def _all(self, step: _Step, email: str, customers: Sequence[str],
                   notes: list[str]) -> list[dict[str, Any]]:
        """Every record of one listing (erasure needs ids and dates, not a stream)."""
        records: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            try:
                page = await self._page(step, after, email, customers)
            except _Unsupported as gap:
                self._note_unsupported(notes, gap.feature)
                return records
            records += page.records
            self._note_gone(notes, page)
            if not page.has_more or page.last is None or page.last == after:
                return records
            after = page.last

    async def _listed(self, steps: Sequence[_Step], email: str, customers: Sequence[str],
                      notes: list[str]) -> list[list[dict[str, Any]]]:
        """Every record of each of ``steps`` (:meth:`_all`), in ``steps``' order, up to ``DATASETS_AT_ONCE``
        listings at a time: each is a round trip or more to Stripe. Each listing's pages stay in order, and its notes
        are kept apart until all are done (see :func:`_note_in_order`)."""
        noted: list[list[str]] = [[] for _ in steps]
        listed = await side_by_side([partial(self._all, step, email, customers, apart)
                                     for step, apart in zip(steps, noted, strict=True)], at_once=DATASETS_AT_ONCE)
        _note_in_order(notes, noted)
        return listed

    async def _guest_sessions(self, email: str, customers: Sequence[str],
                              notes: list[str]) -> list[dict[str, Any]]:
        _note(notes, GUEST_CASE)
        passes = [_Step("checkout_sessions", variant=i) for i in range(len(_variants(email)))]
        return [session for sessions in await self._listed(passes, email, customers, notes) for session in sessions]

    async def check(self) -> str:
        await self._call(lambda: self._request("get", "/v1/customers", {"limit": 1}))
        return "auth OK (live mode)" if self.live else "auth OK"

    async def locate(self, subject: Subject) -> list[Located]:
        notes: list[str] = []
        customers = await self._find_customers(subject.email, notes)
        located = [Located("customer", cid) for cid in customers]
        located += [Located("checkout_sessions", s["id"])
                    for s in await self._guest_sessions(subject.email, customers, notes)]
        return located

    # --- one page of one listing -----------------------------------------------------------------

    async def _page(self, step: _Step, after: str | None, email: str, customers: Sequence[str]) -> _Page:
        params: dict[str, Any] = {"limit": PAGE}
        if after:
            params["starting_after"] = after
        cid = step.customer

        async def get(path: str, extra: Mapping[str, Any], optional: str | None = None) -> dict[str, Any] | None:
            def call() -> Awaitable[dict[str, Any]]:
                return self._request("get", path, {**params, **extra})

            if optional is not None:
                return await self._call(call, optional=optional)
            return await self._call_or_missing(call)  # 404: the customer was deleted since it was located

        match step.dataset:
            case "customer":
                record = await self._call_or_missing(lambda: self._request("get", f"/v1/customers/{cid}"))
                if record is None or record.get("deleted"):
                    return _Page([], False, gone=True)
                return _Page([record], False)
            case dataset if dataset in _BY_CUSTOMER:
                path, feature = _BY_CUSTOMER[dataset]
                result = await get(path, {"customer": cid}, feature)
            case "subscriptions":
                result = await get("/v1/subscriptions", {"customer": cid, "status": "all"})
            case "payment_methods":
                try:  # every type of payment method (real Stripe)
                    result = await get(f"/v1/customers/{cid}/payment_methods", {}, CUSTOMER_PMS)
                except _Unsupported:  # an older Stripe-like server: the older listing, cards only
                    result = await get("/v1/payment_methods", {"customer": cid, "type": "card"})
            case "checkout_sessions" if cid is not None:
                result = await get("/v1/checkout/sessions", {"customer": cid}, SESSIONS)
            case "checkout_sessions":  # guest pass: sessions of located customers were listed with them
                assert step.variant is not None
                variants = _variants(email)
                typed, lower = variants[step.variant], email.lower()
                result = await get("/v1/checkout/sessions", {"customer_details": {"email": typed}}, SESSIONS)
                assert result is not None

                def guest(session: dict[str, Any]) -> bool:
                    # The sandbox's filter is exact, as the spec's ``email`` suggests; should Stripe's ignore case,
                    # both passes would answer the same sessions: each is kept by one pass only (the one for its
                    # own spelling: lower-cased or not), so none is exported twice either way.
                    got = str((session.get("customer_details") or {}).get("email") or "")
                    if session.get("customer") in customers:
                        return False
                    if not got:  # the filter's word alone: kept by the first pass only
                        return step.variant == 0
                    return got.lower() == lower and (len(variants) == 1 or (got == lower) == (typed == lower))

                return _Page.of(result, guest)
            case _:  # pragma: no cover - the plan only has the datasets above
                raise ValueError(step.dataset)
        return _Page([], False, gone=True) if result is None else _Page.of(result)

    # --- export ----------------------------------------------------------------------------------

    def _plan(self, customers: Sequence[str], email: str, provided_only: bool) -> list[_Step]:
        wanted = [d for d in DATASETS if not provided_only or d in PROVIDED]
        steps = [_Step(d, customer=cid) for cid in customers for d in wanted]
        if "checkout_sessions" in wanted:
            steps += [_Step("checkout_sessions", variant=i) for i in range(len(_variants(email)))]
        return steps

    @staticmethod
    def _resumable(resume: Mapping[str, Any] | None, provided_only: bool,
                   datasets: Sequence[str]) -> tuple[Places, dict[str, int]] | None:
        """The places and counts of ``resume`` if it is a cursor of ours for the same datasets (see
        :func:`~connectors.base.lane_places`)."""
        if not resume or resume.get("v") != _CURSOR_VERSION or resume.get("provided_only") != provided_only:
            return None
        if not isinstance(resume.get("customers"), list):
            return None
        return lane_places(resume, datasets)

    async def export(self, job: ExportJob) -> ConnectorOutcome:
        notes: list[str] = []
        email = job.subject.email
        datasets = [d for d in DATASETS if not job.provided_only or d in PROVIDED]
        resumed = self._resumable(job.resume, job.provided_only, datasets)
        if resumed is not None and job.resume is not None:
            customers = [str(c) for c in job.resume["customers"]]
            notes += noted_when_found(job.resume)  # the search lagging...: said again, though not searched again
        else:
            customers = await self._find_customers(email, notes)
        found = list(notes)  # no personal data: counts and features only, like every connector note
        steps = self._plan(customers, email, job.provided_only)
        if any(step.variant is not None for step in steps):
            _note(notes, GUEST_CASE)
        # One lane per dataset: its listings in the plan's order, one after the other.
        lanes = {d: [step for step in steps if step.dataset == d] for d in datasets}
        writers: dict[str, DatasetWriter] = {}
        try:
            writers = await open_datasets(job.sink, self.name, datasets, PROVIDED)
            written: dict[str, int] = {}
            positions: Places = {d: (0, None) for d in datasets}
            if resumed is not None:
                if all(writers[d].count >= resumed[1][d] for d in datasets):
                    positions, written = resumed
                else:  # records checkpointed but lost (e.g. an unflushed file): start over, exactly once
                    notes.append("the previous attempt's export was incomplete: exported again from the start")
            await truncate_datasets(writers, written)  # drop what was written after the last checkpoint (all, fresh)
            # What the cursor says of each dataset: moved on by its lane only once its page is flushed (another
            # lane's records may still be on their way to the store when a checkpoint is made).
            stored = {d: written.get(d, 0) for d in datasets}

            def checkpoint() -> None:
                job.checkpoint({
                    "v": _CURSOR_VERSION, "provided_only": job.provided_only, "customers": customers, "found": found,
                    "lanes": {d: list(positions[d]) for d in datasets}, "written": dict(stored),
                })

            # Each lane's notes, kept apart and added in the datasets' order: the same notes in the same order,
            # whichever lane finished first.
            noted: dict[str, list[str]] = {d: [] for d in datasets}

            async def lane(dataset: str) -> None:
                listing, after = positions[dataset]
                writer = writers[dataset]
                while listing < len(lanes[dataset]):
                    step = lanes[dataset][listing]
                    try:
                        page = await self._page(step, after, email, customers)
                    except _Unsupported as gap:
                        self._note_unsupported(noted[dataset], gap.feature)
                        page = _Page([], False)
                    self._note_gone(noted[dataset], page)
                    for record in page.records:
                        writer.write(self._project(dataset, record) if job.provided_only else record)
                    if page.has_more and page.last is not None and page.last != after:
                        after = page.last
                    else:
                        listing, after = listing + 1, None
                    await writer.flush()  # stored before the cursor that counts them is heartbeated
                    positions[dataset], stored[dataset] = (listing, after), writer.count
                    checkpoint()

            await side_by_side([partial(lane, d) for d in datasets], at_once=DATASETS_AT_ONCE)
            _note_in_order(notes, (noted[d] for d in datasets))
            summaries = [DatasetSummary(d, writers[d].count, provided=d in PROVIDED) for d in datasets]
        finally:
            await close_datasets(writers)
        total = sum(s.records for s in summaries)
        if job.provided_only:
            # Counted, not exported: the reply tells the subject what portability leaves out (Art. 20 covers
            # what they provided) and that an access request gets it.
            left_out = [d for d in DATASETS if d not in PROVIDED]
            counts = await self._count(left_out, customers, email, notes)
            summaries += [DatasetSummary(d, counts[d], provided=False) for d in left_out]
        return ConnectorOutcome(connector=self.name, found=total, counts={"exported": total}, notes=notes,
                                datasets=summaries)

    async def _count(self, datasets: Sequence[str], customers: Sequence[str], email: str,
                     notes: list[str]) -> dict[str, int]:
        """How many records of each of ``datasets`` the customers have (listed as erasure lists them, nothing
        written): every (dataset, customer) listing side by side."""
        steps = [_Step(d, customer=cid) for d in datasets for cid in customers]
        counts = dict.fromkeys(datasets, 0)
        for step, records in zip(steps, await self._listed(steps, email, customers, notes), strict=True):
            counts[step.dataset] += len(records)
        return counts

    @staticmethod
    def _project(dataset: str, record: Mapping[str, Any]) -> dict[str, Any]:
        fields = PORTABLE_FIELDS.get(dataset)
        if fields is None:
            return dict(record)
        projected = {k: record[k] for k in fields if k in record}
        if dataset == "payment_methods" and isinstance(record.get("card"), Mapping):
            card = record["card"]
            projected["card"] = {k: card.get(k) for k in ("brand", "last4", "exp_month", "exp_year")}
        return projected

    # --- erasure ---------------------------------------------------------------------------------

    def _kept(self, dataset: str, record: Mapping[str, Any], note: str) -> RecordReport:
        rule = self.retention.get(dataset)
        if rule is not None:
            return RecordReport(dataset, str(record["id"]), RecordAction.RETAINED, legal_basis=rule.legal_basis,
                                retained_until=rule.until(_created(record)), note=note)
        return RecordReport(dataset, str(record["id"]), RecordAction.RESIDUAL, note=note)

    @staticmethod
    def _key(job: OperationJob, operation: str, customer: str, payload: Mapping[str, Any] | None = None) -> str:
        key = f"{job.request_id}:{operation}:{customer}"
        if payload:  # a different payload under the same key would be refused by Stripe
            digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
            key += f":{digest[:16]}"
        return key[:255]

    async def erase(self, job: OperationJob) -> ConnectorOutcome:
        notes: list[str] = []
        email = job.subject.email
        journal = await job.journal.state()
        found_now = await self._find_customers(email, notes)
        # The report merges every attempt: what earlier ones did comes from the journal (a deleted customer
        # is no longer found, and its payments can no longer be listed by customer), the rest from this one.
        lines: dict[tuple[str, str], RecordReport] = {key: e.line for key, e in journal.done.items()}
        known = [rid for dataset, rid in journal.seen if dataset == "customer"]
        customers = known + [cid for cid in found_now if cid not in known]
        _forget_nobody(notes, customers)
        for cid in customers:
            if journal.is_done("customer", cid):
                continue
            intent = journal.pending.get(("customer", cid))
            if intent is not None and cid not in found_now:
                # An earlier attempt asked for the deletion, its answer never came, and the customer is gone.
                took_effect = [e for e in journal.pending.values() if e is intent or e.parent == cid]
                await job.journal.record(took_effect)
                lines.update((e.key, e.line) for e in took_effect)
                continue
            if cid not in found_now:
                continue  # journaled as kept, never asked to delete, and no longer found: nothing more to do
            for entry in await self._erase_customer(job, cid, email, customers, notes, asked_before=intent):
                lines[entry.key] = entry.line
        for session in await self._guest_sessions(email, customers, notes):
            line = self._kept("checkout_sessions", session,
                              "guest Checkout Session: cannot be deleted through the Stripe API")
            lines[(line.dataset, line.record_id)] = line
        report = list(lines.values())
        if not customers:
            report.append(RecordReport("customer", "-", RecordAction.ALREADY_GONE,
                                       note="no customer with this email address (already erased or never created)"))
        found = sum(1 for line in report if line.record_id != "-")
        return ConnectorOutcome(connector=self.name, found=found, counts=tally(report), notes=notes, report=report)

    async def _erase_customer(self, job: OperationJob, cid: str, email: str, customers: Sequence[str],
                              notes: list[str], *, asked_before: JournalEntry | None) -> list[JournalEntry]:
        """One customer: its payments reported kept (journaled before the deletion, after which they can no
        longer be listed by customer), then the deletion, its intent journaled before the call. Everything is listed
        first, side by side; the writes follow, one after the other."""
        steps = [_Step(d, customer=cid) for d in _ERASURE_LISTINGS]
        listed = dict(zip(_ERASURE_LISTINGS, await self._listed(steps, email, customers, notes), strict=True))
        payments = {d: listed[d] for d in ("charges", "invoices", "payment_intents", "credit_notes")}
        if PI_LIST in self._unsupported:  # the server cannot list them: those the charges name
            payments["payment_intents"] = list({
                c["payment_intent"]: {"id": c["payment_intent"], "created": c.get("created")}
                for c in payments["charges"] if c.get("payment_intent")}.values())
        # A payment intent's shipping can be unset (``shipping=""``, in Stripe's description of
        # POST /v1/payment_intents/{intent}); a charge's cannot (there ``shipping`` is an object whose name and
        # address are required), nor its billing details (not a parameter at all).
        unshipped = {str(pi["id"]): await self._unset_shipping(job, pi) for pi in payments["payment_intents"]
                     if pi.get("shipping")}
        kept: list[RecordReport] = []
        for dataset, records in payments.items():
            note = _KEPT_NOTES.get(dataset, "Stripe keeps payment records; not deletable via API")
            kept += [self._kept(dataset, r, note + (unshipped.get(str(r["id"]), "") if dataset == "payment_intents"
                                                    else "")) for r in records]
        for dataset in ("quotes", "setup_intents"):
            kept += [self._kept(dataset, r, _KEPT_NOTES[dataset]) for r in listed[dataset]]
        for record in listed["checkout_sessions"]:
            kept.append(self._kept("checkout_sessions", record,
                                   "Checkout Sessions cannot be deleted through the Stripe API"))
        for record in listed["subscriptions"]:
            kept.append(self._kept("subscriptions", record,
                                   "cancelled with the customer; the cancelled record stays in Stripe"))
        methods = listed["payment_methods"]
        entries = [JournalEntry(line, parent=cid) for line in kept]
        await job.journal.record(entries)
        # A detached payment method keeps its billing details, and Stripe updates only attached ones: blank them
        # first (the same blanking again is harmless, so a retry simply repeats it under the same key).
        blanked = {str(m["id"]) for m in methods if await self._blank_billing_details(job, m)}
        deleted = RecordReport("customer", cid, RecordAction.DELETED,
                               note="subscriptions cancelled and payment methods removed by Stripe")
        removed = [RecordReport("payment_methods", str(m["id"]), RecordAction.DELETED,
                                note=("billing details blanked, then " if str(m["id"]) in blanked else "")
                                + "detached by the customer's deletion")
                   for m in methods]
        await job.journal.intend([JournalEntry(deleted), *(JournalEntry(m, parent=cid) for m in removed)])
        if not await self._delete_customer(job, cid) and asked_before is None:
            deleted = RecordReport("customer", cid, RecordAction.ALREADY_GONE)
            removed = [replace(m, action=RecordAction.ALREADY_GONE) for m in removed]
        done = [JournalEntry(deleted), *(JournalEntry(m, parent=cid) for m in removed)]
        await job.journal.record(done)
        return entries + done

    async def _blank_billing_details(self, job: OperationJob, method: Mapping[str, Any]) -> bool:
        """Unset a payment method's billing name, email, phone and address; False when it held none."""
        details = method.get("billing_details")
        if not isinstance(details, Mapping):
            return False
        address = details.get("address")
        held = [f for f in _BILLING_FIELDS if details.get(f) and (
            f != "address" or any(v for v in (address.values() if isinstance(address, Mapping) else ())))]
        if not held:
            return False
        payload = {"billing_details": dict.fromkeys(held, "")}
        # The payload follows what the method held when read: a retry that reads it again (its first answer lost,
        # the method changed meanwhile) sends other parameters, so they go into the key (Stripe refuses one key
        # with other parameters: HTTP 400 idempotency_error).
        key = self._key(job, "redact", str(method["id"]), payload)
        await self._write("post", "/v1/payment_methods/{id}", str(method["id"]), payload, key=key)
        return True

    async def _unset_shipping(self, job: OperationJob, intent: Mapping[str, Any]) -> str:
        """Unset a payment intent's shipping (name, phone, address); the note its kept line gets. The payload
        never varies (key ``<request>:unship:<intent>:<digest>``). A refusal (Stripe's description does not say for
        which statuses it allows it) keeps the shipping and says so."""
        key = self._key(job, "unship", str(intent["id"]), {"shipping": ""})
        try:
            await self._write("post", "/v1/payment_intents/{id}", str(intent["id"]), {"shipping": ""}, key=key,
                              refusal_ok=True)
        except _Refused as refused:
            return "; its shipping details stay (Stripe refused to unset them: HTTP 400" + (
                f" {refused.code})" if refused.code else ")")
        return "; its shipping details (name, phone, address) unset"

    async def _delete_customer(self, job: OperationJob, cid: str) -> bool:
        """Delete the customer (idempotency key ``<request>:erase:<customer>``); False if it was not there."""
        key = self._key(job, "erase", cid)
        result = await self._write("delete", "/v1/customers/{id}", cid, None, key=key, missing_ok=True)
        if result is None:  # deleted by someone else since it was located (Stripe: 404 on a second deletion)
            return False
        if not result.get("deleted"):
            raise PermanentConnectorError(f"{self.name}: customer deletion was not confirmed")
        return True

    # --- rectification ---------------------------------------------------------------------------

    async def rectify(self, job: OperationJob) -> ConnectorOutcome:
        unknown = sorted(set(job.changes) - CANONICAL_FIELDS)
        if unknown:
            raise PermanentConnectorError(f"{self.name}: cannot rectify unknown field(s) {', '.join(unknown)}")
        notes: list[str] = []
        journal = await job.journal.state()
        customers = await self._find_customers(job.subject.email, notes)
        new_email = job.changes.get("email")
        if new_email and new_email.lower() != job.subject.email.lower():
            # A retry after the email itself was changed finds the customer under the new address.
            # (its notes are left out: finding no one there is the usual case, not news)
            customers += [c for c in await self._find_customers(new_email) if c not in customers]
        known = [rid for dataset, rid in journal.seen if dataset == "customer"]
        customers = known + [c for c in customers if c not in known]
        _forget_nobody(notes, customers)
        report: list[RecordReport] = []
        for cid in customers:
            done = journal.done.get(("customer", cid))
            if done is not None:  # changed by an earlier attempt of this request
                report.append(done.line)
                continue
            customer = await self._call_or_missing(partial(self._request, "get", f"/v1/customers/{cid}"))
            if customer is None or customer.get("deleted"):
                continue
            payload, fields = _rectification(customer, job.changes)
            intent = journal.pending.get(("customer", cid))
            if payload:
                line = RecordReport("customer", cid, RecordAction.CHANGED,
                                    fields=list(dict.fromkeys([*(intent.line.fields if intent else []), *fields])))
                await job.journal.intend([JournalEntry(line)])
                key = self._key(job, "rectify", cid, payload)
                await self._write("post", "/v1/customers/{id}", cid, payload, key=key)
                await job.journal.record([JournalEntry(line)])
            elif intent is not None:  # the earlier attempt's update took effect, its answer was lost
                line = intent.line
                await job.journal.record([intent])
            else:
                # Read just now, every field equal (exactly: spaces and case count); Stripe holds each canonical
                # field (the name split at its first space), so the line names them all.
                line = RecordReport("customer", cid, RecordAction.UNCHANGED, fields=sorted(job.changes),
                                    note="already up to date")
            report.append(line)
        if not customers:
            notes.append("no customer with this email address")
        return ConnectorOutcome(connector=self.name, found=len(report), counts=tally(report), notes=notes,
                                report=report)

    # --- restriction (Art. 18) --------------------------------------------------------------------

    async def restrict(self, job: OperationJob) -> ConnectorOutcome:
        """Each customer of the subject gets the metadata key ``dsr_restricted`` (the request's reference), which
        the Dashboard shows and search finds (``metadata['dsr_restricted']:...``): staff and integrations leave it
        alone. Payments are not touched: Stripe keeps them as they are, which is storage."""
        return await self._mark(job, job.request_id)

    async def lift_restriction(self, job: OperationJob) -> ConnectorOutcome:
        return await self._mark(job, "")

    async def _mark(self, job: OperationJob, value: str) -> ConnectorOutcome:
        notes: list[str] = []
        customers = await self._find_customers(job.subject.email, notes)
        _forget_nobody(notes, customers)
        report: list[RecordReport] = []
        for cid in customers:
            customer = await self._call_or_missing(partial(self._request, "get", f"/v1/customers/{cid}"))
            if customer is None or customer.get("deleted"):
                continue
            held = str((customer.get("metadata") or {}).get(RESTRICTION_MARK) or "")
            if (held != "") == bool(value):  # marked already (by this or an earlier restriction), or not marked
                report.append(RecordReport("customer", cid, RecordAction.UNCHANGED,
                                           note="already marked restricted" if value else "not marked restricted"))
                continue
            payload = {"metadata": {RESTRICTION_MARK: value}}
            key = self._key(job, "restrict" if value else "lift", cid, payload)
            answer = await self._call(partial(self._request, "post", f"/v1/customers/{cid}", payload,
                                              idempotency_key=key), write=True)
            now = str((answer.get("metadata") or {}).get(RESTRICTION_MARK) or "")
            if now != value:
                raise PermanentConnectorError(f"{self.name}: the customer's restriction mark was not "
                                              f"{'set' if value else 'removed'}")
            report.append(RecordReport("customer", cid, RecordAction.RESTRICTED if value else RecordAction.LIFTED,
                                       fields=[f"metadata.{RESTRICTION_MARK}"]))
        if not customers:
            notes.append("no customer with this email address")
        return ConnectorOutcome(connector=self.name, found=len(report), counts=tally(report), notes=notes,
                                report=report)

    async def aclose(self) -> None:
        await self._http.close_async()


_ERASURE_LISTINGS = ("charges", "invoices", "payment_intents", "credit_notes", "quotes", "setup_intents",
                     "checkout_sessions", "subscriptions", "payment_methods")
"""What an erasure lists of a customer, in the order of its report (and of its notes); every listing is made
before the deletion, after which Stripe no longer lists them by customer."""

_KEPT_NOTES = {
    "charges": "payment record kept for accounting, with its billing_details and shipping (Stripe cannot clear "
               "them on a charge)",
    "credit_notes": "accounting document; Stripe cannot delete credit notes",
    "quotes": "quotes cannot be deleted through the Stripe API",
    "setup_intents": "holds no personal data of its own (customer and payment method ids); cannot be deleted "
                     "through the Stripe API",
}

_ADDRESS = {"address_line1": "line1", "address_line2": "line2", "city": "city", "postcode": "postal_code",
            "state": "state", "country": "country"}


def _same(a: Any, b: Any) -> bool:
    return (a or "") == (b or "")


def _rectification(customer: Mapping[str, Any], changes: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The update for one customer (only fields that differ) and the canonical fields it changes.

    Stripe has one ``name``: it is split at the first space into first and last name. The shipping
    contact follows the customer's name, phone and address where it was the same before.
    """
    payload: dict[str, Any] = {}
    fields: list[str] = []
    old_name = customer.get("name") or ""
    first, _, last = old_name.partition(" ")
    new_first, new_last = changes.get("first_name", first), changes.get("last_name", last)
    fields += [f for f, old, new in (("first_name", first, new_first), ("last_name", last, new_last))
               if f in changes and not _same(old, new)]
    new_name = " ".join(p for p in (new_first, new_last) if p)
    if not _same(new_name, old_name):
        payload["name"] = new_name
    for canonical in ("email", "phone"):
        if canonical in changes and not _same(changes[canonical], customer.get(canonical)):
            payload[canonical] = changes[canonical]
            fields.append(canonical)
    old_address = {k: v for k, v in (customer.get("address") or {}).items() if v is not None}
    new_address = dict(old_address)
    for canonical, key in _ADDRESS.items():
        if canonical in changes and not _same(changes[canonical], old_address.get(key)):
            new_address[key] = changes[canonical]
            fields.append(canonical)
    if new_address != old_address:
        payload["address"] = new_address
    shipping = customer.get("shipping")
    if isinstance(shipping, Mapping) and payload:
        ship_address = {k: v for k, v in (shipping.get("address") or {}).items() if v is not None}
        new_shipping = {"name": shipping.get("name") or "", "phone": shipping.get("phone") or "",
                        "address": ship_address}
        if "name" in payload and _same(shipping.get("name"), old_name):
            new_shipping["name"] = payload["name"]
        if "phone" in payload and _same(shipping.get("phone"), customer.get("phone")):
            new_shipping["phone"] = payload["phone"]
        if "address" in payload and ship_address == old_address:
            new_shipping["address"] = new_address
        if (new_shipping["name"], new_shipping["phone"], new_shipping["address"]) != (
                shipping.get("name") or "", shipping.get("phone") or "", ship_address):
            payload["shipping"] = {k: v for k, v in new_shipping.items() if v or k == "name"}
    return payload, fields


__all__ = ["DEFAULT_RETENTION", "LEGAL_BASIS", "StripeConnector"]
