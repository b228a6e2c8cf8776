"""Benchmark: what open requests cost while they wait, by the size of the worker's workflow cache.

A request sleeps for weeks between a handful of workflow tasks (waiting for the subject's identity, for the
deadline's timers). The Temporal SDK keeps up to ``max_cached_workflows`` of them in the worker's memory
(``DSR_WORKFLOW_CACHE``); one evicted is replayed from its history when it next wakes. For each cache size this
prints, with N requests open and waiting for identity:

* the worker's resident memory (RSS of the ``dsr worker`` process), empty and with the N requests waiting;
* the Temporal dev server's RSS;
* the time to query every request once (``status``): a query of an evicted workflow replays its history,
  so this is what a small cache costs when everything wakes at once (the worst case: timers spread over
  weeks wake a few at a time).

The rounds are interleaved (cache sizes alternate), and each round starts its own worker on its own task queue.

Run: ``.venv/bin/python bench/idle.py [--requests 1000] [--caches 1000,100]``. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
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
    shared_environment,
    start_sandboxes,
)
from tests.harness import MailSink, S3Server, binary  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def one_round(cache: int, requests: int, *, work: Path, temporal: WorkflowEnvironment, server_pid: int,
                    keys: str, database_url: str, s3: S3Server, boxes: Sandboxes, mail: MailSink) -> dict[str, float]:
    from intake.submission import Submission, prepare, start

    shared = shared_environment(temporal=temporal.client.service_client.config.target_host,
                                task_queue=f"idle-{uuid.uuid4()}", keys=keys, database_url=database_url, s3=s3,
                                prefix=f"idle-{uuid.uuid4().hex[:8]}", mail=mail, public_url="http://127.0.0.1:9")
    shared["DSR_WORKFLOW_CACHE"] = str(cache)
    run = work / f"cache-{cache}-{uuid.uuid4().hex[:6]}"
    run.mkdir()
    machine = Machine("machine", run, shared, connectors_toml(boxes))
    ledger = Ledger(database_url, KeyRing.from_env_value(keys))
    inputs = []
    try:
        machine.start_worker()
        assert machine.worker is not None
        await asyncio.sleep(5)  # the worker connects and settles
        empty = rss_mb(machine.worker.pid)
        settings = Settings.from_env(machine.env)
        inputs = [prepare(Submission(kind="access", email=f"idle.{uuid.uuid4().hex[:10]}@example.org",
                                     name="Idle Person"), settings) for _ in range(requests)]
        for request in inputs:
            await start(temporal.client, request, task_queue=shared["DSR_TASK_QUEUE"])
        ids = {r.request_id for r in inputs}
        began = time.perf_counter()
        while True:
            waiting = {r.request_id for r in await asyncio.to_thread(ledger.requests, Stage.AWAITING_IDENTITY)}
            if ids <= waiting:
                break
            if time.perf_counter() - began > 3600:
                raise RuntimeError(f"only {len(ids & waiting)} of {len(ids)} waiting:\n{machine.log('worker')}")
            await asyncio.sleep(1)
        await asyncio.sleep(10)  # the last tasks finish (acknowledgement, identity email)
        loaded = rss_mb(machine.worker.pid)
        server = rss_mb(server_pid)
        began = time.perf_counter()
        semaphore = asyncio.Semaphore(20)

        async def query(request_id: str) -> None:
            async with semaphore:
                await temporal.client.get_workflow_handle(request_id).query("status")

        await asyncio.gather(*(query(i) for i in ids))
        queried = time.perf_counter() - began
        return {"empty": empty, "loaded": loaded, "server": server, "query_all": queried}
    finally:
        ledger.close()
        machine.stop()
        for request in inputs:
            try:
                await temporal.client.get_workflow_handle(request.request_id).terminate("benchmark over")
            except Exception:  # noqa: S112 - already finished
                continue


async def main(requests: int, caches: list[int], rounds: int) -> None:
    from temporalio.testing import WorkflowEnvironment

    from workflows import search_attributes as sa

    with tempfile.TemporaryDirectory(prefix="dsr-bench-idle-") as folder:
        work = Path(folder)
        keys = new_keys()
        database_url = f"sqlite:///{work / 'ledger.sqlite3'}"
        s3 = S3Server(f"idle-{uuid.uuid4().hex[:8]}")
        mail = MailSink()
        mail.start()
        boxes = await start_sandboxes()
        temporal = await WorkflowEnvironment.start_local(
            dev_server_existing_path=binary("temporal"), ip="127.0.0.1", search_attributes=sa.ALL,
            data_converter=data_converter(KeyRing.from_env_value(keys)))
        try:
            server_pid = _server_pid(temporal)
            results: dict[int, list[dict[str, float]]] = {c: [] for c in caches}
            for n in range(rounds):
                order = caches if n % 2 == 0 else list(reversed(caches))
                for cache in order:
                    figures = await one_round(cache, requests, work=work, temporal=temporal, server_pid=server_pid,
                                              keys=keys, database_url=database_url, s3=s3, boxes=boxes, mail=mail)
                    results[cache].append(figures)
                    print(f"round {n + 1}, cache {cache}: worker {figures['empty']:.0f} MB empty, "
                          f"{figures['loaded']:.0f} MB with {requests} waiting; server {figures['server']:.0f} MB; "
                          f"every request queried in {figures['query_all']:.1f} s", flush=True)
            base = caches[0]
            for cache in caches[1:]:
                grown = statistics.median(r["loaded"] - r["empty"] for r in results[cache])
                grown_base = statistics.median(r["loaded"] - r["empty"] for r in results[base])
                queried = statistics.median(r["query_all"] for r in results[cache])
                queried_base = statistics.median(r["query_all"] for r in results[base])
                print(f"cache {cache} / cache {base}: worker memory grown x{grown / grown_base:.2f}, "
                      f"time to query every request x{queried / queried_base:.2f}")
        finally:
            await temporal.shutdown()
            await boxes.stop()
            mail.stop()
            s3.stop()


def _server_pid(temporal: object) -> int:
    """The dev server: the child process of this one started with ``server start-dev``."""
    import os

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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--caches", default="1000,100", help="cache sizes to compare, the first is the reference")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.requests, [int(c) for c in args.caches.split(",")], args.rounds))
