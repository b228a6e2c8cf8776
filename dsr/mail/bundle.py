"""The export bundle: what the data subject downloads, built by streaming from the export store.

A zip holding

* ``data.json`` -- every record, ``{"<system>": {"<dataset>": [record, ...]}}``, keys sorted at every level;
* ``csv/<system>/<dataset>.csv`` -- one per dataset holding records (an empty dataset is listed as empty in the
  report and the manifest, with no file), nested objects flattened into columns, lists as JSON text, UTF-8
  with BOM, CRLF line ends; written for a person and a spreadsheet in the request's language: column labels
  and values as :mod:`dsr.mail.readable` words them (dates in the controller's time zone, amounts with their
  currency), ``;`` between cells in French (what a French spreadsheet splits on), ``,`` in English;
* ``report.html`` -- a self-contained, printable report in the request's language (no external assets), with
  the same labels and values;
* ``manifest.json`` -- size and SHA-256 of every other file, the request reference, kind, language, time.

Nothing is held whole in memory: records stream from the store into the zip entries (two passes for each
CSV: column names first, rows second), hashes are computed while writing, and the finished zip -- in a
private, already unlinked temporary file of the worker, gone with it -- is encrypted chunk by chunk and
uploaded as it is encrypted (a multipart upload on S3) to the request's bundle object
(``exports/<request>/bundle.zip.enc``). Downloads read it back a chunk at a time (ranged reads), each
chunk authenticated before it is sent.

Encrypted file format (``BUNDLE_MAGIC``, version 1), all integers big-endian::

    magic        8 bytes   b"DSRBNDL\\x01"
    key id len   1 byte    n
    key id       n bytes   ASCII, the key ring key that encrypted every chunk
    chunk size   4 bytes   plaintext bytes per chunk (1 MiB); the last chunk may be shorter
    zip size     8 bytes   plaintext size of the zip
    chunks       ceil(zip size / chunk size) chunks (at least one), each ``KeyRing.encrypt`` output:
                 12-byte nonce + ciphertext + 16-byte tag

Chunk ``i`` is AES-256-GCM with authenticated data ``"dsr-bundle/v1" NUL request_id NUL header i(8 bytes)``
(plus the key ring's own ``dsr/v1 NUL key_id NUL`` prefix): a chunk cannot be moved, dropped, reordered or
served for another request, and the header (hence the size, so truncation) is authenticated by every chunk.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import re
import stat
import tempfile
import unicodedata
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, Protocol

import orjson

from dsr.domain.model import Language, RequestKind
from dsr.mail.readable import Readable
from dsr.store.crypto import DecryptionError
from dsr.store.exports import ExportStore, StoredDataset
from dsr.store.objects import ObjectNotFound, ObjectStore

__all__ = [
    "BUNDLE_MAGIC",
    "CHUNK_SIZE",
    "CSV_DELIMITERS",
    "PREVIEW_ROWS",
    "BundleCipher",
    "BundleError",
    "BundleInfo",
    "BundleStream",
    "build_bundle",
    "open_bundle",
]

BUNDLE_MAGIC = b"DSRBNDL\x01"
CHUNK_SIZE = 1 << 20
"""Plaintext bytes per encrypted chunk: memory stays at a few MiB whatever the bundle size."""
MAX_CHUNK_SIZE = 16 << 20
"""A header asking for bigger chunks is refused before anything is read (bounded memory on bad input)."""
PREVIEW_ROWS = 50
"""Records shown per dataset in report.html; the rest are in data.json and the CSV."""
PREVIEW_CELL_CHARS = 500
"""Longer values are cut in report.html (never in data.json or the CSV)."""
WIDE_TABLE = 6
"""Datasets with more columns than this are shown as one field/value table per record."""

_AAD = b"dsr-bundle/v1\x00"
_HEADER_FIXED = len(BUNDLE_MAGIC) + 1
_NONCE_TAG = 12 + 16
_WRITE_BUFFER = 64 * 1024
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_SIGNS = frozenset("=+-@")
_BLANK_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
_SPACES = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")

DATA_JSON = "data.json"
REPORT_HTML = "report.html"
MANIFEST_JSON = "manifest.json"


class BundleError(DecryptionError):
    """An encrypted bundle is malformed, truncated, tampered with, or belongs to another request."""


class BundleCipher(Protocol):
    """What the bundle needs of :class:`dsr.store.crypto.KeyRing`."""

    @property
    def current_key_id(self) -> str: ...
    def encrypt(self, plaintext: bytes, *, aad: bytes) -> tuple[str, bytes]: ...
    def decrypt(self, key_id: str, blob: bytes, *, aad: bytes) -> bytes: ...


@dataclass(frozen=True)
class BundleInfo:
    """What was built. ``size`` and ``sha256`` are those of the decrypted zip (what the subject downloads)."""

    key: str
    """The bundle's object (encrypted)."""
    size: int
    sha256: str
    files: list[str]
    records: dict[str, int] = field(default_factory=dict)
    """Records per dataset, keyed ``"<system>/<dataset>"``."""


