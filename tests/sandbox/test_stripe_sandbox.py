"""The Stripe sandbox over real HTTP: loopback only, Stripe's auth, error bodies, lists and pagination, customer
search with its delay, deleted customers, idempotency keys, and the seeding helper."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.types import Message

from sandbox.faults import Faults
from sandbox.stripe import DEFAULT_API_KEY as KEY
from sandbox.stripe import StripeSandbox, StripeState, parse_query, seed_customer, stripe_app
from tests.harness import sync_http_client


@pytest.fixture(scope="module")
def server() -> Iterator[StripeSandbox]:
    with StripeSandbox().start() as running:
        yield running


def _api(server: StripeSandbox) -> httpx.Client:
    return sync_http_client(base_url=server.url, auth=(server.api_key, ""), timeout=10)


def _listening(port: int) -> list[tuple[str, str]]:
    """(table, local address in hex) of every listening socket on ``port``, from /proc/net/tcp{,6}."""
    found = []
    for table in ("tcp", "tcp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.append((table, address))
    return found


def _non_loopback_ipv4() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: this only picks a route
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address  # noqa: S104


def test_listens_on_127_0_0_1_only(server: StripeSandbox) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp on this system")
    assert _listening(server.port) == [("tcp", "0100007F")]  # 127.0.0.1, nothing on IPv6 or 0.0.0.0


def test_is_not_reachable_from_another_interface(server: StripeSandbox) -> None:
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with pytest.raises(OSError), socket.create_connection((address, server.port), timeout=2):
        pass


def test_checks_the_key_and_answers_errors_in_stripes_shape(server: StripeSandbox) -> None:
    with _api(server) as api:
        assert api.get("/v1/customers", params={"limit": 1}).status_code == 200
        bearer = httpx.get(f"{server.url}/v1/customers", headers={"Authorization": f"Bearer {server.api_key}"})
        assert bearer.status_code == 200
        missing = api.get("/v1/customers/cus_nope")
        assert missing.status_code == 404 and missing.json() == {"error": {
            "type": "invalid_request_error", "code": "resource_missing", "param": "id",
            "message": "No such customer: 'cus_nope'", "doc_url": "https://stripe.com/docs/error-codes/resource-missing"}}
        unknown = api.get("/v1/customers", params={"emial": "x@example.org"})
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "parameter_unknown"
        assert api.get("/v1/customers", params={"limit": 101}).json()["error"]["param"] == "limit"
        nowhere = api.get("/v1/nowhere")
        assert nowhere.status_code == 404 and "Unrecognized request URL" in nowhere.json()["error"]["message"]
    denied = httpx.get(f"{server.url}/v1/customers", auth=("not-a-secret-key", ""), timeout=10)
    assert denied.status_code == 401 and denied.json()["error"]["type"] == "invalid_request_error"


def test_email_listing_is_exact_and_search_is_case_insensitive(server: StripeSandbox) -> None:
    tag = uuid.uuid4().hex[:8]
    registered = f"Lucas.Petit+{tag}@example.org"
    customer = server.state.seed_customer(registered, "Lucas Petit")
    with _api(server) as api:
        assert [c["id"] for c in api.get("/v1/customers", params={"email": registered}).json()["data"]] == [
            customer]
        assert api.get("/v1/customers", params={"email": registered.lower()}).json()["data"] == []
        found = api.get("/v1/customers/search", params={"query": f"email:'{registered.lower()}'"}).json()
        assert found["object"] == "search_result" and [c["id"] for c in found["data"]] == [customer]
        assert found["has_more"] is False and found["next_page"] is None
        bad = api.get("/v1/customers/search", params={"query": "email = x"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "query"


def test_search_pages_with_next_page(server: StripeSandbox) -> None:
    name = f"Many {uuid.uuid4().hex[:8]}"
    made = [server.state.seed_customer(f"many.{i}.{uuid.uuid4().hex[:6]}@example.org", name) for i in range(5)]
    seen: list[str] = []
    page: str | None = None
    with _api(server) as api:
        while True:
            params: dict[str, str | int] = {"query": f"name:'{name}'", "limit": 2, **({"page": page} if page else {})}
            body = api.get("/v1/customers/search", params=params).json()
            seen += [c["id"] for c in body["data"]]
            if not body["has_more"]:
                assert body["next_page"] is None
                break
            page = body["next_page"]
    assert seen == made[::-1]  # newest first, each once


def test_search_sees_changes_only_after_its_delay() -> None:
    clock = [1_800_000_000.0]
    state = StripeState(search_delay=60, now=lambda: clock[0])
    customer = state.seed_customer("Lag@example.org", "Lag")
    join, clauses = parse_query("email:'lag@example.org'")
    assert (join, clauses) == ("AND", [("email", ":", "lag@example.org")])
    assert state.search_view(customer) is None  # created less than a minute ago
    clock[0] += 60
    assert indexed_email(state, customer) == "Lag@example.org"
    state.update_customer(customer, {"email": "moved@example.org"})
    assert indexed_email(state, customer) == "Lag@example.org"  # the index still has the old address
    clock[0] += 60
    assert indexed_email(state, customer) == "moved@example.org"


def indexed_email(state: StripeState, customer: str) -> str | None:
    """The email the search index holds for ``customer`` (``None``: not indexed yet)."""
    view = state.search_view(customer)
    return None if view is None else view["email"]


def test_search_can_be_switched_off() -> None:
    with StripeSandbox(search=False).start() as bare, _api(bare) as api:
        answer = api.get("/v1/customers/search", params={"query": "email:'a@example.org'"})
    assert answer.status_code == 404 and "Unrecognized request URL" in answer.json()["error"]["message"]


def test_a_deleted_customer_is_a_stub_then_a_404(server: StripeSandbox) -> None:
    customer = server.state.seed_customer(f"gone.{uuid.uuid4().hex[:8]}@example.org", "Gone", charges=1,
                                          subscription=True)
    with _api(server) as api:
        assert api.delete(f"/v1/customers/{customer}").json() == {"id": customer, "object": "customer",
                                                                   "deleted": True}
        assert api.get(f"/v1/customers/{customer}").json() == {"id": customer, "object": "customer",
                                                                "deleted": True}
        assert api.delete(f"/v1/customers/{customer}").status_code == 404
        assert api.post(f"/v1/customers/{customer}", data={"name": "x"}).status_code == 404
        charges = api.get("/v1/charges", params={"customer": customer}).json()["data"]
        assert len(charges) == 2 and charges[0]["billing_details"]["name"] == "Gone"  # payments stay
        [sub] = api.get("/v1/subscriptions", params={"customer": customer, "status": "all"}).json()["data"]
        assert sub["status"] == "canceled"
        assert api.get("/v1/subscriptions", params={"customer": customer}).json()["data"] == []
        assert api.get(f"/v1/customers/{customer}/payment_methods").status_code == 404


def test_idempotency_keys_replay_the_first_answer(server: StripeSandbox) -> None:
    key = f"idem-{uuid.uuid4().hex}"
    with _api(server) as api:
        first = api.post("/v1/customers", data={"email": "idem@example.org"}, headers={"Idempotency-Key": key})
        again = api.post("/v1/customers", data={"email": "idem@example.org"}, headers={"Idempotency-Key": key})
        assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
        other = api.post("/v1/customers", data={"email": "other@example.org"}, headers={"Idempotency-Key": key})
        assert other.status_code == 400 and other.json()["error"]["type"] == "idempotency_error"
    assert sum(1 for c in server.state.objects["customer"].values() if c["email"] == "idem@example.org") == 1


def test_payment_methods_update_only_while_attached(server: StripeSandbox) -> None:
    customer = server.state.seed_customer(f"pm.{uuid.uuid4().hex[:8]}@example.org", "Card Holder")
    with _api(server) as api:
        [method] = api.get(f"/v1/customers/{customer}/payment_methods").json()["data"]
        blank = {"billing_details[name]": "", "billing_details[address]": ""}
        updated = api.post(f"/v1/payment_methods/{method['id']}", data=blank).json()
        assert updated["billing_details"]["name"] is None and updated["billing_details"]["address"]["city"] is None
        assert updated["billing_details"]["email"] is not None  # not asked
        api.delete(f"/v1/customers/{customer}")
        refused = api.post(f"/v1/payment_methods/{method['id']}", data={"billing_details[email]": ""})
        assert refused.status_code == 400  # detached: Stripe no longer updates it


def test_guest_checkout_sessions_are_listed_by_their_email(server: StripeSandbox) -> None:
    email = f"guest.{uuid.uuid4().hex[:8]}@example.org"
    session = server.state.add_checkout_session(email=email, name="Guest", address={"city": "Nantes"})
    with _api(server) as api:
        listed = api.get("/v1/checkout/sessions", params={"customer_details[email]": email}).json()["data"]
        assert [s["id"] for s in listed] == [session] and listed[0]["customer"] is None
        assert api.get("/v1/checkout/sessions", params={"customer_details[email]": email.upper()}).json()[
            "data"] == []  # exact, as Stripe's filter


def test_faults_attach_as_for_the_other_sandboxes() -> None:
    faults = Faults()
    with StripeSandbox(faults=faults).start() as faulty, _api(faulty) as api:
        faults.statuses = [503]
        answer = api.get("/v1/customers")
        assert answer.status_code == 503 and answer.json()["error"]["type"] == "api_error"
        assert api.get("/v1/customers").status_code == 200
    assert faults.log == ["GET /v1/customers", "GET /v1/customers"]


async def test_a_request_whose_client_left_before_its_body_arrived_is_not_carried_out() -> None:
    """The chaos run's ``idempotency_error``: uvicorn answers ``http.disconnect`` to a client gone (a killed
    worker), even for body bytes it had buffered; the fault middleware took what it had read (nothing) for the
    whole body, the sandbox carried out the POST without its parameters and kept the idempotency key with
    them, and the worker's retry of the real request was refused."""
    state = StripeState()
    customer = state.seed_customer("gone.client@example.org", "Gone Client")
    [method] = [m for m in state.objects["payment_method"].values() if m["customer"] == customer]
    app = stripe_app(state, api_key=KEY, faults=Faults())
    key = f"dsr-2026-12-abcdef:redact:{method['id']}"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": f"/v1/payment_methods/{method['id']}", "raw_path": f"/v1/payment_methods/{method['id']}".encode(),
             "query_string": b"", "root_path": "", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000),
             "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"idempotency-key", key.encode()),
                         (b"content-type", b"application/x-www-form-urlencoded")]}
    sent: list[Message] = []

    async def gone() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, gone, send)
    assert sent == [] and key not in state.idempotency  # not carried out, no key kept
    assert state.requests == []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox") as api:
        answer = await api.post(f"/v1/payment_methods/{method['id']}", headers={
            "Authorization": f"Bearer {KEY}", "Idempotency-Key": key}, data={"billing_details[name]": ""})
    assert answer.status_code == 200, answer.text  # the real request, under its key, is carried out
    assert method["billing_details"]["name"] is None


