"""Final replies to the data subject (and Art. 19 notices to recipients), in French and English.

:func:`render_reply` turns a :class:`ReplyContext` (the request's dates, the controller profile, what each
connector did) into a :class:`~templates.RenderedNotice`: a one-line subject, a plain-text and an HTML body,
from ``templates/<lang>/<kind>.{subject,txt,html}``. The templates share the notices' layout and macros;
HTML is autoescaped, and every value coming from outside (names, profile texts, connector notes) is
collapsed to one line first, so a CR/LF can neither add a header nor forge a line of the reply.

Choices a DPO may want to know about:

* An access reply is refused (:class:`IncompleteProfileError`) while :func:`dsr.config.profile.check_profile`
  reports a missing Art. 15(1)/15(2) item: better late than silently incomplete.
* Replies name data by system, dataset and field, never by value: a rectification reply lists the fields
  changed, not their old (or new) values, since an email may be read by someone else.
* The Art. 19 notice to a recipient identifies the person by the **email address** under which the request
  was made (the identifier a recipient most likely holds, and the one the subject proved control of); it
  carries no name and no new values. For a rectification the recipient is told which fields changed and is
  asked to obtain the corrected values by replying (through the channel of its contract with the
  controller), so that corrected data never travels in a notification that could be misaddressed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from connectors.base import CONSENT as CONSENT_DATASET
from dsr.config.profile import ControllerProfile, Localized, SupervisoryAuthority, check_profile, is_third_country
from dsr.domain.model import (
    AnswerStatus,
    ConnectorOutcome,
    ConsentPurpose,
    Language,
    RecordAction,
    RecordReport,
    RequestKind,
    is_valid_email,
)
from dsr.errors import ConfigurationError
from dsr.mail.readable import DATASET_WORDS
from templates import ENVIRONMENT, RenderedNotice, one_line

__all__ = ["IncompleteProfileError", "ReplyContext", "ReplyKind", "render_reply"]


class ReplyKind(StrEnum):
    ACCESS = "reply_access"
    PORTABILITY = "reply_portability"
    ERASURE = "reply_erasure"
    RECTIFICATION = "reply_rectification"
    OBJECTION = "reply_objection"
    CONSENT_WITHDRAWAL = "reply_consent_withdrawal"
    POST_MORTEM = "reply_post_mortem"
    RESTRICTION = "reply_restriction"
    NO_DATA = "reply_no_data"
    ART19_NOTICE = "art19_notice"


_REQUEST_KIND = {
    ReplyKind.ACCESS: RequestKind.ACCESS,
    ReplyKind.PORTABILITY: RequestKind.PORTABILITY,
    ReplyKind.ERASURE: RequestKind.ERASURE,
    ReplyKind.RECTIFICATION: RequestKind.RECTIFICATION,
    ReplyKind.OBJECTION: RequestKind.OBJECTION,
    ReplyKind.CONSENT_WITHDRAWAL: RequestKind.CONSENT_WITHDRAWAL,
    ReplyKind.POST_MORTEM: RequestKind.POST_MORTEM,
    ReplyKind.RESTRICTION: RequestKind.RESTRICTION,
}


class IncompleteProfileError(ConfigurationError, ValueError):
    """The controller profile lacks an item the access reply must contain; ``missing`` lists them."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = list(missing)
        super().__init__("the access reply would omit required information; complete the [controller] "
                         "table of dsr.toml:\n" + "\n".join(f"- {item}" for item in self.missing))


