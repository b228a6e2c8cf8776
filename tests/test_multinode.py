"""Several machines, one engine: two workers and two intake replicas that share no disk.

The topology of a small production cluster, every part real and on 127.0.0.1: one Temporal dev server, the
ledger on PostgreSQL, an S3 API over HTTP (moto's server), the three vendor sandboxes, an SMTP server, and two
"machines", each a ``DSR_HOME`` of its own (nothing shared on disk) running ``dsr worker`` and ``dsr intake`` as
separate processes. They share only what a cluster shares: Temporal, the database, the bucket and the keys.

Requests of every kind go in through both replicas (concurrent duplicates included), one worker is SIGKILLed
in the middle of the heavy customer's export, and then every access and portability reply must download
complete through either replica, each duplicate pair must have made one workflow, and ``/verify`` must lock
after the same number of wrong codes whichever replica receives them.

A second test runs two workers against the time-skipping server, so that a download link's expiry (days) can
pass: no object of an expired link remains in the bucket.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from connectors.woocommerce import PAGES_AT_ONCE
from dsr.domain.aftercare import AftercareStatus, aftercare_id
from dsr.domain.model import Outcome, RequestStatus, Stage
from dsr.store.crypto import KeyRing, data_converter
from tests.cluster import (
    Holding,
    Machine,
    Sandboxes,
    acknowledged_reference,
    connectors_toml,
    download,
    download_code_in,
    expected_in_bundle,
    final_reply_references,
    manifest_counts,
    new_keys,
    plain_bodies,
    reference_in,
    seed_person,
    shared_environment,
    start_sandboxes,
)
from tests.harness import MailSink, S3Server, free_port, http_client, text_of
from tests.servers import start_dev_server, start_time_skipping_server
from workflows.aftercare import RequestAftercare
from workflows.request import DataSubjectRequest

pytestmark = pytest.mark.slow  # a cluster of processes

HEAVY_ORDERS = 10_000
PER_KIND = 8
T = TypeVar("T")

# --- helpers ------------------------------------------------------------------------------------------------


async def until(check: Callable[[], Awaitable[T | None]], *, seconds: float, what: str,
                logs: Callable[[], str] = lambda: "") -> T:
    deadline = time.monotonic() + seconds
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds:.0f} s\n{logs()}")
        await asyncio.sleep(0.25)


async def status(client: Client, request_id: str) -> RequestStatus:
    handle: WorkflowHandle = client.get_workflow_handle_for(DataSubjectRequest.run, request_id)
    return await handle.query(DataSubjectRequest.status)


async def confirm_by_link(http: httpx.AsyncClient, replica: Machine, link_path: str) -> None:
    """Press the button of the identity email's link, on the given replica."""
    page = await http.get(replica.url + link_path)
    assert page.status_code == 200, page.text
    form = re.search(r'name="form" value="([^"]+)"', page.text)
    assert form is not None
    done = await http.post(replica.url + link_path, data={"form": form.group(1)})
    assert done.status_code == 200, done.text


async def heartbeated_orders(handle: WorkflowHandle, keyring: KeyRing) -> tuple[int, str]:
    """Orders the running WooCommerce export has checkpointed, and the worker running it."""
    described = await handle.describe()
    for pending in described.raw_description.pending_activities:
        if pending.heartbeat_details.payloads:
            details = await data_converter(keyring).decode(pending.heartbeat_details.payloads)
            cursor = details[0] if details else {}
            written = int((cursor.get("written") or {}).get("orders", 0)) if isinstance(cursor, dict) else 0
            if written:
                return written, pending.last_worker_identity
    return 0, ""


# --- the cluster --------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    temporal: WorkflowEnvironment
    client: Client
    keyring: KeyRing
    s3: S3Server
    prefix: str  # the cluster's folder of the bucket
    boxes: Sandboxes
    mail: MailSink
    a: Machine
    b: Machine

    @property
    def machines(self) -> list[Machine]:
        return [self.a, self.b]

    def logs(self) -> str:
        return "\n".join(f"--- {m.name} {verb}\n{m.log(verb)}" for m in self.machines for verb in ("worker", "intake"))


