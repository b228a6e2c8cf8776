"""Signed, expiring download links for export bundles, and the code that goes with them.

The reply to an access/portability request links to ``{DSR_PUBLIC_URL}/exports/{token}``. Opening the
link is not enough to download: the page asks for the code sent in the same email (8 characters, e.g.
``K7QM-4XPD``; never the request reference, which is in every email subject and in Temporal ids), so a link
forwarded (or leaked through a proxy log) alone does not disclose the data.

Token format (``v2``)
---------------------
::

    v2.<key id>.<base64url(body)>.<base64url(mac)>
    body = expiry (8 bytes, big-endian Unix seconds)
         || nonce (12 bytes)
         || AES-256-GCM(enc_key, nonce, request_id, aad = "dsr/download-link/v1" NUL expiry)
    mac  = HMAC-SHA256(mac_key, "v2.<key id>." + base64url(body))        (32 bytes)

All of it is URL-safe (``A-Z a-z 0-9 - _ .``), about 140 characters. The request id is *encrypted*: it is
not personal data, but it names the request, so it is not readable from the link itself. Verification
checks the HMAC first (constant time), then decrypts, then compares the expiry; a bad signature, a bad
format, an unknown key id or a wrong version all raise :class:`TamperedLink`, an authentic token past its
expiry raises :class:`ExpiredLink`.

Keys, and their rotation
------------------------
The keys of a token are derived from the key ring's key it names (:meth:`KeyRing.derive_key`, HKDF-SHA256
with the label ``dsr/{purpose}/v2``), then HKDF-SHA256 again with one info label per use:
``dsr/download-link/v1 NUL {enc|mac|code|form}``. New tokens name the *current* key, so after `dsr keys
rotate` (and a restart) links, their codes and form fields are signed under the new key; a token names its
key id, so one issued before the rotation still verifies (its key stays in the ring) until it expires.

``v1`` tokens (issued before keys rotated, no key id) were derived from the ring's *index key*, which never
rotates; they are still accepted until they expire, under those keys.

* the ``code`` is ``HMAC(code_key, token)`` written as :data:`CODE_LENGTH` characters of
  :data:`CODE_ALPHABET` (no 0/O, 1/I/L: about 40 bits): the worker (which puts it in the email) and the
  intake app (which checks it) agree without storing anything. It is shown grouped (``K7QM-4XPD``) and typed
  in any case, with or without the dash or spaces;
* :meth:`IdentityLinks.request_code` is derived from the request id under the current key (same alphabet and
  length); a code is typed
  without its link, so :meth:`IdentityLinks.check_request_code` accepts the code of any key of the ring
  (and of the index-key scheme), each compared in constant time;
* :meth:`DownloadLinks.form_token` is ``HMAC(form_key, token)`` under the token's key, the stateless CSRF
  field of the form;
* :meth:`DownloadLinks.ip_hash` is a short keyed hash of a client address for the audit trail; it stays on
  the index key (like the blind index), so one address has one hash across rotations.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import quote
from zoneinfo import ZoneInfo

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dsr.errors import InvalidInputError
from dsr.store.crypto import KeyRing

__all__ = [
    "CODE_ALPHABET",
    "CODE_LENGTH",
    "DEFAULT_LINK_TTL",
    "ConsentLinks",
    "DownloadLink",
    "DownloadLinks",
    "ExpiredLink",
    "IdentityLinks",
    "InvalidLink",
    "StatusLinks",
    "TamperedLink",
    "day_end_expiry",
    "download_url",
    "format_code",
    "last_valid_day",
]

DEFAULT_LINK_TTL = timedelta(days=7)
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
"""Digits and upper-case letters without the ones read alike (0 O, 1 I L): 31 symbols."""
CODE_LENGTH = 8
"""31**8 is about 8.5e11 codes (40 bits): with a lasting cap of wrong answers per request, out of reach."""
LINK_VERSION = "v2"
LEGACY_LINK_VERSION = "v1"
MAX_TOKEN_LENGTH = 512
"""Anything longer is rejected before any decoding (request ids are short)."""

_NONCE = 12
_TAG = 16
_MAC = 32
_EXPIRY = struct.Struct(">Q")
_TOKEN_RE = re.compile(r"^v[0-9]{1,3}\.(?:[A-Za-z0-9_-]{1,40}\.)?[A-Za-z0-9_-]{1,400}\.[A-Za-z0-9_-]{43}$")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CODE_SEPARATORS = str.maketrans("", "", " -.\u00a0\u202f\t")


class InvalidLink(InvalidInputError, ValueError):
    """A download token that cannot be used. Messages never contain the token or the request id."""


class TamperedLink(InvalidLink):
    """Bad format, unknown version or bad signature."""


class ExpiredLink(InvalidLink):
    """An authentic token whose expiry has passed."""


@dataclass(frozen=True)
class DownloadLink:
    """What the worker puts in the reply: the token (in the URL), the code (in the text), the expiry."""

    token: str
    code: str
    expires_at: datetime

    def url(self, public_url: str) -> str:
        return download_url(public_url, self.token)


def day_end_expiry(now: datetime, ttl: timedelta, timezone: str) -> datetime:
    """When a link issued at ``now`` for ``ttl`` should expire so that the reply can say "until <day>
    inclusive" and be exact: the midnight (in the controller's ``timezone``) that ends the last whole day
    before ``now + ttl``. The link works at least ``ttl`` minus one day; never less than until tonight."""
    zone = ZoneInfo(timezone)
    local_now = _aware(now, "now").astimezone(zone)
    last = max((local_now + ttl).date() - timedelta(days=1), local_now.date())
    return datetime.combine(last + timedelta(days=1), time(0), zone).astimezone(UTC)


def last_valid_day(expires_at: datetime, timezone: str) -> date:
    """The last calendar day (in ``timezone``) on which a link expiring at ``expires_at`` works: what the reply
    email and the download page both name. Any instant that ends a day (an outside task's answer-by, which
    :func:`dsr.domain.deadlines.end_of_day` gives) reads back as that day."""
    return (_aware(expires_at, "expires_at").astimezone(ZoneInfo(timezone)) - timedelta(microseconds=1)).date()


def download_url(public_url: str, token: str) -> str:
    """``{public_url}/exports/{token}`` (``public_url`` is ``DSR_PUBLIC_URL``, e.g. ``https://privacy.example``)."""
    return f"{public_url.rstrip('/')}/exports/{quote(token, safe='')}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    data = base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode("ascii"))
    if _b64url(data) != text:
        # The last character may carry unused bits that decoding ignores: only the one canonical spelling
        # of a token is genuine, so a tampered one is refused even when it decodes to the same bytes.
        raise ValueError("not canonical base64url")
    return data


def _aware(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value.astimezone(UTC)


def _normalise_answer(value: str) -> str:
    return value.strip().upper().translate(_CODE_SEPARATORS)


def _code_of(digest: bytes) -> str:
    """:data:`CODE_LENGTH` symbols of :data:`CODE_ALPHABET` from a MAC (128 bits in: no visible bias)."""
    number = int.from_bytes(digest[:16], "big")
    symbols = []
    for _ in range(CODE_LENGTH):
        number, index = divmod(number, len(CODE_ALPHABET))
        symbols.append(CODE_ALPHABET[index])
    return "".join(symbols)


def format_code(code: str) -> str:
    """A code as it is shown in emails: two groups of four, ``K7QM-4XPD``."""
    half = len(code) // 2
    return f"{code[:half]}-{code[half:]}"


def _same_code(typed: object, code: str) -> bool:
    """Constant-time check of a typed code: any case, dashes and spaces anywhere, surrounding blanks."""
    if not isinstance(typed, str) or len(typed) > 50:
        return False
    return hmac.compare_digest(_normalise_answer(typed).encode("utf-8"), code.encode("ascii"))


@dataclass(frozen=True)
class _LinkKeys:
    """The keys of one token family under one key of the ring."""

    aead: AESGCM
    mac: bytes
    code: bytes
    form: bytes


class DownloadLinks:
    """Issues and checks download tokens; stateless, so every process with the same key ring agrees."""

    __slots__ = ("_current", "_info", "_ip_key", "_keys", "_legacy", "_ttl")

    def __init__(self, keyring: KeyRing, *, ttl: timedelta = DEFAULT_LINK_TTL, purpose: str = "download-link") -> None:
        """``purpose`` separates families of links (``identity-link`` for :class:`IdentityLinks`): a token
        or code of one family never verifies in another, because every key is derived from it."""
        if not isinstance(ttl, timedelta) or ttl <= timedelta(0):
            raise ValueError("ttl must be a positive timedelta")
        if not re.fullmatch(r"[a-z-]{1,40}", purpose):
            raise ValueError("purpose must be lower-case letters and dashes")
        self._ttl = ttl
        self._info = f"dsr/{purpose}/v1\x00".encode("ascii")
        info = self._info

        def derive(root: bytes, label: bytes) -> bytes:
            return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info + label).derive(root)

        def family(root: bytes) -> _LinkKeys:
            return _LinkKeys(AESGCM(derive(root, b"enc")), derive(root, b"mac"), derive(root, b"code"),
                             derive(root, b"form"))

        # v1: from the index key, which never rotates (tokens issued before keys rotated, until they expire).
        legacy_root = bytes.fromhex(keyring.blind_index(f"{purpose}-root", purpose=f"dsr/{purpose}/v1"))
        self._legacy = family(legacy_root)
        self._ip_key = derive(legacy_root, b"ip")
        # v2: one family per key of the ring; new tokens use the current key's.
        self._keys = {key_id: family(keyring.derive_key(f"dsr/{purpose}/v2", key_id)) for key_id in keyring.key_ids}
        self._current = keyring.current_key_id

    @property
    def ttl(self) -> timedelta:
        return self._ttl

    # ------------------------------------------------------------------ issuing

    def issue(self, request_id: str, *, now: datetime, ttl: timedelta | None = None) -> DownloadLink:
        """A new link for ``request_id`` valid until ``now + ttl`` (whole seconds, rounded down)."""
        if not isinstance(request_id, str) or not _REQUEST_ID_RE.match(request_id):
            raise ValueError("request_id must be a request reference such as dsr-2026-11-7KQ3FJ")
        ttl = self._ttl if ttl is None else ttl
        if ttl <= timedelta(0):
            raise ValueError("ttl must be a positive timedelta")
        expires = int((_aware(now, "now") + ttl).timestamp())
        header = _EXPIRY.pack(expires)
        nonce = os.urandom(_NONCE)
        keys = self._keys[self._current]
        sealed = keys.aead.encrypt(nonce, request_id.encode("ascii"), self._aad(header))
        signed = f"{LINK_VERSION}.{self._current}.{_b64url(header + nonce + sealed)}"
        token = f"{signed}.{_b64url(self._mac(keys, signed))}"
        return DownloadLink(token=token, code=self.code(token), expires_at=datetime.fromtimestamp(expires, UTC))

    def code(self, token: str) -> str:
        """The code that goes with ``token`` (deterministic; no storage), under the token's key, ungrouped: see
        :func:`format_code`."""
        return _code_of(hmac.new(self._keys_of(token).code, token.encode("utf-8"), hashlib.sha256).digest())

    # ------------------------------------------------------------------ checking

    def verify(self, token: str, *, now: datetime) -> str:
        """The request id of an authentic, unexpired token; :class:`TamperedLink` / :class:`ExpiredLink`."""
        request_id, expires_at = self._open(token)
        if _aware(now, "now") >= expires_at:
            raise ExpiredLink("this download link has expired")
        return request_id

    def expires_at(self, token: str) -> datetime:
        """The expiry of an authentic token (expired or not); :class:`TamperedLink` otherwise."""
        return self._open(token)[1]

    def check_code(self, token: str, code: object) -> bool:
        """Whether ``code`` is the token's code (any case, with or without the dash; constant time). The request
        reference is no answer: it is in every email subject and in Temporal ids. An unauthentic token gives
        False (expiry is not checked here: :meth:`verify` does that)."""
        try:
            self._open(token)
        except InvalidLink:
            return False
        return _same_code(code, self.code(token))

    def form_token(self, token: str) -> str:
        """The hidden CSRF field of the download form for ``token`` (stateless, bound to the token)."""
        return _b64url(hmac.new(self._keys_of(token).form, token.encode("utf-8"), hashlib.sha256).digest()[:24])

    def check_form_token(self, token: str, value: object) -> bool:
        if not isinstance(value, str):
            return False
        return hmac.compare_digest(value.encode("utf-8"), self.form_token(token).encode("ascii"))

    def ip_hash(self, address: str | None) -> str:
        """A short keyed hash of a client address (16 hex digits), fit for the audit trail; never the IP."""
        digest = hmac.new(self._ip_key, (address or "unknown").encode("utf-8"), hashlib.sha256)
        return digest.hexdigest()[:16]

    # ------------------------------------------------------------------ internals

    def _keys_of(self, token: str) -> _LinkKeys:
        """The key family a token names (v2), the index-key family for v1 and anything unreadable.

        Only a choice of keys: whoever calls this on an unauthentic token gets values nobody can match to it.
        """
        version, _, rest = token.partition(".") if isinstance(token, str) else ("", "", "")
        if version == LINK_VERSION:
            return self._keys.get(rest.partition(".")[0], self._legacy)
        return self._legacy

    @staticmethod
    def _mac(keys: _LinkKeys, signed: str) -> bytes:
        return hmac.new(keys.mac, signed.encode("ascii"), hashlib.sha256).digest()

    def _aad(self, header: bytes) -> bytes:
        return self._info + header

    def _open(self, token: str) -> tuple[str, datetime]:
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or not _TOKEN_RE.match(token):
            raise TamperedLink("this download link is not valid")
        signed, _, mac_text = token.rpartition(".")
        version, _, rest = signed.partition(".")
        if version == LINK_VERSION:
            key_id, _, body_text = rest.partition(".")
            keys = self._keys.get(key_id)
        elif version == LEGACY_LINK_VERSION and "." not in rest:
            body_text, keys = rest, self._legacy
        else:
            keys = None
        if keys is None or not body_text:
            raise TamperedLink("this download link is not valid")
        try:
            mac = _unb64url(mac_text)
            body = _unb64url(body_text)
        except (binascii.Error, ValueError):
            raise TamperedLink("this download link is not valid") from None
        if not hmac.compare_digest(mac, self._mac(keys, signed)):
            raise TamperedLink("this download link is not valid")
        if len(body) < _EXPIRY.size + _NONCE + _TAG + 1:
            raise TamperedLink("this download link is not valid")
        header = body[: _EXPIRY.size]
        nonce = body[_EXPIRY.size : _EXPIRY.size + _NONCE]
        try:
            request_id = keys.aead.decrypt(nonce, body[_EXPIRY.size + _NONCE :], self._aad(header)).decode("ascii")
        except (InvalidTag, UnicodeDecodeError):
            raise TamperedLink("this download link is not valid") from None
        (expires,) = _EXPIRY.unpack(header)
        try:
            expires_at = datetime.fromtimestamp(expires, UTC)
        except (OverflowError, OSError, ValueError):
            raise TamperedLink("this download link is not valid") from None
        return request_id, expires_at


class IdentityLinks(DownloadLinks):
    """One-time identity confirmation (``/verify/{token}``) for requests whose policy is ``email``.

    The acknowledgement asks the subject to prove control of the address the request came from: either
    open the link (signed, bound to the request, expiring with the identity wait) and press the button, or
    enter the reference and the code on ``/verify`` (only for the kinds :func:`dsr.domain.model.code_offered` names: an
    erasure or a rectification gets the link only). The code is derived from the request id, not the token,
    so it works without the link (typed on another device). One-time: the workflow refuses a second
    confirmation, and the page then says it is already confirmed. Wrong codes are capped for good per request
    (:mod:`dsr.store.guards`), after which only the link works.
    """

    __slots__ = ()

    def __init__(self, keyring: KeyRing, *, ttl: timedelta) -> None:
        super().__init__(keyring, ttl=ttl, purpose="identity-link")

    def request_code(self, request_id: str) -> str:
        """The code of ``request_id`` under the current key (deterministic; nothing stored), ungrouped."""
        return self._request_code(self._keys[self._current], request_id)

    @staticmethod
    def _request_code(keys: _LinkKeys, request_id: str) -> str:
        return _code_of(hmac.new(keys.code, b"request\x00" + request_id.encode("utf-8"), hashlib.sha256).digest())

    def check_request_code(self, request_id: str, code: object) -> bool:
        """Constant-time check of a typed code (spaces and dashes tolerated).

        A code is typed without its link, so it cannot say which key made it: the code of every key of the
        ring (one sent before a rotation is still good) and of the index-key scheme is compared, each in
        constant time, all of them always.
        """
        if not isinstance(code, str) or len(code) > 50:
            return False
        typed = _normalise_answer(code).encode("utf-8")
        families = [*self._keys.values(), self._legacy]
        matches = [hmac.compare_digest(typed, self._request_code(keys, request_id).encode("ascii"))
                   for keys in families]
        return any(matches)

    def verify_url(self, public_url: str, token: str) -> str:
        return f"{public_url.rstrip('/')}/verify/{quote(token, safe='')}"


STATUS_LINK_TTL = timedelta(days=200)
"""How long the status link of an acknowledgement works: longer than any request stays open (three months when
extended, plus the time identity and a suspended clock may take), so it still shows the outcome once closed."""


class StatusLinks(DownloadLinks):
    """The subject's link to their request's status page (``/status/{token}``), sent in the acknowledgement.

    A family of its own (``status-link``): a status token never opens a download or confirms identity, nor the
    reverse. It names the request only encrypted, like every link; the page it opens shows no personal data.
    """

    __slots__ = ()

    def __init__(self, keyring: KeyRing, *, ttl: timedelta = STATUS_LINK_TTL) -> None:
        super().__init__(keyring, ttl=ttl, purpose="status-link")

    def status_url(self, public_url: str, token: str) -> str:
        return f"{public_url.rstrip('/')}/status/{quote(token, safe='')}"


CONSENT_LINK_TTL = timedelta(days=400)
"""How long the consent link of an email works by default (``DSR_CONSENT_LINK_DAYS``): well beyond any request, so
an old email still withdraws. Each link seals its own expiry when issued: a changed setting changes new links only."""


class ConsentLinks(DownloadLinks):
    """The subject's one-click link to withdraw consent (``/consent/{token}``, and the ``List-Unsubscribe`` URI of
    RFC 8058), in every email the engine sends to a subject.

    A family of its own (``consent-link``). The token seals the address and the language of the email, encrypted
    and signed like every link: only this engine's key ring opens it, and holding it proves what Art. 7(3) asks,
    control of the address it was sent to. It names no request: it works after the request is forgotten."""

    __slots__ = ()

    def __init__(self, keyring: KeyRing, *, ttl: timedelta = CONSENT_LINK_TTL) -> None:
        super().__init__(keyring, ttl=ttl, purpose="consent-link")

    def issue_for(self, email: str, language: str, *, now: datetime) -> str:
        """A token for ``email`` (kept as given, compared case-insensitively later) valid ``ttl`` from ``now``."""
        expires = int((_aware(now, "now") + self._ttl).timestamp())
        header = _EXPIRY.pack(expires)
        nonce = os.urandom(_NONCE)
        keys = self._keys[self._current]
        plain = _b64url(f"{language}\x00{email}".encode()).encode("ascii")
        sealed = keys.aead.encrypt(nonce, plain, self._aad(header))
        signed = f"{LINK_VERSION}.{self._current}.{_b64url(header + nonce + sealed)}"
        return f"{signed}.{_b64url(self._mac(keys, signed))}"

    def open(self, token: str, *, now: datetime) -> tuple[str, str]:
        """``(email, language)`` of a token; raises :class:`TamperedLink` or :class:`ExpiredLink`."""
        payload, expires_at = self._open(token)
        if _aware(now, "now") >= expires_at:
            raise ExpiredLink("this link has expired")
        try:
            language, _, email = _unb64url(payload).decode("utf-8").partition("\x00")
        except (binascii.Error, ValueError):
            raise TamperedLink("this link is not valid") from None
        if not email:
            raise TamperedLink("this link is not valid")
        return email, language

    def consent_url(self, public_url: str, token: str) -> str:
        return f"{public_url.rstrip('/')}/consent/{quote(token, safe='')}"
