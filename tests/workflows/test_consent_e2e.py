"""Withdrawal of consent end to end: the demo profile's purposes, the HubSpot sandbox's communication-preferences
endpoints, the demo application database (SQLite) and the WooCommerce sandbox, through the workflow on the
time-skipping server; and the sql connector's action for a marketing objection, verified by re-query."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import create_engine, func, select
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from connectors.base import OperationJob
from connectors.config import build_connector, parse_config
from connectors.hubspot import HubSpotConnector
from connectors.sql import SqlConnector
from connectors.woocommerce import WooCommerceConnector
from dsr.config.settings import Settings
from dsr.domain.model import Outcome, RecordAction, RequestStatus, Stage, Subject
from dsr.store.ledger import Ledger
from dsr.store.suppressions import SuppressionList
from dsr.web.serve import serve_app
from intake.submission import Submission, prepare, start
from sandbox import appdb
from sandbox.hubspot import HubSpotState, hubspot_app
from sandbox.woocommerce import WooState, woocommerce_app
from tests.harness import MailSink, exports_of, text_of
from tests.servers import validated_once
from tests.workflows.support import demo_profile
from worker import build_worker
from workflows.request import DataSubjectRequest

ROOT = Path(__file__).resolve().parents[2]
EMAIL = "Camille.Durand@example.org"  # as the subject types it; the systems hold it in lower case
TOKEN, KEY, SECRET, HASH_KEY = "pat-test", "ck_test", "cs_test", "test-hash-key"
NEWSLETTER, OFFERS, PARTNERS = "7001", "7002", "7003"


@dataclass
class Systems:
    hubspot: HubSpotState
    app_url: str
    connectors: list[HubSpotConnector | WooCommerceConnector | SqlConnector]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The demo's controller profile in dsr.toml: the intake freezes its consent purposes into the request."""
    Path(settings.config_file).write_text((ROOT / "sandbox" / "demo_profile.toml").read_text(encoding="utf-8"),
                                          encoding="utf-8")
    return settings


def sql_connector(url: str) -> SqlConnector:
    built = build_connector(parse_config(appdb.DEMO_MAP).connectors[0], {appdb.URL_ENV: url,
                                                                        appdb.HASH_KEY_ENV: HASH_KEY})
    assert isinstance(built, SqlConnector)
    return built


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    engine = create_engine(url)
    appdb.seed(engine, fillers=30, heavy=False)
    engine.dispose()
    yield url


def subscriptions(url: str, email: str | None = None) -> int:
    engine = create_engine(url)
    try:
        table = appdb.newsletter_subscriptions
        query = select(func.count()).select_from(table)
        if email is not None:
            query = query.where(func.lower(table.c.email) == email.lower())
        with engine.connect() as conn:
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


@pytest_asyncio.fixture
async def systems(app_url: str) -> AsyncIterator[Systems]:
    hubspot, woo = HubSpotState(), WooState()
    hubspot.add_contact(EMAIL.lower(), firstname="Camille", lastname="Durand")
    for sub_id in (NEWSLETTER, OFFERS, PARTNERS):
        hubspot.subscribe(EMAIL, sub_id)
    woo.add_customer(EMAIL.lower(), "Camille", "Durand")
    crm = await serve_app(hubspot_app(hubspot, token=TOKEN), port=0)
    shop = await serve_app(woocommerce_app(woo, consumer_key=KEY, consumer_secret=SECRET), port=0)
    connectors: list[HubSpotConnector | WooCommerceConnector | SqlConnector] = [
        HubSpotConnector("hubspot", token=TOKEN, base_url=crm.url),
        WooCommerceConnector("woocommerce", consumer_key=KEY, consumer_secret=SECRET, base_url=shop.url),
        sql_connector(app_url),
    ]
    try:
        yield Systems(hubspot, app_url, connectors)
    finally:
        for connector in connectors:
            await connector.aclose()
        await crm.stop()
        await shop.stop()


async def withdraw(env: WorkflowEnvironment, settings: Settings, ledger: Ledger, systems: Systems,
                   purposes: list[str]) -> RequestStatus:
    task_queue = f"consent-{uuid.uuid4()}"
    request = prepare(Submission(kind="consent_withdrawal", email=EMAIL, language="en", purposes=purposes),
                      settings, now=await env.get_current_time())
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
        async with build_worker(env.client, settings, ledger, systems.connectors, exports=exports_of(settings),
                                profile=demo_profile, task_queue=task_queue, executor=executor,
                                workflow_runner=validated_once()):
            handle = await start(env.client, request, task_queue=task_queue)
            with env.auto_time_skipping_disabled():
                for _ in range(300):
                    status: RequestStatus = await handle.query(DataSubjectRequest.status)
                    if status.stage == Stage.CLOSED:
                        with contextlib.suppress(RPCError):  # the residual follow-up would wait for an operator
                            await handle.terminate("test over")
                        return status
                    await asyncio.sleep(0.1)
            raise AssertionError(f"withdrawal still {status.stage}")


