"""Random fault rates (DSR_DEMO_FAULTS), the write log, and the faults attached to the Stripe sandbox."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from dsr.config.settings import ConfigError
from dsr.web.serve import RunningServer, serve_app
from sandbox.faults import FaultRates, Faults, parse_fault_rates
from sandbox.stripe import StripeSandbox, stripe_app
from tests.harness import free_port, http_client

BIN = Path(sys.executable).parent
KEY = "sk_test_faults"


def test_rates_parse_every_fault_and_default_to_none() -> None:
    rates = parse_fault_rates("5xx=0.05, 429=0.04,slow=0.03,drop=0.02,lost=0.01")
    assert (rates.error, rates.throttle, rates.slow, rates.drop, rates.lost) == (0.05, 0.04, 0.03, 0.02, 0.01)
    assert not parse_fault_rates("")
    assert parse_fault_rates("lost=1").lost == 1.0


@pytest.mark.parametrize("raw", ["5xx", "oops=0.1", "5xx=lots", "429=1.5", "5xx=0.6,429=0.6", "drop=0.1,drop=0.2"])
def test_a_malformed_value_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="DSR_DEMO_FAULTS"):
        parse_fault_rates(raw)


@pytest.mark.slow
def test_dsr_up_refuses_malformed_faults_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "DSR_HOME": str(tmp_path), "DSR_DEMO_FAULTS": "5xx=half",
           "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"}
    result = subprocess.run([str(BIN / "dsr"), "up", "--demo"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: DSR_DEMO_FAULTS"), result.stderr


def test_draws_follow_the_rates() -> None:
    import random

    faults = Faults(rates=FaultRates(error=0.1, throttle=0.1, lost=0.05), rng=random.Random(7))
    drawn = [faults.draw() for _ in range(4000)]
    assert 300 < drawn.count("5xx") < 500 and 300 < drawn.count("429") < 500 and 120 < drawn.count("lost") < 280
    assert drawn.count(None) > 2800 and "slow" not in drawn and "drop" not in drawn


@pytest.fixture(scope="module")
def sandbox() -> Iterator[StripeSandbox]:
    with StripeSandbox(api_key=KEY).start() as running:
        yield running


@pytest_asyncio.fixture
async def proxied(sandbox: StripeSandbox) -> AsyncIterator[tuple[RunningServer, Faults]]:
    """The Stripe sandbox's state served again with faults attached, as the demo and tests/cluster.py do (the
    unfaulted server beside it is how seeding and checks reach the same state)."""
    faults = Faults()
    server = await serve_app(stripe_app(sandbox.state, api_key=KEY, faults=faults), port=0)
    try:
        yield server, faults
    finally:
        await server.stop()


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


async def test_the_faulted_sandbox_answers_and_logs_what_it_carried_out(
    proxied: tuple[RunningServer, Faults],
) -> None:
    server, faults = proxied
    async with http_client(base_url=server.url, headers=_auth()) as http:
        created = await http.post("/v1/customers", data={"email": "proxied@example.org"})
        assert created.status_code == 200, created.text
        customer = created.json()["id"]
        listed = await http.get("/v1/customers", params={"email": "proxied@example.org"})
        assert [c["id"] for c in listed.json()["data"]] == [customer]
        assert (await http.get("/v1/customers", headers={"Authorization": "Bearer nope"})).status_code == 401
    assert [(a.request, a.status) for a in faults.applied] == [
        ("POST /v1/customers", 200), ("GET /v1/customers", 200), ("GET /v1/customers", 401)]
    assert faults.mutated_twice() == []


async def test_the_sandbox_injects_429_with_retry_after_and_5xx(proxied: tuple[RunningServer, Faults]) -> None:
    server, faults = proxied
    async with http_client(base_url=server.url, headers=_auth()) as http:
        faults.rates = FaultRates(throttle=1.0, retry_after_seconds=3)
        throttled = await http.get("/v1/customers")
        assert throttled.status_code == 429 and throttled.headers["retry-after"] == "3"
        faults.rates = FaultRates(error=1.0)
        assert (await http.get("/v1/customers")).status_code in (500, 502, 503)
    assert faults.applied == [] and faults.injected == {"429": 1, "5xx": 1}


async def test_the_stripe_connector_honours_an_injected_retry_after(
    proxied: tuple[RunningServer, Faults],
) -> None:
    """Injected errors carry Stripe's error shape: the official SDK exposes the status and ``Retry-After`` of
    such an answer only (a bare ``{"message": ...}`` became an "invalid response" without headers, so every
    injected 429 was retried on Temporal's growing backoff instead of after one second)."""
    from connectors.base import TransientConnectorError
    from connectors.stripe import StripeConnector
    from dsr.domain.model import Subject

    server, faults = proxied
    connector = StripeConnector(api_key=KEY, base_url=server.url)
    try:
        # Thirty seconds is more than a read waits out in place (connectors.http.READ_WAIT_MAX): the error, with
        # its Retry-After, comes at once instead of after two real waits (their waiting is tested in test_stripe).
        for rates, status in ((FaultRates(throttle=1.0, retry_after_seconds=30), "HTTP 429 rate_limit"),
                              (FaultRates(error=1.0, retry_after_seconds=30), "HTTP 5")):
            faults.rates = rates
            with pytest.raises(TransientConnectorError) as raised:
                await connector.locate(Subject(email="limited@example.org"))
            assert status in str(raised.value)
            if "429" in status or "503" in str(raised.value):
                assert raised.value.retry_after == 30.0
    finally:
        await connector.aclose()


async def test_an_answer_lost_after_the_call_took_effect(
    proxied: tuple[RunningServer, Faults], sandbox: StripeSandbox,
) -> None:
    server, faults = proxied
    faults.rates = FaultRates(lost=1.0)
    async with http_client(base_url=server.url, headers=_auth()) as http:
        with pytest.raises(httpx.TransportError):
            await http.post("/v1/customers", data={"email": "lost.answer@example.org"})
        faults.rates = FaultRates(drop=1.0)
        with pytest.raises(httpx.TransportError):
            await http.post("/v1/customers", data={"email": "dropped@example.org"})
    async with http_client(base_url=sandbox.url, headers=_auth()) as direct:
        lost = (await direct.get("/v1/customers", params={"email": "lost.answer@example.org"})).json()["data"]
        dropped = (await direct.get("/v1/customers", params={"email": "dropped@example.org"})).json()["data"]
    assert len(lost) == 1 and dropped == []  # the lost answer's call took effect; the dropped one never arrived
    assert [(a.request, a.status) for a in faults.applied] == [("POST /v1/customers", 200)]


async def test_a_repeated_write_is_reported_once_per_body(proxied: tuple[RunningServer, Faults]) -> None:
    server, faults = proxied
    async with http_client(base_url=server.url, headers=_auth()) as http:
        customer = (await http.post("/v1/customers", data={"email": "twice@example.org"})).json()["id"]
        for _ in range(2):
            assert (await http.post(f"/v1/customers/{customer}", data={"name": "Same"})).status_code == 200
        assert (await http.post(f"/v1/customers/{customer}", data={"name": "Other"})).status_code == 200
        await asyncio.sleep(0)
    assert faults.mutated_twice() == [(f"POST /v1/customers/{customer}", 2)]
