"""A local Stripe for tests and the demo: the endpoints the Stripe connector uses, as Stripe answers them.

It replaces ``localstripe`` (a third-party fake that had no customer search, no Checkout Sessions, no listing of
payment intents by customer, no ``billing_details`` on charges, and forgot deleted customers). What it
reproduces from the real API (../shared/APIS.md, and the vendored OpenAPI description every answer is
checked against in tests/apispec):

* Auth: the secret key as ``Authorization: Bearer sk_...`` or as HTTP Basic user; 401 otherwise.
* Objects in Stripe's shape, every field the description requires: customers, payment methods (per customer
  at ``/v1/customers/{id}/payment_methods`` and the older ``/v1/payment_methods?customer=&type=``), charges
  with ``billing_details`` and ``shipping``, payment intents (``POST`` unsets their ``shipping``), setup
  intents, invoices, subscriptions, credit notes, quotes and Checkout Sessions (guest ones too, listed by
  ``customer_details[email]``).
* Lists newest first, ``limit`` 1..100, ``starting_after``/``ending_before``, ``has_more``; an unknown
  parameter is refused (400 ``parameter_unknown``), as Stripe does.
* ``GET /v1/customers?email=``: exact and case-sensitive. ``GET /v1/customers/search`` with Stripe's query
  language (``email:'...'`` clauses, case-insensitive, joined by ``AND``/``OR``), its own pagination
  (``page``/``next_page``), and eventual consistency: the search sees every customer as it was
  ``search_delay`` seconds ago (a customer created more recently is not found yet, a deleted one still is).
  ``search=False`` answers it as an unknown URL, as a server without search would.
* ``DELETE /v1/customers/{id}`` returns ``{"id", "object", "deleted": true}``; a deleted customer is then
  retrieved as that same stub (not a 404), is gone from lists and, a second time, a 404. Its payment methods
  are detached and its subscriptions cancelled; charges, invoices and payment intents keep their data.
* Errors as ``{"error": {"type", "code", "message", "param"}}``; 404 ``resource_missing`` for an unknown id.
* ``Idempotency-Key`` on POST: the same key and request replays the first answer (``Idempotent-Replayed``);
  the same key with other parameters is a 400 ``idempotency_error``. Optional rate limit (429 ``rate_limit``).

Serve it with ``dsr.web.serve.serve_app(stripe_app(state, api_key=...), port=0)``, or from synchronous code
with :class:`StripeSandbox` (a server thread: ``start()``, ``.url``, ``.state``, ``stop()``). Tests and the
demo seed it through :class:`StripeState` (``seed_customer`` and ``add_*``) or, over HTTP, with
:func:`seed_customer`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from sandbox.faults import DropConnections, FaultMiddleware, Faults, stripe_error

HOST = "127.0.0.1"
DEFAULT_API_KEY = "sk_test_dsr_sandbox"
PLAN_ID = "dsr-demo-monthly"
SAMPLE_ADDRESS = {"line1": "12 rue des Lilas", "city": "Lyon", "postal_code": "69003", "country": "FR"}
MAX_LIMIT = 100
_ADDRESS_KEYS = ("city", "country", "line1", "line2", "postal_code", "state")

Record = dict[str, Any]


class StripeApiError(Exception):
    """An answer in Stripe's error shape."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": type_, "message": message}
        if code:
            self.body["code"] = code
            self.body["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param:
            self.body["param"] = param

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": self.body}, status_code=self.status, headers=dict(headers or {}))


def _missing(kind: str, object_id: str, param: str = "id") -> StripeApiError:
    return StripeApiError(404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


def _address(value: Mapping[str, Any] | None) -> Record | None:
    if not value:
        return None
    return {key: (str(value[key]) if value.get(key) not in (None, "") else None) for key in _ADDRESS_KEYS}


def _billing_details(value: Mapping[str, Any] | None) -> Record:
    value = value or {}
    return {"address": _address(value.get("address")) or dict.fromkeys(_ADDRESS_KEYS),
            "email": value.get("email") or None, "name": value.get("name") or None,
            "phone": value.get("phone") or None}


def _shipping(value: Mapping[str, Any] | None) -> Record | None:
    if not value:
        return None
    return {"address": _address(value.get("address")) or dict.fromkeys(_ADDRESS_KEYS),
            "carrier": value.get("carrier") or None, "name": value.get("name") or None,
            "phone": value.get("phone") or None, "tracking_number": value.get("tracking_number") or None}


def _list(url: str, data: list[Record], has_more: bool = False) -> Record:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


class StripeState:
    """Everything the sandbox holds, in memory. ``now`` is injectable (seconds since the epoch)."""

    TYPES: ClassVar[tuple[str, ...]] = (
        "customer", "payment_method", "charge", "payment_intent", "setup_intent", "invoice", "subscription",
        "credit_note", "quote", "checkout.session", "plan")
    PREFIX: ClassVar[dict[str, str]] = {
        "customer": "cus", "payment_method": "pm", "charge": "ch", "payment_intent": "pi", "setup_intent": "seti",
        "invoice": "in", "subscription": "sub", "credit_note": "cn", "quote": "qt", "checkout.session": "cs_test",
        "plan": "plan"}

    def __init__(self, *, search_delay: float = 0.0, now: Callable[[], float] = time.time) -> None:
        self.search_delay = search_delay
        self.now = now
        self.objects: dict[str, dict[str, Record]] = {t: {} for t in self.TYPES}
        self.deleted: set[str] = set()  # customers deleted: retrieved as ``deleted: true``
        # What the search index holds: per customer, (when, the customer as it was then or None once deleted).
        self.search_history: dict[str, list[tuple[float, Record | None]]] = {}
        self.idempotency: dict[str, tuple[str, int, bytes]] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request to an endpoint
        self.scans = 0  # customer listings without an email filter (what a connector without search falls back on)
        # ``customer_details[email]`` on Checkout Sessions: exact here, as Stripe's description suggests without
        # saying (spec3: "Only return the Checkout Sessions for the Customer details specified"); True makes it
        # ignore case, the other reading, so tests hold the connector to both.
        self.sessions_email_ignores_case = False
        self._counter = 0

    # --- ids and bookkeeping ---------------------------------------------------------------------

    def _id(self, kind: str) -> str:
        self._counter += 1
        return f"{self.PREFIX[kind]}_{self._counter:08d}{secrets.token_hex(4)}"

    def _store(self, record: Record) -> Record:
        kind = record["object"]
        self.objects[kind][record["id"]] = record
        if kind == "customer":
            self._indexed(record, at=record["created"])  # a customer seeded in the past was indexed then
        return record

    def _indexed(self, customer: Record | None, cid: str | None = None, *, at: float | None = None) -> None:
        key = cid if customer is None else customer["id"]
        assert key is not None
        self.search_history.setdefault(key, []).append(
            (self.now() if at is None else at, None if customer is None else json.loads(json.dumps(customer))))

    def _created(self, created: float | None) -> int:
        return int(self.now() if created is None else created)

    def get(self, kind: str, object_id: str) -> Record | None:
        return self.objects[kind].get(object_id)

    # --- creating objects (tests, seeding and the POST endpoints) --------------------------------

    def add_customer(self, email: str | None, name: str | None = None, *, phone: str | None = None,
                     address: Mapping[str, Any] | None = None, shipping: Mapping[str, Any] | None = None,
                     description: str | None = None, metadata: Mapping[str, str] | None = None,
                     default_payment_method: str | None = None, created: float | None = None) -> str:
        record: Record = {
            "id": self._id("customer"), "object": "customer", "created": self._created(created), "livemode": False,
            "email": email, "name": name, "phone": phone, "address": _address(address),
            "shipping": _shipping(shipping), "description": description, "balance": 0, "currency": None,
            "delinquent": False, "preferred_locales": [], "metadata": dict(metadata or {}),
            "invoice_settings": {"custom_fields": None, "default_payment_method": default_payment_method,
                                 "footer": None, "rendering_options": None},
            "tax_exempt": "none", "test_clock": None,
        }
        return self._store(record)["id"]

    def update_customer(self, cid: str, changes: Mapping[str, Any]) -> Record:
        customer = self.live_customer(cid)
        for key, value in changes.items():
            if key == "address":
                customer["address"] = _address(value) if value != "" else None
            elif key == "shipping":
                customer["shipping"] = _shipping(value) if value != "" else None
            elif key == "metadata":
                # Stripe: "Individual keys can be unset by posting an empty value to them. All keys can be unset by
                # posting an empty value to metadata."
                if value == "":
                    customer["metadata"] = {}
                for name, item in (value or {}).items():
                    if item == "":
                        customer["metadata"].pop(name, None)
                    else:
                        customer["metadata"][name] = item
            elif key == "invoice_settings":
                if "default_payment_method" in (value or {}):
                    customer["invoice_settings"]["default_payment_method"] = value["default_payment_method"] or None
            elif key in ("email", "name", "phone", "description"):
                customer[key] = value or None
            elif key == "preferred_locales":
                customer[key] = list(value or [])
            else:
                raise StripeApiError(400, f"Received unknown parameter: {key}", code="parameter_unknown", param=key)
        self._indexed(customer)
        return customer

    def live_customer(self, cid: str) -> Record:
        customer = self.objects["customer"].get(cid)
        if customer is None:
            raise _missing("customer", cid)
        return customer

    def delete_customer(self, cid: str) -> Record:
        """Stripe's deletion: permanent; payment methods detached, subscriptions cancelled, payments kept."""
        self.live_customer(cid)
        del self.objects["customer"][cid]
        self.deleted.add(cid)
        self._indexed(None, cid)
        now = int(self.now())
        for method in self.objects["payment_method"].values():
            if method.get("customer") == cid:
                method["customer"] = None
        for sub in self.objects["subscription"].values():
            if sub["customer"] == cid and sub["status"] != "canceled":
                sub.update(status="canceled", canceled_at=now, ended_at=now)
        return {"id": cid, "object": "customer", "deleted": True}

    def add_payment_method(self, customer: str | None, *, billing_details: Mapping[str, Any] | None = None,
                           card_number: str = "4242424242424242", exp_month: int = 12, exp_year: int = 2034,
                           created: float | None = None) -> str:
        brand = {"4": "visa", "5": "mastercard", "3": "amex"}.get(card_number[:1], "unknown")
        record: Record = {
            "id": self._id("payment_method"), "object": "payment_method", "created": self._created(created),
            "livemode": False, "type": "card", "customer": customer, "metadata": {},
            "billing_details": _billing_details(billing_details),
            "card": {"brand": brand, "country": "FR", "exp_month": exp_month, "exp_year": exp_year,
                     "funding": "credit", "last4": card_number[-4:], "fingerprint": hashlib.sha256(
                         card_number.encode()).hexdigest()[:16], "wallet": None},
        }
        return self._store(record)["id"]

    def add_charge(self, customer: str | None, amount: int, currency: str = "eur", *,
                   description: str | None = None, payment_method: str | None = None,
                   billing_details: Mapping[str, Any] | None = None, shipping: Mapping[str, Any] | None = None,
                   receipt_email: str | None = None, invoice: str | None = None, with_intent: bool = True,
                   created: float | None = None) -> str:
        """A succeeded card charge; its billing details are the payment method's (as Stripe copies them), its
        shipping the customer's unless given. With ``with_intent``, the payment intent that made it too."""
        owner = self.objects["customer"].get(customer or "")
        method = self.objects["payment_method"].get(payment_method or "")
        if method is None and owner is not None:
            method = self.objects["payment_method"].get(owner["invoice_settings"]["default_payment_method"] or "")
        when = self._created(created)
        charge_id = self._id("charge")
        intent_id = self._id("payment_intent") if with_intent else None
        details = _billing_details(billing_details) if billing_details is not None else (
            json.loads(json.dumps(method["billing_details"])) if method else _billing_details(None))
        ship = _shipping(shipping) if shipping is not None else (owner or {}).get("shipping")
        email = receipt_email or (owner or {}).get("email")
        charge: Record = {
            "id": charge_id, "object": "charge", "created": when, "livemode": False, "amount": amount,
            "amount_captured": amount, "amount_refunded": 0, "captured": True, "currency": currency,
            "customer": customer, "description": description, "disputed": False, "invoice": invoice,
            "metadata": {}, "paid": True, "refunded": False, "status": "succeeded", "payment_intent": intent_id,
            "payment_method": method["id"] if method else None, "billing_details": details,
            "receipt_email": email, "shipping": json.loads(json.dumps(ship)) if ship else None,
            "statement_descriptor": None, "failure_code": None, "failure_message": None,
            "outcome": {"network_status": "approved_by_network", "reason": None, "risk_level": "normal",
                        "seller_message": "Payment complete.", "type": "authorized"},
        }
        if intent_id is not None:
            self._store({
                "id": intent_id, "object": "payment_intent", "created": when, "livemode": False, "amount": amount,
                "amount_received": amount, "capture_method": "automatic", "confirmation_method": "automatic",
                "currency": currency, "customer": customer, "description": description, "invoice": invoice,
                "latest_charge": charge_id, "metadata": {}, "payment_method": charge["payment_method"],
                "payment_method_types": ["card"], "receipt_email": email, "shipping": charge["shipping"],
                "status": "succeeded",
            })
        return self._store(charge)["id"]

    def add_setup_intent(self, customer: str, payment_method: str | None = None, *,
                         created: float | None = None) -> str:
        return self._store({
            "id": self._id("setup_intent"), "object": "setup_intent", "created": self._created(created),
            "livemode": False, "customer": customer, "payment_method": payment_method, "description": None,
            "metadata": {}, "payment_method_types": ["card"], "status": "succeeded", "usage": "off_session",
        })["id"]

    def add_plan(self, plan_id: str, amount: int, currency: str, interval: str = "month",
                 product_name: str = "Subscription") -> Record:
        if plan_id in self.objects["plan"]:
            raise StripeApiError(400, "Plan already exists.", code="resource_already_exists", param="id")
        return self._store({"id": plan_id, "object": "plan", "amount": amount, "currency": currency,
                            "interval": interval, "interval_count": 1, "active": True, "livemode": False,
                            "product": f"prod_{hashlib.sha256(product_name.encode()).hexdigest()[:14]}",
                            "created": int(self.now()), "metadata": {}, "nickname": product_name})

    def add_subscription(self, customer: str, plan_id: str = PLAN_ID, *, quantity: int = 1,
                         created: float | None = None) -> str:
        """An active monthly subscription; its first invoice is created and paid (a charge) at once."""
        self.live_customer(customer)
        plan = self.objects["plan"].get(plan_id)
        if plan is None:
            raise _missing("plan", plan_id, "items[0][plan]")
        when = self._created(created)
        sub_id = self._id("subscription")
        price = {"id": plan["id"], "object": "price", "active": True, "billing_scheme": "per_unit",
                 "created": plan["created"], "currency": plan["currency"], "livemode": False, "metadata": {},
                 "product": plan["product"], "type": "recurring", "unit_amount": plan["amount"],
                 "recurring": {"interval": plan["interval"], "interval_count": 1,
                               "trial_period_days": None, "usage_type": "licensed"}}
        period_end = when + 30 * 86400
        self._store({
            "id": sub_id, "object": "subscription", "created": when, "livemode": False, "customer": customer,
            "automatic_tax": {"enabled": False}, "billing_cycle_anchor": when, "cancel_at_period_end": False,
            "canceled_at": None, "ended_at": None, "collection_method": "charge_automatically",
            "currency": plan["currency"], "current_period_start": when, "current_period_end": period_end,
            "metadata": {}, "start_date": when, "status": "active", "quantity": quantity,
            "items": _list(f"/v1/subscription_items?subscription={sub_id}", [{
                "id": f"si_{secrets.token_hex(7)}", "object": "subscription_item", "created": when, "metadata": {},
                "price": price, "quantity": quantity, "subscription": sub_id}]),
        })
        self.add_invoice(customer, plan["amount"] * quantity, plan["currency"], subscription=sub_id,
                         period=(when, period_end), description=plan["nickname"], created=when)
        return sub_id

    def add_invoice(self, customer: str, amount: int, currency: str = "eur", *, subscription: str | None = None,
                    period: tuple[int, int] | None = None, description: str | None = None, paid: bool = True,
                    created: float | None = None) -> str:
        owner = self.live_customer(customer)
        when = self._created(created)
        start, end = period or (when, when)
        invoice_id = self._id("invoice")
        charge = self.add_charge(customer, amount, currency, description=description, invoice=invoice_id,
                                 created=when) if paid else None
        self._store({
            "id": invoice_id, "object": "invoice", "created": when, "livemode": False, "customer": customer,
            "customer_email": owner["email"], "customer_name": owner["name"], "customer_phone": owner["phone"],
            "customer_address": owner["address"], "customer_shipping": owner["shipping"],
            "amount_due": amount, "amount_paid": amount if paid else 0, "amount_remaining": 0 if paid else amount,
            "amount_shipping": 0, "attempt_count": 1 if paid else 0, "attempted": paid,
            "automatic_tax": {"enabled": False}, "billing_reason":
                "subscription_create" if subscription else "manual",
            "charge": charge, "collection_method": "charge_automatically", "currency": currency,
            "default_tax_rates": [], "description": None, "number": f"DSR-{self._counter:06d}",
            "lines": _list(f"/v1/invoices/{invoice_id}/lines", [{
                "id": f"il_{secrets.token_hex(7)}", "object": "line_item", "amount": amount, "currency": currency,
                "description": description, "discountable": True, "livemode": False, "metadata": {},
                "period": {"start": start, "end": end}, "proration": False, "quantity": 1,
                "type": "subscription" if subscription else "invoiceitem"}]),
            "paid": paid, "paid_out_of_band": False, "payment_settings": {"default_mandate": None,
                                                                          "payment_method_options": None,
                                                                          "payment_method_types": None},
            "period_start": start, "period_end": end, "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0, "starting_balance": 0, "status": "paid" if paid else "open",
            "status_transitions": {"finalized_at": when, "marked_uncollectible_at": None,
                                   "paid_at": when if paid else None, "voided_at": None},
            "subscription": subscription, "subtotal": amount, "total": amount, "total_tax_amounts": [],
        })
        return invoice_id

    def add_credit_note(self, invoice: str, amount: int, *, memo: str | None = None,
                        created: float | None = None) -> str:
        source = self.objects["invoice"].get(invoice)
        if source is None:
            raise _missing("invoice", invoice, "invoice")
        note_id = self._id("credit_note")
        return self._store({
            "id": note_id, "object": "credit_note", "created": self._created(created), "livemode": False,
            "amount": amount, "amount_shipping": 0, "currency": source["currency"], "customer": source["customer"],
            "discount_amount": 0, "discount_amounts": [], "invoice": invoice, "memo": memo,
            "number": f"{source['number']}-CN-01", "pdf": f"https://pay.stripe.com/credit_notes/{note_id}/pdf",
            "reason": "order_change", "status": "issued", "subtotal": amount, "tax_amounts": [], "total": amount,
            "type": "post_payment",
            "lines": _list(f"/v1/credit_notes/{note_id}/lines", [{
                "id": f"cnli_{secrets.token_hex(7)}", "object": "credit_note_line_item", "amount": amount,
                "description": memo, "discount_amount": 0, "discount_amounts": [], "livemode": False,
                "tax_amounts": [], "tax_rates": [], "type": "custom_line_item", "quantity": 1}]),
        })["id"]

    def add_quote(self, customer: str, amount: int, currency: str = "eur", *, description: str | None = None,
                  status: str = "open", created: float | None = None) -> str:
        self.live_customer(customer)
        when = self._created(created)
        totals = {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}
        return self._store({
            "id": self._id("quote"), "object": "quote", "created": when, "livemode": False, "customer": customer,
            "amount_subtotal": amount, "amount_total": amount, "automatic_tax": {"enabled": False},
            "collection_method": "charge_automatically", "currency": currency, "description": description,
            "computed": {"recurring": None, "upfront": {"amount_subtotal": amount, "amount_total": amount,
                                                        "total_details": totals}},
            "discounts": [], "expires_at": when + 30 * 86400, "metadata": {}, "number": None, "status": status,
            "status_transitions": {"accepted_at": None, "canceled_at": None, "finalized_at": when},
            "subscription_data": {"description": None, "effective_date": None, "trial_period_days": None},
            "total_details": totals,
        })["id"]

    def add_checkout_session(self, *, customer: str | None = None, email: str, name: str | None = None,
                             phone: str | None = None, address: Mapping[str, Any] | None = None,
                             shipping: Mapping[str, Any] | None = None, amount: int = 2500,
                             currency: str = "eur", created: float | None = None) -> str:
        """A completed, paid Checkout Session; without ``customer`` a guest one (found by its details' email)."""
        when = self._created(created)
        charge = self.add_charge(customer, amount, currency, billing_details={
            "email": email, "name": name, "phone": phone, "address": address}, shipping=shipping,
            receipt_email=email, created=when)
        ship = _shipping(shipping)
        return self._store({
            "id": self._id("checkout.session"), "object": "checkout.session", "created": when,
            "livemode": False, "mode": "payment", "status": "complete", "payment_status": "paid",
            "amount_subtotal": amount, "amount_total": amount, "currency": currency, "customer": customer,
            "customer_email": email if customer is None else None,
            "customer_details": {"address": _address(address), "email": email, "name": name, "phone": phone,
                                 "tax_exempt": "none", "tax_ids": []},
            "shipping_details": {"address": ship["address"], "name": ship["name"], "carrier": None,
                                 "phone": None, "tracking_number": None} if ship else None,
            "automatic_tax": {"enabled": False}, "custom_fields": [],
            "custom_text": {"shipping_address": None, "submit": None, "terms_of_service_acceptance": None},
            "expires_at": when + 86400, "metadata": {}, "payment_intent": self.objects["charge"][charge][
                "payment_intent"], "payment_method_types": ["card"], "shipping_options": [],
            "url": None,
        })["id"]

    def seed_customer(self, email: str, name: str, *, charges: int = 0, subscription: bool = False,
                      phone: str | None = "+33612345678", address: Mapping[str, str] | None = None,
                      amount: int = 1990, currency: str = "eur", extras: bool = False,
                      created: float | None = None) -> str:
        """A customer as a shop makes one (see :func:`seed_customer`), in memory; with ``extras`` also a saved
        card's setup intent, a quote, a refund's credit note (needs ``subscription``) and a Checkout Session."""
        address = dict(address or SAMPLE_ADDRESS)
        details = {"name": name, "email": email, "phone": phone, "address": address}
        cid = self.add_customer(email, name, phone=phone, address=address,
                                shipping={"name": name, "phone": phone, "address": address},
                                metadata={"seeded_by": "dsr-sandbox"}, created=created)
        method = self.add_payment_method(cid, billing_details=details, created=created)
        self.objects["customer"][cid]["invoice_settings"]["default_payment_method"] = method
        self._indexed(self.objects["customer"][cid], at=self.objects["customer"][cid]["created"])
        for i in range(charges):
            self.add_charge(cid, amount + i % 100, currency, description=f"Order {i + 1}", created=created)
        if subscription:
            if PLAN_ID not in self.objects["plan"]:
                self.add_plan(PLAN_ID, amount, currency, product_name="DSR demo subscription")
            self.add_subscription(cid, PLAN_ID, created=created)
        if extras:
            self.add_setup_intent(cid, method, created=created)
            self.add_quote(cid, amount * 12, currency, description="Annual plan", created=created)
            invoices = [i for i in self.objects["invoice"].values() if i["customer"] == cid]
            if invoices:
                self.add_credit_note(invoices[0]["id"], amount // 2, memo="Late delivery", created=created)
            self.add_checkout_session(customer=cid, email=email, name=name, phone=phone, address=address,
                                      shipping={"name": name, "address": address}, created=created)
        return cid

    # --- queries ---------------------------------------------------------------------------------

    def search_view(self, cid: str) -> Record | None:
        """The customer as the search index holds it now: as it was ``search_delay`` seconds ago."""
        seen = self.now() - self.search_delay
        view: Record | None = None
        for when, snapshot in self.search_history.get(cid, ()):
            if when <= seen:
                view = snapshot
        return view


# --- the search query language (the part the connector needs) ------------------------------------

_CLAUSE = re.compile(r"\s*(?P<field>[a-z_]+)(?P<op>:|~)'(?P<value>(?:[^'\\]|\\.)*)'\s*")
SEARCH_FIELDS = ("email", "name", "phone", "description")


def parse_query(query: str) -> tuple[str, list[tuple[str, str, str]]]:
    """``email:'a@b.c' AND name~'x'`` as ("AND", [(field, op, value), ...]); a ValueError if not understood."""
    clauses: list[tuple[str, str, str]] = []
    joins: set[str] = set()
    rest = query
    while True:
        match = _CLAUSE.match(rest)
        if match is None or match.group("field") not in SEARCH_FIELDS:
            raise ValueError(query)
        clauses.append((match.group("field"), match.group("op"),
                        re.sub(r"\\(.)", r"\1", match.group("value"))))
        rest = rest[match.end():]
        if not rest:
            break
        join = re.match(r"(AND|OR)\s+", rest)
        if join is None:
            raise ValueError(query)
        joins.add(join.group(1))
        rest = rest[join.end():]
    if len(joins) > 1:
        raise ValueError(query)  # Stripe refuses mixing AND and OR
    return (joins.pop() if joins else "AND"), clauses


def _matches(record: Record, join: str, clauses: list[tuple[str, str, str]]) -> bool:
    def one(name: str, op: str, value: str) -> bool:
        held = str(record.get(name) or "").lower()
        return held == value.lower() if op == ":" else (len(value) >= 3 and value.lower() in held)

    results = [one(*clause) for clause in clauses]
    return all(results) if join == "AND" else any(results)


# --- HTTP ----------------------------------------------------------------------------------------


def _nest(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding ``a[b][0]=c`` as ``{"a": {"b": ["c"]}}`` (lists from numeric or empty keys:
    ``expand[]=x&expand[]=y`` is a list of two)."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        names = [key.split("[", 1)[0], *re.findall(r"\[([^\]]*)\]", key)]
        node: Any = root
        for i, name in enumerate(names):
            if not isinstance(node, dict):
                break  # ``a=1&a[b]=2``: the scalar stays, as a form parser keeps the first shape
            name = name or str(len(node))  # ``[]`` appends
            if i == len(names) - 1:
                node[name] = value
            else:
                node = node.setdefault(name, {})
    return _lists(root)


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        if node and all(k.isdigit() or k == "" for k in node):
            return [_lists(node[k]) for k in sorted(node, key=lambda k: int(k) if k else 0)]
        return {k: _lists(v) for k, v in node.items()}
    return node


Handler = Callable[[Request, dict[str, Any]], Awaitable[Any]]

_LIST_PARAMS = frozenset({"limit", "starting_after", "ending_before", "expand", "created"})


class _StripeApi:
    def __init__(self, state: StripeState, api_key: str, search: bool, rate_limit: tuple[int, float] | None) -> None:
        self.state = state
        self.api_key = api_key
        self.search_enabled = search
        self.rate_limit = rate_limit
        self._window: deque[float] = deque()

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return secrets.compare_digest(value.encode(), self.api_key.encode())
        if scheme.lower() == "basic":
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                user = base64.b64decode(value, validate=True).decode().partition(":")[0]
                return secrets.compare_digest(user.encode(), self.api_key.encode())
        return False

    def _throttled(self) -> bool:
        if self.rate_limit is None:
            return False
        limit, seconds = self.rate_limit
        now = time.monotonic()
        while self._window and now - self._window[0] >= seconds:
            self._window.popleft()
        if len(self._window) >= limit:
            return True
        self._window.append(now)
        return False

    def endpoint(self, handler: Handler, *, allowed: frozenset[str] | None = None, search: bool = False) -> Callable[
            [Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            self.state.requests.append((request.method, request.url.path))
            if search and not self.search_enabled:
                return _unrecognised(request).response()
            if not self._authorised(request):
                return StripeApiError(401, "Invalid API Key provided.").response()
            if self._throttled():
                return StripeApiError(429, "Request rate limit exceeded.", code="rate_limit").response(
                    {"Retry-After": "1"})
            body = await request.body()
            pairs = parse_qsl(request.url.query, keep_blank_values=True)
            if request.method == "POST":
                pairs += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
            params = _nest(pairs)
            key = request.headers.get("idempotency-key") if request.method == "POST" else None
            fingerprint = hashlib.sha256(f"{request.method} {request.url.path} {sorted(pairs)}".encode()).hexdigest()
            if key is not None:
                if len(key) > 255:
                    return StripeApiError(400, "Idempotency key too long.", param="Idempotency-Key").response()
                kept = self.state.idempotency.get(key)
                if kept is not None:
                    if kept[0] != fingerprint:
                        return StripeApiError(400, "Keys for idempotent requests can only be used with the same "
                                                   "parameters they were first used with.",
                                              type_="idempotency_error").response()
                    return Response(kept[2], status_code=kept[1], media_type="application/json",
                                    headers={"Idempotent-Replayed": "true"})
            try:
                if allowed is not None:
                    unknown = [name for name in params if name not in allowed]
                    if unknown:
                        raise StripeApiError(400, f"Received unknown parameter: {unknown[0]}",
                                             code="parameter_unknown", param=unknown[0])
                result = await handler(request, params)
                response = JSONResponse(result)
            except StripeApiError as error:
                response = error.response()
            if key is not None and response.status_code != 429 and response.status_code < 500:
                self.state.idempotency[key] = (fingerprint, response.status_code, bytes(response.body))
            return response

        return run

    # --- lists -----------------------------------------------------------------------------------

    @staticmethod
    def _limit(params: Mapping[str, Any]) -> int:
        raw = params.get("limit", "10")
        if not isinstance(raw, str) or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise StripeApiError(400, "Invalid integer: limit must be between 1 and 100.",
                                 code="parameter_invalid_integer", param="limit")
        return int(raw)

    def _page(self, url: str, kind: str, records: list[Record], params: Mapping[str, Any]) -> Record:
        """Newest first; ``starting_after``/``ending_before`` an id of this list (Stripe: a 404 otherwise)."""
        limit = self._limit(params)
        # Newest first; records created in the same second keep their reverse creation order (a stable sort).
        ordered = sorted(reversed(records), key=lambda r: r["created"], reverse=True)
        ids = [r["id"] for r in ordered]
        after, before = params.get("starting_after"), params.get("ending_before")
        if after:
            if after not in ids and self.state.get(kind, str(after)) is None:
                raise _missing(kind.replace(".", " ").replace("_", " "), str(after), "starting_after")
            start = ids.index(after) + 1 if after in ids else len(ids)
            chunk = ordered[start:start + limit]
            return _list(url, chunk, start + limit < len(ordered))
        if before:
            if before not in ids:
                raise _missing(kind.replace("_", " "), str(before), "ending_before")
            end = ids.index(before)
            chunk = ordered[max(0, end - limit):end]
            return _list(url, chunk, end - limit > 0)
        return _list(url, ordered[:limit], limit < len(ordered))

    def _all(self, kind: str, **equal: Any) -> list[Record]:
        return [r for r in self.state.objects[kind].values()
                if all(r.get(k) == v for k, v in equal.items() if v is not None)]

    def _customer_filter(self, params: Mapping[str, Any]) -> str | None:
        customer = params.get("customer")
        if customer is not None and not isinstance(customer, str):
            raise StripeApiError(400, "Invalid string: customer", code="parameter_invalid_string", param="customer")
        return customer or None

    async def list_customers(self, request: Request, params: dict[str, Any]) -> Any:
        email = params.get("email")
        self.state.scans += email is None
        records = [c for c in self.state.objects["customer"].values() if email is None or c["email"] == email]
        return self._page("/v1/customers", "customer", records, params)

    async def search_customers(self, request: Request, params: dict[str, Any]) -> Any:
        query = params.get("query")
        if not isinstance(query, str) or not query:
            raise StripeApiError(400, "Missing required param: query.", code="parameter_missing", param="query")
        try:
            join, clauses = parse_query(query)
        except ValueError:
            raise StripeApiError(400, "Invalid search query.", code="parameter_invalid_string",
                                 param="query") from None
        limit = self._limit(params)
        hits = [view for cid in reversed(list(self.state.search_history))
                if (view := self.state.search_view(cid)) is not None and _matches(view, join, clauses)]
        offset = 0
        page = params.get("page")
        if page:
            try:
                offset = int(base64.urlsafe_b64decode(str(page).encode()).decode().removeprefix("offset:"))
            except ValueError:
                raise StripeApiError(400, "Invalid page.", param="page") from None
        chunk = hits[offset:offset + limit]
        more = offset + limit < len(hits)
        token = base64.urlsafe_b64encode(f"offset:{offset + limit}".encode()).decode() if more else None
        return {"object": "search_result", "data": chunk, "has_more": more, "next_page": token,
                "url": "/v1/customers/search"}

    async def retrieve_customer(self, request: Request, params: dict[str, Any]) -> Any:
        cid = request.path_params["customer"]
        if cid in self.state.deleted:
            return {"id": cid, "object": "customer", "deleted": True}
        return self.state.live_customer(cid)

    async def create_customer(self, request: Request, params: dict[str, Any]) -> Any:
        known = {"email", "name", "phone", "address", "shipping", "description", "metadata", "invoice_settings",
                 "payment_method", "preferred_locales"}
        _refuse_unknown(params, known)
        cid = self.state.add_customer(params.get("email"), params.get("name"), phone=params.get("phone"),
                                      address=params.get("address"), shipping=params.get("shipping"),
                                      description=params.get("description"), metadata=params.get("metadata"))
        method = params.get("payment_method")
        if method:
            self._attach(method, cid)
        if params.get("invoice_settings"):
            self.state.update_customer(cid, {"invoice_settings": params["invoice_settings"]})
        return self.state.objects["customer"][cid]

    def _attach(self, method_id: str, cid: str) -> None:
        method = self.state.get("payment_method", method_id)
        if method is None:
            raise _missing("PaymentMethod", method_id, "payment_method")
        method["customer"] = cid

    async def update_customer(self, request: Request, params: dict[str, Any]) -> Any:
        params.pop("expand", None)
        return self.state.update_customer(request.path_params["customer"], params)

    async def delete_customer(self, request: Request, params: dict[str, Any]) -> Any:
        return self.state.delete_customer(request.path_params["customer"])

    async def customer_payment_methods(self, request: Request, params: dict[str, Any]) -> Any:
        cid = request.path_params["customer"]
        self.state.live_customer(cid)
        kind = params.get("type")
        records = [m for m in self._all("payment_method", customer=cid) if kind is None or m["type"] == kind]
        return self._page(f"/v1/customers/{cid}/payment_methods", "payment_method", records, params)

    async def list_payment_methods(self, request: Request, params: dict[str, Any]) -> Any:
        cid = self._customer_filter(params)
        kind = params.get("type")
        records = [m for m in self._all("payment_method", customer=cid) if kind is None or m["type"] == kind]
        if cid is None:
            records = [m for m in records if m.get("customer")]
        return self._page("/v1/payment_methods", "payment_method", records, params)

    async def create_payment_method(self, request: Request, params: dict[str, Any]) -> Any:
        _refuse_unknown(params, {"type", "card", "billing_details", "metadata"})
        if params.get("type") != "card":
            raise StripeApiError(400, "Only card payment methods in this sandbox.", code="parameter_invalid_string",
                                 param="type")
        card = params.get("card") or {}
        method = self.state.add_payment_method(None, billing_details=params.get("billing_details"),
                                               card_number=str(card.get("number") or "4242424242424242"),
                                               exp_month=int(card.get("exp_month") or 12),
                                               exp_year=int(card.get("exp_year") or 2034))
        return self.state.objects["payment_method"][method]

    async def update_payment_method(self, request: Request, params: dict[str, Any]) -> Any:
        """Stripe updates only an attached method; ``""`` unsets a billing field."""
        _refuse_unknown(params, {"billing_details", "metadata", "expand"})
        method_id = request.path_params["payment_method"]
        method = self.state.get("payment_method", method_id)
        if method is None:
            raise _missing("PaymentMethod", method_id)
        if not method.get("customer"):
            raise StripeApiError(400, "You must save this PaymentMethod to a customer before you can update it.",
                                 code="payment_method_unexpected_state")
        details = params.get("billing_details") or {}
        held = method["billing_details"]
        for name in ("email", "name", "phone"):
            if name in details:
                held[name] = details[name] or None
        if "address" in details:
            held["address"] = dict.fromkeys(_ADDRESS_KEYS) if details["address"] == "" else (
                {**held["address"], **{k: v or None for k, v in details["address"].items() if k in _ADDRESS_KEYS}})
        method["metadata"].update(params.get("metadata") or {})
        return method

    async def list_charges(self, request: Request, params: dict[str, Any]) -> Any:
        # ``customer=`` of a deleted customer still lists its charges here. Stripe documents that deleted customers
        # stay retrievable "in order to be able to track their history" (API reference, Delete a customer) and
        # that a charge keeps its ``customer`` id (spec3: "ID of the customer this charge is for if one exists"),
        # but not whether the list filter takes a deleted id: an assumption. The connector does not rely on it
        # either way: it lists a customer's payments before deleting it and journals them (connectors/stripe.py).
        records = self._all("charge", customer=self._customer_filter(params),
                            payment_intent=params.get("payment_intent"))
        return self._page("/v1/charges", "charge", records, params)

    async def create_charge(self, request: Request, params: dict[str, Any]) -> Any:
        _refuse_unknown(params, {"customer", "amount", "currency", "description", "shipping", "receipt_email",
                                 "metadata", "payment_method", "source"})
        cid = params.get("customer")
        if cid:
            self.state.live_customer(cid)
        amount = params.get("amount")
        if not isinstance(amount, str) or not amount.isdigit():
            raise StripeApiError(400, "Missing required param: amount.", code="parameter_missing", param="amount")
        charge = self.state.add_charge(cid, int(amount), str(params.get("currency") or "eur"),
                                       description=params.get("description"),
                                       shipping=params.get("shipping"), receipt_email=params.get("receipt_email"))
        return self.state.objects["charge"][charge]

    async def update_payment_intent(self, request: Request, params: dict[str, Any]) -> Any:
        """``shipping`` set, or unset with ``""`` (Stripe's description allows both, and names no status that
        forbids it: the sandbox allows it whatever the status); ``description``, ``receipt_email``, ``metadata``."""
        _refuse_unknown(params, {"shipping", "description", "receipt_email", "metadata"})
        intent = self.state.get("payment_intent", request.path_params["intent"])
        if intent is None:
            raise _missing("payment_intent", request.path_params["intent"], "intent")
        if "shipping" in params:
            intent["shipping"] = None if params["shipping"] == "" else _shipping(params["shipping"])
        for name in ("description", "receipt_email"):
            if name in params:
                intent[name] = params[name] or None
        intent["metadata"].update(params.get("metadata") or {})
        return intent

    async def retrieve_charge(self, request: Request, params: dict[str, Any]) -> Any:
        charge = self.state.get("charge", request.path_params["charge"])
        if charge is None:
            raise _missing("charge", request.path_params["charge"])
        return charge

    def _by_customer(self, kind: str, url: str) -> Handler:
        async def listing(request: Request, params: dict[str, Any]) -> Any:
            return self._page(url, kind, self._all(kind, customer=self._customer_filter(params)), params)

        return listing

    async def list_subscriptions(self, request: Request, params: dict[str, Any]) -> Any:
        status = params.get("status")
        records = [s for s in self._all("subscription", customer=self._customer_filter(params))
                   if (status == "all" or (status is None and s["status"] != "canceled") or s["status"] == status)]
        return self._page("/v1/subscriptions", "subscription", records, params)

    async def create_subscription(self, request: Request, params: dict[str, Any]) -> Any:
        _refuse_unknown(params, {"customer", "items", "metadata"})
        items = params.get("items") or []
        plan = items[0].get("plan") or items[0].get("price") if items and isinstance(items[0], dict) else None
        if not plan:
            raise StripeApiError(400, "Missing required param: items.", code="parameter_missing", param="items")
        sub = self.state.add_subscription(str(params.get("customer")), str(plan))
        return self.state.objects["subscription"][sub]

    async def retrieve_plan(self, request: Request, params: dict[str, Any]) -> Any:
        plan = self.state.get("plan", request.path_params["plan"])
        if plan is None:
            raise _missing("plan", request.path_params["plan"])
        return plan

    async def create_plan(self, request: Request, params: dict[str, Any]) -> Any:
        product = params.get("product") or {}
        return self.state.add_plan(str(params.get("id") or f"plan_{secrets.token_hex(7)}"),
                                   int(params.get("amount") or 0), str(params.get("currency") or "eur"),
                                   str(params.get("interval") or "month"),
                                   str(product.get("name") if isinstance(product, dict) else "Subscription"))

    async def list_sessions(self, request: Request, params: dict[str, Any]) -> Any:
        details = params.get("customer_details")
        email = details.get("email") if isinstance(details, dict) else None
        if details is not None and not email:
            raise StripeApiError(400, "Missing required param: customer_details[email].", code="parameter_missing",
                                 param="customer_details[email]")
        def typed(session: Record) -> str:
            held = str((session["customer_details"] or {}).get("email") or "")
            return held.lower() if self.state.sessions_email_ignores_case else held

        wanted = str(email).lower() if email is not None and self.state.sessions_email_ignores_case else email
        records = [s for s in self._all("checkout.session", customer=self._customer_filter(params),
                                        payment_intent=params.get("payment_intent"))
                   if email is None or typed(s) == wanted]
        return self._page("/v1/checkout/sessions", "checkout.session", records, params)

    def routes(self) -> list[Route]:
        e = self.endpoint
        listed = _LIST_PARAMS
        return [
            Route("/v1/customers", e(self.list_customers, allowed=listed | {"email", "test_clock"}), methods=["GET"]),
            Route("/v1/customers", e(self.create_customer), methods=["POST"]),
            Route("/v1/customers/search", e(self.search_customers, allowed=frozenset(
                {"query", "limit", "page", "expand"}), search=True), methods=["GET"]),
            Route("/v1/customers/{customer}", e(self.retrieve_customer, allowed=frozenset({"expand"})),
                  methods=["GET"]),
            Route("/v1/customers/{customer}", e(self.update_customer), methods=["POST"]),
            Route("/v1/customers/{customer}", e(self.delete_customer, allowed=frozenset()), methods=["DELETE"]),
            Route("/v1/customers/{customer}/payment_methods",
                  e(self.customer_payment_methods, allowed=listed | {"type"}), methods=["GET"]),
            Route("/v1/payment_methods", e(self.list_payment_methods, allowed=listed | {"customer", "type"}),
                  methods=["GET"]),
            Route("/v1/payment_methods", e(self.create_payment_method), methods=["POST"]),
            Route("/v1/payment_methods/{payment_method}", e(self.update_payment_method), methods=["POST"]),
            Route("/v1/charges", e(self.list_charges, allowed=listed | {"customer", "payment_intent"}),
                  methods=["GET"]),
            Route("/v1/charges", e(self.create_charge), methods=["POST"]),
            Route("/v1/charges/{charge}", e(self.retrieve_charge, allowed=frozenset({"expand"})), methods=["GET"]),
            Route("/v1/payment_intents", e(self._by_customer("payment_intent", "/v1/payment_intents"),
                                           allowed=listed | {"customer"}), methods=["GET"]),
            Route("/v1/payment_intents/{intent}", e(self.update_payment_intent), methods=["POST"]),
            Route("/v1/setup_intents", e(self._by_customer("setup_intent", "/v1/setup_intents"),
                                         allowed=listed | {"customer"}), methods=["GET"]),
            Route("/v1/invoices", e(self._by_customer("invoice", "/v1/invoices"), allowed=listed | {"customer"}),
                  methods=["GET"]),
            Route("/v1/credit_notes", e(self._by_customer("credit_note", "/v1/credit_notes"),
                                        allowed=listed | {"customer"}), methods=["GET"]),
            Route("/v1/quotes", e(self._by_customer("quote", "/v1/quotes"), allowed=listed | {"customer"}),
                  methods=["GET"]),
            Route("/v1/subscriptions", e(self.list_subscriptions, allowed=listed | {"customer", "status"}),
                  methods=["GET"]),
            Route("/v1/subscriptions", e(self.create_subscription), methods=["POST"]),
            Route("/v1/plans/{plan}", e(self.retrieve_plan), methods=["GET"]),
            Route("/v1/plans", e(self.create_plan), methods=["POST"]),
            Route("/v1/checkout/sessions", e(self.list_sessions, allowed=listed | {
                "customer", "customer_details", "payment_intent"}), methods=["GET"]),
        ]


def _refuse_unknown(params: Mapping[str, Any], known: set[str]) -> None:
    for name in params:
        if name not in known and name != "expand":
            raise StripeApiError(400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name)


def _unrecognised(request: Request) -> StripeApiError:
    return StripeApiError(404, f"Unrecognized request URL ({request.method}: {request.url.path}). Please see "
                               "https://stripe.com/docs or we can help at https://support.stripe.com/.")



class StripeSandboxApp(Starlette):
    """The Starlette app, with fault injection (Stripe-shaped injected errors) outermost, before auth."""

    def __init__(self, api: _StripeApi, faults: Faults) -> None:
        self.api = api
        self.faults = faults
        super().__init__(routes=api.routes())
        self.add_exception_handler(404, self._not_found)
        self.add_exception_handler(405, self._not_found)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return _unrecognised(request).response()

    def build_middleware_stack(self) -> ASGIApp:
        return DropConnections(FaultMiddleware(super().build_middleware_stack(), self.faults,
                                                error_body=stripe_error), b'{"object": ')


def stripe_app(state: StripeState, *, api_key: str = DEFAULT_API_KEY, search: bool = True,
               rate_limit: tuple[int, float] | None = None, faults: Faults | None = None) -> StripeSandboxApp:
    """A Stripe look-alike over ``state``. ``search=False``: no customer search (answered as an unknown URL);
    ``rate_limit`` (requests, per seconds), e.g. (25, 1.0) as Stripe's test mode; None: unlimited."""
    return StripeSandboxApp(_StripeApi(state, api_key, search, rate_limit), faults or Faults())


# --- a handle for synchronous callers (tests' fixtures, the demo) --------------------------------------


class StripeSandbox:
    """The sandbox served on 127.0.0.1 from a thread of its own: ``start()``, ``.url``, ``.state``, ``stop()``.

    A thread, not a subprocess, so tests and the demo seed and inspect ``state`` directly."""

    def __init__(self, *, api_key: str = DEFAULT_API_KEY, state: StripeState | None = None, search: bool = True,
                 search_delay: float = 0.0, rate_limit: tuple[int, float] | None = None,
                 faults: Faults | None = None) -> None:
        self.api_key = api_key
        self.state = state or StripeState(search_delay=search_delay)
        self.faults = faults or Faults()
        self.app = stripe_app(self.state, api_key=api_key, search=search, rate_limit=rate_limit,
                              faults=self.faults)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the Stripe sandbox is not started")
        return f"http://{HOST}:{self.port}"

    def start(self, port: int = 0, *, timeout: float = 30.0) -> StripeSandbox:
        from dsr.web.serve import serve_app

        if self._thread is not None:
            raise RuntimeError("the Stripe sandbox is already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                running = await serve_app(self.app, host=HOST, port=port)
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            self.port = running.port
            ready.set()
            await self._stop.wait()
            await running.stop()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(main())
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name="stripe-sandbox", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failure:
            self._thread = None
            if failure:
                raise failure[0]
            raise RuntimeError("the Stripe sandbox did not start in time")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        thread, self._thread = self._thread, None
        if thread is not None and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            thread.join(timeout)
        self.port = 0

    def __enter__(self) -> StripeSandbox:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- seeding over HTTP -----------------------------------------------------------------------------


async def _post(client: httpx.AsyncClient, path: str, data: Mapping[str, Any]) -> dict[str, Any]:
    response = await client.post(path, data=_form(data))
    if response.status_code >= 400:
        raise RuntimeError(f"seeding Stripe: POST /v1/{path.split('/')[2]} answered HTTP {response.status_code}")
    answer: dict[str, Any] = response.json()
    return answer


def _form(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Stripe's form encoding: ``address[city]=...``, ``items[0][plan]=...``."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(_form(value, name))
        elif isinstance(value, list | tuple):
            flat.update(_form({str(i): v for i, v in enumerate(value)}, name))
        elif value is not None:
            flat[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return flat


async def seed_customer(
    base_url: str,
    api_key: str,
    *,
    email: str,
    name: str,
    charges: int = 0,
    subscription: bool = False,
    phone: str | None = "+33612345678",
    address: Mapping[str, str] | None = None,
    card_number: str = "4242424242424242",
    amount: int = 1990,
    currency: str = "eur",
    concurrency: int = 8,
    timeout: float = 30.0,
) -> str:
    """Create one customer over Stripe's API the way a shop would, and return its id (``cus_...``).

    The customer gets ``address`` (and the same as shipping), a card payment method (billing details filled)
    set as default, ``charges`` one-off charges on it (created ``concurrency`` at a time; each carries the
    card's billing details and the customer's shipping), and with ``subscription`` a monthly subscription —
    which also creates and pays an invoice. Works against this sandbox and Stripe's test mode alike.
    """
    address = dict(address or SAMPLE_ADDRESS)
    limits = httpx.Limits(max_connections=max(1, concurrency))
    async with httpx.AsyncClient(base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"},
                                 timeout=timeout, limits=limits) as client:
        card = await _post(client, "/v1/payment_methods", {
            "type": "card",
            "card": {"number": card_number, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
            "billing_details": {"name": name, "email": email, "phone": phone, "address": address},
        })
        customer = await _post(client, "/v1/customers", {
            "email": email, "name": name, "phone": phone, "address": address,
            "shipping": {"name": name, "phone": phone, "address": address},
            "payment_method": card["id"],
            "invoice_settings": {"default_payment_method": card["id"]},
            "metadata": {"seeded_by": "dsr-sandbox"},
        })
        customer_id: str = customer["id"]
        gate = asyncio.Semaphore(max(1, concurrency))

        async def charge(i: int) -> None:
            async with gate:
                await _post(client, "/v1/charges", {
                    "customer": customer_id, "amount": amount + i % 100, "currency": currency,
                    "description": f"Order {i + 1}",
                })

        await asyncio.gather(*(charge(i) for i in range(charges)))

        if subscription:
            await _ensure_plan(client, amount, currency)
            await _post(client, "/v1/subscriptions", {"customer": customer_id, "items": [{"plan": PLAN_ID}]})
    return customer_id


async def _ensure_plan(client: httpx.AsyncClient, amount: int, currency: str) -> None:
    if (await client.get(f"/v1/plans/{PLAN_ID}")).status_code == 200:
        return
    with contextlib.suppress(RuntimeError):  # created concurrently by another seeding call: 400
        await _post(client, "/v1/plans", {
            "id": PLAN_ID, "amount": amount, "currency": currency, "interval": "month",
            "product": {"name": "DSR demo subscription"},
        })


def main(argv: list[str] | None = None) -> None:
    """``python -m sandbox.stripe``: an empty sandbox on 127.0.0.1 until interrupted (trying it by hand)."""
    parser = argparse.ArgumentParser(prog="python -m sandbox.stripe", description="the Stripe sandbox, on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8420, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--search-delay", type=float, default=0.0,
                        help="seconds before the customer search sees a change (Stripe: up to about a minute)")
    parser.add_argument("--no-search", action="store_true", help="answer customer search as an unknown URL")
    args = parser.parse_args(argv)
    sandbox = StripeSandbox(api_key=args.api_key, search=not args.no_search, search_delay=args.search_delay)
    sandbox.start(args.port)
    print(f"LISTENING {sandbox.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    sandbox.stop()


__all__ = ["DEFAULT_API_KEY", "PLAN_ID", "SAMPLE_ADDRESS", "StripeApiError", "StripeSandbox", "StripeSandboxApp",
           "StripeState", "parse_query", "seed_customer", "stripe_app"]

if __name__ == "__main__":
    main()