@dataclass
class ReplyContext:
    """Everything a reply says. Dates are calendar dates in the controller's time zone."""

    reference: str
    received: date
    deadline: date  # the deadline in force (the extended one when ``extended``)
    extended: bool = False
    subject_name: str = ""
    profile: ControllerProfile | None = None
    systems: list[ConnectorOutcome] = field(default_factory=list)  # one per connector that took part
    download_url: str = ""  # access/portability: GET /exports/{token}
    download_code: str = ""  # asked at download (grouped, e.g. K7QM-4XPD); never the request reference
    link_expires: date | None = None  # last day the link works
    recipients_notified: list[str] = field(default_factory=list)  # Art. 19 recipients told (names)
    extension_reason: str = ""  # recalled when ``extended``
    request_kind: RequestKind | None = None  # reply_no_data and art19_notice: the request's kind
    subject_email: str = ""  # art19_notice only: identifies the person to the recipient
    recipient_name: str = ""  # art19_notice only: the recipient addressed
    scope: str = ""  # reply_objection: "marketing" or "other"
    decision: str = ""  # reply_objection (other): "upheld" or "rejected"
    grounds: str = ""  # a rejected objection: the compelling legitimate grounds (Art. 21(1)), in the operator's words
    suppressed_until: date | None = None  # a marketing objection: the suppression list's entry ends then
    consent_purposes: list[ConsentPurpose] = field(default_factory=list)  # reply_consent_withdrawal: withdrawn
    consent_earlier: list[str] = field(default_factory=list)  # of those, the keys an earlier request withdrew
    consent_url: str = ""  # the subject's one-click withdrawal link (/consent/{token}), in every reply's footer
    quality: str = ""  # reply_post_mortem: the sender's confirmed quality (heir, executor, designated)
    action: str = ""  # reply_post_mortem: "closed", "kept" (the directives) or "staff" (estate, hand-over)
    directives: str = ""  # reply_post_mortem: the instruction of the directives applied, "" when none
    ground: str = ""  # reply_restriction: the Art. 18(1) ground, "a" to "d"
    lift_notice_days: int = 0  # reply_restriction: days between our notice and a lift (Art. 18(3))


# --- words per language ---------------------------------------------------------------------------------

_LEGAL_BASIS = {
    "fr": {
        "consent": "votre consentement (article 6, paragraphe 1, point a), du RGPD)",
        "contract": "l'exécution d'un contrat conclu avec vous ou de mesures précontractuelles (article 6, "
                    "paragraphe 1, point b), du RGPD)",
        "legal_obligation": "le respect d'une obligation légale (article 6, paragraphe 1, point c), du RGPD)",
        "vital_interests": "la sauvegarde d'intérêts vitaux (article 6, paragraphe 1, point d), du RGPD)",
        "public_task": "l'exécution d'une mission d'intérêt public (article 6, paragraphe 1, point e), du RGPD)",
        "legitimate_interests": "notre intérêt légitime (article 6, paragraphe 1, point f), du RGPD)",
    },
    "en": {
        "consent": "your consent (Article 6(1)(a) GDPR)",
        "contract": "the performance of a contract with you, or steps before entering into it (Article 6(1)(b) "
                    "GDPR)",
        "legal_obligation": "compliance with a legal obligation (Article 6(1)(c) GDPR)",
        "vital_interests": "the protection of vital interests (Article 6(1)(d) GDPR)",
        "public_task": "the performance of a task carried out in the public interest (Article 6(1)(e) GDPR)",
        "legitimate_interests": "our legitimate interests (Article 6(1)(f) GDPR)",
    },
}
_SAFEGUARD = {
    "fr": {
        "adequacy": "décision d'adéquation de la Commission européenne (article 45 du RGPD)",
        "scc": "clauses contractuelles types adoptées par la Commission européenne (article 46, paragraphe 2, "
               "point c), du RGPD)",
        "bcr": "règles d'entreprise contraignantes (article 47 du RGPD)",
        "derogation": "dérogation pour une situation particulière (article 49 du RGPD)",
    },
    "en": {
        "adequacy": "adequacy decision of the European Commission (Article 45 GDPR)",
        "scc": "standard contractual clauses adopted by the European Commission (Article 46(2)(c) GDPR)",
        "bcr": "binding corporate rules (Article 47 GDPR)",
        "derogation": "derogation for a specific situation (Article 49 GDPR)",
    },
}
_COUNTRIES = {
    "fr": {"FR": "France", "IE": "Irlande", "DE": "Allemagne", "NL": "Pays-Bas", "BE": "Belgique",
           "LU": "Luxembourg", "ES": "Espagne", "IT": "Italie", "PT": "Portugal", "SE": "Suède", "FI": "Finlande",
           "DK": "Danemark", "PL": "Pologne", "AT": "Autriche", "NO": "Norvège", "US": "États-Unis",
           "GB": "Royaume-Uni", "CH": "Suisse", "CA": "Canada", "JP": "Japon", "IN": "Inde",
           "AU": "Australie", "SG": "Singapour", "IL": "Israël", "KR": "Corée du Sud"},
    "en": {"FR": "France", "IE": "Ireland", "DE": "Germany", "NL": "the Netherlands", "BE": "Belgium",
           "LU": "Luxembourg", "ES": "Spain", "IT": "Italy", "PT": "Portugal", "SE": "Sweden", "FI": "Finland",
           "DK": "Denmark", "PL": "Poland", "AT": "Austria", "NO": "Norway", "US": "the United States",
           "GB": "the United Kingdom", "CH": "Switzerland", "CA": "Canada", "JP": "Japan", "IN": "India",
           "AU": "Australia", "SG": "Singapore", "IL": "Israel", "KR": "South Korea"},
}
_DATASETS = DATASET_WORDS  # the export bundle names datasets with the same words
_FIELDS = {
    "fr": {"first_name": "prénom", "last_name": "nom", "email": "adresse électronique", "phone": "téléphone",
           "address_line1": "adresse (ligne 1)", "address_line2": "adresse (ligne 2)", "city": "ville",
           "postcode": "code postal", "state": "région", "country": "pays",
           "customer_ip_address": "adresse IP", "customer_user_agent": "informations sur le navigateur"},
    "en": {"first_name": "first name", "last_name": "last name", "email": "email address",
           "phone": "telephone number", "address_line1": "address (line 1)", "address_line2": "address (line 2)",
           "city": "city", "postcode": "postcode", "state": "state or region", "country": "country",
           "customer_ip_address": "IP address", "customer_user_agent": "browser information"},
}
_RECORDS = {"fr": "enregistrements", "en": "records"}