async def test_seed_customer_creates_a_realistic_customer(server: StripeSandbox) -> None:
    email = f"Seeded.{uuid.uuid4().hex[:8]}@Example.org"
    customer = await seed_customer(server.url, server.api_key, email=email, name="Léa Petit", charges=25,
                                   subscription=True)
    with _api(server) as api:
        record = api.get(f"/v1/customers/{customer}").json()
        assert record["email"] == email and record["name"] == "Léa Petit"
        assert record["address"]["city"] == "Lyon" and record["shipping"]["address"]["city"] == "Lyon"
        methods = api.get("/v1/payment_methods", params={"customer": customer, "type": "card"}).json()["data"]
        assert [m["card"]["last4"] for m in methods] == ["4242"]
        assert methods[0]["billing_details"]["email"] == email
        charges = api.get("/v1/charges", params={"customer": customer, "limit": 100}).json()["data"]
        assert len(charges) == 26  # 25 one-off charges and the subscription's first invoice
        assert all(c["status"] == "succeeded" and c["billing_details"]["email"] == email for c in charges)
        assert all(c["shipping"]["address"]["city"] == "Lyon" for c in charges)
        intents = api.get("/v1/payment_intents", params={"customer": customer, "limit": 100}).json()["data"]
        assert sorted(i["latest_charge"] for i in intents) == sorted(c["id"] for c in charges)
        subscriptions = api.get("/v1/subscriptions", params={"customer": customer, "status": "all"}).json()
        assert len(subscriptions["data"]) == 1
        assert len(api.get("/v1/invoices", params={"customer": customer}).json()["data"]) == 1


