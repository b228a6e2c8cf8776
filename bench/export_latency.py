"""Benchmark: one export against vendors some distance away, its datasets paged one after another or side by side.

A connector's export is a chain of calls; against a vendor tens or hundreds of milliseconds away (``api.hubapi.com``
or ``api.stripe.com`` from a worker elsewhere), the chain's length is the export's time. HubSpot and Stripe page up
to ``DATASETS_AT_ONCE`` (4) datasets at once, each dataset's pages in order (so the checkpoint's counts mean what
they did). This runs the same export both ways in the same checkout (``DATASETS_AT_ONCE`` set to 1: the datasets one
after another, as before; Stripe's customer lookups go at once in both), interleaved, against the sandboxes answering
each call ``--latency-ms`` late, and prints the medians, their ratio and the calls each export made. Both ways must
export the same records (checked: a run that skipped a dataset would only look faster).

Subjects: a HubSpot contact with 150 notes, 30 emails, 3 deals and 2 tickets (2 pages of notes, one of each other
association), and a Stripe customer with 250 charges (3 pages of charges and 3 of payment intents, then the eight
other listings). Every call goes through a rate limiter set far above what the runs use: the figure is the chain,
not a vendor's limit. The sandboxes run in this process (their CPU is small next to the latency).

Run: ``.venv/bin/python bench/export_latency.py [--runs 5] [--latency-ms 100]``
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import connectors.hubspot as hubspot  # noqa: E402
import connectors.stripe as stripe_connector  # noqa: E402
from connectors.base import ExportJob  # noqa: E402
from connectors.http import RateLimiter  # noqa: E402
from dsr.domain.model import Subject  # noqa: E402
from dsr.store.crypto import KeyRing  # noqa: E402
from dsr.store.exports import ExportStore  # noqa: E402
from dsr.store.objects import FileStore  # noqa: E402
from dsr.web.serve import serve_app  # noqa: E402
from sandbox.faults import Faults  # noqa: E402
from sandbox.hubspot import HubSpotState, hubspot_app  # noqa: E402
from sandbox.stripe import StripeSandbox, seed_customer  # noqa: E402

HUBSPOT_TOKEN = "pat-bench-latency"
STRIPE_KEY = "sk_test_bench_latency"
EMAIL = "lea.petit@example.org"


class Counted:
    """ASGI middleware counting the calls that reach a sandbox."""

    def __init__(self, app: Any) -> None:
        self.app, self.calls = app, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.calls += 1
        await self.app(scope, receive, send)


def pages_at_once(connector: str, datasets: int) -> None:
    """The connector's bound, read by each export when it starts: 1 is the export one dataset after another."""
    if connector == "hubspot":
        hubspot.DATASETS_AT_ONCE = datasets
    else:
        stripe_connector.DATASETS_AT_ONCE = datasets


async def timed(export: Callable[[ExportJob], Any], store: ExportStore, run: int, variant: str,
                ) -> tuple[float, dict[str, int]]:
    """Seconds the export took, and the records it exported per dataset."""
    request = f"dsr-2026-12-lat{run:02d}{variant}"
    start = time.perf_counter()
    outcome = await export(ExportJob(request, Subject(email=EMAIL), store.sink(request)))
    return time.perf_counter() - start, {d.dataset: d.records for d in outcome.datasets}


async def main(runs: int, latency_ms: float) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    store = ExportStore(FileStore(folder), KeyRing.generate())
    hub_state = HubSpotState()
    contact = hub_state.add_contact(EMAIL, firstname="Lea", lastname="Petit")
    hub_state.seed_activity(contact, notes=150, emails=30, deals=3, tickets=2)
    hub_faults = Faults()
    hub_app = Counted(hubspot_app(hub_state, token=HUBSPOT_TOKEN, rate_limit=None, search_rate_limit=None,
                                  faults=hub_faults))
    hub_server = await serve_app(hub_app, host="127.0.0.1", port=0)
    stripe = StripeSandbox(api_key=STRIPE_KEY).start()
    try:
        await seed_customer(stripe.url, STRIPE_KEY, email=EMAIL, name="Léa Petit", charges=250)
        stripe_app = Counted(stripe.app)
        stripe_server = await serve_app(stripe_app, host="127.0.0.1", port=0)
        hub_faults.delay_seconds = stripe.faults.delay_seconds = latency_ms / 1000  # seeded without
        hub = hubspot.HubSpotConnector(base_url=hub_server.url, token=HUBSPOT_TOKEN,
                                       rate_limit=RateLimiter(1000, 1.0), search_rate_limit=RateLimiter(1000, 1.0))
        pay = stripe_connector.StripeConnector(api_key=STRIPE_KEY, base_url=stripe_server.url,
                                               rate_limit=RateLimiter(1000, 1.0))
        side_by_side = {"hubspot": hubspot.DATASETS_AT_ONCE, "stripe": stripe_connector.DATASETS_AT_ONCE}
        seconds: dict[tuple[str, bool], list[float]] = {}
        calls: dict[str, int] = {}
        exported: dict[str, dict[str, int]] = {}
        try:
            for run in range(runs + 1):  # the first round warms both up and is not counted
                for together in ((False, True) if run % 2 else (True, False)):
                    for name, connector, app in (("hubspot", hub, hub_app), ("stripe", pay, stripe_app)):
                        pages_at_once(name, side_by_side[name] if together else 1)
                        before = app.calls
                        took, records = await timed(connector.export, store, run, f"{name[0]}{int(together)}")
                        if exported.setdefault(name, records) != records:
                            raise SystemExit(f"{name}: exported {records}, then {exported[name]}: not the same export")
                        if run:
                            seconds.setdefault((name, together), []).append(took)
                        calls[name] = app.calls - before
        finally:
            for name, at_once in side_by_side.items():
                pages_at_once(name, at_once)
            await hub.aclose()
            await pay.aclose()
            await stripe_server.stop()
        print(f"each call answered {latency_ms:.0f} ms late; {runs} interleaved runs, medians; exported the same "
              f"records each way: {exported}")
        for name in ("hubspot", "stripe"):
            one = statistics.median(seconds[(name, False)])
            many = statistics.median(seconds[(name, True)])
            print(f"{name}: {calls[name]} calls; datasets one after another {one:.2f} s, "
                  f"{side_by_side[name]} side by side {many:.2f} s (x{many / one:.2f}; "
                  f"runs {', '.join(f'{s:.2f}' for s in seconds[(name, True)])} against "
                  f"{', '.join(f'{s:.2f}' for s in seconds[(name, False)])})")
    finally:
        stripe.stop()
        await hub_server.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=100,
                        help="every answer of both sandboxes waits this long: a vendor's API from a worker elsewhere")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.latency_ms))
