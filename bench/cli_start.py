"""Benchmark: `dsr due` and `dsr --help` as new processes, at N open requests (the goal: `dsr due` under a second
at 10,000).

Fills a ledger with N requests (bench/register.py's simulated year), every one open and due within 40 days, then
runs in interleaved rounds (each round runs every command once, in turn, so a change of the machine's load hits
them alike):
- `python -c pass` (the interpreter alone: the unit of the ratios);
- `dsr --help`, `dsr due --within 40 --json` and `dsr due --within 40`;
- with ``--compare DIR``, the same `dsr` verbs of another checkout (``--compare /path/to/main``: before and after).
It prints each command's median and fastest wall time, its ratio to `python -c pass` (and to the other checkout),
the load (`uptime`) before and after, and where the time of `dsr due` goes: its top-level imports by cumulative
time (``python -X importtime``, ten of them), the sum of every import, and the ledger read alone (in this process).

Run: ``.venv/bin/python bench/cli_start.py [--requests 10000] [--rounds 7] [--database postgresql://...]
[--compare DIR]`` (default: a SQLite file in a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import select, update  # noqa: E402
from sqlmodel import Session, col  # noqa: E402

from bench.register import bulk_fill  # noqa: E402
from dsr.dpo.register import RegisterFilter, read_register  # noqa: E402
from dsr.store.crypto import KeyRing  # noqa: E402
from dsr.store.ledger import Ledger, RequestRow  # noqa: E402
from tests.dsr.simulated_register import TIMEZONE  # noqa: E402

WITHIN = 40
_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)")


def fill_open(url: str, keyring: KeyRing, n: int) -> float:
    """N requests, every one open with a deadline within ``WITHIN`` days (some overdue); the ledger read alone."""
    ledger = Ledger(url, keyring)
    try:
        bulk_fill(ledger, keyring, n)
        today = datetime.now(ZoneInfo(TIMEZONE)).date()
        with Session(ledger.engine) as session, session.begin():
            for i, (request_id,) in enumerate(session.execute(select(col(RequestRow.request_id)))):
                session.execute(update(RequestRow).where(col(RequestRow.request_id) == request_id).values(
                    stage="processing", outcome=None, deadline=today + timedelta(days=i % WITHIN - 5)))
        started = time.perf_counter()
        due = read_register(ledger, timezone=TIMEZONE, today=today,
                            filters=RegisterFilter(due_by=today + timedelta(days=WITHIN)))
        read = time.perf_counter() - started
        assert len(due) == n, f"{len(due)} requests due of {n}"
        return read
    finally:
        ledger.close()


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1]


def import_breakdown(python: str, env: dict[str, str]) -> None:
    """The top-level imports of `dsr due` by cumulative time, and the sum of every import's own time."""
    done = subprocess.run([python, "-X", "importtime", "-c", "from dsr.cli import main; main()", "due", "--within",
                           str(WITHIN), "--json"], env=env, capture_output=True, text=True, timeout=600)
    rows = [(int(m[1]), int(m[2]), len(m[3]), m[4]) for m in map(_IMPORT_LINE.match, done.stderr.splitlines()) if m]
    top = sorted((row for row in rows if row[2] == 1), key=lambda row: -row[1])[:10]
    print(f"imports of `dsr due`: {sum(row[0] for row in rows) / 1e3:.0f} ms in all, {len(rows)} modules "
          f"(load{load()}); the ten top-level imports that cost most:")
    for _, cumulative, _, name in top:
        print(f"  {cumulative / 1e3:7.1f} ms  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--database", default="", help="a SQLAlchemy URL (default: SQLite in a temporary folder)")
    parser.add_argument("--compare", type=Path, help="another checkout whose `dsr` runs in the same rounds")
    args = parser.parse_args()
    python = sys.executable
    dsr = str(Path(python).parent / "dsr")
    with tempfile.TemporaryDirectory(prefix="dsr-bench-cli-") as folder:
        home = Path(folder)
        keyring = KeyRing.load_or_create(home / "keys.json")
        url = args.database or f"sqlite:///{home / 'ledger.sqlite3'}"
        read = fill_open(url, keyring, args.requests)
        base = {**os.environ, "DSR_HOME": str(home), "DSR_DATABASE_URL": url}
        base.pop("DSR_KEYS", None)
        # Each checkout first on the path: the installed `dsr` entry point runs that checkout's code.
        checkouts = {"": {**base, "PYTHONPATH": str(ROOT)}}
        if args.compare:
            checkouts[f" [{args.compare.name}]"] = {**base, "PYTHONPATH": str(args.compare.resolve())}
        commands: dict[str, tuple[list[str], dict[str, str]]] = {"python -c pass": ([python, "-c", "pass"], base)}
        for suffix, env in checkouts.items():
            commands[f"dsr --help{suffix}"] = ([dsr, "--help"], env)
            commands[f"dsr due --json{suffix}"] = ([dsr, "due", "--within", str(WITHIN), "--json"], env)
            commands[f"dsr due{suffix}"] = ([dsr, "due", "--within", str(WITHIN)], env)
        for argv, env in commands.values():  # once untimed: compiled files written, the ledger in the page cache
            subprocess.run(argv, env=env, capture_output=True, check=True, timeout=600)
        print(f"{args.requests} open requests, all due within {WITHIN} days; {args.rounds} interleaved rounds; "
              f"load before{load()}")
        times: dict[str, list[float]] = {what: [] for what in commands}
        for _ in range(args.rounds):
            for what, (argv, env) in commands.items():
                started = time.perf_counter()
                subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True, timeout=600)
                times[what].append(time.perf_counter() - started)
        unit = statistics.median(times["python -c pass"])
        print(f"load after{load()}")
        print(f"{'command':<34} {'median':>8} {'fastest':>8} {'x pass':>7}" + ("  x other" if args.compare else ""))
        for what, spent in times.items():
            median = statistics.median(spent)
            line = f"{what:<34} {median:7.3f}s {min(spent):7.3f}s {median / unit:7.1f}"
            other = f"{what} [{args.compare.name}]" if args.compare else ""
            if other in times:
                line += f"  {median / statistics.median(times[other]):7.2f}"
            print(line)
        print(f"the ledger read alone (in this process, {args.requests} due): {read:.3f}s")
        import_breakdown(python, checkouts[""])


if __name__ == "__main__":
    main()
