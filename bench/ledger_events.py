"""Benchmark: the ledger's event writes, as a request's activities make them, on SQLite.

Each of ``--requests`` requests is recorded, then gets the events of a light access request in the batches the
engine writes them (one to three events per batch, a stage change on some), and every batch is written twice (an
activity retried after its write: the second finds every key known and writes nothing). Printed: CPU and wall
microseconds per batch written, and per batch replayed. To compare two checkouts, run each one's copy in turn, a few
times interleaved (the machine is shared: compare ratios, not the absolute figures).

    .venv/bin/python bench/ledger_events.py [--requests 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsr.domain.model import (  # noqa: E402
    AuditEvent,
    Channel,
    Language,
    RequestKind,
    RequestRecordInput,
    Stage,
    Subject,
)
from dsr.store.crypto import KeyRing  # noqa: E402
from dsr.store.ledger import Ledger  # noqa: E402

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def batches(request_id: str) -> list[list[AuditEvent]]:
    """A light access request's events, in the batches the engine writes (see workflows/request.py)."""
    return [
        [AuditEvent(request_id, "acknowledged", details={"template": "acknowledgement"},
                    stage=Stage.AWAITING_IDENTITY)],
        [AuditEvent(request_id, "identity_confirmed", details={"method": "trusted"}, stage=Stage.PROCESSING)],
        [AuditEvent(request_id, "connector_planned", details={"systems": "hubspot,stripe,woocommerce"})],
        [AuditEvent(request_id, "connector_done", details={"connector": "hubspot", "found": "3"})],
        [AuditEvent(request_id, "connector_done", details={"connector": "stripe", "found": "1"})],
        [AuditEvent(request_id, "connector_done", details={"connector": "woocommerce", "found": "6"}),
         AuditEvent(request_id, "replying", details={"template": "access_reply"}, stage=Stage.REPLYING)],
        [AuditEvent(request_id, "replied", details={"template": "access_reply"}),
         AuditEvent(request_id, "closed", details={}, stage=Stage.CLOSED)],
    ]


def one_round(requests: int) -> tuple[float, float, float, float, int]:
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as home, \
            Ledger(f"sqlite:///{home}/ledger.sqlite3", KeyRing.generate()) as ledger:
        work = []
        for n in range(requests):
            request_id = f"dsr-2026-11-B{n:05d}"
            ledger.record_request(RequestRecordInput(
                request_id=request_id, kind=RequestKind.ACCESS, channel=Channel.FORM,
                subject=Subject(email=f"person{n}@example.org", name=f"Person {n}"), received_at=T0,
                deadline=date(2026, 12, 2), language=Language.FR), now=T0)
            work.append((request_id, batches(request_id)))
        written = replayed = 0.0
        written_wall = replayed_wall = 0.0
        count = 0
        for request_id, request_batches in work:
            for index, batch in enumerate(request_batches):
                keyed = [(event, f"{request_id}:{index}:{i}") for i, event in enumerate(batch)]
                at = T0 + timedelta(minutes=index)
                cpu, wall = time.process_time(), time.perf_counter()
                assert ledger.append_events(keyed, at=at) == len(keyed)
                written += time.process_time() - cpu
                written_wall += time.perf_counter() - wall
                cpu, wall = time.process_time(), time.perf_counter()
                assert ledger.append_events(keyed, at=at) == 0
                replayed += time.process_time() - cpu
                replayed_wall += time.perf_counter() - wall
                count += 1
        return written, written_wall, replayed, replayed_wall, count


def main(requests: int, rounds: int) -> None:
    results = [one_round(requests) for _ in range(rounds)]
    for name, at in (("written", 0), ("replayed", 2)):
        cpu = statistics.median(r[at] / r[4] * 1e6 for r in results)
        wall = statistics.median(r[at + 1] / r[4] * 1e6 for r in results)
        print(f"batch {name}: {cpu:.0f} us of CPU, {wall:.0f} us wall (median of {rounds} rounds of "
              f"{results[0][4]} batches)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    main(args.requests, args.rounds)
