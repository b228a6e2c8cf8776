"""The public request form over real HTTP (uvicorn on 127.0.0.1, an httpx client keeping cookies).

The sink is the tests' own, but its validation is the real one: it runs ``intake.submission.prepare``
with settings from a temporary ``DSR_HOME``, so a submission the form lets through is one the engine
accepts. The https cases go through ``httpx.ASGITransport`` (no TLS server needed to see ``Secure``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from dsr.config.profile import ControllerProfile, load_profile
from dsr.config.settings import Settings
from dsr.domain.model import RequestKind
from dsr.web.serve import serve_app
from intake.service import Accepted, RateLimited, TriageItem
from intake.submission import Submission, SubmissionError, prepare
from intake.web.form import ADDRESS_SHOWN_FOR, CSRF_COOKIE, CSRF_LIFETIME, MAX_FORM_BYTES, form_router
from intake.web.pages import CSP
from tests.harness import http_client

KEY = b"test-form-key-0123456789abcdef!!"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script>&"\''
MONTHS = {
    "fr": [
        "janvier", "février", "mars", "avril", "mai", "juin",
        "juillet", "août", "septembre", "octobre", "novembre", "décembre",
    ],
    "en": [
        "January", "February", "March", "April", "May", "June",
        "July", "August", "September", "October", "November", "December",
    ],
}  # fmt: skip


def spoken_date(day: date, lang: str) -> str:
    """How the confirmation must write a date (written independently of the code under test)."""
    number = "1er" if lang == "fr" and day.day == 1 else str(day.day)
    return f"{number}\u00a0{MONTHS[lang][day.month - 1]} {day.year}"


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class RecordingSink:
    """An ``IntakeSink`` that validates with the real ``prepare`` and records every call."""

    settings: Settings
    now: datetime = NOW
    calls: list[tuple[Submission, str | None]] = field(default_factory=list)
    accepted: list[Accepted] = field(default_factory=list)
    fail_with: Exception | None = None  # raised by the next call
    attached: bool = False
    fixed: Accepted | None = None  # returned instead of the computed answer

    async def submit(self, submission: Submission, *, client: str | None = None) -> Accepted:
        self.calls.append((submission, client))
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc
        request = prepare(submission, self.settings, now=self.now)
        answer = self.fixed or Accepted(
            reference=request.request_id,
            kind=request.kind,
            received_on=request.received_on,
            deadline=request.deadlines.normal.due,
            extended_deadline=request.deadlines.extended.due,
            attached=self.attached,
        )
        self.accepted.append(answer)
        return answer

    async def triage(self, item: TriageItem) -> str:  # pragma: no cover - the form never triages
        raise AssertionError("the form does not triage")


@dataclass
class FormApp:
    sink: RecordingSink
    clock: Clock
    http: httpx.AsyncClient
    base_url: str
    prefix: str = ""

    async def form(self, lang: str | None = "fr", *, query: str = "") -> tuple[httpx.Response, str]:
        headers = {"Accept-Language": lang} if lang else {}
        page = await self.http.get(f"{self.prefix}/{query}", headers=headers)
        assert page.status_code == 200, page.text
        return page, csrf_value(page.text)

    async def post(
        self,
        fields: dict[str, str] | None = None,
        *,
        lang: str = "fr",
        csrf: str | None = "auto",
        http: httpx.AsyncClient | None = None,
        **kw: Any,
    ) -> httpx.Response:
        """Fill in a fresh form (unless ``csrf`` is given or None) and post it."""
        data = {"kind": "access", "email": "camille.durand@example.org", "name": "Camille Durand", "details": ""}
        data.update(fields or {})
        data["language"] = lang
        if csrf == "auto":
            _, csrf = await self.form(lang)
        if csrf is not None:
            data["csrf"] = csrf
        return await (http or self.http).post(f"{self.prefix}/?lang={lang}", data=data, **kw)


def csrf_value(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the form carries its CSRF field"
    return match.group(1)


def make_app(sink: RecordingSink, clock: Clock, *, prefix: str = "", controller: str = "",
             **options: object) -> FastAPI:
    app = FastAPI()
    app.include_router(
        form_router(sink, csrf_key=KEY, public_path=prefix, clock=clock, controller_name=controller,
                    **options),  # type: ignore[arg-type]
        prefix=prefix,
    )
    return app


@contextlib.asynccontextmanager
async def serve_form(
    home: Path, *, prefix: str = "", controller: str = "Boutique Exemple SAS", **options: object,
) -> AsyncIterator[FormApp]:
    """The form under uvicorn on 127.0.0.1 (a free port), stopped on exit."""
    sink = RecordingSink(Settings.from_env({"DSR_HOME": str(home)}))
    clock = Clock()
    running = await serve_app(make_app(sink, clock, prefix=prefix, controller=controller, **options), port=0)
    try:
        async with http_client(base_url=running.url, timeout=30) as http:
            yield FormApp(sink, clock, http, running.url, prefix)
    finally:
        await running.stop()


_VOID = {"input", "meta", "br", "hr", "img", "link"}


class _Elements(HTMLParser):
    """Every start tag with its attributes, plus the text inside elements that have an id."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text_by_id: dict[str, str] = {}
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attributes))
        if tag in _VOID:
            return
        if "id" in attributes:
            self.text_by_id.setdefault(attributes["id"], "")
            self._open.append(attributes["id"])
        else:
            self._open.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag not in _VOID and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for element_id in self._open:
            if element_id:
                self.text_by_id[element_id] += data


def parse(page: str) -> _Elements:
    parser = _Elements()
    parser.feed(page)
    return parser


