"""The download page of export bundles over real HTTP: uvicorn on 127.0.0.1, an httpx client.

The bundle opener is the tests' own (a zip encrypted with ``KeyRing.encrypt``), so these tests do not
depend on how ``dsr.mail.bundle`` lays its files out.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from dsr.store.crypto import KeyRing
from dsr.store.guards import Guards
from dsr.store.ledger import Ledger
from dsr.store.links import (
    DownloadLinks,
    ExpiredLink,
    TamperedLink,
    _code_of,
    day_end_expiry,
    download_url,
    format_code,
    last_valid_day,
)
from dsr.web.serve import serve_app
from intake.web.app import intake_app
from intake.web.exports import MAX_FORM_BYTES
from intake.web.pages import CSP, choose_language
from tests.harness import http_client, migrated

REFERENCE = "dsr-2026-03-7KQ3FJ"
OTHER_REFERENCE = "dsr-2026-03-AB12CD"
START = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
BUNDLE_AAD = b"test-bundle"
PUBLIC_URL = "https://privacy.example.org"


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Audit:
    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    fail: bool = False

    def __call__(self, request_id: str, event: str, details: dict[str, str]) -> None:
        if self.fail:
            raise RuntimeError("ledger unavailable")
        self.calls.append((request_id, event, dict(details)))


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", '{"files": ["data.json", "blob.bin"]}')
        zf.writestr("data.json", '{"records": [{"email": "jeanne.martin@example.org"}]}')
        zf.writestr("blob.bin", os.urandom(300_000), compress_type=zipfile.ZIP_STORED)  # several chunks
    return buffer.getvalue()


def _write_bundle(ring: KeyRing, folder: Path, request_id: str, plain: bytes) -> None:
    key_id, blob = ring.encrypt(plain, aad=BUNDLE_AAD + request_id.encode())
    (folder / f"{request_id}.bundle").write_bytes(key_id.encode() + b"\n" + blob)


def _opener(ring: KeyRing, folder: Path) -> Callable[[str], Iterator[bytes] | None]:
    """Like ``dsr.mail.bundle.open_bundle``: raises FileNotFoundError at once when the bundle is gone."""

    def open_bundle(request_id: str) -> Iterator[bytes]:
        key_id, _, blob = (folder / f"{request_id}.bundle").read_bytes().partition(b"\n")
        plain = ring.decrypt(key_id.decode(), blob, aad=BUNDLE_AAD + request_id.encode())
        return iter([plain[i : i + 64 * 1024] for i in range(0, len(plain), 64 * 1024)])

    return open_bundle


@dataclass
class DownloadApp:
    ring: KeyRing
    links: DownloadLinks
    clock: Clock
    audit: Audit
    zip: bytes
    http: httpx.AsyncClient

    def path(self, token: str) -> str:
        return f"/exports/{token}"

    def form(self, token: str, answer: str | None, *, csrf: str | None = "auto") -> dict[str, str]:
        fields: dict[str, str] = {}
        if answer is not None:
            fields["answer"] = answer
        if csrf == "auto":
            fields["form"] = self.links.form_token(token)
        elif csrf is not None:
            fields["form"] = csrf
        return fields

    async def post(self, token: str, answer: str | None, *, csrf: str | None = "auto", **kw: Any) -> httpx.Response:
        return await self.http.post(self.path(token), data=self.form(token, answer, csrf=csrf), **kw)


@contextlib.asynccontextmanager
async def _serve(
    ring: KeyRing,
    folder: Path,
    *,
    opener: Callable[[str], Iterator[bytes] | None] | None = None,
    audit: Audit | None = None,
    clock: Clock | None = None,
    **options: str,
) -> AsyncIterator[DownloadApp]:
    links = DownloadLinks(ring)
    clock = clock or Clock()
    audit = audit or Audit()
    ledger = Ledger(migrated(f"sqlite:///{folder / 'ledger.sqlite3'}"), ring)  # the attempt counters' database
    app = intake_app(
        links=links,
        bundle_opener=opener or _opener(ring, folder),
        audit=audit,
        public_url=PUBLIC_URL,
        guards=Guards(ledger.engine, ring),
        clock=clock,
        **options,  # type: ignore[arg-type]
    )
    running = await serve_app(app, port=0)
    try:
        async with http_client(base_url=running.url, timeout=30) as http:
            yield DownloadApp(ring, links, clock, audit, b"", http)
    finally:
        await running.stop()
        ledger.close()


@pytest_asyncio.fixture
async def download_app(tmp_path: Path) -> AsyncIterator[DownloadApp]:
    ring = KeyRing.generate()
    plain = _zip_bytes()
    _write_bundle(ring, tmp_path, REFERENCE, plain)
    async with _serve(ring, tmp_path) as running:
        running.zip = plain
        yield running


def _assert_page_headers(response: httpx.Response) -> None:
    assert response.headers["content-security-policy"] == CSP
    for directive in ("default-src 'none'", "style-src 'unsafe-inline'", "form-action 'self'"):
        assert directive in response.headers["content-security-policy"]
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"].startswith("text/html")


def _csrf_value(page: str) -> str:
    match = re.search(r'name="form" value="([^"]+)"', page)
    assert match, "the form carries its CSRF field"
    return match.group(1)


def _flip(token: str, index: int) -> str:
    char = token[index]
    return token[:index] + ("A" if char != "A" else "B") + token[index + 1 :]


# ---------------------------------------------------------------------------------------------- happy path


async def test_form_then_wrong_code_then_the_reference_is_refused_and_the_code_downloads(
    download_app: DownloadApp,
) -> None:
    link = download_app.links.issue(REFERENCE, now=START)

    form = await download_app.http.get(download_app.path(link.token), headers={"Accept-Language": "en-GB,en;q=0.9"})
    assert form.status_code == 200
    _assert_page_headers(form)
    assert '<html lang="en">' in form.text
    assert "Download your data" in form.text
    assert '<label for="answer">' in form.text
    assert REFERENCE.lower() not in form.text.lower()  # the page never gives the answer away
    assert f'action="/exports/{link.token}?lang=en"' in form.text
    csrf = _csrf_value(form.text)
    assert csrf == download_app.links.form_token(link.token)

    wrong = await download_app.http.post(download_app.path(link.token), data={"answer": "2222-2222", "form": csrf})
    if link.code == "22222222":  # pragma: no cover - one chance in 8.5e11
        pytest.skip("the random code happened to be 2222-2222")
    assert wrong.status_code == 403
    _assert_page_headers(wrong)
    assert 'role="alert"' in wrong.text
    assert REFERENCE.lower() not in wrong.text.lower()
    assert download_app.audit.calls == []

    # The reference is in every email subject and in Temporal ids: no longer an answer (issue 12).
    for reference in (REFERENCE, REFERENCE.upper(), f"  {REFERENCE.lower()} "):
        refused = await download_app.http.post(download_app.path(link.token), data={"answer": reference, "form": csrf})
        assert refused.status_code == 403 and 'role="alert"' in refused.text
    assert download_app.audit.calls == []

    ok = await download_app.http.post(download_app.path(link.token),
                                      data={"answer": f"  {link.code[:4].lower()}-{link.code[4:]} ",
                                            "form": csrf})
    assert ok.status_code == 200
    assert ok.content == download_app.zip
    assert ok.headers["content-type"] == "application/zip"
    assert ok.headers["content-disposition"] == f'attachment; filename="{REFERENCE}.zip"'
    assert ok.headers["cache-control"] == "no-store"
    assert ok.headers["x-content-type-options"] == "nosniff"
    assert ok.headers["referrer-policy"] == "no-referrer"
    with zipfile.ZipFile(io.BytesIO(ok.content)) as zf:
        assert zf.testzip() is None
        assert sorted(zf.namelist()) == ["blob.bin", "data.json", "manifest.json"]

    assert len(download_app.audit.calls) == 1
    request_id, event, details = download_app.audit.calls[0]
    assert (request_id, event) == (REFERENCE, "export_downloaded")
    assert details["proof"] == "code"
    assert re.fullmatch(r"[0-9a-f]{16}", details["ip_hash"])
    assert details["ip_hash"] == download_app.links.ip_hash("127.0.0.1")
    assert all("127.0.0.1" not in value for value in details.values())


async def test_the_code_from_the_email_works_too_and_every_download_is_audited(download_app: DownloadApp) -> None:
    link = download_app.links.issue(REFERENCE, now=START)
    spaced = f"{link.code[:3]} {link.code[3:]}"
    for answer in (link.code, spaced):
        response = await download_app.post(link.token, answer)
        assert response.status_code == 200
        assert response.content == download_app.zip
    assert [call[1] for call in download_app.audit.calls] == ["export_downloaded", "export_downloaded"]
    assert {call[2]["proof"] for call in download_app.audit.calls} == {"code"}


async def test_language_follows_accept_language(download_app: DownloadApp) -> None:
    link = download_app.links.issue(REFERENCE, now=START)
    french = await download_app.http.get(download_app.path(link.token),
                                         headers={"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.8"})
    assert '<html lang="fr">' in french.text and "Télécharger vos données" in french.text
    default = await download_app.http.get(download_app.path(link.token), headers={"Accept-Language": "de-DE"})
    assert '<html lang="fr">' in default.text
    english = await download_app.http.get(download_app.path(link.token),
                                          headers={"Accept-Language": "de, en;q=0.5, fr;q=0.4"})
    assert '<html lang="en">' in english.text
    assert choose_language("en;q=0.2, fr;q=0.9") == "fr"
    assert choose_language("garbage;;;q=x, ,") == "fr"
    assert choose_language(None, "en") == "en"


async def test_health(download_app: DownloadApp) -> None:
    response = await download_app.http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# ---------------------------------------------------------------------------------------------- bad links


async def test_tampered_token_is_403_and_leaks_nothing(download_app: DownloadApp) -> None:
    link = download_app.links.issue(REFERENCE, now=START)
    # the version, the expiry, the encrypted reference, the signature
    positions = [1, 4, 10, 20, 40, len(link.token) - 30, len(link.token) - 2]
    for index in positions:
        tampered = _flip(link.token, index)
        assert tampered != link.token
        for response in (
            await download_app.http.get(download_app.path(tampered), headers={"Accept-Language": "en"}),
            await download_app.post(tampered, REFERENCE, headers={"Accept-Language": "en"}),
        ):
            assert response.status_code == 403, index
            _assert_page_headers(response)
            assert "This link is not valid" in response.text
            assert REFERENCE.lower() not in response.text.lower()
            assert tampered not in response.text
            assert "expire" not in response.text.lower()
    assert download_app.audit.calls == []


async def test_garbage_tokens_and_paths_never_give_a_500(download_app: DownloadApp) -> None:
    for token in ("x", "v1..", "v1.AAAA.BBBB", "v9." + "A" * 80 + "." + "B" * 43, "%C3%A9%00", "A" * 5000):
        response = await download_app.http.get(f"/exports/{token}")
        assert response.status_code == 403, token
        _assert_page_headers(response)
        response = await download_app.http.post(f"/exports/{token}", data={"answer": "1"})
        assert response.status_code == 403, token
    missing = await download_app.http.get("/nowhere")
    assert missing.status_code == 404
    _assert_page_headers(missing)
    link = download_app.links.issue(REFERENCE, now=START)
    not_allowed = await download_app.http.put(download_app.path(link.token))
    assert not_allowed.status_code == 405
    assert "GET" in not_allowed.headers["allow"]


async def test_expired_token_is_410(download_app: DownloadApp) -> None:
    link = download_app.links.issue(REFERENCE, now=START - timedelta(days=8))
    for response in (
        await download_app.http.get(download_app.path(link.token), headers={"Accept-Language": "en"}),
        await download_app.post(link.token, link.code, headers={"Accept-Language": "en"}),
    ):
        assert response.status_code == 410
        _assert_page_headers(response)
        assert "This link has expired; ask for a new one" in response.text
        assert REFERENCE.lower() not in response.text.lower()
    french = await download_app.http.get(download_app.path(link.token), headers={"Accept-Language": "fr"})
    assert "Ce lien a expiré" in french.text
    assert download_app.audit.calls == []


async def test_link_expires_exactly_at_its_expiry(download_app: DownloadApp) -> None:
    link = download_app.links.issue(REFERENCE, now=START)
    assert link.expires_at == START + timedelta(days=7)
    download_app.clock.now = link.expires_at - timedelta(seconds=1)
    assert (await download_app.http.get(download_app.path(link.token))).status_code == 200
    download_app.clock.now = link.expires_at
    assert (await download_app.http.get(download_app.path(link.token))).status_code == 410


async def test_missing_bundle_is_410(download_app: DownloadApp) -> None:
    link = download_app.links.issue(OTHER_REFERENCE, now=START)  # nothing was ever written for it
    response = await download_app.post(link.token, link.code, headers={"Accept-Language": "en"})
    assert response.status_code == 410
    _assert_page_headers(response)
    assert "no longer available" in response.text
    assert download_app.audit.calls == []


async def test_opener_returning_none_is_410_too(tmp_path: Path) -> None:
    ring = KeyRing.generate()
    async with _serve(ring, tmp_path, opener=lambda request_id: None) as download_app:
        link = download_app.links.issue(REFERENCE, now=START)
        response = await download_app.post(link.token, link.code)
        assert response.status_code == 410
        assert download_app.audit.calls == []


async def test_a_download_that_cannot_be_audited_does_not_happen(tmp_path: Path) -> None:
    ring = KeyRing.generate()
    _write_bundle(ring, tmp_path, REFERENCE, b"PK-zip-bytes")
    async with _serve(ring, tmp_path, audit=Audit(fail=True)) as download_app:
        link = download_app.links.issue(REFERENCE, now=START)
        response = await download_app.post(link.token, link.code)
        assert response.status_code == 503
        assert b"PK-zip-bytes" not in response.content


# ---------------------------------------------------------------------------------------------- the form


async def test_six_wrong_attempts_lock_the_download_for_15_minutes(download_app: DownloadApp) -> None:
    link = download_app.links.issue(REFERENCE, now=START)
    wrong = "999999" if link.code != "999999" else "111111"
    statuses = [(await download_app.post(link.token, wrong)).status_code for _ in range(6)]
    assert statuses == [403, 403, 403, 403, 403, 429]

    locked = await download_app.post(link.token, link.code, headers={"Accept-Language": "en"})
    assert locked.status_code == 429  # even the right answer waits
    assert 0 < int(locked.headers["retry-after"]) <= 15 * 60
    _assert_page_headers(locked)
    assert "Too many attempts" in locked.text
    # a second link to the same request shares the counter
    other = download_app.links.issue(REFERENCE, now=START)
    assert (await download_app.post(other.token, other.code)).status_code == 429
    assert download_app.audit.calls == []

    download_app.clock.now = START + timedelta(minutes=15)
    unlocked = await download_app.post(link.token, link.code)
    assert unlocked.status_code == 200
    assert unlocked.content == download_app.zip


async def test_missing_or_wrong_csrf_field_is_403(download_app: DownloadApp) -> None:
    link = download_app.links.issue(REFERENCE, now=START)
    other = download_app.links.issue(REFERENCE, now=START)
    for csrf in (None, "", "x" * 32, download_app.links.form_token(other.token)):
        response = await download_app.post(link.token, link.code, csrf=csrf, headers={"Accept-Language": "en"})
        assert response.status_code == 403, csrf
        _assert_page_headers(response)
        assert "This form is not valid" in response.text
    assert download_app.audit.calls == []
    # a CSRF failure is not a wrong answer: the right answer still works afterwards
    assert (await download_app.post(link.token, link.code)).status_code == 200


async def test_oversize_post_is_413(download_app: DownloadApp) -> None:
    link = download_app.links.issue(REFERENCE, now=START)
    data = download_app.form(link.token, link.code) | {"padding": "x" * MAX_FORM_BYTES}
    response = await download_app.http.post(download_app.path(link.token), data=data)
    assert response.status_code == 413
    _assert_page_headers(response)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(50):
            yield b"x" * 4096

    streamed = await download_app.http.post(
        download_app.path(link.token), content=chunked(), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert streamed.status_code == 413
    assert download_app.audit.calls == []


async def test_unreadable_forms_are_4xx_not_500(download_app: DownloadApp) -> None:
    link = download_app.links.issue(REFERENCE, now=START)
    path = download_app.path(link.token)
    as_json = await download_app.http.post(path, json={"answer": link.code})
    assert as_json.status_code == 415
    not_utf8 = await download_app.http.post(
        path, content=b"answer=\xff\xfe", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert not_utf8.status_code == 400
    many = "&".join(f"f{i}=1" for i in range(50))
    too_many = await download_app.http.post(path, content=many,
                                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert too_many.status_code == 400
    no_answer = await download_app.post(link.token, None)
    assert no_answer.status_code == 403
    assert download_app.audit.calls == []


# ---------------------------------------------------------------------------------------------- tokens


def test_tokens_carry_no_personal_data_and_are_url_safe() -> None:
    ring = KeyRing.generate()
    links = DownloadLinks(ring)
    link = links.issue(REFERENCE, now=START)
    assert re.fullmatch(rf"v2\.{ring.current_key_id}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{{43}}", link.token)
    assert re.fullmatch(r"[23456789ABCDEFGHJKMNPQRSTUVWXYZ]{8}", link.code)
    decoded = b"".join(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)) for part in link.token.split(".")[2:])
    for needle in (REFERENCE, REFERENCE.upper(), "7KQ3FJ"):
        assert needle.lower() not in link.token.lower()
        assert needle.encode() not in decoded
    # two links for the same request do not look alike, but each has a stable code
    again = links.issue(REFERENCE, now=START)
    assert again.token != link.token
    assert links.code(link.token) == link.code
    assert download_url(PUBLIC_URL + "/", link.token) == f"{PUBLIC_URL}/exports/{link.token}"
    assert link.url(PUBLIC_URL) == f"{PUBLIC_URL}/exports/{link.token}"


def test_links_survive_key_rotation_but_not_another_ring() -> None:
    ring = KeyRing.generate()
    link = DownloadLinks(ring).issue(REFERENCE, now=START)
    rotated = DownloadLinks(ring.with_new_key().with_new_key())
    assert rotated.verify(link.token, now=START) == REFERENCE
    assert rotated.code(link.token) == link.code
    assert rotated.check_code(link.token, link.code)
    assert rotated.form_token(link.token) == DownloadLinks(ring).form_token(link.token)
    with pytest.raises(TamperedLink):
        DownloadLinks(KeyRing.generate()).verify(link.token, now=START)
    with pytest.raises(ExpiredLink):
        rotated.verify(link.token, now=START + timedelta(days=7))


async def test_a_rotated_ring_still_serves_old_links(tmp_path: Path) -> None:
    ring = KeyRing.generate()
    link = DownloadLinks(ring).issue(REFERENCE, now=START)
    rotated = ring.with_new_key()
    _write_bundle(rotated, tmp_path, REFERENCE, b"zip after rotation")
    async with _serve(rotated, tmp_path) as download_app:
        assert (await download_app.http.get(download_app.path(link.token))).status_code == 200
        response = await download_app.post(link.token, link.code)
        assert response.status_code == 200
        assert response.content == b"zip after rotation"


def test_check_code_rules() -> None:
    links = DownloadLinks(KeyRing.generate(), ttl=timedelta(hours=1))
    link = links.issue(REFERENCE, now=START)
    assert link.expires_at == START + timedelta(hours=1)
    assert links.check_code(link.token, link.code)
    assert links.check_code(link.token, f" {link.code[:3]}-{link.code[3:]} ")
    assert links.check_code(link.token, link.code.lower())
    assert links.check_code(link.token, f"{link.code[:4]} {link.code[4:]}")
    assert not links.check_code(link.token, REFERENCE.upper())  # the reference is no answer any more
    assert not links.check_code(link.token, REFERENCE)
    assert not links.check_code(link.token, link.code[:-1])
    assert not links.check_code(link.token, "")
    assert not links.check_code(link.token, OTHER_REFERENCE)
    assert not links.check_code(link.token, REFERENCE + "X")
    assert not links.check_code(link.token, "é" * 10)
    assert not links.check_code(_flip(link.token, 10), link.code)
    other = links.issue(OTHER_REFERENCE, now=START)
    assert not links.check_code(link.token, other.code) or other.code == link.code
    with pytest.raises(ValueError):
        links.issue("jeanne.martin@example.org", now=START)
    with pytest.raises(ValueError):
        links.issue(REFERENCE, now=datetime(2026, 3, 2))  # naive


def test_link_code_and_form_keys_rotate_with_the_key_ring() -> None:
    """Issue 12 finding 9: they derived from the index key, which never rotates; now from the current key."""
    from dsr.store.links import IdentityLinks

    ring = KeyRing.generate("k1")
    rotated = ring.with_new_key("k2")
    before, after = DownloadLinks(ring), DownloadLinks(rotated)
    old = before.issue(REFERENCE, now=START)
    new = after.issue(REFERENCE, now=START)
    assert old.token.startswith("v2.k1.") and new.token.startswith("v2.k2.")
    # signed under the new key: a process holding only the old ring (or another deployment's) cannot verify it
    with pytest.raises(TamperedLink):
        before.verify(new.token, now=START)
    # a link signed before the rotation keeps working, with its code and form field, until it expires
    assert after.verify(old.token, now=START) == REFERENCE
    assert after.check_code(old.token, old.code) and after.form_token(old.token) == before.form_token(old.token)
    with pytest.raises(ExpiredLink):
        after.verify(old.token, now=START + timedelta(days=8))
    # the keys really changed: the same body re-signed under k1's label but claiming k2 is refused
    forged = "v2.k2." + old.token.split(".", 2)[2]
    with pytest.raises(TamperedLink):
        after.verify(forged, now=START)
    # identity codes: issued under the current key; one sent before the rotation still confirms
    identity_before = IdentityLinks(ring, ttl=timedelta(days=30))
    identity_after = IdentityLinks(rotated, ttl=timedelta(days=30))
    assert identity_after.request_code(REFERENCE) != identity_before.request_code(REFERENCE)
    assert identity_after.check_request_code(REFERENCE, identity_before.request_code(REFERENCE))
    assert identity_after.check_request_code(REFERENCE, identity_after.request_code(REFERENCE))
    assert not identity_before.check_request_code(REFERENCE, identity_after.request_code(REFERENCE))


def test_links_issued_before_keys_rotated_still_verify_until_they_expire() -> None:
    """A v1 token (no key id, keys from the index key), as every link issued before this change."""
    import hashlib
    import hmac as hmac_
    import os
    import struct

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    ring = KeyRing.generate("k1").with_new_key("k2")
    info = b"dsr/download-link/v1\x00"
    root = bytes.fromhex(ring.blind_index("download-link-root", purpose="dsr/download-link/v1"))

    def derive(label: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info + label).derive(root)

    header = struct.pack(">Q", int((START + timedelta(days=7)).timestamp()))
    nonce = os.urandom(12)
    body = header + nonce + AESGCM(derive(b"enc")).encrypt(nonce, REFERENCE.encode(), info + header)
    b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()  # noqa: E731
    signed = f"v1.{b64(body)}"
    token = f"{signed}.{b64(hmac_.new(derive(b'mac'), signed.encode(), hashlib.sha256).digest())}"
    digest = hmac_.new(derive(b"code"), token.encode(), hashlib.sha256).digest()
    # The code of such a link is now written in the 8-character alphabet (issue 12): a 6-digit code emailed
    # before the change no longer opens it; the link itself still verifies until it expires.
    code = format_code(_code_of(digest))
    six_digits = f"{int.from_bytes(digest[:8], 'big') % 10**6:06d}"

    links = DownloadLinks(ring)
    assert links.verify(token, now=START) == REFERENCE
    assert links.check_code(token, code) and not links.check_code(token, six_digits)
    with pytest.raises(ExpiredLink):
        links.verify(token, now=START + timedelta(days=7))


# ---------------------------------------------------------------------------------------------- one truth


def test_a_link_ends_at_midnight_in_the_controllers_zone_after_its_last_whole_day() -> None:
    """Issue 18: the email said « jusqu'au 9 décembre 2026 inclus », the page « 2026-12-10 06:53 (UTC) »."""
    issued = datetime(2026, 11, 10, 6, 53, tzinfo=UTC)
    expiry = day_end_expiry(issued, timedelta(days=30), "Europe/Paris")
    assert expiry == datetime(2026, 12, 9, 23, 0, tzinfo=UTC)  # midnight in Paris (UTC+1) ending 9 December
    assert last_valid_day(expiry, "Europe/Paris") == date(2026, 12, 9)
    assert expiry - issued >= timedelta(days=29)
    # Summer time: Paris is UTC+2; and a zone ahead of UTC's date.
    summer = day_end_expiry(datetime(2026, 6, 1, 12, tzinfo=UTC), timedelta(days=7), "Europe/Paris")
    assert summer == datetime(2026, 6, 7, 22, 0, tzinfo=UTC)
    assert last_valid_day(summer, "Europe/Paris") == date(2026, 6, 7)
    tokyo = day_end_expiry(datetime(2026, 6, 1, 20, tzinfo=UTC), timedelta(days=7), "Asia/Tokyo")
    assert tokyo == datetime(2026, 6, 8, 15, 0, tzinfo=UTC) and last_valid_day(tokyo, "Asia/Tokyo") == date(2026, 6, 8)
    # However short the time to live, the link works until tonight at least.
    tonight = day_end_expiry(datetime(2026, 6, 1, 12, tzinfo=UTC), timedelta(hours=1), "Europe/Paris")
    assert tonight == datetime(2026, 6, 1, 22, 0, tzinfo=UTC)


