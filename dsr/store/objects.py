"""The object store interface, and its local-files backend.

Everything kept outside Temporal and the ledger (exported records, bundles, erasure reports, ID copies)
is an object under a key such as ``exports/dsr-2026-11-7kq3fj/shop/orders/00000000-100.chunk``. Keys are
relative, ``/``-separated, made of letters, digits and ``_ . -``: they never hold personal data, and a key
is a valid relative path on every backend.

The interface is synchronous: activities run it in their thread pool, the intake app through
``run_in_threadpool``. Objects are written whole and atomically (a reader never sees half an object);
large ones are written from an iterable of chunks, so they are never held whole in memory.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from dsr.errors import ConflictError, NotFoundError, StoreError

_KEY = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_PREFIX = re.compile(r"([A-Za-z0-9_.-]+/)*[A-Za-z0-9_.-]*")
_TEMP_SUFFIX = ".tmp"


class StorageError(StoreError, OSError):
    """The object storage could not be reached or refused an operation (credentials, network, bucket)."""


class ObjectNotFound(NotFoundError, FileNotFoundError):
    """No object under this key (never written, or deleted: a download link's "gone")."""


class ObjectExists(ConflictError, FileExistsError):
    """A conditional put found the key already taken."""


def check_key(key: str) -> str:
    """``key`` if it is a well-formed object key; ValueError otherwise (never a path outside the store)."""
    if not isinstance(key, str) or len(key) > 900 or not _KEY.fullmatch(key) or any(
        part in (".", "..") or part.startswith(".") for part in key.split("/")
    ):
        raise ValueError(f"not a valid object key: {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or len(prefix) > 900 or not _PREFIX.fullmatch(prefix) or any(
        part in (".", "..") or part.startswith(".") for part in prefix.split("/")[:-1]
    ):
        raise ValueError(f"not a valid object key prefix: {prefix!r}")
    return prefix


class ObjectReader(ABC):
    """A streamed read of one object: ``read(n)`` returns exactly ``n`` bytes unless the object ends."""

    size: int

    @abstractmethod
    def read(self, n: int) -> bytes: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> ObjectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ObjectStore(ABC):
    """One bucket (or folder) of objects. Every method is safe to call from several threads and processes."""

    url: str
    """Where the objects are, for messages (never holds a credential)."""

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`StorageError` saying why if the store cannot be used (checked when a process starts,
        so a wrong bucket or credential stops it at once instead of failing every activity)."""

    @abstractmethod
    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        """Write one object atomically, replacing any; ``if_absent``: raise :class:`ObjectExists` instead."""

    @abstractmethod
    def put_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        """Write one large object from its chunks, atomically (multipart on S3); returns its size.

        If ``chunks`` raises, nothing is written and any previous object under ``key`` stays.
        """

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object; :class:`ObjectNotFound` when there is none."""

    @abstractmethod
    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end); :class:`ObjectNotFound` when there is none."""

    @abstractmethod
    def open(self, key: str) -> ObjectReader:
        """A streamed read of the object; :class:`ObjectNotFound` when there is none."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The object's size in bytes, None when there is none."""

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix``, sorted."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete one object; False when there was none (idempotent)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (which must end with ``/``); returns how many there were."""

    @staticmethod
    def _folder_prefix(prefix: str) -> str:
        check_prefix(prefix)
        if not prefix.endswith("/"):
            # "exports/dsr-1" would also match "exports/dsr-10/...": deletions name a whole folder.
            raise ValueError(f"a prefix to delete must end with '/': {prefix!r}")
        return prefix


# --------------------------------------------------------------------------------------------- files


class _FileReader(ObjectReader):
    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.size = os.fstat(file.fileno()).st_size

    def read(self, n: int) -> bytes:
        return self._file.read(n)

    def close(self) -> None:
        self._file.close()


class FileStore(ObjectStore):
    """Objects as files under ``root`` (``file:///path``): folders 0700, files 0600, writes atomic
    (a private temporary file renamed into place). What ``dsr up`` uses; one machine only, unless ``root``
    is a shared file system."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = self.root.as_uri()
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"{self.url}: cannot create the folder ({err.strerror or err})") from None

    def check(self) -> None:
        if not self.root.is_dir() or not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"{self.url}: not a folder this process can write to")

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _folder(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _temp(self, path: Path) -> tuple[Path, IO[bytes]]:
        self._folder(path)
        temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TEMP_SUFFIX}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        if os.name == "posix":
            os.fchmod(fd, 0o600)  # whatever the umask
        return temp, os.fdopen(fd, "wb")

    def _write(self, key: str, chunks: Iterable[bytes], *, if_absent: bool = False) -> int:
        path = self._path(key)
        temp, out = self._temp(path)
        size = 0
        try:
            with out:
                for chunk in chunks:
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if if_absent:
                try:
                    os.link(temp, path)  # fails if the name is taken: never overwrites
                except FileExistsError:
                    raise ObjectExists(f"object {key} exists") from None
            else:
                os.replace(temp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        return size

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        self._write(key, (data,), if_absent=if_absent)

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        return self._write(key, chunks)

    def _open(self, key: str) -> IO[bytes]:
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key}") from None

    def get(self, key: str) -> bytes:
        with self._open(key) as f:
            return f.read()

    def read_range(self, key: str, start: int, length: int) -> bytes:
        with self._open(key) as f:
            f.seek(start)
            return f.read(length)

    def open(self, key: str) -> ObjectReader:
        return _FileReader(self._open(key))

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _walk(self, prefix: str) -> Iterator[tuple[str, Path]]:
        check_prefix(prefix)
        folder = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            base = Path(dirpath)
            for name in filenames:
                if name.startswith("."):  # a write in progress
                    continue
                key = (base / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key, base / name

    def list(self, prefix: str) -> list[str]:
        return sorted(key for key, _ in self._walk(prefix))

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def delete_prefix(self, prefix: str) -> int:
        self._folder_prefix(prefix)
        deleted = 0
        for _, path in list(self._walk(prefix)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                deleted += 1
        folder = self.root / prefix.rstrip("/")
        for dirpath, _dirs, _files in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
            with contextlib.suppress(OSError):  # not empty: a write in progress; left for next time
                os.rmdir(dirpath)
        return deleted
