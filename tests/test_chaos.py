"""A bounded chaos run (bench/chaos.py): requests of every kind through two ``dsr worker`` processes killed at
random while every sandbox injects about 15% faults; nothing lost, one final reply each, every bundle complete,
every erasure reply true, no record written twice.

Off in ``make test``; ``DSR_CHAOS=1`` runs it. Steps heartbeat now (issue 11, point 2) and connector retries are
progress-aware (point 3). A request stuck in ``processing`` past the run's 240 s was Stripe retried on a grown
backoff: its fault proxy answered injected 429s in a shape the SDK cannot read, losing Retry-After (fixed in
sandbox/faults.py). After that fix 8 runs of 8 passed; before it, 5 of 6 with this branch, and the baseline
failed 1 of 2 the same way. One failed run also counted a final reply twice, cause not yet known: the report
now says how many Message-IDs the copies carry and what the ledger saw, and what an unsettled request waits
on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.chaos import ChaosReport, run_chaos
from tests.harness import S3Server

REQUESTS, KILLS, FAULTS = 20, 6, 0.15
BLACKOUTS, SMTP_OUTAGES, LEDGER_OUTAGES = 1, 1, 1  # every worker killed at once; SMTP and the database cut 5-15 s

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("DSR_CHAOS") != "1",
                       reason="DSR_CHAOS=1 runs it: kept out of make test until the lead decides it is steady "
                              "(see the module's notes)"),
]


async def test_a_bounded_chaos_run_loses_nothing_and_writes_nothing_twice(
    tmp_path: Path, postgres_url: str, s3_server: S3Server,
) -> None:
    report: ChaosReport = await run_chaos(tmp_path, requests=REQUESTS, kills=KILLS, fault_share=FAULTS,
                                          database_url=postgres_url, s3=s3_server, timeout=240,
                                          blackouts=BLACKOUTS, smtp_outages=SMTP_OUTAGES,
                                          ledger_outages=LEDGER_OUTAGES)
    print(report.table())
    assert report.failures == [], report.table()
    # The run proved something: workers died, faults of every kind were injected, every request was checked.
    assert report.kills == KILLS and report.blackouts == BLACKOUTS
    assert (report.smtp_outages, report.ledger_outages) == (SMTP_OUTAGES, LEDGER_OUTAGES)
    assert set(report.faults) == {"5xx", "429", "slow", "drop", "lost"}, report.faults
    assert report.closed + len(report.needs_attention) == REQUESTS
    waiting = len(report.needs_attention)  # an operator's to act on: no reply yet, nothing to check
    assert report.bundles_checked >= REQUESTS // 2 - waiting and report.erasures_checked >= REQUESTS // 4 - waiting
