"""Benchmark: the engine on several workers, and the heavy export on S3 against local files.

Prints two ratios (the machine is shared and noisy, so ratios of medians over interleaved rounds):

1. **throughput with 2 workers / with 1**: light access requests (identity trusted) through the whole
   lifecycle (ledger, three connectors, bundle in the object store, reply by SMTP) on the same task queue, with
   ``dsr worker`` processes of their own `DSR_HOME`s, a Temporal dev server, the ledger on PostgreSQL (SQLite when
   PostgreSQL is not installed: then the workers share one file) and the bucket on moto's S3 server.
2. **heavy export, S3 / file**: the heavy customer's WooCommerce export (10,000 orders) through the connector
   activity into the export store, with ``DSR_STORAGE_URL`` on the S3 server and on a local folder.

Run: ``.venv/bin/python bench/scale.py [--rounds 2] [--requests 24]``. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from temporalio.testing import WorkflowEnvironment

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsr.config.settings import Settings  # noqa: E402
from dsr.domain.model import Stage  # noqa: E402
from dsr.store.crypto import KeyRing, data_converter  # noqa: E402
from dsr.store.ledger import Ledger  # noqa: E402
from tests.cluster import (  # noqa: E402
    Machine,
    Sandboxes,
    connectors_toml,
    new_keys,
    seed_person,
    shared_environment,
    start_sandboxes,
)
from tests.harness import MailSink, S3Server, binary  # noqa: E402
from workflows import search_attributes as sa  # noqa: E402


def ledger_url(work: Path) -> tuple[str, object | None]:
    """A PostgreSQL database of a throwaway cluster when the server is installed, else a SQLite file."""
    from tests.conftest import _Cluster, _postgres_bindir

    bindir = _postgres_bindir()
    if bindir is None:
        return f"sqlite:///{work / 'ledger.sqlite3'}", None
    cluster = _Cluster(bindir)
    cluster.start()
    return cluster.url().render_as_string(hide_password=False), cluster


async def throughput(workers: int, requests: int, *, work: Path, temporal: WorkflowEnvironment, keys: str,
                     database_url: str, s3: S3Server, boxes: Sandboxes, mail: MailSink, emails: list[str]) -> float:
    """Requests closed per second with ``workers`` worker processes on one task queue."""
    from intake.submission import Submission, prepare, start

    shared = shared_environment(temporal=temporal.client.service_client.config.target_host,
                                task_queue=f"bench-{uuid.uuid4()}", keys=keys, database_url=database_url, s3=s3,
                                prefix=f"run-{uuid.uuid4().hex[:8]}", mail=mail, public_url="http://127.0.0.1:9")
    shared["DSR_IDENTITY_METHOD"] = "trusted"
    run = work / f"run-{uuid.uuid4().hex[:8]}"
    run.mkdir()
    machines = [Machine(f"machine-{n}", run, shared, connectors_toml(boxes)) for n in range(workers)]
    ledger = Ledger(database_url, KeyRing.from_env_value(keys))
    try:
        for machine in machines:
            machine.start_worker()
        settings = Settings.from_env(machines[0].env)
        inputs = [prepare(Submission(kind="access", email=emails[n % len(emails)], name="Bench Person"), settings)
                  for n in range(requests)]
        await asyncio.sleep(3)  # the workers connect (not timed)
        begin = time.perf_counter()
        for request in inputs:
            await start(temporal.client, request, task_queue=shared["DSR_TASK_QUEUE"])
        ids = {r.request_id for r in inputs}
        while True:
            closed = {r.request_id for r in await asyncio.to_thread(ledger.requests, Stage.CLOSED)} & ids
            if len(closed) == len(ids):
                break
            if time.perf_counter() - begin > 900:
                raise RuntimeError(f"only {len(closed)} of {len(ids)} closed:\n{machines[0].log('worker')}")
            await asyncio.sleep(0.2)
        return requests / (time.perf_counter() - begin)
    finally:
        ledger.close()
        for machine in machines:
            machine.stop()
        for request_id in (r.request_id for r in inputs):
            try:
                await temporal.client.get_workflow_handle(request_id).terminate("benchmark over")
            except Exception:  # noqa: S112 - already finished
                continue


HEAVY_EXPORT = textwrap.dedent("""
    import asyncio, json, sys, time
    from temporalio.testing import ActivityEnvironment
    from activities.connectors import ConnectorActivities
    from connectors.http import RateLimiter
    from connectors.woocommerce import WooCommerceConnector
    from dsr.config.settings import Settings
    from dsr.store.crypto import KeyRing
    from dsr.domain.model import ConnectorTask, RequestKind, Subject
    from dsr.store import open_store
    from dsr.store.exports import ExportStore

    async def main(shop_url, email, key, secret):
        settings = Settings.from_env()
        keyring = KeyRing.from_settings(settings)
        store = ExportStore(open_store(settings), keyring)
        woo = WooCommerceConnector("woocommerce", consumer_key=key, consumer_secret=secret, base_url=shop_url,
                                   rate_limit=RateLimiter(1000, 1))
        fan_out = ConnectorActivities([woo], store)
        start = time.perf_counter()
        outcome = await ActivityEnvironment().run(fan_out.run_connector, ConnectorTask(
            request_id=sys.argv[5], connector="woocommerce", kind=RequestKind.ACCESS, subject=Subject(email=email)))
        seconds = time.perf_counter() - start
        await woo.aclose()
        print(json.dumps({"seconds": seconds, "exported": outcome.counts.get("exported", 0)}))

    asyncio.run(main(*sys.argv[1:5]))
