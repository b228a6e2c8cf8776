"""Fuzzing the intake app's HTML pages: ``/verify/{token}``, ``/verify`` (reference + code) and ``/exports/{token}``.

What must hold for any input (path, form body, content type, ``Content-Length``, cookies, ``Accept-Language``):

* the answer is never a 5xx, its status is one the page documents, and every page is ``text/html;
  charset=utf-8`` with the security headers;
* nothing taken from the input reaches the HTML unescaped: no raw ``<script``, ``"><`` or other tag from the
  input; the page parses to the app's own few tags and attributes only (so no event handler), its only URL
  is the app's own form action (so no ``javascript:``), and the one value reflected on purpose (the
  reference typed on ``/verify``) reads back exactly as typed;
* only an authentic, unexpired link with its CSRF field confirms an identity; only the real reference and
  code confirm on ``/verify``; only the right answer with the right link's CSRF field serves a bundle
  (and records exactly one ``export_downloaded`` event); anything else changes no state but the attempt
  counters, and those exactly as documented (5 wrong answers lock the request for 15 minutes, the 6th
  attempt and every later one in the window get 429 with ``Retry-After``, even with the right answer; and
  30 wrong answers from one client address within 15 minutes lock that client for 15 minutes).

Statuses: 200, 400, 403, 404, 410, 413, 415, 429 as each page documents, plus 405 (a method the route does
not take) and 307 (Starlette's redirect of a path ending in "/", e.g. ``/verify/``, to the same path without
it). ``/exports`` answers 200 with the zip only.

The tests hold a model of what the app must do (which token is authentic and unexpired, how many wrong
answers each request has had, the clock) and compare every answer with it, so the status is predicted
exactly where the input is well-formed, and bounded to a documented set where it is not (raw bytes, paths
that normalise elsewhere). The app is the real one (``intake_app`` + ``verify_router``) in process, with
``DownloadLinks`` / ``IdentityLinks`` over ``TEST_KEYRING``, a recording confirm function, bundle opener
and audit hook, the attempt counters of :mod:`dsr.store.guards` on a SQLite database of their own, and a clock the
tests move (past a lockout, to keep exploring behind it).

The counters moved from the process into the ledger's database (shared by every intake replica), and the model
follows the two ways that design deliberately differs: a per-client limit (:data:`MAX_CLIENT_ATTEMPTS` wrong
answers per client address per window, whatever the request), and references the ledger does not know (here
``UNKNOWN``) counted per client and reference instead of per request; with the fuzz's single client address
that is the same count as per request, so the model's per-request counter stands for both.

Product bugs found on the way (by the fuzz, or by probing what it pointed at), since fixed, each have their
own regression test at the end of the module: a lockout raced by slow bodies, lockout counts and locks
evicted by a flood of made-up references (now: made-up references are never counted per request, see the
flood tests), non-canonical token spellings, and the proof recorded for a code typed with look-alike letters.
Where the oracle stepped around one of them, it says so.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import operator
import re
import string
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, quote_plus, unquote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsr.store.crypto import KeyRing
from dsr.store.guards import AnswerThrottle, AttemptLimitRow, Guards
from dsr.store.links import CODE_ALPHABET, MAX_TOKEN_LENGTH, DownloadLinks, IdentityLinks
from intake.service import IdentityOutcome
from intake.web.app import intake_app
from intake.web.attempts import LOCKOUT, MAX_ATTEMPTS, MAX_CLIENT_ATTEMPTS
from intake.web.exports import MAX_FORM_BYTES
from intake.web.pages import CSP
from intake.web.verify import verify_router
from intake.web.wording import VERIFY as VERIFY_TEXT
from tests.harness import TEST_KEYRING, raw_headers, throwaway_guards

START = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)  # whole seconds: expiries and Retry-After are exact
DEADLINE = date(2026, 4, 1)
HAMMERED = "dsr-2026-03-7KQ3FJ"  # the fuzz's target: mostly near-misses of its code and answers (so: locked)
ANSWERED = "dsr-2026-03-2BN8TV"  # mostly right codes and answers: confirmed, served
UNKNOWN = "dsr-2026-03-4HZ9PW"  # authentic links and right codes, but no workflow: "closed" / no bundle
SURVIVOR = "dsr-2026-03-9XW2HS"  # never sent by the fuzz: must still work afterwards
EXISTING = frozenset({HAMMERED, ANSWERED, SURVIVOR})  # in the ledger; UNKNOWN is not
CLIENT = "127.0.0.1"  # the client address of every request the tests send, unless they give another
IDENTITY_TTL = timedelta(days=30)
DOWNLOAD_TTL = timedelta(days=7)
PUBLIC_URL = "http://127.0.0.1:8235"
ZIP = b"PK\x03\x04 the fuzz bundle " + bytes(range(256))
FORM_TYPE = "application/x-www-form-urlencoded"
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
pytestmark = [
    pytest.mark.slow,  # fuzzing the pages
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]


# --- the app under test ---------------------------------------------------------------------------------------


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Confirmer:
    """The ``confirm(request_id, proof)`` of ``verify_router``: records every call; ``known=None``: all known."""

    known: frozenset[str] | None
    calls: list[tuple[str, str]] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    confirmed: set[str] = field(default_factory=set)

    async def __call__(self, request_id: str, proof: str) -> IdentityOutcome:
        self.calls.append((request_id, proof))
        if self.known is not None and request_id not in self.known:
            outcome = IdentityOutcome("unknown")
        elif request_id in self.confirmed:
            outcome = IdentityOutcome("already")
        else:
            self.confirmed.add(request_id)
            outcome = IdentityOutcome("confirmed", DEADLINE)
        self.outcomes.append(outcome.state)
        return outcome


@dataclass
class Audit:
    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def __call__(self, request_id: str, event: str, details: dict[str, str]) -> None:
        self.calls.append((request_id, event, dict(details)))


def open_bundle(request_id: str) -> Iterator[bytes] | None:
    return iter([ZIP[:10], ZIP[10:]]) if request_id in (HAMMERED, ANSWERED, SURVIVOR) else None


def pages_app(downloads: DownloadLinks, audit: Audit, clock: Clock, identity: IdentityLinks | None = None,
              confirm: Confirmer | None = None, *, guards: Guards | None = None,
              exists: Callable[[str], bool] = EXISTING.__contains__) -> Any:
    """The app under test: ``intake_app`` (and ``verify_router`` when given its links and confirm function),
    sharing one set of counters (:class:`dsr.store.guards.Guards`, a fresh SQLite database unless given)."""
    guards = guards or throwaway_guards()
    # The throttles and the lasting cap of wrong codes are left out here (far above what a run sends): this file
    # checks the pages and their lockouts; tests/intake/test_guessing.py models caps and throttles.
    max_wrong, throttle = 10**9, AnswerThrottle(per_client=10**9, overall=10**9)
    routers = [] if identity is None or confirm is None else [
        verify_router(identity, confirm, clock=clock, guards=guards, exists=exists, max_wrong=max_wrong,
                      throttle=throttle)]
    return intake_app(links=downloads, bundle_opener=open_bundle, audit=audit, public_url=PUBLIC_URL, clock=clock,
                      guards=guards, routers=routers, max_wrong=max_wrong, throttle=throttle)


class SyncClient:
    """Synchronous calls (Hypothesis tests are sync) to the ASGI app: an ``httpx.AsyncClient`` on its own
    event loop in a thread, so the session loop of pytest-asyncio is left alone."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fuzz-pages-asgi", daemon=True)
        self._thread.start()
        self._clients: dict[str, httpx.AsyncClient] = {}

    def _client(self, address: str) -> httpx.AsyncClient:
        """An HTTP client whose requests come from ``address`` (the socket peer the app sees)."""
        if address not in self._clients:
            transport = httpx.ASGITransport(app=self._app, raise_app_exceptions=False, client=(address, 123))
            self._clients[address] = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        return self._clients[address]

    def request(self, method: str, path: str, body: Body | None = None,
                headers: Mapping[str, str | bytes] | None = None, *, client: str = CLIENT) -> httpx.Response:
        sent: dict[str, str | bytes] = dict(headers or {})
        content: Any = None
        if body is not None:
            content = body.content
            if body.content_type is not None:
                sent["Content-Type"] = body.content_type
            if body.content_length is not None:
                sent["Content-Length"] = body.content_length
            if body.chunked:
                chunks = [body.content[i:i + 1000] for i in range(0, len(body.content), 1000)]

                async def stream() -> AsyncIterator[bytes]:
                    for chunk in chunks:
                        yield chunk

                content = stream()  # no Content-Length (unless the body sets an odd one): chunked
        call = self._client(client).request(method, path, content=content, headers=raw_headers(sent))
        return asyncio.run_coroutine_threadsafe(call, self._loop).result(timeout=60)

    def close(self) -> None:
        for http in self._clients.values():
            asyncio.run_coroutine_threadsafe(http.aclose(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@dataclass
class Limiter:
    """The model of one attempt counter: ``maximum`` wrong answers within LOCKOUT (counted from the first)
    lock a key for LOCKOUT; a count with no lock is forgotten when its window ends."""

    maximum: int = MAX_ATTEMPTS
    failures: dict[str, int] = field(default_factory=dict)
    first: dict[str, datetime] = field(default_factory=dict)
    until: dict[str, datetime] = field(default_factory=dict)

    def left(self, key: str, now: datetime) -> timedelta | None:
        until = self.until.get(key)
        if until is None:
            self._forget_if_window_over(key, now)
            return None
        if now >= until:  # served: a fresh set of attempts
            self.succeed(key)
            return None
        return until - now

    def fail(self, key: str, now: datetime) -> None:
        self._forget_if_window_over(key, now)
        self.first.setdefault(key, now)
        self.failures[key] = self.failures.get(key, 0) + 1
        if self.failures[key] >= self.maximum:
            self.until[key] = now + LOCKOUT

    def _forget_if_window_over(self, key: str, now: datetime) -> None:
        if key not in self.until and key in self.first and now >= self.first[key] + LOCKOUT:
            self.succeed(key)

    def succeed(self, key: str) -> None:
        self.failures.pop(key, None)
        self.first.pop(key, None)
        self.until.pop(key, None)


@dataclass
class Limits:
    """The model of one page's counters: per request (MAX_ATTEMPTS) and per client address (MAX_CLIENT_ATTEMPTS,
    every wrong answer of the client, whatever the request); a lock of either refuses, for the longer of the
    two. A right answer starts the request's count again, never the client's."""

    requests: Limiter = field(default_factory=Limiter)
    clients: Limiter = field(default_factory=lambda: Limiter(MAX_CLIENT_ATTEMPTS))

    def left(self, request_id: str, now: datetime, client: str = CLIENT) -> timedelta | None:
        waits = [w for w in (self.requests.left(request_id, now), self.clients.left(client, now)) if w is not None]
        return max(waits) if waits else None

    def locked_until(self, request_id: str, client: str = CLIENT) -> datetime:
        return max(u for u in (self.requests.until.get(request_id), self.clients.until.get(client)) if u is not None)

    def fail(self, request_id: str, now: datetime, client: str = CLIENT) -> None:
        self.requests.fail(request_id, now)
        self.clients.fail(client, now)

    def succeed(self, request_id: str) -> None:
        self.requests.succeed(request_id)


@dataclass(frozen=True)
class Token:
    """A token the fuzz sends: its text and, if authentic, its request and expiry (validity is the clock's)."""

    text: str
    request_id: str | None = None
    expires_at: datetime | None = None
    how: str = "hostile"

    def state(self, now: datetime) -> str:
        if self.expires_at is None:
            return "invalid"
        return "valid" if now < self.expires_at else "expired"

    def __repr__(self) -> str:
        return f"Token({self.how}, {self.text[:160]!r}{'...' if len(self.text) > 160 else ''}, len={len(self.text)})"


@dataclass
class Site:
    clock: Clock
    identity: IdentityLinks
    downloads: DownloadLinks
    confirm: Confirmer
    audit: Audit
    http: SyncClient
    link_tokens: list[Token]  # authentic identity tokens the fuzz may send (HAMMERED and UNKNOWN)
    download_tokens: list[Token]
    foreign_for_links: list[str]  # authentic elsewhere, never here: another family, another key ring
    foreign_for_downloads: list[str]
    survivor_link: str
    survivor_download: str
    verify_limits: Limits = field(default_factory=Limits)
    export_limits: Limits = field(default_factory=Limits)

    def __repr__(self) -> str:  # Hypothesis prints the arguments of a failing example: keep it short
        return f"Site(now={self.clock.now.isoformat()}, confirmations={len(self.confirm.calls)})"

    def unlock(self, limits: Limits, request_id: str) -> None:
        """After a 429 checked against the model: move the clock past the lock, to explore behind it."""
        until = limits.locked_until(request_id)
        self.clock.now = until
        assert limits.left(request_id, self.clock.now) is None


def build_site() -> Site:
    clock = Clock()
    identity = IdentityLinks(TEST_KEYRING, ttl=IDENTITY_TTL)
    downloads = DownloadLinks(TEST_KEYRING, ttl=DOWNLOAD_TTL)
    confirm = Confirmer(known=frozenset({HAMMERED, ANSWERED, SURVIVOR}))
    audit = Audit()
    app = pages_app(downloads, audit, clock, identity, confirm)

    def issued(links: DownloadLinks, request_id: str, at: datetime, how: str) -> Token:
        link = links.issue(request_id, now=at)
        return Token(link.token, request_id, link.expires_at, how)

    link_tokens = [
        issued(identity, HAMMERED, START, "link"),
        issued(identity, HAMMERED, START - timedelta(days=2), "second link"),
        issued(identity, UNKNOWN, START, "link to a request with no workflow"),
        issued(identity, HAMMERED, START - IDENTITY_TTL, "expired link"),  # expires exactly at START
        issued(identity, HAMMERED, START - timedelta(days=400), "long expired link"),
    ]
    download_tokens = [
        issued(downloads, HAMMERED, START, "link"),
        issued(downloads, HAMMERED, START - timedelta(days=1), "second link"),
        issued(downloads, ANSWERED, START, "link to a request answered right"),
        issued(downloads, UNKNOWN, START, "link to a deleted bundle"),
        issued(downloads, HAMMERED, START - DOWNLOAD_TTL, "expired link"),
        issued(downloads, HAMMERED, START - timedelta(days=90), "long expired link"),
    ]
    other_ring = KeyRing.generate()
    return Site(
        clock=clock, identity=identity, downloads=downloads, confirm=confirm, audit=audit, http=SyncClient(app),
        link_tokens=link_tokens, download_tokens=download_tokens,
        foreign_for_links=[downloads.issue(HAMMERED, now=START).token,
                           IdentityLinks(other_ring, ttl=IDENTITY_TTL).issue(HAMMERED, now=START).token],
        foreign_for_downloads=[identity.issue(HAMMERED, now=START).token,
                               DownloadLinks(other_ring).issue(HAMMERED, now=START).token],
        survivor_link=identity.issue(SURVIVOR, now=START).token,
        survivor_download=downloads.issue(SURVIVOR, now=START).token,
    )


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    built = build_site()
    try:
        yield built
    finally:
        built.http.close()


# --- what every page must look like ------------------------------------------------------------------------------

PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "main", "h1", "p", "form", "input", "label", "button"}
PAGE_ATTRIBUTES = {
    "lang", "charset", "name", "content", "method", "action", "type", "value", "id", "for", "class", "role",
    "required", "maxlength", "autocomplete", "inputmode", "aria-describedby", "aria-invalid", "autocapitalize",
    "spellcheck", "autofocus",
}
# Raw markup that only an injection could bring (escaped input reads "&lt;script"). Attribute names such as
# "onerror" and URLs such as "javascript:" are checked on the parsed page (escaped, they are harmless text).
FORBIDDEN = ("<script", "<img", "<svg", "<iframe", "<base", "<a ", "<object", "<embed", "<link", "<textarea")


class Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.other: list[str] = []
        self.headings: list[str] = []
        self.texts: list[str] = []
        self._in_h1 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_h1 = tag == "h1"
        if len(attrs) != len(dict(attrs)):
            self.other.append(f"repeated attribute in <{tag}>")

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag: str) -> None:
        self._in_h1 = False

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if self._in_h1:
            self.headings.append(data)

    def handle_decl(self, decl: str) -> None:
        if decl.lower() != "doctype html":
            self.other.append(f"<!{decl}>")

    def handle_comment(self, data: str) -> None:
        self.other.append(f"<!--{data}-->")

    def handle_pi(self, data: str) -> None:
        self.other.append(f"<?{data}>")

    def unknown_decl(self, data: str) -> None:
        self.other.append(f"<![{data}]>")

    def element(self, element_id: str) -> dict[str, str | None] | None:
        found = [attrs for _, attrs in self.tags if attrs.get("id") == element_id]
        return found[0] if found else None

    def hidden_form_value(self) -> str | None:
        found = [attrs.get("value") for tag, attrs in self.tags if tag == "input" and attrs.get("name") == "form"]
        return found[0] if found else None

    def action(self) -> str | None:
        found = [attrs.get("action") for tag, attrs in self.tags if tag == "form"]
        return found[0] if found else None

    @property
    def lang(self) -> str:
        return str(self.tags[0][1].get("lang"))

    @property
    def title(self) -> str:
        return "".join(self.headings).strip()

    @property
    def visible(self) -> str:
        """What a reader sees (text, not attributes: a token or CSRF value may hold any 6 digits)."""
        return "\n".join(self.texts)