# --------------------------------------------------------------------------------------------- values


def _cell(value: Any) -> str:
    """A leaf value as text: JSON spelling for null/booleans/numbers/lists, strings as they are."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool | int | float | list | tuple | dict):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str).decode()
    return str(value)


def _flatten(record: Any, view: _View | None = None, *, csv: bool = False) -> dict[str, str]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": "1", "c": "[1,2]"}``; the first spelling of a column wins.

    With ``view``, leaves are worded for reading (:meth:`Readable.value`); column keys stay the paths."""
    out: dict[str, str] = {}
    if not isinstance(record, dict):
        out["value"] = _cell(record)
        return out
    stack: list[tuple[str, str, Any, dict[str, Any]]] = [("", "", record, record)]
    while stack:
        prefix, key, value, parent = stack.pop()
        if isinstance(value, dict) and (value or not prefix):
            # reversed + LIFO stack = the record's own key order
            stack.extend((f"{prefix}.{k}" if prefix else str(k), str(k), item, value)
                         for k, item in reversed(value.items()))
        elif prefix not in out:
            out[prefix] = _cell(value) if view is None else view.readable.value(view.kind, key, value, parent,
                                                                                 record, csv=csv)
    return out


@dataclass(frozen=True)
class _View:
    """How one dataset is worded: the bundle's :class:`Readable` and the dataset's connector type."""

    readable: Readable
    kind: str | None

    def labels(self, paths: list[str]) -> list[str]:
        """The columns' labels, each once: a label two paths share is followed by the path (« Créé le
        (hs_createdate) »), so no two columns read alike."""
        labels = [self.readable.field(self.kind, p) for p in paths]
        shared = {label for label in labels if labels.count(label) > 1}
        return [f"{label} ({path.rsplit('.', 1)[-1]})" if label in shared else label
                for label, path in zip(labels, paths, strict=True)]


def _csv_safe(text: str) -> str:
    """Neutralise spreadsheet formulas (OWASP CSV injection): ``=HYPERLINK(..)`` is shown, not run.

    Spreadsheets skip leading blanks and read full-width signs as formula signs, so the first character
    after any leading whitespace, control or format characters (`` =``, ``\n=``, U+200B then ``=``) is what
    counts, compared after NFKC (``＝``, ``＋``, ``－``, ``＠`` and the small forms ``﹦``, ``﹢``, ``﹣``
    are ``=``, ``+``, ``-``, ``@``).
    """
    if text.startswith(_FORMULA_START):
        return "'" + text
    for char in text:
        if char.isspace() or unicodedata.category(char) in _BLANK_CATEGORIES:
            continue
        return "'" + text if unicodedata.normalize("NFKC", char)[:1] in _FORMULA_SIGNS else text
    return text


def _preview(text: str) -> str:
    return text if len(text) <= PREVIEW_CELL_CHARS else text[:PREVIEW_CELL_CHARS] + "…"


def _one_line(value: object) -> str:
    return _SPACES.sub(" ", str(value)).strip()


# --------------------------------------------------------------------------------------------- zip entries


