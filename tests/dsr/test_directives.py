"""Directives for after death (loi 78-17 art. 85-I): recorded sealed, found by blind index when a death is
reported, replaced or revoked at any time; the verbs over the real CLI; the table on an upgraded database."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from dsr.domain.model import DirectiveInstruction, DirectivesFound
from dsr.store.crypto import KeyRing
from dsr.store.directives import DirectivesError, DirectivesRegister
from dsr.store.ledger import Ledger
from tests.cli import run_dsr
from tests.dsr.test_migrations import build_previous_release
from tests.harness import TEST_KEYRING

PERSON = "Henri.Dupont@example.org"
DAUGHTER = "claire.dupont@example.net"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", TEST_KEYRING) as ledger:
        yield ledger


def test_directives_are_found_by_blind_index_and_hold_no_address_in_clear(ledger: Ledger) -> None:
    register = DirectivesRegister(ledger)
    assert register.find(PERSON, DAUGHTER) == DirectivesFound()
    directive_id = register.record(PERSON, instruction="hand_over", text="Mes photos à ma fille Claire.",
                                   designee_email=DAUGHTER, designee_name="Claire Dupont", now=T0)
    # Any case of the address finds them; the sender is recognised as the designee only by their own address.
    assert register.find(PERSON.lower(), DAUGHTER.upper()) == DirectivesFound(
        found=True, directive_id=directive_id, instruction="hand_over", designates=True, sender_designated=True)
    assert register.find(PERSON, "someone.else@example.org").sender_designated is False
    with ledger.engine.connect() as conn:
        row = " ".join(str(v) for v in conn.execute(text("SELECT * FROM directives")).one())
    for secret in ("dupont", "Claire", "photos", "example"):
        assert secret.lower() not in row.lower()
    shown = register.show(PERSON)
    assert shown is not None and shown.text == "Mes photos à ma fille Claire." and shown.designee_email == DAUGHTER
    assert register.mark_applied(directive_id, "dsr-2026-12-AAAAAA") and register.count() == 1


def test_new_directives_replace_the_old_and_a_revocation_ends_them(ledger: Ledger) -> None:
    register = DirectivesRegister(ledger)
    register.record(PERSON, instruction="keep", now=T0)
    newer = register.record(PERSON, instruction=DirectiveInstruction.ERASE, now=T0 + timedelta(days=1))
    found = register.find(PERSON, DAUGHTER)
    assert found.directive_id == newer and found.instruction == "erase" and not found.designates
    assert register.count() == 1
    assert register.revoke(PERSON) == 1 and register.find(PERSON, DAUGHTER).found is False
    assert register.revoke(PERSON) == 0


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"instruction": "burn"}, "instruction must be one of erase, keep, hand_over"),
    ({"instruction": "hand_over"}, "a hand-over needs the designated person"),
    ({"instruction": "erase", "designee_email": PERSON.upper()}, "someone else"),
    ({"instruction": "erase", "designee_email": "nope"}, "designated person's email"),
])
def test_directives_that_cannot_be_followed_are_refused(ledger: Ledger, kwargs: dict[str, str], error: str) -> None:
    with pytest.raises(DirectivesError, match=error):
        DirectivesRegister(ledger).record(PERSON, **kwargs)  # type: ignore[arg-type]
    assert DirectivesRegister(ledger).count() == 0


def test_a_previous_release_database_gains_the_directives_table(database_url: str) -> None:
    build_previous_release(database_url)
    with Ledger(database_url, TEST_KEYRING) as ledger:  # upgraded on opening, on SQLite and PostgreSQL
        assert ledger.get_request("dsr-2026-11-OLDREQ") is not None
        register = DirectivesRegister(ledger)
        register.record(PERSON, instruction="erase", now=T0)
        assert register.find(PERSON, DAUGHTER).instruction == "erase"


def dsr(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The verb in this process (tests/cli.py: a process spends seconds of CPU importing the engine)."""
    return run_dsr(list(args), {"DSR_HOME": str(home), "DSR_DATABASE_URL": f"sqlite:///{home / 'ledger.sqlite3'}",
                                "DSR_KEYS": None, "DSR_CONFIG": None})


def test_the_directives_verbs_record_show_and_revoke(tmp_path: Path) -> None:
    KeyRing.load_or_create(tmp_path / "keys.json")
    recorded = dsr(tmp_path, "directives", "record", PERSON, "--instruction", "hand_over", "--designee-email",
                   DAUGHTER, "--designee-name", "Claire Dupont", "--text", "Mes photos à Claire.", "--json")
    assert recorded.returncode == 0, recorded.stderr
    directive_id = json.loads(recorded.stdout)["directive_id"]
    assert directive_id.startswith("dir-") and "@" not in recorded.stdout
    shown = dsr(tmp_path, "directives", "show", PERSON.lower())
    out = shown.stdout
    assert shown.returncode == 0 and out.startswith(f"{directive_id}: hand_over")
    assert f"Claire Dupont <{DAUGHTER}>" in out and "Mes photos à Claire." in out
    assert dsr(tmp_path, "directives", "revoke", PERSON).stdout.strip() == "revoked"
    assert dsr(tmp_path, "directives", "show", PERSON).stdout.strip() == "no directives in force"


@pytest.mark.parametrize("args", [
    ["directives", "record", PERSON, "--instruction", "burn"],
    ["directives", "record", "not-an-address", "--instruction", "erase"],
    ["directives", "show", "not-an-address"],
    ["confirm-quality", "dsr-2026-11-AAAAAA", "--quality", "cousin"],
    ["submit", "--kind", "post_mortem", "--email", "a@example.org"],
    ["submit", "--kind", "post_mortem", "--email", "a@example.org", "--deceased-email", "a@example.org"],
    ["submit", "--kind", "erasure", "--email", "a@example.org", "--deceased-email", "b@example.org"],
])
def test_post_mortem_verbs_refuse_bad_input_in_one_line(tmp_path: Path, args: list[str]) -> None:
    KeyRing.load_or_create(tmp_path / "keys.json")
    result = dsr(tmp_path, *args)
    err = result.stderr
    assert result.returncode != 0 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
