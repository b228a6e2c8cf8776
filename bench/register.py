"""Benchmark: the register (`dsr list`) and the statistics report (`dsr report`) of N requests.

Fills a ledger with N requests of a simulated year (tests/dsr/simulated_register.py: receipt, extension, refusal
and closing events, about four per request) in one transaction, a share of them (``--post-mortem``, 2 % by
default) made requests about a deceased person (their aim on ``received``, directives found for half of them),
then prints the time of:
- reading the register (two queries), without and with the subjects decrypted;
- computing the statistics;
- rendering the HTML report with its charts;
- the installed `dsr list --csv` and `dsr report --json`, end to end (a new Python process each).

Run: ``.venv/bin/python bench/register.py [--requests 10000] [--database postgresql://...]`` (default: a SQLite
file in a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import select, update  # noqa: E402
from sqlmodel import Session, col  # noqa: E402

from dsr.domain.model import Language, RequestKind  # noqa: E402
from dsr.dpo.register import RegisterFilter, compute_statistics, read_register  # noqa: E402
from dsr.dpo.report import render_html  # noqa: E402
from dsr.store.crypto import KeyRing  # noqa: E402
from dsr.store.ledger import EMAIL_PURPOSE, NAME_PURPOSE, EventRow, Ledger, RequestRow  # noqa: E402
from tests.dsr.simulated_register import TIMEZONE, plan_year  # noqa: E402

YEAR = 2025
T = TypeVar("T")


def bulk_fill(ledger: Ledger, keyring: KeyRing, n: int, post_mortem: float = 0.0) -> None:
    """The rows and events the engine would write, in one transaction (the engine writes them one by one)."""
    plans = plan_year(n, YEAR, as_of=date(YEAR + 1, 2, 15))
    every = round(1 / post_mortem) if post_mortem > 0 else 0
    plans = [replace(p, kind=RequestKind.POST_MORTEM) if every and i % every == 0 else p
             for i, p in enumerate(plans)]
    with Session(ledger.engine) as session, session.begin():
        for i, p in enumerate(plans):
            received = p.received_at.astimezone(UTC)
            email, name = f"person{i}@example.org", f"Person {i}"
            session.add(RequestRow(
                request_id=p.reference, kind=p.kind.value, channel=p.channel.value, language="fr",
                received_at=received, deadline=p.deadline, extended=p.extended,
                stage="closed" if p.outcome else "processing", outcome=p.outcome.value if p.outcome else None,
                subject_email_sealed=keyring.seal_text(email, purpose=EMAIL_PURPOSE, context=p.reference),
                subject_name_sealed=keyring.seal_text(name, purpose=NAME_PURPOSE, context=p.reference),
                subject_index=keyring.blind_index(email, purpose=EMAIL_PURPOSE), created_at=received,
                updated_at=received))
        session.flush()
        for i, p in enumerate(plans):
            events: list[tuple[str, datetime, str]] = [("received", p.received_at, "{}")]
            if p.kind == RequestKind.POST_MORTEM:
                events = [("received", p.received_at, '{"scope": "%s"}' % ("estate" if i % 3 else "closure"))]
                if i % 2:
                    events.append(("directives_found", p.received_at + timedelta(minutes=1),
                                   '{"instruction": "erase", "designates": "false", "sender_designated": "false"}'))
            if p.extended:
                events.append(("extended", p.received_at + timedelta(days=3), "{}"))
            if p.ground and p.closed_at:  # a refusal is a closure
                events.append(("refused", p.closed_at, f'{{"ground": "{p.ground.value}"}}'))
            if p.closed_at:
                events.append(("closed", p.closed_at, "{}"))
            for event, at, details in events:
                session.add(EventRow(event_key=f"{p.reference}/{event}", request_id=p.reference,
                                     at=at.astimezone(UTC), event=event, actor="engine", details=details))


def timed(what: str, fn: Callable[[], T]) -> T:
    started = time.perf_counter()
    result = fn()
    print(f"{what:<44} {time.perf_counter() - started:7.2f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--post-mortem", type=float, default=0.02,
                        help="the share of requests about a deceased person (0 for none)")
    parser.add_argument("--database", default="", help="a SQLAlchemy URL (default: SQLite in a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dsr-bench-register-") as folder:
        home = Path(folder)
        keyring = KeyRing.load_or_create(home / "keys.json")
        url = args.database or f"sqlite:///{home / 'ledger.sqlite3'}"
        ledger = Ledger(url, keyring)
        try:
            timed(f"fill {args.requests} requests (one transaction)", lambda: bulk_fill(ledger, keyring, args.requests,
                                                                                    args.post_mortem))
            today = date(YEAR + 1, 2, 15)
            entries = timed("read the register", lambda: read_register(ledger, timezone=TIMEZONE, today=today))
            timed("read the register with the subjects",
                  lambda: read_register(ledger, timezone=TIMEZONE, today=today, with_subject=True))
            stats = timed("compute the statistics", lambda: compute_statistics(
                entries, since=date(YEAR, 1, 1), until=date(YEAR, 12, 31), as_of=today))
            timed("render the HTML report (two charts)", lambda: render_html(
                stats, Language.FR, timezone=TIMEZONE, generated_at=datetime.now(UTC)))
        finally:
            ledger.close()
        env = {**os.environ, "DSR_HOME": str(home), "DSR_DATABASE_URL": url}
        env.pop("DSR_KEYS", None)
        dsr = str(Path(sys.executable).parent / "dsr")
        outputs = {}

        def run(verb: list[str]) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run([dsr, *verb], env=env, capture_output=True, timeout=600)

        for verb in (["list", "--csv"], ["report", "--year", str(YEAR), "--json"]):
            done = timed(f"dsr {' '.join(verb)} (a new process)", partial(run, verb))
            if done.returncode != 0:
                sys.exit(f"dsr {' '.join(verb)} failed: {done.stderr.decode().strip()}")
            outputs[verb[0]] = done.stdout
        lines = outputs["list"].count(b"\r\n") - 1
        print(f"{len(entries)} requests; the CSV has {lines} lines besides its header")

        # `dsr due` at its worst: every request open, every deadline within the window asked for.
        ledger = Ledger(url, keyring)
        try:
            real_today = datetime.now(ZoneInfo(TIMEZONE)).date()
            with Session(ledger.engine) as session, session.begin():
                for i, (request_id,) in enumerate(session.execute(select(col(RequestRow.request_id)))):
                    session.execute(update(RequestRow).where(col(RequestRow.request_id) == request_id).values(
                        stage="processing", outcome=None, deadline=real_today + timedelta(days=i % 40 - 5)))
            due = timed(f"read what is due ({args.requests} open requests)", lambda: read_register(
                ledger, timezone=TIMEZONE, today=real_today, filters=RegisterFilter(due_by=real_today
                                                                                     + timedelta(days=40))))
        finally:
            ledger.close()
        done = timed("dsr due --within 40 --json (a new process)", partial(run, ["due", "--within", "40", "--json"]))
        if done.returncode != 0:
            sys.exit(f"dsr due failed: {done.stderr.decode().strip()}")
        print(f"{len(due)} requests due; dsr due listed {len(json.loads(done.stdout))}")

if __name__ == "__main__":
    main()