async def test_the_page_names_the_last_day_as_the_email_does_and_the_company(tmp_path: Path) -> None:
    from dsr.mail.replies import render_reply
    from tests.templates.test_replies import _context

    ring = KeyRing.generate()
    _write_bundle(ring, tmp_path, REFERENCE, _zip_bytes())
    issued = datetime(2026, 11, 10, 6, 53, tzinfo=UTC)
    clock = Clock(issued)
    async with _serve(ring, tmp_path, clock=clock, controller_name="Kestio SAS", timezone="Europe/Paris") as app:
        expiry = day_end_expiry(issued, timedelta(days=30), "Europe/Paris")
        link = app.links.issue(REFERENCE, now=issued, ttl=expiry - issued)
        email = render_reply("reply_access", "fr", _context(link_expires=last_valid_day(link.expires_at,
                                                                                       "Europe/Paris")))
        assert "Ce lien est valable jusqu'au 9 décembre 2026 inclus." in email.text

        page = await app.http.get(app.path(link.token), headers={"Accept-Language": "fr"})
        assert page.status_code == 200
        assert "Ce lien est valable jusqu’au 9 décembre 2026 inclus (heure de Paris)." in page.text
        assert '<p class="org">Kestio SAS</p>' in page.text and "UTC" not in page.text
        english = await app.http.get(app.path(link.token), headers={"Accept-Language": "en"})
        assert "This link works until 9 December 2026 inclusive (Paris time)." in english.text
        # The email's link says the reply's language: a French subject with an English browser reads French.
        asked = await app.http.get(app.path(link.token) + "?lang=fr", headers={"Accept-Language": "en"})
        assert "Ce lien est valable jusqu’au 9 décembre 2026 inclus" in asked.text
        assert f'action="/exports/{link.token}?lang=fr"' in asked.text

        clock.now = datetime(2026, 12, 9, 22, 59, 59, tzinfo=UTC)  # 23:59:59 on 9 December in Paris: still valid
        assert (await app.http.get(app.path(link.token))).status_code == 200
        clock.now = datetime(2026, 12, 9, 23, 0, tzinfo=UTC)  # midnight in Paris: gone, as the email said
        gone = await app.http.get(app.path(link.token))
        assert gone.status_code == 410 and "Kestio SAS" in gone.text