def by_id(page: str, element_id: str) -> dict[str, str]:
    for _, attrs in parse(page).elements:
        if attrs.get("id") == element_id:
            return attrs
    raise AssertionError(f"no element with id {element_id!r}")


def assert_safe_page(response: httpx.Response) -> None:
    """Security headers, and not a trace of script (the form must work without JavaScript)."""
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["content-type"].startswith("text/html")
    assert "<script" not in response.text.lower()
    assert re.search(r"\son[a-z]+\s*=", response.text, re.IGNORECASE) is None  # no inline event handler
    assert "javascript:" not in response.text.lower()


def assert_field_error(page: str, field_id: str, message: str, *, error_id: str | None = None) -> None:
    """The error is next to the field (described by it, marked invalid) and linked from the summary."""
    error_id = error_id or f"{field_id.split('-')[0]}-error"
    parsed = parse(page)
    assert message in parsed.text_by_id[error_id]
    control = by_id(page, field_id)
    assert error_id in control["aria-describedby"].split()
    assert control["aria-invalid"] == "true"
    summary = re.search(r'<div class="summary" role="alert".*?</div>', page, re.DOTALL)
    assert summary, "errors are summarised at the top in an alert"
    assert f'href="#{field_id}"' in summary.group(0)
    assert message in summary.group(0)


# ------------------------------------------------------------------------------------------- the form page


async def test_form_is_french_by_header_with_everything_a_subject_needs(form_app: FormApp) -> None:
    page, csrf = await form_app.form("fr-FR,fr;q=0.9,en;q=0.5")
    assert_safe_page(page)
    text = page.text
    assert '<html lang="fr">' in text
    assert "Faire une demande sur vos données personnelles" in text
    assert "Boutique Exemple SAS détient sur vous" in text  # the controller is named
    assert "Obtenir une copie de vos données et savoir comment elles sont utilisées." in text
    assert "ce qui est faux et la bonne valeur" in text
    assert "confirmer votre adresse électronique" in text
    assert "un délai d’un mois" in text and "prolongé de deux mois" in text
    assert "Ce que nous faisons des informations de ce formulaire" in text
    assert '<input type="hidden" name="language" value="fr">' in text
    assert 'action="/?lang=fr"' in text
    assert "Que souhaitez-vous faire\u00a0?" in text  # French typography: non-breaking space before ?
    assert "'" not in re.sub(r"<[^>]*>", "", text)  # typographic apostrophes only, in the visible text
    # The language switch is visible and the other language is one link away.
    assert 'href="/?lang=en" lang="en" hreflang="en">English</a>' in text
    assert "dsr_form=" in page.headers["set-cookie"]
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert "secure" not in cookie  # plain http (loopback): a Secure cookie would never come back
    assert csrf.count(".") == 1


async def test_form_is_english_by_header(form_app: FormApp) -> None:
    page, _ = await form_app.form("en-GB,en;q=0.9")
    assert '<html lang="en">' in page.text
    assert "Make a request about your personal data" in page.text
    assert "Get a copy of your data and know how it is used." in page.text
    assert "choose each piece of information to correct and give the correct value" in page.text
    assert "within one month" in page.text and "extended by two months" in page.text
    assert '<input type="hidden" name="language" value="en">' in page.text
    assert 'href="/?lang=fr" lang="fr" hreflang="fr">Français</a>' in page.text


async def test_language_switch_wins_over_the_header(form_app: FormApp) -> None:
    english, _ = await form_app.form("fr-FR", query="?lang=en")
    assert '<html lang="en">' in english.text
    french, _ = await form_app.form("en-GB", query="?lang=fr")
    assert '<html lang="fr">' in french.text
    unknown, _ = await form_app.form("en-GB", query="?lang=de")  # not offered: the header decides
    assert '<html lang="en">' in unknown.text
    nothing, _ = await form_app.form(None)
    assert '<html lang="fr">' in nothing.text  # the default


async def test_form_without_controller_name_speaks_for_us(tmp_path: Path) -> None:
    async with serve_form(tmp_path, controller="") as running:
        page, _ = await running.form("fr")
        assert "les données personnelles que nous détenons sur vous" in page.text


async def test_form_is_accessible(form_app: FormApp) -> None:
    for lang, required in (("fr", "(obligatoire)"), ("en", "(required)")):
        page, _ = await form_app.form(lang)
        parsed = parse(page.text)
        labels = {attrs["for"] for tag, attrs in parsed.elements if tag == "label"}
        controls = [
            attrs
            for tag, attrs in parsed.elements
            if tag in ("input", "textarea", "select") and attrs.get("type") != "hidden"
        ]
        assert {c["id"] for c in controls} == {
            "kind-access",
            "kind-rectification",
            "kind-erasure",
            "kind-portability",
            "kind-stop_marketing",
            "kind-objection",
            "kind-post_mortem",
            "kind-restriction",
            "email",
            "name",
            "deceased_email",
            "deceased_name",
            "quality",
            *(f"change_{part}_{row}" for row in (1, 2, 3) for part in ("field", "value")),
            *(f"ground-{ground}" for ground in "abcd"),
            "details",
        }
        for control in controls:
            assert control["id"] in labels, f"{control['id']} has a <label for>"
            for described in control.get("aria-describedby", "").split():
                assert described in parsed.text_by_id, f"{control['id']} is described by an existing element"
        # The kind choice is a group with a legend, marked required in words.
        fieldset = re.search(r"<fieldset>\s*<legend>(.*?)</legend>(.*?)</fieldset>", page.text, re.DOTALL)
        assert fieldset and required in fieldset.group(1)
        assert fieldset.group(2).count('type="radio"') == 8
        assert re.search(rf'<label for="email">[^<]*<span class="marker">{re.escape(required)}</span>', page.text)
        assert 'role="alert"' not in page.text  # no error yet
        assert 'aria-invalid="true"' not in page.text
        # Visible focus on every control (no outline removed).
        assert "input:focus" in page.text and "outline:3px" in page.text and "outline:0" not in page.text


