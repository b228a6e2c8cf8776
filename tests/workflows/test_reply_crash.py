"""A worker killed (SIGKILL) while it sends the final reply: the reply activity heartbeats, so another worker
takes it over after the heartbeat timeout (30 s), not the 30-minute start-to-close timeout, and the subject
gets one reply. Real processes, a real dev server, a real SMTP server that holds the first reply."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.service import RPCError

from dsr.config.settings import Settings
from dsr.domain.model import IdentityMethod, Outcome, Stage
from intake.submission import Submission, prepare, start
from tests.harness import free_port
from tests.servers import start_dev_server
from workflows.contract import STEP_HEARTBEAT
from workflows.request import DataSubjectRequest

pytestmark = pytest.mark.slow  # workers killed and restarted

DEMO_PROFILE = (Path(__file__).resolve().parents[2] / "sandbox" / "demo_profile.toml").read_text()
EMAIL = "late.reader@example.org"


class HoldsTheFirstReply:
    """Takes every email, except the subject's second one (the reply; the first is the acknowledgement): that
    one it holds unanswered, as a slow relay would, so the worker can be killed in the middle of sending it."""

    def __init__(self) -> None:
        self.delivered: list[email.message.EmailMessage] = []
        self.holding = threading.Event()
        self._to_subject = 0

    async def handle_DATA(self, server, session, envelope):
        if EMAIL in envelope.rcpt_tos:
            self._to_subject += 1
            if self._to_subject == 2:
                self.holding.set()
                await asyncio.sleep(60)  # the sender dies meanwhile: this message was never accepted
                return "451 too late"
        self.delivered.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "from worker import main; main()"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


async def test_reply_of_a_killed_worker_is_sent_by_another_within_seconds(tmp_path: Path) -> None:
    relay = HoldsTheFirstReply()
    smtp = Controller(relay, hostname="127.0.0.1", port=free_port())
    smtp.start()
    temporal = await start_dev_server()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        (tmp_path / "dsr.toml").write_text(DEMO_PROFILE)  # no systems: an erasure answers "no data"
        env = {
            **os.environ,
            "DSR_HOME": str(tmp_path),
            "DSR_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
            "DSR_KEYS": "test-1:" + base64.b64encode(bytes(range(32))).decode(),
            "TEMPORAL_ADDRESS": temporal.client.service_client.config.target_host,
            "DSR_TASK_QUEUE": f"reply-crash-{uuid.uuid4()}",
            "DSR_SMTP_HOST": "127.0.0.1",
            "DSR_SMTP_PORT": str(smtp.port),
        }
        settings = Settings.from_env(env)
        settings = replace(settings, policy=replace(settings.policy, identity=IdentityMethod.TRUSTED))
        request = prepare(Submission(kind="erasure", email=EMAIL), settings)
        workers.append(start_worker(env, tmp_path / "worker-1.log"))
        handle = await start(temporal.client, request, task_queue=env["DSR_TASK_QUEUE"])

        for _ in range(300):
            if relay.holding.is_set():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the reply never reached the relay:\n" + (tmp_path / "worker-1.log").read_text())
        os.killpg(workers[0].pid, signal.SIGKILL)
        workers[0].wait()
        killed_at = time.monotonic()

        workers.append(start_worker(env, tmp_path / "worker-2.log"))
        final = None
        for _ in range(600):  # until closed (heartbeat timeout, then the retry's backoff)
            with contextlib.suppress(RPCError):  # the new worker's first poll
                final = await handle.query(DataSubjectRequest.status)
            if final is not None and final.stage == Stage.CLOSED:
                break
            await asyncio.sleep(0.2)
        took = time.monotonic() - killed_at
        assert final is not None and final.stage == Stage.CLOSED and final.outcome == Outcome.FULFILLED, final
        # Seconds, not the 30-minute start-to-close timeout: heartbeat timeout plus the first retry interval.
        assert took < STEP_HEARTBEAT.total_seconds() + 45, took

        history = await handle.fetch_history()
        scheduled = {e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
                     for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED}
        retried = [(scheduled[e.activity_task_started_event_attributes.scheduled_event_id],
                    e.activity_task_started_event_attributes.last_failure.timeout_failure_info.timeout_type)
                   for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
                   and e.activity_task_started_event_attributes.attempt > 1]
        # The killed attempt was given up on its heartbeat, and only the reply needed another attempt.
        assert retried == [("send_reply", TimeoutType.TIMEOUT_TYPE_HEARTBEAT)], retried
        to_subject = [m for m in relay.delivered if m["To"] == EMAIL]
        assert len(to_subject) == 2, [m["Subject"] for m in to_subject]  # the acknowledgement, one reply
        assert request.request_id in to_subject[1]["Subject"]
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        await temporal.shutdown()
        smtp.stop()
