"""Benchmark: the CPU one shared rate-limit reservation costs (``dsr.store.guards.Guards.reserve``), per vendor call.

Every call of a connector with a shared limit reserves its slot in the ledger's database first, so this is paid on
every vendor call of every worker. Prints the process CPU per reservation, alone (one window) and joint (HubSpot's
search: its window and the account's), in a steady state (the windows' rows exist, the windows are full), each
figure the median of ``--rounds`` rounds of ``--reservations``. ``--root`` runs another checkout's code (its
``dsr``), in turn with this one's in interleaved rounds when given with ``--compare``:

    .venv/bin/python bench/rate_reservations.py [--reservations 2000] [--rounds 5] [--database URL] [--compare DIR]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(root: Path, database: str | None, reservations: int) -> tuple[float, float]:
    """CPU seconds per reservation, alone and joint, with the code of ``root`` (in this process)."""
    sys.path.insert(0, str(root))
    from dsr.store.crypto import KeyRing
    from dsr.store.guards import Guards
    from dsr.store.ledger import Ledger

    with tempfile.TemporaryDirectory() as folder:
        url = database or f"sqlite:///{Path(folder) / 'ledger.sqlite3'}"
        ring = KeyRing.generate()
        with Ledger(url, ring) as ledger:
            guards = Guards(ledger.engine, ring)
            start = 1_000_000.0 + time.time() % 1000 * 1000  # a fresh stretch of time per run (PostgreSQL keeps rows)
            for n in range(200):  # the rows exist and the windows are full: the steady state
                guards.reserve("bench", 100, 10.0, now=start + n * 0.1)
                guards.reserve_together([("bench-joint", 100, 10.0), ("bench-joint:search", 4, 1.25)],
                                        now=start + n * 0.4)
            began = time.process_time()
            for n in range(reservations):
                guards.reserve("bench", 100, 10.0, now=start + 100 + n * 0.1)
            alone = (time.process_time() - began) / reservations
            began = time.process_time()
            for n in range(reservations):
                guards.reserve_together([("bench-joint", 100, 10.0), ("bench-joint:search", 4, 1.25)],
                                        now=start + 1000 + n * 0.4)
            joint = (time.process_time() - began) / reservations
    return alone, joint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reservations", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database", help="ledger database URL (default: a fresh SQLite file per run)")
    parser.add_argument("--compare", type=Path, help="another checkout, measured in turn with this one")
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)  # one run, of that checkout, printed raw
    args = parser.parse_args()
    if args.root is not None:
        alone, joint = measure(args.root, args.database, args.reservations)
        print(f"{alone} {joint}")
        return
    checkouts = {"this": ROOT, **({"compare": args.compare.resolve()} if args.compare else {})}
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in checkouts}
    for _ in range(args.rounds):
        for name, root in checkouts.items():  # interleaved: a noisy minute hits each
            command = [sys.executable, str(Path(__file__).resolve()), "--root", str(root),
                       "--reservations", str(args.reservations)]
            if args.database:
                command += ["--database", args.database]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
            figures[name].append((float(out[0]), float(out[1])))
    print(f"{args.reservations} reservations per round, {args.rounds} rounds, "
          f"database {(args.database or 'sqlite').split(':', 1)[0]}; CPU per reservation (median):")
    base = None
    for name, runs in figures.items():
        alone = statistics.median(a for a, _ in runs)
        joint = statistics.median(j for _, j in runs)
        ratio = f" (x{alone / base[0]:.2f} and x{joint / base[1]:.2f} of this checkout)" if base else ""
        print(f"  {name:8} {checkouts[name]}: alone {1000 * alone:.3f} ms, joint {1000 * joint:.3f} ms{ratio}")
        base = base or (alone, joint)


if __name__ == "__main__":
    main()
