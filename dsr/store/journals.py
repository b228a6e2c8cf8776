"""Erasure and rectification journals: what a request already did in each system, whatever its attempts.

An erasure that dies after the vendor acted (a killed worker, a 429 on the verifying search, an answer lost
after the call took effect) is retried by Temporal, perhaps on another machine; without a memory the retry
finds nothing left and would report "no data about you" for a system it erased. So each connector writes,
as close as it can to each mutating call, what it is about to do (an *intent*) and what the vendor
confirmed (*done*), one line per record (the :class:`~dsr.domain.model.RecordReport` of the reply); a retry reads
the journal back, does not redo what is done, and reports it as done by this request.

Key layout, one folder per request and system, outside ``exports/`` so that no deletion of exports (link
expiry, a refusal's clean-up, an erasure's purge of earlier exports) ever removes the proof of an erasure::

    journals/<request_id>/<connector>/<seq:08d>.entry    one sealed JSON list of entries

Object stores cannot append: each write is its own object, a conditional put (``If-None-Match: *`` on S3),
so two attempts running at once (a worker presumed dead that still runs) never overwrite each other's
entries; the loser takes the next number. Entries are sealed with the key ring, bound to request,
connector and number (record ids are the vendor's, yet they identify a person's records). Keys hold no
personal data.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from typing import Any, Protocol

from dsr.domain.model import RecordAction, RecordReport
from dsr.store.objects import ObjectExists, ObjectNotFound, ObjectStore

JOURNALS = "journals/"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_ENTRY = re.compile(r"(\d{8})\.entry")

RecordKey = tuple[str, str]
"""(dataset, record id)."""


@dataclass(frozen=True)
class JournalEntry:
    """One record's line: ``done`` once the vendor confirmed it, else the intent written before the call."""

    line: RecordReport
    created: date | None = None  # the record's own date (retention, grouping by month): not personal data
    parent: str = ""  # the record this one goes with (a payment method's customer), if any
    done: bool = True

    @property
    def key(self) -> RecordKey:
        return (self.line.dataset, self.line.record_id)

    def to_json(self) -> dict[str, Any]:
        line = asdict(self.line)
        line["action"] = self.line.action.value
        line["retained_until"] = self.line.retained_until.isoformat() if self.line.retained_until else None
        return {"line": line, "created": self.created.isoformat() if self.created else None,
                "parent": self.parent, "done": self.done}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JournalEntry:
        line = dict(data["line"])
        line["action"] = RecordAction(line["action"])
        line["retained_until"] = date.fromisoformat(line["retained_until"]) if line.get("retained_until") else None
        line["fields"] = list(line.get("fields") or [])
        created = date.fromisoformat(data["created"]) if data.get("created") else None
        return cls(RecordReport(**line), created=created, parent=str(data.get("parent") or ""),
                   done=bool(data["done"]))


@dataclass
class JournalState:
    """The journal folded: per record, its latest confirmed line, or its intent when nothing confirmed it."""

    done: dict[RecordKey, JournalEntry] = field(default_factory=dict)  # in the order first confirmed
    pending: dict[RecordKey, JournalEntry] = field(default_factory=dict)  # intents without a done after them
    seen: list[RecordKey] = field(default_factory=list)  # every record, in the order first written

    def is_done(self, dataset: str, record_id: str) -> bool:
        return (dataset, record_id) in self.done

    def done_in(self, dataset: str) -> list[JournalEntry]:
        return [e for e in self.done.values() if e.line.dataset == dataset]

    def pending_in(self, dataset: str) -> list[JournalEntry]:
        return [e for e in self.pending.values() if e.line.dataset == dataset]

    def __bool__(self) -> bool:
        return bool(self.done or self.pending)


def fold(entries: Iterable[JournalEntry]) -> JournalState:
    state = JournalState()
    for entry in entries:
        if entry.key not in state.done and entry.key not in state.pending:
            state.seen.append(entry.key)
        if entry.done:
            state.pending.pop(entry.key, None)
            state.done[entry.key] = entry
        elif entry.key not in state.done:
            state.pending[entry.key] = entry
    return state


class JournalBackend(Protocol):
    """Where a journal's entries are kept (synchronous: the journal calls it from a thread)."""

    def read(self) -> list[JournalEntry]: ...

    def append(self, entries: list[JournalEntry]) -> None: ...


class MemoryBackend:
    """A journal kept by one process only: for a connector called outside an activity (tools, tests)."""

    def __init__(self) -> None:
        self._entries: list[JournalEntry] = []

    def read(self) -> list[JournalEntry]:
        return list(self._entries)

    def append(self, entries: list[JournalEntry]) -> None:
        self._entries.extend(entries)


