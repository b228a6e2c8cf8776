"""A worker killed (SIGKILL) while it sends the final reply: the reply activity heartbeats, so another worker
takes it over after the heartbeat timeout (15 s), not the 30-minute start-to-close timeout, and the subject
gets one reply; killed once the server took the reply, the reply goes again with the same Message-ID, marked a
possible duplicate. Real processes, a real dev server, a real SMTP server."""

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
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.service import RPCError

from dsr.config.settings import Settings
from dsr.domain.model import IdentityMethod, Outcome, Stage
from dsr.store.ledger import Ledger
from dsr.store.mail_sends import MailSends
from intake.submission import Submission, prepare, start
from tests.harness import TEST_KEYRING, free_port
from tests.servers import start_dev_server
from workflows.contract import STEP_HEARTBEAT
from workflows.request import DataSubjectRequest

pytestmark = pytest.mark.slow  # workers killed and restarted

DEMO_PROFILE = (Path(__file__).resolve().parents[2] / "sandbox" / "demo_profile.toml").read_text()
EMAIL = "late.reader@example.org"


def _data(envelope: Envelope) -> bytes:
    """The message as received: the Controller's default (decode_data=False) keeps it as bytes."""
    assert isinstance(envelope.content, bytes)
    return envelope.content


class HoldsTheFirstReply:
    """Takes every email, except the subject's second one (the reply; the first is the acknowledgement): that
    one it holds unanswered, as a slow relay would, so the worker can be killed in the middle of sending it."""

    def __init__(self) -> None:
        self.delivered: list[email.message.EmailMessage] = []
        self.holding = threading.Event()
        self._to_subject = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if EMAIL in envelope.rcpt_tos:
            self._to_subject += 1
            if self._to_subject == 2:
                self.holding.set()
                await asyncio.sleep(60)  # the sender dies meanwhile: this message was never accepted
                return "451 too late"
        self.delivered.append(email.message_from_bytes(_data(envelope), policy=email.policy.default))
        return "250 OK"


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "from worker import main; main()"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


@contextlib.asynccontextmanager
async def reply_stack(tmp_path: Path, relay: object) -> AsyncIterator[Stack]:
    """A dev server, an SMTP relay, worker processes (started by the test) and an erasure request."""
    smtp = Controller(relay, hostname="127.0.0.1", port=free_port())
    smtp.start()
    temporal = await start_dev_server()
    stack = Stack(tmp_path, temporal)
    try:
        (tmp_path / "dsr.toml").write_text(DEMO_PROFILE)  # no systems: an erasure answers "no data"
        stack.env = {
            **os.environ,
            "DSR_HOME": str(tmp_path),
            "DSR_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
            "DSR_KEYS": "test-1:" + base64.b64encode(bytes(range(32))).decode(),
            "TEMPORAL_ADDRESS": temporal.client.service_client.config.target_host,
            "DSR_TASK_QUEUE": f"reply-crash-{uuid.uuid4()}",
            "DSR_SMTP_HOST": "127.0.0.1",
            "DSR_SMTP_PORT": str(smtp.port),
        }
        yield stack
    finally:
        for worker in stack.workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        await temporal.shutdown()
        smtp.stop()


class Stack:
    def __init__(self, tmp_path: Path, temporal: Any) -> None:
        self.tmp_path, self.temporal = tmp_path, temporal
        self.env: dict[str, str] = {}
        self.workers: list[subprocess.Popen[bytes]] = []

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = start_worker(self.env, self.tmp_path / f"worker-{len(self.workers) + 1}.log")
        self.workers.append(worker)
        return worker

    async def submit(self) -> tuple[Any, Any]:
        settings = Settings.from_env(self.env)
        settings = replace(settings, policy=replace(settings.policy, identity=IdentityMethod.TRUSTED))
        request = prepare(Submission(kind="erasure", email=EMAIL), settings)
        handle = await start(self.temporal.client, request, task_queue=self.env["DSR_TASK_QUEUE"])
        return request, handle

    async def until_closed(self, handle: Any) -> Any:
        final = None
        for _ in range(900):  # until closed (heartbeat timeout, then the retry)
            with contextlib.suppress(RPCError):  # the new worker's first poll
                final = await handle.query(DataSubjectRequest.status)
            if final is not None and final.stage == Stage.CLOSED:
                break
            await asyncio.sleep(0.2)
        return final

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp_path.glob("worker-*.log")))


