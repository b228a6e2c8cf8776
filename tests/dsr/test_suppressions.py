"""The suppression list: a marketing objection remembered by blind index only, for its period, then forgotten."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from dsr.store.crypto import KeyRing
from dsr.store.ledger import Ledger
from dsr.store.suppressions import SuppressionList
from tests.cli import run_dsr
from tests.harness import TEST_KEYRING

EMAIL = "Camille.Durand@example.org"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", TEST_KEYRING) as ledger:
        yield ledger


def test_a_suppressed_address_is_recognised_in_any_case_and_stored_as_no_address(ledger: Ledger) -> None:
    suppressions = SuppressionList(ledger)
    entry = suppressions.suppress(EMAIL, years=3, now=T0)
    assert entry.until == datetime(2029, 11, 23, 10, 0, tzinfo=UTC)
    assert suppressions.is_suppressed("camille.durand@EXAMPLE.org", now=T0 + timedelta(days=1))
    assert not suppressions.is_suppressed("hugo.bernard@example.net", now=T0)
    with ledger.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM suppressions")).all()
    assert len(rows) == 1
    stored = " ".join(str(value) for value in rows[0]).lower()
    assert "camille" not in stored and "example.org" not in stored
    assert rows[0][0] == ledger.subject_key(EMAIL)  # the ledger's own blind index, nothing else


def test_the_entry_runs_from_the_latest_objection_and_ends_with_its_period(ledger: Ledger) -> None:
    suppressions = SuppressionList(ledger)
    suppressions.suppress(EMAIL, years=3, now=T0)
    later = T0 + timedelta(days=400)
    assert suppressions.suppress(EMAIL, years=3, now=later).since == later
    assert suppressions.is_suppressed(EMAIL, now=T0 + timedelta(days=365 * 3 + 10))
    gone = later + timedelta(days=365 * 3 + 1)
    assert not suppressions.is_suppressed(EMAIL, now=gone)
    assert suppressions.entries(now=gone) == []
    # Expired rows are purged at the next write.
    suppressions.suppress("other@example.com", years=1, now=gone)
    with ledger.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM suppressions")).scalar() == 1


def test_a_shorter_later_setting_never_shortens_an_entry(ledger: Ledger) -> None:
    suppressions = SuppressionList(ledger)
    first = suppressions.suppress(EMAIL, years=5, now=T0)
    assert suppressions.suppress(EMAIL, years=1, now=T0 + timedelta(days=1)) == first
    with pytest.raises(ValueError):
        suppressions.suppress(EMAIL, years=0, now=T0)


# --- the CLI ------------------------------------------------------------------------------------------------

def dsr(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The verb in this process (tests/cli.py), its output as bytes."""
    result = run_dsr(list(args), {"DSR_HOME": str(home), "DSR_DATABASE_URL": f"sqlite:///{home / 'ledger.sqlite3'}",
                                  "DSR_KEYS": None, "DSR_CONFIG": None})
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.encode(), result.stderr.encode())


def test_suppression_check_and_list_show_dates_and_counts_never_an_address(tmp_path: Path) -> None:
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", KeyRing.load_or_create(tmp_path / "keys.json")) as ledger:
        now = datetime.now(UTC)
        SuppressionList(ledger).suppress(EMAIL, years=3, now=now)
        SuppressionList(ledger).suppress("hugo.bernard@example.com", years=3, now=now)
    checked = dsr(tmp_path, "suppression", "check", "camille.durand@example.org", "--json")
    assert checked.returncode == 0, checked.stderr
    answer = json.loads(checked.stdout)
    assert answer["suppressed"] is True and answer["until"] == str(now.date().replace(year=now.year + 3))
    assert dsr(tmp_path, "suppression", "check", "nobody@example.org").stdout.decode().strip() == "not suppressed"
    listed = dsr(tmp_path, "suppression", "list", "--json")
    assert json.loads(listed.stdout)["count"] == 2
    text = dsr(tmp_path, "suppression", "list").stdout.decode()
    assert text.startswith("2 address(es)") and "@" not in text
    bad = dsr(tmp_path, "suppression", "check", "not-an-address")
    assert bad.returncode != 0 and bad.stderr.decode().startswith("error: ") and bad.stderr.count(b"\n") == 1


@pytest.mark.parametrize("args", [
    ["decide", "dsr-2026-11-AAAAAA", "--uphold", "--reject", "--grounds", "x"],
    ["decide", "dsr-2026-11-AAAAAA"],
    ["decide", "dsr-2026-11-AAAAAA", "--reject"],
    ["decide", "dsr-2026-11-AAAAAA", "--uphold", "--grounds", "because"],
    ["submit", "--kind", "access", "--email", "a@example.org", "--scope", "marketing"],
    ["submit", "--kind", "objection", "--email", "a@example.org", "--scope", "everything"],
])
def test_objection_verbs_refuse_bad_input_in_one_line(tmp_path: Path, args: list[str]) -> None:
    KeyRing.load_or_create(tmp_path / "keys.json")
    result = dsr(tmp_path, *args)
    err = result.stderr.decode()
    assert result.returncode != 0 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
