"""The export store: encrypted at rest, chunked, resumable to any record count."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsr.crypto import DecryptionError
from dsr.exports import ExportStore
from tests.harness import TEST_KEYRING

REQUEST = "dsr-2026-11-EXPRT1"


def orders(start: int, stop: int) -> list[dict]:
    return [{"id": i, "billing": {"email": "zoe.roux@example.org"}} for i in range(start, stop)]


def test_records_round_trip_encrypted_in_chunks(tmp_path: Path) -> None:
    store = ExportStore(tmp_path, TEST_KEYRING)
    with store.for_request(REQUEST).open("shop", "orders", provided=True) as writer:
        for record in orders(0, 250):
            writer.write(record)
        assert writer.count == 250
    raw = (store.folder(REQUEST) / "shop" / "orders.jsonl.enc").read_bytes()
    assert b"zoe.roux" not in raw and raw.count(b"\n") == 3  # 100 + 100 + 50
    assert [r["id"] for r in store.read(REQUEST, "shop", "orders")] == list(range(250))
    [stored] = store.datasets(REQUEST)
    assert (stored.system, stored.dataset, stored.records, stored.provided) == ("shop", "orders", 250, True)
    assert oct((store.folder(REQUEST) / "shop" / "orders.jsonl.enc").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("checkpoint", [0, 100, 150, 249, 250])
def test_resume_truncates_to_the_checkpoint_then_appends(tmp_path: Path, checkpoint: int) -> None:
    store = ExportStore(tmp_path, TEST_KEYRING)
    with store.for_request(REQUEST).open("shop", "orders", provided=True) as writer:
        for record in orders(0, 250):  # a crashed attempt wrote past its last checkpoint
            writer.write(record)
    with store.for_request(REQUEST).open("shop", "orders", provided=True) as writer:
        assert writer.count == 250
        writer.truncate(checkpoint)
        assert writer.count == checkpoint
        for record in orders(checkpoint, 300):
            writer.write(record)
    assert [r["id"] for r in store.read(REQUEST, "shop", "orders")] == list(range(300))


def test_a_dataset_cannot_be_opened_as_another(tmp_path: Path) -> None:
    store = ExportStore(tmp_path, TEST_KEYRING)
    with store.for_request(REQUEST).open("shop", "orders", provided=True) as writer:
        writer.write({"id": 1})
    other = store.folder("dsr-2026-11-OTHER1") / "shop"
    other.mkdir(parents=True)
    for name in ("orders.jsonl.enc", "orders.meta.json"):
        (other / name).write_bytes((store.folder(REQUEST) / "shop" / name).read_bytes())
    with pytest.raises(DecryptionError):
        list(store.read("dsr-2026-11-OTHER1", "shop", "orders"))


def test_unsafe_names_and_deletion(tmp_path: Path) -> None:
    store = ExportStore(tmp_path, TEST_KEYRING)
    with pytest.raises(ValueError, match="not a safe file name"):
        store.for_request(REQUEST).open("../etc", "orders", provided=False)
    with store.for_request(REQUEST).open("shop", "orders", provided=False) as writer:
        writer.write({"id": 1})
    assert store.delete(REQUEST) and not store.folder(REQUEST).exists() and not store.delete(REQUEST)