_PLACEHOLDER_IDS = frozenset({"", "-"})  # "nothing found" lines carry no record
_SUMMARY_ID = "*"  # one line standing for several records; the count leads its note
_LEADING_COUNT = re.compile(r"\s*(\d+)\b")


def _words(table: dict[str, dict[str, str]], lang: str, key: str) -> str:
    return table[lang].get(key, key.replace("_", " "))


# --- hygiene ----------------------------------------------------------------------------------------------


def _s(value: Any) -> str:
    """One line, no control characters: a CR/LF in any value cannot start a new line of the reply."""
    return one_line("" if value is None else str(value))


def _is_http_url(value: str) -> bool:
    if not value or value != value.strip() or re.search(r"[\s\x00-\x1f\x7f-\x9f]", value):
        return False
    parts = urlsplit(value)
    return parts.scheme in {"http", "https"} and bool(parts.netloc)


def _iso(value: date | datetime | None) -> str:
    if value is None:
        return ""
    return (value.date() if isinstance(value, datetime) else value).isoformat()


def _text(value: Localized | None, lang: str) -> str:
    return _s(value.text(lang)) if value else ""


# --- views ------------------------------------------------------------------------------------------------


def _authority(profile: ControllerProfile | None) -> dict[str, str]:
    authority = profile.supervisory_authority if profile else SupervisoryAuthority()
    return {"name": _s(authority.name), "postal_address": _s(authority.postal_address),
            "website": _s(authority.website)}


def _controller(profile: ControllerProfile | None, lang: str) -> dict[str, Any]:
    if profile is None:
        return {"legal_name": "", "postal_address": "", "website": "", "privacy_policy_url": "",
                "contact_name": "", "contact_email": "", "contact_postal": "", "designated_dpo": False}
    contact = profile.privacy_contact
    return {
        "legal_name": _s(profile.legal_name),
        "postal_address": _s(profile.postal_address),
        "website": _s(profile.website),
        "privacy_policy_url": _s(profile.privacy_policy_url),
        "contact_name": _text(contact.name, lang),
        "contact_email": _s(contact.email),
        "contact_postal": _s(contact.postal_address or profile.postal_address),
        "designated_dpo": contact.designated_dpo,
    }


def _other_systems(profile: ControllerProfile | None, lang: str) -> list[dict[str, str]]:
    """The systems no connector reaches (``[[controller.other_systems]]``), as every reply names them."""
    return [{"name": _text(o.name, lang), "holds": _text(o.holds, lang), "handling": o.handling,
             "by": _text(o.by, lang), "how": _text(o.how, lang)} for o in (profile.other_systems if profile else [])]