async def test_lists_page_newest_first_with_starting_after(server: StripeSandbox) -> None:
    customer = await seed_customer(server.url, server.api_key, email=f"{uuid.uuid4().hex}@example.org",
                                   name="Page Turner", charges=23)
    seen: list[str] = []
    after: str | None = None
    with _api(server) as api:
        while True:
            params: dict[str, str | int] = {"customer": customer, "limit": 10,
                                            **({"starting_after": after} if after else {})}
            page = api.get("/v1/charges", params=params).json()
            seen += [c["id"] for c in page["data"]]
            if not page["has_more"]:
                break
            after = page["data"][-1]["id"]
    assert len(seen) == len(set(seen)) == 23
    assert seen == [c["id"] for c in reversed(list(server.state.objects["charge"].values()))
                    if c["customer"] == customer]


def test_stop_ends_the_server() -> None:
    server = StripeSandbox().start()
    url = server.url
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/v1/customers", timeout=2)
    with pytest.raises(RuntimeError):
        _ = server.url


def test_a_rate_limit_answers_429_as_stripe_does() -> None:
    with StripeSandbox(rate_limit=(2, 60.0)).start() as limited, _api(limited) as api:
        assert [api.get("/v1/customers").status_code for _ in range(2)] == [200, 200]
        throttled = api.get("/v1/customers")
    assert throttled.status_code == 429 and throttled.headers["retry-after"] == "1"
    assert throttled.json()["error"]["code"] == "rate_limit"  # what the SDK and the connector read


def test_the_demo_search_delay_is_a_setting() -> None:
    from sandbox.demo import DemoError, stripe_search_delay

    assert stripe_search_delay({}) == 60.0 and stripe_search_delay({"DSR_DEMO_STRIPE_SEARCH_DELAY": "0"}) == 0.0
    for bad in ("soon", "-1", "7200", "nan"):
        with pytest.raises(DemoError, match="DSR_DEMO_STRIPE_SEARCH_DELAY must be a number of seconds"):
            stripe_search_delay({"DSR_DEMO_STRIPE_SEARCH_DELAY": bad})


async def test_demo_counts_are_what_the_stripe_connector_exports() -> None:
    """Issue 18: `dsr demo customers` said stripe (5) for a customer whose reply listed 7 records: the counts the
    demo states for each seeded customer are what the Stripe connector exports, dataset by dataset."""
    from sandbox.demo import STRIPE_KEY, seed_stripe, stripe_counts

    with StripeSandbox(api_key=STRIPE_KEY).start() as running:
        stated = seed_stripe(running.state)
        read_back = await stripe_counts(running.url, list(stated))
    assert read_back == stated
