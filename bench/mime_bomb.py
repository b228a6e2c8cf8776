"""Benchmark: reading a MIME bomb (a message of many tiny parts) in the mailbox, before and after the caps.

"Before" is what the intake did until the caps: the stdlib parser and ``parse_message`` over every part
(``parse_message`` with the caps lifted). "After" is what it does now: the linear pre-scan
(``intake.email.mimescan``) finds more parts than ``MAX_PARTS`` and the message goes to triage unread, without the
parser ever seeing it. Also printed: the pre-scan and the whole read of an ordinary large message (an ID scan
of 8 MB and a letter), which the caps must not slow down. Figures, not targets: the machine is shared.
Run: ``.venv/bin/python bench/mime_bomb.py [--parts 5000 10000 40000] [--skip-before]``.
"""

from __future__ import annotations

import argparse
import base64
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from intake.email.mime import parse_message  # noqa: E402
from intake.email.mimescan import MAX_PARTS, MessageTooComplex, mime_shape  # noqa: E402

HEAD = (b"From: a@example.org\r\nTo: privacy@example.com\r\nSubject: bomb\r\nMessage-ID: <bomb@example.org>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n")


def bomb(parts: int) -> bytes:
    """``parts`` tiny text parts: 40,000 of them make 3.6 MB, near the review's probe."""
    part = b"--B\r\nContent-Type: text/plain\r\n\r\nhello there, this is one part of a message of many parts\r\n"
    return HEAD + part * parts + b"--B--\r\n"


def ordinary(scan_bytes: int) -> bytes:
    scan = base64.encodebytes(os.urandom(scan_bytes)).replace(b"\n", b"\r\n")
    return (HEAD + b"--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBonjour, voici ma piece d'identite.\r\n"
            b"--B\r\nContent-Type: image/jpeg\r\nContent-Disposition: attachment; filename=\"id.jpg\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + scan + b"--B--\r\n")


T = TypeVar("T")


def timed(call: Callable[[], T]) -> tuple[float, T | MessageTooComplex]:
    """Seconds ``call`` took, and what it returned (or the refusal it raised)."""
    result: T | MessageTooComplex
    start = time.perf_counter()
    try:
        result = call()
    except MessageTooComplex as exc:
        result = exc
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, nargs="+", default=[2_500, 10_000, 40_000])
    parser.add_argument("--skip-before", action="store_true", help="do not time the uncapped parse (slow)")
    args = parser.parse_args()
    print(f"{'parts':>8} {'MB':>6} {'before: parsed (s)':>19} {'after: refused (s)':>19}  after says")
    for parts in args.parts:
        raw = bomb(parts)
        before = "skipped" if args.skip_before else \
            f"{timed(functools.partial(parse_message, raw, max_parts=10**9, max_depth=10**9))[0]:.2f}"
        after, result = timed(functools.partial(parse_message, raw))
        print(f"{parts:>8} {len(raw) / 1e6:>6.1f} {before:>19} {after:>19.4f}  {result}")
    raw = ordinary(8 * 1024 * 1024)
    scan, shape = timed(lambda: mime_shape(raw, stop_at_parts=MAX_PARTS))
    read, _ = timed(lambda: parse_message(raw, max_attachment_bytes=20 * 1024 * 1024))
    print(f"ordinary message, {len(raw) / 1e6:.1f} MB, {shape}: pre-scan {scan:.3f} s, whole read {read:.2f} s")


if __name__ == "__main__":
    main()