class _Entry:
    """One zip member being written: buffered, with its size and SHA-256 computed on the way."""

    def __init__(self, zf: zipfile.ZipFile, name: str, when: datetime, *, large: bool = True) -> None:
        info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = (stat.S_IFREG | 0o600) << 16
        self.name = name
        self._out = zf.open(info, "w", force_zip64=large)
        self._hash = hashlib.sha256()
        self._buffer = bytearray()
        self.size = 0

    def write(self, data: bytes | str) -> None:
        self._buffer += data.encode("utf-8") if isinstance(data, str) else data
        if len(self._buffer) >= _WRITE_BUFFER:
            self._drain()

    def _drain(self) -> None:
        if self._buffer:
            self._hash.update(self._buffer)
            self._out.write(self._buffer)
            self.size += len(self._buffer)
            self._buffer.clear()

    def close(self) -> dict[str, Any]:
        self._drain()
        self._out.close()
        return {"name": self.name, "size": self.size, "sha256": self._hash.hexdigest()}

    def __enter__(self) -> _Entry:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:  # release the zip so the original error surfaces (the zip is discarded)
            with contextlib.suppress(Exception):
                self._out.close()


@dataclass
class _DatasetSummary:
    stored: StoredDataset
    view: _View
    records: int = 0
    columns: dict[str, None] = field(default_factory=dict)  # an ordered set
    preview: list[dict[str, str]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.stored.system}/{self.stored.dataset}"

    @property
    def csv_name(self) -> str | None:
        """The dataset's CSV; none for a dataset without records (no empty file: the report says it is empty)."""
        return f"csv/{self.stored.system}/{self.stored.dataset}.csv" if self.records else None


def _dump_record(record: Any) -> bytes:
    text = orjson.dumps(record, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_INDENT_2,
                        default=str)
    return b"      " + text.replace(b"\n", b"\n      ")  # JSON strings hold no raw newline: safe


def _write_data_json(zf: zipfile.ZipFile, when: datetime, store: ExportStore, request_id: str,
                     datasets: list[_DatasetSummary]) -> dict[str, Any]:
    """First pass: ``data.json``, and per dataset its count, CSV columns and report preview."""
    with _Entry(zf, DATA_JSON, when) as entry:
        return _data_json_body(entry, store, request_id, datasets)


def _data_json_body(entry: _Entry, store: ExportStore, request_id: str,
                    datasets: list[_DatasetSummary]) -> dict[str, Any]:
    entry.write(b"{")
    system, first_dataset = None, True
    for n, summary in enumerate(datasets):
        if summary.stored.system != system:
            if system is not None:
                entry.write(b"\n  }")
            system = summary.stored.system
            entry.write((b",\n  " if n else b"\n  ") + orjson.dumps(system) + b": {")
            first_dataset = True
        entry.write((b"\n    " if first_dataset else b",\n    ") + orjson.dumps(summary.stored.dataset) + b": [")
        first_dataset = False
        for record in store.read(request_id, summary.stored.system, summary.stored.dataset):
            entry.write((b",\n" if summary.records else b"\n") + _dump_record(record))
            summary.records += 1
            if len(summary.preview) < PREVIEW_ROWS:
                row = _flatten(record, summary.view)
                summary.preview.append({k: _preview(v) for k, v in row.items()})
            summary.columns.update(dict.fromkeys(_flatten(record)))
        entry.write(b"\n    ]" if summary.records else b"]")
    entry.write(b"\n  }\n}\n" if system is not None else b"}\n")
    return entry.close()


def _leading_id(columns: list[str]) -> list[str]:
    """The record's identifier first (the systems' JSON comes with sorted keys), the rest as they came."""
    return [c for c in columns if c == "id"] + [c for c in columns if c != "id"]


CSV_DELIMITERS = {Language.FR: ";", Language.EN: ","}
"""Per language, the separator its spreadsheets split a CSV on (a French Excel expects ``;``)."""


def _write_csv(zf: zipfile.ZipFile, when: datetime, store: ExportStore, request_id: str,
               summary: _DatasetSummary, delimiter: str) -> dict[str, Any]:
    """Second pass over one dataset: its rows, under the columns the first pass found, labelled and worded."""
    assert summary.csv_name is not None
    with _Entry(zf, summary.csv_name, when) as entry:
        entry.write("\ufeff")
        columns = _leading_id(list(summary.columns))
        writer = csv.writer(entry, delimiter=delimiter, lineterminator="\r\n")
        if columns:
            writer.writerow([_csv_safe(label) for label in summary.view.labels(columns)])
        for record in store.read(request_id, summary.stored.system, summary.stored.dataset):
            row = _flatten(record, summary.view, csv=True)
            writer.writerow([_csv_safe(row.get(c, "")) for c in columns])
        return entry.close()


