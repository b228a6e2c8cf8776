"""Exported records as a person reads them: the export bundle's report.html and CSVs (dsr/mail/bundle.py).

``data.json`` keeps every value exactly as the system gave it; here, for reading only:

* datasets are named with the words of the reply email (:data:`DATASET_WORDS`: ``charges`` -> « paiements »);
* fields get a label in the subject's language (connectors/labels.py: ``properties.hs_note_body`` -> « Note »),
  else a humanised name (``hs_first_visit`` -> « First visit »);
* dates -- Unix times in a date-named field (``created 1796280788``) and ISO 8601 strings -- are written in the
  controller's time zone (``DSR_TIMEZONE``): « 3 novembre 2026, 10:05 » in the report, ``2026-11-03 10:05`` in
  the CSV (which spreadsheets read as a date); a naive ISO time is the system's own local time and is not
  shifted, except in a ``*_gmt`` field (WooCommerce), which is UTC;
* amounts next to a ``currency`` get it: Stripe counts cents (``1250`` + ``eur`` -> « 12,50 € » in French,
  "€12.50" in English), other systems major units (``"12.50"``);
* booleans read « oui » / "yes".
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from connectors.labels import COMMON, CONNECTOR_DATASETS, FIELD_LABELS, MINOR_UNITS, UNWRAP

__all__ = ["DATASET_WORDS", "Readable", "dataset_words", "format_amount", "humanise"]

DATASET_WORDS = {
    "fr": {"customer": "compte client", "contact": "fiche contact", "orders": "commandes",
           "charges": "paiements", "invoices": "factures", "payment_intents": "tentatives de paiement",
           "checkout_sessions": "sessions de paiement", "subscriptions": "abonnements",
           "payment_methods": "moyens de paiement enregistrés", "notes": "notes de notre équipe",
           "deals": "propositions commerciales", "tickets": "demandes d'assistance", "emails": "courriels",
           "addresses": "adresses", "credit_notes": "avoirs", "quotes": "devis",
           "setup_intents": "enregistrements de moyens de paiement"},
    "en": {"customer": "customer account", "contact": "contact record", "orders": "orders",
           "charges": "payments", "invoices": "invoices", "payment_intents": "payment attempts",
           "checkout_sessions": "checkout sessions", "subscriptions": "subscriptions",
           "payment_methods": "saved payment methods", "notes": "notes from our team",
           "deals": "commercial offers", "tickets": "support requests", "emails": "emails",
           "addresses": "addresses", "credit_notes": "credit notes", "quotes": "quotes",
           "setup_intents": "payment method setups"},
}
"""A dataset in the subject's language: the reply email (dsr/mail/replies.py) and the bundle use the same words."""

_MONTHS = {
    "fr": ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre",
           "novembre", "décembre"),
    "en": ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"),
}
_YES_NO = {"fr": ("oui", "non"), "en": ("yes", "no")}
_DATE_NAME = re.compile(r"(^|_)(created|updated|modified|date|at|timestamp|start|end|paid|completed)(_gmt)?$"
                        r"|date|^date_|_on$|At$", re.IGNORECASE)
_AMOUNT_NAME = re.compile(r"^(amount|total|subtotal|price|unit_amount|balance|tax)$|^amount_|_amount$|_total$"
                          r"|^total_", re.IGNORECASE)
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")
_UNIX_SECONDS = (946_684_800, 4_102_444_800)  # 2000-01-01 .. 2100-01-01: a plausible time, not a count
_ZERO_DECIMAL = frozenset({"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
                           "xaf", "xof", "xpf"})
_THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})
_SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥"}
_NBSP, _NNBSP = "\u00a0", "\u202f"


@functools.lru_cache(maxsize=4096)
def _key_roles(key: str) -> tuple[bool, bool]:
    """Whether a field named ``key`` may hold an amount, a date: decided once per name, not per value."""
    return bool(_AMOUNT_NAME.search(key)), bool(_DATE_NAME.search(key))


def dataset_words(dataset: str, lang: str) -> str:
    """``charges`` -> « paiements » / "payments"; an unknown dataset humanised."""
    return DATASET_WORDS[lang].get(dataset, dataset.replace("_", " "))


def humanise(name: str) -> str:
    """``hs_first_visit`` -> ``First visit``; ``lastSeenAt`` -> ``Last seen at``."""
    text = re.sub(r"^hs_", "", name)
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", text).replace("_", " ").replace("-", " ").strip().lower()
    return (text[:1].upper() + text[1:]) if text else name


def format_amount(amount: Decimal, currency: str, lang: str) -> str:
    """« 1 234,50 € » (fr) / "€1,234.50" (en); a currency without a symbol by its code (« 12,50 CHF »)."""
    code = currency.upper()
    places = 0 if code.lower() in _ZERO_DECIMAL else 3 if code.lower() in _THREE_DECIMAL else 2
    text = f"{abs(amount):,.{places}f}"
    sign = "-" if amount < 0 else ""
    symbol = _SYMBOLS.get(code)
    if lang == "fr":
        text = text.replace(",", _NNBSP).replace(".", ",")
        return f"{sign}{text}{_NBSP}{symbol or code}"
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{code}{_NBSP}{text}"


def _minor_exponent(currency: str) -> int:
    code = currency.lower()
    return 0 if code in _ZERO_DECIMAL else 3 if code in _THREE_DECIMAL else 2