@pytest_asyncio.fixture
async def cluster(tmp_path: Path, postgres_url: str, mail: MailSink, s3_server: S3Server) -> AsyncIterator[Cluster]:
    keys = new_keys()
    keyring = KeyRing.from_env_value(keys)
    s3, prefix = s3_server, f"cluster-{uuid.uuid4().hex[:12]}"
    boxes = await start_sandboxes()
    temporal = await start_dev_server(keyring)
    machines: list[Machine] = []
    try:
        config = connectors_toml(boxes)
        a_port = free_port()
        shared = shared_environment(
            temporal=temporal.client.service_client.config.target_host, task_queue=f"multinode-{uuid.uuid4()}",
            keys=keys, database_url=postgres_url, s3=s3, prefix=prefix, mail=mail,
            public_url=f"http://127.0.0.1:{a_port}",
        )
        a = Machine("machine-a", tmp_path, shared, config)
        a.intake_port, a.env["DSR_INTAKE_PORT"] = a_port, str(a_port)  # the public URL points at replica A
        b = Machine("machine-b", tmp_path, shared, config)
        machines = [a, b]
        for machine in machines:
            machine.start_worker()
            machine.start_intake()
        for machine in machines:
            await machine.wait_for_intake()
        yield Cluster(temporal, temporal.client, keyring, s3, prefix, boxes, mail, a, b)
    finally:
        for machine in machines:
            machine.stop()
        await temporal.shutdown()
        await boxes.stop()


# --- the scenario -------------------------------------------------------------------------------------------