def _report_context(summaries: list[_DatasetSummary], *, language: Language, kind: RequestKind,
                    reference: str, info: Mapping[str, str], provided_only: bool,
                    when: datetime, readable: Readable, system_labels: Mapping[str, str]) -> dict[str, Any]:
    datasets: list[dict[str, Any]] = []
    for n, s in enumerate(summaries, 1):
        columns = _leading_id(list(dict.fromkeys(c for row in s.preview for c in row)))
        labels = s.view.labels(columns)
        named = dict(zip(columns, labels, strict=True))
        datasets.append({
            "anchor": f"d{n}",
            "system": system_labels.get(s.stored.system) or s.stored.system,
            "dataset": readable.dataset(s.stored.dataset),
            "name": f"{s.stored.system}/{s.stored.dataset}",
            "records": s.records,
            "provided": s.stored.provided,
            "csv": s.csv_name,
            "wide": len(columns) > WIDE_TABLE,
            "columns": labels,
            "rows": [[row.get(c, "") for c in columns] for row in s.preview],
            "fields": [[(named[c], v) for c, v in row.items() if v != ""] for row in s.preview],
            "shown": len(s.preview),
            "more": s.records - len(s.preview),
        })
    systems: dict[str, list[dict[str, Any]]] = {}
    for d in datasets:
        systems.setdefault(d["system"], []).append(d)
    return {
        "lang": language.value,
        "kind": kind.value,
        "reference": reference,
        "controller_name": info.get("controller_name", ""),
        "contact": info.get("contact", ""),
        "received": info.get("received", ""),
        "generated_date": readable.now(when).date().isoformat(),
        "generated_time": readable.now(when).strftime("%H:%M"),
        "timezone": readable.timezone,
        "provided_only": provided_only,
        "systems": systems,
        "datasets": datasets,
        "total": sum(d["records"] for d in datasets),
        "preview_rows": PREVIEW_ROWS,
    }


def _write_report(zf: zipfile.ZipFile, when: datetime, context: dict[str, Any]) -> dict[str, Any]:
    from templates import ENVIRONMENT  # the notices' environment: autoescaped .html, shared filters

    template = ENVIRONMENT.get_template(f"{context['lang']}/report.html")
    with _Entry(zf, REPORT_HTML, when, large=False) as entry:
        for piece in template.generate(context):
            entry.write(piece)
        return entry.close()


# --------------------------------------------------------------------------------------------- build


def _scratch_file() -> IO[bytes]:
    """The plaintext zip while it is built: 0600, and unlinked at once on POSIX, so nothing is left behind
    even if the worker is killed (a retried activity builds it again)."""
    return tempfile.TemporaryFile(prefix="dsr-bundle-")


