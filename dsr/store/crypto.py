"""Keys and encryption: the Temporal payload codec, ledger field sealing and blind indexes.

Rule: no personal data in plaintext in Temporal. Every client and worker builds its data converter with
:func:`data_converter`, which encrypts every payload (inputs, results, memos, summaries, signal/update
arguments, failure details) with AES-256-GCM, and moves failure messages and stack traces into an encoded
(and so encrypted) attribute as well.

Keys
----
A :class:`KeyRing` holds named 256-bit keys. One of them is *current* and encrypts new data; all of them
decrypt, so data written before a rotation stays readable. Keys come from:

* ``DSR_KEYS`` (production): ``"k2:BASE64,k1:BASE64"`` -- newest first, the first entry is current. Every
  process (workers, intake, codec server) must get the same value.
* otherwise a JSON key file, ``Settings.key_file`` (``DSR_HOME/keys.json``), created with mode 0600 on first
  start: ``{"version": 1, "current": ID, "index": ID, "keys": {ID: BASE64, ...}}`` with keys oldest first.
  :meth:`KeyRing.rotate` adds a new current key and keeps the old ones. Processes read the file when they
  start: restart every process after a rotation (a process holding the old ring cannot read data encrypted
  under the new key).

Blind-index key
---------------
:meth:`KeyRing.blind_index` must give the same value before and after a rotation (the ledger looks requests
up by it), so it does not use the current key. It uses one designated *index key*: by default the oldest key
of the ring (the first key of the file, the **last** entry of ``DSR_KEYS``). Rotation never changes it. Never
remove the index key from the ring; replacing it means recomputing every stored index. The HMAC key is
derived from it with HKDF-SHA256 per ``purpose``, so an email index and a phone index never coincide and the
raw AES key is never used as an HMAC key.

Authenticated data
------------------
AES-GCM authenticates, besides the ciphertext, ``"dsr/v1" NUL key_id NUL aad``: the key id is always bound
(a blob cannot be relabelled with another key id), and ``aad`` separates the uses: ``temporal-payload`` for
the codec, ``field NUL purpose`` for :meth:`KeyRing.seal_text` (a sealed email cannot be opened as a name),
``object NUL purpose`` for :meth:`KeyRing.seal_bytes` (an export chunk, bound to its request, dataset and place),
and for a request-scoped field ``field NUL purpose NUL context NUL request_id`` (token ``v2``: the ledger's
sealed email and name cannot be moved to another request's row; ``v1`` tokens, sealed before, still open).
Blob layout: 12-byte random nonce, then ciphertext and 16-byte tag.

Payloads bound to their workflow
--------------------------------
A payload is bound to the workflow it belongs to, so one copied from a history into another workflow (a new
start, an update, an activity result) does not open there. The SDK tells the codec which workflow a payload
is for (``WithSerializationContext``: ``WorkflowSerializationContext.workflow_id`` for workflow inputs,
results, signals, updates, queries, memos; ``ActivitySerializationContext.workflow_id`` for an activity's
input, result, heartbeat and failure). The codec server the UI calls has no such context, so the id travels
with the payload: metadata ``encryption-workflow-id`` names it, and the AAD is ``temporal-payload NUL
workflow NUL <workflow id>`` (changing the metadata breaks authentication). A codec *with* a context also
checks that the named workflow is its own (:class:`ForeignPayloadError` otherwise); a codec without one (the
codec server, a describe) opens any bound payload. Workflow ids are random references or keyed hashes, no
personal data, and already in plaintext in Temporal.

Versions: a payload without ``encryption-workflow-id`` is of the first scheme (constant AAD
``temporal-payload``), written before binding (saved histories, requests in flight at the upgrade) or encoded
with no context at all (the codec server's ``/encode``, for staff holding its token). It still opens
everywhere: old histories must replay. Such a payload can still be copied between workflows by whoever
reads a history; no new one is written by a worker or client with a context.

Unencrypted payloads
--------------------
The engine encrypts everything it sends, so the engine's codec (``strict``) refuses plain payloads (see
:class:`EncryptionCodec`); the codec server's does not (the UI sends it every payload it shows).

Errors never contain key material or plaintext; they may name key ids, which are not secret.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dsr.errors import CryptoError


class KeyFileSettings(Protocol):
    """What :meth:`KeyRing.from_settings` reads of the settings (:class:`dsr.config.settings.Settings` has it):
    the store layer sits below the configuration and knows it by this shape only."""

    @property
    def key_file(self) -> Path: ...

__all__ = [
    "ENCODING",
    "KEY_ID_METADATA_KEY",
    "WORKFLOW_ID_METADATA_KEY",
    "DecryptionError",
    "ForeignPayloadError",
    "KeyRing",
    "KeyRingError",
    "UnencryptedPayloadError",
    "UnknownKeyError",
    "new_key_id",
]

KEY_SIZE = 32
"""AES-256: every key is 32 bytes."""
NONCE_SIZE = 12
TAG_SIZE = 16

ENCODING = b"binary/encrypted"
"""``encoding`` metadata of a payload produced by :class:`EncryptionCodec`."""
KEY_ID_METADATA_KEY = "encryption-key-id"
"""Metadata key naming the key that encrypted a payload."""
REFUSED_ENCODING = b"binary/refused-unencrypted"
"""``encoding`` the strict codec gives an unencrypted payload it refuses (its data dropped)."""
WORKFLOW_ID_METADATA_KEY = "encryption-workflow-id"
"""Metadata key naming the workflow a payload is bound to (absent on payloads written before binding)."""

ENV_VAR = "DSR_KEYS"
TOKEN_VERSION = "v1"  # noqa: S105 - a format tag, not a secret
BOUND_TOKEN_VERSION = "v2"  # noqa: S105 - a sealed field bound to a context (its request id)
FILE_VERSION = 1
SEALED_OBJECT_MAGIC = b"DSR-SEALED-1\n"
"""The first bytes of an object sealed by :meth:`KeyRing.seal_bytes`; then the key id, a newline, the blob."""

_KEY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_AAD_PREFIX = b"dsr/v1\x00"
_PAYLOAD_AAD = b"temporal-payload"
_FIELD_AAD = b"field\x00"
_OBJECT_AAD = b"object\x00"
_INDEX_INFO = b"dsr/blind-index/v1\x00"
_DERIVED_INFO = b"dsr/derived/v1\x00"


class KeyRingError(CryptoError, ValueError):
    """A key ring cannot be built, loaded or used. The message never contains key material."""


class UnknownKeyError(KeyRingError):
    """Data was encrypted under a key id this key ring does not hold."""


class DecryptionError(KeyRingError):
    """Data could not be decrypted: tampered, truncated, wrong purpose, or not ours."""


def new_key_id(now: datetime | None = None) -> str:
    """A short, unique, sortable-by-day key id, e.g. ``k20260301a1b2c3``."""
    now = now or datetime.now(UTC)
    return f"k{now:%Y%m%d}{secrets.token_hex(3)}"


def _safe_id(key_id: object) -> str:
    """A key id fit for an error message (ids read from data may be anything)."""
    if isinstance(key_id, str) and _KEY_ID_RE.match(key_id):
        return repr(key_id)
    return "<malformed key id>"


def _check_key_id(key_id: object, where: str) -> str:
    if not isinstance(key_id, str) or not _KEY_ID_RE.match(key_id):
        raise KeyRingError(f"{where}: key ids must be 1-40 characters of A-Z a-z 0-9 _ -")
    return key_id


def _decode_key(text: object, key_id: str, where: str) -> bytes:
    if not isinstance(text, str):
        raise KeyRingError(f"{where}: key {key_id!r} must be a base64 string")
    cleaned = text.strip().replace("-", "+").replace("_", "/")  # accept URL-safe base64 too
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        raw = base64.b64decode(cleaned.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        raise KeyRingError(f"{where}: key {key_id!r} is not valid base64") from None
    if len(raw) != KEY_SIZE:
        raise KeyRingError(
            f"{where}: key {key_id!r} must be {KEY_SIZE} bytes (AES-256) once base64-decoded, got {len(raw)}"
        )
    return raw


def is_sealed_object(data: bytes) -> bool:
    """Whether ``data`` is an object from :meth:`KeyRing.seal_bytes` (and not, say, a text token)."""
    return bytes(data[:len(SEALED_OBJECT_MAGIC)]) == SEALED_OBJECT_MAGIC


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode("ascii"))


class KeyRing:
    """Named AES-256 keys; one current key encrypts, every key decrypts.

    ``keys`` is taken oldest first (its iteration order); ``index_key`` (the key the blind index is derived
    from, see the module docstring) defaults to the first, i.e. oldest, key.
    """

    __slots__ = ("_aead", "_current", "_index_cache", "_index_key", "_keys")

    def __init__(self, keys: Mapping[str, bytes], current: str, *, index_key: str | None = None) -> None:
        if not keys:
            raise KeyRingError("a key ring needs at least one key")
        checked: dict[str, bytes] = {}
        for key_id, key in keys.items():
            _check_key_id(key_id, "key ring")
            if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
                raise KeyRingError(f"key ring: key {key_id!r} must be {KEY_SIZE} bytes (AES-256)")
            checked[key_id] = bytes(key)
        if current not in checked:
            raise KeyRingError(f"key ring: the current key {_safe_id(current)} is not among its keys")
        index_key = next(iter(checked)) if index_key is None else index_key
        if index_key not in checked:
            raise KeyRingError(f"key ring: the index key {_safe_id(index_key)} is not among its keys")
        self._keys = checked
        self._current = current
        self._index_key = index_key
        self._aead = {key_id: AESGCM(key) for key_id, key in checked.items()}
        self._index_cache: dict[str, bytes] = {}

    # ------------------------------------------------------------------ constructors

    @classmethod
    def generate(cls, key_id: str | None = None) -> KeyRing:
        """A new ring with one fresh random key (current and index key)."""
        key_id = _check_key_id(key_id or new_key_id(), "generate")
        return cls({key_id: AESGCM.generate_key(bit_length=256)}, key_id)

    @classmethod
    def from_env_value(cls, value: str) -> KeyRing:
        """Parse ``DSR_KEYS``: ``"k2:BASE64,k1:BASE64"``, newest first.

        The first entry is current; the last (oldest) is the blind-index key. Whitespace and newlines
        around entries are ignored; keys may be standard or URL-safe base64.
        """
        if not isinstance(value, str) or not value.strip():
            raise KeyRingError(f"{ENV_VAR} is empty; expected KEY_ID:BASE64_KEY[,KEY_ID:BASE64_KEY...]")
        parsed: list[tuple[str, bytes]] = []
        seen: set[str] = set()
        for position, entry in enumerate(value.split(","), start=1):
            entry = entry.strip()
            where = f"{ENV_VAR} entry {position}"
            if not entry:
                raise KeyRingError(f"{where} is empty; expected KEY_ID:BASE64_KEY")
            key_id, sep, encoded = entry.partition(":")
            if not sep:
                raise KeyRingError(f"{where} must look like KEY_ID:BASE64_KEY (no ':' found)")
            key_id = _check_key_id(key_id.strip(), where)
            if key_id in seen:
                raise KeyRingError(f"{where}: key id {key_id!r} appears twice")
            seen.add(key_id)
            parsed.append((key_id, _decode_key(encoded, key_id, where)))
        current = parsed[0][0]
        oldest_first = dict(reversed(parsed))
        return cls(oldest_first, current)

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        """Read a key file; refuse it if it is missing, malformed, or readable by group or others."""
        path = Path(path)
        try:
            return cls._read_file(path)
        except FileNotFoundError:
            raise KeyRingError(f"key file {path} does not exist") from None

    @classmethod
    def load_or_create(cls, path: Path) -> KeyRing:
        """Read the key file at ``path``, creating it (mode 0600, one new key) if it does not exist.

        Creation is atomic: the content is written to a private temporary file that is then hard-linked
        into place, so a concurrent starter either wins or reads the winner's complete file.
        """
        path = Path(path)
        try:
            return cls._read_file(path)
        except FileNotFoundError:
            pass
        ring = cls.generate()
        try:
            _write_key_file(path, ring._to_file_dict(), replace=False)
        except FileExistsError:
            return cls._read_file(path)
        return ring

    @classmethod
    def from_settings(
        cls, settings: KeyFileSettings, env: Mapping[str, str] | None = None, *, create: bool = False
    ) -> KeyRing:
        """``DSR_KEYS`` if set (production), else the key file ``settings.key_file``.

        Only ``dsr up`` passes ``create=True``: a client that made its own key would start requests no
        worker can decrypt (e.g. a ``dsr submit`` run with another ``DSR_HOME``).
        """
        env = os.environ if env is None else env
        value = env.get(ENV_VAR, "")
        if value.strip():
            return cls.from_env_value(value)
        if create:
            return cls.load_or_create(settings.key_file)
        if not settings.key_file.exists():
            raise KeyRingError(
                f"no key file at {settings.key_file}: start `dsr up` once with this DSR_HOME, or set {ENV_VAR}"
            )
        return cls.load(settings.key_file)

    @classmethod
    def rotate(cls, path: Path, key_id: str | None = None) -> KeyRing:
        """Add a new current key to the key file at ``path``, keeping the old keys; return the new ring.

        The index key does not change. Restart every process afterwards. Keys given by ``DSR_KEYS`` are
        rotated by prepending a new entry to the variable instead.
        """
        path = Path(path)
        # Two rotations at once must not both read the old ring and the last write drop the other's key (data
        # encrypted under a dropped key would be lost): one at a time, under an exclusive lock.
        with _exclusive_lock(path.with_name(f".{path.name}.lock")):
            ring = cls.load(path).with_new_key(key_id)
            _write_key_file(path, ring._to_file_dict(), replace=True)
        return ring

    def to_env_value(self) -> str:
        """This ring as a ``DSR_KEYS`` value: newest first, the current key first and the index key last.

        Holds key material: for the operator's secret store only.
        """
        others = [k for k in reversed(self._keys) if k not in (self._current, self._index_key)]
        order = [self._current, *others] + ([self._index_key] if self._index_key != self._current else [])
        return ",".join(f"{k}:{base64.b64encode(self._keys[k]).decode('ascii')}" for k in order)

    def with_new_key(self, key_id: str | None = None) -> KeyRing:
        """A copy of this ring with a new random key, made current. The index key is kept."""
        key_id = _check_key_id(key_id or new_key_id(), "rotate")
        if key_id in self._keys:
            raise KeyRingError(f"rotate: key id {key_id!r} already exists")
        keys = dict(self._keys)
        keys[key_id] = AESGCM.generate_key(bit_length=256)
        return KeyRing(keys, key_id, index_key=self._index_key)

    # ------------------------------------------------------------------ inspection

    @property
    def current_key_id(self) -> str:
        return self._current

    @property
    def index_key_id(self) -> str:
        return self._index_key

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Key ids, oldest first."""
        return tuple(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __repr__(self) -> str:
        return f"KeyRing(current={self._current!r}, keys={list(self._keys)!r}, index={self._index_key!r})"

    # ------------------------------------------------------------------ low level

    def encrypt(self, plaintext: bytes, *, aad: bytes) -> tuple[str, bytes]:
        """AES-256-GCM under the current key; returns ``(key_id, nonce + ciphertext + tag)``."""
        nonce = os.urandom(NONCE_SIZE)
        blob = self._aead[self._current].encrypt(nonce, bytes(plaintext), self._aad(self._current, aad))
        return self._current, nonce + blob

    def decrypt(self, key_id: str, blob: bytes, *, aad: bytes) -> bytes:
        """Reverse :meth:`encrypt`; :class:`UnknownKeyError` or :class:`DecryptionError` on failure."""
        aead = self._aead.get(key_id) if isinstance(key_id, str) else None
        if aead is None:
            raise UnknownKeyError(
                f"data was encrypted with key {_safe_id(key_id)}, which this key ring does not hold "
                f"(known: {', '.join(self._keys)}); is DSR_KEYS / the key file complete?"
            )
        blob = bytes(blob)
        if len(blob) < NONCE_SIZE + TAG_SIZE:
            raise DecryptionError(f"encrypted data under key {key_id!r} is truncated")
        try:
            return aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], self._aad(key_id, aad))
        except InvalidTag:
            raise DecryptionError(
                f"encrypted data under key {key_id!r} failed authentication (tampered, or another purpose)"
            ) from None

    @staticmethod
    def _aad(key_id: str, aad: bytes) -> bytes:
        return _AAD_PREFIX + key_id.encode("ascii") + b"\x00" + bytes(aad)

    # ------------------------------------------------------------------ ledger fields

    def seal_text(self, plaintext: str, *, purpose: str, context: str | None = None) -> str:
        """Encrypt a text field into an ASCII token ``v2.<key_id>.<base64url(nonce+ct)>``.

        ``purpose`` (e.g. ``"subject.email"``) and ``context`` (the request id of a request-scoped field) are
        authenticated: the token only opens with the same purpose and context, so a sealed email cannot be
        opened as a name, nor moved to another request's row. Without a context the token is ``v1`` (the
        first scheme: purpose only).
        """
        if context is None:
            key_id, blob = self.encrypt(plaintext.encode("utf-8"), aad=self._field_aad(purpose))
            return f"{TOKEN_VERSION}.{key_id}.{_b64url(blob)}"
        key_id, blob = self.encrypt(plaintext.encode("utf-8"), aad=self._field_aad(purpose, context))
        return f"{BOUND_TOKEN_VERSION}.{key_id}.{_b64url(blob)}"

    def open_text(self, token: str, *, purpose: str, context: str | None = None) -> str:
        """Decrypt a token from :meth:`seal_text` sealed with the same ``purpose`` (and ``context``).

        A ``v1`` token (sealed before fields were bound, or without a context) opens whatever ``context`` is
        given: rows written before the upgrade stay readable. A ``v2`` token needs its context.
        """
        parts = token.split(".") if isinstance(token, str) else []
        if (len(parts) != 3 or parts[0] not in (TOKEN_VERSION, BOUND_TOKEN_VERSION)
                or not _KEY_ID_RE.match(parts[1])):
            raise DecryptionError(f"not a sealed token (expected {BOUND_TOKEN_VERSION}.<key id>.<data>)")
        try:
            blob = _unb64url(parts[2])
        except (binascii.Error, ValueError):
            raise DecryptionError("sealed token data is not base64url") from None
        if parts[0] == TOKEN_VERSION:
            aad = self._field_aad(purpose)
        elif context is None:
            raise DecryptionError("this sealed token is bound to a record; open it with its context")
        else:
            aad = self._field_aad(purpose, context)
        plaintext = self.decrypt(parts[1], blob, aad=aad)
        try:
            return plaintext.decode("utf-8")
        except UnicodeDecodeError:  # pragma: no cover - authenticated, so only if sealed by other code
            raise DecryptionError("sealed token does not hold UTF-8 text") from None

    # ------------------------------------------------------------------ sealed objects

    def seal_bytes(self, plaintext: bytes, *, purpose: str) -> bytes:
        """Encrypt an object stored as it is (an export chunk): ``SEALED_OBJECT_MAGIC``, the key id, a newline,
        then nonce, ciphertext and tag. ``purpose`` is authenticated, as :meth:`seal_text`'s is; binary, since an
        object store holds bytes: a text token's base64 is a third larger and cost 0.3 ms of CPU per 176 KB
        chunk here (a heavy customer's export seals 140 of them on the worker's event loop), 13 times the
        encryption itself."""
        key_id, blob = self.encrypt(plaintext, aad=self._object_aad(purpose))
        return b"".join((SEALED_OBJECT_MAGIC, key_id.encode("ascii"), b"\n", blob))

    def open_bytes(self, sealed: bytes, *, purpose: str) -> bytes:
        """Decrypt an object from :meth:`seal_bytes` sealed with the same ``purpose``."""
        if not is_sealed_object(sealed):
            raise DecryptionError("not a sealed object (expected it to start with "
                                  f"{SEALED_OBJECT_MAGIC.decode('ascii').strip()})")
        key_id, found, blob = bytes(sealed[len(SEALED_OBJECT_MAGIC):]).partition(b"\n")
        name = key_id.decode("ascii", errors="replace")
        if not found or not _KEY_ID_RE.match(name):
            raise DecryptionError("sealed object is truncated or damaged (no key id)")
        return self.decrypt(name, blob, aad=self._object_aad(purpose))

    @staticmethod
    def _object_aad(purpose: str) -> bytes:
        if not isinstance(purpose, str) or not purpose:
            raise KeyRingError("purpose must be a non-empty string")
        return _OBJECT_AAD + purpose.encode("utf-8")

    def blind_index(self, value: str, *, purpose: str) -> str:
        """Hex HMAC-SHA256 of ``value`` under a per-purpose key derived from the index key.

        Deterministic and stable across rotations; callers normalise first (e.g. lower-case emails).
        """
        key = self._index_cache.get(purpose)
        if key is None:
            if not isinstance(purpose, str) or not purpose:
                raise KeyRingError("blind_index: purpose must be a non-empty string")
            key = HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=None,
                info=_INDEX_INFO + purpose.encode("utf-8"),
            ).derive(self._keys[self._index_key])
            self._index_cache[purpose] = key
        return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()

    def derive_key(self, label: str, key_id: str | None = None) -> bytes:
        """A 32-byte key for one use (``label``, e.g. ``"dsr/download-link/v2"``), derived with HKDF-SHA256
        from the ring's key ``key_id`` (by default the current key).

        Unlike :meth:`blind_index`, these keys rotate with the ring: signers derive from the current key and
        name its id in what they sign, verifiers derive from the key named, so what was signed before a
        rotation verifies until it expires (see :mod:`dsr.store.links`).
        """
        key_id = self._current if key_id is None else key_id
        if key_id not in self._keys:
            raise UnknownKeyError(f"no key {_safe_id(key_id)} in this key ring")
        if not isinstance(label, str) or not label:
            raise KeyRingError("derive_key: label must be a non-empty string")
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=_DERIVED_INFO + label.encode("utf-8")).derive(self._keys[key_id])

    @staticmethod
    def _field_aad(purpose: str, context: str | None = None) -> bytes:
        if not isinstance(purpose, str) or not purpose:
            raise KeyRingError("purpose must be a non-empty string")
        if context is None:
            return _FIELD_AAD + purpose.encode("utf-8")
        if not isinstance(context, str) or not context or "\x00" in context or "\x00" in purpose:
            raise KeyRingError("context must be a non-empty string without NUL")
        return _FIELD_AAD + purpose.encode("utf-8") + b"\x00context\x00" + context.encode("utf-8")

    # ------------------------------------------------------------------ file format

    def _to_file_dict(self) -> dict[str, object]:
        return {
            "version": FILE_VERSION,
            "current": self._current,
            "index": self._index_key,
            "keys": {key_id: base64.b64encode(key).decode("ascii") for key_id, key in self._keys.items()},
        }

    @classmethod
    def _read_file(cls, path: Path) -> KeyRing:
        """Raises FileNotFoundError if absent, KeyRingError if unsafe or malformed."""
        fd = os.open(path, os.O_RDONLY)
        try:
            info = os.fstat(fd)
            if os.name == "posix" and info.st_mode & 0o077:
                raise KeyRingError(
                    f"key file {path} is readable or writable by group or others "
                    f"(mode {info.st_mode & 0o777:o}); refusing to use it. Run: chmod 600 {path}"
                )
            with os.fdopen(os.dup(fd), "rb") as handle:
                raw = handle.read()
        finally:
            os.close(fd)
        where = f"key file {path}"
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise KeyRingError(f"{where} is not valid JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), dict) or not doc["keys"]:
            raise KeyRingError(f'{where} must hold {{"current": ID, "keys": {{ID: BASE64, ...}}}}')
        keys = {_check_key_id(key_id, where): _decode_key(text, key_id, where) for key_id, text in doc["keys"].items()}
        current = doc.get("current")
        if current not in keys:
            raise KeyRingError(f'{where}: "current" must name one of its keys')
        index_key = doc.get("index")
        if index_key is not None and index_key not in keys:
            raise KeyRingError(f'{where}: "index" must name one of its keys')
        return cls(keys, current, index_key=index_key)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """An advisory lock on ``path`` (created 0600), held for the block; other lockers wait."""
    import fcntl

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_key_file(path: Path, doc: Mapping[str, object], *, replace: bool) -> None:
    """Write ``doc`` to ``path`` with mode 0600, atomically.

    The data goes to a temporary file created with O_CREAT|O_EXCL and mode 0600 in the same directory,
    is fsynced, then hard-linked into place (``replace=False``: fails with FileExistsError if ``path``
    exists) or renamed over it (``replace=True``).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            if os.name == "posix":
                os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, (json.dumps(doc, indent=2) + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:  # pragma: no cover - file system without hard links
                _write_exclusive(path, doc)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def _write_exclusive(path: Path, doc: Mapping[str, object]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (json.dumps(doc, indent=2) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # pragma: no cover
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class UnencryptedPayloadError(DecryptionError):
    """A payload reached the engine's codec without encryption: refused, it was not sent by the engine."""


class ForeignPayloadError(DecryptionError):
    """An encrypted payload bound to another workflow than the one it was given to (copied from a history)."""


# The Temporal payload codec lives in dsr.store.codec, so that opening the ledger (a CLI command such as `dsr due`)
# does not import the Temporal SDK: these names are still found here, loaded on first use.
_IN_CODEC = frozenset({"EncryptionCodec", "EnginePayloadConverter", "data_converter"})


def __getattr__(name: str) -> Any:
    if name in _IN_CODEC:
        from dsr.store import codec

        return getattr(codec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
