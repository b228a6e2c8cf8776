"""Issue 12 finding 9: `dsr keys rotate` (the key file of `dsr up`, or a new `DSR_KEYS` for production)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dsr.domain.model import Channel, Language, RequestKind, RequestRecordInput, Subject
from dsr.store.crypto import KeyRing, data_converter
from dsr.store.ledger import Ledger
from dsr.store.links import DownloadLinks

pytestmark = pytest.mark.slow  # the verbs as processes

BIN = Path(sys.executable).parent
EMAIL = "jeanne.martin@example.org"
NOW = datetime(2026, 12, 3, 10, tzinfo=UTC)


def dsr(home: Path, *args: str, keys: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DSR_HOME": str(home)}
    env.pop("DSR_KEYS", None)
    if keys is not None:
        env["DSR_KEYS"] = keys
    return subprocess.run([str(BIN / "dsr"), *args], env=env, capture_output=True, text=True, timeout=60)


async def test_rotating_the_key_file_keeps_old_data_and_moves_everything_new_to_the_new_key(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    old = KeyRing.load_or_create(key_file)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", old)
    ledger.record_request(RequestRecordInput("dsr-2026-12-AAAAAA", RequestKind.ACCESS, Channel.API, Subject(EMAIL, "J"),
                                             NOW, NOW.date(), Language.FR), now=NOW)
    ledger.close()
    old_payloads = await data_converter(old).encode(["before the rotation"])
    old_link = DownloadLinks(old).issue("dsr-2026-12-AAAAAA", now=NOW)

    rotated = dsr(tmp_path, "keys", "rotate", "--json")
    assert rotated.returncode == 0, rotated.stderr
    summary = json.loads(rotated.stdout)
    assert summary["current"] != old.current_key_id and summary["keys"] == [old.current_key_id, summary["current"]]
    assert summary["index"] == old.current_key_id and "env_value" not in summary  # no key material printed
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    new = KeyRing.load(key_file)
    assert new.current_key_id == summary["current"]
    reopened = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", new)
    assert reopened.get_request("dsr-2026-12-AAAAAA").subject.email == EMAIL  # type: ignore[union-attr]
    assert new.blind_index(EMAIL, purpose="x") == old.blind_index(EMAIL, purpose="x")  # the index does not move
    reopened.close()
    assert await data_converter(new).decode(old_payloads) == ["before the rotation"]
    assert (await data_converter(new).encode(["after"]))[0].metadata["encryption-key-id"] == new.current_key_id.encode()
    links = DownloadLinks(new)
    assert links.verify(old_link.token, now=NOW) == "dsr-2026-12-AAAAAA"
    assert links.check_code(old_link.token, old_link.code)
    assert links.issue("dsr-2026-12-AAAAAA", now=NOW).token.startswith(f"v2.{new.current_key_id}.")

    listed = dsr(tmp_path, "keys", "list")
    assert listed.returncode == 0 and f"{new.current_key_id}  (current)" in listed.stdout
    assert f"{old.current_key_id}  (index)" in listed.stdout


def test_rotations_at_the_same_instant_lose_no_key(tmp_path: Path) -> None:
    first = KeyRing.load_or_create(tmp_path / "keys.json")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: dsr(tmp_path, "keys", "rotate", "--json"), range(4)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    made = {json.loads(r.stdout)["current"] for r in results}
    ring = KeyRing.load(tmp_path / "keys.json")
    assert len(made) == 4 and set(ring.key_ids) == made | {first.current_key_id}


def test_keys_from_the_environment_are_rotated_by_a_new_value_to_deploy(tmp_path: Path) -> None:
    production = KeyRing.generate("k1").with_new_key("k2")
    value = production.to_env_value()
    assert value.startswith("k2:") and value.split(",")[-1].startswith("k1:")
    rotated = dsr(tmp_path, "keys", "rotate", keys=value)
    assert rotated.returncode == 0, rotated.stderr
    assert "EVERY worker" in rotated.stderr
    new = KeyRing.from_env_value(rotated.stdout.strip())
    assert new.key_ids[0] == "k1" and new.index_key_id == "k1" and set(new.key_ids) == {"k1", "k2", new.current_key_id}
    assert new.current_key_id not in ("k1", "k2")
    assert not (tmp_path / "keys.json").exists()  # nothing machine-local was written


def test_rotation_without_keys_is_one_line(tmp_path: Path) -> None:
    result = dsr(tmp_path, "keys", "rotate")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "does not exist" in lines[0]
    bad = dsr(tmp_path, "keys", "rotate", keys="k1:nope")
    assert bad.returncode != 0 and bad.stderr.startswith("error:") and "nope" not in bad.stderr