# -------------------------------------------------------------------------------------------- success path


@pytest.mark.parametrize("lang", ["fr", "en"])
async def test_submission_redirects_to_a_confirmation_with_the_deadline_and_no_reference(
    form_app: FormApp, lang: str,
) -> None:
    response = await form_app.post(
        {"kind": "rectification", "details": "Mon nom est Durand, pas Durant.\r\nMerci."}, lang=lang
    )
    assert response.status_code == 303
    assert response.headers["cache-control"] == "no-store"
    location = response.headers["location"]
    assert location.startswith("/submitted?")

    assert len(form_app.sink.calls) == 1
    submission, client = form_app.sink.calls[0]
    assert client == "127.0.0.1"
    assert submission.kind == "rectification"
    assert submission.email == "camille.durand@example.org"
    assert submission.name == "Camille Durand"
    assert submission.details == "Mon nom est Durand, pas Durant.\nMerci."  # a browser's CRLF, one line break
    assert submission.channel == "form"
    assert submission.language == lang
    accepted = form_app.sink.accepted[0]

    page = await form_app.http.get(location)
    assert page.status_code == 200
    assert_safe_page(page)
    assert f'<html lang="{lang}">' in page.text
    assert accepted.reference not in page.text and accepted.reference not in location  # by email only
    assert spoken_date(accepted.deadline, lang) in page.text
    if lang == "fr":
        assert "Vérifiez votre boîte de réception" in page.text
        assert "La référence de votre demande figure dans le courriel" in page.text
        assert "Corriger vos données" in page.text
    else:
        assert "Check your inbox" in page.text
        assert "Your request’s reference is in the email" in page.text
        assert "Correct your data" in page.text
    assert "already under way" not in page.text and "déjà en cours" not in page.text
    # The address given is repeated (a typo is seen), the company named; the URL holds neither in clear.
    assert '<dd id="address" class="ref">camille.durand@example.org</dd>' in page.text
    assert '<p class="org">Boutique Exemple SAS</p>' in page.text
    assert "camille" not in location.lower() and "example.org" not in location

    again = await form_app.http.get(location)  # a reload shows the page again and submits nothing
    assert again.status_code == 200
    assert len(form_app.sink.calls) == 1


async def test_confirmation_dates_in_each_language(form_app: FormApp) -> None:
    form_app.sink.fixed = Accepted(
        reference="dsr-2026-11-7KQ3FJ",
        kind=RequestKind.ERASURE,
        received_on=date(2026, 11, 1),
        deadline=date(2026, 12, 1),
        extended_deadline=date(2027, 2, 1),
    )
    location = (await form_app.post({"kind": "erasure"})).headers["location"]
    french = await form_app.http.get(location)
    assert "1er\u00a0décembre 2026" in french.text
    assert "Effacer vos données" in french.text
    english = await form_app.http.get(location.replace("lang=fr", "lang=en"))  # lang is not signed: a translation
    assert english.status_code == 200
    assert "1\u00a0December 2026" in english.text
    assert "Erase your data" in english.text


async def test_a_submission_attached_to_one_under_way_gets_the_same_neutral_confirmation(form_app: FormApp) -> None:
    """Issue 12 finding 4: typing someone else's address must not tell whether they have a request under way."""
    for lang in ("fr", "en"):
        form_app.sink.attached = False
        new = await form_app.post(lang=lang)
        form_app.sink.attached = True
        attached = await form_app.post(lang=lang)
        assert new.headers["location"] == attached.headers["location"]
        assert (await form_app.http.get(new.headers["location"])).text == \
            (await form_app.http.get(attached.headers["location"])).text


async def test_form_under_a_path_prefix(tmp_path: Path) -> None:
    async with serve_form(tmp_path, prefix="/demande") as running:
        page, _ = await running.form("fr")
        assert 'action="/demande/?lang=fr"' in page.text
        assert 'href="/demande/?lang=en"' in page.text
        response = await running.post()
        assert response.status_code == 303
        assert response.headers["location"].startswith("/demande/submitted?")
        assert (await running.http.get(response.headers["location"])).status_code == 200


async def test_two_open_tabs_both_submit(form_app: FormApp) -> None:
    _, first = await form_app.form("fr")
    _, second = await form_app.form("fr")  # the second tab keeps the browser's nonce
    assert (await form_app.post(csrf=second)).status_code == 303
    assert (await form_app.post(csrf=first)).status_code == 303
    assert len(form_app.sink.calls) == 2


async def test_https_sets_a_secure_cookie_and_hsts(tmp_path: Path) -> None:
    sink = RecordingSink(Settings.from_env({"DSR_HOME": str(tmp_path)}))
    transport = httpx.ASGITransport(app=make_app(sink, Clock()))
    async with httpx.AsyncClient(transport=transport, base_url="https://privacy.example.org") as http:
        page = await http.get("/", headers={"Accept-Language": "fr"})
        cookie = page.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        assert page.headers["strict-transport-security"].startswith("max-age=")
        data = {"kind": "portability", "email": "ines.moreau@example.fr", "language": "fr"}
        response = await http.post("/", data={**data, "csrf": csrf_value(page.text)})
        assert response.status_code == 303
        assert sink.calls[0][1] == "127.0.0.1"


# ------------------------------------------------------------------------------------------------- CSRF


def _flip(token: str, index: int) -> str:
    return token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]


