"""Two intake replicas on one ledger database behave as one: a real Temporal dev server and worker, real HTTP,
the ledger on SQLite (a file) and on PostgreSQL (a real server).

Each replica has what a replica on another machine would have: its own ``Ledger`` object (engine, connection
pool), its own Temporal client, its own uvicorn server. Nothing is shared but the database and Temporal, so
whatever they agree on was agreed there: one workflow for a duplicate pair, exactly N submissions under a limit
of N, one lockout for wrong codes sent to either, one acceptance for a webhook delivered to both.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import hmac
import json
import os
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlmodel import Session, col
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from dsr.config.settings import ConfigError, Settings, SmtpSettings
from dsr.domain.model import Channel, Language, RequestKind, RequestRecordInput, Subject
from dsr.store.crypto import data_converter
from dsr.store.guards import AttemptLimitRow, RateLimitRow
from dsr.store.ledger import Ledger
from dsr.store.links import IdentityLinks
from dsr.web.serve import serve_app
from intake.server import build_intake_app
from intake.service import Accepted, IntakeService, RateLimited
from intake.submission import Submission
from intake.web.attempts import MAX_ATTEMPTS, MAX_CLIENT_ATTEMPTS
from tests.harness import TEST_KEYRING, MailSink, exports_of, file_exports, http_client
from tests.servers import validated_once
from worker import build_worker

pytestmark = pytest.mark.slow  # two intake replicas with their Temporal servers

ZENDESK_SECRET = "zendesk-replicas-secret"
RATE_PER_CLIENT = 6


@dataclass
class Replica:
    name: str
    service: IntakeService
    ledger: Ledger
    http: httpx.AsyncClient


@dataclass
class Cluster:
    settings: Settings
    env: dict[str, str]  # the environment a `dsr` command of this deployment runs with
    temporal: Client
    a: Replica
    b: Replica

    @property
    def replicas(self) -> tuple[Replica, Replica]:
        return self.a, self.b


@pytest_asyncio.fixture
async def cluster(dev_server: WorkflowEnvironment, database_url: str, mail: MailSink, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    monkeypatch.setenv("DSR_ZENDESK_WEBHOOK_SECRET", ZENDESK_SECRET)
    target = dev_server.client.service_client.config.target_host
    env = {
        "DSR_HOME": str(tmp_path / "home"), "DSR_DATABASE_URL": database_url, "TEMPORAL_ADDRESS": target,
        "DSR_TASK_QUEUE": f"replicas-{uuid.uuid4()}", "DSR_OPERATOR_EMAIL": "dpo@example.com",
        "DSR_MAIL_FROM": "privacy@example.com", "DSR_RATE_PER_CLIENT_HOUR": str(RATE_PER_CLIENT),
        "DSR_SMTP_HOST": "127.0.0.1", "DSR_SMTP_PORT": str(mail.port),
        "DSR_KEYS": "test-1:" + base64.b64encode(bytes(range(32))).decode(),  # TEST_KEYRING
    }
    settings = replace(Settings.from_env(env), smtp=SmtpSettings(host="127.0.0.1", port=mail.port))
    async with contextlib.AsyncExitStack() as stack:
        replicas = []
        for name in ("a", "b"):
            ledger = Ledger(database_url, TEST_KEYRING)
            stack.callback(ledger.close)
            client = await Client.connect(target, namespace=dev_server.client.namespace,
                                          data_converter=data_converter(TEST_KEYRING))
            exports = file_exports(tmp_path / "bucket")  # what every machine shares
            app, service = build_intake_app(settings, TEST_KEYRING, ledger, exports, client)
            server = await serve_app(app, port=0)
            stack.push_async_callback(server.stop)
            http = await stack.enter_async_context(http_client(base_url=server.url, timeout=30))
            replicas.append(Replica(name, service, ledger, http))
        worker_ledger = Ledger(database_url, TEST_KEYRING)
        stack.callback(worker_ledger.close)
        executor = stack.enter_context(concurrent.futures.ThreadPoolExecutor(max_workers=8))
        await stack.enter_async_context(build_worker(
            dev_server.client, settings, worker_ledger, executor=executor,
            exports=file_exports(tmp_path / "bucket"), workflow_runner=validated_once()))
        try:
            yield Cluster(settings, env, dev_server.client, replicas[0], replicas[1])
        finally:
            for request in worker_ledger.requests():
                handle = dev_server.client.get_workflow_handle(request.request_id)
                with contextlib.suppress(Exception):
                    if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                        await handle.terminate("test over")


def submission(email: str, kind: str = "erasure", **overrides: object) -> Submission:
    fields: dict = {"kind": kind, "email": email, "name": "Camille Durand", "channel": "api", "language": "fr"}
    fields.update(overrides)
    return Submission(**fields)


async def running_workflows(cluster: Cluster, ids: set[str]) -> set[str]:
    found = set()
    for request_id in ids:
        with contextlib.suppress(Exception):
            if (await cluster.temporal.get_workflow_handle(request_id).describe()).status \
                    == WorkflowExecutionStatus.RUNNING:
                found.add(request_id)
    return found


# --- one open request per subject and kind ------------------------------------------------------------------


async def test_the_same_subject_and_kind_at_two_replicas_at_once_make_one_workflow(cluster: Cluster) -> None:
    kinds = ["erasure", "access"]  # twice each: 4 submissions, within the 5 a subject may make in a day
    # Every kind twice, once per replica, all at the same instant; the email spelled differently each time.
    calls = [replica.service.submit(submission(email, kind), client=f"198.51.100.{i}")
             for i, (kind, replica, email) in enumerate(
                 (k, r, e) for k in kinds
                 for r, e in zip(cluster.replicas, ("camille.durand@example.org", "Camille.DURAND@example.org"),
                                 strict=True))]
    answers: list[Accepted] = await asyncio.gather(*calls)
    by_kind: dict[str, list[Accepted]] = {}
    for answer in answers:
        by_kind.setdefault(answer.kind.value, []).append(answer)
    for kind, pair in by_kind.items():
        assert len({a.reference for a in pair}) == 1, (kind, pair)
        assert sorted(a.attached for a in pair) == [False, True], (kind, pair)
    references = {a.reference for a in answers}
    requests = cluster.a.ledger.requests()
    assert sorted(r.request_id for r in requests) == sorted(references)  # 2 requests, not 4
    assert await running_workflows(cluster, references) == references
    # The attached submissions were told to the request that took them.
    for reference in references:
        for _ in range(150):
            if any(e.event == "duplicate_attached" for e in cluster.b.ledger.events(reference)):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"no duplicate_attached on {reference}")


async def test_a_closed_request_frees_its_subject_and_kind_for_either_replica(cluster: Cluster) -> None:
    from dsr.domain.model import Withdrawal
    from workflows.request import DataSubjectRequest

    first = await cluster.a.service.submit(submission("lea.petit@example.org"))
    await cluster.temporal.get_workflow_handle(first.reference).execute_update(
        DataSubjectRequest.withdraw, Withdrawal(requested_by="subject"))
    for _ in range(150):
        if cluster.a.ledger.claim_of("lea.petit@example.org", RequestKind.ERASURE) is None:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the claim outlived the request")
    second = await cluster.b.service.submit(submission("lea.petit@example.org"))
    assert second.reference != first.reference and second.attached is False


async def test_a_claim_left_by_a_crashed_replica_is_taken_over(cluster: Cluster) -> None:
    """A replica claimed, then died before starting the workflow: after a minute the claim is taken over."""

    from intake.service import ABANDONED_CLAIM

    crashed_at = datetime.now(UTC) - ABANDONED_CLAIM - timedelta(seconds=1)
    cluster.a.ledger.claim_subject("noa.bernard@example.org", RequestKind.ACCESS, "dsr-2026-01-DEADDD",
                                   now=crashed_at)
    accepted = await cluster.b.service.submit(submission("noa.bernard@example.org", "access"))
    assert accepted.attached is False and accepted.reference != "dsr-2026-01-DEADDD"
    held = cluster.b.ledger.claim_of("noa.bernard@example.org", RequestKind.ACCESS)
    assert held is not None and held.request_id == accepted.reference


async def test_dsr_submit_goes_through_the_same_door_and_attaches(cluster: Cluster) -> None:
    async def dsr(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "dsr"), *args, env={**os.environ, **cluster.env},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), timeout=120)
        return process.returncode or 0, out.decode(), err.decode()

    base = ["submit", "--kind", "erasure", "--email", "sam.hill@example.com", "--name", "Sam Hill"]
    code, out, err = await dsr(*base, "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["attached"] is False
    assert set(first) == {"id", "kind", "received", "deadline", "extended_deadline", "attached"}
    code, out, err = await dsr(*base, "--json")
    assert code == 0, err
    again = json.loads(out)
    assert again["attached"] is True and again["id"] == first["id"] and again["deadline"] == first["deadline"]
    code, out, err = await dsr(*base)
    assert code == 0, err
    assert out.startswith(first["id"]) and "attached" in out
    # An API submission for the same subject and kind joins it too.
    api = await cluster.a.service.submit(submission("sam.hill@example.com"), client="192.0.2.10")
    assert api.reference == first["id"] and api.attached
    assert [r.request_id for r in cluster.a.ledger.requests()] == [first["id"]]


# --- rate limits ----------------------------------------------------------------------------------------------


async def test_the_rate_limit_allows_exactly_its_limit_across_two_replicas(cluster: Cluster) -> None:
    async def submit(i: int) -> Accepted | RateLimited:
        replica = cluster.replicas[i % 2]
        try:
            return await replica.service.submit(submission(f"person{i}@example.org", "access"), client="203.0.113.7")
        except RateLimited as refused:
            return refused

    answers = await asyncio.gather(*(submit(i) for i in range(2 * RATE_PER_CLIENT + 3)))
    accepted = [a for a in answers if isinstance(a, Accepted)]
    refused = [a for a in answers if isinstance(a, RateLimited)]
    assert len(accepted) == RATE_PER_CLIENT, Counter(type(a).__name__ for a in answers)
    assert all(r.scope == "address" and 0 < r.retry_after <= 3600 for r in refused)
    assert len(cluster.a.ledger.requests()) == RATE_PER_CLIENT
    # Over HTTP too, at the other replica: the same address is still refused.
    response = await cluster.b.http.post("/api/requests", json={"kind": "access", "email": "late@example.org"})
    assert response.status_code == 202  # the test's own client address (127.0.0.1) is another client
    with pytest.raises(RateLimited):
        await cluster.b.service.submit(submission("later@example.org", "access"), client="203.0.113.7")


# --- /verify and /exports attempt counters ------------------------------------------------------------------------


def _known_request(cluster: Cluster, request_id: str) -> None:
    """A request the ledger knows (no workflow needed: wrong codes never reach Temporal)."""
    cluster.a.ledger.record_request(RequestRecordInput(
        request_id=request_id, kind=RequestKind.ACCESS, channel=Channel.API,
        subject=Subject(email="ruth.evans@example.co.uk", name="Ruth Evans"), received_at=datetime.now(UTC),
        deadline=date(2030, 1, 1), language=Language.EN), now=datetime.now(UTC))


async def _verify(replica: Replica, reference: str, code: str, **kw: object) -> httpx.Response:
    return await replica.http.post("/verify", data={"reference": reference, "code": code}, **kw)  # type: ignore[arg-type]


async def test_verify_locks_after_max_attempts_wrong_codes_split_across_two_replicas(cluster: Cluster) -> None:
    reference = "dsr-2026-03-7KQ3FJ"
    _known_request(cluster, reference)
    code = IdentityLinks(TEST_KEYRING, ttl=timedelta(days=30)).request_code(reference)
    wrong = "000000" if code != "000000" else "111111"
    answers = await asyncio.gather(*(_verify(cluster.replicas[i % 2], reference, wrong) for i in range(MAX_ATTEMPTS)))
    assert [a.status_code for a in answers] == [403] * MAX_ATTEMPTS
    for replica in cluster.replicas:  # locked at both, even for the right code
        locked = await _verify(replica, reference, code)
        assert locked.status_code == 429 and 0 < int(locked.headers["Retry-After"]) <= 15 * 60


async def test_made_up_references_do_not_lock_a_real_one(cluster: Cluster) -> None:
    real = "dsr-2026-03-2BN8TV"
    _known_request(cluster, real)
    made_up = "dsr-2026-03-4HZ9PW"
    answers = [(await _verify(cluster.replicas[i % 2], made_up, "000000")).status_code for i in range(MAX_ATTEMPTS + 1)]
    assert answers == [403] * MAX_ATTEMPTS + [429]  # as a real one would answer this client
    # The real reference is not locked (a wrong code is judged, not refused), at either replica.
    assert (await _verify(cluster.b, real, "000000")).status_code == 403
    with Session(cluster.a.ledger.engine) as session:
        keys = list(session.scalars(select(col(AttemptLimitRow.key))))
    assert f"verify:ref:{real}" in keys and not any(made_up in key for key in keys)


# --- the webhook replay guard ----------------------------------------------------------------------------------


async def test_a_webhook_replayed_to_the_other_replica_is_refused(cluster: Cluster) -> None:
    body = json.dumps({"ticket_id": "9001", "requester_email": "lea.petit@example.org", "tags": "vip"}).encode()
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    signature = base64.b64encode(hmac.new(ZENDESK_SECRET.encode(), stamp.encode() + body, hashlib.sha256).digest())
    headers = {"Content-Type": "application/json", "X-Zendesk-Webhook-Signature": signature.decode(),
               "X-Zendesk-Webhook-Signature-Timestamp": stamp}
    first = await cluster.a.http.post("/webhooks/zendesk", content=body, headers=headers)
    assert first.status_code == 422  # accepted as authentic, then refused for its missing kind
    replayed = await cluster.b.http.post("/webhooks/zendesk", content=body, headers=headers)
    assert replayed.status_code == 409 and "replay" in replayed.json()["error"]


# --- X-Forwarded-For ---------------------------------------------------------------------------------------------


async def _wrong_codes_from(url: str, forwarded: list[str]) -> list[int]:
    """Wrong codes for made-up references, each request claiming another client in X-Forwarded-For."""
    async with http_client(base_url=url, timeout=30) as http:
        return [(await http.post("/verify", data={"reference": f"dsr-2026-05-X{i:05d}", "code": "000000"},
                                 headers={"X-Forwarded-For": address})).status_code
                for i, address in enumerate(forwarded)]


async def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = Settings.from_env({"DSR_HOME": str(tmp_path)})
    ledger = Ledger(settings.database_url, TEST_KEYRING)
    app, _ = build_intake_app(settings, TEST_KEYRING, ledger, exports_of(settings),
                              dev_server.client)
    spoofed = [f"203.0.113.{i}" for i in range(MAX_CLIENT_ATTEMPTS + 1)]
    try:
        # No trusted proxy (the default), or a trusted network the peer is not in: the header is ignored, so the
        # per-client limit counts all these answers as 127.0.0.1's, and locks it.
        for trusted in ((), ("10.0.0.0/8",)):
            server = await serve_app(app, port=0, trusted_proxies=trusted)
            try:
                answers = await _wrong_codes_from(server.url, spoofed)
            finally:
                await server.stop()
            assert answers == [403] * MAX_CLIENT_ATTEMPTS + [429], trusted
            with Session(ledger.engine) as session:  # a fresh count (and throttle) for the next server
                session.execute(AttemptLimitRow.__table__.delete())  # type: ignore[attr-defined]
                session.execute(RateLimitRow.__table__.delete())  # type: ignore[attr-defined]
                session.commit()
        # 127.0.0.1 is the trusted proxy: each forwarded address is its own client.
        server = await serve_app(app, port=0, trusted_proxies=("127.0.0.1",))
        try:
            answers = await _wrong_codes_from(server.url, spoofed)
        finally:
            await server.stop()
        assert answers == [403] * len(spoofed)
    finally:
        ledger.close()


def test_trusted_proxies_and_intake_host_settings() -> None:
    base = {"DSR_HOME": "/tmp/dsr-settings-test"}
    default = Settings.from_env(base)
    assert default.trusted_proxies == () and default.intake_host == "127.0.0.1"
    given = Settings.from_env({**base, "DSR_TRUSTED_PROXIES": " 10.0.0.5, 10.1.0.0/16 ,::1",
                               "DSR_INTAKE_HOST": "10.0.0.7"})
    assert given.trusted_proxies == ("10.0.0.5", "10.1.0.0/16", "::1") and given.intake_host == "10.0.0.7"
    for name, value in (("DSR_TRUSTED_PROXIES", "*"), ("DSR_TRUSTED_PROXIES", "proxy.internal"),
                        ("DSR_INTAKE_HOST", "example.org")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({**base, name: value})
