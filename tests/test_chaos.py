"""A bounded chaos run (bench/chaos.py): requests of every kind through two ``dsr worker`` processes killed at
random, once all at once, while the SMTP server and the ledger's database are cut for a few seconds each and every
sandbox injects about 15% faults; nothing lost, one final reply each, every bundle complete, every erasure reply
true, no record written twice, no request in ``replying`` over 2 minutes outside the outages.

Part of ``make test`` (issue 11), left out of ``make test-fast`` (slow); ``DSR_CHAOS=0`` skips it. With these
outages and kills, 4 runs of 4 passed in 117-159 s on the 2-core machine under the load of eight sessions (and
2 of 2 of ``bench/chaos.py --requests 20`` with 6 and 10 kills). Earlier notes: a request stuck in ``processing``
was Stripe retried on a grown backoff (its fault proxy lost Retry-After; fixed in sandbox/faults.py); a final
reply counted twice had no known cause (likely: a worker killed between the SMTP server's 250 and the sent-log,
which re-sends one Message-ID; now written down first, ``mail_sends``, and flagged in the ledger, which the check
accepts; two Message-IDs, or an unflagged copy, still fail it)."""

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
    pytest.mark.skipif(os.environ.get("DSR_CHAOS") == "0", reason="DSR_CHAOS=0 skips the chaos run"),
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
