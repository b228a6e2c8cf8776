"""The HubSpot sandbox itself, over real HTTP: auth, paging, error bodies, rate limits, erase semantics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from dsr.web.serve import RunningServer, serve_app
from sandbox.faults import Faults
from sandbox.hubspot import HubSpotState, hubspot_app
from tests.apispec import SpecCheck, Tally, hubspot_contract
from tests.harness import http_client

TOKEN = "pat-eu1-sandbox"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Running:
    state: HubSpotState
    faults: Faults
    server: RunningServer
    http: httpx.AsyncClient
    lea: str
    spec: Tally  # every answer, checked against HubSpot's OpenAPI descriptions


async def _start(**kwargs: object) -> Running:
    state = HubSpotState()
    lea = state.add_contact("Lea.Petit@Example.org", firstname="Lea", lastname="Petit", city="Lyon")
    for i in range(4):
        state.add_contact(f"customer{i}@example.org", firstname=f"C{i}")
    state.seed_activity(lea, notes=7, deals=1)
    faults = Faults()
    # These tests send malformed requests on purpose: only the sandbox's answers are checked.
    checked = SpecCheck(hubspot_app(state, token=TOKEN, faults=faults, **kwargs),  # type: ignore[arg-type]
                        hubspot_contract(), requests=False)
    server = await serve_app(checked, host="127.0.0.1", port=0)
    return Running(state, faults, server, http_client(base_url=server.url, headers=AUTH), lea, checked.tally)


async def _stop(running: Running) -> None:
    await running.http.aclose()
    await running.server.stop()
    running.spec.assert_clean()  # every answer fits HubSpot's descriptions (or a listed exception)


@pytest.fixture
async def hub() -> AsyncIterator[Running]:
    running = await _start()
    try:
        yield running
    finally:
        await _stop(running)


def search_body(email: str, **extra: object) -> dict[str, object]:
    return {"filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": email}]}], **extra}


def assert_hubspot_error(response: httpx.Response, status: int, category: str | None) -> dict[str, object]:
    assert response.status_code == status
    body = response.json()
    assert body["status"] == "error" and body["message"] and body["correlationId"]
    assert body.get("category") == category
    return body


async def test_binds_loopback_only(hub: Running) -> None:
    assert hub.server.host == "127.0.0.1"


async def test_authentication_is_required(hub: Running) -> None:
    async with http_client(base_url=hub.server.url) as anonymous:
        missing = await anonymous.get("/crm/v3/objects/contacts")
        wrong = await anonymous.get("/crm/v3/objects/contacts", headers={"Authorization": "Bearer nope"})
        basic = await anonymous.post("/crm/v3/objects/contacts/gdpr-delete", json={"objectId": hub.lea},
                                     headers={"Authorization": f"Basic {TOKEN}"})
    for response in (missing, wrong, basic):
        assert_hubspot_error(response, 401, "INVALID_AUTHENTICATION")
    assert hub.state.contact(hub.lea) is not None and hub.state.requests == []


async def test_list_pages_with_after_and_link(hub: Running) -> None:
    first = await hub.http.get("/crm/v3/objects/contacts", params={"limit": 2})
    assert first.status_code == 200
    body = first.json()
    assert [r["id"] for r in body["results"]] == [hub.lea, str(int(hub.lea) + 1)]
    assert body["paging"]["next"]["after"] == "2" and "after=2" in body["paging"]["next"]["link"]
    rest = (await hub.http.get("/crm/v3/objects/contacts", params={"limit": 10, "after": "2"})).json()
    assert len(rest["results"]) == 3 and "paging" not in rest
    assert set(first.json()["results"][0]["properties"]) == {
        "createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"}
    assert (await hub.http.get("/crm/v3/objects/contacts", params={"limit": 101})).status_code == 400


async def test_search_matches_email_case_insensitively_and_pages(hub: Running) -> None:
    found = (await hub.http.post("/crm/v3/objects/contacts/search",
                                 json=search_body("LEA.PETIT@example.ORG", properties=["email", "city"]))).json()
    assert found["total"] == 1 and "paging" not in found
    [contact] = found["results"]
    assert contact["id"] == hub.lea and contact["archived"] is False
    assert contact["properties"]["email"] == "lea.petit@example.org"  # HubSpot stores addresses lower-cased
    assert contact["properties"]["city"] == "Lyon" and "hs_object_id" in contact["properties"]

    everyone = {"filterGroups": [{"filters": [{"propertyName": "email", "operator": "HAS_PROPERTY"}]}], "limit": 2}
    page = (await hub.http.post("/crm/v3/objects/contacts/search", json=everyone)).json()
    assert page["total"] == 5 and page["paging"]["next"]["after"] == "2"
    last = (await hub.http.post("/crm/v3/objects/contacts/search", json={**everyone, "after": "4"})).json()
    assert len(last["results"]) == 1 and "paging" not in last

    too_many = await hub.http.post("/crm/v3/objects/contacts/search", json=search_body("x@y.z", limit=201))
    assert_hubspot_error(too_many, 400, "VALIDATION_ERROR")


async def test_read_with_associations_and_v4_association_paging(hub: Running) -> None:
    read = await hub.http.get(f"/crm/v3/objects/contacts/{hub.lea}",
                              params={"properties": "firstname,city,unknown_prop", "associations": "notes,deals"})
    body = read.json()
    assert body["properties"] == {"firstname": "Lea", "city": "Lyon"}  # unknown properties are ignored
    assert len(body["associations"]["notes"]["results"]) == 7
    assert body["associations"]["deals"]["results"][0]["type"] == "contact_to_deal"

    url = f"/crm/v4/objects/contacts/{hub.lea}/associations/notes"
    first = (await hub.http.get(url, params={"limit": 5})).json()
    assert [r["associationTypes"][0]["typeId"] for r in first["results"]] == [202] * 5
    # HubSpot's v4 description: toObjectId a string; an unlabelled association carries no label (never null).
    assert all(isinstance(r["toObjectId"], str) for r in first["results"])
    assert all("label" not in t for r in first["results"] for t in r["associationTypes"])
    after = first["paging"]["next"]["after"]
    assert not after.isdigit()  # opaque token, as HubSpot's v4 gives
    second = (await hub.http.get(url, params={"limit": 5, "after": after})).json()
    assert len(second["results"]) == 2 and "paging" not in second
    ids = [str(r["toObjectId"]) for r in first["results"] + second["results"]]
    assert ids == hub.state.associated(hub.lea, "notes")

    batch = await hub.http.post("/crm/v3/objects/notes/batch/read",
                                json={"properties": ["hs_note_body"], "inputs": [{"id": i} for i in ids[:3]]})
    assert batch.status_code == 200 and batch.json()["status"] == "COMPLETE"
    assert [r["id"] for r in batch.json()["results"]] == ids[:3]
    partial = await hub.http.post("/crm/v3/objects/notes/batch/read", json={"inputs": [{"id": ids[0]}, {"id": "999"}]})
    assert partial.status_code == 207
    assert partial.json()["errors"][0]["category"] == "OBJECT_NOT_FOUND"
    assert partial.json()["errors"][0]["context"] == {"ids": ["999"]}
    oversize = await hub.http.post("/crm/v3/objects/notes/batch/read", json={"inputs": [{"id": "1"}] * 101})
    assert_hubspot_error(oversize, 400, "VALIDATION_ERROR")


async def test_error_bodies(hub: Running) -> None:
    assert_hubspot_error(await hub.http.get("/crm/v3/objects/contacts/424242"), 404, "OBJECT_NOT_FOUND")
    assert_hubspot_error(await hub.http.get("/crm/v3/objects/widgets/1"), 404, "OBJECT_NOT_FOUND")
    assert_hubspot_error(await hub.http.get("/crm/v4/objects/contacts/424242/associations/notes"), 404,
                         "OBJECT_NOT_FOUND")
    unknown = await hub.http.patch(f"/crm/v3/objects/contacts/{hub.lea}", json={"properties": {"shoe_size": "42"}})
    assert "PROPERTY_DOESNT_EXIST" in str(assert_hubspot_error(unknown, 400, "VALIDATION_ERROR")["message"])
    clash = await hub.http.patch(f"/crm/v3/objects/contacts/{hub.lea}",
                                 json={"properties": {"email": "CUSTOMER1@example.org"}})
    assert_hubspot_error(clash, 409, "CONFLICT")
    bad_json = await hub.http.post("/crm/v3/objects/contacts/search", content=b"{not json",
                                   headers={"Content-Type": "application/json"})
    assert_hubspot_error(bad_json, 400, "VALIDATION_ERROR")


async def test_patch_updates_and_lower_cases_email(hub: Running) -> None:
    response = await hub.http.patch(f"/crm/v3/objects/contacts/{hub.lea}",
                                    json={"properties": {"city": "Paris", "email": "Lea.Dupont@Example.org"}})
    assert response.status_code == 200
    assert response.json()["properties"] == {"city": "Paris", "email": "lea.dupont@example.org"}
    assert hub.state.patches == [(hub.lea, {"city": "Paris", "email": "lea.dupont@example.org"})]


async def test_plain_delete_archives_and_is_restorable(hub: Running) -> None:
    assert (await hub.http.delete(f"/crm/v3/objects/contacts/{hub.lea}")).status_code == 204
    assert hub.state.is_archived(hub.lea) and not hub.state.was_gdpr_deleted(hub.lea)
    assert (await hub.http.get(f"/crm/v3/objects/contacts/{hub.lea}")).status_code == 404
    archived = await hub.http.get(f"/crm/v3/objects/contacts/{hub.lea}", params={"archived": "true"})
    assert archived.status_code == 200 and archived.json()["archived"] is True
    search = await hub.http.post("/crm/v3/objects/contacts/search", json=search_body("lea.petit@example.org"))
    assert search.json()["total"] == 0
    hub.state.restore(hub.lea)  # the data was never gone: this is why DELETE is no erasure
    assert (await hub.http.get(f"/crm/v3/objects/contacts/{hub.lea}")).status_code == 200


async def test_gdpr_delete_is_permanent_and_blocklists(hub: Running) -> None:
    notes = hub.state.associated(hub.lea, "notes")
    response = await hub.http.post("/crm/v3/objects/contacts/gdpr-delete", json={"objectId": hub.lea})
    assert response.status_code == 204 and response.content == b""
    assert hub.state.was_gdpr_deleted(hub.lea) and hub.state.contact(hub.lea) is None
    assert hub.state.is_blocklisted("lea.petit@example.org")
    assert (await hub.http.get(f"/crm/v3/objects/contacts/{hub.lea}", params={"archived": "true"})).status_code == 404
    # Associated engagements are purged later ("within 30 days").
    assert {("notes", n) for n in notes} <= hub.state.purge_pending
    assert hub.state.run_purge() == len(notes) and not hub.state.objects["notes"]

    again = await hub.http.post("/crm/v3/objects/contacts/gdpr-delete", json={"objectId": hub.lea})
    assert_hubspot_error(again, 404, "OBJECT_NOT_FOUND")
    by_email = await hub.http.post("/crm/v3/objects/contacts/gdpr-delete",
                                   json={"idProperty": "email", "objectId": "Stranger@Example.org"})
    assert by_email.status_code == 204 and hub.state.is_blocklisted("stranger@example.org")
    customer = hub.state.find_contacts("customer2@example.org")[0]
    by_known_email = await hub.http.post("/crm/v3/objects/contacts/gdpr-delete",
                                         json={"idProperty": "email", "objectId": "customer2@example.org"})
    assert by_known_email.status_code == 204 and hub.state.was_gdpr_deleted(customer)


async def test_rate_limit_429_with_policy_and_headers() -> None:
    running = await _start(rate_limit=(3, 10.0))
    try:
        ok = [await running.http.get("/crm/v3/objects/contacts", params={"limit": 1}) for _ in range(3)]
        assert [r.headers["X-HubSpot-RateLimit-Remaining"] for r in ok] == ["2", "1", "0"]
        assert ok[0].headers["X-HubSpot-RateLimit-Max"] == "3"
        assert ok[0].headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
        limited = await running.http.get("/crm/v3/objects/contacts", params={"limit": 1})
        assert limited.status_code == 429
        body = limited.json()
        assert body["status"] == "error" and body["errorType"] == "RATE_LIMIT"
        assert body["policyName"] == "TEN_SECONDLY_ROLLING"
        assert limited.headers["X-HubSpot-RateLimit-Remaining"] == "0"
        assert 1 <= int(limited.headers["Retry-After"]) <= 10
        assert running.state.rate_limited == 1
        # Search has its own limit: still available while the general one is exhausted.
        search = await running.http.post("/crm/v3/objects/contacts/search", json=search_body("a@b.c"))
        assert search.status_code == 200
    finally:
        await _stop(running)


async def test_search_has_its_own_lower_limit() -> None:
    running = await _start(search_rate_limit=(4, 1.0))
    try:
        answers = [await running.http.post("/crm/v3/objects/contacts/search", json=search_body("a@b.c"))
                   for _ in range(5)]
        assert [a.status_code for a in answers] == [200, 200, 200, 200, 429]
        assert answers[-1].json()["policyName"] == "SECONDLY" and "Retry-After" in answers[-1].headers
        assert "X-HubSpot-RateLimit-Max" not in answers[0].headers  # search answers carry no limit headers
        listed = await running.http.get("/crm/v3/objects/contacts", params={"limit": 1})
        assert listed.status_code == 200
    finally:
        await _stop(running)


async def test_no_rate_limit_when_disabled() -> None:
    running = await _start(rate_limit=None, search_rate_limit=None)
    try:
        for _ in range(30):
            assert (await running.http.get("/crm/v3/objects/contacts", params={"limit": 1})).status_code == 200
        assert running.state.rate_limited == 0
    finally:
        await _stop(running)


async def test_faults_statuses_and_dropped_connections(hub: Running) -> None:
    hub.faults.statuses.extend([503, 429])
    hub.faults.retry_after = "3"
    first = await hub.http.get("/crm/v3/objects/contacts")
    second = await hub.http.get("/crm/v3/objects/contacts")
    assert (first.status_code, second.status_code) == (503, 429) and second.headers["Retry-After"] == "3"
    hub.faults.clear()
    hub.faults.drop_next = 1
    with pytest.raises(httpx.TransportError):
        await hub.http.get("/crm/v3/objects/contacts")
    assert (await hub.http.get("/crm/v3/objects/contacts")).status_code == 200


def test_seeding_rejects_duplicates_and_unknown_properties() -> None:
    state = HubSpotState()
    state.add_contact("a@example.org")
    with pytest.raises(ValueError, match="already exists"):
        state.add_contact("A@EXAMPLE.ORG")
    with pytest.raises(ValueError, match="unknown contacts properties"):
        state.add_contact("b@example.org", shoe_size="42")
    with pytest.raises(KeyError):
        state.add_note("999", "orphan")


async def test_unset_properties_are_left_out_never_null(hub: Running) -> None:
    read = await hub.http.get(f"/crm/v3/objects/contacts/{hub.lea}", params={"properties": "firstname,phone,fax"})
    assert read.json()["properties"] == {"firstname": "Lea"}  # phone and fax unset: absent, not null
    found = (await hub.http.post("/crm/v3/objects/contacts/search",
                                 json=search_body("lea.petit@example.org", properties=["email", "jobtitle"]))).json()
    assert all(value is not None for r in found["results"] for value in r["properties"].values())
    assert "jobtitle" not in found["results"][0]["properties"]


async def test_secondary_addresses_are_tokens_and_sorts_order_results(hub: Running) -> None:
    other = hub.state.add_contact("paul@example.org", hs_additional_emails="Lea.Old@Example.org;pm@example.org")
    by_token = {"filterGroups": [{"filters": [
        {"propertyName": "hs_additional_emails", "operator": "CONTAINS_TOKEN", "value": "lea.old@example.org"}]}]}
    found = (await hub.http.post("/crm/v3/objects/contacts/search", json=by_token)).json()
    assert [r["id"] for r in found["results"]] == [other]
    partial = {"filterGroups": [{"filters": [
        {"propertyName": "hs_additional_emails", "operator": "CONTAINS_TOKEN", "value": "old@example.org"}]}]}
    assert (await hub.http.post("/crm/v3/objects/contacts/search", json=partial)).json()["results"] == []

    everyone = {"filterGroups": [{"filters": [{"propertyName": "email", "operator": "HAS_PROPERTY"}]}],
                "sorts": [{"propertyName": "hs_object_id", "direction": "DESCENDING"}], "after": "0", "limit": 100}
    ids = [r["id"] for r in (await hub.http.post("/crm/v3/objects/contacts/search", json=everyone)).json()["results"]]
    assert ids == sorted(ids, key=int, reverse=True) and len(ids) == 6

    deleted = await hub.http.post("/crm/v3/objects/contacts/gdpr-delete", json={"objectId": other})
    assert deleted.status_code == 204
    # HubSpot blocklists a deleted contact's addresses, primary and additional.
    assert all(hub.state.is_blocklisted(a) for a in ("paul@example.org", "lea.old@example.org", "pm@example.org"))


# --- communication preferences (v3) ------------------------------------------------------------------------


async def test_subscription_definitions_and_statuses_in_hubspots_shape(hub: Running) -> None:
    definitions = (await hub.http.get("/communication-preferences/v3/definitions")).json()["subscriptionDefinitions"]
    assert [d["id"] for d in definitions] == ["7001", "7002", "7003"]
    for definition in definitions:  # the description's required fields
        assert {"createdAt", "description", "id", "isActive", "isDefault", "isInternal", "name",
                "updatedAt"} <= set(definition)
    hub.state.subscribe("Lea.Petit@Example.org", "7001")
    answer = (await hub.http.get("/communication-preferences/v3/status/email/lea.petit@example.org")).json()
    assert answer["recipient"] == "lea.petit@example.org"
    assert [(s["id"], s["status"]) for s in answer["subscriptionStatuses"]] == [("7001", "SUBSCRIBED")]


async def test_unsubscribe_needs_a_legal_basis_and_refuses_a_second_time(hub: Running) -> None:
    hub.state.subscribe("lea.petit@example.org", "7002")
    body = {"emailAddress": "Lea.Petit@example.org", "subscriptionId": "7002"}
    assert_hubspot_error(await hub.http.post("/communication-preferences/v3/unsubscribe", json=body), 400,
                         "VALIDATION_ERROR")
    assert hub.state.subscription_status("lea.petit@example.org", "7002") == "SUBSCRIBED"
    body |= {"legalBasis": "LEGITIMATE_INTEREST_OTHER", "legalBasisExplanation": "Objection, Art. 21 GDPR"}
    done = await hub.http.post("/communication-preferences/v3/unsubscribe", json=body)
    assert done.status_code == 200 and done.json()["status"] == "NOT_SUBSCRIBED"
    assert hub.state.subscription_status("lea.petit@example.org", "7002") == "NOT_SUBSCRIBED"
    again = assert_hubspot_error(await hub.http.post("/communication-preferences/v3/unsubscribe", json=body), 400,
                                 "VALIDATION_ERROR")
    assert "already unsubscribed" in str(again["message"])
    unknown = await hub.http.post("/communication-preferences/v3/unsubscribe", json=body | {"subscriptionId": "9"})
    assert_hubspot_error(unknown, 404, "OBJECT_NOT_FOUND")
