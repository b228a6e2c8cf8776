"""Identifiers other than the email: ``subject = { table = "users", email = "email", customer_id = "id", phone =
"phone", phone_prefix = "+33" }`` locates, exports and erases the subject by a customer id or a telephone number
(compared by its digits, national or international) on SQLite, PostgreSQL and MariaDB; intake takes them only from
a channel that vouches for them (an authenticated API caller, staff's ``dsr submit``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine, select

from connectors.base import ExportJob, OperationJob, unexpected_remains
from connectors.config import ConfigFileError, build_connector, parse_config
from connectors.sql import SqlConnector, phone_forms
from dsr.domain.model import RecordAction, RequestKind, Subject
from dsr.store.guards import Guards
from intake.service import Accepted
from intake.submission import Submission, SubmissionError, prepare
from intake.web.api import api_router
from sandbox import appdb
from sandbox.appdb import DEMO_MAP, PEOPLE, seed
from tests.connectors.test_sql import BACKENDS, Sink, _fresh
from tests.mariadb import mariadb_admin_url  # noqa: F401 - fixture

HASH_KEY = "identifiers-hash-key"
IDENTIFIED_MAP = DEMO_MAP.replace(
    'subject = { table = "users", email = "email" }',
    'subject = { table = "users", email = "email", customer_id = "id", phone = "phone", phone_prefix = "+33" }')
STALE = "camille.old-address@example.org"  # an address the database does not hold


@pytest.fixture(params=BACKENDS)
def demo_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    for url in _fresh(request, str(request.param), tmp_path):
        engine = create_engine(url)
        seed(engine, fillers=20, heavy=False)
        engine.dispose()
        yield url


def _app(url: str, sql_map: str = IDENTIFIED_MAP) -> SqlConnector:
    built = build_connector(parse_config(sql_map).connectors[0], {appdb.URL_ENV: url, appdb.HASH_KEY_ENV: HASH_KEY})
    assert isinstance(built, SqlConnector)
    return built


def _camille(url: str) -> tuple[int, str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(appdb.metadata.tables["users"].c.id, appdb.metadata.tables["users"].c.phone)
                               .where(appdb.metadata.tables["users"].c.email == PEOPLE[0].email)).one()
            return int(row[0]), str(row[1])
    finally:
        engine.dispose()


def test_a_phone_number_has_its_international_and_national_forms() -> None:
    forms = {"+33612345678", "0033612345678", "33612345678", "0612345678"}
    assert phone_forms("+33 6 12 34 56 78", "+33") == forms
    assert phone_forms("06.12.34.56.78", "+33") == forms
    assert phone_forms("0033 (6) 12-34-56-78", "+33") == forms
    assert phone_forms("+33 6 12 34 56 78") == forms - {"0612345678"}  # no calling code known: no national form
    assert phone_forms("06 12 34 56 78") == {"0612345678"}  # national, its country unknown: only as given
    assert phone_forms("") == phone_forms("0") == phone_forms("12 34") == set()  # too short to find anyone by


def test_the_map_checks_the_identifier_columns() -> None:
    with pytest.raises(ConfigFileError, match=r"subject\.phone_prefix: goes with subject\.phone"):
        parse_config(DEMO_MAP.replace('email = "email" }', 'email = "email", phone_prefix = "+33" }'))
    with pytest.raises(ConfigFileError, match=r"column users\.customer_no is used by the map but not mapped"):
        parse_config(DEMO_MAP.replace('email = "email" }', 'email = "email", customer_id = "customer_no" }'))
    with pytest.raises(ConfigFileError, match=r"subject\.phone_prefix"):
        parse_config(IDENTIFIED_MAP.replace('"+33"', '"33"'))


async def test_a_customer_id_or_a_phone_finds_the_subject_whose_address_changed(demo_db: str) -> None:
    customer_no, phone = _camille(demo_db)
    national = "0" + "".join(ch for ch in phone if ch.isdigit())[2:]  # +33 6 … -> 06…
    app, email_only = _app(demo_db), _app(demo_db, DEMO_MAP)
    try:
        everything = sorted((loc.dataset, loc.record_id) for loc in await app.locate(Subject(PEOPLE[0].email)))
        assert len(everything) == appdb.rows_of(PEOPLE[0])
        for subject in (Subject(STALE, customer_id=str(customer_no)), Subject(STALE, phone=national),
                        Subject(STALE, phone=phone), Subject(PEOPLE[0].email, customer_id="999999")):
            found = sorted((loc.dataset, loc.record_id) for loc in await app.locate(subject))
            assert found == everything, subject
        # The written map names no identifier column: the request's other identifiers are not used.
        assert await email_only.locate(Subject(STALE, customer_id=str(customer_no), phone=phone)) == []
        assert await app.locate(Subject(STALE, customer_id="999999", phone="+44 20 7946 0000")) == []
        sink = Sink()
        exported = await app.export(ExportJob("dsr-2026-12-IDEXPO", Subject(STALE, phone=national), sink))
        by_email = await app.export(ExportJob("dsr-2026-12-IDEXPE", Subject(PEOPLE[0].email), Sink()))
        assert exported.datasets == by_email.datasets and exported.found > appdb.rows_of(PEOPLE[0])  # and organisations
        assert [r["email"] for r in sink.writers["users"].records] == [PEOPLE[0].email]
        erased = await app.erase(OperationJob("dsr-2026-12-IDERAS", Subject(STALE, customer_id=str(customer_no))))
        assert unexpected_remains(erased, await app.locate(Subject(STALE, customer_id=str(customer_no)))) == []
        assert unexpected_remains(erased, await app.locate(Subject(PEOPLE[0].email))) == []
        lines = {(line.dataset, line.record_id): line.action for line in erased.report}
        assert lines[("users", str(customer_no))] == RecordAction.DELETED
        assert lines[("newsletter_subscriptions", "1")] == RecordAction.ANONYMISED  # reached by the address held
        assert len(await app.locate(Subject(PEOPLE[1].email))) == appdb.rows_of(PEOPLE[1])  # nobody else's
    finally:
        await app.aclose()
        await email_only.aclose()


# --- intake: only a channel that vouches for them -----------------------------------------------------------


def test_prepare_carries_the_identifiers_and_refuses_a_phone_that_is_not_one(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    from dsr.config.settings import Settings

    monkeypatch.setenv("DSR_HOME", str(tmp_path))
    settings = Settings.from_env()
    request = prepare(Submission(kind="access", email="a@example.org", customer_id=" C-42 ", phone="+33 6 12 34 56 78"),
                      settings)
    assert (request.subject.customer_id, request.subject.phone) == ("C-42", "+33 6 12 34 56 78")
    with pytest.raises(SubmissionError, match=r"^phone must be a telephone number"):
        prepare(Submission(kind="access", email="a@example.org", phone="call me"), settings)
    with pytest.raises(SubmissionError, match=r"^customer_id is longer than 64"):
        prepare(Submission(kind="access", email="a@example.org", customer_id="x" * 65), settings)


class _Sink:
    """The engine's side of intake as far as the API sees it: checks the submission as the service does."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.taken: list[Submission] = []

    async def submit(self, submission: Submission, *, client: str | None = None) -> Accepted:
        prepare(submission, self.settings)
        self.taken.append(submission)
        today = datetime.now(UTC).date()
        return Accepted("dsr-2026-12-AAAAAA", RequestKind.ACCESS, today, today, today)

    async def triage(self, item: Any) -> str:
        raise AssertionError("no triage here")