async def test_a_withdrawal_unsubscribes_the_purposes_types_and_deletes_the_subscription_row(
    time_skipping: WorkflowEnvironment, settings: Settings, ledger: Ledger, mail: MailSink, systems: Systems,
) -> None:
    others = subscriptions(systems.app_url) - subscriptions(systems.app_url, EMAIL)
    assert subscriptions(systems.app_url, EMAIL) == 1
    final = await withdraw(time_skipping, settings, ledger, systems, ["newsletter"])
    assert final.outcome == Outcome.FULFILLED
    # Only the systems the purpose maps: HubSpot and the application database (not WooCommerce).
    assert {c.connector for c in final.connectors} == {"hubspot", "app"} and final.residuals == []
    # HubSpot: the purpose's two types, through communication preferences, never by editing a property; the
    # partner offers, another purpose, stay subscribed.
    assert systems.hubspot.subscription_status(EMAIL, NEWSLETTER) == "NOT_SUBSCRIBED"
    assert systems.hubspot.subscription_status(EMAIL, OFFERS) == "NOT_SUBSCRIBED"
    assert systems.hubspot.subscription_status(EMAIL, PARTNERS) == "SUBSCRIBED"
    assert systems.hubspot.patches == []
    # The database: the person's subscription row is gone, everyone else's is still there.
    assert subscriptions(systems.app_url, EMAIL) == 0
    assert subscriptions(systems.app_url) == others
    assert list(SuppressionList(ledger).withdrawn(EMAIL)) == ["newsletter"]
    reply = " ".join(text_of(mail.to(EMAIL)[-1]).split())
    assert ("our customer relationship management tool (HubSpot) - Sending our newsletter and promotional offers: "
            "done, your consent is withdrawn in this system") in reply
    assert ("our application (its database) - Sending our newsletter and promotional offers: done, your consent "
            "is withdrawn in this system") in reply

    # Then every consent purpose: the partner offers go in HubSpot, the shop leaves its box to the operator, and
    # what the first withdrawal did is said as such.
    final = await withdraw(time_skipping, settings, ledger, systems, [])
    assert systems.hubspot.subscription_status(EMAIL, PARTNERS) == "NOT_SUBSCRIBED"
    assert [line.split(" - ")[0] for line in final.residuals] == ["woocommerce: consent partner_offers"]
    app = next(c.outcome for c in final.connectors if c.connector == "app")
    assert app is not None and [line.action for line in app.report] == [RecordAction.UNCHANGED]
    reply = " ".join(text_of(mail.to(EMAIL)[-1]).split())
    assert "Sending our newsletter and promotional offers (you had already withdrawn this consent" in reply
    assert "Sending offers from our partners: this system has no setting we can change automatically" in reply


async def test_sql_stops_marketing_for_an_objection_as_its_map_says(app_url: str) -> None:
    connector = sql_connector(app_url)
    try:
        assert connector.marketing is not None and connector.marketing.table == "newsletter_subscriptions"
        others = subscriptions(app_url) - 1
        outcome = await connector.stop_marketing(OperationJob(request_id="dsr-2026-12-AAAAAA",
                                                              subject=Subject(EMAIL)))
        assert [(r.action, r.note) for r in outcome.report] == [
            (RecordAction.UNSUBSCRIBED, "newsletter_subscriptions: 1 row(s) deleted")]
        assert subscriptions(app_url, EMAIL) == 0 and subscriptions(app_url) == others
        again = await connector.stop_marketing(OperationJob(request_id="dsr-2026-12-AAAAAA",
                                                            subject=Subject(EMAIL)))
        assert [r.action for r in again.report] == [RecordAction.UNCHANGED]
    finally:
        await connector.aclose()


async def test_sql_withdraws_consent_by_setting_values_and_reads_them_back(app_url: str) -> None:
    from dsr.domain.model import ConsentAction

    connector = sql_connector(app_url)
    action = ConsentAction(purpose="profiling", table="users", email_column="email",
                           set_values={"last_name": "opted-out"})
    job = OperationJob(request_id="dsr-2026-12-BBBBBB", subject=Subject(EMAIL), consent=[action])
    try:
        outcome = await connector.withdraw_consent(job)
        assert [(r.dataset, r.record_id, r.action, r.note) for r in outcome.report] == [
            ("consent", "profiling", RecordAction.WITHDRAWN, "users: 1 row(s) set last_name = opted-out")]
        engine = create_engine(app_url)
        with engine.connect() as conn:
            users = appdb.metadata.tables["users"]
            names = conn.execute(select(users.c.last_name).where(func.lower(users.c.email) == EMAIL.lower()))
            assert [row[0] for row in names] == ["opted-out"]
        engine.dispose()
        again = await connector.withdraw_consent(job)
        assert [r.action for r in again.report] == [RecordAction.UNCHANGED]
    finally:
        await connector.aclose()


async def test_hubspot_refuses_a_subscription_type_the_portal_does_not_have(systems: Systems) -> None:
    from connectors.base import PermanentConnectorError
    from dsr.domain.model import ConsentAction

    hubspot = systems.connectors[0]
    assert isinstance(hubspot, HubSpotConnector)
    # By id works as by name; a name the portal does not have is the profile's mistake, told to the operator.
    done = await hubspot.withdraw_consent(OperationJob(request_id="dsr-2026-12-CCCCCC", subject=Subject(EMAIL),
                                                       consent=[ConsentAction(purpose="p", subscriptions=["7003"])]))
    assert [(r.record_id, r.action) for r in done.report] == [("p", RecordAction.WITHDRAWN)]
    assert systems.hubspot.subscription_status(EMAIL, PARTNERS) == "NOT_SUBSCRIBED"
    with pytest.raises(PermanentConnectorError, match="not in the portal"):
        await hubspot.withdraw_consent(OperationJob(request_id="dsr-2026-12-CCCCCC", subject=Subject(EMAIL),
                                                    consent=[ConsentAction(purpose="p", subscriptions=["Nope"])]))
    assert systems.hubspot.subscription_status(EMAIL, NEWSLETTER) == "SUBSCRIBED"  # nothing else touched