async def reply_attempts(handle: Any) -> list[tuple[int, int]]:
    """Each ``send_reply`` activity: (its last attempt, how its first attempt ended: 0 completed, else the
    timeout type)."""
    history = await handle.fetch_history()
    scheduled = {e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
                 for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED}
    ended = {}
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
            attrs = e.activity_task_timed_out_event_attributes
            ended[attrs.scheduled_event_id] = attrs.failure.timeout_failure_info.timeout_type
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            ended[e.activity_task_completed_event_attributes.scheduled_event_id] = 0
    return [(event_id, ended.get(event_id, -1)) for event_id, name in scheduled.items() if name == "send_reply"]


async def test_reply_of_a_killed_worker_is_sent_by_another_within_seconds(tmp_path: Path) -> None:
    relay = HoldsTheFirstReply()
    async with reply_stack(tmp_path, relay) as stack:
        stack.start_worker()
        request, handle = await stack.submit()
        for _ in range(300):
            if relay.holding.is_set():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the reply never reached the relay:\n" + stack.logs())
        os.killpg(stack.workers[0].pid, signal.SIGKILL)
        stack.workers[0].wait()
        killed_at = time.monotonic()

        stack.start_worker()
        final = await stack.until_closed(handle)
        took = time.monotonic() - killed_at
        assert final is not None and final.stage == Stage.CLOSED and final.outcome == Outcome.FULFILLED, final
        # Seconds, not the 30-minute start-to-close timeout: heartbeat timeout plus the workflow task's return
        # (the retried reply starts at once: the first try's failure schedules it).
        assert took < STEP_HEARTBEAT.total_seconds() + 30, took

        # The killed first try was given up on its heartbeat; the retried reply completed.
        attempts = [ended for _, ended in await reply_attempts(handle)]
        assert attempts == [TimeoutType.TIMEOUT_TYPE_HEARTBEAT, 0], attempts
        to_subject = [m for m in relay.delivered if m["To"] == EMAIL]
        assert len(to_subject) == 2, [m["Subject"] for m in to_subject]  # the acknowledgement, one reply
        assert request.request_id in to_subject[1]["Subject"]


class KillsOnAcceptance:
    """Takes every email. The reply (the subject's second email) it files, then kills the worker sending it
    before answering 250: the message is accepted (a relay would deliver it), the worker never learns it and never
    writes its sent-log."""

    def __init__(self) -> None:
        self.delivered: list[email.message.EmailMessage] = []
        self.kill: Callable[[], None] | None = None
        self.killed_at = 0.0
        self._to_subject = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.delivered.append(email.message_from_bytes(_data(envelope), policy=email.policy.default))
        if EMAIL in envelope.rcpt_tos:
            self._to_subject += 1
            if self._to_subject == 2 and self.kill is not None:
                self.kill()
                self.killed_at = time.monotonic()
        return "250 OK"


async def test_a_worker_killed_once_the_server_took_the_reply_resends_it_flagged(tmp_path: Path) -> None:
    """The window SMTP leaves open (issue 11): the subject gets the reply twice, with one Message-ID, and the
    ledger says it may have: the reply's sent-log and its send intent are marked possible_duplicate."""
    relay = KillsOnAcceptance()
    async with reply_stack(tmp_path, relay) as stack:
        first = stack.start_worker()

        def kill() -> None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()

        relay.kill = kill
        request, handle = await stack.submit()
        for _ in range(300):
            if relay.killed_at:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the reply never reached the relay:\n" + stack.logs())
        stack.start_worker()
        final = await stack.until_closed(handle)
        took = time.monotonic() - relay.killed_at
        assert final is not None and final.stage == Stage.CLOSED and final.outcome == Outcome.FULFILLED, final
        assert took < 120, took  # the rule for `replying` after a worker died
        assert final.mail_pending == []

        to_subject = [m for m in relay.delivered if m["To"] == EMAIL]
        assert len(to_subject) == 3, [m["Subject"] for m in to_subject]  # the acknowledgement, the reply twice
        assert to_subject[1]["Message-ID"] == to_subject[2]["Message-ID"]
        with Ledger(stack.env["DSR_DATABASE_URL"], TEST_KEYRING) as ledger:
            replies = [e.details for e in ledger.events(request.request_id)
                       if e.event == "notice_sent" and e.details["template"].startswith("reply_")]
            assert replies == [{"template": replies[0]["template"], "message_id": to_subject[1]["Message-ID"],
                                "possible_duplicate": "true"}], replies
            [row] = MailSends(ledger.engine).possible_duplicates(request.request_id)
            assert row.message_id == to_subject[1]["Message-ID"] and row.attempts == 2 and row.state == "sent"
