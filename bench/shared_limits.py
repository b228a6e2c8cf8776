"""Benchmark: two workers against one vendor account, with the rate limit per process and shared.

Two worker processes (each its own ledger engine on one database, its own HubSpot connector) read contacts
from the HubSpot sandbox as fast as the connector's rate limit lets them. The sandbox enforces the account's
limit (the real one, scaled down so a round takes seconds: ``--limit`` calls per ``--per`` seconds) and counts
the 429s it answers. Printed per mode: calls the sandbox refused with 429 per 100 calls sent, and the calls
per second that went through, as a ratio of the account's limit (the machine is shared: a ratio, not a rate).

    .venv/bin/python bench/shared_limits.py [--calls 150] [--limit 20] [--per 2] [--database URL] [--modes M] [--load N]
    .venv/bin/python bench/shared_limits.py --calls 750 --limit 100 --per 10 --modes shared-250ms,shared

Each worker's limiter is configured with the account's limit, as dsr.toml says it, plus the margin the configuration
adds (``connectors.http.with_margin``), and leaves at most ``connectors.http.LATE_TOLERANCE`` after its slot (later,
it reserves again; its latest wake-up is printed). Per process, two workers may together send twice that; shared,
they queue in one window. ``shared-250ms`` is ``shared`` letting a call leave up to 250 ms after its slot (tried on
HubSpot's real window, not kept: 429s); ``shared-0`` the shared window with a flat 10% margin and a call woken late
for its slot still sent. Modes run interleaved in every round, each on its own window. To compare
with another checkout's limiter, run its copy of this file in turn. The scaled-down default (20 per 2 s) is quick;
HubSpot's real window (100 per 10 s, 15 windows: ``--calls 750``) wakes bursts of 100 calls, not 20: measure there
too.

The share of the limit used is read at the sandbox, from the arrival times of the calls it let through (the first
window's burst left out, and not the processes' start nor their end): (accepted - limit) / (last - first arrival),
over limit / per; and, as that figure suits only bursts of a whole window, the least-squares slope of the calls'
count against their arrival times, over limit / per ("fitted"). A limiter that keeps exactly the vendor's window
scores 1.0; the margin alone allows per / with_margin(per) (printed). A call refused (429) or woken too late for its
slot takes a new slot behind every other, so it arrives last: in a run of N windows each such straggler costs about
1/N of the figure, hence 150 calls per worker (15 windows) by default, not the 60 (6 windows) this benchmark first
ran with.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.http import LATE_TOLERANCE, RateLimiter, with_margin  # noqa: E402
from connectors.hubspot import HubSpotConnector  # noqa: E402
from dsr.store.crypto import KeyRing  # noqa: E402
from dsr.store.guards import Guards  # noqa: E402
from dsr.store.ledger import Ledger  # noqa: E402
from dsr.web.serve import serve_app  # noqa: E402
from sandbox.hubspot import HubSpotState, hubspot_app  # noqa: E402

TOKEN = "pat-bench"


def worker(url: str, database: str, mode: str, calls: int, limit: int, per: float, start: float) -> None:
    async def run() -> None:
        ring = KeyRing.generate()
        shared = mode != "per-process"
        with Ledger(database, ring) as ledger:
            windows = Guards(ledger.engine, ring) if shared else None
            if mode == "shared-0":
                limiter = RateLimiter(limit, per * 1.1, shared=windows, key="crm0", late_tolerance=None)
            elif mode == "shared-250ms":  # a call may leave up to 250 ms after its slot: tried, not kept
                limiter = RateLimiter(limit, with_margin(per), shared=windows, key="crm250", late_tolerance=0.25)
            else:  # as connectors.config builds it
                limiter = RateLimiter(limit, with_margin(per), shared=windows, key="crm" if shared else "",
                                      late_tolerance=LATE_TOLERANCE)
            connector = HubSpotConnector("crm", token=TOKEN, base_url=url, rate_limit=limiter)
            try:
                await asyncio.sleep(max(0.0, start - time.time()))
                results = await asyncio.gather(*(connector.check() for _ in range(calls)), return_exceptions=True)
                failed = [r for r in results if isinstance(r, BaseException)]
                if failed:
                    print(f"  a worker: {len(failed)} calls failed after their tries ({type(failed[0]).__name__})")
                if shared:
                    print(f"  a worker: {limiter.rereserved} slots reserved again (woken too late for them); latest "
                          f"wake-up {1000 * limiter.latest:.0f} ms after its slot")
            finally:
                await connector.aclose()

    asyncio.run(run())


async def round_(mode: str, args: argparse.Namespace, database: str) -> tuple[float, float, float]:
    state = HubSpotState()
    server = await serve_app(hubspot_app(state, token=TOKEN, rate_limit=(args.limit, args.per)),
                               host="127.0.0.1", port=0)
    try:
        start = time.time() + 2.0  # both processes begin together
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=worker, args=(server.url, database, mode, args.calls,
                                                            args.limit, args.per, start)) for _ in range(2)]
        for process in processes:
            process.start()
        await asyncio.gather(*(asyncio.to_thread(process.join) for process in processes))
    finally:
        await server.stop()
    sent = len(state.requests) + state.rate_limited
    arrived = sorted(state.accepted_at)
    used = (len(arrived) - args.limit) / (arrived[-1] - arrived[0]) if len(arrived) > args.limit else 0.0
    return 100 * state.rate_limited / max(1, sent), used / (args.limit / args.per), fitted(arrived) / (
        args.limit / args.per)


def fitted(arrived: list[float]) -> float:
    """Calls per second as the least-squares slope of the calls' count against their arrival times: the rate of a
    backlog whatever its shape. The first figure, (accepted - limit) / (last - first), is exact for bursts of a whole
    window (the last one counted at its start) but not for calls spread over the window (paced: the last window is
    counted to its end, so a finite run scores about one window in N less than its rate)."""
    if len(arrived) < 2:
        return 0.0
    mean_t = sum(arrived) / len(arrived)
    mean_i = (len(arrived) - 1) / 2
    spread = sum((t - mean_t) ** 2 for t in arrived)
    return sum((t - mean_t) * (i - mean_i) for i, t in enumerate(arrived)) / spread if spread else 0.0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=150, help="calls per worker and round")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--per", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database", help="ledger database URL (default: a SQLite file both workers share)")
    parser.add_argument("--modes", default="per-process,shared",
                        help="comma-separated, run in this order in every round: per-process, shared-0, "
                             "shared-250ms, shared")
    parser.add_argument("--load", type=int, default=0,
                        help="busy processes spinning beside the workers, as a shared machine's other work")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    spinners = [context.Process(target=spin, daemon=True) for _ in range(args.load)]
    for spinner in spinners:
        spinner.start()
    try:
        await run_rounds(parser, args)
    finally:
        for spinner in spinners:
            spinner.kill()


def spin() -> None:
    """``--load``: one core's worth of other work."""
    while True:
        pass


async def run_rounds(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        database = args.database or f"sqlite:///{Path(folder) / 'ledger.sqlite3'}"
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        unknown = sorted(set(modes) - {"per-process", "shared-0", "shared-250ms", "shared"})
        if unknown:
            parser.error(f"unknown mode(s): {', '.join(unknown)}")
        print(f"two workers, {args.calls} calls each, account limit {args.limit} per {args.per:g} s, "
              f"database {database.split(':', 1)[0]}; the margin allows {args.per / with_margin(args.per):.3f}x "
              f"the limit; late tolerance {1000 * LATE_TOLERANCE:.0f} ms (shared-250ms: 250 ms); {args.load} busy "
              "processes beside")
        for number in range(args.rounds):
            for mode in modes:  # interleaved: the machine's noise hits each
                refused, share, slope = await round_(mode, args, database)
                print(f"round {number + 1} {mode:13}: 429s {refused:5.1f} per 100 calls sent, "
                      f"throughput {share:4.2f}x the account's limit (fitted: {slope:4.2f}x)")


if __name__ == "__main__":
    asyncio.run(main())