class Journal:
    """What one request did in one system, as connectors see it (no Temporal, no storage details).

    ``intend`` before a mutating call, ``record`` once the vendor confirmed it; ``state`` reads everything
    earlier attempts and this one wrote. Each call is one durable write before it returns.
    """

    def __init__(self, backend: JournalBackend | None = None) -> None:
        self._backend = backend or MemoryBackend()

    @property
    def backend(self) -> JournalBackend:
        return self._backend

    async def entries(self) -> list[JournalEntry]:
        return await asyncio.to_thread(self._backend.read)

    async def state(self) -> JournalState:
        return fold(await self.entries())

    async def intend(self, entries: Iterable[JournalEntry]) -> None:
        await self._append([replace(e, done=False) for e in entries])

    async def record(self, entries: Iterable[JournalEntry]) -> None:
        await self._append([replace(e, done=True) for e in entries])

    async def _append(self, entries: list[JournalEntry]) -> None:
        if entries:
            await asyncio.to_thread(self._backend.append, entries)


class Sealer(Protocol):
    def seal_text(self, plaintext: str, *, purpose: str) -> str: ...
    def open_text(self, token: str, *, purpose: str) -> str: ...


def _safe(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {value!r} is not a safe object name (lower-case letters, digits, _ . -)")
    return value


class StoredJournal:
    """A journal's entries as numbered sealed objects (the :class:`JournalBackend` of the activities)."""

    def __init__(self, objects: ObjectStore, sealer: Sealer, folder: str, purpose: str) -> None:
        self._objects = objects
        self._sealer = sealer
        self._folder = folder
        self._purpose = purpose
        self._lock = threading.Lock()
        self._read: dict[int, list[JournalEntry]] = {}  # objects already opened (they never change)

    def _numbers(self) -> list[int]:
        found = []
        for key in self._objects.list(self._folder):
            match = _ENTRY.fullmatch(key[len(self._folder):])
            if match:
                found.append(int(match[1]))
        return sorted(found)

    def _key(self, seq: int) -> str:
        return f"{self._folder}{seq:08d}.entry"

    def read(self) -> list[JournalEntry]:
        with self._lock:
            entries: list[JournalEntry] = []
            for seq in self._numbers():
                if seq not in self._read:
                    try:
                        token = self._objects.get(self._key(seq)).decode("ascii", errors="replace")
                    except ObjectNotFound:  # the journal is being deleted
                        continue
                    data = json.loads(self._sealer.open_text(token, purpose=f"{self._purpose}:{seq}"))
                    self._read[seq] = [JournalEntry.from_json(item) for item in data]
                entries.extend(self._read[seq])
            return entries

    def append(self, entries: list[JournalEntry]) -> None:
        payload = json.dumps([e.to_json() for e in entries], sort_keys=True)
        with self._lock:
            numbers = self._numbers()
            seq = numbers[-1] + 1 if numbers else 0
            while True:
                token = self._sealer.seal_text(payload, purpose=f"{self._purpose}:{seq}")
                try:
                    self._objects.put(self._key(seq), token.encode("ascii"), if_absent=True)
                    return
                except ObjectExists:  # another attempt wrote this number meanwhile: never overwrite it
                    seq += 1


class JournalStore:
    """Every request's journals, on one object store, sealed by ``sealer`` (the key ring)."""

    def __init__(self, objects: ObjectStore, sealer: Sealer) -> None:
        self.objects = objects
        self.sealer = sealer

    def prefix(self, request_id: str) -> str:
        return f"{JOURNALS}{_safe(request_id.lower(), 'request id')}/"

    def journal(self, request_id: str, connector: str) -> Journal:
        folder = f"{self.prefix(request_id)}{_safe(connector, 'connector')}/"
        purpose = f"journal:{request_id.lower()}:{connector}"
        return Journal(StoredJournal(self.objects, self.sealer, folder, purpose))

    def holds(self, request_id: str) -> bool:
        return bool(self.objects.list(self.prefix(request_id)))

    def delete(self, request_id: str) -> int:
        """Remove every journal of a request; returns how many objects there were (idempotent)."""
        return self.objects.delete_prefix(self.prefix(request_id))


__all__ = [
    "JOURNALS",
    "Journal",
    "JournalBackend",
    "JournalEntry",
    "JournalState",
    "JournalStore",
    "MemoryBackend",
    "StoredJournal",
    "fold",
]