class Readable:
    """Labels and values of one bundle: ``lang`` the subject's language, ``timezone`` the controller's."""

    def __init__(self, lang: str, timezone: str = "UTC") -> None:
        self.lang = lang if lang in COMMON else "en"
        self.zone: tzinfo = ZoneInfo(timezone) if timezone != "UTC" else UTC
        self.timezone = timezone

    # ------------------------------------------------------------------ names

    @staticmethod
    def connector_type(system: str, dataset: str, types: Mapping[str, str] | None = None) -> str | None:
        """The connector a system is: as configured (``types``: name -> type, from dsr.toml), else its name when
        it is a type (the default name), else the only connector with such a dataset."""
        if types and system in types:
            return types[system]
        if system in FIELD_LABELS:
            return system
        owners = [kind for kind, names in CONNECTOR_DATASETS.items() if dataset in names]
        return owners[0] if len(owners) == 1 else None

    def dataset(self, dataset: str) -> str:
        words = dataset_words(dataset, self.lang)
        return words[:1].upper() + words[1:]

    def field(self, kind: str | None, path: str) -> str:
        """The column ``path``'s label: the connector's label for the whole path, else segment by segment."""
        own = FIELD_LABELS.get(kind or "", {}).get(self.lang, {})
        common = COMMON[self.lang]
        if path in own:
            return own[path]
        segments = path.split(".")
        while len(segments) > 1 and segments[0] in UNWRAP:
            segments = segments[1:]
        words = [own.get(s) or common.get(s) or humanise(s) for s in segments]
        # A leaf repeating its parent's word ("Billing › Billing") reads once.
        out: list[str] = []
        for word in words:
            if not out or out[-1] != word:
                out.append(word)
        return " › ".join(out)

    # ------------------------------------------------------------------ values

    def value(self, kind: str | None, key: str, value: Any, parent: Mapping[str, Any] | None,
              root: Mapping[str, Any] | None, *, csv: bool) -> str:
        """A leaf as text: a date in the controller's zone, an amount with its currency, yes/no; else as given
        (strings) or in JSON spelling (numbers, lists)."""
        if value is None or (isinstance(value, dict | list) and not value):
            return ""  # an empty object or list says nothing to a reader (data.json keeps it)
        if isinstance(value, bool):
            return _YES_NO[self.lang][0 if value else 1]
        amount_name, date_name = _key_roles(key)
        if key == "currency" and isinstance(value, str) and _CURRENCY.match(value):
            return value.upper()  # Stripe writes "eur"
        if amount_name and isinstance(value, int | float | str):
            amount = self._amount(kind, value, parent, root)
            if amount is not None:
                return amount
        if date_name and isinstance(value, int | float):
            moment = self._unix(value)
            if moment is not None:
                return self._moment(moment, csv=csv)
        if isinstance(value, str):
            text = value.strip()
            if len(text) < 10 or text[4:5] != "-":  # the cheap look first: most strings are not dates
                return value
            if _ISO_DATETIME.match(text):
                moment = self._iso(text, utc=key.lower().endswith("_gmt"))
                if moment is not None:
                    return self._moment(moment, csv=csv)
            elif _ISO_DATE.match(text):
                try:
                    return self._day(date.fromisoformat(text), csv=csv)
                except ValueError:
                    pass
            return value
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str).decode()

    def _amount(self, kind: str | None, value: int | float | str, parent: Mapping[str, Any] | None,
                root: Mapping[str, Any] | None) -> str | None:
        currency = next((c for c in ((parent or {}).get("currency"), (root or {}).get("currency"))
                         if isinstance(c, str) and _CURRENCY.match(c)), None)
        if currency is None:
            return None
        try:
            amount = Decimal(str(value).strip())
        except InvalidOperation:
            return None
        if not amount.is_finite():
            return None
        if kind in MINOR_UNITS and isinstance(value, int):
            amount = amount.scaleb(-_minor_exponent(currency))
        return format_amount(amount, currency, self.lang)

    def _unix(self, value: int | float) -> datetime | None:
        seconds = value / 1000 if value > _UNIX_SECONDS[1] * 10 else value  # milliseconds (HubSpot, JavaScript)
        if not _UNIX_SECONDS[0] <= seconds < _UNIX_SECONDS[1]:
            return None
        return datetime.fromtimestamp(seconds, UTC)

    def _iso(self, text: str, *, utc: bool) -> datetime | None:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None and utc:
            moment = moment.replace(tzinfo=UTC)
        return moment

    def _moment(self, moment: datetime, *, csv: bool) -> str:
        local = moment.astimezone(self.zone) if moment.tzinfo is not None else moment
        if csv:
            return local.strftime("%Y-%m-%d %H:%M")
        day = self._day(local.date(), csv=False)
        return f"{day}, {local:%H:%M}" if self.lang == "en" else f"{day} à {local:%H:%M}"

    def _day(self, day: date, *, csv: bool) -> str:
        if csv:
            return day.isoformat()
        month = _MONTHS[self.lang][day.month - 1]
        if self.lang == "fr":
            return f"{'1er' if day.day == 1 else day.day} {month} {day.year}"
        return f"{day.day} {month} {day.year}"

    def now(self, when: datetime) -> datetime:
        return when.astimezone(self.zone)