async def test_two_machines_answer_every_request_once_and_every_reply_downloads_through_either(
    cluster: Cluster,
) -> None:
    boxes, a, b = cluster.boxes, cluster.a, cluster.b
    kinds = ("access", "portability", "erasure", "rectification")
    subjects: dict[str, list[Holding]] = {}
    for kind in kinds:
        subjects[kind] = [
            await seed_person(boxes, f"{kind}.{n}@example.org", f"Person{n} {kind.capitalize()}",
                              notes=n % 3, orders=2 + n, charges=n % 2)
            for n in range(PER_KIND)
        ]
    heavy = await seed_person(boxes, "heavy.buyer@example.com", "Heavy Buyer", notes=5, orders=HEAVY_ORDERS,
                              charges=0)
    # One person asks for a copy and then for erasure: the copy must be complete (order of receipt).
    both = await seed_person(boxes, "copy.then.erase@example.org", "Copy Erase", notes=2, orders=7, charges=1)

    async with http_client(timeout=60) as http:
        async def submit(replica: Machine, holding: Holding, kind: str) -> dict[str, Any]:
            body: dict[str, Any] = {"kind": kind, "email": holding.email, "name": holding.name, "language": "en"}
            if kind == "rectification":
                body["changes"] = {"city": "Marseille"}
            answer = await http.post(f"{replica.url}/api/requests", json=body)
            assert answer.status_code == 202, (replica.name, answer.text)
            assert "reference" not in answer.json() and "attached" not in answer.json()  # the neutral receipt
            return answer.json()

        async def reference_of(holding: Holding, kind: str) -> str:
            async def found() -> str | None:
                return acknowledged_reference(cluster.mail, holding.email, kind)

            return await until(found, seconds=120, what=f"the acknowledgement of {holding.email}'s {kind} request",
                               logs=cluster.logs)

        # The heavy export first, slowed down so a worker can be killed in its middle (the connector asks for
        # PAGES_AT_ONCE pages at once).
        boxes.faults.delay_seconds = 0.05 * PAGES_AT_ONCE
        await submit(a, heavy, "access")
        heavy_ref = await reference_of(heavy, "access")
        references: dict[str, tuple[str, Holding]] = {heavy_ref: ("access", heavy)}
        pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for kind in kinds:
            for n, holding in enumerate(subjects[kind]):
                if n < 2:  # the same request at the same instant at both replicas: one workflow
                    first, second = await asyncio.gather(submit(a, holding, kind), submit(b, holding, kind))
                    pairs.append((first, second))
                else:
                    await submit(a if n % 2 else b, holding, kind)
                references[await reference_of(holding, kind)] = (kind, holding)
        await submit(b, both, "access")
        copy_ref = await reference_of(both, "access")
        await submit(a, both, "erasure")
        erase_ref = await reference_of(both, "erasure")
        references[copy_ref] = ("access", both)
        references[erase_ref] = ("erasure", both)

        for first, second in pairs:  # one of each pair was attached to the other: nothing tells which
            assert first == second, (first, second)
        assert len(references) == 4 * PER_KIND + 3

        # Identity: each subject presses the link of their identity email, on the replica it does not point at.
        async def identity_links() -> dict[str, str] | None:
            found: dict[str, str] = {}
            for _, message in list(cluster.mail.messages):
                text = text_of(message)
                link = re.search(re.escape(a.url) + r"(/verify/\S+)", text)
                reference = reference_in(str(message["Subject"])) or reference_in(text)
                if link and reference in references:
                    found[reference] = link.group(1)
            return found if len(found) == len(references) else None

        links = await until(identity_links, seconds=180, what="an identity email per request", logs=cluster.logs)
        # The heavy request first, then its export is watched while the others are confirmed.
        await confirm_by_link(http, b, links[heavy_ref])
        heavy_handle = cluster.client.get_workflow_handle(heavy_ref)

        async def mid_export() -> tuple[int, str] | None:
            written, worker = await heartbeated_orders(heavy_handle, cluster.keyring)
            return (written, worker) if written >= 2000 else None

        written, identity = await until(mid_export, seconds=240, what="the heavy export checkpointed",
                                        logs=cluster.logs)
        assert written < HEAVY_ORDERS, "killed too late to prove anything"
        pid = int(identity.split("@", 1)[0])
        victim = next(m for m in cluster.machines if m.worker is not None and m.worker.pid == pid)
        victim.kill_worker()
        boxes.faults.delay_seconds = 0.0
        # In order of receipt, so the copy-then-erase person confirms the copy first.
        for index, reference in enumerate(references):
            if reference != heavy_ref:
                await confirm_by_link(http, cluster.machines[index % 2], links[reference])
        victim.start_worker()  # the machine comes back; the other worker has taken over meanwhile

        async def all_closed() -> dict[str, RequestStatus] | None:
            found = {ref: await status(cluster.client, ref) for ref in references}
            return found if all(s.stage == Stage.CLOSED for s in found.values()) else None

        final = await until(all_closed, seconds=600, what="every request closed", logs=cluster.logs)
        assert {ref: s.outcome for ref, s in final.items()} == {ref: Outcome.FULFILLED for ref in references}
        # Exactly one final reply each, whichever worker sent it (and through a worker's crash).
        replies = final_reply_references(cluster.mail)
        assert sorted(replies) == sorted(references)  # type: ignore[type-var]

        # The copy was made before the erasure ran (one subject, one thing at a time, in order of receipt)...
        copied = {(p.connector, d.dataset): d.records for p in final[copy_ref].connectors if p.outcome
                  for d in p.outcome.datasets}
        assert {key: copied.get(key, 0) for key in both.records} == both.records
        # ... and the erasure deleted it from the bucket, even though its link had not expired.
        reply = next(text for text in plain_bodies(cluster.mail, both.email) if "/exports/" in text)
        token = re.search(re.escape(a.url) + r"/exports/(\S+)", reply)
        assert token is not None
        gone = await download(http, b.url, token.group(1), download_code_in(reply))
        assert gone.status_code == 410, gone.status_code

        # Every other access and portability reply downloads, complete, through either replica.
        for reference, (kind, holding) in references.items():
            if kind not in ("access", "portability") or holding is both:
                continue
            reply = next(text for text in plain_bodies(cluster.mail, holding.email)
                         if "/exports/" in text and reference in text)
            token = re.search(re.escape(a.url) + r"/exports/(\S+)", reply)
            assert token is not None, reply
            for replica in cluster.machines:
                answer = await download(http, replica.url, token.group(1), download_code_in(reply))
                assert answer.status_code == 200, (replica.name, answer.status_code, answer.text[:500])
                counts = manifest_counts(answer.content)
                expected = expected_in_bundle(holding, kind)
                assert {key: counts.get(key, 0) for key in expected} == expected, (reference, replica.name)

        # The heavy export was resumed on the other worker, not restarted: every order exactly once.
        history = await heavy_handle.fetch_history()
        attempts = [e.activity_task_started_event_attributes.attempt for e in history.events
                    if e.HasField("activity_task_started_event_attributes")]
        assert max(attempts) >= 2, "the export activity was retried after the crash"

        # No file under either DSR_HOME is what another machine needed: nothing exported lies on a disk.
        for machine in cluster.machines:
            leftovers = [p for p in machine.home.rglob("*") if p.is_file() and p.suffix in (".enc", ".bin", ".chunk")]
            assert leftovers == [], leftovers
        # The bucket only ever holds ciphertext.
        for key, body in cluster.s3.raw_objects(f"{cluster.prefix}/").items():
            for holding in (heavy, both, *subjects["access"][:2]):
                assert holding.email.encode() not in body and holding.name.encode() not in body, key


