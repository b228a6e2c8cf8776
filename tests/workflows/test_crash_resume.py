"""A worker killed (SIGKILL) in the middle of a long export: the next worker -- on "another machine", with its
own DSR_HOME, sharing only Temporal, the ledger and the S3 bucket -- resumes from the heartbeated cursor
against the same objects, and the export holds every order exactly once. Real processes, a real dev server,
real HTTP, a real S3 API (moto's server)."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.client import WorkflowHandle

from connectors.woocommerce import PAGES_AT_ONCE
from dsr.config.settings import Settings
from dsr.domain.model import IdentityMethod, Outcome, Stage
from dsr.store import store_at
from dsr.store.crypto import data_converter
from dsr.store.exports import ExportStore
from dsr.web.serve import serve_app
from intake.submission import Submission, prepare, start
from sandbox.faults import Faults
from sandbox.woocommerce import WooState, woocommerce_app
from tests.conftest import S3Server
from tests.harness import TEST_KEYRING, MailSink
from tests.servers import start_dev_server
from workflows.request import DataSubjectRequest

pytestmark = pytest.mark.slow  # workers killed and restarted

DEMO_PROFILE = (Path(__file__).resolve().parents[2] / "sandbox" / "demo_profile.toml").read_text()
ORDERS = 4000
PAGES = ORDERS // 100
EMAIL = "bulk.buyer@example.org"


class CountOrderPages:
    """Counts the order pages the shop serves, to prove the second worker did not start over: all of them, and
    those of the customer's own listing (``customer=``) apart, since the billed search (``search=``) runs beside
    it and starts again from its first page after a crash (it keeps no cursor until its own stage)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.pages = 0
        self.listing_pages = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/orders") and scope["method"] == "GET":
            self.pages += 1
            if b"customer=" in scope.get("query_string", b""):
                self.listing_pages += 1
        await self.app(scope, receive, send)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "from worker import main; main()"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


async def written_orders(handle: WorkflowHandle) -> int:
    """Orders the running export has checkpointed, from the activity's last heartbeat."""
    described = await handle.describe()
    for pending in described.raw_description.pending_activities:
        if pending.heartbeat_details.payloads:
            details = await data_converter(TEST_KEYRING).decode(pending.heartbeat_details.payloads)
            cursor = details[0] if details else {}
            return int((cursor.get("written") or {}).get("orders", 0))
    return 0


async def test_killed_worker_resumes_the_export_from_its_cursor_on_another_machine(
    tmp_path: Path, mail: MailSink, s3_server: S3Server, s3_url: str,
) -> None:
    shop_state = WooState()
    customer = shop_state.add_customer(EMAIL, "Bulk", "Buyer", billing={"email": EMAIL, "first_name": "Bulk"})
    shop_state.bulk_orders(customer["id"], ORDERS)
    # Slow pages leave time to kill the worker mid-export (its heartbeats reach the server every 4 s at most, and
    # the chunks are stored behind the pages, which no longer wait for the bucket); the connector asks for
    # PAGES_AT_ONCE pages at once, so each takes that much longer.
    faults = Faults(delay_seconds=0.125 * PAGES_AT_ONCE)
    counted = CountOrderPages(woocommerce_app(shop_state, consumer_key="ck_x", consumer_secret="cs_x",
                                              faults=faults))
    shop = await serve_app(counted, port=0)
    temporal = await start_dev_server()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        homes = [tmp_path / "machine-1", tmp_path / "machine-2"]  # no disk shared between the two workers
        for home in homes:
            home.mkdir()
            (home / "dsr.toml").write_text(
                f'[[connectors]]\ntype = "woocommerce"\nbase_url = "{shop.url}"\n'
                'credentials = { consumer_key = "SHOP_KEY", consumer_secret = "SHOP_SECRET" }\n'
                "rate_limit = { requests = 1000, per_seconds = 1 }\n"
                + DEMO_PROFILE)
        task_queue = f"crash-{uuid.uuid4()}"
        env = {
            **os.environ,
            **s3_server.env,
            "DSR_STORAGE_URL": s3_url,
            "DSR_DATABASE_URL": f"sqlite:///{tmp_path / 'shared-ledger.sqlite3'}",
            "DSR_HOME": str(homes[0]),
            "DSR_KEYS": "test-1:" + base64.b64encode(bytes(range(32))).decode(),
            "TEMPORAL_ADDRESS": temporal.client.service_client.config.target_host,
            "DSR_TASK_QUEUE": task_queue,
            "DSR_SMTP_HOST": "127.0.0.1",
            "DSR_SMTP_PORT": str(mail.port),
            "SHOP_KEY": "ck_x",
            "SHOP_SECRET": "cs_x",
        }
        settings = Settings.from_env(env)
        settings = replace(settings, policy=replace(settings.policy, identity=IdentityMethod.TRUSTED,
                                                    connector_heartbeat_seconds=5))
        request = prepare(Submission(kind="access", email=EMAIL), settings)
        workers.append(start_worker(env, tmp_path / "worker-1.log"))
        handle = await start(temporal.client, request, task_queue=task_queue)

        for _ in range(300):  # until a few pages are checkpointed, then SIGKILL, mid-export
            if await written_orders(handle) >= 800:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the export never checkpointed:\n" + (tmp_path / "worker-1.log").read_text())
        os.killpg(workers[0].pid, signal.SIGKILL)
        workers[0].wait()
        pages_before_crash, listed_before_crash = counted.pages, counted.listing_pages
        assert listed_before_crash < PAGES, "killed too late to prove anything"

        workers.append(start_worker({**env, "DSR_HOME": str(homes[1])}, tmp_path / "worker-2.log"))
        final = None
        for _ in range(600):  # until closed; not result(): the workflow then waits for the link's expiry
            final = await handle.query(DataSubjectRequest.status)
            if final.stage == Stage.CLOSED:
                break
            await asyncio.sleep(0.2)
        assert final is not None and final.outcome == Outcome.FULFILLED, final

        exports = ExportStore(store_at(s3_url), TEST_KEYRING)
        orders = list(exports.read(request.request_id, "woocommerce", "orders"))
        ids = [o["id"] for o in orders]
        assert len(ids) == ORDERS and len(set(ids)) == ORDERS, "every order exactly once"
        # Resumed, not restarted: the second worker fetched only the pages after the last checkpoint. The export
        # reads the customer's order pages, then searches every order by billing email (orders of other accounts,
        # issue 17), which pages through hers again: a restart would fetch 2 * PAGES pages once more.
        assert counted.pages < pages_before_crash + 2 * PAGES
        # Her own listing, the part the cursor covers, went on from its last checkpoint (800 orders or more).
        assert counted.listing_pages <= listed_before_crash + PAGES - 8, (listed_before_crash, counted.listing_pages)
        history = await handle.fetch_history()
        attempts = [e.activity_task_started_event_attributes.attempt for e in history.events
                    if e.HasField("activity_task_started_event_attributes")]
        assert max(attempts) >= 2, "the export activity was retried after the crash"
        # Each worker left nothing on its own disk that the other needed: everything is in the bucket, sealed.
        for home in homes:
            assert sorted(p.name for p in home.iterdir()) == ["dsr.toml"], list(home.iterdir())
        bundle = s3_server.raw_objects(f"{s3_url.split('/', 3)[3]}/{exports.bundle_key(request.request_id)}")
        assert len(bundle) == 1 and b"bulk.buyer" not in next(iter(bundle.values()))
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        await temporal.shutdown()
        await shop.stop()