def check_page(response: httpx.Response) -> Markup:
    """An HTML page of the app, whatever the input: headers, encoding, and nothing injected."""
    assert response.status_code < 500, f"server error {response.status_code}: {response.text[:500]!r}"
    assert response.headers.get("content-type") == "text/html; charset=utf-8", response.headers
    assert response.headers.get("content-security-policy") == CSP
    assert response.headers.get("x-content-type-options") == "nosniff"
    assert response.headers.get("cache-control") == "no-store"
    assert response.headers.get("referrer-policy") == "no-referrer"
    text = response.content.decode("utf-8")  # strict: the charset says UTF-8
    lowered = text.lower()
    for marker in FORBIDDEN:
        assert marker not in lowered, f"{marker!r} in the page"
    assert '"><' not in text and "'><" not in text
    markup = Markup()
    markup.feed(text)
    markup.close()
    assert markup.other == [], markup.other
    names = [tag for tag, _ in markup.tags]
    assert set(names) <= PAGE_TAGS, set(names) - PAGE_TAGS
    assert names[0] == "html" and markup.lang in ("fr", "en")
    for tag in ("html", "head", "title", "style", "body", "main", "h1"):
        assert names.count(tag) == 1, (tag, names)
    assert names.count("form") <= 1
    for tag, attrs in markup.tags:
        assert set(attrs) <= PAGE_ATTRIBUTES, (tag, attrs)
        if tag == "form":
            assert attrs.get("method") == "post"
            # The download form keeps the page's language (?lang=, one of two values), never anything echoed.
            assert re.fullmatch(r"/(verify|exports)(/[A-Za-z0-9._~%-]+)?(\?lang=(fr|en))?",
                                attrs.get("action") or ""), attrs
        if tag == "meta":
            assert "http-equiv" not in attrs
    return markup


def check_locked(response: httpx.Response, left: timedelta) -> None:
    assert response.status_code == 429, response.status_code
    assert response.headers["retry-after"] == str(max(1, math.ceil(left.total_seconds())))


def check_redirect(response: httpx.Response) -> None:
    """A path ending in "/" that matches a route without it (``/verify/``: an empty token): Starlette redirects
    there, on the same site, and nowhere else."""
    assert response.status_code == 307
    location = httpx.URL(response.headers["location"])
    assert (location.scheme, location.host) == ("http", "testserver"), location
    assert location.path == "/verify" or location.path.startswith(("/verify/", "/exports/")), location
    assert not location.path.endswith("/") and not location.query, location


# --- hostile input ---------------------------------------------------------------------------------------------------