def build_bundle(store: ExportStore, request_id: str, *, language: Language, kind: RequestKind,
                 reference_info: Mapping[str, str], target: str | None = None, provided_only: bool = False,
                 now: datetime | None = None, keyring: BundleCipher | None = None, timezone: str = "UTC",
                 system_labels: Mapping[str, str] | None = None,
                 system_types: Mapping[str, str] | None = None) -> BundleInfo:
    """Build the encrypted export bundle of ``request_id`` and store it at the object ``target`` (default
    :meth:`ExportStore.bundle_key`), replacing it atomically.

    ``reference_info``: ``reference`` (shown to the subject; default ``request_id``) and optionally
    ``controller_name``, ``contact`` (privacy contact) and ``received`` (ISO date) for the report; every
    key is recorded in the manifest. ``provided_only`` (portability, Art. 20) keeps only the datasets the
    subject provided. ``keyring`` defaults to the store's key ring; ``now`` to the current time.
    ``timezone`` (the controller's, ``DSR_TIMEZONE``) is the zone dates are written in; ``system_labels`` names
    each system as the reply email does (the profile's ``[controller.systems]``; default: the system's name);
    ``system_types`` (name -> connector type, from dsr.toml) picks each system's field labels and amount
    convention (default: guessed from the name or the datasets, see :meth:`Readable.connector_type`).
    """
    language, kind = Language(language), RequestKind(kind)
    cipher: BundleCipher = keyring if keyring is not None else store.sealer  # type: ignore[assignment]
    when = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    info = {str(k): _one_line(v) for k, v in reference_info.items() if v is not None}
    reference = info.get("reference") or request_id
    stored = sorted(store.datasets(request_id), key=lambda d: (d.system, d.dataset))
    readable = Readable(language.value, timezone)
    labels = {str(k): _one_line(v) for k, v in (system_labels or {}).items() if v}
    summaries = [_DatasetSummary(d, _View(readable, readable.connector_type(d.system, d.dataset, system_types)))
                 for d in stored if d.provided or not provided_only]

    key = target if target is not None else store.bundle_key(request_id)
    with _scratch_file() as raw:
        with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            entries = [_write_data_json(zf, when, store, request_id, summaries)]
            delimiter = CSV_DELIMITERS[language]
            entries += [_write_csv(zf, when, store, request_id, s, delimiter) for s in summaries if s.records]
            context = _report_context(summaries, language=language, kind=kind, reference=reference,
                                      info=info, provided_only=provided_only, when=when, readable=readable,
                                      system_labels=labels)
            entries.append(_write_report(zf, when, context))
            manifest = {
                "format": "dsr-export-bundle/1",
                "reference": reference,
                "request": info,
                "kind": kind.value,
                "language": language.value,
                "timezone": readable.timezone,
                "csv_delimiter": delimiter,
                "provided_only": provided_only,
                "generated_at": when.isoformat().replace("+00:00", "Z"),
                "datasets": [
                    {"system": s.stored.system, "dataset": s.stored.dataset, "records": s.records,
                     "provided": s.stored.provided, "csv": s.csv_name}
                    for s in summaries
                ],
                "files": entries,
            }
            with _Entry(zf, MANIFEST_JSON, when, large=False) as out:
                out.write(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
                out.close()
        raw.flush()
        size = raw.seek(0, io.SEEK_END)
        raw.seek(0)
        digest = hashlib.sha256()
        store.objects.put_stream(key, _encrypt(cipher, raw, request_id, size, digest))
    return BundleInfo(
        key=key,
        size=size,
        sha256=digest.hexdigest(),
        files=[e["name"] for e in entries] + [MANIFEST_JSON],
        records={s.key: s.records for s in summaries},
    )


# --------------------------------------------------------------------------------------------- encryption


def _header(key_id: str, chunk_size: int, size: int) -> bytes:
    raw_id = key_id.encode("ascii")
    if not 0 < len(raw_id) < 256:
        raise BundleError("key id does not fit the bundle header")
    return BUNDLE_MAGIC + bytes([len(raw_id)]) + raw_id + chunk_size.to_bytes(4, "big") + size.to_bytes(8, "big")


def _chunk_aad(request_id: str, header: bytes, index: int) -> bytes:
    return _AAD + request_id.lower().encode("utf-8") + b"\x00" + header + index.to_bytes(8, "big")


def _chunks(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


def _encrypt(cipher: BundleCipher, src: IO[bytes], request_id: str, size: int, digest: Any) -> Iterator[bytes]:
    """The encrypted bundle of ``size`` bytes of ``src``: the header, then each chunk as it is encrypted;
    ``digest`` takes the plaintext on the way."""
    key_id = cipher.current_key_id
    header = _header(key_id, CHUNK_SIZE, size)
    yield header
    for index in range(_chunks(size, CHUNK_SIZE)):
        chunk = src.read(CHUNK_SIZE)
        digest.update(chunk)
        used, blob = cipher.encrypt(chunk, aad=_chunk_aad(request_id, header, index))
        if used != key_id:
            raise BundleError(f"key ring changed its current key while encrypting (expected {key_id!r})")
        yield blob
    if src.read(1):
        raise BundleError("the zip grew while it was being encrypted")


@dataclass(frozen=True)
class _Layout:
    header: bytes
    key_id: str
    chunk_size: int
    size: int

    @property
    def chunks(self) -> int:
        return _chunks(self.size, self.chunk_size)

    def plain_length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    @property
    def file_size(self) -> int:
        return len(self.header) + self.size + self.chunks * _NONCE_TAG

    def offset(self, index: int) -> int:
        return len(self.header) + index * (self.chunk_size + _NONCE_TAG)


def _read_layout(f: IO[bytes]) -> _Layout:
    start = f.read(_HEADER_FIXED)
    if len(start) != _HEADER_FIXED or start[: len(BUNDLE_MAGIC)] != BUNDLE_MAGIC:
        raise BundleError("not an export bundle (bad magic or version)")
    id_len = start[-1]
    rest = f.read(id_len + 12)
    if len(rest) != id_len + 12:
        raise BundleError("export bundle header is truncated")
    try:
        key_id = rest[:id_len].decode("ascii")
    except UnicodeDecodeError:
        raise BundleError("export bundle header names a malformed key id") from None
    chunk_size = int.from_bytes(rest[id_len:id_len + 4], "big")
    size = int.from_bytes(rest[id_len + 4:], "big")
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise BundleError("export bundle header has an invalid chunk size")
    return _Layout(start + rest, key_id, chunk_size, size)


_MAX_HEADER = _HEADER_FIXED + 255 + 12


class BundleStream(Iterator[bytes]):
    """The decrypted zip of an export bundle, chunk by chunk (at most ``CHUNK_SIZE`` bytes each).

    ``size`` is the zip's size (a ``Content-Length``). Each chunk is one ranged read of the object,
    authenticated before it is returned; a failure raises :class:`BundleError` /
    :class:`~dsr.store.crypto.DecryptionError` (the first chunk is checked by :func:`open_bundle` already, so a
    wrong request, key or object fails before anything is sent). No connection is held between chunks,
    however slowly the subject downloads.
    """

    def __init__(self, keyring: BundleCipher, objects: ObjectStore, key: str, request_id: str) -> None:
        self._keyring = keyring
        self._request_id = request_id
        self._objects: ObjectStore | None = objects
        self._key = key
        try:
            stored = objects.size(key)
            if stored is None:
                raise ObjectNotFound(f"no bundle {key}")
            self._layout = _read_layout(io.BytesIO(objects.read_range(key, 0, min(stored, _MAX_HEADER))))
            if stored != self._layout.file_size:
                raise BundleError("export bundle is truncated or has trailing data")
            self._next = 0
            self._first: bytes | None = self._decrypt_next()
        except BaseException:
            self.close()
            raise

    @property
    def size(self) -> int:
        return self._layout.size

    def _decrypt_next(self) -> bytes:
        assert self._objects is not None
        index, layout = self._next, self._layout
        want = layout.plain_length(index) + _NONCE_TAG
        try:
            blob = self._objects.read_range(self._key, layout.offset(index), want)
        except ObjectNotFound:  # deleted while being downloaded (the link expired meanwhile)
            raise BundleError("export bundle was deleted during the download") from None
        if len(blob) != want:
            raise BundleError("export bundle is truncated")
        plain = self._keyring.decrypt(layout.key_id, blob, aad=_chunk_aad(self._request_id, layout.header, index))
        self._next += 1
        return plain

    def __iter__(self) -> BundleStream:
        return self

    def __next__(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            if self._next >= self._layout.chunks:
                self.close()
            return first
        if self._objects is None or self._next >= self._layout.chunks:
            self.close()
            raise StopIteration
        try:
            chunk = self._decrypt_next()
        except BaseException:
            self.close()
            raise
        if self._next >= self._layout.chunks:
            self.close()
        return chunk

    def close(self) -> None:
        self._objects = None

    def __enter__(self) -> BundleStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_bundle(keyring: BundleCipher, objects: ObjectStore, key: str, request_id: str) -> BundleStream:
    """Stream the decrypted zip of the bundle object ``key``, which must belong to ``request_id``.

    Raises at once (:class:`BundleError`, :class:`~dsr.store.crypto.UnknownKeyError`,
    :class:`~dsr.store.crypto.DecryptionError`, :class:`~dsr.store.ObjectNotFound` -- a ``FileNotFoundError``)
    when there is no such object, it is not a bundle, is truncated, was built for another request, or its
    first chunk fails authentication; later chunks are authenticated as they are read.
    """
    return BundleStream(keyring, objects, key, request_id)
