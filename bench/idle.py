"""Benchmark: what open requests cost while they wait, by the size of the worker's workflow cache.

A request sleeps for weeks between a handful of workflow tasks (waiting for the subject's identity, for the
deadline's timers). The Temporal SDK keeps up to ``max_cached_workflows`` of them in the worker's memory
(``DSR_WORKFLOW_CACHE``); one evicted is replayed from its history when it next wakes. For each cache size this
prints, with N requests open and waiting for identity:

* the worker's resident memory (RSS of the ``dsr worker`` process), empty, with the N requests waiting, its peak
  (sampled every two seconds) and after the queries;
* the Temporal dev server's RSS before and after the round (the server keeps every history in memory: its growth per
  1,000 requests is the figure);
* the time to query requests (``status``), every one or ``--queries`` chosen at random, ten at once: a query of an
  evicted workflow replays its history, so this is what a small cache costs when everything wakes at once (the worst
  case: timers spread over weeks wake a few at a time). A query that fails is counted, not fatal.

The rounds are interleaved (cache sizes alternate), and each round starts its own worker on its own task queue. A
worker that stops by itself ends the benchmark with its exit status and the end of its log (the whole log is kept).

Run: ``.venv/bin/python bench/idle.py [--requests 1000] [--caches 1000,100] [--queries 0]``. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from temporalio.testing import WorkflowEnvironment

    from dsr.domain.model import RequestInput

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


class Watch:
    """Samples the worker's and the server's memory every two seconds, keeps the peaks, and notices the worker's
    end: at 10,000 requests a run lasts half an hour, and a worker that stops must be said, not waited for."""

    def __init__(self, machine: Machine, server_pid: int) -> None:
        assert machine.worker is not None, "the machine's worker is started first"
        self.machine = machine
        self.worker = machine.worker
        self.server_pid = server_pid
        self.worker_peak = 0.0
        self.server_peak = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Whatever ended the sampler, the round's cleanup (the worker, the requests) must still run.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _sample(self) -> None:
        while self.worker.poll() is None:
            with contextlib.suppress(OSError, RuntimeError):
                self.worker_peak = max(self.worker_peak, rss_mb(self.worker.pid))
                self.server_peak = max(self.server_peak, rss_mb(self.server_pid))
            await asyncio.sleep(2)

    def check(self) -> None:
        """Raise, with the end of the worker's log, if the worker has stopped."""
        code = self.worker.poll()
        if code is not None:
            raise WorkerStopped(f"the worker stopped (exit status {code}, peak {self.worker_peak:.0f} MB); "
                                f"its log ends:\n{self.machine.log('worker')}")

    def worker_rss(self) -> float:
        """The worker's RSS now; WorkerStopped (with its log) if it has ended, even between two looks."""
        self.check()
        try:
            return rss_mb(self.worker.pid)
        except (OSError, RuntimeError):
            self.worker.wait(timeout=5)
            self.check()
            raise

    @property
    def stopped(self) -> bool:
        return self.worker.poll() is not None


class WorkerStopped(RuntimeError):
    """The round's worker ended by itself."""


