"""Files that came with a request (typically an ID document), sealed on the object store until deleted.

Key layout: ``attachments/<request_id>/<n>.bin`` holds AES-256-GCM(data) and ``<n>.meta``
AES-256-GCM(JSON filename, content type, size); both bind the request id and index as authenticated data,
so an object copied under another request or index does not open. An attachment exists once its ``.meta``
exists (written last). Two writers (two mailbox pollers) never overwrite each other: each object is a
conditional put (``If-None-Match: *`` on S3, a hard link on files), and the loser takes the next index.
"""

from __future__ import annotations

import builtins
import json
import re
from dataclasses import dataclass
from typing import Any

from dsr.errors import InvalidInputError
from dsr.store.crypto import KeyRing
from dsr.store.objects import ObjectExists, ObjectNotFound, ObjectStore

ATTACHMENTS = "attachments/"
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_FILE_MAGIC = b"DSR-ATTACHMENT-1\n"
_CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_OBJECT = re.compile(r"(\d{1,9})\.(bin|meta)")


@dataclass(frozen=True)
class AttachmentInfo:
    index: int
    filename: str
    content_type: str
    size: int
    # What the receiving mail server said of the sender of the email it came with (DMARC, DKIM, SPF), as
    # intake.email.authresults words it; "" for files stored before it was recorded.
    sender_check: str = ""


class AttachmentLimitError(InvalidInputError, ValueError):
    """An attachment is too large, or a request already holds the maximum number of attachments."""


