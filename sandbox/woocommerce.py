"""A local WooCommerce REST API v3 (``/wp-json/wc/v3``) for tests and the demo.

It serves the endpoints the connector uses, the way a WordPress + WooCommerce site answers them:

* authentication as ``WC_REST_Authentication``: OAuth 1.0a one-legged (HMAC-SHA1 / HMAC-SHA256, the
  parameters in the query string or an ``Authorization: OAuth`` header, a 15-minute timestamp window,
  nonces remembered), and — only when the shop is served over HTTPS (``https=True``: WordPress's ``is_ssl()``)
  — HTTP Basic / ``consumer_key`` + ``consumer_secret`` query parameters; over plain HTTP those are not even
  looked at (the request is anonymous), as the docs' "Authentication over HTTP" and the plugin's code say;
* ``GET /customers`` (``email`` exact, ``search``, ``role``), ``GET|PUT|DELETE /customers/{id}``
  (``DELETE`` without ``force=true``: 501 ``woocommerce_rest_trash_not_supported``);
* ``GET /orders`` (``customer``, ``include``, ``search`` — a case-insensitive substring over the billing and shipping
  address index and item names, as ``wc_order_search`` —, ``status``, ``orderby``, ``order``),
  ``GET|PUT|DELETE /orders/{id}`` (``customer_ip_address`` / ``customer_user_agent`` are read-only),
  ``POST /orders/batch`` (``update`` and forced ``delete``, 100 items at most);
* WordPress pagination: ``per_page`` 1..100 (default 10), ``page``, ``X-WP-Total``, ``X-WP-TotalPages``,
  ``Link`` (``rel="prev"`` / ``rel="next"``), and ``_fields`` (dotted names for nested fields);
* the error bodies ``{"code", "message", "data": {"status"}}``; 429 with ``Retry-After`` above a
  configurable rate; :class:`~sandbox.faults.Faults` (5xx, delays, dropped connections) outermost.

State lives in :class:`WooState` (in memory): seed it, serve it with :func:`woocommerce_app`, inspect it.
Orders are indexed by customer so paging 10,000 orders of one customer is linear.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import itertools
import json
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sandbox.faults import FaultMiddleware, Faults

API_PREFIX = "/wp-json/wc/v3"

ADDRESS_FIELDS = ("first_name", "last_name", "company", "address_1", "address_2", "city", "state", "postcode",
                  "country")
BILLING_FIELDS = (*ADDRESS_FIELDS, "email", "phone")
SHIPPING_FIELDS = (*ADDRESS_FIELDS, "phone")

OAUTH_REQUIRED = ("oauth_consumer_key", "oauth_timestamp", "oauth_nonce", "oauth_signature", "oauth_signature_method")
OAUTH_WINDOW_SECONDS = 15 * 60  # WC_REST_Authentication::check_oauth_timestamp_and_nonce
BATCH_LIMIT = 100  # the woocommerce_rest_batch_items_limit default

ORDER_STATUSES = ("pending", "processing", "on-hold", "completed", "cancelled", "refunded", "failed", "trash")

_CATALOG = (  # (product_id, name, sku, unit price)
    (101, "Organic cotton T-shirt", "TSHIRT-ORG", "24.90"),
    (102, "Linen tote bag", "TOTE-LIN", "18.00"),
    (103, "Ceramic mug", "MUG-CER", "12.50"),
    (104, "Notebook A5, dotted", "NB-A5-DOT", "9.90"),
    (105, "Beeswax wraps (set of 3)", "WRAP-BEE-3", "15.00"),
    (106, "Stainless water bottle", "BOTTLE-SS", "29.00"),
)
_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def _blank_address(fields: Iterable[str]) -> dict[str, str]:
    return dict.fromkeys(fields, "")


def _merge_address(target: dict[str, str], given: Any, fields: Iterable[str]) -> None:
    if not isinstance(given, Mapping):
        return
    for key in fields:
        if key in given and given[key] is not None:
            target[key] = str(given[key])


def _stamp(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat()


class WooError(Exception):
    """An error answered with WooCommerce's body ``{"code", "message", "data": {"status"}}``."""

    def __init__(self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None,
                 **data: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.data = data

    def response(self) -> JSONResponse:
        body = {"code": self.code, "message": self.message, "data": {"status": self.status, **self.data}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class WooState:
    """The shop's customers and orders, in memory. Seed with ``add_*``/``bulk_orders``; inspect freely.

    Ids grow from 1 (customers) and 1001 (orders) like a fresh site; ``now`` is the shop's clock.
    """

    def __init__(self, *, now: Callable[[], datetime] | None = None, seed: int = 7) -> None:
        self._now = now or (lambda: datetime.now().replace(microsecond=0))
        self._random = random.Random(seed)
        self.customers: dict[int, dict[str, Any]] = {}
        self.orders: dict[int, dict[str, Any]] = {}  # insertion order == ascending id
        self._by_customer: dict[int, list[int]] = {}  # customer id (0: guests) -> order ids, ascending
        self._search_index: dict[int, str] = {}  # order id -> lower-cased address index + item names
        self._customer_ids = itertools.count(1)
        self._order_ids = itertools.count(1001)
        self._line_ids = itertools.count(1)
        self.version = 0  # bumped on every change: list caches key on it
        self._list_cache: dict[tuple[Any, ...], list[int]] = {}

    # --- seeding -------------------------------------------------------------------------------

    def add_customer(
        self,
        email: str,
        first_name: str = "",
        last_name: str = "",
        *,
        username: str | None = None,
        billing: Mapping[str, str] | None = None,
        shipping: Mapping[str, str] | None = None,
        role: str = "customer",
        date_created: datetime | None = None,
        meta_data: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A registered customer; ``billing`` defaults to the name and email (add an address with it)."""
        if self.customer_by_email(email) is not None:
            raise ValueError("a customer with this email already exists")
        customer_id = next(self._customer_ids)
        created = _stamp(date_created or self._now())
        bill = _blank_address(BILLING_FIELDS)
        bill.update(first_name=first_name, last_name=last_name, email=email)
        _merge_address(bill, billing or {}, BILLING_FIELDS)
        ship = _blank_address(SHIPPING_FIELDS)
        _merge_address(ship, shipping or {}, SHIPPING_FIELDS)
        customer = {
            "id": customer_id,
            "date_created": created,
            "date_created_gmt": created,
            "date_modified": created,
            "date_modified_gmt": created,
            "email": email,
            "first_name": first_name,
            "last_name": last_name,
            "role": role,
            "username": username or email.split("@")[0].lower(),
            "billing": bill,
            "shipping": ship,
            "is_paying_customer": False,
            "avatar_url": f"https://secure.gravatar.com/avatar/{hashlib.md5(email.strip().lower().encode(), usedforsecurity=False).hexdigest()}?s=96&d=mm&r=g",  # noqa: E501
            "meta_data": list(meta_data or []),
        }
        self.customers[customer_id] = customer
        self.version += 1
        return customer

    def add_order(
        self,
        *,
        customer_id: int = 0,
        billing: Mapping[str, str] | None = None,
        shipping: Mapping[str, str] | None = None,
        status: str = "completed",
        date_created: datetime | None = None,
        line_items: list[tuple[int, int]] | None = None,
        customer_note: str = "",
        customer_ip_address: str = "203.0.113.24",
        customer_user_agent: str = _USER_AGENT,
        currency: str = "EUR",
        transaction_id: str | None = None,
        payment_method: str = "stripe",
        meta_data: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """One order. With ``customer_id``, billing/shipping default to the customer's; guests use 0.

        ``line_items`` are ``(catalog index, quantity)`` pairs (default: one random product).
        """
        if customer_id and customer_id not in self.customers:
            raise ValueError(f"no customer {customer_id}")
        owner = self.customers.get(customer_id)
        bill = copy.copy(owner["billing"]) if owner else _blank_address(BILLING_FIELDS)
        _merge_address(bill, billing or {}, BILLING_FIELDS)
        ship = copy.copy(owner["shipping"]) if owner else _blank_address(SHIPPING_FIELDS)
        _merge_address(ship, shipping or {}, SHIPPING_FIELDS)
        order = self._build_order(
            customer_id=customer_id, billing=bill, shipping=ship, status=status,
            created=date_created or self._now(), items=line_items, note=customer_note,
            ip=customer_ip_address, agent=customer_user_agent, currency=currency,
            transaction_id=transaction_id, payment_method=payment_method, meta_data=meta_data,
        )
        self._insert_order(order)
        if owner is not None and status in ("processing", "completed"):
            owner["is_paying_customer"] = True
        return order

    def add_guest_order(self, email: str, first_name: str = "", last_name: str = "", **kwargs: Any) -> dict[str, Any]:
        """An order without an account (``customer_id`` 0), found only through its billing email."""
        billing = {"first_name": first_name, "last_name": last_name, "email": email, **kwargs.pop("billing", {})}
        return self.add_order(customer_id=0, billing=billing, **kwargs)

    def bulk_orders(self, customer_id: int, count: int, *, start: datetime | None = None,
                    every: timedelta = timedelta(hours=7)) -> list[int]:
        """``count`` completed orders of one registered customer, billed to the customer's billing address,
        dated ``every`` apart from ``start`` (default: ending now). Linear: 10,000 take about half a second."""
        owner = self.customers.get(customer_id)
        if owner is None:
            raise ValueError(f"no customer {customer_id}")
        first = start or (self._now() - every * count)
        ids = []
        for n in range(count):
            order = self._build_order(
                customer_id=customer_id, billing=dict(owner["billing"]), shipping=dict(owner["shipping"]),
                status="completed", created=first + every * n, items=None, note="",
                ip=f"198.51.100.{n % 250 + 1}", agent=_USER_AGENT, currency="EUR", transaction_id=None,
                payment_method="stripe", meta_data=None,
            )
            self._insert_order(order)
            ids.append(order["id"])
        owner["is_paying_customer"] = owner["is_paying_customer"] or count > 0
        return ids

    def _build_order(self, *, customer_id: int, billing: dict[str, str], shipping: dict[str, str], status: str,
                     created: datetime, items: list[tuple[int, int]] | None, note: str, ip: str, agent: str,
                     currency: str, transaction_id: str | None, payment_method: str,
                     meta_data: list[dict[str, Any]] | None) -> dict[str, Any]:
        if status not in ORDER_STATUSES:
            raise ValueError(f"unknown order status {status!r}")
        order_id = next(self._order_ids)
        rnd = self._random
        chosen = items or [(rnd.randrange(len(_CATALOG)), rnd.randint(1, 3))]
        line_items = []
        total_cents = 0
        for index, quantity in chosen:
            product_id, name, sku, price = _CATALOG[index % len(_CATALOG)]
            cents = round(float(price) * 100) * quantity
            total_cents += cents
            line_items.append({
                "id": next(self._line_ids), "name": name, "product_id": product_id, "variation_id": 0,
                "quantity": quantity, "tax_class": "", "subtotal": f"{cents / 100:.2f}", "subtotal_tax": "0.00",
                "total": f"{cents / 100:.2f}", "total_tax": "0.00", "taxes": [], "meta_data": [], "sku": sku,
                "price": float(price),
            })
        shipping_cents = 0 if total_cents >= 5000 else 490
        stamp = _stamp(created)
        paid = status in ("processing", "completed", "refunded")
        return {
            "id": order_id,
            "parent_id": 0,
            "number": str(order_id),
            "order_key": f"wc_order_{rnd.getrandbits(48):012x}",
            "created_via": "checkout",
            "version": "9.4.2",
            "status": status,
            "currency": currency,
            "date_created": stamp,
            "date_created_gmt": stamp,
            "date_modified": stamp,
            "date_modified_gmt": stamp,
            "discount_total": "0.00",
            "discount_tax": "0.00",
            "shipping_total": f"{shipping_cents / 100:.2f}",
            "shipping_tax": "0.00",
            "cart_tax": "0.00",
            "total": f"{(total_cents + shipping_cents) / 100:.2f}",
            "total_tax": "0.00",
            "prices_include_tax": True,
            "customer_id": customer_id,
            "customer_ip_address": ip,
            "customer_user_agent": agent,
            "customer_note": note,
            "billing": billing,
            "shipping": shipping,
            "payment_method": payment_method,
            "payment_method_title": "Credit card (Stripe)" if payment_method == "stripe" else payment_method,
            "transaction_id": transaction_id if transaction_id is not None else (
                f"ch_{rnd.getrandbits(96):024x}" if paid else ""),
            "date_paid": stamp if paid else None,
            "date_paid_gmt": stamp if paid else None,
            "date_completed": stamp if status == "completed" else None,
            "date_completed_gmt": stamp if status == "completed" else None,
            "cart_hash": f"{rnd.getrandbits(128):032x}",
            "meta_data": list(meta_data or []),
            "line_items": line_items,
            "tax_lines": [],
            "shipping_lines": [{"id": next(self._line_ids), "method_title": "Colissimo", "method_id": "flat_rate",
                                "total": f"{shipping_cents / 100:.2f}", "total_tax": "0.00", "taxes": [],
                                "meta_data": []}],
            "fee_lines": [],
            "coupon_lines": [],
            "refunds": [],
        }

    def _insert_order(self, order: dict[str, Any]) -> None:
        self.orders[order["id"]] = order
        self._by_customer.setdefault(order["customer_id"], []).append(order["id"])
        self._reindex(order)
        self.version += 1

    def _reindex(self, order: Mapping[str, Any]) -> None:
        parts = [*order["billing"].values(), *order["shipping"].values(), *(i["name"] for i in order["line_items"])]
        self._search_index[order["id"]] = " ".join(p for p in parts if p).lower()

    # --- inspection ----------------------------------------------------------------------------

    def customer_by_email(self, email: str) -> dict[str, Any] | None:
        """Exact match, as ``GET /customers?email=``."""
        return next((c for c in self.customers.values() if c["email"] == email), None)

    def orders_of(self, customer_id: int) -> list[dict[str, Any]]:
        return [self.orders[i] for i in self._by_customer.get(customer_id, ())]

    def orders_billed_to(self, email: str) -> list[dict[str, Any]]:
        """Orders whose billing email is ``email`` (case-insensitive), whoever placed them."""
        wanted = email.casefold()
        return [o for o in self.orders.values() if o["billing"]["email"].casefold() == wanted]

    def holdings(self, email: str) -> dict[str, int]:
        """Records held about an address (case-insensitive): ``{"customer": 0|1, "orders": n}``."""
        wanted = email.casefold()
        customer = next((c for c in self.customers.values() if c["email"].casefold() == wanted), None)
        ids = {o["id"] for o in self.orders_billed_to(email)}
        if customer is not None:
            ids.update(self._by_customer.get(customer["id"], ()))
        return {"customer": int(customer is not None), "orders": len(ids)}

    # --- changes (used by the API) -------------------------------------------------------------

    def delete_customer(self, customer_id: int) -> dict[str, Any]:
        """Delete the account; its orders stay with ``customer_id`` 0, as WooCommerce's
        ``wc_reset_order_customer_id_on_deleted_user`` does."""
        customer = self.customers.pop(customer_id)
        moved = self._by_customer.pop(customer_id, [])
        for order_id in moved:
            self.orders[order_id]["customer_id"] = 0
        if moved:
            guests = self._by_customer.setdefault(0, [])
            guests.extend(moved)
            guests.sort()
        self.version += 1
        return customer

    def delete_order(self, order_id: int) -> dict[str, Any]:
        order = self.orders.pop(order_id)
        self._by_customer[order["customer_id"]].remove(order_id)
        self._search_index.pop(order_id, None)
        self.version += 1
        return order

    def touch_order(self, order: dict[str, Any]) -> None:
        order["date_modified"] = order["date_modified_gmt"] = _stamp(self._now())
        self._reindex(order)
        self.version += 1

    def order_ids(self, *, customer: int | None, search: str, statuses: frozenset[str] | None,
                  orderby: str, descending: bool, include: frozenset[int] | None = None) -> list[int]:
        """The ids matching a listing, sorted; cached until the next change."""
        key = (customer, search, statuses, orderby, descending, include, self.version)
        cached = self._list_cache.get(key)
        if cached is not None:
            return cached
        ids: list[int] = list(self._by_customer.get(customer, ())) if customer is not None else list(self.orders)
        if include is not None:
            ids = [i for i in ids if i in include]
        if search:
            needle = search.lower()
            ids = [i for i in ids if needle in self._search_index[i]]
        if statuses is not None:
            ids = [i for i in ids if self.orders[i]["status"] in statuses]
        else:
            ids = [i for i in ids if self.orders[i]["status"] != "trash"]
        if orderby == "date":
            ids.sort(key=lambda i: (self.orders[i]["date_created_gmt"], i))
        elif orderby == "modified":
            ids.sort(key=lambda i: (self.orders[i]["date_modified_gmt"], i))
        else:  # id, include, title, slug: ids are ascending already
            ids.sort()
        if descending:
            ids.reverse()
        if len(self._list_cache) > 64:
            self._list_cache.clear()
        self._list_cache[key] = ids
        return ids


# --- the API ---------------------------------------------------------------------------------------


def _rfc3986(value: str) -> str:
    """PHP ``rawurlencode``: everything but unreserved characters percent-encoded."""
    return quote(value, safe="~")


def _parse_oauth_header(header: str) -> dict[str, str]:
    """``Authorization: OAuth k="v", ...`` as ``WC_REST_Authentication::parse_header``."""
    found: dict[str, str] = {}
    for key, value in re.findall(r'(\w+)\s*=\s*"([^"]*)"', header[len("OAuth "):]):
        found[key] = unquote(value)
    return found


class _RateLimit:
    def __init__(self, requests: int, per_seconds: float) -> None:
        self.requests, self.per_seconds = requests, per_seconds
        self._seen: deque[float] = deque()

    def retry_after(self) -> float | None:
        """None if the request may pass (and counts it), else the seconds until one may."""
        now = time.monotonic()
        while self._seen and now - self._seen[0] >= self.per_seconds:
            self._seen.popleft()
        if len(self._seen) >= self.requests:
            return self.per_seconds - (now - self._seen[0])
        self._seen.append(now)
        return None


class _Shop:
    """Request handling over one :class:`WooState`."""

    def __init__(self, state: WooState, consumer_key: str, consumer_secret: str, permissions: str,
                 rate_limit: tuple[int, float] | None, https: bool = False) -> None:
        self.state = state
        self.https = https
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.permissions = permissions  # read | write | read_write
        self.limit = _RateLimit(*rate_limit) if rate_limit else None
        self.nonces: dict[str, float] = {}  # nonce -> timestamp, for the one key
        self._nonce_order: deque[tuple[float, str]] = deque()  # (seen at, nonce), to forget old ones

    # --- authentication ----------------------------------------------------------------------

    async def authenticate(self, request: Request) -> bool:
        """True for a valid key, False when no credentials were sent; raises on invalid credentials."""
        header = request.headers.get("authorization", "")
        # WC_REST_Authentication::authenticate tries Basic (header or query parameters) only when is_ssl():
        # over plain HTTP the secret would travel in clear, so the plugin ignores it and expects OAuth 1.0a.
        if self.https and header[:6].lower() == "basic ":
            try:
                key, _, secret = base64.b64decode(header[6:].strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise WooError(401, "woocommerce_rest_authentication_error", "Consumer key is invalid.") from None
            return self._check_key_secret(key, secret)
        query = request.query_params
        if self.https and (query.get("consumer_key") or query.get("consumer_secret")):
            return self._check_key_secret(query.get("consumer_key", ""), query.get("consumer_secret", ""))
        params = await self._oauth_params(request)
        if params is None:
            return False
        if not hmac.compare_digest(params["oauth_consumer_key"], self.consumer_key):
            raise WooError(401, "woocommerce_rest_authentication_error", "Consumer key is invalid.")
        self._check_signature(request, params)
        self._check_timestamp_and_nonce(params["oauth_timestamp"], params["oauth_nonce"])
        return True

    def _check_key_secret(self, key: str, secret: str) -> bool:
        if not hmac.compare_digest(key.encode(), self.consumer_key.encode()):
            raise WooError(401, "woocommerce_rest_authentication_error", "Consumer key is invalid.")
        if not hmac.compare_digest(secret.encode(), self.consumer_secret.encode()):
            raise WooError(401, "woocommerce_rest_authentication_error", "Consumer secret is invalid.")
        return True

    async def _oauth_params(self, request: Request) -> dict[str, str] | None:
        params: dict[str, str] = dict(request.query_params)  # like PHP, a repeated key keeps its last value
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            params.update(dict(await request.form()))  # type: ignore[arg-type]
        header = request.headers.get("authorization", "").strip()
        if header[:6].lower() == "oauth ":
            params.update(_parse_oauth_header(header))
        missing = [name for name in OAUTH_REQUIRED if not params.get(name)]
        if len(missing) == len(OAUTH_REQUIRED):
            return None  # not even trying OAuth
        if missing:
            plural = "s" if len(missing) > 1 else ""
            raise WooError(401, "woocommerce_rest_authentication_missing_parameter",
                           f"Missing OAuth parameter{plural} {', '.join(missing)}")
        return params

    def _check_signature(self, request: Request, params: dict[str, str]) -> None:
        # WC_REST_Authentication::check_oauth_signature, step by step.
        base_uri = _rfc3986(f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
                            f"{request.url.path}")
        given = unquote(params["oauth_signature"].replace(" ", "+"))
        signed = {k: v for k, v in params.items() if k != "oauth_signature"}
        # uksort(strcmp) on the raw keys, then each key and value rawurlencoded, then each "k=v" again.
        pairs = [(_rfc3986(k), _rfc3986(v)) for k, v in sorted(signed.items(), key=lambda kv: kv[0].encode())]
        query = "%26".join(_rfc3986(f"{k}={v}") for k, v in pairs)
        to_sign = f"{request.method.upper()}&{base_uri}&{query}"
        method = params["oauth_signature_method"]
        if method not in ("HMAC-SHA1", "HMAC-SHA256"):
            raise WooError(401, "woocommerce_rest_authentication_error",
                           "Invalid signature - signature method is invalid.")
        digest = hashlib.sha1 if method == "HMAC-SHA1" else hashlib.sha256
        expected = base64.b64encode(
            hmac.new(f"{self.consumer_secret}&".encode(), to_sign.encode(), digest).digest()).decode()
        if not hmac.compare_digest(expected, given):
            raise WooError(401, "woocommerce_rest_authentication_error",
                           "Invalid signature - provided signature does not match.")

    def _check_timestamp_and_nonce(self, timestamp: str, nonce: str) -> None:
        now = time.time()
        try:
            stamp = int(timestamp)
        except ValueError:
            stamp = -1
        if abs(stamp - now) > OAUTH_WINDOW_SECONDS:
            raise WooError(401, "woocommerce_rest_authentication_error", "Invalid timestamp.")
        if nonce in self.nonces:
            raise WooError(401, "woocommerce_rest_authentication_error",
                           "Invalid nonce - nonce has already been used.")
        self.nonces[nonce] = stamp
        self._nonce_order.append((now, nonce))
        while self._nonce_order and now - self._nonce_order[0][0] > 2 * OAUTH_WINDOW_SECONDS:
            self.nonces.pop(self._nonce_order.popleft()[1], None)  # its timestamp fails the window anyway

    # --- dispatch ------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        try:
            if self.limit is not None:
                wait = self.limit.retry_after()
                if wait is not None:
                    raise WooError(429, "rate_limit_exceeded", "Too many requests. Please wait and try again.",
                                   headers={"Retry-After": str(max(1, math.ceil(wait)))})
            route = request.path_params["route"].strip("/")
            authenticated = await self.authenticate(request)
            return await self._route(request, route, authenticated)
        except WooError as err:
            return err.response()

    async def _route(self, request: Request, route: str, authenticated: bool) -> Response:
        method = request.method
        parts = route.split("/")
        write = method in ("POST", "PUT", "PATCH", "DELETE")
        resource = parts[0]
        single = len(parts) == 2 and parts[1].isdigit()
        batch = route == "orders/batch"
        known = (resource in ("customers", "orders") and (len(parts) == 1 or single)) or route == "system_status" \
            or batch
        allowed = {"GET"} if len(parts) == 1 else {"POST", "PUT", "PATCH"} if batch else \
            {"GET", "PUT", "PATCH", "POST", "DELETE"}
        if not known or method not in allowed:
            raise WooError(404, "rest_no_route", "No route was found matching the URL and request method.")
        if not authenticated:
            if method == "GET":
                what = "list resources" if len(parts) == 1 else "view this resource"
                raise WooError(401, "woocommerce_rest_cannot_view", f"Sorry, you cannot {what}.")
            if batch:
                raise WooError(401, "woocommerce_rest_cannot_batch",
                               "Sorry, you are not allowed to batch manipulate this resource.")
            verb = "delete" if method == "DELETE" else "edit"
            raise WooError(401, f"woocommerce_rest_cannot_{verb}",
                           f"Sorry, you are not allowed to {verb} this resource.")
        if write and self.permissions == "read":
            raise WooError(401, "woocommerce_rest_authentication_error",
                           "The API key provided does not have write permissions.")
        if not write and self.permissions == "write":
            raise WooError(401, "woocommerce_rest_authentication_error",
                           "The API key provided does not have read permissions.")
        if route == "system_status":
            return self._json(request, {"environment": {"version": "9.4.2", "wp_version": "6.6.2",
                                                        "site_url": str(request.base_url).rstrip("/")}})
        if resource == "customers":
            if not single:
                return self._list_customers(request)
            return await self._one_customer(request, int(parts[1]))
        if batch:
            return await self._batch_orders(request)
        if not single:
            return self._list_orders(request)
        return await self._one_order(request, int(parts[1]))

    # --- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _json(request: Request, body: Any, *, headers: Mapping[str, str] | None = None) -> Response:
        fields = request.query_params.get("_fields")
        if fields:
            wanted = [f.strip() for f in fields.split(",") if f.strip()]
            body = [_select(item, wanted) for item in body] if isinstance(body, list) else _select(body, wanted)
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        return Response(payload, media_type="application/json; charset=UTF-8", headers=dict(headers or {}))

    @staticmethod
    def _int_param(request: Request, name: str, default: int, low: int, high: int | None = None) -> int:
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise WooError(400, "rest_invalid_param", f"Invalid parameter(s): {name}",
                           params={name: f"{name} is not of type integer."}) from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} (inclusive) and {high} (inclusive)" if high is not None else \
                f"greater than or equal to {low}"
            raise WooError(400, "rest_invalid_param", f"Invalid parameter(s): {name}",
                           params={name: f"{name} must be {bound}"})
        return value

    def _page(self, request: Request, items: list[Any], render: Callable[[Any], Any]) -> Response:
        per_page = self._int_param(request, "per_page", 10, 1, 100)
        page = self._int_param(request, "page", 1, 1)
        total = len(items)
        pages = math.ceil(total / per_page) if total else 0
        chunk = items[(page - 1) * per_page: page * per_page]
        links = []
        query = [(k, v) for k, v in request.query_params.multi_items()
                 if k != "page" and not k.startswith("oauth_") and k not in ("consumer_key", "consumer_secret")]
        base = str(request.url.replace(query=""))
        if page > 1:
            prev = min(page - 1, pages) if pages else 1
            links.append(f'<{base}?{urlencode([*query, ("page", prev)])}>; rel="prev"')
        if page < pages:
            links.append(f'<{base}?{urlencode([*query, ("page", page + 1)])}>; rel="next"')
        headers = {"X-WP-Total": str(total), "X-WP-TotalPages": str(pages)}
        if links:
            headers["Link"] = ", ".join(links)
        return self._json(request, [render(item) for item in chunk], headers=headers)

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw:
            return {}
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return dict(await request.form())
        try:
            body = json.loads(raw)
        except ValueError:
            raise WooError(400, "rest_invalid_json", "Invalid JSON body passed.") from None
        if not isinstance(body, dict):
            raise WooError(400, "rest_invalid_json", "Invalid JSON body passed.")
        return body

    @staticmethod
    def _links(request: Request, kind: str, item_id: int) -> dict[str, Any]:
        root = f"{str(request.base_url).rstrip('/')}{API_PREFIX}/{kind}"
        return {"self": [{"href": f"{root}/{item_id}"}], "collection": [{"href": root}]}

    @staticmethod
    def _force(request: Request) -> bool:
        return request.query_params.get("force", "").lower() in ("true", "1", "yes")

    # --- customers -----------------------------------------------------------------------------

    def _render_customer(self, request: Request, customer: Mapping[str, Any]) -> dict[str, Any]:
        # Shallow: the answer is serialised at once, before anything can change the state.
        return {**customer, "_links": self._links(request, "customers", customer["id"])}

    def _list_customers(self, request: Request) -> Response:
        query = request.query_params
        found = list(self.state.customers.values())
        role = query.get("role", "customer")
        if role != "all":
            found = [c for c in found if c["role"] == role]
        if "email" in query:  # WP_User_Query on user_email: exact
            found = [c for c in found if c["email"] == query["email"]]
        if query.get("search"):
            needle = query["search"].strip("*").lower()
            found = [c for c in found if any(needle in str(c[k]).lower()
                                             for k in ("email", "username", "first_name", "last_name"))]
        reverse = query.get("order", "asc") == "desc"
        if query.get("orderby") in ("name",):
            found.sort(key=lambda c: (c["first_name"], c["last_name"], c["id"]), reverse=reverse)
        elif query.get("orderby") in ("registered_date",):
            found.sort(key=lambda c: (c["date_created_gmt"], c["id"]), reverse=reverse)
        else:
            found.sort(key=lambda c: c["id"], reverse=reverse)
        return self._page(request, found, lambda c: self._render_customer(request, c))

    async def _one_customer(self, request: Request, customer_id: int) -> Response:
        customer = self.state.customers.get(customer_id)
        if customer is None:
            raise WooError(404, "woocommerce_rest_invalid_id", "Invalid resource ID.")
        if request.method == "GET":
            return self._json(request, self._render_customer(request, customer))
        if request.method == "DELETE":
            if not self._force(request):
                raise WooError(501, "woocommerce_rest_trash_not_supported", "Customers do not support trashing.")
            return self._json(request, self._render_customer(request, self.state.delete_customer(customer_id)))
        body = await self._body(request)
        if "username" in body and body["username"] != customer["username"]:
            raise WooError(400, "woocommerce_rest_customer_invalid_argument", "Username isn't editable.")
        if "email" in body:
            email = str(body["email"])
            if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
                raise WooError(400, "woocommerce_rest_customer_invalid_email", "Invalid email address.")
            other = self.state.customer_by_email(email)
            if other is not None and other["id"] != customer_id:
                raise WooError(400, "registration-error-email-exists",
                               "An account is already registered with your email address.")
            customer["email"] = email
        for key in ("first_name", "last_name"):
            if key in body:
                customer[key] = str(body[key])
        _merge_address(customer["billing"], body.get("billing"), BILLING_FIELDS)
        _merge_address(customer["shipping"], body.get("shipping"), SHIPPING_FIELDS)
        if isinstance(body.get("meta_data"), list):
            _update_meta(customer["meta_data"], body["meta_data"])
        customer["date_modified"] = customer["date_modified_gmt"] = _stamp(self.state._now())
        self.state.version += 1
        return self._json(request, self._render_customer(request, customer))

    # --- orders --------------------------------------------------------------------------------

    def _render_order(self, request: Request, order: Mapping[str, Any]) -> dict[str, Any]:
        return {**order, "_links": self._links(request, "orders", order["id"])}

    def _list_orders(self, request: Request) -> Response:
        query = request.query_params
        customer = self._int_param(request, "customer", -1, 0) if "customer" in query else None
        status = query.get("status", "any")
        statuses = None if status == "any" else frozenset(s.strip() for s in status.split(","))
        orderby = query.get("orderby", "date")
        order = query.get("order", "desc")
        if orderby not in ("date", "id", "include", "title", "slug", "modified"):
            raise WooError(400, "rest_invalid_param", "Invalid parameter(s): orderby",
                           params={"orderby": "orderby is not one of date, id, include, title, slug, and modified."})
        if order not in ("asc", "desc"):
            raise WooError(400, "rest_invalid_param", "Invalid parameter(s): order",
                           params={"order": "order is not one of asc and desc."})
        ids = self.state.order_ids(customer=customer, search=query.get("search", ""), statuses=statuses,
                                   orderby=orderby, descending=order == "desc", include=self._ids_param(request))
        orders = self.state.orders
        return self._page(request, ids, lambda i: self._render_order(request, orders[i]))

    @staticmethod
    def _ids_param(request: Request, name: str = "include") -> frozenset[int] | None:
        """An array of ids as WordPress reads one: ``include=1,2``, or ``include[]=1&include[]=2``."""
        raw = [*request.query_params.getlist(name), *request.query_params.getlist(f"{name}[]")]
        if not raw:
            return None
        try:
            return frozenset(int(part) for value in raw for part in value.split(",") if part.strip())
        except ValueError:
            raise WooError(400, "rest_invalid_param", f"Invalid parameter(s): {name}",
                           params={name: f"{name}[0] is not of type integer."}) from None

    async def _one_order(self, request: Request, order_id: int) -> Response:
        order = self.state.orders.get(order_id)
        if order is None:
            raise WooError(404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
        if request.method == "GET":
            return self._json(request, self._render_order(request, order))
        if request.method == "DELETE":
            if not self._force(request):
                order["status"] = "trash"
                self.state.touch_order(order)
                return self._json(request, self._render_order(request, order))
            return self._json(request, self._render_order(request, self.state.delete_order(order_id)))
        self._update_order(order, await self._body(request))
        return self._json(request, self._render_order(request, order))

    def _update_order(self, order: dict[str, Any], body: Mapping[str, Any]) -> None:
        billing = body.get("billing")
        if isinstance(billing, Mapping) and billing.get("email") and not re.fullmatch(
                r"[^@\s]+@[^@\s]+\.[^@\s]+", str(billing["email"])):
            raise WooError(400, "rest_invalid_param", "Invalid parameter(s): billing",
                           params={"billing": "Invalid email address."})
        if "status" in body and body["status"] not in ORDER_STATUSES:
            raise WooError(400, "rest_invalid_param", "Invalid parameter(s): status",
                           params={"status": "status is not one of " + ", ".join(ORDER_STATUSES) + "."})
        _merge_address(order["billing"], billing, BILLING_FIELDS)
        _merge_address(order["shipping"], body.get("shipping"), SHIPPING_FIELDS)
        for key in ("customer_note", "transaction_id", "payment_method", "payment_method_title", "currency",
                    "status"):
            if key in body and body[key] is not None:
                order[key] = str(body[key])
        if isinstance(body.get("meta_data"), list):
            _update_meta(order["meta_data"], body["meta_data"])
        # customer_ip_address, customer_user_agent, totals, dates, number...: read-only, ignored.
        self.state.touch_order(order)

    async def _batch_orders(self, request: Request) -> Response:
        """``POST /orders/batch``: ``create`` / ``update`` / ``delete`` (forced), 100 items at most."""
        body = await self._body(request)
        groups = {k: body.get(k) or [] for k in ("create", "update", "delete")}
        if any(not isinstance(v, list) for v in groups.values()):
            raise WooError(400, "rest_invalid_param", "Invalid parameter(s): update")
        if sum(len(v) for v in groups.values()) > BATCH_LIMIT:
            raise WooError(413, "woocommerce_rest_request_entity_too_large",
                           f"Unable to accept more than {BATCH_LIMIT} items for this request.")
        answer: dict[str, list[Any]] = {}

        def failed(item_id: Any, err: WooError) -> dict[str, Any]:
            return {"id": item_id, "error": {"code": err.code, "message": err.message,
                                             "data": {"status": err.status, **err.data}}}

        if groups["create"]:
            answer["create"] = [failed(0, WooError(400, "woocommerce_rest_cannot_create",
                                                   "The sandbox does not create orders over the API."))
                                for _ in groups["create"]]
        if groups["update"]:
            answer["update"] = []
            for item in groups["update"]:
                item_id = item.get("id") if isinstance(item, Mapping) else None
                order = self.state.orders.get(item_id) if isinstance(item_id, int) else None
                if order is None:
                    answer["update"].append(failed(item_id, WooError(
                        400, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")))
                    continue
                try:
                    self._update_order(order, item)
                except WooError as err:
                    answer["update"].append(failed(item_id, err))
                    continue
                answer["update"].append(self._render_order(request, order))
        if groups["delete"]:
            answer["delete"] = []
            for item_id in groups["delete"]:
                if not isinstance(item_id, int) or item_id not in self.state.orders:
                    answer["delete"].append(failed(item_id, WooError(
                        400, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")))
                    continue
                answer["delete"].append(self._render_order(request, self.state.delete_order(item_id)))
        return self._json(request, answer)


def _select(item: Any, fields: list[str]) -> Any:
    """WordPress ``_fields``: keep the named fields, ``a.b`` for nested ones."""
    if not isinstance(item, Mapping):
        return item
    out: dict[str, Any] = {}
    for name in fields:
        head, _, rest = name.partition(".")
        if head not in item:
            continue
        if rest and isinstance(item[head], Mapping):
            inner = out.setdefault(head, {})
            if isinstance(inner, dict):
                inner.update(_select(item[head], [rest]))
        else:
            out[head] = item[head]
    return out


class _DropConnections:
    """Drops ``faults.drop_next`` connections for real under uvicorn.

    An ASGI app that raises before answering gets a 500 from uvicorn, not a closed socket; one that starts
    an answer and abandons it makes uvicorn close the connection, which the client sees as a transport
    error (peer closed the connection before the announced body arrived).
    """

    def __init__(self, app: ASGIApp, faults: Faults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.faults.drop_next <= 0:
            await self.app(scope, receive, send)
            return
        self.faults.drop_next -= 1
        if self.faults.delay_seconds:
            await asyncio.sleep(self.faults.delay_seconds)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")]})


class _SandboxApp(Starlette):
    """Starlette with the fault middleware outermost (outside Starlette's own error handling)."""

    faults: Faults | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if self.faults is None:
            return stack
        return _DropConnections(FaultMiddleware(stack, self.faults), self.faults)


def woocommerce_app(
    state: WooState,
    *,
    consumer_key: str,
    consumer_secret: str,
    rate_limit: tuple[int, float] | None = None,
    faults: Faults | None = None,
    permissions: str = "read_write",
    https: bool = False,
) -> Starlette:
    """A WooCommerce REST API v3 over ``state``; ``rate_limit=(requests, per_seconds)`` answers 429 above it.

    ``https``: the site is served over TLS (a TLS-terminating proxy in front of it sets WordPress's ``HTTPS``
    flag), so HTTP Basic and the ``consumer_key`` query parameters are accepted; otherwise only OAuth 1.0a.

    ``permissions`` is the key's (``read``, ``write`` or ``read_write``), as in WooCommerce > Settings >
    Advanced > REST API. The shop itself is ``app.state.shop`` (its nonces, its limiter).
    """
    if permissions not in ("read", "write", "read_write"):
        raise ValueError("permissions is one of read, write, read_write")
    shop = _Shop(state, consumer_key, consumer_secret, permissions, rate_limit, https)
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]

    async def not_found(request: Request) -> Response:
        return WooError(404, "rest_no_route", "No route was found matching the URL and request method.").response()

    app = _SandboxApp(routes=[
        Route(API_PREFIX + "/{route:path}", shop.handle, methods=methods),
        Route("/{route:path}", not_found, methods=methods),
    ])
    app.faults = faults
    app.state.shop = shop
    app.state.woo = state
    return app


__all__ = ["API_PREFIX", "BILLING_FIELDS", "SHIPPING_FIELDS", "WooError", "WooState", "woocommerce_app"]


def _update_meta(current: list[dict[str, Any]], updates: list[Any]) -> None:
    """WooCommerce's ``update_meta_data``: an entry with an ``id`` updates that meta, one with a ``key`` updates
    the first meta of that key or adds one; meta not named stays (an update never drops other plugins' meta)."""
    for update in updates:
        if not isinstance(update, Mapping) or "key" not in update:
            continue
        by_id = next((m for m in current if "id" in update and m.get("id") == update["id"]), None)
        match = by_id or next((m for m in current if m.get("key") == update["key"]), None)
        if match is not None:
            match["key"], match["value"] = str(update["key"]), update.get("value")
        else:
            current.append({"id": max((int(m.get("id", 0)) for m in current), default=0) + 1,
                            "key": str(update["key"]), "value": update.get("value")})