async def one_round(cache: int, requests: int, *, queries: int, work: Path, temporal: WorkflowEnvironment,
                    server_pid: int, keys: str, database_url: str, s3: S3Server, boxes: Sandboxes,
                    mail: MailSink) -> dict[str, float]:
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
    watch: Watch | None = None
    try:
        server_before = rss_mb(server_pid)
        machine.start_worker()
        assert machine.worker is not None
        await asyncio.sleep(5)  # the worker connects and settles
        empty = rss_mb(machine.worker.pid)
        watch = Watch(machine, server_pid)
        watch.start()
        settings = Settings.from_env(machine.env)
        inputs = [prepare(Submission(kind="access", email=f"idle.{uuid.uuid4().hex[:10]}@example.org",
                                     name="Idle Person"), settings) for _ in range(requests)]
        # Started twenty at a time: the server takes them as fast as a client sends them; the worker's
        # first tasks (the acknowledgement, the identity email) are what takes the time.
        starting = asyncio.Semaphore(20)

        async def begin(request: RequestInput) -> None:
            async with starting:
                await start(temporal.client, request, task_queue=shared["DSR_TASK_QUEUE"])

        began = time.perf_counter()
        await asyncio.gather(*(begin(r) for r in inputs))
        ids = {r.request_id for r in inputs}
        said = began
        while True:
            watch.check()
            waiting = ids & {r.request_id for r in await asyncio.to_thread(ledger.requests, Stage.AWAITING_IDENTITY)}
            if len(waiting) == len(ids):
                break
            now = time.perf_counter()
            if now - said >= 60:
                print(f"  {len(waiting)} of {len(ids)} waiting for identity after {now - began:.0f} s; worker "
                      f"{watch.worker_rss():.0f} MB, server {rss_mb(server_pid):.0f} MB", flush=True)
                said = now
            if now - began > 3 * 3600:
                raise RuntimeError(f"only {len(waiting)} of {len(ids)} waiting:\n{machine.log('worker')}")
            await asyncio.sleep(2)
        opened = time.perf_counter() - began
        await asyncio.sleep(10)  # the last tasks finish (acknowledgement, identity email)
        loaded = watch.worker_rss()
        server = rss_mb(server_pid)
        print(f"  cache {cache}: {len(ids)} waiting after {opened:.0f} s; worker {empty:.0f} MB empty, {loaded:.0f} MB "
              f"now (peak {watch.worker_peak:.0f}); server {server_before:.0f} MB before, {server:.0f} MB now",
              flush=True)
        # Every request queried once, or a sample: a query of an evicted request replays its history, and what
        # each costs is the figure (at 10,000 and a cache of 1,000, nine in ten are replays).
        asked = random.sample(sorted(ids), min(queries, len(ids))) if queries else sorted(ids)
        querying = asyncio.Semaphore(10)
        times: list[float] = []
        failures: dict[str, int] = {}  # by error and message (ids and timings only: no personal data)

        async def query(request_id: str) -> None:
            async with querying:
                if watch.stopped:  # said below, with its log: the queries left would each wait out their timeout
                    return
                sent = time.perf_counter()
                try:
                    await temporal.client.get_workflow_handle(request_id).query(
                        "status", rpc_timeout=timedelta(seconds=120))
                except Exception as error:  # counted and printed, not fatal to the figures
                    why = f"{type(error).__name__}: {str(error)[:120]}"
                    failures[why] = failures.get(why, 0) + 1
                    return
                times.append(time.perf_counter() - sent)

        began = time.perf_counter()
        await asyncio.gather(*(query(i) for i in asked))
        queried = time.perf_counter() - began
        watch.check()
        if failures:
            print(f"  cache {cache}: {sum(failures.values())} of {len(asked)} queries failed: {failures}", flush=True)
        after = watch.worker_rss()
        return {"empty": empty, "loaded": loaded, "after_queries": after, "worker_peak": watch.worker_peak,
                "server_before": server_before, "server": server, "server_peak": watch.server_peak,
                "opened": opened, "queried": len(times), "query_all": queried,
                "query_median": statistics.median(times) if times else float("nan"),
                "query_p90": statistics.quantiles(times, n=10)[-1] if len(times) >= 10 else float("nan"),
                "per_query": queried / len(asked)}
    except WorkerStopped as stopped:
        kept = Path(tempfile.gettempdir()) / f"dsr-idle-worker-{uuid.uuid4().hex[:6]}.log"
        shutil.copy(machine.home / "worker.log", kept)
        raise WorkerStopped(f"{stopped}\n(the whole log: {kept})") from None
    finally:
        if watch is not None:
            await watch.stop()
        ledger.close()
        machine.stop()
        ending = asyncio.Semaphore(20)

        async def end(request: RequestInput) -> None:
            async with ending:
                with contextlib.suppress(Exception):  # already finished
                    await temporal.client.get_workflow_handle(request.request_id).terminate("benchmark over")

        await asyncio.gather(*(end(r) for r in inputs))


async def main(requests: int, caches: list[int], rounds: int, queries: int) -> None:
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
                    f = await one_round(cache, requests, queries=queries, work=work, temporal=temporal,
                                        server_pid=server_pid, keys=keys, database_url=database_url, s3=s3,
                                        boxes=boxes, mail=mail)
                    results[cache].append(f)
                    grown = (f["server"] - f["server_before"]) / requests * 1000
                    print(f"round {n + 1}, cache {cache}: {requests} waiting (opened in {f['opened']:.0f} s): worker "
                          f"{f['empty']:.0f} MB empty, {f['loaded']:.0f} MB with them (peak {f['worker_peak']:.0f}), "
                          f"{f['after_queries']:.0f} MB after the queries; server {f['server_before']:.0f} -> "
                          f"{f['server']:.0f} MB (+{grown:.0f} MB per 1,000; peak {f['server_peak']:.0f}); "
                          f"{f['queried']:.0f} queried in {f['query_all']:.1f} s ({f['per_query'] * 1000:.0f} ms "
                          f"each; median answer {f['query_median'] * 1000:.0f} ms, 90th percentile "
                          f"{f['query_p90'] * 1000:.0f} ms, 10 at once)", flush=True)
            base = caches[0]
            for cache in caches[1:]:
                grown = statistics.median(r["loaded"] - r["empty"] for r in results[cache])
                grown_base = statistics.median(r["loaded"] - r["empty"] for r in results[base])
                queried = statistics.median(r["per_query"] for r in results[cache])
                queried_base = statistics.median(r["per_query"] for r in results[base])
                print(f"cache {cache} / cache {base}: worker memory grown x{grown / grown_base:.2f}, "
                      f"time to query a request x{queried / queried_base:.2f}")
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
    parser.add_argument("--queries", type=int, default=0,
                        help="query this many requests, chosen at random (0: every one)")
    args = parser.parse_args()
    if args.requests < 1 or args.queries < 0 or args.rounds < 1:
        parser.error("--requests and --rounds must be at least 1, --queries 0 (every request) or more")
    try:
        asyncio.run(main(args.requests, [int(c) for c in args.caches.split(",")], args.rounds, args.queries))
    except WorkerStopped as stopped:
        sys.exit(f"bench/idle.py: {stopped}")