XSS = [
    "<script>alert(1)</script>", '"><script>alert(1)</script>', "'><img src=x onerror=alert(1)>", "javascript:alert(1)",
    "JaVaScRiPt:alert(1)", '" onfocus="alert(1)" autofocus="', "' onmouseover='alert(1)",
    "</title><script>alert(1)</script>", "</style><svg onload=alert(1)>", "<!--", "-->", "<![CDATA[x]]>", "<?xml x?>",
    "&lt;script&gt;", "&#60;script&#62;", "&quot;&gt;&lt;", "%3Cscript%3E", "\\u003cscript\\u003e", "{{7*7}}",
    "${7*7}", "<style>*{display:none}</style>", "<form action=//evil.example>", "<base href=//evil.example/>",
    '<meta http-equiv="refresh" content="0;url=//evil.example">', "<a href=//evil.example>x</a>",
]
ODD = [
    "", " ", "\t", "\r\n", "\x00", "\x1b[31m", "\u202e", "\ufeff", "\u2028", "\u200b", "null", "None", "0", "-1", "é",
    "😀", "..", ".", "../../etc/passwd", "..%2F..%2F", "%00", "%2F", "%252F", "%", "%zz", "/", "//", "\\", "?", "?a=1",
    "#", "#x", ";", ";jsessionid=1", "&", "=", "+", "~", "@", ":", "'", '"', "`", "|", "^", "[", "]", "{", "}",
]
LATIN1_PRINTABLE = st.characters(codec="latin-1", exclude_categories=["Cc"])
LONG = st.builds(operator.mul, st.sampled_from(["A", "é", "<", "%", "9", "😀", "dsr-", "v1.", "&a=", "\r\n"]),
                 st.integers(min_value=41, max_value=4000))  # quoted, at most ~50 kB: httpx's URL limit is 64 kB
HOSTILE_TEXT = st.one_of(
    st.sampled_from(XSS + ODD),
    st.text(max_size=120),
    st.text(LATIN1_PRINTABLE, max_size=40),
    st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Co"]), max_size=12),
    LONG,
)

# Digits of other scripts: str.isdigit() says yes to all of them, int() to most; none is an ASCII digit.
DIGIT_SCRIPTS = [
    "⁰¹²³⁴⁵⁶⁷⁸⁹", "₀₁₂₃₄₅₆₇₈₉", "٠١٢٣٤٥٦٧٨٩", "۰۱۲۳۴۵۶۷۸۹", "०१२३४५६७८९", "０１２３４５６７８９",
    "".join(chr(0x1D7CE + i) for i in range(10)), "⓪①②③④⑤⑥⑦⑧⑨",
]
SEPARATORS_ACCEPTED = [" ", "-", ".", "\u00a0", "\u202f", "\t", "  ", " - "]
SEPARATORS_REFUSED = ["\u2009", "\u3000", "_", "/", ",", "\n", "\u200b", "·", "+", "\x00"]
PADDING = [" ", "\t", "\n", "\r\n", "\u3000", "\u00a0", "\x1c", "\u2028"]
LOOKALIKES = {"0": "Oo", "1": "IiLl"}  # the old digit codes' look-alikes: no code holds these characters now


def _full_width(ch: str) -> str:
    """The full-width form of an ASCII letter or digit (never equal to it once upper-cased)."""
    return chr(ord(ch) + 0xFEE0)

# Code near-misses and look-alikes, as (name, function of (code, i, k)); the oracle decides which are right.
CODE_VARIANTS: dict[str, Any] = {
    "as is": lambda c, i, k: c,
    "spaced": lambda c, i, k: c[:3] + SEPARATORS_ACCEPTED[k % len(SEPARATORS_ACCEPTED)] + c[3:],
    "every digit spaced": lambda c, i, k: SEPARATORS_ACCEPTED[k % len(SEPARATORS_ACCEPTED)].join(c),
    "odd separator": lambda c, i, k: c[:3] + SEPARATORS_REFUSED[k % len(SEPARATORS_REFUSED)] + c[3:],
    "padded": lambda c, i, k: PADDING[k % len(PADDING)] + c + PADDING[i % len(PADDING)],
    "look-alike": lambda c, i, k: "".join(
        LOOKALIKES[d][k % len(LOOKALIKES[d])] if d in LOOKALIKES and (j + k) % 2 == 0 else d for j, d in enumerate(c)),
    "dotless i for 1": lambda c, i, k: c.replace("1", "ı"),
    "other-script digit": lambda c, i, k: c[:i] + _full_width(c[i]) + c[i + 1:],
    "other-script code": lambda c, i, k: "".join(_full_width(d) for d in c),
    "changed digit": lambda c, i, k: c[:i] + CODE_ALPHABET[(CODE_ALPHABET.index(c[i]) + 1 + k % 30) % 31] + c[i + 1:],
    "transposed": lambda c, i, k: c[:i % 5] + c[i % 5 + 1] + c[i % 5] + c[i % 5 + 2:],
    "dropped digit": lambda c, i, k: c[:i] + c[i + 1:],
    "added digit": lambda c, i, k: c[:i] + CODE_ALPHABET[k % 31] + c[i:],
    "prefixed": lambda c, i, k: ["+", "-", "0", "#", "\u200b", "\ufeff", "²"][k % 7] + c,
    "over-long": lambda c, i, k: c + " " * (45 + 10 * k),
    "doubled": lambda c, i, k: c + c,
    "as a number": lambda c, i, k: c.lower(),  # (codes are letters and digits now: lower case instead)
    "negative": lambda c, i, k: "-" + c[1:],
    "float": lambda c, i, k: c + ".0",
}


RIGHT_SPELLINGS = ["as is", "spaced", "every digit spaced", "padded", "look-alike", "dotless i for 1"]
NEAR_MISSES = sorted(set(CODE_VARIANTS) - set(RIGHT_SPELLINGS))  # some are right all the same: the oracle decides
ALWAYS_WRONG = ["odd separator", "other-script digit", "other-script code", "changed digit", "dropped digit",
                "added digit", "over-long", "doubled", "negative", "float"]


