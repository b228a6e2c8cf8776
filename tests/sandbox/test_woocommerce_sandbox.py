"""The WooCommerce sandbox behaves like the real REST API v3: auth, pagination, error bodies, limits."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from connectors.woocommerce import oauth_signature
from dsr.web.serve import RunningServer, serve_app
from sandbox.faults import Faults
from sandbox.woocommerce import WooState, woocommerce_app
from tests.harness import http_client

KEY = "ck_" + "1" * 40
SECRET = "cs_" + "2" * 40


@dataclass
class Sandbox:
    state: WooState
    faults: Faults
    server: RunningServer
    client: httpx.AsyncClient

    @property
    def api(self) -> str:
        return f"{self.server.url}/wp-json/wc/v3"

    def oauth(self, method: str, path: str, params: dict[str, Any] | None = None, *, nonce: str = "n-1",
              timestamp: int | None = None, secret: str = SECRET, signature_method: str = "HMAC-SHA1",
              ) -> dict[str, str]:
        query = {k: str(v) for k, v in (params or {}).items()}
        query.update(oauth_consumer_key=KEY, oauth_nonce=nonce, oauth_signature_method=signature_method,
                     oauth_timestamp=str(timestamp if timestamp is not None else int(time.time())))
        query["oauth_signature"] = oauth_signature(method, self.api + path, query, secret, signature_method)
        return query

    async def get(self, path: str, params: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        return await self.client.get(self.api + path, params=params, auth=(KEY, SECRET), **kwargs)


async def start(rate_limit: tuple[int, float] | None = None, permissions: str = "read_write",
                https: bool = True) -> Sandbox:
    """The shop as served behind TLS (so this module's helpers may use Basic), unless ``https=False``."""
    state = WooState()
    faults = Faults()
    app = woocommerce_app(state, consumer_key=KEY, consumer_secret=SECRET, rate_limit=rate_limit, faults=faults,
                          permissions=permissions, https=https)
    server = await serve_app(app, port=0)
    return Sandbox(state, faults, server, http_client(timeout=10))


@pytest.fixture
async def shop() -> AsyncIterator[Sandbox]:
    sandbox = await start()
    try:
        yield sandbox
    finally:
        await sandbox.client.aclose()
        await sandbox.server.stop()


def error(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert body["data"]["status"] == response.status_code and body["message"]
    return response.status_code, body["code"]


# --- authentication -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["HMAC-SHA1", "HMAC-SHA256"])
async def test_a_signed_oauth_request_is_accepted(shop: Sandbox, method: str) -> None:
    shop.state.add_customer("ana@example.org", "Ana", "Lopes")
    params = shop.oauth("GET", "/customers", {"email": "ana@example.org"}, signature_method=method)
    response = await shop.client.get(shop.api + "/customers", params=params)
    assert response.status_code == 200 and [c["email"] for c in response.json()] == ["ana@example.org"]


async def test_oauth_parameters_in_the_authorization_header_are_accepted(shop: Sandbox) -> None:
    signed = shop.oauth("GET", "/orders", {"per_page": 5})
    header = "OAuth " + ", ".join(f'{k}="{quote(v, safe="")}"' for k, v in signed.items() if k.startswith("oauth_"))
    response = await shop.client.get(shop.api + "/orders", params={"per_page": 5}, headers={"Authorization": header})
    assert response.status_code == 200, response.text


async def test_a_tampered_request_is_rejected(shop: Sandbox) -> None:
    params = shop.oauth("GET", "/customers", {"email": "ana@example.org"})
    params["email"] = "someone.else@example.org"  # changed after signing
    response = await shop.client.get(shop.api + "/customers", params=params)
    assert error(response) == (401, "woocommerce_rest_authentication_error")
    assert response.json()["message"] == "Invalid signature - provided signature does not match."
    signed_get = shop.oauth("GET", "/customers", nonce="n-2")
    response = await shop.client.delete(shop.api + "/customers", params=signed_get)  # another method
    assert error(response) == (401, "woocommerce_rest_authentication_error")


async def test_a_reused_nonce_is_rejected(shop: Sandbox) -> None:
    assert (await shop.client.get(shop.api + "/orders", params=shop.oauth("GET", "/orders", nonce="once"))
            ).status_code == 200
    replay = await shop.client.get(shop.api + "/orders", params=shop.oauth("GET", "/orders", nonce="once"))
    assert error(replay) == (401, "woocommerce_rest_authentication_error")
    assert replay.json()["message"] == "Invalid nonce - nonce has already been used."


async def test_a_stale_timestamp_is_rejected(shop: Sandbox) -> None:
    params = shop.oauth("GET", "/orders", timestamp=int(time.time()) - 16 * 60)
    response = await shop.client.get(shop.api + "/orders", params=params)
    assert error(response) == (401, "woocommerce_rest_authentication_error")
    assert response.json()["message"] == "Invalid timestamp."


async def test_wrong_secret_wrong_key_and_missing_parameters(shop: Sandbox) -> None:
    wrong_secret = await shop.client.get(shop.api + "/orders", params=shop.oauth("GET", "/orders", secret="cs_x"))
    assert error(wrong_secret) == (401, "woocommerce_rest_authentication_error")
    params = shop.oauth("GET", "/orders", nonce="n-3") | {"oauth_consumer_key": "ck_unknown"}
    wrong_key = await shop.client.get(shop.api + "/orders", params=params)
    assert wrong_key.json()["message"] == "Consumer key is invalid."
    partial = await shop.client.get(shop.api + "/orders", params={"oauth_consumer_key": KEY})
    assert error(partial) == (401, "woocommerce_rest_authentication_missing_parameter")


async def test_basic_auth_and_anonymous_requests(shop: Sandbox) -> None:
    assert (await shop.get("/customers")).status_code == 200
    bad = await shop.client.get(shop.api + "/customers", auth=(KEY, "cs_nope"))
    assert error(bad) == (401, "woocommerce_rest_authentication_error")
    assert bad.json()["message"] == "Consumer secret is invalid."
    anonymous = await shop.client.get(shop.api + "/customers")
    assert error(anonymous) == (401, "woocommerce_rest_cannot_view")
    anonymous_delete = await shop.client.delete(shop.api + "/customers/1", params={"force": "true"})
    assert error(anonymous_delete) == (401, "woocommerce_rest_cannot_delete")


async def test_over_plain_http_only_oauth_authenticates() -> None:
    shop = await start(https=False)
    try:
        shop.state.add_customer("ana@example.org")
        # The right key and secret, in a Basic header or in the query, are not even read over plain HTTP: the
        # request is anonymous (WC_REST_Authentication only tries Basic when is_ssl()).
        basic = await shop.client.get(shop.api + "/customers", auth=(KEY, SECRET))
        assert error(basic) == (401, "woocommerce_rest_cannot_view")
        query = await shop.client.get(shop.api + "/customers", params={"consumer_key": KEY, "consumer_secret": SECRET})
        assert error(query) == (401, "woocommerce_rest_cannot_view")
        signed = await shop.client.get(shop.api + "/customers", params=shop.oauth("GET", "/customers"))
        assert signed.status_code == 200 and [c["email"] for c in signed.json()] == ["ana@example.org"]
    finally:
        await shop.client.aclose()
        await shop.server.stop()


async def test_a_read_only_key_cannot_write() -> None:
    shop = await start(permissions="read")
    try:
        customer = shop.state.add_customer("ana@example.org")
        assert (await shop.get(f"/customers/{customer['id']}")).status_code == 200
        response = await shop.client.put(shop.api + f"/customers/{customer['id']}", json={"first_name": "A"},
                                         auth=(KEY, SECRET))
        assert error(response) == (401, "woocommerce_rest_authentication_error")
    finally:
        await shop.client.aclose()
        await shop.server.stop()


# --- pagination ------------------------------------------------------------------------------------


async def test_pagination_headers_and_links(shop: Sandbox) -> None:
    customer = shop.state.add_customer("ana@example.org")
    shop.state.bulk_orders(customer["id"], 25)
    default = await shop.get("/orders", {"customer": customer["id"]})
    assert len(default.json()) == 10  # per_page defaults to 10
    assert default.headers["X-WP-Total"] == "25" and default.headers["X-WP-TotalPages"] == "3"
    assert 'rel="next"' in default.headers["Link"] and 'rel="prev"' not in default.headers["Link"]
    middle = await shop.get("/orders", {"customer": customer["id"], "page": 2})
    links = {rel: url for url, rel in (part.split("; ") for part in middle.headers["Link"].split(", "))}
    assert links['rel="prev"'].endswith("page=1>") and links['rel="next"'].endswith("page=3>")
    assert f"customer={customer['id']}" in links['rel="next"']
    last = await shop.get("/orders", {"customer": customer["id"], "page": 3})
    assert len(last.json()) == 5 and 'rel="next"' not in last.headers["Link"]
    beyond = await shop.get("/orders", {"customer": customer["id"], "page": 4})
    assert beyond.json() == [] and beyond.headers["X-WP-TotalPages"] == "3"
    # default order: newest first; orderby=id&order=asc as the connector asks
    newest = [o["id"] for o in default.json()]
    assert newest == sorted(newest, reverse=True)
    ascending = await shop.get("/orders", {"customer": customer["id"], "orderby": "id", "order": "asc"})
    assert [o["id"] for o in ascending.json()] == sorted(o["id"] for o in shop.state.orders_of(customer["id"]))[:10]


@pytest.mark.parametrize("per_page", ["101", "0", "ten"])
async def test_per_page_out_of_range_is_rejected(shop: Sandbox, per_page: str) -> None:
    response = await shop.get("/orders", {"per_page": per_page})
    assert error(response) == (400, "rest_invalid_param")
    assert "per_page" in response.json()["data"]["params"]


@pytest.mark.slow
async def test_paging_ten_thousand_orders_sees_each_once(shop: Sandbox) -> None:
    # How fast is bench/export_heavy.py's question (timed assertions fail on a loaded machine, not on a bug).
    customer = shop.state.add_customer("heavy@example.org")
    shop.state.bulk_orders(customer["id"], 10_000)
    seen = 0
    for page in range(1, 101):
        response = await shop.get("/orders", {"customer": customer["id"], "per_page": 100, "page": page,
                                              "orderby": "id", "order": "asc"})
        seen += len(response.json())
    assert seen == 10_000 and response.headers["X-WP-TotalPages"] == "100"


async def test_fields_selects_nested_fields(shop: Sandbox) -> None:
    shop.state.add_guest_order("guest@example.org", "Gus", "Guest")
    [order] = (await shop.get("/orders", {"_fields": "id,billing.email"})).json()
    assert set(order) == {"id", "billing"} and order["billing"] == {"email": "guest@example.org"}


# --- customers and orders --------------------------------------------------------------------------


async def test_customer_email_filter_is_exact_and_search_is_a_substring(shop: Sandbox) -> None:
    shop.state.add_customer("Ana.Lopes@Example.org", "Ana", "Lopes")
    assert (await shop.get("/customers", {"email": "ana.lopes@example.org"})).json() == []
    assert len((await shop.get("/customers", {"email": "Ana.Lopes@Example.org"})).json()) == 1
    assert len((await shop.get("/customers", {"search": "ana.lopes@example"})).json()) == 1


async def test_order_search_is_a_substring_over_the_address_index(shop: Sandbox) -> None:
    shop.state.add_guest_order("ana@example.org", "Ana", "Lopes", billing={"city": "Brest", "phone": "0612"})
    shop.state.add_guest_order("diana@example.org", "Diana", "Prince")
    assert len((await shop.get("/orders", {"search": "ANA@example.org"})).json()) == 2
    assert len((await shop.get("/orders", {"search": "brest"})).json()) == 1
    assert len((await shop.get("/orders", {"search": "0612"})).json()) == 1
    assert len((await shop.get("/orders", {"customer": 0, "search": "diana"})).json()) == 1


async def test_deleting_a_customer_needs_force_and_keeps_orders_as_guest_orders(shop: Sandbox) -> None:
    customer = shop.state.add_customer("ana@example.org")
    order = shop.state.add_order(customer_id=customer["id"])
    url = f"{shop.api}/customers/{customer['id']}"
    trash = await shop.client.delete(url, auth=(KEY, SECRET))
    assert error(trash) == (501, "woocommerce_rest_trash_not_supported")
    deleted = await shop.client.delete(url, params={"force": "true"}, auth=(KEY, SECRET))
    assert deleted.status_code == 200 and deleted.json()["id"] == customer["id"]
    gone = await shop.client.delete(url, params={"force": "true"}, auth=(KEY, SECRET))
    assert error(gone) == (404, "woocommerce_rest_invalid_id")
    assert error(await shop.get(f"/customers/{customer['id']}")) == (404, "woocommerce_rest_invalid_id")
    assert shop.state.orders[order["id"]]["customer_id"] == 0


async def test_updating_an_order_cannot_clear_ip_address_or_user_agent(shop: Sandbox) -> None:
    order = shop.state.add_guest_order("ana@example.org", "Ana", "Lopes", customer_note="Ring twice")
    body = {"billing": {"first_name": "", "email": ""}, "customer_note": "",
            "customer_ip_address": "", "customer_user_agent": ""}
    response = await shop.client.put(f"{shop.api}/orders/{order['id']}", json=body, auth=(KEY, SECRET))
    assert response.status_code == 200
    stored = shop.state.orders[order["id"]]
    assert stored["billing"]["first_name"] == stored["billing"]["email"] == stored["customer_note"] == ""
    assert stored["billing"]["last_name"] == "Lopes"  # only the given fields change
    assert stored["customer_ip_address"] and stored["customer_user_agent"]
    assert error(await shop.get("/orders/999999")) == (404, "woocommerce_rest_shop_order_invalid_id")


async def test_customer_update_merges_addresses_and_guards_the_email(shop: Sandbox) -> None:
    ana = shop.state.add_customer("ana@example.org", "Ana", "Lopes", billing={"city": "Brest"})
    shop.state.add_customer("bob@example.org")
    url = f"{shop.api}/customers/{ana['id']}"
    updated = await shop.client.put(url, json={"billing": {"postcode": "29200"}}, auth=(KEY, SECRET))
    assert updated.json()["billing"]["city"] == "Brest" and updated.json()["billing"]["postcode"] == "29200"
    taken = await shop.client.put(url, json={"email": "bob@example.org"}, auth=(KEY, SECRET))
    assert error(taken) == (400, "registration-error-email-exists")


async def test_unknown_routes_and_invalid_json(shop: Sandbox) -> None:
    assert error(await shop.get("/products")) == (404, "rest_no_route")
    assert error(await shop.client.get(f"{shop.server.url}/wp-json/wp/v2/users")) == (404, "rest_no_route")
    customer = shop.state.add_customer("ana@example.org")
    bad = await shop.client.put(f"{shop.api}/customers/{customer['id']}", content=b"{nope",
                                headers={"content-type": "application/json"}, auth=(KEY, SECRET))
    assert error(bad) == (400, "rest_invalid_json")


# --- limits and faults -----------------------------------------------------------------------------


async def test_rate_limit_answers_429_with_retry_after() -> None:
    shop = await start(rate_limit=(3, 2.0))
    try:
        statuses = [(await shop.get("/orders")).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = await shop.get("/orders")
        assert error(limited) == (429, "rate_limit_exceeded") and 1 <= int(limited.headers["Retry-After"]) <= 2
    finally:
        await shop.client.aclose()
        await shop.server.stop()


async def test_faults_inject_statuses_and_drop_connections(shop: Sandbox) -> None:
    shop.faults.statuses.append(503)
    shop.faults.retry_after = "3"
    injected = await shop.get("/orders")
    assert injected.status_code == 503 and injected.headers["Retry-After"] == "3"
    shop.faults.drop_next = 1
    with pytest.raises(httpx.TransportError):
        await shop.get("/orders")
    assert (await shop.get("/orders")).status_code == 200


def test_holdings_summarise_a_person_for_the_demo() -> None:
    state = WooState()
    ana = state.add_customer("ana@example.org")
    state.bulk_orders(ana["id"], 3)
    state.add_guest_order("ANA@example.org")
    state.add_guest_order("guest@example.org")
    assert state.holdings("Ana@Example.org") == {"customer": 1, "orders": 4}
    assert state.holdings("guest@example.org") == {"customer": 0, "orders": 1}
    with pytest.raises(ValueError, match="already exists"):
        state.add_customer("ana@example.org")


async def test_batch_updates_orders_and_reports_unknown_ids_per_item(shop: Sandbox) -> None:
    order = shop.state.add_guest_order("ana@example.org", "Ana", "Lopes")
    body = {"update": [{"id": order["id"], "billing": {"email": "", "first_name": ""}}, {"id": 424242}]}
    response = await shop.client.post(f"{shop.api}/orders/batch", json=body, auth=(KEY, SECRET))
    assert response.status_code == 200
    updated, unknown = response.json()["update"]
    assert updated["id"] == order["id"] and updated["billing"]["email"] == ""
    assert unknown["id"] == 424242 and unknown["error"]["code"] == "woocommerce_rest_shop_order_invalid_id"
    too_many = {"update": [{"id": order["id"]}] * 101}
    response = await shop.client.post(f"{shop.api}/orders/batch", json=too_many, auth=(KEY, SECRET))
    assert error(response) == (413, "woocommerce_rest_request_entity_too_large")
    anonymous = await shop.client.post(f"{shop.api}/orders/batch", json=body)
    assert error(anonymous) == (401, "woocommerce_rest_cannot_batch")