def safe_filename(name: str | None) -> str:
    """A file name as shown to operators: no folders, no control characters, no leading dot."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip().lstrip(".")
    return name[:200] or "attachment"


def safe_content_type(value: str | None) -> str:
    value = (value or "").strip().lower()
    return value if _CONTENT_TYPE.fullmatch(value) else "application/octet-stream"


class AttachmentStore:
    """The attachments of every request, on one object store.

    Files added to a request that already holds some (a reply about it) carry their ``source`` -- the
    mailbox's keyed hash of the message -- and ``part`` (its position in the message) in the sealed
    ``.meta``, so storing the same message again after a crash skips what is already there
    (:meth:`parts_from`) instead of clearing the request's other files.
    """

    def __init__(
        self, objects: ObjectStore, keyring: KeyRing, *, max_bytes: int = 10 * 1024 * 1024, max_count: int = 10
    ) -> None:
        self.objects = objects
        self._keyring = keyring
        self.max_bytes = max_bytes
        self.max_count = max_count

    def prefix(self, request_id: str) -> str:
        if not isinstance(request_id, str) or not _SAFE_ID.fullmatch(request_id):
            raise ValueError("request id must be 1-100 letters, digits, '-' or '_'")
        return f"{ATTACHMENTS}{request_id}/"

    @staticmethod
    def _aad(request_id: str, index: int, part: str) -> bytes:
        return f"dsr/attachment/v1\x00{request_id}\x00{index}\x00{part}".encode()

    def _seal(self, data: bytes, aad: bytes) -> bytes:
        key_id, blob = self._keyring.encrypt(data, aad=aad)
        return _FILE_MAGIC + key_id.encode("ascii") + b"\n" + blob

    def _open(self, sealed: bytes, aad: bytes) -> bytes:
        if not sealed.startswith(_FILE_MAGIC):
            raise ValueError("not an attachment file")
        key_id, sep, blob = sealed[len(_FILE_MAGIC):].partition(b"\n")
        if not sep:
            raise ValueError("attachment file is truncated")
        return self._keyring.decrypt(key_id.decode("ascii", errors="replace"), blob, aad=aad)

    def _indexes(self, request_id: str, suffix: str) -> builtins.list[int]:
        prefix = self.prefix(request_id)
        found = []
        for key in self.objects.list(prefix):
            match = _OBJECT.fullmatch(key[len(prefix):])
            if match and match[2] == suffix:
                found.append(int(match[1]))
        return sorted(found)

    def save(
        self,
        request_id: str,
        filename: str,
        content_type: str,
        data: bytes,
        *,
        source: str = "",
        part: int = 0,
        sender_check: str = "",
    ) -> AttachmentInfo:
        """Store one attachment; raises :class:`AttachmentLimitError` over the size or count limit.

        ``source`` and ``part`` name the message and its part the file came from (see :meth:`parts_from`);
        ``sender_check`` what the receiving mail server said of its sender, shown beside the file.
        """
        prefix = self.prefix(request_id)
        if len(data) > self.max_bytes:
            raise AttachmentLimitError(f"attachment is larger than {self.max_bytes} bytes")
        if len(self._indexes(request_id, "meta")) >= self.max_count:
            raise AttachmentLimitError(f"a request keeps at most {self.max_count} attachments")
        info_name = safe_filename(filename)
        info_type = safe_content_type(content_type)
        existing = self._indexes(request_id, "bin")
        index = (existing[-1] + 1) if existing else 1
        while True:
            sealed = self._seal(bytes(data), self._aad(request_id, index, "data"))
            try:
                self.objects.put(f"{prefix}{index}.bin", sealed, if_absent=True)
                break
            except ObjectExists:  # another writer took this index
                index += 1
        fields: dict[str, Any] = {"filename": info_name, "content_type": info_type, "size": len(data)}
        if source:
            fields.update(source=source, part=int(part))
        if sender_check:
            fields["sender_check"] = str(sender_check)[:300]
        meta = json.dumps(fields).encode()
        self.objects.put(f"{prefix}{index}.meta", self._seal(meta, self._aad(request_id, index, "meta")),
                         if_absent=True)
        return AttachmentInfo(index=index, filename=info_name, content_type=info_type, size=len(data),
                              sender_check=str(fields.get("sender_check", "")))

    def _metas(self, request_id: str) -> builtins.list[tuple[int, dict[str, Any]]]:
        prefix = self.prefix(request_id)
        found = []
        for index in self._indexes(request_id, "meta"):
            try:
                sealed = self.objects.get(f"{prefix}{index}.meta")
            except ObjectNotFound:  # deleted meanwhile (identity confirmed while a reply was stored)
                continue
            found.append((index, json.loads(self._open(sealed, self._aad(request_id, index, "meta")))))
        return found

    def list(self, request_id: str) -> builtins.list[AttachmentInfo]:
        """The request's attachments, oldest first (filenames decrypted)."""
        return [
            AttachmentInfo(index, str(meta["filename"]), str(meta["content_type"]), int(meta["size"]),
                           str(meta.get("sender_check", "")))
            for index, meta in self._metas(request_id)
        ]

    def parts_from(self, request_id: str, source: str) -> set[int]:
        """The parts of message ``source`` stored under the request (a retried store skips them)."""
        if not source:
            return set()
        return {int(meta.get("part", 0)) for _, meta in self._metas(request_id) if meta.get("source") == source}

    def delete_from(self, request_id: str, source: str) -> int:
        """Delete the request's attachments that came from message ``source``; returns how many."""
        prefix = self.prefix(request_id)
        deleted = 0
        for index, meta in self._metas(request_id):
            if not source or meta.get("source") != source:
                continue
            for suffix in ("meta", "bin"):  # the .meta first: without it the attachment no longer exists
                self.objects.delete(f"{prefix}{index}.{suffix}")
            deleted += 1
        return deleted

    def move_from(self, from_request: str, to_request: str, source: str) -> int:
        """Re-file the attachments of message ``source`` from one request to another; safe to repeat after a
        crash (copies are skipped by part, then the originals deleted)."""
        present = self.parts_from(to_request, source)
        for index, meta in self._metas(from_request):
            if meta.get("source") != source or int(meta.get("part", 0)) in present:
                continue
            self.save(to_request, str(meta["filename"]), str(meta["content_type"]), self.read(from_request, index),
                      source=source, part=int(meta.get("part", 0)), sender_check=str(meta.get("sender_check", "")))
        return self.delete_from(from_request, source)

    def read(self, request_id: str, index: int) -> bytes:
        """The decrypted content of one attachment; ``FileNotFoundError`` if there is none."""
        prefix = self.prefix(request_id)
        if not self.objects.exists(f"{prefix}{int(index)}.meta"):
            raise FileNotFoundError(f"request {request_id} has no attachment {index}")
        return self._open(self.objects.get(f"{prefix}{int(index)}.bin"), self._aad(request_id, int(index), "data"))

    def delete_all(self, request_id: str) -> int:
        """Delete every attachment of the request (e.g. once identity is confirmed); returns how many."""
        count = len(self._indexes(request_id, "meta"))
        self.objects.delete_prefix(self.prefix(request_id))
        return count

    def transfer(self, from_request: str, to_request: str) -> int:
        """Re-file the attachments of one request under another (a message attached to an open request)."""
        moved = 0
        for info in self.list(from_request):
            self.save(to_request, info.filename, info.content_type, self.read(from_request, info.index),
                      sender_check=info.sender_check)
            moved += 1
        self.delete_all(from_request)
        return moved