async def test_every_intake_page_is_headed_by_the_company(tmp_path: Path) -> None:
    """Issue 18: no page named the company. The download pages, the app's own error pages and /verify do."""
    from dsr.store.links import IdentityLinks
    from intake.web.verify import verify_router

    ring = KeyRing.generate()

    async def confirm(request_id: str, proof: str) -> object:  # pragma: no cover - nothing is confirmed here
        raise AssertionError("no confirmation in this test")

    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", ring) as ledger:
        guards = Guards(ledger.engine, ring)
        app = intake_app(
            links=DownloadLinks(ring), bundle_opener=_opener(ring, tmp_path), audit=Audit(), public_url=PUBLIC_URL,
            guards=guards, controller_name="Kestio SAS", timezone="Europe/Paris",
            routers=[verify_router(IdentityLinks(ring, ttl=timedelta(days=30)), confirm,  # type: ignore[arg-type]
                                   guards=guards, exists=lambda _: False, controller_name="Kestio SAS")],
        )
        running = await serve_app(app, port=0)
        try:
            async with http_client(base_url=running.url, timeout=30) as http:
                pages = [await http.get("/verify"), await http.get("/exports/not-a-token"),
                         await http.get("/no-such-page")]
        finally:
            await running.stop()
    assert [p.status_code for p in pages] == [200, 403, 404]
    for page in pages:
        assert '<p class="org">Kestio SAS</p>' in page.text, page.url


def test_the_intake_names_the_company_as_the_worker_signs(tmp_path: Path) -> None:
    from dsr.config.settings import Settings
    from intake.server import controller_name

    home = {"DSR_HOME": str(tmp_path)}
    assert controller_name(Settings.from_env(home)) == ""  # no profile: nobody named
    (tmp_path / "dsr.toml").write_text('[controller]\nlegal_name = "Kestio SAS"\n', encoding="utf-8")
    assert controller_name(Settings.from_env(home)) == "Kestio SAS"  # the profile's legal name
    assert controller_name(Settings.from_env({**home, "DSR_CONTROLLER_NAME": "Kestio"})) == "Kestio"
    (tmp_path / "dsr.toml").write_text("[controller\n", encoding="utf-8")  # malformed: reported elsewhere
    assert controller_name(Settings.from_env(home)) == ""
