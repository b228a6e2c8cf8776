"""Exported records on the object store: what connectors export for one request, sealed, never in Temporal.

Key layout, under ``exports/<request_id>/`` (so that one prefix deletion removes everything of a request)::

    data/<system>/<dataset>/meta.json              {"provided": true|false} (Art. 20); no personal data
    data/<system>/<dataset>/<seq:08d>-<n>.chunk    one sealed JSON list of n records (one vendor page)
    bundle.zip.enc                                 the encrypted bundle (dsr.mail.bundle), what the subject downloads

An object store cannot append, so each sealed chunk is its own object, numbered from 0. A chunk's record
count is in its name: counting an export lists names and decrypts nothing. Each chunk is AES-GCM through
the key ring (``KeyRing.seal_bytes``: binary, as stored), bound to the request, system, dataset, its number and
its count: a chunk copied under another request, dataset or position does not open. Chunks sealed as text tokens
(before they were binary) still open. The records of a dataset are the chunks numbered
0, 1, 2... without a gap; anything after a gap (left by a crash while truncating) is ignored and removed.

Storing behind (:class:`ChunkStorer`): in a connector activity, each chunk is sealed as it fills and stored on
threads of the activity's own, several at a time, while the connector fetches the next pages; the checkpoint that
counts them is heartbeated only once they are all stored (``ChunkStorer.after_stored``). An S3 PUT's round trip or
a file system's fsync then no longer holds up the export or the worker's event loop. A chunk that fails to store
stops the chunks handed over after it and fails the export at its next write, flush or close; the retry resumes
from the last checkpoint heartbeated, which counts only chunks that were stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import orjson

from dsr.store.crypto import is_sealed_object
from dsr.store.objects import ObjectNotFound, ObjectStore, StorageError

CHUNK_RECORDS = 100
"""Records sealed together: one page of a vendor API."""

CHUNKS_PARALLEL = 16
"""PUTs a :class:`ChunkStorer` makes at once. A remote store's round trip (S3 in the same region: tens of ms) is
then hidden behind a fast vendor's paging: measured (``bench/export_heavy.py --put-latency-ms 30``, a loaded host),
the heavy export took x1.45-1.54 its bare paging time, about what it takes with no latency (x1.56), where 4 at once
(and the flush blocking the loop) left it at x1.57-1.99."""
CHUNKS_BEHIND = 32
"""Sealed chunks a :class:`ChunkStorer` may hold not yet stored before a writer waits: memory stays bounded (about
8 MB of a heavy customer's orders) when the store is slower than the vendor."""

EXPORTS = "exports/"
BUNDLE_NAME = "bundle.zip.enc"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_CHUNK = re.compile(r"(\d{8})-(\d{1,9})\.chunk")
_META = "meta.json"


class Sealer(Protocol):
    def seal_bytes(self, plaintext: bytes, *, purpose: str) -> bytes: ...
    def open_bytes(self, sealed: bytes, *, purpose: str) -> bytes: ...
    # Text tokens: chunks sealed before they were binary, and the journals kept beside the exports (same ring).
    def open_text(self, token: str, *, purpose: str) -> str: ...
    def seal_text(self, plaintext: str, *, purpose: str) -> str: ...


def _retrieved(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _safe(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {value!r} is not a safe file name (lower-case letters, digits, _ . -)")
    return value


def _dump(record: Mapping[str, Any]) -> bytes:
    # orjson: ~10x the standard encoder, which dominated a 10,000-order export's CPU time. UTF-8 bytes, as sealed.
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)


@dataclass(frozen=True)
class StoredDataset:
    system: str
    dataset: str
    records: int
    provided: bool


class _Chunk(NamedTuple):
    seq: int
    records: int  # not `count`: a tuple has a count() method
    key: str


def _scan(keys: list[str], folder: str) -> tuple[list[_Chunk], list[str]]:
    """The dataset's chunks (numbered from 0 without a gap) and the stray keys to remove."""
    found: dict[int, list[_Chunk]] = {}
    for key in keys:
        match = _CHUNK.fullmatch(key[len(folder):])
        if match:
            seq = int(match[1])
            found.setdefault(seq, []).append(_Chunk(seq, int(match[2]), key))
    chunks: list[_Chunk] = []
    strays: list[str] = []
    for seq in sorted(found):
        candidates = found[seq]
        if seq == len(chunks) and len(candidates) == 1:
            chunks.append(candidates[0])
        else:  # after a gap, or two chunks under one number: nothing from here on is in a known order
            strays.extend(c.key for c in candidates)
    return chunks, strays


class ChunkStorer:
    """Stores the sealed chunks of one export attempt on threads of its own, ``parallel`` at a time.

    A remote object store answers each PUT after a round trip (tens of milliseconds for S3 in the same region):
    stored one after the other, the 100 chunks of a 10,000-order export would add seconds to the vendor's paging.
    ``after_stored`` runs its callback once every chunk handed over before it is stored, in the order the callbacks
    were registered, so the cursor that counts them is heartbeated only then. The first failure is kept as
    ``failure``: chunks handed over later are not stored, and no callback waiting for any of them runs. A chunk
    stored beside the one that failed follows a gap; the next attempt's scan ignores and removes it (``_scan``).
    ``submit`` never waits; a writer waits for room (at most ``behind`` chunks not yet stored) before it goes on:
    :meth:`wait_for_room` on a thread, :meth:`room` on an event loop (back-pressure on a slow store).
    """

    def __init__(self, *, parallel: int = CHUNKS_PARALLEL, behind: int = CHUNKS_BEHIND) -> None:
        self._threads = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="export-chunks")
        self._behind = behind
        self._lock = threading.Lock()
        self._room_made = threading.Condition(self._lock)
        self._room_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._since_checkpoint: list[Future[None]] = []
        self._outstanding: set[Future[None]] = set()
        self._checkpoint: Future[None] | None = None
        self.failure: BaseException | None = None

    def submit(self, store: Callable[[], None]) -> None:
        """Hand a chunk's ``store`` over; never waits (back-pressure is :meth:`wait_for_room` / :meth:`room`)."""

        def run() -> None:
            try:
                if self.failure is not None:
                    raise StorageError("not stored: an earlier chunk of this export failed to store")
                store()
            except BaseException as err:
                with self._lock:
                    self.failure = self.failure or err
                raise

        with self._lock:
            future = self._threads.submit(run)
            self._since_checkpoint.append(future)
            self._outstanding.add(future)
        future.add_done_callback(self._done)

    def _has_room(self) -> bool:
        return len(self._outstanding) <= self._behind

    def wait_for_room(self) -> None:
        """Block until at most ``behind`` chunks wait to be stored (a writer on a thread of its own)."""
        with self._room_made:
            self._room_made.wait_for(self._has_room)

    async def room(self) -> None:
        """Wait, without blocking the event loop, until at most ``behind`` chunks wait to be stored: a connector
        on the worker's event loop must not hold up every other activity and workflow of the worker while a
        slow store catches up."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._has_room():
                    return
                waiter: asyncio.Future[None] = loop.create_future()
                self._room_waiters.append((loop, waiter))
            await waiter

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._outstanding.discard(future)
            self._room_made.notify_all()
            waiters, self._room_waiters = self._room_waiters, []
        for loop, waiter in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_wake, waiter)

    def after_stored(self, then: Callable[[], object]) -> None:
        """Call ``then`` once what was submitted before is stored and the earlier callbacks ran; never after a
        failure. It runs on the thread that stored the last of those chunks (or here, if they are stored)."""
        with self._lock:
            waits_for = [*self._since_checkpoint, *([self._checkpoint] if self._checkpoint else [])]
            self._since_checkpoint = []
            checkpoint: Future[None] = Future()
            self._checkpoint = checkpoint
            left = [len(waits_for)]

        def one_done(_: Future[None]) -> None:
            with self._lock:
                left[0] -= 1
                if left[0]:
                    return
            # Stored, each of them and every chunk before (the previous checkpoint): whatever failed elsewhere since.
            if not any(f.exception() for f in waits_for):
                then()
                checkpoint.set_result(None)
            else:
                checkpoint.set_exception(StorageError("an earlier chunk of this export failed to store"))

        if not waits_for:
            then()
            checkpoint.set_result(None)
        for future in waits_for:
            future.add_done_callback(one_done)

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def wait(self) -> None:
        """Block until every chunk submitted so far is stored or skipped."""
        with self._lock:
            outstanding = list(self._outstanding)
        wait_for(outstanding)

    def close(self) -> None:
        """Wait for every chunk and callback (they run on these threads), then stop the threads."""
        self._threads.shutdown(wait=True)


class DatasetFile:
    """Writes the records of one dataset, sealed in chunks; ``truncate`` rewinds to a checkpoint on resume.

    One AES-GCM operation per chunk rather than per record keeps a 10,000-order export close to the
    vendor's own paging time. ``flush`` seals what is pending into its own chunk: call it before the checkpoint
    that counts those records. Alone, a chunk is stored before ``flush`` returns and one chunk of records at most
    is held in memory; with a ``storer`` (an activity's), it is stored behind, in order, at most
    ``CHUNKS_BEHIND`` chunks held, and ``close`` and ``truncate`` wait for it.
    """

    def __init__(self, objects: ObjectStore, folder: str, sealer: Sealer, purpose: str, *,
                 chunk: int = CHUNK_RECORDS, storer: ChunkStorer | None = None) -> None:
        self._objects = objects
        self._folder = folder
        self._sealer = sealer
        self._purpose = purpose
        self._chunk = chunk
        self._storer = storer
        self._pending: list[bytes] = []
        self._closed = False
        self._chunks, strays = _scan(objects.list(folder), folder)
        for key in sorted(strays, reverse=True):
            objects.delete(key)
        self._stored = sum(c.records for c in self._chunks)

    @property
    def count(self) -> int:
        return self._stored + len(self._pending)

    def write(self, record: Mapping[str, Any]) -> None:
        """Add a record; a chunk that fills is sealed and stored (or, behind a storer, handed over: this waits
        while ``CHUNKS_BEHIND`` chunks are not yet stored)."""
        if self.append(record) and self._storer is not None:
            self._storer.wait_for_room()

    def append(self, record: Mapping[str, Any]) -> bool:
        """:meth:`write` that never waits for the storer's room (the caller awaits it: :class:`DatasetStream`);
        True when a chunk was sealed."""
        if self._storer is not None:
            self._storer.raise_failure()
        self._pending.append(_dump(record))
        if len(self._pending) >= self._chunk:
            self._seal_pending()
            return True
        return False

    def _seal_pending(self) -> None:
        if not self._pending:
            return
        seq, records = len(self._chunks), self._pending
        key = f"{self._folder}{seq:08d}-{len(records)}.chunk"
        purpose = chunk_purpose(self._purpose, seq, len(records))

        # Sealed here, stored behind: the thread would hold the GIL for the sealing (CPU) and slow the event loop;
        # it only waits on the disk or the network, which releases the GIL.
        sealed = self._sealer.seal_bytes(b"[" + b",".join(records) + b"]", purpose=purpose)
        if self._storer is None:
            self._objects.put(key, sealed)
        else:
            self._storer.submit(lambda: self._objects.put(key, sealed))
        self._chunks.append(_Chunk(seq, len(records), key))
        self._stored += len(records)
        self._pending = []

    def _wait_stored(self) -> None:
        if self._storer is not None:
            self._storer.wait()
            self._storer.raise_failure()

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` records (a resumed export, maybe on another machine, drops what was
        written after its last checkpoint). A crash half-way leaves a prefix of the records, which the
        next attempt truncates again (or, if shorter than its checkpoint, starts over)."""
        if count < 0 or count > self.count:
            raise ValueError(f"cannot truncate {self.count} records to {count}")
        self.flush()
        self._wait_stored()
        kept, index = 0, 0
        while index < len(self._chunks) and kept + self._chunks[index].records <= count:
            kept += self._chunks[index].records
            index += 1
        partial: list[Any] = []
        if kept < count:  # the checkpoint falls inside this chunk: keep its first records
            partial = self._open_chunk(self._chunks[index])[: count - kept]
        for chunk in reversed(self._chunks[index:]):  # last first: what remains is always a prefix
            self._objects.delete(chunk.key)
        self._chunks = self._chunks[:index]
        self._stored = kept
        self._pending = [_dump(record) for record in partial]
        self.flush()

    def _open_chunk(self, chunk: _Chunk) -> list[Any]:
        return open_chunk(self._objects, self._sealer, self._purpose, chunk)

    def flush(self) -> None:
        """Seal what is pending into its own chunk and store it (behind a storer: hand it over, then wait while
        ``CHUNKS_BEHIND`` chunks are not yet stored)."""
        self.hand_over()
        if self._storer is not None:
            self._storer.wait_for_room()

    def hand_over(self) -> None:
        """:meth:`flush` that never waits for the storer's room."""
        if self._storer is not None:
            self._storer.raise_failure()
        self._seal_pending()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.flush()
            self._wait_stored()

    def __enter__(self) -> DatasetFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chunk_purpose(purpose: str, seq: int, count: int) -> str:
    return f"{purpose}:{seq}:{count}"


def open_chunk(objects: ObjectStore, sealer: Sealer, purpose: str, chunk: _Chunk) -> list[Any]:
    stored = objects.get(chunk.key)
    bound = chunk_purpose(purpose, chunk.seq, chunk.records)
    if is_sealed_object(stored):
        plaintext: bytes | str = sealer.open_bytes(stored, purpose=bound)
    else:  # a text token, as chunks were sealed before they were binary: an export begun by an older worker
        plaintext = sealer.open_text(stored.decode("ascii", errors="replace"), purpose=bound)
    records = orjson.loads(plaintext)
    if not isinstance(records, list) or len(records) != chunk.records:
        raise ValueError(f"export chunk {chunk.key} does not hold {chunk.records} records")
    return records


class RequestExports:
    """The export sink of one request (what ``connectors.base.ExportSink`` asks for)."""

    def __init__(self, store: ExportStore, request_id: str, *, storer: ChunkStorer | None = None) -> None:
        self._store = store
        self.request_id = request_id
        self._storer = storer

    def open(self, system: str, dataset: str, *, provided: bool) -> DatasetFile:
        folder = self._store.dataset_prefix(self.request_id, system, dataset)
        self._store.objects.put(folder + _META, json.dumps({"provided": bool(provided)}).encode())
        return DatasetFile(self._store.objects, folder, self._store.sealer,
                           self._store.purpose(self.request_id, system, dataset), storer=self._storer)


class DatasetStream:
    """One dataset as a connector on the worker's event loop writes it (``connectors.base.DatasetWriter``).

    Nothing here blocks the event loop, which runs every other activity and workflow task of the worker: records
    are added and chunks sealed and handed to the storer on the loop (CPU only); waiting for the storer's room is
    awaited; opening (a LIST, a PUT), truncating (a LIST, DELETEs, maybe a GET) and closing (waiting for the last
    PUTs) run in a thread. Measured (``bench/export_heavy.py --put-latency-ms 30``): while the heavy customer was
    exported, a task sleeping 5 ms on the same loop woke up to 310-334 ms late when these waits blocked it, and
    53-78 ms late since (the rest is the export's own CPU: parsing pages, sealing chunks)."""

    def __init__(self, file: DatasetFile, storer: ChunkStorer | None) -> None:
        self._file = file
        self._storer = storer
        self._in_thread: asyncio.Future[None] | None = None

    async def _on_a_thread(self, work: Callable[[], None]) -> None:
        """Run ``work`` on a thread, after any earlier one on this file has finished: a writer cancelled while its
        flush runs (a dataset paged beside another that failed) leaves the thread running, and the close that
        follows must not flush the same file beside it."""
        if self._in_thread is not None:  # wait() never cancels what it waits for, should this call be cancelled
            await asyncio.wait({self._in_thread})
        running = self._in_thread = asyncio.ensure_future(asyncio.to_thread(work))
        running.add_done_callback(_retrieved)  # raised to the caller; if it was cancelled, to nobody
        await asyncio.shield(running)

    @property
    def count(self) -> int:
        return self._file.count

    def write(self, record: Mapping[str, Any]) -> None:
        """Never waits for the storer (``flush`` does); with no storer (tests), a full chunk is stored here."""
        self._file.append(record)

    async def flush(self) -> None:
        if self._storer is None:
            await self._on_a_thread(self._file.flush)
            return
        self._file.hand_over()
        await self._storer.room()
        self._storer.raise_failure()

    async def truncate(self, count: int) -> None:
        await self._on_a_thread(lambda: self._file.truncate(count))

    async def close(self) -> None:
        await self._on_a_thread(self._file.close)


class RequestSink:
    """The export sink of one request as connectors use it (``connectors.base.ExportSink``): what
    :class:`RequestExports` does, awaited, so a connector never blocks the event loop on the object store."""

    def __init__(self, exports: RequestExports, storer: ChunkStorer | None) -> None:
        self._exports = exports
        self._storer = storer
        self.request_id = exports.request_id

    async def open(self, system: str, dataset: str, *, provided: bool) -> DatasetStream:
        file = await asyncio.to_thread(self._exports.open, system, dataset, provided=provided)
        return DatasetStream(file, self._storer)


class ExportStore:
    """Every request's exports, on one object store, sealed by ``sealer`` (the key ring)."""

    def __init__(self, objects: ObjectStore, sealer: Sealer) -> None:
        self.objects = objects
        self.sealer = sealer

    def prefix(self, request_id: str) -> str:
        """Where everything of a request is: one prefix deletion removes it all."""
        return f"{EXPORTS}{_safe(request_id.lower(), 'request id')}/"

    def dataset_prefix(self, request_id: str, system: str, dataset: str) -> str:
        return f"{self.prefix(request_id)}data/{_safe(system, 'system')}/{_safe(dataset, 'dataset')}/"

    def bundle_key(self, request_id: str) -> str:
        """The request's bundle: under its prefix, so that :meth:`delete` removes it."""
        return self.prefix(request_id) + BUNDLE_NAME

    @staticmethod
    def purpose(request_id: str, system: str, dataset: str) -> str:
        return f"export:{request_id.lower()}:{system}:{dataset}"

    def for_request(self, request_id: str, *, storer: ChunkStorer | None = None) -> RequestExports:
        return RequestExports(self, request_id, storer=storer)

    def sink(self, request_id: str, *, storer: ChunkStorer | None = None) -> RequestSink:
        """What a connector's export writes to (on an event loop), stored behind ``storer`` when given."""
        return RequestSink(self.for_request(request_id, storer=storer), storer)

    def datasets(self, request_id: str) -> list[StoredDataset]:
        """The request's datasets, sorted, with their record counts (from object names: nothing decrypted)."""
        base = self.prefix(request_id) + "data/"
        folders: dict[tuple[str, str], list[str]] = {}
        for key in self.objects.list(base):
            parts = key[len(base):].split("/")
            if len(parts) == 3:
                folders.setdefault((parts[0], parts[1]), []).append(key)
        found: list[StoredDataset] = []
        for (system, dataset), keys in sorted(folders.items()):
            folder = f"{base}{system}/{dataset}/"
            if folder + _META not in keys:
                continue  # being written or deleted
            try:
                meta = json.loads(self.objects.get(folder + _META))
            except ObjectNotFound:
                continue
            chunks, _ = _scan(keys, folder)
            found.append(StoredDataset(system, dataset, sum(c.records for c in chunks), bool(meta.get("provided"))))
        return found

    def read(self, request_id: str, system: str, dataset: str) -> Iterator[dict[str, Any]]:
        """Stream the records of one dataset, decrypted, in the order they were written (a chunk at a time)."""
        folder = self.dataset_prefix(request_id, system, dataset)
        purpose = self.purpose(request_id, system, dataset)
        chunks, _ = _scan(self.objects.list(folder), folder)
        for chunk in chunks:
            yield from open_chunk(self.objects, self.sealer, purpose, chunk)

    def holds(self, request_id: str) -> bool:
        """Whether anything is stored for the request."""
        return bool(self.objects.list(self.prefix(request_id)))

    def delete(self, request_id: str) -> bool:
        """Remove everything stored for a request (exports and bundle); True if there was anything."""
        return self.objects.delete_prefix(self.prefix(request_id)) > 0