@pytest.mark.parametrize(("token", "used"), [("partner-token", True), (None, False)])
async def test_the_api_uses_identifiers_only_from_an_authenticated_caller(
        token: str | None, used: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dsr.config.settings import Settings

    monkeypatch.setenv("DSR_HOME", str(tmp_path))
    sink = _Sink(Settings.from_env())
    app = FastAPI()
    app.include_router(api_router(sink, ticket_index=lambda value: value, guards=cast(Guards, None), api_token=token))
    # (the submission path below never consults the guards: the sink stands for the intake service)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake") as http:
        answer = await http.post("/api/requests", headers=headers, json={
            "kind": "access", "email": "a@example.org",
            "identifiers": {"customer_id": "C-42", "phone": "+33 6 12 34 56 78", "loyalty card": "9"}})
        assert answer.status_code == 202, answer.text
        bad = await http.post("/api/requests", headers=headers, json={
            "kind": "access", "email": "a@example.org", "identifiers": {"phone": "not a number"}})
    taken = sink.taken[0]
    assert (taken.customer_id, taken.phone) == (("C-42", "+33 6 12 34 56 78") if used else ("", ""))
    assert "loyalty card: 9" in taken.details and "customer_id: C-42" in taken.details  # staff read them all
    if used:
        assert bad.status_code == 422 and bad.json()["field"] == "identifiers", bad.text
    else:
        assert bad.status_code == 202  # never used: read by staff only, as before