""")


def heavy_export(env: dict[str, str], shop_url: str, email: str) -> float:
    from datetime import date

    from intake.submission import new_request_id
    from tests.cluster import WOO_KEY, WOO_SECRET

    request_id = new_request_id(date.today())
    done = subprocess.run([sys.executable, "-c", HEAVY_EXPORT, shop_url, email, WOO_KEY, WOO_SECRET, request_id],
                          env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    import json

    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["exported"] != 10_000:  # a fast export of the wrong thing measures nothing
        raise RuntimeError(f"the heavy export exported {result['exported']} orders, not 10,000")
    return float(result["seconds"])


async def main(rounds: int, requests: int) -> None:
    import os

    from temporalio.testing import WorkflowEnvironment

    work = Path(tempfile.mkdtemp(prefix="dsr-bench-scale-"))
    keys = new_keys()
    keyring = KeyRing.from_env_value(keys)
    database_url, cluster = ledger_url(work)
    s3 = S3Server(f"bench-{uuid.uuid4().hex[:8]}")
    boxes = await start_sandboxes()
    mail = MailSink()
    mail.start()
    temporal = await WorkflowEnvironment.start_local(
        dev_server_existing_path=binary("temporal"), ip="127.0.0.1", search_attributes=sa.ALL,
        data_converter=data_converter(keyring))
    try:
        emails = [f"bench.{n}@example.org" for n in range(8)]
        for email in emails:
            await seed_person(boxes, email, "Bench Person", notes=2, orders=5, charges=1)
        heavy = "bench.heavy@example.com"
        await seed_person(boxes, heavy, "Heavy Bench", notes=0, orders=10_000, charges=0)

        one: list[float] = []
        two: list[float] = []
        for n in range(rounds):  # interleaved: a slow minute of the shared machine hits both
            for workers, figures in ((1, one), (2, two)) if n % 2 == 0 else ((2, two), (1, one)):
                rate = await throughput(workers, requests, work=work, temporal=temporal, keys=keys,
                                        database_url=database_url, s3=s3, boxes=boxes, mail=mail, emails=emails)
                figures.append(rate)
                print(f"round {n + 1}: {workers} worker(s): {rate:.2f} requests/s", flush=True)
        print(f"throughput: 2 workers / 1 worker = x{statistics.median(two) / statistics.median(one):.2f} "
              f"(medians {statistics.median(one):.2f} and {statistics.median(two):.2f} requests/s, "
              f"{requests} light access requests per run)")

        shop_url = boxes.servers[1].url
        base = {**os.environ, "PYTHONPATH": str(ROOT), "DSR_KEYS": keys, **s3.env}
        file_env = {**base, "DSR_HOME": str(work / "file-home"), "DSR_STORAGE_URL": f"file://{work / 'objects'}"}
        s3_env = {**base, "DSR_HOME": str(work / "s3-home"), "DSR_STORAGE_URL": f"s3://{s3.bucket}/bench"}
        on_file: list[float] = []
        on_s3: list[float] = []
        for n in range(rounds):
            for name, env, figures in (("file", file_env, on_file), ("s3", s3_env, on_s3)) if n % 2 == 0 else (
                    ("s3", s3_env, on_s3), ("file", file_env, on_file)):
                seconds = await asyncio.to_thread(heavy_export, env, shop_url, heavy)
                figures.append(seconds)
                print(f"round {n + 1}: heavy export on {name}: {seconds:.2f} s", flush=True)
        print(f"heavy export (10,000 orders): S3 / file = x{statistics.median(on_s3) / statistics.median(on_file):.2f}"
              f" (medians {statistics.median(on_file):.2f} s and {statistics.median(on_s3):.2f} s)")
    finally:
        await temporal.shutdown()
        await boxes.stop()
        mail.stop()
        s3.stop()
        if cluster is not None:
            cluster.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=24)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.requests))