async def test_verify_locks_after_the_same_number_of_wrong_codes_on_either_replica(cluster: Cluster) -> None:
    from intake.web.attempts import MAX_ATTEMPTS

    holding = await seed_person(cluster.boxes, "guesser.target@example.org", "Target Person", notes=0, orders=1,
                                charges=0)
    async with http_client(timeout=30) as http:
        answer = await http.post(f"{cluster.a.url}/api/requests", json={
            "kind": "access", "email": holding.email, "name": holding.name, "language": "en"})
        assert answer.status_code == 202, answer.text

        async def acknowledged() -> str | None:
            return acknowledged_reference(cluster.mail, holding.email, "access")

        reference = await until(acknowledged, seconds=60, what="the acknowledgement", logs=cluster.logs)

        async def identity_code() -> str | None:
            for text in plain_bodies(cluster.mail, holding.email):
                found = re.search(r"confirmation code: ([2-9A-Z]{4}-[2-9A-Z]{4})", text) if reference in text else None
                if found:
                    return found.group(1)
            return None

        code = await until(identity_code, seconds=60, what="the identity email", logs=cluster.logs)
        wrong = "2222-2222" if code != "2222-2222" else "3333-3333"
        replicas = cluster.machines
        for attempt in range(MAX_ATTEMPTS):
            replica = replicas[attempt % 2]
            page = await http.post(f"{replica.url}/verify", data={"reference": reference, "code": wrong})
            assert page.status_code == 403, (attempt, replica.name, page.status_code)
        for replica in replicas:  # locked on both, the right code included
            page = await http.post(f"{replica.url}/verify", data={"reference": reference, "code": code})
            assert page.status_code == 429, (replica.name, page.status_code)
            assert int(page.headers["Retry-After"]) > 0
        assert (await status(cluster.client, reference)).stage == Stage.AWAITING_IDENTITY


# --- a link's expiry, on the time-skipping server -----------------------------------------------------------


async def test_an_expired_link_leaves_no_object_in_the_bucket_whichever_worker_deletes(
    tmp_path: Path, postgres_url: str, mail: MailSink, s3_server: S3Server,
) -> None:
    from dsr.config.settings import Settings
    from intake.submission import Submission, prepare, start

    keys = new_keys()
    keyring = KeyRing.from_env_value(keys)
    s3, prefix = s3_server, f"expiry-{uuid.uuid4().hex[:12]}"
    boxes = await start_sandboxes()
    env = await start_time_skipping_server(keyring)
    machines: list[Machine] = []
    try:
        holding = await seed_person(boxes, "expiry.subject@example.org", "Expiry Subject", notes=1, orders=3,
                                    charges=1)
        shared = shared_environment(
            temporal=env.client.service_client.config.target_host, task_queue=f"expiry-{uuid.uuid4()}", keys=keys,
            database_url=postgres_url, s3=s3, prefix=prefix, mail=mail, public_url="http://127.0.0.1:9",
        )
        shared["DSR_IDENTITY_METHOD"] = "trusted"
        machines = [Machine(name, tmp_path, shared, connectors_toml(boxes)) for name in ("machine-a", "machine-b")]
        for machine in machines:
            machine.start_worker()
        settings = Settings.from_env(machines[0].env)
        request = prepare(Submission(kind="access", email=holding.email, name=holding.name), settings)
        handle = await start(env.client, request, task_queue=shared["DSR_TASK_QUEUE"])
        request_key = request.request_id.lower()

        def objects() -> list[str]:
            return [key for key in s3.keys(f"{prefix}/") if request_key in key.lower()]

        with env.auto_time_skipping_disabled():
            async def replied() -> RequestStatus | None:
                found = await handle.query(DataSubjectRequest.status)
                return found if found.stage == Stage.CLOSED else None

            closed = await until(replied, seconds=180, what="the reply",
                                 logs=lambda: "\n".join(m.log("worker") for m in machines))
        assert closed.link_expires_at is not None
        assert any(key.endswith(".enc") or "bundle" in key for key in objects()), objects()
        # The request ends with its answer: its aftercare (on some worker) deletes the exports at the expiry.
        aftercare: WorkflowHandle[RequestAftercare, AftercareStatus] = env.client.get_workflow_handle_for(
            RequestAftercare.run, aftercare_id(request.request_id))

        async def started() -> bool:
            try:
                return (await aftercare.describe()).status == WorkflowExecutionStatus.RUNNING
            except RPCError:
                return False  # not started yet

        with env.auto_time_skipping_disabled():
            await until(started, seconds=60, what="the aftercare",
                        logs=lambda: "\n".join(m.log("worker") for m in machines))
        # past the link's 7 days: the expiry timer fires on some worker (the test server's own method, private)
        async with env.time_skipping_unlocked():  # type: ignore[attr-defined]
            care = await aftercare.result()
        assert care.exports_deleted
        assert objects() == []
    finally:
        for machine in machines:
            machine.stop()
        await env.shutdown()
        await boxes.stop()
