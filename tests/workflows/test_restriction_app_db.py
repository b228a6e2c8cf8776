"""The demo application database under a restriction (Art. 18): its map names ``users.restricted_at``, so the
``sql`` connector marks the person's row when the restriction is answered and clears it at the lift, on SQLite and
PostgreSQL, through the real workflow on the time-skipping server (what ``make run`` does with the demo app)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import create_engine, select

from connectors.config import build_connector, parse_config
from connectors.sql import SqlConnector
from dsr.domain.model import IdentityMethod, Lift, Outcome, Stage, restriction_id
from intake.submission import Submission, prepare, start
from sandbox import appdb
from sandbox.appdb import DEMO_MAP, PEOPLE, seed
from tests.connectors.test_sql import _fresh
from tests.harness import text_of
from tests.workflows.support import Engine
from tests.workflows.test_restriction import eventually, restriction_status, time_runs_free
from workflows.request import DataSubjectRequest
from workflows.restriction import IN_FORCE, LIFTED, RestrictionInForce

PERSON = PEOPLE[0]


@pytest.fixture(params=["sqlite", "postgresql"])
def app_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    for url in _fresh(request, str(request.param), tmp_path):
        engine = create_engine(url)
        seed(engine, fillers=3, heavy=False)
        engine.dispose()
        yield url


@pytest_asyncio.fixture
async def connectors(app_url: str) -> AsyncIterator[list]:
    app = build_connector(parse_config(DEMO_MAP).connectors[0],
                          {appdb.URL_ENV: app_url, appdb.HASH_KEY_ENV: "restriction-test-key"})
    assert isinstance(app, SqlConnector)
    try:
        yield [app]
    finally:
        await app.aclose()


def restricted_at(url: str) -> dict[str, datetime | None]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(appdb.users.c.email, appdb.users.c.restricted_at)).all()
    finally:
        engine.dispose()
    return {email.lower(): at for email, at in rows}


async def test_the_demo_app_database_marks_the_person_restricted_then_clears_it_at_the_lift(
    engine: Engine, app_url: str,
) -> None:
    settings = replace(engine.settings, policy=replace(engine.settings.policy, identity=IdentityMethod.TRUSTED))
    request = prepare(Submission(kind="restriction", email=PERSON.email, name="Camille Durand", language="fr",
                                 ground="c"), settings, now=await engine.env.get_current_time())
    handle = await start(engine.client, request, task_queue=engine.task_queue)
    # Polled, not result() (see test_restriction.py): nothing else runs a timer while the restriction is in force.
    answered = await eventually(lambda: handle.query(DataSubjectRequest.status), lambda s: s.stage == Stage.CLOSED)
    assert answered.outcome == Outcome.FULFILLED
    marks = restricted_at(app_url)
    assert marks[PERSON.email.lower()] is not None  # "restricted since", on the person's row only
    assert [email for email, at in marks.items() if at is not None] == [PERSON.email.lower()]
    reply = " ".join(text_of(engine.mail.to(PERSON.email)[-1]).split())
    assert "Marqué comme limité" in reply

    restriction = engine.client.get_workflow_handle(restriction_id(request.request_id))
    await eventually(lambda: restriction_status(restriction), lambda s: s.state == IN_FORCE)
    scheduled = await restriction.execute_update(RestrictionInForce.lift,
                                                 Lift(reason="Procédure close.", requested_by="operator:alice"))
    assert scheduled.lift_at is not None
    assert restricted_at(app_url)[PERSON.email.lower()] is not None  # the subject is told first
    await time_runs_free(engine)  # the server skips to the lift's day (see test_restriction.py)
    lifted = await eventually(lambda: restriction_status(restriction), lambda s: s.state == LIFTED)
    assert lifted.failed == []
    assert all(at is None for at in restricted_at(app_url).values())
