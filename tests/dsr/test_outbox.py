"""Issue 12 finding 7: the outbox of `dsr up` no longer keeps codes and links forever."""

from __future__ import annotations

import asyncio
import os
import smtplib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dsr.mail.outbox import OutboxSink

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _message(directory: Path, filed: datetime, name: str = "abc_example.org") -> Path:
    path = directory / f"{filed:%Y%m%dT%H%M%S%f}Z-{name}.eml"
    path.write_bytes(b"Subject: your code 123456\r\n\r\nhttps://privacy.example/verify/token\r\n")
    return path


def test_messages_go_when_their_links_expire_and_whoever_purges_agrees(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    week = timedelta(days=7)
    expired = _message(outbox, NOW - week - timedelta(seconds=1), "old")
    fresh = _message(outbox, NOW - week + timedelta(minutes=1), "fresh")
    unnamed = outbox / "hand-made.eml"  # no stamp in the name: its file time counts
    unnamed.write_text("x")
    os.utime(unnamed, (0, (NOW - timedelta(days=30)).timestamp()))
    crashed = outbox / ".incoming-dead.tmp"  # a writer killed mid-message, long ago
    crashed.write_text("x")
    os.utime(crashed, (0, (NOW - timedelta(days=8)).timestamp()))
    writing = outbox / ".incoming-live.tmp"  # a message being filed right now by another process
    writing.write_text("x")
    os.utime(writing, (0, NOW.timestamp()))
    other = outbox / "notes.txt"
    other.write_text("not ours")
    os.utime(other, (0, 0))

    first, second = OutboxSink(outbox, retention=week), OutboxSink(outbox, retention=week)
    removed = first.purge(NOW)
    assert sorted(p.name for p in removed) == sorted([expired.name, unnamed.name, crashed.name])
    assert sorted(p.name for p in outbox.iterdir()) == sorted([fresh.name, writing.name, other.name])
    assert second.purge(NOW) == []  # a second process purging the same folder finds nothing left, no error
    assert second.purge(NOW + timedelta(minutes=2)) == [fresh]
    assert OutboxSink(outbox).purge(NOW + timedelta(days=900)) == []  # no retention: keep everything


def test_two_processes_purging_at_once_never_fail(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    for i in range(300):
        _message(outbox, NOW - timedelta(days=10, seconds=i), f"m{i}")
    sinks = [OutboxSink(outbox, retention=timedelta(days=7)) for _ in range(4)]

    async def race() -> list[list[Path]]:
        return await asyncio.gather(*(asyncio.to_thread(s.purge, NOW) for s in sinks))

    results = asyncio.run(race())
    assert sum(len(r) for r in results) == 300 and not list(outbox.iterdir())


async def test_the_running_sink_purges_at_start_and_after_each_message(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir(mode=0o700)
    old = _message(outbox, datetime.now(UTC) - timedelta(days=8), "old")
    sink = OutboxSink(outbox, retention=timedelta(days=7))
    port = await sink.start(port=0)
    try:
        assert not old.exists()
        later = _message(outbox, datetime.now(UTC) - timedelta(days=9), "later")  # e.g. another process's
        await asyncio.to_thread(_send, port)
        assert not later.exists() and len(sink.saved) == 1 and sink.saved[0].exists()
    finally:
        await sink.stop()


def _send(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("privacy@example.com", ["a@example.org"], b"Subject: hi\r\nMessage-ID: <m1@x>\r\n\r\nhello\r\n")


def test_retention_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        OutboxSink(tmp_path, retention=timedelta(0))