async def _assert_refused(response: httpx.Response, form_app: FormApp, lang: str = "fr") -> None:
    assert response.status_code == 403, response.text
    assert_safe_page(response)
    assert f'<html lang="{lang}">' in response.text
    assert ("Rechargez le formulaire" if lang == "fr" else "Reload the form") in response.text
    assert form_app.sink.calls == []


async def test_csrf_missing_is_refused(form_app: FormApp) -> None:
    await form_app.form("fr")  # the cookie is there, the field is not
    await _assert_refused(await form_app.post(csrf=None), form_app)
    await _assert_refused(await form_app.post(csrf=None, lang="en"), form_app, "en")
    await _assert_refused(await form_app.post(csrf=""), form_app)


async def test_csrf_forged_is_refused(form_app: FormApp) -> None:
    _, csrf = await form_app.form("fr")
    await _assert_refused(await form_app.post(csrf=_flip(csrf, len(csrf) - 5)), form_app)  # MAC changed
    await _assert_refused(await form_app.post(csrf=_flip(csrf, 3)), form_app)  # issued time changed
    await _assert_refused(await form_app.post(csrf="not.a-token"), form_app)
    await _assert_refused(await form_app.post(csrf="é" * 40), form_app)
    await _assert_refused(await form_app.post(csrf=csrf + "." + csrf), form_app)
    # A value made with another key (another deployment, or an attacker's guess).
    other_sink = RecordingSink(form_app.sink.settings)
    transport = httpx.ASGITransport(app=FastAPI(routes=form_router(other_sink, csrf_key=b"x" * 32).routes))
    async with httpx.AsyncClient(transport=transport, base_url="http://other") as other:
        foreign = csrf_value((await other.get("/")).text)
    await _assert_refused(await form_app.post(csrf=foreign), form_app)


async def test_csrf_expired_or_from_the_future_is_refused(form_app: FormApp) -> None:
    _, csrf = await form_app.form("en")
    form_app.clock.now = NOW + CSRF_LIFETIME + timedelta(seconds=1)
    await _assert_refused(await form_app.post(csrf=csrf, lang="en"), form_app, "en")

    form_app.clock.now = NOW + timedelta(hours=1)
    _, future = await form_app.form("fr")
    form_app.clock.now = NOW
    await _assert_refused(await form_app.post(csrf=future), form_app)

    _, fresh = await form_app.form("fr")
    form_app.clock.now = NOW + CSRF_LIFETIME - timedelta(seconds=1)  # still valid just before expiry
    assert (await form_app.post(csrf=fresh)).status_code == 303


async def test_csrf_cookie_must_match(form_app: FormApp) -> None:
    _, csrf = await form_app.form("fr")
    form_app.http.cookies.clear()
    await _assert_refused(await form_app.post(csrf=csrf), form_app)  # no cookie

    # Another browser's cookie: each nonce belongs to its own cookie.
    async with http_client(base_url=form_app.base_url) as other:
        await other.get("/")
        await _assert_refused(await form_app.post(csrf=csrf, http=other), form_app)
        other.cookies.set(CSRF_COOKIE, "not base64!")
        await _assert_refused(await form_app.post(csrf=csrf, http=other), form_app)


# ---------------------------------------------------------------------------------------- validation errors


async def test_each_field_error_is_next_to_its_field(form_app: FormApp) -> None:
    cases = [
        ({"kind": ""}, "kind-access", "Choisissez ce que vous souhaitez faire."),
        ({"kind": "admin"}, "kind-access", "Choisissez ce que vous souhaitez faire."),
        ({"email": ""}, "email", "Saisissez votre adresse électronique."),
        ({"email": "camille@"}, "email", "Saisissez une adresse électronique valide"),
        ({"name": "N" * 201}, "name", "Votre nom doit faire au plus 200\u00a0caractères."),
        ({"name": "Camille\x00Durand"}, "name", "Ce champ contient des caractères non autorisés."),
        ({"details": "x" * 10_001}, "details", "Les précisions doivent faire au plus 10\u00a0000\u00a0caractères."),
        ({"kind": "rectification", "details": "  "}, "details", "choisissez l’information à corriger et donnez la "
         "bonne valeur, ou dites-nous ce qui est faux et la bonne valeur"),
    ]
    for fields, field_id, message in cases:
        response = await form_app.post(fields)
        assert response.status_code == 400, fields
        assert_safe_page(response)
        assert_field_error(response.text, field_id, message)
        assert response.text.count('class="error"') == 1
        assert "<title>Erreur\u00a0: " in response.text
    assert form_app.sink.calls == []


async def test_errors_in_english_and_all_at_once(form_app: FormApp) -> None:
    response = await form_app.post({"kind": "rectification", "email": "nope", "details": ""}, lang="en")
    assert response.status_code == 400
    assert '<html lang="en">' in response.text
    assert_field_error(response.text, "email", "Enter a valid email address")
    assert_field_error(response.text, "details", "For a correction, choose the information to correct and give "
                       "the correct value, or tell us what is wrong and the correct value")
    assert "Your request was not sent" in response.text
    # The values typed are kept, the choice too.
    assert 'value="nope"' in response.text
    assert re.search(r'id="kind-rectification"[^>]*checked', response.text)
    assert form_app.sink.calls == []


