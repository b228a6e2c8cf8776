"""The export store: sealed chunk objects, resumable to any record count from another machine."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dsr.store import store_at
from dsr.store.crypto import DecryptionError, is_sealed_object
from dsr.store.exports import ChunkStorer, ExportStore, chunk_purpose
from dsr.store.objects import FileStore, StorageError
from tests.harness import TEST_KEYRING, S3Server

REQUEST = "dsr-2026-11-EXPRT1"
PREFIX = "exports/dsr-2026-11-exprt1/data/shop/orders/"


def orders(start: int, stop: int) -> list[dict]:
    return [{"id": i, "billing": {"email": "zoe.roux@example.org", "name": "Zoé Roux"}} for i in range(start, stop)]


def machine(storage_url: str) -> ExportStore:
    """A store as another worker builds it from the same settings: nothing shared but the storage."""
    return ExportStore(store_at(storage_url), TEST_KEYRING)


def test_records_round_trip_sealed_in_chunk_objects(storage_url: str) -> None:
    store = machine(storage_url)
    with store.for_request(REQUEST).open("shop", "orders", provided=True) as writer:
        for record in orders(0, 250):
            writer.write(record)
        assert writer.count == 250
    assert store.objects.list(PREFIX) == [f"{PREFIX}00000000-100.chunk", f"{PREFIX}00000001-100.chunk",
                                          f"{PREFIX}00000002-50.chunk", f"{PREFIX}meta.json"]
    for key in store.objects.list("exports/"):
        raw = store.objects.get(key)
        assert b"zoe.roux" not in raw and "Zoé".encode() not in raw
    assert [r["id"] for r in machine(storage_url).read(REQUEST, "shop", "orders")] == list(range(250))
    [stored] = machine(storage_url).datasets(REQUEST)
    assert (stored.system, stored.dataset, stored.records, stored.provided) == ("shop", "orders", 250, True)


def test_chunks_are_sealed_binary_and_those_sealed_as_text_before_still_open(storage_url: str) -> None:
    store = machine(storage_url)
    with store.for_request(REQUEST).open("shop", "orders", provided=True) as writer:
        for record in orders(0, 150):
            writer.write(record)
    first, second = f"{PREFIX}00000000-100.chunk", f"{PREFIX}00000001-50.chunk"
    sealed = store.objects.get(first)
    assert is_sealed_object(sealed)
    plaintext = TEST_KEYRING.open_bytes(sealed, purpose=chunk_purpose(store.purpose(REQUEST, "shop", "orders"), 0, 100))
    assert json.loads(plaintext) == orders(0, 100)
    # an export begun by a worker that sealed chunks as text tokens: its chunks still open beside binary ones
    token = TEST_KEYRING.seal_text(json.dumps(orders(100, 150)),
                                   purpose=chunk_purpose(store.purpose(REQUEST, "shop", "orders"), 1, 50))
    store.objects.put(second, token.encode("ascii"))
    assert not is_sealed_object(store.objects.get(second))
    assert list(machine(storage_url).read(REQUEST, "shop", "orders")) == orders(0, 150)
    store.objects.put(second, token[:-4].encode("ascii") + b"AAAA")
    with pytest.raises(DecryptionError):
        list(machine(storage_url).read(REQUEST, "shop", "orders"))


def test_the_bucket_holds_only_ciphertext(s3_url: str, s3_server: S3Server) -> None:
    store = machine(s3_url)
    with store.for_request(REQUEST).open("shop", "orders", provided=True) as writer:
        for record in orders(0, 120):
            writer.write(record)
    raw = s3_server.raw_objects(s3_url.split("/", 3)[3])
    assert len(raw) == 3  # two chunks and the meta
    for key, body in raw.items():
        assert b"zoe.roux" not in body and "Zoé".encode() not in body and b"example.org" not in body, key
        assert "zoe" not in key.lower()


@pytest.mark.parametrize("checkpoint", [0, 100, 150, 249, 250])
def test_resume_on_another_machine_truncates_to_the_checkpoint(storage_url: str, checkpoint: int) -> None:
    first = machine(storage_url)
    writer = first.for_request(REQUEST).open("shop", "orders", provided=True)
    for record in orders(0, 250):  # the crashed attempt wrote past its last checkpoint, then died
        writer.write(record)
    writer.flush()
    other = machine(storage_url)  # the retry runs on another worker
    with other.for_request(REQUEST).open("shop", "orders", provided=True) as resumed:
        assert resumed.count == 250
        resumed.truncate(checkpoint)
        assert resumed.count == checkpoint
        for record in orders(checkpoint, 300):
            resumed.write(record)
    assert [r["id"] for r in machine(storage_url).read(REQUEST, "shop", "orders")] == list(range(300))
    assert machine(storage_url).datasets(REQUEST)[0].records == 300


def test_what_a_crash_during_truncate_leaves_is_a_prefix(storage_url: str) -> None:
    store = machine(storage_url)
    with store.for_request(REQUEST).open("shop", "orders", provided=True) as writer:
        for record in orders(0, 400):
            writer.write(record)
    # A truncation killed after deleting chunk 1 but not yet 2 and 3: what follows the gap is not counted.
    store.objects.delete(f"{PREFIX}00000001-100.chunk")
    assert store.datasets(REQUEST)[0].records == 100
    assert [r["id"] for r in store.read(REQUEST, "shop", "orders")] == list(range(100))
    with machine(storage_url).for_request(REQUEST).open("shop", "orders", provided=True) as resumed:
        assert resumed.count == 100  # and the strays are removed before anything is written after them
        for record in orders(100, 150):
            resumed.write(record)
    assert store.objects.list(PREFIX) == [f"{PREFIX}00000000-100.chunk", f"{PREFIX}00000001-50.chunk",
                                          f"{PREFIX}meta.json"]


def test_a_chunk_moved_renamed_or_tampered_with_does_not_open(storage_url: str) -> None:
    store = machine(storage_url)
    with store.for_request(REQUEST).open("shop", "orders", provided=True) as writer:
        for record in orders(0, 200):
            writer.write(record)
    objects = store.objects
    first, second = f"{PREFIX}00000000-100.chunk", f"{PREFIX}00000001-100.chunk"
    # copied under another request
    other = "exports/dsr-2026-11-other1/data/shop/orders/"
    objects.put(other + "meta.json", objects.get(PREFIX + "meta.json"))
    objects.put(other + "00000000-100.chunk", objects.get(first))
    with pytest.raises(DecryptionError):
        list(store.read("dsr-2026-11-OTHER1", "shop", "orders"))
    # swapped in order within its own dataset
    a, b = objects.get(first), objects.get(second)
    objects.put(first, b)
    objects.put(second, a)
    with pytest.raises(DecryptionError):
        list(store.read(REQUEST, "shop", "orders"))
    # a count changed in the name
    objects.put(first, a)
    objects.delete(second)
    objects.put(f"{PREFIX}00000001-99.chunk", b)
    with pytest.raises(DecryptionError):
        list(store.read(REQUEST, "shop", "orders"))
    # a flipped byte
    objects.delete(f"{PREFIX}00000001-99.chunk")
    objects.put(first, a[:-3] + (b"A" if a[-3:-2] != b"A" else b"B") + a[-2:])
    with pytest.raises(DecryptionError):
        list(store.read(REQUEST, "shop", "orders"))


def test_unsafe_names_and_deletion(storage_url: str) -> None:
    store = machine(storage_url)
    with pytest.raises(ValueError, match="not a safe file name"):
        store.for_request(REQUEST).open("../etc", "orders", provided=False)
    with store.for_request(REQUEST).open("shop", "orders", provided=False) as writer:
        writer.write({"id": 1})
    store.objects.put(store.bundle_key(REQUEST), b"sealed bundle")
    assert store.holds(REQUEST)
    assert machine(storage_url).delete(REQUEST)  # from another machine
    assert store.objects.list("exports/") == [] and not store.delete(REQUEST) and not store.holds(REQUEST)
    assert store.datasets(REQUEST) == [] and list(store.read(REQUEST, "shop", "orders")) == []


# --- stored behind the writer (an activity's ChunkStorer) --------------------------------------------------


def hold_at_the_gate(store: ExportStore, chunk: str, monkeypatch: pytest.MonkeyPatch, *,
                     refuse: bool = False) -> threading.Event:
    """The PUT of the chunk named ``chunk`` waits until the returned gate opens, then stores it (or, ``refuse``,
    fails as a bucket refusing the object would); every other PUT goes through."""
    gate, put = threading.Event(), store.objects.put

    def held_back(key: str, data: bytes, **options: Any) -> None:
        if key.endswith(chunk):
            assert gate.wait(10)
            if refuse:
                raise StorageError("the bucket refused the object")
        put(key, data, **options)

    monkeypatch.setattr(store.objects, "put", held_back)
    return gate


def test_chunks_stored_behind_the_writer_hold_back_the_checkpoint_until_all_are_stored(
    storage_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = machine(storage_url)
    gate = hold_at_the_gate(store, "00000000-100.chunk", monkeypatch)
    storer, checkpoints = ChunkStorer(), []
    try:
        writer = store.for_request(REQUEST, storer=storer).open("shop", "orders", provided=True)
        for record in orders(0, 200):
            writer.write(record)  # returns while the first chunk waits at the gate
        writer.flush()
        storer.after_stored(lambda: checkpoints.append(200))
        for record in orders(200, 250):
            writer.write(record)
        writer.flush()
        storer.after_stored(lambda: checkpoints.append(250))
        for _ in range(200):  # the chunks after the first are stored beside it, and still no checkpoint
            if f"{PREFIX}00000002-50.chunk" in store.objects.list(PREFIX):
                break
            time.sleep(0.05)
        assert store.objects.list(PREFIX) == [f"{PREFIX}00000001-100.chunk", f"{PREFIX}00000002-50.chunk",
                                              f"{PREFIX}meta.json"]
        assert writer.count == 250 and checkpoints == []
        gate.set()
        writer.close()
    finally:
        gate.set()
        storer.close()
    assert checkpoints == [200, 250]  # in order, once everything before each was stored
    assert [r["id"] for r in machine(storage_url).read(REQUEST, "shop", "orders")] == list(range(250))


def test_a_chunk_that_fails_to_store_stops_the_later_ones_their_checkpoints_and_the_export(
    storage_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = machine(storage_url)
    gate = hold_at_the_gate(store, "00000001-100.chunk", monkeypatch, refuse=True)
    storer, checkpoints, after_failure = ChunkStorer(), [], []
    try:
        writer = store.for_request(REQUEST, storer=storer).open("shop", "orders", provided=True)
        for record in orders(0, 100):
            writer.write(record)
        writer.flush()
        storer.after_stored(lambda: checkpoints.append(100))
        for record in orders(100, 300):  # chunks 1 and 2 handed over; chunk 1 will fail, chunk 2 is stored beside it
            writer.write(record)
        writer.flush()
        storer.after_stored(lambda: checkpoints.append(300))
        gate.set()
        storer.wait()
        storer.submit(lambda: after_failure.append("stored"))  # handed over after the failure: not stored
        storer.after_stored(lambda: checkpoints.append(400))
        storer.wait()
        with pytest.raises(StorageError, match="refused"):
            writer.write({"id": 300})
        with pytest.raises(StorageError, match="refused"):
            writer.close()
    finally:
        gate.set()
        storer.close()
    assert checkpoints == [100] and after_failure == []  # no checkpoint counting the failed chunk, nor after it
    # Chunk 2 follows a gap: not counted, and removed when the retry opens the dataset (from 100 records).
    assert machine(storage_url).datasets(REQUEST)[0].records == 100
    with machine(storage_url).for_request(REQUEST).open("shop", "orders", provided=True) as resumed:
        assert resumed.count == 100
    assert store.objects.list(PREFIX) == [f"{PREFIX}00000000-100.chunk", f"{PREFIX}meta.json"]


# --- what a connector on the worker's event loop writes to (ExportStore.sink) -------------------------------


async def test_a_connector_waits_for_the_storers_room_without_holding_up_the_event_loop(
    storage_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three chunks handed over while the first one's PUT is held: the flush waits (at most one chunk may be
    behind), and meanwhile the event loop runs, here the task that lets the PUT through. A writer that blocked
    the loop until the storer had room would never let it through: the PUT would give up after 10 s and fail."""
    store = machine(storage_url)
    gate = hold_at_the_gate(store, "00000000-100.chunk", monkeypatch)
    storer = ChunkStorer(parallel=1, behind=1)
    try:
        writer = await store.sink(REQUEST, storer=storer).open("shop", "orders", provided=True)
        for record in orders(0, 300):
            writer.write(record)  # three full chunks sealed and handed over; the first is held at the gate
        flushing = asyncio.create_task(writer.flush())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not flushing.done()  # three chunks behind, one allowed: it waits
        gate.set()  # run by the event loop while the flush waits
        await asyncio.wait_for(flushing, 10)
        await writer.close()
    finally:
        gate.set()
        storer.close()
    assert [r["id"] for r in machine(storage_url).read(REQUEST, "shop", "orders")] == list(range(300))