def code_variants(real: str, names: list[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda name, i, k: CODE_VARIANTS[name](real, i, k), st.sampled_from(names),
                     st.integers(min_value=0, max_value=5), st.integers(min_value=0, max_value=30))


def near_miss_codes(real: str) -> st.SearchStrategy[str]:
    """Near-misses of ``real`` (a few are right all the same), sometimes anything."""
    near = code_variants(real, NEAR_MISSES)
    return st.one_of(near, near, near, st.from_regex(rf"[{CODE_ALPHABET}]{{8}}", fullmatch=True), HOSTILE_TEXT)


def right_codes(real: str) -> st.SearchStrategy[str]:
    """Mostly ``real`` as a person may type it (spaces, look-alikes...), sometimes a near-miss."""
    right = code_variants(real, RIGHT_SPELLINGS)
    return st.one_of(right, right, right, code_variants(real, NEAR_MISSES), HOSTILE_TEXT)


REFERENCE_VARIANTS: dict[str, Any] = {
    "as is": lambda r, i, k: r,
    "lower": lambda r, i, k: r.lower(),
    "upper": lambda r, i, k: r.upper(),
    "mixed": lambda r, i, k: "".join(ch.upper() if (j + k) % 2 else ch.lower() for j, ch in enumerate(r)),
    "padded": lambda r, i, k: PADDING[k % len(PADDING)] + r + PADDING[i % len(PADDING)],
    "padded to 60": lambda r, i, k: r + " " * 42,
    "junk to 41": lambda r, i, k: r + " " * 22 + "x",
    "underscore": lambda r, i, k: r.replace("-", "_", 1 + k % 3),
    "no prefix": lambda r, i, k: r[4:],
    "other-script year": lambda r, i, k: r[:4] + "".join(DIGIT_SCRIPTS[k % len(DIGIT_SCRIPTS)][int(d)] for d in r[4:8])
    + r[8:],
    "changed": lambda r, i, k: r[:12 + i] + "ABCDEFGHJKMNPQRSTVWXYZ0123456789"[k] + r[13 + i:],
    "truncated": lambda r, i, k: r[:-1 - i % 3],
    "extra": lambda r, i, k: r + "ABCDEFGHJKMNPQRSTVWXYZ0123456789"[k],
    "nul": lambda r, i, k: r + "\x00",
    "zero-width": lambda r, i, k: r[:6] + "\u200b" + r[6:],
    "long s": lambda r, i, k: r.replace("s", "ſ"),
}


SAME_REFERENCE = ["as is", "lower", "upper", "mixed", "padded", "padded to 60"]  # one request, typed another way
NEAR_REFERENCES = sorted(set(REFERENCE_VARIANTS) - set(SAME_REFERENCE))


def reference_variants(real: list[str], names: list[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda r, name, i, k: REFERENCE_VARIANTS[name](r, i, k), st.sampled_from(real),
                     st.sampled_from(names), st.integers(min_value=0, max_value=5),
                     st.integers(min_value=0, max_value=31))


def references(real: list[str]) -> st.SearchStrategy[str]:
    made_up = st.from_regex(r"(dsr|DSR|Dsr)-20[0-9]{2}-[01][0-9]-[0-9A-Z]{6}", fullmatch=True)
    return st.one_of(reference_variants(real, SAME_REFERENCE), reference_variants(real, SAME_REFERENCE),
                     reference_variants(real, sorted(REFERENCE_VARIANTS)),
                     made_up.filter(lambda r: r.upper() != SURVIVOR.upper()), HOSTILE_TEXT)


# --- tokens and paths -------------------------------------------------------------------------------------------------

URLSAFE = string.ascii_letters + string.digits + "-_"
B64 = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def same_signature_bits(token: str, other: str) -> bool:
    """Whether ``other`` differs from ``token`` only in the two unused low bits of the signature's last base64
    character (43 characters carry 256 bits): the app takes those as the same token, see
    :func:`test_a_token_differing_only_in_unused_signature_bits_is_refused`."""
    head, _, mac = token.rpartition(".")
    other_head, _, other_mac = other.rpartition(".")
    if head != other_head or len(mac) != len(other_mac) or mac[:-1] != other_mac[:-1] or not mac:
        return False
    return other_mac[-1] in B64 and B64.index(mac[-1]) >> 2 == B64.index(other_mac[-1]) >> 2


def tamper(token: Token, how: str, index: int, chars: str) -> Token | None:
    text = token.text
    i = index % len(text)
    head, _, mac = text.rpartition(".")
    body_head = head.partition(".")[2]
    changed = {
        "flip": lambda: text[:i] + (chars[0] if chars[0] != text[i] else "AB"[text[i] == "A"]) + text[i + 1:],
        "insert": lambda: text[:i] + chars + text[i:],
        "delete": lambda: text[:i] + text[i + 1:],
        "truncate": lambda: text[:i],
        "append": lambda: text + chars,
        "swap case": lambda: text.swapcase(),
        "upper": lambda: text.upper(),
        "version": lambda: ["v2", "v0", "V1", "v01", "v1 ", "v", "v1.v1"][index % 7] + text[2:],
        "padding": lambda: text + "=" * (1 + index % 3),
        "standard base64": lambda: text.replace("-", "+").replace("_", "/"),
        "no signature": lambda: head,
        "other signature": lambda: f"{head}.{mac[::-1]}",
        "empty body": lambda: f"v1..{mac}",
        "swap segments": lambda: f"v1.{mac}.{body_head}",
        "doubled": lambda: text + "." + text,
        "percent-encoded": lambda: quote(text, safe="").replace(".", "%2E"),
        "trailing newline": lambda: text + ["\n", "\r\n", " ", "\t", "\x00"][index % 5],
    }[how]()
    if changed == text or same_signature_bits(text, changed):
        return None
    return Token(changed, how=f"{how} ({token.how})")


TAMPERINGS = ["flip", "flip", "flip", "insert", "delete", "truncate", "append", "swap case", "upper", "version",
              "padding", "standard base64", "no signature", "other signature", "empty body", "swap segments",
              "doubled", "percent-encoded", "trailing newline"]


def forged_tokens(authentic: list[Token], foreign: list[str]) -> st.SearchStrategy[Token]:
    """Anything but an issued token: tampered ones, tokens of the other page or another key ring, hostile text."""
    hostile = st.one_of(
        HOSTILE_TEXT,
        st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),  # lone surrogates
        st.from_regex(r"v[0-9]{1,3}\.[A-Za-z0-9_-]{1,400}\.[A-Za-z0-9_-]{43}", fullmatch=True),  # shaped, unsigned
        st.builds(operator.mul, st.sampled_from(["A", "v1.", "%2F", "é", "."]),
                  st.integers(min_value=MAX_TOKEN_LENGTH - 3, max_value=8_000)),
    )
    tampered = st.builds(tamper, st.sampled_from(authentic), st.sampled_from(TAMPERINGS), st.integers(0, 10**4),
                         st.text(st.sampled_from(URLSAFE + ".=+/%~ é"), min_size=1, max_size=3))
    return st.one_of(
        tampered.filter(lambda t: t is not None),
        tampered.filter(lambda t: t is not None),
        st.sampled_from(foreign).map(lambda t: Token(t, how="foreign")),
        hostile.map(lambda t: Token(t)),
        hostile.map(lambda t: Token(t)),
    )


PATH_MODES = st.sampled_from(["exact", "exact", "pchar", "raw"])
PCHAR_SAFE = "!$&'()*+,;=:@~"


def segment(token: str, mode: str) -> str:
    """The token as a path segment. ``exact`` and ``pchar`` decode back to the token on the server (``pchar``
    leaves the sub-delimiters a path may hold raw); ``raw`` also leaves ``/``, ``.`` and ``%`` alone, so the
    path may split, normalise (``..``) or decode twice: only the invariants are checked then."""
    if mode == "raw":
        return quote(token, safe=PCHAR_SAFE + "/.%", errors="surrogatepass")
    encoded = quote(token, safe="" if mode == "exact" else PCHAR_SAFE, errors="surrogatepass")
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


ROUTES = re.compile(r"/verify|/health|/(verify|exports)/[^/]+")


def routed(token: Token, prefix: str, method: str) -> int | None:
    """The status routing alone decides, before the page's own code runs (None: the page decides).

    A path ending in "/" is redirected (307) to the same path without its trailing slashes when that one is a
    route (Starlette's ``redirect_slashes``): "/verify/" (an empty token) to the code form, "/exports/x%2F"
    (a token ending in "/") to "/exports/x"."""
    path = f"{prefix}/{token.text}"
    if path.endswith("/"):
        return 307 if ROUTES.fullmatch(path.rstrip("/")) else 404
    if "/" in token.text:
        return 404
    if method not in ("GET", "POST"):
        return 405
    return None


def encodable(text: str) -> bool:
    return not any("\ud800" <= ch <= "\udfff" for ch in text)


def as_served(token: Token, mode: str, issued: list[Token]) -> Token | None:
    """The token the app's path parameter holds, or None when that is not predictable here: a lone surrogate
    (it arrives as U+FFFD), a raw "/" or dot segment (the path goes elsewhere). A raw segment is decoded once,
    so an issued token with its dots sent as "%2E" *is* that token."""
    if not encodable(token.text):
        return None
    if mode != "raw":
        return token
    raw = segment(token.text, "raw")
    if "/" in raw or raw in (".", ".."):
        return None
    decoded = unquote(raw)
    if decoded == token.text:
        return token
    return next((t for t in issued if t.text == decoded), Token(decoded, how=f"decoded ({token.how})"))


def csrf_values(links: DownloadLinks, other: DownloadLinks, token: str,
                authentic: list[Token]) -> st.SearchStrategy[str]:
    """Mostly the token's own CSRF value; else another link's, the other page's for this token, near-misses."""
    own = links.form_token(token) if encodable(token) else "not-a-csrf-value"
    others = [links.form_token(t.text) for t in authentic] + ([other.form_token(token)] if encodable(token) else [])
    near = [own.lower(), own.upper(), f" {own}", f"{own} ", own[:-1], own + "=", own * 2, ""]
    return st.one_of(st.just(own), st.just(own), st.just(own), st.just(own), st.sampled_from(others),
                     st.sampled_from(near), HOSTILE_TEXT)


# --- form bodies ------------------------------------------------------------------------------------------------------

FORM_TYPES = [  # all accepted: the media type, any case, parameters ignored
    FORM_TYPE, FORM_TYPE, FORM_TYPE, FORM_TYPE + "; charset=utf-8", "Application/X-WWW-Form-URLEncoded",
    FORM_TYPE + ";", FORM_TYPE + " ; charset=latin-1", " " + FORM_TYPE + "\t", FORM_TYPE + "\u00a0",
]
OTHER_TYPES = [
    None, "", "text/plain", "multipart/form-data; boundary=x", "application/json", FORM_TYPE + "x", FORM_TYPE + "2",
    "text/html; " + FORM_TYPE, "application/x-www-form", "x-www-form-urlencoded", FORM_TYPE + "\x00",
    "application/x-www-form-urlencodéd", FORM_TYPE.replace("-", "_"),
]
CONTENT_TYPES = st.one_of(
    st.sampled_from(FORM_TYPES), st.sampled_from(FORM_TYPES), st.sampled_from(FORM_TYPES), st.sampled_from(OTHER_TYPES),
    st.text(LATIN1_PRINTABLE, max_size=50),
).map(lambda s: None if s is None else s.encode("latin-1"))  # header values travel as latin-1
ODD_LENGTHS = ["0", "1", "4096", "4097", "5000", "99999999999999999999999", "²", "¹²", "-1", "1e3", " 12", "0x10", "",
               "12, 12", "1 2", "+12"]
RAW_BODIES = st.one_of(
    st.binary(max_size=400),
    st.sampled_from([b"", b"&&&", b"=", b"==", b"%", b"%zz", b"a=%ff", b"\xff\xfe", b"a=1;b=2", b"form", b"\x00",
                     b"+", b"&=&=", b"a" * 3000, b"\xef\xbb\xbfa=1", b"a=%C0%AF", b"a=%ED%A0%80"]),
)
EXTRA_NAMES = st.one_of(st.sampled_from(["x", "", "Form", "FORM", "form ", " form", "form[]", "answer[]", "ANSWER",
                                         "code ", "Reference", "reference[]", "csrf", "_method", "pad"]),
                        st.text(max_size=12))


def form_type(content_type: str | None) -> bool:
    """What the pages accept: the media type, case-insensitively, parameters ignored."""
    return (content_type or "").partition(";")[0].strip().lower() == FORM_TYPE


def declared_too_large(content_length: str | None) -> bool:
    return content_length is not None and content_length.isascii() and content_length.isdigit() \
        and int(content_length) > MAX_FORM_BYTES


@dataclass(frozen=True)
class Body:
    content: bytes
    content_type: bytes | None
    content_length: bytes | None = None  # an odd header of our own; None: what httpx computes
    chunked: bool = False
    fields: dict[str, str] | None = None  # what a readable form says (first value of each name)
    readable: bool | None = True  # False: must be refused as unreadable (400); None: raw bytes, unknown

    def __repr__(self) -> str:
        return (f"Body({self.content[:400]!r}{'...' if len(self.content) > 400 else ''}, len={len(self.content)}, "
                f"type={self.content_type!r}, length={self.content_length!r}, chunked={self.chunked})")

    def refusal(self) -> int | None:
        """The status a page must answer before looking at any field (413, 415, 400), or None."""
        declared = None if self.content_length is None else self.content_length.decode("latin-1")
        if len(self.content) > MAX_FORM_BYTES or declared_too_large(declared):
            return 413
        if not form_type(None if self.content_type is None else self.content_type.decode("latin-1")):
            return 415
        if self.readable is False:
            return 400
        return None


def encode_pairs(pairs: list[tuple[str, str]], how: str) -> str:
    if how == "plus":
        return "&".join(f"{quote_plus(n)}={quote_plus(v)}" for n, v in pairs)
    if how == "percent":
        return "&".join(f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in pairs)

    def esc(s: str) -> str:  # "raw": only what would change the parse is escaped; the rest goes as UTF-8
        return "".join(quote(ch, safe="") if ch in "%&=+" else ch for ch in s)

    return "&".join(f"{esc(n)}={esc(v)}" for n, v in pairs)


@st.composite
def mutated(draw: st.DrawFn, core: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The plausible pairs with a field dropped, duplicated (hostile value first or last), extras added, or so
    many extras that the form has more than 10 fields."""
    pairs = list(core)
    how = draw(st.sampled_from(["as is", "as is", "as is", "drop", "duplicate", "extra", "shuffle", "many"]))
    if how == "drop" and pairs:
        del pairs[draw(st.integers(0, len(pairs) - 1))]
    elif how == "duplicate" and pairs:
        name = draw(st.sampled_from([n for n, _ in pairs]))
        pairs.insert(draw(st.integers(0, len(pairs))), (name, draw(HOSTILE_TEXT)))
    elif how == "extra":
        for pair in draw(st.lists(st.tuples(EXTRA_NAMES, HOSTILE_TEXT), min_size=1, max_size=4)):
            pairs.insert(draw(st.integers(0, len(pairs))), pair)
    elif how == "shuffle":
        pairs = draw(st.permutations(pairs))
    elif how == "many":
        pairs += [(f"f{i}", "1") for i in range(draw(st.integers(5, 14)))]
    return pairs


@st.composite
def form_bodies(draw: st.DrawFn, core: list[tuple[str, str]]) -> Body:
    """A body carrying ``core`` (the plausible fields), mutated, encoded in one of several ways, sized and typed."""
    road = draw(st.sampled_from(["clean"] * 4 + ["hostile"] * 2 + ["raw"]))
    if road == "raw":
        return Body(draw(RAW_BODIES), draw(CONTENT_TYPES), chunked=draw(st.booleans()), fields=None, readable=None)
    if road == "clean":  # what a browser sends, in one of the accepted spellings
        pairs = draw(st.one_of(st.just(core), st.just(core), mutated(core)))
        how = draw(st.sampled_from(["plus", "percent", "raw"]))
        fields: dict[str, str] = {}
        for name, value in pairs:
            fields.setdefault(name, value)
        return Body(encode_pairs(pairs, how).encode("utf-8"), draw(st.sampled_from(FORM_TYPES)).encode("latin-1"),
                    chunked=draw(st.integers(0, 5)) == 0, fields=fields if len(pairs) <= 10 else None,
                    readable=len(pairs) <= 10)
    pairs = draw(mutated(core))
    how = draw(st.sampled_from(["plus", "plus", "plus", "percent", "raw", "bad escape", "bad utf-8"]))
    size = draw(st.sampled_from(["as is"] * 8 + ["limit - 1", "limit", "limit + 1", "twice the limit", "2 MiB"]))
    if size != "as is":
        base = len(encode_pairs([*pairs, ("pad", "")], how).encode("utf-8"))
        target = {"limit - 1": MAX_FORM_BYTES - 1, "limit": MAX_FORM_BYTES, "limit + 1": MAX_FORM_BYTES + 1,
                  "twice the limit": 2 * MAX_FORM_BYTES, "2 MiB": 2 * 1024 * 1024}[size]
        pairs = [*pairs, ("pad", "x" * max(0, target - base - (8 if how.startswith("bad") else 0)))]
    text = encode_pairs(pairs, how)
    content = text.encode("utf-8")
    if how == "bad escape":  # a percent-escape that is not UTF-8
        content += b"&bad=%E9"
    elif how == "bad utf-8":  # a raw byte that is not UTF-8
        content += b"&bad=\xe9t"
    readable = how in ("plus", "percent", "raw") and len(pairs) <= 10  # the pages read at most 10 fields
    fields = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    length = draw(st.one_of(st.none(), st.none(), st.none(), st.none(), st.sampled_from(ODD_LENGTHS)))
    return Body(
        content,
        draw(CONTENT_TYPES),
        None if length is None else length.encode("latin-1"),
        chunked=draw(st.integers(0, 5)) == 0,
        fields=fields if readable else None,
        readable=readable,
    )


METHODS = st.sampled_from(["POST", "GET", "POST", "PUT", "DELETE", "PATCH"])
FORM_METHODS = st.sampled_from(["POST", "POST", "GET"])  # where the pages do their work
HEADERS = st.fixed_dictionaries({}, optional={
    "Accept-Language": st.one_of(
        st.sampled_from(["fr", "en", "en-GB,en;q=0.9", "de", "*", "en;q=0", "en;q=1.5", "fr;q=abc", ",,,", "x" * 600,
                         "en;q=0.5, fr;q=0.5", "EN", "en-<script>", "fr;q=-1, en"]),
        st.text(LATIN1_PRINTABLE, max_size=80)).map(lambda s: s.encode("latin-1")),
    "Cookie": st.one_of(
        st.sampled_from(["form=x", "session=<script>alert(1)</script>", 'a="><b', "=;=;", "x" * 4000]),
        st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=80)).map(lambda s: s.encode()),
    "X-Forwarded-For": st.sampled_from([b"<script>", b"127.0.0.1, 10.0.0.1", b"\xff"]),
    "Referer": st.sampled_from([b"javascript:alert(1)", b"https://evil.example/"]),
})


# --- the oracles ------------------------------------------------------------------------------------------------------

_SEPARATORS = str.maketrans("", "", " -.\u00a0\u202f\t")
def code_matches(typed: str, code: str, *, longest: int) -> bool:
    """The documented tolerance: surrounding blanks, spaces/dashes/dots inside, any case (the alphabet has no
    look-alikes to translate: no 0, O, 1, I or L)."""
    return len(typed) <= longest and typed.strip().upper().translate(_SEPARATORS) == code


def request_id_of(typed: str) -> str:
    """What ``/verify`` makes of a typed reference: trimmed, cut to 40, ``dsr-`` any case, the rest upper-cased."""
    reference = typed.strip()[:40]
    return "dsr-" + reference[4:].upper() if reference.lower().startswith("dsr-") else reference


# ``\d`` is Unicode's: "dsr-٢٠٢٦-03-7KQ3FJ" is taken as well-formed (a request of its own: a wrong code, not a
# match), so /verify answers it 403 and counts it, where an ASCII-only check would answer 400.
WELL_FORMED = re.compile(r"dsr-\d{4}-\d{2}-[0-9A-Z]{6}")


def answer_proof(typed: str, code: str, request_id: str) -> str | None:
    """Which proof a download answer is: the code, or None (the reference is no answer: issue 12)."""
    return "code" if code_matches(typed, code, longest=50) else None


def check_no_secret(markup: Markup, *secrets: str) -> None:
    lowered = markup.visible.lower()
    for secret in secrets:
        assert secret.lower() not in lowered, f"{secret!r} disclosed"


# --- 1. /verify/{token} -------------------------------------------------------------------------------------------

LINK_STATUSES = {200, 307, 400, 403, 404, 405, 410, 413, 415}


def link_case(site: Site, seen: Counter[str], token: Token, mode: str, method: str, headers: dict[str, bytes],
              data: st.DataObject) -> None:
    """One request to ``/verify/{token}``, checked against the model."""
    path = "/verify/" + segment(token.text, mode)
    served = as_served(token, mode, site.link_tokens)
    body = None
    if method != "GET":
        for_token = served.text if served is not None else token.text
        csrf = data.draw(csrf_values(site.identity, site.downloads, for_token, site.link_tokens), label="csrf")
        body = data.draw(form_bodies([("form", csrf)]), label="body")
    calls = len(site.confirm.calls)
    response = site.http.request(method, path, body, headers)
    new_calls = site.confirm.calls[calls:]
    seen[f"{method} {response.status_code}"] += 1
    assert response.status_code in LINK_STATUSES, response.status_code
    if response.status_code == 307:
        check_redirect(response)
        assert new_calls == []
        assert served is None or routed(served, "/verify", method) == 307
        return
    markup = check_page(response)
    if served is None:
        assert new_calls == [], "a mangled path confirmed an identity"
        assert response.status_code != 200 or markup.action() in (None, "/verify"), markup.action()
        return
    token = served
    state = token.state(site.clock.now)

    expected = routed(token, "/verify", method) or {"invalid": 403, "expired": 410}.get(state)
    if expected is None and method == "POST":
        assert body is not None
        expected = body.refusal()
        if expected is None and body.readable is None:  # raw bytes: unreadable, or no CSRF field
            assert response.status_code in (400, 403), response.status_code
            assert new_calls == []
            return
        if expected is None and (body.fields or {}).get("form") != site.identity.form_token(token.text):
            expected = 403
    if expected is not None:
        assert response.status_code == expected, (response.status_code, expected)
        assert new_calls == [], f"a {expected} confirmed an identity: {new_calls}"
        if state != "valid":
            check_no_secret(markup, HAMMERED, UNKNOWN)
            if len(token.text) >= 16:
                assert token.text not in response.text
        return

    # An authentic link: GET shows the button (and confirms nothing), POST with its CSRF field confirms.
    assert token.request_id is not None
    if method == "GET":
        assert response.status_code == 200
        assert new_calls == [], "opening the link confirmed the identity (mail scanners open links)"
        assert markup.hidden_form_value() == site.identity.form_token(token.text)
        assert markup.action() == f"/verify/{quote(token.text, safe='')}"
        assert token.request_id in markup.visible  # the page names the request the button confirms
        return
    assert new_calls == [(token.request_id, "link")], new_calls
    outcome = site.confirm.outcomes[-1]
    assert response.status_code == (410 if outcome == "unknown" else 200)
    key = {"confirmed": "confirmed_title", "already": "already_title", "unknown": "closed_title"}[outcome]
    assert markup.title == VERIFY_TEXT[markup.lang][key]
    seen["confirmed"] += 1


def test_verify_link_pages_refuse_every_token_but_the_issued_ones(site: Site) -> None:
    seen: Counter[str] = Counter()

    @FUZZ
    @given(token=forged_tokens(site.link_tokens, site.foreign_for_links), mode=PATH_MODES, method=METHODS,
           headers=HEADERS, data=st.data())
    def fuzz(token: Token, mode: str, method: str, headers: dict[str, bytes], data: st.DataObject) -> None:
        link_case(site, seen, token, mode, method, headers, data)

    fuzz()
    print(dict(seen))  # shown with -s
    # Every answer was checked against the model above (a raw "%2E" for "." is the issued token itself, and
    # may confirm); here, only a guard against a vacuous run.
    assert seen["POST 403"] + seen["GET 403"] >= 50, dict(seen)
    check_survivors(site)


def test_verify_link_pages_with_issued_tokens_and_hostile_requests(site: Site) -> None:
    seen: Counter[str] = Counter()

    @FUZZ
    @given(token=st.sampled_from(site.link_tokens), mode=PATH_MODES, method=FORM_METHODS, headers=HEADERS,
           data=st.data())
    def fuzz(token: Token, mode: str, method: str, headers: dict[str, bytes], data: st.DataObject) -> None:
        link_case(site, seen, token, mode, method, headers, data)

    fuzz()
    print(dict(seen))  # shown with -s
    # Guard against a vacuous run: the fuzz reached the confirmations, and the refusals around them.
    assert seen["confirmed"] >= 5 and seen["GET 200"] >= 3 and seen["POST 403"] >= 5, dict(seen)
    assert seen["GET 410"] + seen["POST 410"] >= 5, dict(seen)
    check_survivors(site)


# --- 2. /verify: reference + code -------------------------------------------------------------------------------------

CODE_FORM_STATUSES = {200, 400, 403, 410, 413, 415, 429}


def test_verify_code_form_never_breaks_and_confirms_only_the_real_pair(site: Site) -> None:
    seen: Counter[str] = Counter()
    limits = site.verify_limits

    @FUZZ
    @given(method=st.sampled_from(["POST", "POST", "POST", "GET"]), headers=HEADERS, data=st.data())
    def fuzz(method: str, headers: dict[str, bytes], data: st.DataObject) -> None:
        body = None
        if method != "GET" and data.draw(st.sampled_from([False] * 5 + [True]), label="plain"):
            # A person typing the right pair in a browser, as is: without it, a run of 200 draws reached the right
            # pair through the mutations below as rarely as once, and the guard at the end failed one run in three.
            real = site.identity.request_code(ANSWERED)
            pair = {"reference": ANSWERED, "code": real}
            body = Body(encode_pairs(list(pair.items()), "plus").encode(), FORM_TYPE.encode(), fields=pair)
        elif method != "GET":
            # ANSWERED twice: the only request whose right code confirms (UNKNOWN's is refused since issue 12).
            typed_reference = data.draw(references([HAMMERED, ANSWERED, ANSWERED, UNKNOWN]), label="reference")
            request_id = request_id_of(typed_reference)
            known = request_id if WELL_FORMED.fullmatch(request_id) else HAMMERED
            real = site.identity.request_code(known)
            typed_code = data.draw(near_miss_codes(real) if known == HAMMERED else right_codes(real), label="code")
            body = data.draw(form_bodies([("reference", typed_reference), ("code", typed_code)]), label="body")
        calls = len(site.confirm.calls)
        now = site.clock.now
        response = site.http.request(method, "/verify", body, headers)
        new_calls = site.confirm.calls[calls:]
        seen[f"{method} {response.status_code}"] += 1
        assert response.status_code in CODE_FORM_STATUSES, response.status_code
        markup = check_page(response)
        check_no_secret(markup, *(site.identity.request_code(r) for r in (HAMMERED, ANSWERED, UNKNOWN)))

        if method == "GET":
            assert response.status_code == 200 and new_calls == []
            assert (markup.element("reference") or {}).get("value") == ""
            return
        assert body is not None
        refused = body.refusal()
        if refused is not None or body.fields is None:  # 413/415/400 before any field is read; raw bytes: 400
            assert response.status_code == (refused or 400), (response.status_code, refused)
            assert new_calls == []
            return
        typed_reference = body.fields.get("reference", "")
        request_id = request_id_of(typed_reference)
        if not WELL_FORMED.fullmatch(request_id):
            assert response.status_code == 400 and new_calls == []
            # The one reflection, on purpose: escaped, it reads back exactly as typed (trimmed, cut to 40).
            assert (markup.element("reference") or {}).get("value") == typed_reference.strip()[:40]
            return
        left = limits.left(request_id, now)
        if left is not None:
            check_locked(response, left)
            assert new_calls == [], "a locked request was confirmed"
            seen["locked"] += 1
            site.unlock(limits, request_id)
            return
        typed_code = body.fields.get("code", "")
        # A reference the ledger does not know takes no code, not even its own (issue 12): a wrong answer.
        if not code_matches(typed_code, site.identity.request_code(request_id), longest=50) \
                or request_id not in EXISTING:
            assert response.status_code == 403, response.status_code
            assert new_calls == [], f"a wrong code confirmed {new_calls}"
            assert (markup.element("reference") or {}).get("value") == typed_reference.strip()[:40]
            assert (markup.element("code") or {}).get("value") is None  # the code typed is never echoed
            limits.fail(request_id, now)
            return
        assert new_calls == [(request_id, "code")], new_calls
        limits.succeed(request_id)
        outcome = site.confirm.outcomes[-1]
        assert response.status_code == (410 if outcome == "unknown" else 200)
        key = {"confirmed": "confirmed_title", "already": "already_title", "unknown": "closed_title"}[outcome]
        assert markup.title == VERIFY_TEXT[markup.lang][key]
        seen[f"confirmed {outcome}"] += 1

    fuzz()
    print(dict(seen))  # shown with -s, or on failure
    # Guard against a vacuous run: right pairs (confirmed, already confirmed, or closed) and the lock were reached.
    assert seen["confirmed confirmed"] + seen["confirmed already"] >= 3, dict(seen)
    assert seen["locked"] >= 1 and seen["POST 403"] >= 10 and seen["POST 400"] >= 10, dict(seen)
    check_survivors(site)


# Requests carrying the right code that are refused before it is looked at: they neither count nor reset.
NOISE = ["wrong content type", "too large", "declared too large", "not UTF-8", "too many fields", "bad reference",
         "no reference"]


def noise_request(kind: str, reference: str, code: str) -> Body:
    fields = {"reference": reference, "code": code}
    content = encode_pairs(list(fields.items()), "plus").encode()
    form = FORM_TYPE.encode()
    return {
        "wrong content type": Body(content, b"text/plain"),
        "too large": Body(content + b"&pad=" + b"x" * MAX_FORM_BYTES, form),
        "declared too large": Body(content, form, content_length=b"99999"),
        "not UTF-8": Body(content + b"&x=%FF", form),
        "too many fields": Body(content + b"".join(b"&f%d=1" % i for i in range(10)), form),
        "bad reference": Body(encode_pairs([("reference", reference + "-"), ("code", code)], "plus").encode(), form),
        "no reference": Body(encode_pairs([("code", code)], "plus").encode(), form),
    }[kind]


@dataclass
class LockSite:
    clock: Clock
    identity: IdentityLinks
    confirm: Confirmer
    http: SyncClient
    ids: Iterator[int] = field(default_factory=itertools.count)

    def __repr__(self) -> str:
        return f"LockSite(now={self.clock.now.isoformat()})"

    def fresh_reference(self) -> str:
        number = next(self.ids)
        alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
        suffix = "".join(alphabet[(number >> (5 * i)) & 31] for i in range(6))
        return f"dsr-2026-04-{suffix}"

    def post(self, reference: str, code: str) -> httpx.Response:
        content = encode_pairs([("reference", reference), ("code", code)], "plus").encode()
        return self.http.request("POST", "/verify", Body(content, FORM_TYPE.encode()))


@pytest.fixture(scope="module")
def lock_site() -> Iterator[LockSite]:
    clock = Clock()
    identity = IdentityLinks(TEST_KEYRING, ttl=IDENTITY_TTL)
    confirm = Confirmer(known=None)
    # Every fresh reference of these examples is a request the ledger knows (else no code would confirm it).
    app = pages_app(DownloadLinks(TEST_KEYRING), Audit(), clock, identity, confirm, exists=lambda _: True)
    built = LockSite(clock, identity, confirm, SyncClient(app))
    try:
        yield built
    finally:
        built.http.close()


def spelled(reference: str) -> st.SearchStrategy[str]:
    """The same request, typed another way (case, surrounding blanks): one counter for all spellings."""
    return reference_variants([reference], SAME_REFERENCE)


@FUZZ
@given(data=st.data())
def test_five_wrong_codes_lock_a_request_for_15_minutes_even_against_the_right_code(
    lock_site: LockSite, data: st.DataObject
) -> None:
    """A fresh request each example: 5 wrong codes (any spelling of its reference; refused requests carrying the
    right code in between count for nothing), then 429 for the right code too, for exactly 15 minutes."""
    reference = lock_site.fresh_reference()
    code = lock_site.identity.request_code(reference)
    # No filters: each reference has its own code, and Hypothesis wants the same draws to mean the same thing.
    right = code_variants(code, RIGHT_SPELLINGS)
    wrong = code_variants(code, ALWAYS_WRONG)
    noise = data.draw(st.lists(st.tuples(st.sampled_from(NOISE), st.integers(0, MAX_ATTEMPTS)), max_size=4),
                      label="noise")
    calls = len(lock_site.confirm.calls)

    for attempt in range(MAX_ATTEMPTS + 1):
        for kind, slot in noise:  # the right code, refused before it is looked at: neither counts nor resets
            if slot == attempt:
                body = noise_request(kind, data.draw(spelled(reference)), data.draw(right))
                response = lock_site.http.request("POST", "/verify", body)
                assert response.status_code in (400, 413, 415), (kind, response.status_code)
                check_page(response)
        if attempt == MAX_ATTEMPTS:
            break
        typed = data.draw(wrong, label="wrong")
        assert not code_matches(typed, code, longest=50)
        response = lock_site.post(data.draw(spelled(reference), label="spelling"), typed)
        assert response.status_code == 403, (attempt, response.status_code)
    assert lock_site.confirm.calls[calls:] == []

    locked_at = lock_site.clock.now
    for typed in (data.draw(right, label="right code"), data.draw(wrong, label="wrong code"), code):
        response = lock_site.post(data.draw(spelled(reference)), typed)
        check_locked(response, LOCKOUT)
        check_page(response)
    # Later in the window: still locked (more wrong codes do not extend it), Retry-After counts down.
    waited = timedelta(seconds=data.draw(st.integers(1, int(LOCKOUT.total_seconds()) - 1), label="waited"))
    lock_site.clock.now = locked_at + waited
    for typed in (data.draw(wrong), data.draw(right)):
        check_locked(lock_site.post(data.draw(spelled(reference)), typed), LOCKOUT - waited)
    assert lock_site.confirm.calls[calls:] == [], "a locked request was confirmed"

    lock_site.clock.now = locked_at + LOCKOUT  # the window is over: the right code works at once
    response = lock_site.post(data.draw(spelled(reference)), data.draw(right))
    assert response.status_code == 200, response.status_code
    assert lock_site.confirm.calls[calls:] == [(reference, "code")]


# --- 3. /exports/{token} ------------------------------------------------------------------------------------------

EXPORT_STATUSES = {200, 400, 403, 404, 405, 410, 413, 415, 429}


def export_case(site: Site, seen: Counter[str], token: Token, mode: str, method: str, headers: dict[str, bytes],
                data: st.DataObject) -> None:
    """One request to ``/exports/{token}``, checked against the model."""
    limits = site.export_limits
    authentic = site.download_tokens
    path = "/exports/" + segment(token.text, mode)
    served = as_served(token, mode, authentic)
    own_code = site.downloads.code((served or authentic[0]).text)
    body = None
    if method != "GET":
        csrf = data.draw(csrf_values(site.downloads, site.identity, (served or token).text, authentic), label="csrf")
        target = (served or token).request_id or HAMMERED
        if target == HAMMERED:  # near-misses: this request gets locked
            answers = st.one_of(near_miss_codes(own_code), near_miss_codes(own_code), near_miss_codes(own_code),
                                st.just(site.downloads.code(authentic[1].text)),  # the other link's code
                                st.just(site.identity.request_code(HAMMERED)),  # the identity code, same request
                                reference_variants([HAMMERED], NEAR_REFERENCES), references([ANSWERED]))
        else:  # mostly the right code: served (or gone); now and then the reference, which is no answer (issue 12)
            answers = st.one_of(right_codes(own_code), right_codes(own_code), right_codes(own_code),
                                right_codes(own_code), reference_variants([target], SAME_REFERENCE),
                                references([target]))
        answer = data.draw(answers, label="answer")
        body = data.draw(form_bodies([("form", csrf), ("answer", answer)]), label="body")
    now = site.clock.now
    audits = len(site.audit.calls)
    response = site.http.request(method, path, body, headers)
    new_audits = site.audit.calls[audits:]
    seen[f"{method} {response.status_code}"] += 1
    if response.status_code == 307:  # a token ending in "/", or a raw "../verify/" landing on "/verify/"
        check_redirect(response)
        assert new_audits == []
        assert served is None or routed(served, "/exports", method) == 307
        return
    assert response.status_code in EXPORT_STATUSES, response.status_code
    zipped = response.headers.get("content-type") == "application/zip"
    markup = None
    if not zipped:
        markup = check_page(response)
        check_no_secret(markup, HAMMERED, ANSWERED, UNKNOWN, own_code)
    if served is None:
        assert not zipped and new_audits == [], "a mangled path served a bundle"
        return
    token = served
    state = token.state(now)

    expected = routed(token, "/exports", method) or {"invalid": 403, "expired": 410}.get(state)
    if expected is None and method == "POST":
        assert body is not None and token.request_id is not None
        left = limits.left(token.request_id, now)
        if left is not None:
            check_locked(response, left)
            assert not zipped and new_audits == []
            seen["locked"] += 1
            site.unlock(limits, token.request_id)
            return
        expected = body.refusal()
        if expected is None and body.readable is None:  # raw bytes: unreadable, or no CSRF field (not counted)
            assert response.status_code in (400, 403) and "answer-error" not in response.text
            assert not zipped and new_audits == []
            return
        if expected is None and (body.fields or {}).get("form") != site.downloads.form_token(token.text):
            expected = 403  # the CSRF field: not a wrong answer, not counted
    if expected is not None:
        assert response.status_code == expected, (response.status_code, expected)
        assert not zipped and new_audits == [], "a refused request served a bundle"
        assert "answer-error" not in response.text
        if len(token.text) >= 16 and state != "valid":
            assert token.text not in response.text
        return

    assert token.request_id is not None
    if method == "GET":
        assert response.status_code == 200 and markup is not None and new_audits == []
        assert markup.hidden_form_value() == site.downloads.form_token(token.text)
        action, _, query = (markup.action() or "").partition("?")  # the page's language kept: ?lang=fr or en, no more
        assert action == f"/exports/{quote(token.text, safe='')}" and query in ("", "lang=fr", "lang=en")
        return
    assert body is not None and body.fields is not None
    answer = body.fields.get("answer", "")
    proof = answer_proof(answer, own_code, token.request_id)
    if proof is None:
        assert response.status_code == 403 and not zipped and new_audits == [], "a wrong answer served a bundle"
        assert "answer-error" in response.text
        limits.fail(token.request_id, now)
        return
    limits.succeed(token.request_id)
    if token.request_id == UNKNOWN:  # right answer, bundle deleted: 410, nothing recorded
        assert response.status_code == 410 and not zipped and new_audits == []
        seen["gone"] += 1
        return
    assert response.status_code == 200 and zipped, response.status_code
    assert response.content == ZIP
    assert response.headers["content-disposition"] == f'attachment; filename="{token.request_id}.zip"'
    assert len(new_audits) == 1, new_audits
    request_id, event, details = new_audits[0]
    assert (request_id, event) == (token.request_id, "export_downloaded")
    assert details["ip_hash"] == site.downloads.ip_hash("127.0.0.1")
    assert details["proof"] == proof, (answer, details)
    seen[f"served by {proof}"] += 1


def test_export_pages_refuse_every_token_but_the_issued_ones(site: Site) -> None:
    seen: Counter[str] = Counter()

    @FUZZ
    @given(token=forged_tokens(site.download_tokens, site.foreign_for_downloads), mode=PATH_MODES, method=METHODS,
           headers=HEADERS, data=st.data())
    def fuzz(token: Token, mode: str, method: str, headers: dict[str, bytes], data: st.DataObject) -> None:
        export_case(site, seen, token, mode, method, headers, data)

    fuzz()
    print(dict(seen))  # shown with -s
    assert seen["POST 403"] + seen["GET 403"] >= 50, dict(seen)  # a guard: each answer was checked above
    check_survivors(site)


def test_export_pages_with_issued_tokens_and_hostile_requests(site: Site) -> None:
    seen: Counter[str] = Counter()
    # Weighted: the hammered request's valid links (to reach its lock) and the answered one (to be served).
    weights = {"link": 3, "second link": 3, "link to a request answered right": 6, "link to a deleted bundle": 2}
    issued = [t for t in site.download_tokens for _ in range(weights.get(t.how, 1))]

    @FUZZ
    @given(token=st.sampled_from(issued), mode=PATH_MODES, method=FORM_METHODS, headers=HEADERS, data=st.data())
    def fuzz(token: Token, mode: str, method: str, headers: dict[str, bytes], data: st.DataObject) -> None:
        export_case(site, seen, token, mode, method, headers, data)

    fuzz()
    print(dict(seen))  # shown with -s
    # Guard against a vacuous run: bundles were served, the lock was reached, and wrong answers refused.
    assert seen["served by code"] >= 3 and seen["locked"] >= 1, dict(seen)
    assert seen["POST 403"] >= 10 and seen["GET 200"] >= 3, dict(seen)
    check_survivors(site)


# --- 4. after the fuzzing: the real pairs still work ------------------------------------------------------------------


def check_survivors(site: Site) -> None:
    """A correctly issued link and its code/answer still succeed: the fuzz broke nothing but the lockout of the
    request it hammered, and that one lifts when its window is over."""
    http = site.http
    assert site.clock.now < START + DOWNLOAD_TTL, "the fuzz moved the clock past the links' lifetime"

    # The link and its button.
    page = http.request("GET", f"/verify/{site.survivor_link}")
    assert page.status_code == 200
    csrf = check_page(page).hidden_form_value()
    assert csrf is not None
    calls = len(site.confirm.calls)
    body = Body(encode_pairs([("form", csrf)], "plus").encode(), FORM_TYPE.encode())
    assert http.request("POST", f"/verify/{site.survivor_link}", body).status_code == 200
    assert site.confirm.calls[calls:] == [(SURVIVOR, "link")]

    # The code form, for a request the fuzz never touched and for the one it hammered (once its lock is served).
    for reference in (SURVIVOR, HAMMERED):
        left = site.verify_limits.left(reference, site.clock.now)
        if left is not None:
            site.unlock(site.verify_limits, reference)
        calls = len(site.confirm.calls)
        body = Body(encode_pairs([("reference", reference), ("code", site.identity.request_code(reference))],
                                 "plus").encode(), FORM_TYPE.encode())
        response = http.request("POST", "/verify", body)
        assert response.status_code == 200, (reference, response.status_code)
        assert site.confirm.calls[calls:] == [(reference, "code")]
        site.verify_limits.succeed(reference)

    # The download page, same two requests.
    for token, request_id in ((site.survivor_download, SURVIVOR), (site.download_tokens[0].text, HAMMERED)):
        if site.export_limits.left(request_id, site.clock.now) is not None:
            site.unlock(site.export_limits, request_id)
        page = http.request("GET", f"/exports/{token}")
        assert page.status_code == 200
        csrf = check_page(page).hidden_form_value()
        assert csrf is not None
        audits = len(site.audit.calls)
        body = Body(encode_pairs([("form", csrf), ("answer", site.downloads.code(token))], "plus").encode(),
                    FORM_TYPE.encode())
        response = http.request("POST", f"/exports/{token}", body)
        assert response.status_code == 200 and response.content == ZIP, (request_id, response.status_code)
        recorded = [(r, e, d["proof"]) for r, e, d in site.audit.calls[audits:]]
        assert recorded == [(request_id, "export_downloaded", "code")]
        site.export_limits.succeed(request_id)


def test_the_real_links_codes_and_answers_still_work_after_all_the_fuzzing(site: Site) -> None:
    """Runs after the fuzz tests above have hammered the shared app (each of them also ends with this check)."""
    check_survivors(site)


# --- bugs found by the fuzzing, fixed: regressions ---------------------------------------------------------------


def test_a_token_differing_only_in_unused_signature_bits_is_refused() -> None:
    clock = Clock()
    identity = IdentityLinks(TEST_KEYRING, ttl=IDENTITY_TTL)
    downloads = DownloadLinks(TEST_KEYRING)
    confirm = Confirmer(known=None)
    http = SyncClient(pages_app(downloads, Audit(), clock, identity, confirm))
    try:
        for links, prefix in ((identity, "/verify"), (downloads, "/exports")):
            token = links.issue(HAMMERED, now=START).token
            variants = [token[:-1] + ch for ch in B64
                        if ch != token[-1] and same_signature_bits(token, token[:-1] + ch)]
            assert len(variants) == 3  # 43 characters carry 258 bits for a 256-bit signature
            for variant in variants:
                assert http.request("GET", f"{prefix}/{variant}").status_code == 403, (prefix, variant)
        variant = variants[0]
        body = Body(encode_pairs([("form", identity.form_token(variant))], "plus").encode(), FORM_TYPE.encode())
        http.request("POST", f"/verify/{variant}", body)
        assert confirm.calls == [], "a token that is not the one issued confirmed an identity"
    finally:
        http.close()


def test_a_download_code_has_no_look_alikes_and_the_reference_is_no_answer() -> None:
    downloads = DownloadLinks(TEST_KEYRING)
    audit = Audit()
    http = SyncClient(pages_app(downloads, audit, Clock()))
    try:
        link = downloads.issue(HAMMERED, now=START)
        assert not set(link.code) & set("0O1IL")
        # The code is random and may itself start with "d", so which answers are the reference is said, not guessed.
        answers = ((HAMMERED, False), (HAMMERED.upper(), False), (f"{link.code[:4]}-{link.code[4:]}".lower(), True))
        for typed, is_the_code in answers:
            body = Body(encode_pairs([("form", downloads.form_token(link.token)), ("answer", typed)], "plus").encode(),
                        FORM_TYPE.encode())
            response = http.request("POST", f"/exports/{link.token}", body)
            served = response.status_code == 200 and response.content == ZIP
            assert served == is_the_code, typed
        assert [details["proof"] for _, _, details in audit.calls] == ["code"]
    finally:
        http.close()


async def test_concurrent_wrong_answers_cannot_exceed_the_attempt_limit() -> None:
    """30 wrong answers sent together, their bodies slowly: exactly MAX_ATTEMPTS are judged, the rest wait.

    Changed with the shared counters: the right code is sent after the batch, not inside it. Judged in a
    worker thread, a right code inside the batch may now be judged before the fifth wrong one (and rightly
    served, starting the count again), so the batch is wrong answers only."""
    downloads = DownloadLinks(TEST_KEYRING)
    audit = Audit()
    app = pages_app(downloads, audit, Clock())
    link = downloads.issue(HAMMERED, now=START)
    csrf = downloads.form_token(link.token)
    answers = [f"{n:06d}" for n in range(40) if f"{n:06d}" != link.code][:30]
    started, gate = asyncio.Event(), asyncio.Event()
    waiting = 0

    async def post(http: httpx.AsyncClient, answer: str, *, slow: bool = True) -> httpx.Response:
        async def slow_body() -> AsyncIterator[bytes]:  # a client sending its body slowly, as any client may
            nonlocal waiting
            waiting += 1
            if waiting == len(answers):
                started.set()
            await gate.wait()
            yield f"form={csrf}&answer={answer}".encode()

        content: Any = slow_body() if slow else f"form={csrf}&answer={answer}"
        return await http.post(f"/exports/{link.token}", content=content, headers={"Content-Type": FORM_TYPE})

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        tasks = [asyncio.create_task(post(http, answer)) for answer in answers]
        await asyncio.wait_for(started.wait(), timeout=30)  # every request is past the lock check, reading its body
        gate.set()
        statuses = Counter(r.status_code for r in await asyncio.gather(*tasks))
        right = await post(http, link.code, slow=False)
    assert statuses == {403: MAX_ATTEMPTS, 429: len(answers) - MAX_ATTEMPTS}, dict(statuses)
    assert right.status_code == 429, "the bundle was served after more than MAX_ATTEMPTS wrong answers"
    assert audit.calls == []


def _flood(http: SyncClient, count: int, wrong_each: int) -> None:
    """Wrong codes for ``count`` made-up (well-formed) references, each from its own client address: anyone can
    send these, no link needed, and addresses are cheap (IPv6)."""
    for number in range(count):
        body = Body(encode_pairs([("reference", f"dsr-2026-05-Z{number:05d}"), ("code", "000000")], "plus").encode(),
                    FORM_TYPE.encode())
        for _ in range(wrong_each):
            assert http.request("POST", "/verify", body, client=f"2001:db8::{number + 1:x}").status_code in (403, 429)


@pytest.fixture
def flooded() -> Iterator[tuple[SyncClient, IdentityLinks, Confirmer, Guards]]:
    """The code form's app and its counters. The in-memory table these tests were written against (and its
    MAX_TRACKED) is gone: made-up references are now counted per client and reference, never per request."""
    clock = Clock()
    identity = IdentityLinks(TEST_KEYRING, ttl=IDENTITY_TTL)
    confirm = Confirmer(known=None)
    guards = throwaway_guards()
    http = SyncClient(pages_app(DownloadLinks(TEST_KEYRING), Audit(), clock, identity, confirm, guards=guards))
    try:
        yield http, identity, confirm, guards
    finally:
        http.close()


def _code_post(http: SyncClient, reference: str, code: str, client: str = CLIENT) -> int:
    body = Body(encode_pairs([("reference", reference), ("code", code)], "plus").encode(), FORM_TYPE.encode())
    return http.request("POST", "/verify", body, client=client).status_code


def _counted_requests(guards: Guards) -> set[str]:
    """The references counted per request (``verify:ref:<reference>`` rows)."""
    from sqlalchemy import select
    from sqlmodel import Session, col

    with Session(guards._engine) as session:
        keys = session.scalars(select(col(AttemptLimitRow.key)))
        return {key.removeprefix("verify:ref:") for key in keys if key.startswith("verify:ref:")}


def test_a_flood_of_made_up_references_does_not_reset_the_count_of_a_real_one(
    flooded: tuple[SyncClient, IdentityLinks, Confirmer, Guards],
) -> None:
    http, identity, confirm, guards = flooded
    code = identity.request_code(HAMMERED)
    wrong = "000000" if code != "000000" else "111111"
    assert [_code_post(http, HAMMERED, wrong) for _ in range(MAX_ATTEMPTS - 1)] == [403] * (MAX_ATTEMPTS - 1)
    _flood(http, 25, 1)
    assert _counted_requests(guards) == {HAMMERED}  # the made-up ones take no per-request row
    assert _code_post(http, HAMMERED, wrong) == 403  # the 5th wrong code for this request...
    assert _code_post(http, HAMMERED, code, client="192.0.2.80") == 429, "more than 5 wrong codes and still not locked"
    assert confirm.calls == []


def test_a_flood_of_made_up_references_does_not_lift_a_lock(
    flooded: tuple[SyncClient, IdentityLinks, Confirmer, Guards],
) -> None:
    http, identity, confirm, guards = flooded
    code = identity.request_code(HAMMERED)
    wrong = "000000" if code != "000000" else "111111"
    assert [_code_post(http, HAMMERED, wrong) for _ in range(MAX_ATTEMPTS)] == [403] * MAX_ATTEMPTS
    assert _code_post(http, HAMMERED, code, client="192.0.2.80") == 429
    _flood(http, 25, MAX_ATTEMPTS)
    assert _counted_requests(guards) == {HAMMERED}
    assert _code_post(http, HAMMERED, code, client="192.0.2.81") == 429, "the lock was lifted by others' failures"
    assert confirm.calls == []


def test_made_up_references_lock_no_one_else_and_look_like_real_ones(
    flooded: tuple[SyncClient, IdentityLinks, Confirmer, Guards],
) -> None:
    """A client typing a made-up reference sees what it would see for a real one (403 five times, then 429 with
    the same Retry-After); the lock is that client's alone, and nobody else's answers are affected."""
    http, identity, confirm, guards = flooded
    made_up = "dsr-2026-05-ZZZZZZ"
    real_code = identity.request_code(HAMMERED)
    wrong = "000000" if real_code != "000000" else "111111"
    for reference, client in ((made_up, "192.0.2.1"), (HAMMERED, "192.0.2.2")):
        answers = [_code_post(http, reference, wrong, client=client) for _ in range(MAX_ATTEMPTS + 1)]
        assert answers == [403] * MAX_ATTEMPTS + [429], (reference, answers)
    # The made-up reference is locked only for the client that typed it...
    assert _code_post(http, made_up, wrong, client="192.0.2.3") == 403
    # ... and the real one for everyone: another client with the right code waits too.
    assert _code_post(http, HAMMERED, real_code, client="192.0.2.3") == 429
    assert _counted_requests(guards) == {HAMMERED} and confirm.calls == []


def test_one_client_gets_a_bounded_number_of_wrong_answers_whatever_the_references(
    flooded: tuple[SyncClient, IdentityLinks, Confirmer, Guards],
) -> None:
    http, identity, confirm, _ = flooded
    attacker, honest = "198.51.100.7", "198.51.100.8"
    answers = [_code_post(http, f"dsr-2026-05-Y{n:05d}", "000000", client=attacker)
               for n in range(MAX_CLIENT_ATTEMPTS + 1)]
    assert answers == [403] * MAX_CLIENT_ATTEMPTS + [429]
    # Locked: even a real reference with its right code waits, for that client only.
    assert _code_post(http, SURVIVOR, identity.request_code(SURVIVOR), client=attacker) == 429
    assert _code_post(http, SURVIVOR, identity.request_code(SURVIVOR), client=honest) == 200
    assert confirm.calls == [(SURVIVOR, "code")]
