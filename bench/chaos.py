"""Chaos: requests of every kind through separate ``dsr worker`` processes killed at random (SIGKILL, then
restarted) while every vendor sandbox injects faults (5xx, 429 with Retry-After, slowness, dropped
connections, answers lost after the call took effect). Then it checks what a regulator would:

* every request is closed, or in ``needs_attention`` with a reason an operator can act on;
* exactly one final reply each (reply emails counted by subject; none yet for one waiting for an operator);
* every access and portability bundle downloads complete through the intake (record counts per dataset
  equal to what the sandboxes held);
* every erasure reply is true: no "no data" or "already deleted before this request" for a system that held the
  subject's records, and the sandboxes no longer hold them;
* no record written twice: no write (same method, path and body) carried out successfully twice, from the
  sandboxes' own log of what they carried out.

The cluster is tests/cluster.py's: a Temporal dev server, the ledger on PostgreSQL (SQLite when it is not
installed), moto's S3 server, an SMTP sink, the three sandboxes (each with its fault injection) and machines
with a ``DSR_HOME`` each; machine A also runs ``dsr intake`` (submissions and downloads).

Beside the single kills it kills every worker at once (``--blackouts``: the whole deployment down, as when
``dsr up`` is killed) and cuts the SMTP server (``--smtp-outages``) and the ledger's database (``--ledger-outages``,
through a TCP proxy the workers reach it by; PostgreSQL only) for 5-15 s each. Workers that exit on their own
(one started while the database was cut) are restarted, as a service manager would. Time in ``replying`` during
an outage does not count against the 2-minute rule (a reply cannot go out while the mail server is down).

Run: ``.venv/bin/python bench/chaos.py [--requests 100] [--kills 30] [--faults 0.15] [--workers 2]
[--blackouts 3] [--smtp-outages 2] [--ledger-outages 2]``.
tests/test_chaos.py runs a bounded one in ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from sqlalchemy import make_url

if TYPE_CHECKING:
    from temporalio.client import Client, WorkflowHandle

    from dsr.domain.model import RequestStatus
    from workflows.request import DataSubjectRequest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dsr.domain.model import RequestKind, Stage  # noqa: E402
from dsr.store.crypto import KeyRing, data_converter  # noqa: E402
from dsr.store.ledger import Ledger  # noqa: E402
from sandbox.faults import FaultRates  # noqa: E402
from tests.cluster import (  # noqa: E402
    FINAL_REPLY,
    STRIPE_KEY,
    Holding,
    Machine,
    Sandboxes,
    connectors_toml,
    download,
    download_code_in,
    expected_in_bundle,
    manifest_counts,
    new_keys,
    plain_text,
    reference_in,
    seed_person,
    shared_environment,
    start_sandboxes,
)
from tests.harness import MailSink, S3Server, binary, free_port  # noqa: E402
from workflows import search_attributes as sa  # noqa: E402

KINDS = ("access", "portability", "erasure", "rectification")
OPERATOR = "dpo@example.com"  # DSR_OPERATOR_EMAIL of tests/cluster.py
MAX_REPLYING_SECONDS = 120  # the bound: no request in `replying` 2 minutes after its worker died


class OutageProxy:
    """A TCP forwarder to ``127.0.0.1:target`` that can be cut: ``down()`` drops every connection and refuses new
    ones until ``up()`` (a database server gone from the network, as the workers see it)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.is_down = False
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_down:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, upstream}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()

        try:
            await asyncio.gather(pipe(reader, upstream), pipe(upstream_reader, writer))
        finally:
            self._open -= {writer, upstream}

    def down(self) -> None:
        self.is_down = True
        for writer in list(self._open):
            writer.transport.abort()

    def up(self) -> None:
        self.is_down = False

    async def stop(self) -> None:
        self.down()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@dataclass