async def test_typed_values_are_kept_and_escaped(form_app: FormApp) -> None:
    response = await form_app.post(
        {
            "email": f"x{HOSTILE}",
            "name": HOSTILE,
            "details": f"</textarea>{HOSTILE}<textarea>",
            "kind": '"><script>',
        }
    )
    assert response.status_code == 400
    assert_safe_page(response)  # not a single <script in the page
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&quot;&#x27;"
    assert f'value="{escaped}"' in response.text  # the name
    assert f'value="x{escaped}"' in response.text  # the email
    assert f"&lt;/textarea&gt;{escaped}&lt;textarea&gt;</textarea>" in response.text
    assert response.text.count("</textarea>") == 1
    assert form_app.sink.calls == []


async def test_sink_validation_errors_are_shown_next_to_their_field(form_app: FormApp) -> None:
    # The sink is the authority: whatever it refuses is shown like the form's own checks.
    form_app.sink.fail_with = SubmissionError("name is longer than 200 characters")
    response = await form_app.post()
    assert response.status_code == 400
    assert_field_error(response.text, "name", "Votre nom doit faire au plus 200")

    form_app.sink.fail_with = SubmissionError("email is not a valid address")
    response = await form_app.post(lang="en")
    assert_field_error(response.text, "email", "Enter a valid email address")

    form_app.sink.fail_with = SubmissionError("ticket must be 1 to 64 letters")  # no field of the form: the top
    response = await form_app.post({"name": "Camille <b>Durand</b>"})
    assert response.status_code == 400
    assert 'role="alert"' in response.text
    assert "Votre demande n’a pas pu être enregistrée" in response.text
    assert "ticket" not in response.text  # the engine's English wording is not shown to the public
    assert 'value="Camille &lt;b&gt;Durand&lt;/b&gt;"' in response.text
    assert len(form_app.sink.accepted) == 0


# ------------------------------------------------------------------------------------- limits and bad input


async def test_rate_limited_is_429_with_retry_after(form_app: FormApp) -> None:
    form_app.sink.fail_with = RateLimited("client", 120)
    response = await form_app.post({"details": "à garder"})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "120"
    assert_safe_page(response)
    assert "Réessayez dans 2\u00a0minutes." in response.text
    assert "à garder</textarea>" in response.text  # nothing typed is lost
    assert form_app.sink.accepted == []

    form_app.sink.fail_with = RateLimited("subject", 30)
    response = await form_app.post(lang="en")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    assert "Try again in 1 minute." in response.text