async def test_opening_and_closing_a_dataset_wait_on_the_store_off_the_event_loop(
    storage_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Opening a dataset writes its meta.json and lists its chunks; closing waits for the last PUTs. Both are
    round trips to the object store: held here until a task of the event loop lets them through."""
    store = machine(storage_url)
    opened = hold_at_the_gate(store, "orders/meta.json", monkeypatch)
    opening = asyncio.create_task(store.sink(REQUEST).open("shop", "orders", provided=True))
    await asyncio.sleep(0)  # the open starts; its PUT waits at the gate
    opened.set()
    writer = await asyncio.wait_for(opening, 10)

    storer = ChunkStorer()
    stored = hold_at_the_gate(store, "00000000-50.chunk", monkeypatch)
    try:
        writer = await store.sink(REQUEST, storer=storer).open("shop", "orders", provided=True)
        for record in orders(0, 50):
            writer.write(record)
        await writer.flush()  # handed over; its PUT is held
        closing = asyncio.create_task(writer.close())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not closing.done()  # the close waits for the chunk's PUT
        stored.set()
        await asyncio.wait_for(closing, 10)
    finally:
        stored.set()
        storer.close()
    assert [r["id"] for r in machine(storage_url).read(REQUEST, "shop", "orders")] == list(range(50))


async def test_a_writer_cancelled_while_its_flush_runs_is_closed_after_that_flush_not_beside_it(
        tmp_path: Path) -> None:
    # A dataset paged beside another that failed is cancelled wherever it is: here, in its flush's thread.
    objects = FileStore(tmp_path)
    store = ExportStore(objects, TEST_KEYRING)
    entered, released = threading.Semaphore(0), threading.Event()
    put = objects.put

    def held_put(key: str, data: bytes, **options: Any) -> None:
        if key.endswith(".chunk"):
            entered.release()
            released.wait(10)
        put(key, data, **options)

    objects.put = held_put  # type: ignore[method-assign]
    stream = await store.sink(REQUEST).open("shop", "orders", provided=True)
    for record in orders(0, 50):
        stream.write(record)
    flushing = asyncio.create_task(stream.flush())
    assert await asyncio.to_thread(entered.acquire, True, 10)  # the flush's thread is storing the chunk
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    closing = asyncio.create_task(stream.close())
    await asyncio.sleep(0.2)  # room for a close that would not wait to reach the store
    released.set()
    await closing
    assert stream.count == 50
    assert objects.list(PREFIX) == [f"{PREFIX}00000000-50.chunk", f"{PREFIX}meta.json"]
    assert list(machine(tmp_path.as_uri()).read(REQUEST, "shop", "orders")) == orders(0, 50)
