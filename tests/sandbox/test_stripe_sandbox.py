"""The localstripe launcher: loopback only, no shared pickle, state files, and the seeding helper."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sandbox.stripe import LocalStripe, seed_customer


@pytest.fixture(scope="module")
def server() -> Iterator[LocalStripe]:
    with LocalStripe().start() as running:  # ephemeral
        yield running


def _api(server: LocalStripe) -> httpx.Client:
    return httpx.Client(base_url=server.url, auth=(server.api_key, ""), timeout=10)


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


def test_listens_on_127_0_0_1_only(server: LocalStripe) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp on this system")
    assert _listening(server.port) == [("tcp", "0100007F")]  # 127.0.0.1, nothing on IPv6 or 0.0.0.0


def test_is_not_reachable_from_another_interface(server: LocalStripe) -> None:
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with pytest.raises(OSError), socket.create_connection((address, server.port), timeout=2):
        pass


def test_answers_the_stripe_api_and_checks_the_key(server: LocalStripe) -> None:
    with _api(server) as api:
        assert api.get("/v1/customers", params={"limit": 1}).status_code == 200
    assert httpx.get(f"{server.url}/v1/customers", auth=("not-a-secret-key", ""), timeout=10).status_code == 401


def test_ephemeral_server_leaves_no_pickle_behind(server: LocalStripe) -> None:
    shared = Path("/tmp/localstripe.pickle")
    before = shared.stat().st_mtime_ns if shared.exists() else None
    with _api(server) as api:
        assert api.post("/v1/customers", data={"email": f"{uuid.uuid4().hex}@example.org"}).status_code == 200
    after = shared.stat().st_mtime_ns if shared.exists() else None
    assert after == before


@pytest.mark.slow
async def test_state_file_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "stripe" / "state.pickle"
    email = f"kept-{uuid.uuid4().hex[:8]}@example.org"
    with LocalStripe().start(state_file=state, save_every=0.05) as first:
        customer = await seed_customer(first.url, first.api_key, email=email, name="Kept Customer", charges=2)
    assert state.exists() and (state.stat().st_mode & 0o777) == 0o600
    assert not list(state.parent.glob(".state.pickle.*"))  # written atomically: no temporary left
    with LocalStripe().start(state_file=state) as second, _api(second) as api:
        assert api.get(f"/v1/customers/{customer}").json()["email"] == email
        charges = api.get("/v1/charges", params={"customer": customer, "limit": 100}).json()["data"]
        assert len(charges) == 2


async def test_seed_customer_creates_a_realistic_customer(server: LocalStripe) -> None:
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
        assert all(c["status"] == "succeeded" for c in charges)
        subscriptions = api.get("/v1/subscriptions", params={"customer": customer, "status": "all"}).json()
        assert len(subscriptions["data"]) == 1
        assert len(api.get("/v1/invoices", params={"customer": customer}).json()["data"]) == 1


async def test_listing_pages_are_the_same_with_the_index(server: LocalStripe) -> None:
    customer = await seed_customer(server.url, server.api_key, email=f"{uuid.uuid4().hex}@example.org",
                                   name="Page Turner", charges=23)
    seen: list[str] = []
    after: str | None = None
    with _api(server) as api:
        while True:
            params = {"customer": customer, "limit": 10, **({"starting_after": after} if after else {})}
            page = api.get("/v1/charges", params=params).json()
            seen += [c["id"] for c in page["data"]]
            if not page["has_more"]:
                break
            after = page["data"][-1]["id"]
    assert len(seen) == len(set(seen)) == 23


@pytest.mark.slow
def test_stop_ends_the_process() -> None:
    server = LocalStripe().start()
    pid = server.pid
    assert pid is not None
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(RuntimeError):
        _ = server.url


async def test_demo_counts_are_what_the_stripe_connector_exports() -> None:
    """Issue 18: `dsr demo customers` said stripe (5) for a customer whose reply listed 7 records: the listing
    now reads the counts back through the connector, so it counts what the reply lists."""
    from sandbox.demo import STRIPE_KEY, stripe_counts

    with LocalStripe(api_key=STRIPE_KEY).start() as running:
        customer = await seed_customer(running.url, STRIPE_KEY, email="camille.durand@example.org",
                                       name="Camille Durand", charges=2, subscription=True)
        counts = await stripe_counts(running.url, ["camille.durand@example.org"])
        async with httpx.AsyncClient(base_url=running.url, auth=(STRIPE_KEY, ""), timeout=10) as api:
            charges = (await api.get("/v1/charges", params={"customer": customer, "limit": 100})).json()["data"]
    # Two charges seeded, and the one paying the subscription's first invoice; the card is a saved method.
    assert len(charges) == 3
    assert counts == {"camille.durand@example.org": {"customer": 1, "charges": 3, "invoices": 1,
                                                     "subscriptions": 1, "payment_methods": 1}}
    assert sum(counts["camille.durand@example.org"].values()) == 7