async def test_sink_failure_is_503_and_keeps_the_form(form_app: FormApp) -> None:
    form_app.sink.fail_with = RuntimeError("temporal unavailable for camille.durand@example.org")
    response = await form_app.post({"details": "mes commandes"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "60"
    assert_safe_page(response)
    assert "Un problème temporaire" in response.text
    assert "mes commandes</textarea>" in response.text
    assert "temporal" not in response.text


async def test_too_large_is_413(form_app: FormApp) -> None:
    _, csrf = await form_app.form("en")
    body = urlencode({"csrf": csrf, "kind": "access", "email": "a@example.org", "details": "x" * MAX_FORM_BYTES})
    response = await form_app.http.post(
        "/?lang=en", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 413
    assert_safe_page(response)
    assert "The form sent is too large" in response.text
    assert form_app.sink.calls == []


async def test_long_accented_details_fit(form_app: FormApp) -> None:
    # 10,000 accented characters take 60,000 bytes once percent-encoded: still a form, not a 413.
    response = await form_app.post({"details": "é" * 10_000})
    assert response.status_code == 303
    assert form_app.sink.calls[0][0].details == "é" * 10_000


async def test_other_content_types_are_415(form_app: FormApp) -> None:
    _, csrf = await form_app.form("fr")
    as_json = await form_app.http.post("/?lang=fr", json={"csrf": csrf, "kind": "access", "email": "a@example.org"})
    assert as_json.status_code == 415
    assert_safe_page(as_json)
    multipart = await form_app.http.post(
        "/?lang=fr", data={"csrf": csrf, "kind": "access"}, files={"f": ("a.txt", b"x", "text/plain")}
    )
    assert multipart.status_code == 415
    missing = await form_app.http.post("/?lang=fr", content=b"kind=access")
    assert missing.status_code == 415
    assert form_app.sink.calls == []


@pytest.mark.parametrize(
    "body",
    [
        b"kind=access&email=a%40example.org&name=\xff\xfe",  # raw bytes that are not UTF-8
        b"kind=access&email=a%40example.org&name=%FF%FE",  # percent-encoded ones
        b"kind=access&name=%ED%A0%80",  # an encoded lone surrogate
        b"&".join(b"f%d=1" % i for i in range(50)),  # too many fields
    ],
)
async def test_unreadable_bodies_are_400_with_the_form(form_app: FormApp, body: bytes) -> None:
    _, csrf = await form_app.form("fr")
    response = await form_app.http.post(
        "/?lang=fr",
        content=body + b"&csrf=" + csrf.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"},
    )
    assert response.status_code == 400
    assert_safe_page(response)
    assert "Le formulaire n’a pas pu être lu" in response.text
    assert 'name="csrf"' in response.text  # a fresh form to fill in
    assert form_app.sink.calls == []


async def test_duplicate_and_missing_fields_are_400(form_app: FormApp) -> None:
    _, csrf = await form_app.form("fr")
    duplicate = urlencode(
        [("csrf", csrf), ("kind", "access"), ("kind", "erasure"), ("email", "a@example.org"), ("language", "fr")]
    )
    response = await form_app.http.post(
        "/?lang=fr", content=duplicate, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 400
    assert_field_error(response.text, "kind-access", "Ce champ a été envoyé plusieurs fois")

    twice = urlencode([("csrf", csrf), ("csrf", csrf), ("kind", "access"), ("email", "a@example.org")])
    response = await form_app.http.post(
        "/?lang=fr", content=twice, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 403  # an ambiguous CSRF value is no CSRF value

    response = await form_app.http.post("/?lang=fr", data={"csrf": csrf})  # nothing but the CSRF value
    assert response.status_code == 400
    assert_field_error(response.text, "kind-access", "Choisissez ce que vous souhaitez faire.")
    assert_field_error(response.text, "email", "Saisissez votre adresse électronique.")
    assert form_app.sink.calls == []


# ------------------------------------------------------------------------------------------- confirmation


async def test_forged_confirmation_is_refused(form_app: FormApp) -> None:
    location = (await form_app.post()).headers["location"]
    params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert (await form_app.http.get(location)).status_code == 200

    forgeries = [
        {**params, "kind": "erasure"},
        {**params, "due": "2030-01-01"},
        {**params, "sig": params["sig"][:-2] + "AA"},
        {**params, "due": "<script>alert(1)</script>"},
        {k: v for k, v in params.items() if k != "sig"},
        {"kind": "access", "due": "Votre compte est suspendu", "sig": ""},
        {},
    ]
    for forged in forgeries:
        response = await form_app.http.get(f"/submitted?{urlencode(forged)}")
        assert response.status_code == 403, forged
        assert_safe_page(response)
        assert "Cette page n’est pas valide" in response.text
        assert "suspendu" not in response.text and "AAAAAA" not in response.text
    response = await form_app.http.get("/submitted?ref=%FF&sig=%FF")
    assert response.status_code == 403


async def test_no_page_carries_script(form_app: FormApp) -> None:
    # Every page a subject can meet, in both languages: none has a script, all have the headers.
    pages = []
    for lang in ("fr", "en"):
        pages.append((await form_app.form(lang))[0])
        pages.append(await form_app.post({"email": "bad"}, lang=lang))
        pages.append(await form_app.post(csrf=None, lang=lang))
        location = (await form_app.post(lang=lang)).headers["location"]
        pages.append(await form_app.http.get(location))
        pages.append(await form_app.http.get(f"/submitted?lang={lang}&ref=x"))
        form_app.sink.fail_with = RateLimited("client", 60)
        pages.append(await form_app.post(lang=lang))
        pages.append(await form_app.http.post(f"/?lang={lang}", json={}))
    assert {p.status_code for p in pages} == {200, 400, 403, 415, 429}
    for page in pages:
        assert_safe_page(page)


@pytest.mark.parametrize(("lang", "header", "marketing", "other"), [
    ("fr", "fr-FR", "Ne plus recevoir nos messages commerciaux", "Vous opposer à un autre usage de vos données"),
    ("en", "en-GB", "Stop receiving our marketing", "Object to another use of your data"),
])
async def test_objections_have_their_own_choices(
    form_app: FormApp, lang: str, header: str, marketing: str, other: str,
) -> None:
    page, _ = await form_app.form(header)
    assert marketing in page.text and other in page.text
    assert 'value="stop_marketing"' in page.text and 'value="objection"' in page.text

    response = await form_app.post({"kind": "stop_marketing"}, lang=lang)
    assert response.status_code == 303
    submission, _ = form_app.sink.calls[-1]
    assert (submission.kind, submission.scope) == ("objection", "marketing")
    confirmation = await form_app.http.get(response.headers["location"])
    assert confirmation.status_code == 200 and marketing in confirmation.text

    response = await form_app.post({"kind": "objection", "details": "Vos statistiques d'usage."}, lang=lang)
    assert response.status_code == 303
    submission, _ = form_app.sink.calls[-1]
    assert (submission.kind, submission.scope) == ("objection", "")  # other processing: an operator decides
    confirmation = await form_app.http.get(response.headers["location"])
    assert other in confirmation.text


@pytest.mark.parametrize(("lang", "choice", "error"), [
    ("fr", "Les données d’une personne décédée", "Saisissez l’adresse électronique de la personne décédée."),
    ("en", "The data of a person who has died", "Enter the email address of the person who has died."),
])
async def test_a_request_about_a_deceased_person_names_them_and_the_senders_quality(
    form_app: FormApp, lang: str, choice: str, error: str,
) -> None:
    page, _ = await form_app.form(lang)
    assert choice in page.text and 'value="post_mortem"' in page.text and '<select id="quality"' in page.text

    # Without the person's address the form comes back, the error next to the field, and nothing is sent.
    response = await form_app.post({"kind": "post_mortem", "quality": "executor"}, lang=lang)
    assert response.status_code == 400 and error in response.text and form_app.sink.calls == []
    own = await form_app.post({"kind": "post_mortem", "deceased_email": "Camille.Durand@example.org"}, lang=lang)
    assert own.status_code == 400 and 'id="deceased_email-error"' in own.text and form_app.sink.calls == []

    response = await form_app.post({"kind": "post_mortem", "deceased_email": "henri.dupont@example.org",
                                    "deceased_name": "Henri Dupont", "quality": "executor"}, lang=lang)
    assert response.status_code == 303
    submission, _ = form_app.sink.calls[-1]
    assert (submission.kind, submission.email, submission.deceased_email, submission.deceased_name,
            submission.quality) == ("post_mortem", "camille.durand@example.org", "henri.dupont@example.org",
                                    "Henri Dupont", "executor")
    confirmation = await form_app.http.get(response.headers["location"])
    assert confirmation.status_code == 200 and choice in confirmation.text

    # Typed, then another kind chosen: the deceased person's fields go nowhere.
    await form_app.post({"kind": "erasure", "deceased_email": "henri.dupont@example.org", "quality": "heir"},
                        lang=lang)
    submission, _ = form_app.sink.calls[-1]
    assert (submission.kind, submission.deceased_email, submission.quality) == ("erasure", "", "")


@pytest.mark.parametrize(("lang", "choice", "ground_c", "error"), [
    ("fr", "Limiter l’utilisation de vos données", "nécessaires pour la constatation",
     "Pour une limitation, choisissez le motif de votre demande."),
    ("en", "Restrict the use of your data", "establish, exercise or defend a legal claim",
     "For a restriction, choose the reason you ask for it."),
])
async def test_a_restriction_is_chosen_with_its_ground(
    form_app: FormApp, lang: str, choice: str, ground_c: str, error: str,
) -> None:
    page, _ = await form_app.form(lang)
    assert choice in page.text and ground_c in page.text and 'value="restriction"' in page.text
    # Without a ground: the page again, the error beside the grounds, nothing submitted.
    calls = len(form_app.sink.calls)
    refused = await form_app.post({"kind": "restriction"}, lang=lang)
    assert refused.status_code == 400 and error in refused.text and len(form_app.sink.calls) == calls
    response = await form_app.post({"kind": "restriction", "ground": "c"}, lang=lang)
    assert response.status_code == 303
    submission, _ = form_app.sink.calls[-1]
    assert (submission.kind, submission.ground) == ("restriction", "c")
    confirmation = await form_app.http.get(response.headers["location"])
    assert confirmation.status_code == 200 and choice in confirmation.text
    # A ground left selected before choosing another kind goes nowhere.
    await form_app.post({"kind": "access", "ground": "a"}, lang=lang)
    submission, _ = form_app.sink.calls[-1]
    assert (submission.kind, submission.ground) == ("access", "")


async def test_confirmation_repeats_the_address_for_an_hour_and_only_a_sealed_one(form_app: FormApp) -> None:
    """Issue 18: a typo in the address went unseen; the confirmation now shows the address given."""
    response = await form_app.post({"email": "camile.durand@exmaple.org"}, lang="en")
    location = response.headers["location"]
    params = dict(parse_qsl(urlsplit(location).query))
    page = await form_app.http.get(location)
    assert page.status_code == 200 and "camile.durand@exmaple.org" in page.text
    assert "Is this address wrong?" in page.text

    # Tampered or foreign sealed values show no address (and nothing of their own), the rest of the page stays.
    for to in (params["to"][:-2] + "AA", "Y2FtaWxlQGV4YW1wbGUub3Jn", "x" * 600, ""):
        other = await form_app.http.get(f"/submitted?{urlencode({**params, 'to': to})}")
        assert other.status_code == 200 and "@" not in other.text.replace("@media", ""), to
        assert "We have received your request" in other.text and "Is this address wrong?" not in other.text

    form_app.clock.now = form_app.clock.now + ADDRESS_SHOWN_FOR + timedelta(seconds=1)  # a bookmark, later
    later = await form_app.http.get(location)
    assert later.status_code == 200 and "camile.durand" not in later.text
# ----------------------------------------------------------------------------- rectification: field and value


@pytest.mark.parametrize(("lang", "legend", "city"), [("fr", "Corrections (seulement", "Ville"),
                                                      ("en", "Corrections (only", "City")])
async def test_form_offers_the_fields_a_rectification_can_correct(form_app: FormApp, lang: str, legend: str,
                                                                  city: str) -> None:
    page, _ = await form_app.form(lang)
    assert legend in page.text
    options = re.findall(r'<option value="([a-z_0-9]*)"[^>]*>([^<]*)</option>',
                         page.text.split('id="change_field_1"', 1)[1].split("</select>", 1)[0])
    assert [value for value, _ in options] == ["", "first_name", "last_name", "email", "phone", "address_line1",
                                               "address_line2", "postcode", "city", "state", "country"]
    assert (("city", city)) in options
    assert page.text.count("<select ") == 4  # three correction rows, and the quality of a deceased person's heir


@pytest.mark.parametrize("lang", ["fr", "en"])
async def test_rectification_with_field_and_value_pairs_is_sent_with_its_changes(form_app: FormApp,
                                                                                 lang: str) -> None:
    response = await form_app.post({
        "kind": "rectification", "change_field_1": "city", "change_value_1": "  Lyon ",
        "change_field_2": "", "change_value_2": "",
        "change_field_3": "email", "change_value_3": "camille.d@example.net", "details": "",
    }, lang=lang)
    assert response.status_code == 303, response.text
    submission, _ = form_app.sink.calls[0]
    assert submission.kind == "rectification" and submission.details == ""
    assert submission.changes == {"city": "Lyon", "email": "camille.d@example.net"}
    # Free text alongside the pairs travels too.
    response = await form_app.post({"kind": "rectification", "change_field_1": "last_name",
                                    "change_value_1": "Durand", "details": "Et mon ancien nom aussi."}, lang=lang)
    assert response.status_code == 303
    assert form_app.sink.calls[1][0].changes == {"last_name": "Durand"}
    assert form_app.sink.calls[1][0].details == "Et mon ancien nom aussi."


async def test_correction_rows_are_not_sent_with_another_kind(form_app: FormApp) -> None:
    # Typed, then the person chose an erasure: the correct value is no business of an erasure.
    response = await form_app.post({"kind": "erasure", "change_field_1": "city", "change_value_1": "Lyon"})
    assert response.status_code == 303
    assert form_app.sink.calls[0][0].changes == {}


@pytest.mark.parametrize(("lang", "fields", "field_id", "message"), [
    ("fr", {"change_field_1": "city"}, "change_value_1", "Saisissez la bonne valeur."),
    ("en", {"change_field_2": "city", "change_value_2": " "}, "change_value_2", "Type the correct value."),
    ("fr", {"change_value_1": "Lyon"}, "change_field_1", "Choisissez l’information à laquelle correspond"),
    ("en", {"change_value_3": "Lyon"}, "change_field_3", "Choose the information this correct value is for."),
    ("fr", {"change_field_1": "iban", "change_value_1": "FR76"}, "change_field_1",
     "Choisissez une information dans la liste."),
    ("en", {"change_field_1": "city", "change_value_1": "Lyon", "change_field_2": "city", "change_value_2": "Paris"},
     "change_field_2", "This information is already chosen above"),
    ("fr", {"change_field_1": "email", "change_value_1": "camille@"}, "change_value_1",
     "Saisissez la bonne adresse électronique en entier"),
    ("en", {"change_field_1": "city", "change_value_1": "L" * 501}, "change_value_1",
     "The correct value must be 500 characters or fewer."),
    ("fr", {"change_field_1": "city", "change_value_1": "Ly\x00on"}, "change_value_1",
     "Ce champ contient des caractères non autorisés."),
])
async def test_each_correction_error_is_next_to_its_row(form_app: FormApp, lang: str, fields: dict[str, str],
                                                        field_id: str, message: str) -> None:
    response = await form_app.post({"kind": "rectification", **fields}, lang=lang)
    assert response.status_code == 400
    assert_safe_page(response)
    assert f'<html lang="{lang}">' in response.text
    assert_field_error(response.text, field_id, message, error_id=f"{field_id}-error")
    assert response.text.count('class="error"') == 1
    # What was typed is kept, the choice too.
    for name, value in fields.items():
        if name.startswith("change_value") and "\x00" not in value:
            assert f'value="{value}"' in response.text
        elif name.startswith("change_field") and value in ("city", "email"):
            assert re.search(rf'<select id="{name}"[^>]*>.*?<option value="{value}" selected>', response.text,
                             re.DOTALL)
    assert form_app.sink.calls == []


async def test_the_engine_refusing_the_new_address_is_shown_on_its_row(form_app: FormApp) -> None:
    form_app.sink.fail_with = SubmissionError("the new email is not a valid address")
    response = await form_app.post({"kind": "rectification", "change_field_1": "city", "change_value_1": "Lyon",
                                    "change_field_2": "email", "change_value_2": "c@example.org"}, lang="en")
    assert response.status_code == 400
    assert_field_error(response.text, "change_value_2", "Type the correct email address in full",
                       error_id="change_value_2-error")


async def test_the_form_offers_only_the_fields_the_connectors_can_correct(tmp_path: Path) -> None:
    async with serve_form(tmp_path, rectifiable=frozenset({"postcode", "city"})) as running:
        page, _ = await running.form("en")
        select = page.text.split('id="change_field_2"', 1)[1].split("</select>", 1)[0]
        assert re.findall(r'<option value="([a-z_0-9]*)"', select) == ["", "postcode", "city"]
        # A field no connector can correct, posted anyway (a forged form): refused on its row, nothing sent.
        response = await running.post({"kind": "rectification", "change_field_1": "email",
                                       "change_value_1": "camille@example.net"}, lang="en")
        assert response.status_code == 400
        assert_field_error(response.text, "change_field_1", "Choose a piece of information from the list.",
                           error_id="change_field_1-error")
        assert running.sink.calls == []



@pytest.fixture
def demo_profile_file(tmp_path: Path) -> ControllerProfile:
    """The demo's profile, also written as the intake's dsr.toml (the submission reads its consent purposes)."""
    demo = Path(__file__).resolve().parents[2] / "sandbox" / "demo_profile.toml"
    (tmp_path / "dsr.toml").write_text(demo.read_text(encoding="utf-8"), encoding="utf-8")
    profile = load_profile(demo)
    assert profile is not None
    return profile


@pytest.mark.parametrize(("lang", "choice", "partners"), [
    ("fr", "Retirer un consentement que vous nous avez donné", "Envoi des offres de nos partenaires"),
    ("en", "Withdraw a consent you gave us", "Sending offers from our partners"),
])
async def test_a_withdrawal_of_consent_has_its_choice_and_one_checkbox_per_purpose(
    tmp_path: Path, demo_profile_file: ControllerProfile, lang: str, choice: str, partners: str,
) -> None:
    profile = demo_profile_file
    async with serve_form(tmp_path, consent_purposes=profile.consent_purposes) as form_app:
        page, _ = await form_app.form(lang)
        assert choice in page.text and 'value="consent_withdrawal"' in page.text and partners in page.text
        assert 'type="checkbox" id="purpose-newsletter" name="purpose" value="newsletter"' in page.text
        response = await form_app.post({"kind": "consent_withdrawal", "purpose": ["partner_offers"]},  # type: ignore[dict-item]
                                       lang=lang)
        assert response.status_code == 303
        submission, _ = form_app.sink.calls[-1]
        assert (submission.kind, submission.purposes) == ("consent_withdrawal", ["partner_offers"])
        confirmation = await form_app.http.get(response.headers["location"])
        assert confirmation.status_code == 200 and choice in confirmation.text
        # Nothing ticked: every consent purpose. Ticked with another kind: not sent.
        await form_app.post({"kind": "consent_withdrawal"}, lang=lang)
        assert form_app.sink.calls[-1][0].purposes == []
        await form_app.post({"kind": "access", "purpose": "newsletter"}, lang=lang)
        assert (form_app.sink.calls[-1][0].kind, form_app.sink.calls[-1][0].purposes) == ("access", [])
    # Without consent purposes in the profile, the form does not offer the choice.
    async with serve_form(tmp_path) as form_app:
        page, _ = await form_app.form(lang)
        assert 'value="consent_withdrawal"' not in page.text