class ChaosReport:
    requests: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    blackouts: int = 0  # every worker killed at once
    smtp_outages: int = 0
    ledger_outages: int = 0
    restarted: int = 0  # workers that exited on their own (e.g. started while the database was cut), restarted
    faults: dict[str, int] = field(default_factory=dict)  # injected, by kind
    sandbox_calls: int = 0
    closed: int = 0
    needs_attention: dict[str, str] = field(default_factory=dict)  # reference -> reason
    unsettled: dict[str, str] = field(default_factory=dict)  # reference -> stage (neither closed nor waiting)
    missing_replies: list[str] = field(default_factory=list)
    duplicate_replies: list[str] = field(default_factory=list)
    resent_flagged: list[str] = field(default_factory=list)  # one reply re-sent (same Message-ID), ledger flagged
    bundles_checked: int = 0
    incomplete_bundles: list[str] = field(default_factory=list)
    erasures_checked: int = 0
    untrue_erasures: list[str] = field(default_factory=list)
    residuals: int = 0  # erasures that left data an API could not clear
    residuals_unreported: list[str] = field(default_factory=list)  # ... without the operator told, or the reply
    mutated_twice: list[str] = field(default_factory=list)
    seconds: float = 0.0
    settle_seconds: list[float] = field(default_factory=list)  # from submission to closed or needs_attention
    replying_seconds: dict[str, float] = field(default_factory=dict)  # reference -> longest seen in `replying`

    @property
    def failures(self) -> list[str]:
        found = [f"not settled: {ref} in {stage}" for ref, stage in self.unsettled.items()]
        found += [f"needs_attention without a reason: {ref}" for ref, why in self.needs_attention.items() if not why]
        found += [f"no final reply: {ref}" for ref in self.missing_replies]
        found += [f"more than one final reply: {ref}" for ref in self.duplicate_replies]
        found += [f"incomplete bundle: {line}" for line in self.incomplete_bundles]
        found += [f"untrue erasure reply: {line}" for line in self.untrue_erasures]
        found += [f"residual data not followed up: {line}" for line in self.residuals_unreported]
        found += [f"written twice: {line}" for line in self.mutated_twice]
        found += [f"in replying for {s:.0f} s: {ref}" for ref, s in self.replying_seconds.items()
                  if s > MAX_REPLYING_SECONDS]
        return found

    def table(self) -> str:
        rows = [
            ("requests", f"{self.requests} ({', '.join(f'{k} {n}' for k, n in self.by_kind.items())})"),
            ("worker kills (SIGKILL)", str(self.kills)),
            ("all workers killed at once", str(self.blackouts)),
            ("SMTP, ledger outages", f"{self.smtp_outages}, {self.ledger_outages}"),
            ("workers restarted after exiting", str(self.restarted)),
            ("sandbox calls", str(self.sandbox_calls)),
            ("faults injected", f"{sum(self.faults.values())} ("
                                + ", ".join(f"{k} {n}" for k, n in sorted(self.faults.items())) + ")"),
            ("closed", str(self.closed)),
            ("needs_attention (with a reason)", str(sum(1 for why in self.needs_attention.values() if why))),
            ("lost or stuck", str(len(self.unsettled))),
            ("final replies missing", str(len(self.missing_replies))),
            ("duplicate final replies", str(len(self.duplicate_replies))),
            ("replies re-sent in the SMTP window (flagged)", str(len(self.resent_flagged))),
            ("bundles complete", f"{self.bundles_checked - len(self.incomplete_bundles)} / {self.bundles_checked}"),
            ("erasure replies true", f"{self.erasures_checked - len(self.untrue_erasures)} / {self.erasures_checked}"),
            ("residuals followed up", f"{self.residuals - len(self.residuals_unreported)} / {self.residuals}"),
            ("records written twice", str(len(self.mutated_twice))),
            ("longest in replying", f"{max(self.replying_seconds.values(), default=0):.0f} s"),
            ("time to settle (median, max)", f"{_median(self.settle_seconds):.0f} s, "
                                             f"{max(self.settle_seconds, default=0):.0f} s"),
            ("wall time", f"{self.seconds:.0f} s"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines += [f"  needs_attention {ref}: {why}" for ref, why in self.needs_attention.items()]
        lines += [f"  re-sent, same Message-ID, possible_duplicate in the ledger: {line}"
                  for line in self.resent_flagged]
        lines += [f"FAIL {line}" for line in self.failures]
        lines.append("RESULT: " + ("all checks hold" if not self.failures else f"{len(self.failures)} failure(s)"))
        return "\n".join(lines)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


async def _still_held(boxes: Sandboxes, holding: Holding) -> list[str]:
    """The systems still holding the subject's identifying records after an erasure."""
    email = holding.email.lower()
    held = []
    if any(str(o.properties.get("email", "")).lower() == email for o in boxes.hubspot.objects["contacts"].values()):
        held.append("hubspot")
    if any(str(c.get("email", "")).lower() == email for c in boxes.woo.customers.values()):
        held.append("woocommerce")
    async with httpx.AsyncClient(base_url=boxes.stripe.url, headers={"Authorization": f"Bearer {STRIPE_KEY}"}) as s:
        customers = (await s.get("/v1/customers", params={"email": holding.email})).json().get("data", [])
    if [c for c in customers if not c.get("deleted")]:
        held.append("stripe")
    return held


def _overlap(windows: list[list[float]], since: float, now: float) -> float:
    """Seconds of ``[since, now]`` inside the outage windows ([start, end]; end 0 while it lasts)."""
    return sum(max(0.0, min(now, end or now) - max(since, start)) for start, end in windows)


async def run_chaos(work: Path, *, requests: int, kills: int, fault_share: float, database_url: str,
                    s3: S3Server, workers: int = 2, seed: int = 11, timeout: float = 900.0,
                    blackouts: int = 0, smtp_outages: int = 0, ledger_outages: int = 0,
                    say: Callable[[str], None] = print) -> ChaosReport:
    """The whole run, from an empty cluster to the report; raises nothing for a failed check (see
    ``ChaosReport.failures``)."""
    from temporalio.testing import WorkflowEnvironment

    rng = random.Random(seed)
    report = ChaosReport(requests=requests)
    keys = new_keys()
    keyring = KeyRing.from_env_value(keys)
    boxes = await start_sandboxes()
    mail = MailSink()
    mail.start()
    temporal = await WorkflowEnvironment.start_local(
        dev_server_existing_path=binary("temporal"), ip="127.0.0.1", search_attributes=sa.ALL,
        data_converter=data_converter(keyring), dev_server_log_level="never")  # killed workers: expected noise
    machines: list[Machine] = []
    ledger = Ledger(database_url, keyring)
    proxy: OutageProxy | None = None
    try:
        workers_database_url = database_url
        if ledger_outages and database_url.startswith("postgresql"):
            # The workers reach the database through a proxy the run can cut; the checks read it directly.
            direct = make_url(database_url)
            proxy = OutageProxy(direct.port or 5432)
            port = await proxy.start()
            workers_database_url = direct.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
        elif ledger_outages:
            say("ledger outages need PostgreSQL (a SQLite file cannot be cut): none")
            ledger_outages = 0
        people: list[tuple[str, Holding]] = []
        for n in range(requests):
            kind = KINDS[n % len(KINDS)]
            report.by_kind[kind] = report.by_kind.get(kind, 0) + 1
            holding = await seed_person(boxes, f"chaos.{kind}.{n}@example.org", f"Chaos{n} {kind.capitalize()}",
                                        notes=n % 3, orders=1 + n % 4, charges=n % 2)
            people.append((kind, holding))
        intake_port = free_port()
        shared = shared_environment(
            temporal=temporal.client.service_client.config.target_host, task_queue=f"chaos-{uuid.uuid4()}",
            keys=keys, database_url=workers_database_url, s3=s3, prefix=f"chaos-{uuid.uuid4().hex[:12]}", mail=mail,
            public_url=f"http://127.0.0.1:{intake_port}")
        shared["DSR_IDENTITY_METHOD"] = "trusted"
        shared["DSR_RATE_PER_CLIENT_HOUR"] = str(max(1000, 2 * requests))
        config = connectors_toml(boxes)
        machines = [Machine(f"machine-{n}", work, shared, config) for n in range(workers)]
        entry = machines[0]
        entry.intake_port, entry.env["DSR_INTAKE_PORT"] = intake_port, str(intake_port)
        for machine in machines:
            machine.start_worker()
        entry.start_intake()
        await entry.wait_for_intake()

        def logs() -> str:
            return "\n".join(f"--- {m.name} worker\n{m.log('worker')[-1500:]}" for m in machines)

        boxes.set_rates(FaultRates.uniform(fault_share), seed=seed)
        begin = time.monotonic()
        references: dict[str, tuple[str, Holding]] = {}
        async with httpx.AsyncClient(timeout=60) as http:
            for kind, holding in people:
                body: dict[str, object] = {"kind": kind, "email": holding.email, "name": holding.name,
                                           "language": "en"}
                if kind == "rectification":
                    body["changes"] = {"city": "Marseille"}
                answer = await http.post(f"{entry.url}/api/requests", json=body)
                if answer.status_code != 202:
                    raise RuntimeError(f"the intake refused a submission: {answer.status_code} {answer.text[:300]}")
                # The receipt carries no reference (issue 12): the subject's open request of this kind holds it.
                claim = ledger.claim_of(holding.email, RequestKind(kind))
                if claim is None:
                    raise RuntimeError(f"no open {kind} request after a 202 for {holding.email}")
                references[claim.request_id] = (kind, holding)
            say(f"{len(references)} requests submitted; killing workers while the sandboxes inject faults…")

            replying_since: dict[str, float] = {}
            settled_at: dict[str, float] = {}
            outages: list[list[float]] = []  # [start, end] of every SMTP or ledger outage (end 0 while it lasts)
            busy: set[str] = set()  # machines the monkey is killing and restarting (not the supervisor's)

            def settled() -> tuple[set[str], set[str]]:
                stages = {r.request_id: r.stage for r in ledger.requests() if r.request_id in references}
                now = time.monotonic()
                for reference, stage in stages.items():
                    if stage == Stage.REPLYING:
                        since = replying_since.setdefault(reference, now)
                        report.replying_seconds[reference] = now - since - _overlap(outages, since, now)
                    else:
                        replying_since.pop(reference, None)
                    if stage in (Stage.CLOSED, Stage.NEEDS_ATTENTION):
                        settled_at.setdefault(reference, now - begin)
                closed = {ref for ref, stage in stages.items() if stage == Stage.CLOSED}
                waiting = {ref for ref, stage in stages.items() if stage == Stage.NEEDS_ATTENTION}
                return closed, waiting

            async def chaos_monkey() -> None:
                plan = ["kill"] * kills + ["blackout"] * blackouts
                rng.shuffle(plan)
                for what in plan:
                    await asyncio.sleep(rng.uniform(1.0, 4.0))
                    alive = [m for m in machines if m.worker is not None and m.worker.poll() is None]
                    victims = alive if what == "blackout" else [rng.choice(alive)] if alive else []
                    busy.update(m.name for m in victims)
                    for victim in victims:
                        victim.kill_worker()
                    if what == "blackout":
                        report.blackouts += 1
                    else:
                        report.kills += 1
                    await asyncio.sleep(rng.uniform(0.5, 2.0) if what == "kill" else rng.uniform(2.0, 5.0))
                    for victim in victims:
                        victim.start_worker()
                    busy.difference_update(m.name for m in victims)

            async def cut_services() -> None:
                plan = ["smtp"] * smtp_outages + ["ledger"] * ledger_outages
                rng.shuffle(plan)
                for what in plan:
                    await asyncio.sleep(rng.uniform(3.0, 10.0))
                    window = [time.monotonic(), 0.0]
                    outages.append(window)
                    if what == "smtp":
                        mail.stop()
                        report.smtp_outages += 1
                    else:
                        assert proxy is not None
                        proxy.down()
                        report.ledger_outages += 1
                    try:
                        await asyncio.sleep(rng.uniform(5.0, 15.0))
                    finally:
                        if what == "smtp":
                            mail.start()
                        elif proxy is not None:
                            proxy.up()
                        window[1] = time.monotonic()

            def supervise() -> None:
                """Restart what exited on its own (a worker started while the database was cut gives up)."""
                for machine in machines:
                    if machine.name not in busy and machine.worker is not None and machine.worker.poll() is not None:
                        machine.start_worker()
                        report.restarted += 1
                if entry.intake is not None and entry.intake.poll() is not None:
                    entry.start_intake()

            monkey = asyncio.gather(chaos_monkey(), cut_services())
            next_progress = 30.0
            try:
                while True:
                    supervise()
                    closed, waiting = await asyncio.to_thread(settled)
                    if len(closed | waiting) == len(references) and (monkey.done() or not waiting):
                        break
                    if time.monotonic() - begin > timeout:
                        break
                    if time.monotonic() - begin > next_progress:
                        next_progress += 30
                        say(f"  {time.monotonic() - begin:4.0f} s: {len(closed)} closed, {len(waiting)} waiting "
                            f"for an operator, {report.kills} kills")
                    await asyncio.sleep(1.0)
            finally:
                monkey.cancel()
                await asyncio.gather(monkey, return_exceptions=True)
            for machine in machines:  # every worker up for the queries and the checks
                if machine.worker is None or machine.worker.poll() is not None:
                    machine.start_worker()
            if entry.intake is not None and entry.intake.poll() is not None:
                entry.start_intake()
                await entry.wait_for_intake()
            boxes.set_rates(FaultRates())  # the checks read the sandboxes without faults
            report.seconds = time.monotonic() - begin
            report.settle_seconds = list(settled_at.values())
            await _check(report, http, temporal.client, ledger, boxes, mail, entry.url, references, logs)
        for faults in boxes.every_fault.values():
            report.sandbox_calls += len(faults.log)
            for kind, n in faults.injected.items():
                report.faults[kind] = report.faults.get(kind, 0) + n
        return report
    finally:
        ledger.close()
        for machine in machines:
            machine.stop()
        if proxy is not None:
            await proxy.stop()
        await temporal.shutdown()
        await boxes.stop()
        mail.stop()


async def _check(report: ChaosReport, http: httpx.AsyncClient, client: Client, ledger: Ledger, boxes: Sandboxes,
                 mail: MailSink, intake: str, references: dict[str, tuple[str, Holding]],
                 logs: Callable[[], str]) -> None:
    from dsr.domain.model import ConnectorState
    from workflows.request import DataSubjectRequest

    stages = {r.request_id: r.stage for r in await asyncio.to_thread(ledger.requests)}
    replies: dict[str, list] = {}
    for _, message in list(mail.messages):
        subject = str(message["Subject"]).strip()
        if FINAL_REPLY.match(subject) and (reference := reference_in(subject)) in references:
            replies.setdefault(reference, []).append(message)

    for reference, (kind, holding) in references.items():
        stage = Stage(stages.get(reference, "missing")) if stages.get(reference) else None
        sent = replies.get(reference, [])
        if len(sent) > 1:
            # Different Message-IDs are two replies: a failure. The same Message-ID twice is one reply delivered
            # again: a worker lost between the SMTP server's acceptance and the sent-log, the window SMTP leaves
            # open (README, "Each email once"); mail clients show it once. It fails too unless the ledger says so
            # (`possible_duplicate` on the reply's sent-log), then it is counted on its own line.
            ids = {str(m["Message-ID"]) for m in sent}
            flagged = any(e.event == "notice_sent" and e.details.get("template", "").startswith("reply_")
                          and e.details.get("possible_duplicate") == "true" for e in ledger.events(reference))
            line = (f"{reference} ({len(sent)} emails, {len(ids)} Message-ID(s), "
                    f"{_replying_story(ledger, reference)})")
            (report.resent_flagged if len(ids) == 1 and flagged else report.duplicate_replies).append(line)
        if stage == Stage.NEEDS_ATTENTION:
            handle: WorkflowHandle[DataSubjectRequest, RequestStatus] = client.get_workflow_handle_for(
                DataSubjectRequest.run, reference)
            status = await handle.query(DataSubjectRequest.status)
            reasons = [f"{p.connector}: {p.error}" for p in status.connectors
                       if p.state == ConnectorState.FAILED and p.error]
            report.needs_attention[reference] = "; ".join(reasons) or status.reply_held
            continue
        if stage != Stage.CLOSED:
            where = str(stage.value if stage else "not in the ledger")
            report.unsettled[reference] = f"{where} ({await _stuck_on(client, reference)})"
            continue
        report.closed += 1
        if not sent:
            report.missing_replies.append(reference)
            continue
        text = plain_text(sent[0])
        if kind in ("access", "portability"):
            report.bundles_checked += 1
            token = re.search(re.escape(intake) + r"/exports/(\S+)", text)
            if token is None:
                report.incomplete_bundles.append(f"{reference}: no download link in the reply")
                continue
            answer = await download(http, intake, token.group(1), download_code_in(text))
            if answer.status_code != 200:
                report.incomplete_bundles.append(f"{reference}: download answered {answer.status_code}")
                continue
            counts = manifest_counts(answer.content)
            expected = expected_in_bundle(holding, kind)
            got = {key: counts.get(key, 0) for key in expected}
            if got != expected:
                wrong = {f"{s}/{d}": (got[(s, d)], n) for (s, d), n in expected.items() if got[(s, d)] != n}
                report.incomplete_bundles.append(f"{reference}: (bundle, held) {wrong}")
        elif kind == "erasure":
            report.erasures_checked += 1
            untrue = []
            if str(sent[0]["Subject"]).startswith("No data about you"):
                untrue.append("a no-data reply")
            if ("No data about you" in text
                    or "Already deleted before this request reached it (not by this request)" in text):
                untrue.append("a system said to hold nothing (or to have been erased before)")
            still = await _still_held(boxes, holding)
            if still:
                untrue.append(f"still held in {', '.join(still)}")
            if untrue:
                report.untrue_erasures.append(f"{reference}: {'; '.join(untrue)}")
            handle = client.get_workflow_handle_for(DataSubjectRequest.run, reference)
            status = await handle.query(DataSubjectRequest.status)
            if status.residuals:
                report.residuals += 1
                told = any(reference in str(m["Subject"]) and "data to erase by hand" in str(m["Subject"])
                           for rcpts, m in list(mail.messages) if OPERATOR in rcpts)
                if not told or "Not erased automatically" not in text:
                    report.residuals_unreported.append(
                        f"{reference}: operator {'told' if told else 'not told'}, reply "
                        f"{'says' if 'Not erased automatically' in text else 'does not say'} what is left")
    for system, faults in boxes.every_fault.items():
        report.mutated_twice += [f"{system} {request} x{n}" for request, n in faults.mutated_twice()]


def _replying_story(ledger: Ledger, reference: str) -> str:
    """The ledger events of a request around its reply, in order (no personal data)."""
    wanted = ("replying", "reply_sent", "notice_sent", "notice_deferred", "notice_failed", "closed")
    return " > ".join(e.event + (f":{e.details.get('template', '')}" if e.event == "notice_sent" else "")
                      for e in ledger.events(reference) if e.event in wanted)


async def _stuck_on(client: Client, reference: str) -> str:
    """What an unsettled request waits on, so that a failed run says why: each connector's state, and each
    pending activity's type and attempt (a connector deep in its backoff, a step that never ends...)."""
    from workflows.request import DataSubjectRequest

    try:
        handle: WorkflowHandle[DataSubjectRequest, RequestStatus] = client.get_workflow_handle_for(
            DataSubjectRequest.run, reference)
        status = await handle.query(DataSubjectRequest.status)
        described = await handle.describe()
    except Exception as err:  # the workflow itself may be what is missing
        return f"not queryable: {type(err).__name__}"
    connectors = ", ".join(
        f"{p.connector} {p.state.value}" + (" degraded" if p.degraded else "")
        + (f" resumed {p.resumed}" if p.resumed else "") + (f" failing: {p.error}" if p.error else "")
        for p in status.connectors)
    pending = ", ".join(f"{a.activity_type.name} attempt {a.attempt}"
                        for a in described.raw_description.pending_activities)
    return f"connectors: {connectors or 'none'}; pending: {pending or 'none'}" + (
        f"; waiting for {status.waiting_for}" if status.waiting_for else "")


async def main(arguments: argparse.Namespace) -> int:
    import logging

    from bench.scale import ledger_url

    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)  # the dropped connections are on purpose

    work = Path(tempfile.mkdtemp(prefix="dsr-bench-chaos-"))
    database_url, cluster = ledger_url(work)
    s3 = S3Server(f"chaos-{uuid.uuid4().hex[:8]}")
    try:
        report = await run_chaos(work, requests=arguments.requests, kills=arguments.kills,
                                 fault_share=arguments.faults, database_url=database_url, s3=s3,
                                 workers=arguments.workers, seed=arguments.seed, timeout=arguments.timeout,
                                 blackouts=arguments.blackouts, smtp_outages=arguments.smtp_outages,
                                 ledger_outages=arguments.ledger_outages)
    finally:
        s3.stop()
        if cluster is not None:
            cluster.stop()  # type: ignore[attr-defined]
    print(report.table())
    print(f"(machines' logs under {work})")
    return 1 if report.failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="requests, of the four kinds in turn")
    parser.add_argument("--kills", type=int, default=30, help="SIGKILLs of a worker (each restarted)")
    parser.add_argument("--faults", type=float, default=0.15, help="share of sandbox calls faulted (0 to 1)")
    parser.add_argument("--workers", type=int, default=2, help="dsr worker processes, each on a machine of its own")
    parser.add_argument("--blackouts", type=int, default=3, help="times every worker is killed at once")
    parser.add_argument("--smtp-outages", type=int, default=2, help="SMTP server stopped 5-15 s")
    parser.add_argument("--ledger-outages", type=int, default=2, help="ledger database cut 5-15 s (PostgreSQL)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before unsettled requests count as lost")
    sys.exit(asyncio.run(main(parser.parse_args())))