def _purposes(profile: ControllerProfile | None, lang: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    purposes: list[dict[str, Any]] = []
    transfers: dict[tuple[str, str, str], dict[str, str]] = {}
    for purpose in profile.purposes if profile else []:
        recipients = []
        for recipient in purpose.recipients or []:
            third = is_third_country(recipient.country)
            view: dict[str, Any] = {
                "name": _text(recipient.name, lang),
                "role": _text(recipient.role, lang),
                "country": _words(_COUNTRIES, lang, recipient.country) if recipient.country else "",
                "transfer": third,
                "safeguard": _SAFEGUARD[lang][recipient.safeguard] if recipient.safeguard else "",
                "safeguard_detail": _text(recipient.safeguard_detail, lang),
            }
            recipients.append(view)
            if third:  # one line per recipient and safeguard, whatever the number of purposes
                key = (view["name"], view["country"], view["safeguard"])
                line = transfers.setdefault(key, {k: view[k] for k in ("name", "country", "safeguard")}
                                            | {"safeguard_detail": ""})
                details = [d for d in line["safeguard_detail"].split(" ; ") if d]
                for detail in view["safeguard_detail"].split(" ; "):
                    if detail and detail not in details:
                        details.append(detail)
                line["safeguard_detail"] = " ; ".join(details)
        automated = purpose.automated_decisions
        purposes.append({
            "name": _text(purpose.name, lang),
            "categories": [_text(c, lang) for c in purpose.categories if c],
            "legal_basis": _LEGAL_BASIS[lang][purpose.legal_basis] if purpose.legal_basis else "",
            "legal_basis_detail": _text(purpose.legal_basis_detail, lang),
            "recipients": recipients,
            "retention": _text(purpose.retention, lang),
            "source": _text(purpose.source, lang),
            "automated": "" if automated in (None, "none") else _text(automated, lang),  # type: ignore[arg-type]
        })
    return purposes, list(transfers.values())


def _label(profile: ControllerProfile | None, connector: str, lang: str) -> str:
    return _s(profile.system_label(connector, lang) if profile else connector)


def _count(lines: Iterable[RecordReport]) -> str:
    """How many records the lines stand for, or ``""`` when a summary line does not say."""
    total = 0
    for line in lines:
        if line.record_id == _SUMMARY_ID:
            match = _LEADING_COUNT.match(line.note)
            if match is None:
                return ""
            total += int(match.group(1))
        elif line.record_id not in _PLACEHOLDER_IDS:
            total += 1
    return str(total) if total else ""


_GDPR_ARTICLE = re.compile(r"^Art(?:icle|\.)?\s*(\d+)\s*\((\d+)\)(?:\s*\(([a-z])\))?\s*(?:GDPR|RGPD)$", re.I)
_COMMERCE_CODE = re.compile(r"^(?:Code de commerce|French Commercial Code),?\s*(?:art(?:icle|\.)?\s*)?"
                            r"L\s?123-22(?:\s*\(accounting(?: records)?(?:,\s*(\d+)\s*years)?\))?$", re.I)


def legal_basis_wording(basis: str, lang: str, profile: ControllerProfile | None = None) -> str:
    """A retention basis as a connector reports it (``"Art. 17(3)(b) GDPR; Code de commerce L123-22
    (accounting records, 10 years)"``), worded in ``lang``: the profile's ``legal_bases`` entry when it has
    one, else each ``;``-separated part the engine knows (GDPR articles, Code de commerce L123-22) in the
    reply's language; a part it does not know is shown as written (a DPO words it in the profile)."""
    if profile is not None and (own := profile.legal_bases.get(basis)):
        return own.text(lang)
    parts = []
    for part in (p.strip() for p in basis.split(";")):
        if article := _GDPR_ARTICLE.match(part):
            number, paragraph, point = article.groups()
            if lang == "fr":
                part = f"article {number}, paragraphe {paragraph}" + (f", point {point})" if point else "") \
                    + ", du RGPD"
            else:
                part = f"Article {number}({paragraph})" + (f"({point})" if point else "") + " GDPR"
        elif code := _COMMERCE_CODE.match(part):
            years = code.group(1)
            if lang == "fr":
                part = "article L123-22 du Code de commerce" + (f" (pièces comptables, {years} ans)" if years else "")
            else:
                part = "Article L123-22 of the French Commercial Code" + (
                    f" (accounting records, {years} years)" if years else "")
        if part:
            parts.append(part)
    return " ; ".join(parts) if lang == "fr" else "; ".join(parts)


def _groups(lines: list[RecordReport], lang: str, profile: ControllerProfile | None = None) -> list[dict[str, Any]]:
    """Lines of one action, one entry per (dataset, legal basis): count, fields and the retention dates."""
    grouped: dict[tuple[str, str], list[RecordReport]] = {}
    for line in lines:
        grouped.setdefault((line.dataset, line.legal_basis), []).append(line)
    out = []
    for (dataset, legal_basis), members in grouped.items():
        dates = sorted(d for d in (m.retained_until for m in members) if d is not None)
        fields = sorted({f for m in members for f in m.fields})
        out.append({
            "dataset": _s(_words(_DATASETS, lang, dataset)),
            "count": _count(members),
            "legal_basis": _s(legal_basis_wording(legal_basis, lang, profile)) if legal_basis else "",
            "until_first": _iso(dates[0]) if dates else "",
            "until_last": _iso(dates[-1]) if dates else "",
            "fields": ", ".join(_s(_words(_FIELDS, lang, f)) for f in fields),
        })
    return out


def _outside(outcome: ConnectorOutcome, lang: str, profile: ControllerProfile | None) -> dict[str, Any] | None:
    """What a processor or our own team answered for a system no API reaches (the reply says who acted)."""
    answer = outcome.answer
    if answer is None:
        return None
    return {
        "status": AnswerStatus(answer.status).value,
        "processor": answer.system_type != "manual",
        "legal_basis": _s(legal_basis_wording(answer.legal_basis, lang, profile)) if answer.legal_basis else "",
        "until": _iso(answer.kept_until),
        "asked_on": _iso(answer.asked_on),
        "records": str(answer.export_records) if answer.export_records else "",
    }


def _erasure_system(outcome: ConnectorOutcome, label: str, lang: str,
                    profile: ControllerProfile | None = None) -> dict[str, Any]:
    if outcome.answer is not None:  # one answer, not records: told by the ``outside`` lines
        return {"label": label, "deleted": [], "anonymised": [], "retained": [], "residual": [], "already_gone": [],
                "nothing": False, "outside": _outside(outcome, lang, profile)}
    real = [line for line in outcome.report if line.record_id not in _PLACEHOLDER_IDS]
    by_action = {action: [line for line in real if line.action == action] for action in RecordAction}
    return {
        "label": label,
        "deleted": _groups(by_action[RecordAction.DELETED], lang, profile),
        "anonymised": _groups(by_action[RecordAction.ANONYMISED], lang, profile),
        "retained": _groups(by_action[RecordAction.RETAINED], lang, profile),
        "residual": _groups(by_action[RecordAction.RESIDUAL], lang, profile),
        "already_gone": _groups(by_action[RecordAction.ALREADY_GONE], lang, profile),
        "nothing": not real,
        "outside": None,
    }


def _rectification_system(outcome: ConnectorOutcome, label: str, lang: str,
                          profile: ControllerProfile | None = None) -> dict[str, Any]:
    if outcome.answer is not None:
        return {"label": label, "changed": [], "unchanged": [], "nothing": False,
                "outside": _outside(outcome, lang, profile)}
    changed = [line for line in outcome.report if line.action == RecordAction.CHANGED]
    unchanged = [line for line in outcome.report if line.action == RecordAction.UNCHANGED]
    return {
        "label": label,
        "changed": _groups(changed, lang, profile),
        "unchanged": _groups(unchanged, lang, profile),
        # Records of the subject were found, but none holds what is to be corrected (a field this system has no
        # place for): neither "corrected" nor "already up to date", and not "no data about you" either.
        "not_held": not changed and not unchanged and outcome.found > 0,
        "nothing": not changed and not unchanged and outcome.found == 0,
        "outside": None,
    }


def _dataset_lines(outcome: ConnectorOutcome, lang: str, *, provided: bool | None) -> list[dict[str, str]]:
    return [{"dataset": _s(_words(_DATASETS, lang, d.dataset)), "count": str(d.records)}
            for d in outcome.datasets if provided is None or d.provided == provided]


def _data_system(outcome: ConnectorOutcome, label: str, lang: str,
                 profile: ControllerProfile | None = None) -> dict[str, Any]:
    if outcome.answer is not None:
        return {"label": label, "datasets": [], "nothing": False, "outside": _outside(outcome, lang, profile)}
    datasets = [d for d in _dataset_lines(outcome, lang, provided=None) if d["count"] != "0"]
    if not datasets and outcome.found:
        datasets = [{"dataset": _RECORDS[lang], "count": str(outcome.found)}]
    return {"label": label, "datasets": datasets, "nothing": not datasets, "outside": None}


def _portability_system(outcome: ConnectorOutcome, label: str, lang: str,
                        profile: ControllerProfile | None = None) -> dict[str, Any]:
    if outcome.answer is not None:
        # What a processor sent is not data the subject provided to us: the archive keeps it for access only.
        return {"label": label, "datasets": [], "excluded": [], "nothing": False,
                "outside": _outside(outcome, lang, profile)}
    provided = [d for d in _dataset_lines(outcome, lang, provided=True) if d["count"] != "0"]
    excluded = [d for d in _dataset_lines(outcome, lang, provided=False) if d["count"] != "0"]
    return {"label": label, "datasets": provided, "excluded": excluded, "nothing": not provided, "outside": None}


def _objection_system(outcome: ConnectorOutcome, label: str, lang: str) -> dict[str, Any]:
    """What one system did on an objection to marketing: subscriptions ended, already ended, or nothing it can
    set (the operator checks by hand: a residual)."""
    ended = [line for line in outcome.report if line.action == RecordAction.UNSUBSCRIBED]
    already = [line for line in outcome.report if line.action == RecordAction.UNCHANGED]
    residual = any(line.action == RecordAction.RESIDUAL for line in outcome.report)
    return {
        "label": label,
        "unsubscribed": [_s(line.note) or _s(line.record_id) for line in ended],
        "already": [_s(line.note.split(":", 1)[0]) or _s(line.record_id) for line in already],
        "by_hand": residual,
        "nothing": not ended and not already and not residual,
    }


def _consent_system(outcome: ConnectorOutcome, label: str, names: dict[str, str]) -> dict[str, Any]:
    """What one system did on a withdrawal of consent, per purpose: withdrawn now, already not processed there,
    or by hand (our team; a residual line followed up until done)."""
    answer = outcome.answer
    if answer is not None:
        # A system reached by a person (processor, manual): told when this reply is written, or already answered.
        told = _CONSENT_ANSWER[AnswerStatus(answer.status)]
        return {"label": label, "lines": [
            {"purpose": _s(names.get(line.record_id, line.record_id)), "status": told,
             "processor": answer.system_type != "manual", "asked_on": _iso(answer.asked_on)}
            for line in outcome.report if line.dataset == CONSENT_DATASET]}
    status: dict[str, str] = {}
    for line in outcome.report:
        if line.dataset != CONSENT_DATASET:
            continue
        now = {RecordAction.WITHDRAWN: "withdrawn", RecordAction.RESIDUAL: "by_hand"}.get(line.action, "already")
        rank = ("already", "withdrawn", "by_hand")
        if rank.index(now) >= rank.index(status.get(line.record_id, "already")):
            status[line.record_id] = now
    return {"label": label, "lines": [{"purpose": _s(names.get(key, key)), "status": value}
                                      for key, value in status.items()]}


_CONSENT_ANSWER = {
    AnswerStatus.NO_ANSWER: "told",  # asked on that day; not confirmed yet (followed up)
    AnswerStatus.DONE: "confirmed",
    AnswerStatus.KEPT: "confirmed",  # stopped for this purpose; the data itself kept on another basis
    AnswerStatus.NO_DATA: "already",
    AnswerStatus.CANNOT: "by_hand",
}


def _restriction_system(outcome: ConnectorOutcome, label: str, lang: str,
                         profile: ControllerProfile | None = None) -> dict[str, Any]:
    """What one system did on a restriction: records marked (now or already), restricted by our team (a residual:
    the system cannot mark a record), or nothing held."""
    if outcome.answer is not None:
        return {"label": label, "marked": [], "by_hand": False, "nothing": False,
                "outside": _outside(outcome, lang, profile)}
    marked = [line for line in outcome.report if line.action in (RecordAction.RESTRICTED, RecordAction.UNCHANGED)]
    residual = any(line.action == RecordAction.RESIDUAL for line in outcome.report)
    return {
        "label": label,
        "marked": _groups(marked, lang, profile),
        "by_hand": residual,
        "nothing": not marked and not residual,
        "outside": None,
    }


def _changed_fields(systems: list[ConnectorOutcome], lang: str) -> list[str]:
    fields = sorted({f for o in systems for line in o.report if line.action == RecordAction.CHANGED
                     for f in line.fields})
    return [_s(_words(_FIELDS, lang, f)) for f in fields]


# --- rendering --------------------------------------------------------------------------------------------


def _tidy_text(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


def _require_link(context: ReplyContext) -> None:
    if not _is_http_url(context.download_url):
        raise ValueError("this reply needs download_url, an http(s) link without spaces or line breaks")
    if context.link_expires is None:
        raise ValueError("this reply needs link_expires, the last day the download link works")


def _values(kind: ReplyKind, lang: str, context: ReplyContext) -> dict[str, Any]:
    profile = context.profile
    reference = _s(context.reference)
    if not reference:
        raise ValueError("a reply needs a non-empty reference")
    request_kind = _REQUEST_KIND.get(kind) or context.request_kind
    if request_kind is None:
        raise ValueError(f"{kind.value} needs request_kind (the kind of the request answered)")
    controller = _controller(profile, lang)
    purposes, transfers = _purposes(profile, lang)
    labels = [_label(profile, o.connector, lang) for o in context.systems]
    values: dict[str, Any] = {
        "lang": lang,
        "reference": reference,
        "kind": RequestKind(request_kind).value,
        "received": _iso(context.received),
        "deadline": _iso(context.deadline),
        "extended": bool(context.extended),
        "extension_reason": _s(context.extension_reason),
        "subject_name": _s(context.subject_name),
        "controller_name": controller["legal_name"],
        "controller": controller,
        "authority": _authority(profile),
        "purposes": purposes,
        "transfers": transfers,
        "system_labels": labels,
        "download_url": context.download_url if _is_http_url(context.download_url) else "",
        "download_code": _s(context.download_code),
        "link_expires": _iso(context.link_expires),
        "recipients_notified": [n for n in (_s(r) for r in context.recipients_notified) if n],
        "other_systems": _other_systems(profile, lang),
        "consent_url": context.consent_url if _is_http_url(context.consent_url) else "",
    }
    pairs = list(zip(context.systems, labels, strict=True))
    if kind == ReplyKind.ACCESS:
        values["systems"] = [_data_system(o, label, lang, profile) for o, label in pairs]
    elif kind == ReplyKind.PORTABILITY:
        values["systems"] = [_portability_system(o, label, lang, profile) for o, label in pairs]
    elif kind == ReplyKind.ERASURE:
        values["systems"] = [_erasure_system(o, label, lang, profile) for o, label in pairs]
        values["residuals"] = any(s["residual"] or (s["outside"] and s["outside"]["status"] in ("cannot", "no_answer"))
                                  for s in values["systems"])
        values["suppressed_until"] = _iso(context.suppressed_until)
    elif kind == ReplyKind.RECTIFICATION:
        values["systems"] = [_rectification_system(o, label, lang, profile) for o, label in pairs]
    elif kind == ReplyKind.OBJECTION:
        scope = context.scope or "other"
        if scope not in ("marketing", "other"):
            raise ValueError(f"an objection's scope is marketing or other, not {scope!r}")
        if scope == "other" and context.decision not in ("upheld", "rejected"):
            raise ValueError("an objection to other processing is answered with its decision (upheld or rejected)")
        if context.decision == "rejected" and not _s(context.grounds):
            raise ValueError("a rejected objection needs its grounds (Art. 21(1)): the subject is told them")
        values["scope"] = scope
        values["decision"] = context.decision
        values["grounds"] = _s(context.grounds)
        values["suppressed_until"] = _iso(context.suppressed_until)
        values["systems"] = [_objection_system(o, label, lang) for o, label in pairs]
        values["by_hand"] = any(s["by_hand"] for s in values["systems"])
    elif kind == ReplyKind.CONSENT_WITHDRAWAL:
        if not context.consent_purposes:
            raise ValueError("a withdrawal of consent is answered with the purposes withdrawn")
        names = {p.key: p.name(lang) for p in context.consent_purposes}
        values["withdrawn"] = [{"name": _s(p.name(lang)), "earlier": p.key in context.consent_earlier}
                               for p in context.consent_purposes]
        values["systems"] = [_consent_system(o, label, names) for o, label in pairs]
        # Not everywhere done when the reply is written: the intro says it is being stopped, not that it is.
        values["pending"] = any(line["status"] in ("told", "by_hand")
                                for system in values["systems"] for line in system["lines"])
        values["by_hand"] = any(line["status"] == "by_hand" for s in values["systems"] for line in s["lines"])
    elif kind == ReplyKind.POST_MORTEM:
        if context.quality not in ("heir", "executor", "designated"):
            raise ValueError("a post_mortem reply names the sender's confirmed quality (heir, executor, designated)")
        if context.action not in ("closed", "kept", "staff"):
            raise ValueError("a post_mortem reply says what was done (closed, kept or staff)")
        if context.action == "closed" and not context.systems:
            raise ValueError("accounts closed, but no system reports what it did")
        values["quality"] = context.quality
        values["action"] = context.action
        values["directives"] = context.directives
        # What each system did with the deceased person's data: the erasure's own lines (erased, pseudonymised,
        # kept by law, residual), never a value, never more than the erasure reply would tell the person.
        values["systems"] = [_erasure_system(o, label, lang, profile) for o, label in pairs] \
            if context.action == "closed" else []
        values["residuals"] = any(s["residual"] or (s["outside"] and s["outside"]["status"] in ("cannot", "no_answer"))
                                  for s in values["systems"])
        values["suppressed_until"] = _iso(context.suppressed_until)
    elif kind == ReplyKind.RESTRICTION:
        if context.ground not in ("a", "b", "c", "d"):
            raise ValueError(f"a restriction's ground is a, b, c or d (Art. 18(1)), not {context.ground!r}")
        values["ground"] = context.ground
        values["lift_notice_days"] = max(1, int(context.lift_notice_days or 1))
        values["systems"] = [_restriction_system(o, label, lang, profile) for o, label in pairs]
        values["by_hand"] = any(s["by_hand"] for s in values["systems"])
    elif kind == ReplyKind.ART19_NOTICE:
        values["subject_email"] = _s(context.subject_email)
        values["recipient_name"] = _s(context.recipient_name)
        values["subject_name"] = ""  # the recipient is addressed, and never learns the subject's name
        values["changed_fields"] = _changed_fields(context.systems, lang)
    else:
        values["systems"] = [{"label": label} for label in labels]
    return values


def render_reply(kind: str, language: Language | str, context: ReplyContext) -> RenderedNotice:
    """Render the reply ``kind`` (a :class:`ReplyKind` value, e.g. ``"reply_access"``) in ``language``.

    Raises :class:`IncompleteProfileError` for an access reply whose profile misses an Art. 15(1)/15(2)
    item, and ``ValueError`` for an unknown kind or a context that cannot make a truthful reply (no
    reference; no valid download link for access/portability; no request kind or no valid subject email
    for an Art. 19 notice).
    """
    try:
        reply = ReplyKind(kind)
    except ValueError:
        raise ValueError(f"unknown reply kind {kind!r}; expected one of "
                         f"{', '.join(k.value for k in ReplyKind)}") from None
    lang = Language(language).value
    if reply == ReplyKind.ACCESS:
        missing = check_profile(context.profile)
        if missing:
            raise IncompleteProfileError(missing)
    if reply in {ReplyKind.ACCESS, ReplyKind.PORTABILITY}:
        _require_link(context)
    if reply == ReplyKind.ART19_NOTICE:
        if context.request_kind not in {RequestKind.RECTIFICATION, RequestKind.ERASURE, RequestKind.RESTRICTION}:
            raise ValueError("an Art. 19 notice is about a rectification, an erasure or a restriction (request_kind)")
        if not is_valid_email(context.subject_email):
            raise ValueError("an Art. 19 notice needs subject_email, a single valid address, to identify "
                             "the person to the recipient")
    values = _values(reply, lang, context)
    if reply == ReplyKind.ART19_NOTICE and context.request_kind == RequestKind.RECTIFICATION \
            and not values["changed_fields"]:
        raise ValueError("no system reports a changed field: there is no rectification to notify")
    name = f"{lang}/{reply.value}"
    subject = one_line(ENVIRONMENT.get_template(f"{name}.subject").render(values))
    values["email_subject"] = subject
    text = _tidy_text(ENVIRONMENT.get_template(f"{name}.txt").render(values))
    html = ENVIRONMENT.get_template(f"{name}.html").render(values).strip() + "\n"
    return RenderedNotice(subject=subject, text=text, html=html)
