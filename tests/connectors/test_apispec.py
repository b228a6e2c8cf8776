"""The validator of tests/apispec really runs: faults planted on either side, over real HTTP, are reported
with their rule, and only the listed exceptions are excused."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dsr.web.serve import serve_app
from sandbox.hubspot import HubSpotState, hubspot_app
from tests.apispec import Contract, Session, SpecCheck, Tally, excuse, hubspot_contract, stripe_contract
from tests.apispec.exceptions import EXCEPTIONS
from tests.harness import http_client

TOKEN = "pat-eu1-apispec"
SEARCH = "/crm/v3/objects/contacts/search"


def good_search(**changes: Any) -> dict[str, Any]:
    body = {"filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": "a@example.org"}]}],
            "properties": ["email"], "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
            "limit": 10, "after": "0"}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


@asynccontextmanager
async def _served(app: Any, contract: Contract) -> AsyncIterator[tuple[httpx.AsyncClient, Tally]]:
    tally = Tally(contract.vendor, session=False)  # planted faults stay out of the session's summary
    running = await serve_app(SpecCheck(app, contract, tally), host="127.0.0.1", port=0)
    try:
        async with http_client(base_url=running.url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            yield http, tally
    finally:
        await running.stop()


@pytest.fixture
async def hub() -> AsyncIterator[tuple[httpx.AsyncClient, Tally, HubSpotState]]:
    state = HubSpotState()
    contact = state.add_contact("a@example.org", firstname="A")
    state.seed_activity(contact, notes=2)
    async with _served(hubspot_app(state, token=TOKEN), hubspot_contract()) as (http, tally):
        yield http, tally, state


def rules(tally: Tally) -> set[str]:
    """The rules broken and not excused (the connector's sort objects are: see exceptions.py)."""
    return {v.rule for v in tally.unexcused()}


async def test_a_well_formed_exchange_has_no_violation(hub: tuple[httpx.AsyncClient, Tally, HubSpotState]) -> None:
    http, tally, state = hub
    assert (await http.post(SEARCH, json=good_search())).status_code == 200
    contact = state.find_contacts("a@example.org")[0]
    assert (await http.get(f"/crm/v4/objects/contacts/{contact}/associations/notes")).status_code == 200
    assert tally.requests == tally.responses == 2 and tally.unexcused() == []


async def test_a_planted_request_fault_is_reported(hub: tuple[httpx.AsyncClient, Tally, HubSpotState]) -> None:
    http, tally, _ = hub
    await http.post(SEARCH, json=good_search(after=None, limit="ten"))
    await http.post("/crm/v3/objects/notes/batch/read", json={"inputs": [{"id": "1"}], "properties": []})
    assert rules(tally) >= {
        f"hubspot request POST {SEARCH} after: required",
        f"hubspot request POST {SEARCH} limit: type",
        "hubspot request POST /crm/v3/objects/notes/batch/read propertiesWithHistory: required",
    }
    with pytest.raises(AssertionError, match="new violation"):
        tally.assert_clean()


async def test_a_planted_answer_fault_is_reported() -> None:
    """A HubSpot stand-in answering the shapes the sandbox used to: null properties, integer ids, null labels."""

    async def search(request: Request) -> Response:
        return JSONResponse({"total": 1, "results": [{
            "id": "101", "properties": {"email": "a@example.org", "phone": None}, "archived": False,
            "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-01T00:00:00.000Z"}]})

    async def associations(request: Request) -> Response:
        return JSONResponse({"results": [{"toObjectId": 5, "associationTypes": [
            {"category": "HUBSPOT_DEFINED", "typeId": 202, "label": None}]}]})

    app = Starlette(routes=[Route(SEARCH, search, methods=["POST"]),
                            Route("/crm/v4/objects/contacts/{id}/associations/notes", associations)])
    async with _served(app, hubspot_contract()) as (http, tally):
        await http.post(SEARCH, json=good_search())
        await http.get("/crm/v4/objects/contacts/101/associations/notes")
    assert rules(tally) == {
        f"hubspot response POST {SEARCH} 200 results[].properties.phone: type (null)",
        "hubspot response GET /crm/v4/objects/{objectType}/{objectId}/associations/{toObjectType} 200 "
        "results[].toObjectId: type",
        "hubspot response GET /crm/v4/objects/{objectType}/{objectId}/associations/{toObjectType} 200 "
        "results[].associationTypes[].label: type (null)",
    }


async def test_stripe_faults_on_both_sides_are_reported() -> None:
    def answering(body: dict[str, Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            return JSONResponse(body)
        return endpoint

    async def refused(request: Request) -> Response:
        return JSONResponse({"error": {"type": "invalid_request_error", "message": "Received unknown parameter"}},
                            status_code=400)

    app = Starlette(routes=[
        Route("/v1/customers", answering({"object": "list", "data": [], "url": "/v1/customers"})),  # no has_more
        Route("/v1/customers/{id}", answering({"id": "cus_1", "object": "customer", "deleted": True}),
              methods=["DELETE"]),
        Route("/v1/customers/{id}", refused, methods=["POST"]),
    ])
    async with _served(app, stripe_contract()) as (http, tally):
        await http.get("/v1/customers", params={"emial": "a@example.org", "limit": "ten"})
        await http.post("/v1/customers/cus_1", data={"name": "A", "adress[line1]": "1 rue X"})
        await http.delete("/v1/customers/cus_1")  # well-formed both ways
        await http.get("/v1/nowhere")
    assert rules(tally) == {
        "stripe request GET /v1/customers emial: parameter not in the description",
        "stripe request GET /v1/customers limit: ParameterValidationError",  # not an integer
        "stripe response GET /v1/customers 200 has_more: required",
        "stripe request POST /v1/customers/{customer} (body): additionalProperties",  # the misspelt field
        "stripe request GET /v1/nowhere (path): operation not in the vendored description",
    }
    assert tally.requests == 4 and tally.responses == 3


def test_only_listed_rules_are_excused() -> None:
    listed = "hubspot request POST /crm/v3/objects/contacts/search sorts[]: type"
    assert listed in EXCEPTIONS and excuse(listed) == listed
    assert excuse("hubspot request POST /crm/v3/objects/contacts/search sorts: required") is None
    # "[]" in a rule is literal, not a character class.
    assert excuse("hubspot request POST /crm/v3/objects/contacts/search sorts]: type") is None
    assert all(why.strip() for why in EXCEPTIONS.values())


def test_the_summary_counts_and_names_new_rules() -> None:
    from tests.apispec import Violation

    session = Session()
    new = Violation("hubspot", "response", "GET /x", 200, "properties.a", "type (null)")
    excused = Violation("hubspot", "request", "POST /crm/v3/objects/contacts/search", None, "sorts[]", "type")
    session.add("hubspot", 3, 2, [new, new, excused])
    [line, detail] = session.summary()
    assert line.startswith("hubspot: 3 requests and 2 responses checked")
    assert "2 violation(s) of 1 new rule(s), 1 excused by 1 documented exception(s)" in line
    assert detail.strip() == f"NEW     2 x {new.rule}"


def test_stripes_nullable_beside_any_of_allows_null_and_nothing_more() -> None:
    """Stripe writes nullable expandable fields as ``anyOf`` + ``nullable`` without ``type``; read as meant."""
    from openapi_schema_validator import OAS30Validator

    from tests.apispec import _null_in_any_of

    schema = {"properties": {"invoice": {"anyOf": [{"type": "string", "maxLength": 5000},
                                                   {"type": "object", "required": ["id"]}], "nullable": True}}}
    assert not OAS30Validator(schema).is_valid({"invoice": None})  # the strict OpenAPI 3.0.3 reading
    _null_in_any_of(schema)
    validator = OAS30Validator(schema)
    assert validator.is_valid({"invoice": None}) and validator.is_valid({"invoice": "in_1"})
    assert validator.is_valid({"invoice": {"id": "in_1"}})
    assert not validator.is_valid({"invoice": 5}) and not validator.is_valid({"invoice": {}})
