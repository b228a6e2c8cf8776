"""Attachments (ID copies) on both object store backends: sealed, bound to their request and index, never
overwritten by a concurrent writer, readable and deletable from another machine."""

from __future__ import annotations

import threading

import pytest

from dsr.store import store_at
from dsr.store.attachments import AttachmentInfo, AttachmentStore
from dsr.store.crypto import DecryptionError
from tests.harness import TEST_KEYRING, S3Server

REQUEST = "dsr-2026-03-ATTACH"
SCAN = b"%PDF-1.4 PASSPORT-NUMBER 12AB34567 Jerome Martin " + bytes(range(256))


def machine(storage_url: str) -> AttachmentStore:
    return AttachmentStore(store_at(storage_url), TEST_KEYRING)


def test_saved_on_one_machine_read_and_deleted_on_another(storage_url: str) -> None:
    mailbox = machine(storage_url)
    assert mailbox.save(REQUEST, "passeport Jérôme.pdf", "application/pdf", SCAN, source="ab" * 32, part=2) == \
        AttachmentInfo(1, "passeport Jérôme.pdf", "application/pdf", len(SCAN))
    mailbox.save(REQUEST, "letter.txt", "text/plain", b"hello")
    operator = machine(storage_url)
    assert [a.filename for a in operator.list(REQUEST)] == ["passeport Jérôme.pdf", "letter.txt"]
    assert operator.read(REQUEST, 1) == SCAN and operator.parts_from(REQUEST, "ab" * 32) == {2}
    assert mailbox.objects.list("attachments/") == [f"attachments/{REQUEST}/{n}.{s}" for n in (1, 2)
                                                     for s in ("bin", "meta")]
    worker = machine(storage_url)
    assert worker.delete_all(REQUEST) == 2 and worker.delete_all(REQUEST) == 0  # idempotent
    assert operator.list(REQUEST) == [] and mailbox.objects.list("attachments/") == []
    with pytest.raises(FileNotFoundError):
        operator.read(REQUEST, 1)


@pytest.mark.slow
def test_the_bucket_holds_only_ciphertext(s3_url: str, s3_server: S3Server) -> None:
    machine(s3_url).save(REQUEST, "passeport Jérôme.pdf", "application/pdf", SCAN)
    raw = s3_server.raw_objects(s3_url.split("/", 3)[3])
    assert len(raw) == 2
    for key, body in raw.items():
        for secret in (b"PASSPORT-NUMBER", b"Jerome", "Jérôme".encode(), b"passeport", SCAN[-64:]):
            assert secret not in body, key


def test_an_object_moved_under_another_request_or_index_does_not_open(storage_url: str) -> None:
    store = machine(storage_url)
    store.save(REQUEST, "a.pdf", "application/pdf", b"first")
    store.save(REQUEST, "b.pdf", "application/pdf", b"second")
    objects = store.objects
    other = "dsr-2026-03-ZZZZZZ"
    for name in ("1.bin", "1.meta"):
        objects.put(f"attachments/{other}/{name}", objects.get(f"attachments/{REQUEST}/{name}"))
    with pytest.raises(DecryptionError):
        store.read(other, 1)
    objects.put(f"attachments/{REQUEST}/1.bin", objects.get(f"attachments/{REQUEST}/2.bin"))  # swapped index
    with pytest.raises(DecryptionError):
        store.read(REQUEST, 1)


def test_racing_writers_never_overwrite_each_other(storage_url: str) -> None:
    """Two mailbox pollers (two machines) storing files for the same request at the same instant."""
    writers = [machine(storage_url) for _ in range(2)]
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def save(n: int) -> None:
        try:
            start.wait()
            writers[n % 2].save(REQUEST, f"scan-{n}.pdf", "application/pdf", f"scan {n}".encode())
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=save, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stored = machine(storage_url).list(REQUEST)
    assert sorted(a.index for a in stored) == list(range(1, 9))
    contents = {machine(storage_url).read(REQUEST, a.index) for a in stored}
    assert contents == {f"scan {n}".encode() for n in range(8)}, "each file kept, none overwritten"
