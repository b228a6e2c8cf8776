"""The controller profile: who the company is and what it does with personal data (``[controller]`` in dsr.toml).

The access reply (GDPR Art. 15) must tell the subject, per processing purpose, the categories of data,
recipients (and third-country transfers with their safeguards, 15(2)), retention period, source and any
automated decision-making. Those facts are not in any connected system: the DPO writes them once, here.

A *malformed* profile (a wrong type, an unknown key, an invalid address) is refused when the file is parsed,
with the key path (``dsr.toml: controller.purposes[0].recipients[1].country: ...``). An *incomplete* one
parses, and :func:`check_profile` lists every missing item, so ``dsr config check`` can show them all at
once; the engine refuses to send an access reply while that list is not empty.

Every text may be one string (used in both languages) or a table with one string per language::

    [controller]
    legal_name = "Kestio SAS"
    postal_address = "14B chemin du Professeur Depéret, 69160 Tassin-la-Demi-Lune, France"

    [controller.privacy_contact]
    email = "privacy@kestio.example"

    [[controller.purposes]]
    name = { fr = "Gestion des commandes", en = "Order management" }
    categories = ["identity", "contact details"]
    legal_basis = "contract"                 # consent | contract | legal_obligation | vital_interests |
                                             # public_task | legitimate_interests (Art. 6(1)(a)-(f))
    retention = "10 years (Code de commerce L123-22)"
    source = "you"
    automated_decisions = "none"             # or a text describing the logic and its consequences
    [[controller.purposes.recipients]]
    name = "Stripe, Inc."
    country = "US"
    safeguard = "adequacy"                   # adequacy | scc | bcr | derogation (needed outside the EEA)

    [[controller.art19_recipients]]          # told of rectifications and erasures (Art. 19)
    name = "Logistics partner"
    email = "dpo@partner.example"
    receives = ["woocommerce.orders"]        # systems or system.dataset it is disclosed

    [[controller.other_systems]]             # systems no connector reaches: named in every reply
    name = { fr = "Archives papier", en = "Paper archives" }
    holds = { fr = "bons de commande signés", en = "signed order forms" }
    handling = "staff"                       # staff: a person handles the request there (who: by) |
    by = { fr = "notre service client", en = "our customer service" }   # not_covered: out of the replies (why: how)

    [controller.legal_bases]                 # wording of a retention basis a connector reports (dsr.toml)
    "Art. 17(3)(b) GDPR; loi 2006-64 art. 6" = { fr = "...", en = "..." }
"""

from __future__ import annotations

import os
import re
import threading
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from dsr.domain.model import ConsentAction, ConsentPurpose, Language, is_valid_email
from dsr.domain.outside import OUTSIDE_TYPES
from dsr.errors import ConfigurationError

__all__ = [
    "EEA",
    "Art19Recipient",
    "ControllerProfile",
    "Localized",
    "OtherSystem",
    "PrivacyContact",
    "ProfileError",
    "ProfileFile",
    "Purpose",
    "Recipient",
    "SupervisoryAuthority",
    "Withdrawal",
    "check_consent",
    "check_profile",
    "is_third_country",
    "load_profile",
    "parse_profile",
]

EEA = frozenset({
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV", "LT", "LU",
    "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",  # the 27 EU Member States
    "IS", "LI", "NO",  # EEA: the GDPR applies there too, so no Chapter V transfer
})

LegalBasis = Literal["consent", "contract", "legal_obligation", "vital_interests", "public_task",
                     "legitimate_interests"]
"""Art. 6(1)(a)-(f) GDPR."""

Safeguard = Literal["adequacy", "scc", "bcr", "derogation"]
"""Art. 45 adequacy decision, Art. 46(2)(c) standard contractual clauses, Art. 47 binding corporate rules,
Art. 49 derogation."""


class ProfileError(ConfigurationError, ValueError):
    """The ``[controller]`` table is malformed; the message names the file and the key path."""


def is_third_country(country: str) -> bool:
    """True for a country outside the EEA (a transfer under Chapter V GDPR); ``""`` is not known to be one."""
    return bool(country) and country.upper() not in EEA


# --- texts in one or both languages ---------------------------------------------------------------------


class Localized(BaseModel):
    """A text in French and English; a plain string in the file is used for both."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fr: str = ""
    en: str = ""

    def text(self, language: Language | str) -> str:
        """The text in ``language``, else in the other one (a DPO may write only one)."""
        first, second = (self.fr, self.en) if Language(language) == Language.FR else (self.en, self.fr)
        return (first or second).strip()

    def __bool__(self) -> bool:
        return bool(self.fr.strip() or self.en.strip())


def _localized(value: Any) -> Any:
    if isinstance(value, str):
        return {"fr": value, "en": value}
    if value is None or isinstance(value, dict | Localized):
        return value
    raise ValueError('expected a string or a table { fr = "...", en = "..." }')


def _localized_list(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError('expected a list of strings, e.g. ["identity", "contact details"]')
    return value


Text = Annotated[Localized, BeforeValidator(_localized)]
TextList = Annotated[list[Text], BeforeValidator(_localized_list)]

NONE = "none"


def _automated(value: Any) -> Any:
    """``false`` or ``"none"`` means no automated decision-making; anything else is its description."""
    if value is False or (isinstance(value, str) and value.strip().lower() in {"none", "aucune", "aucun"}):
        return NONE
    if value is True:
        raise ValueError('describe the logic and consequences of the automated decision, or write "none"')
    return _localized(value)


def _country(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    code = value.strip().upper()
    if code and (len(code) != 2 or not code.isascii() or not code.isalpha()):
        raise ValueError(f"{value!r} is not a country code; expected ISO 3166-1 alpha-2, e.g. FR, IE or US")
    return code


def _url(value: Any) -> Any:
    if isinstance(value, str) and value.strip():
        value = value.strip()
        if not value.startswith(("https://", "http://")) or any(c.isspace() for c in value):
            raise ValueError(f"{value!r} is not a web address; expected https://...")
    return value


Url = Annotated[str, BeforeValidator(_url)]


def _email(value: str) -> str:
    value = value.strip()
    if value and not is_valid_email(value):
        raise ValueError(f"{value!r} is not a valid email address")
    return value


def _single_line(value: str) -> str:
    return " ".join(value.split())


# --- the profile ------------------------------------------------------------------------------------------


class Recipient(BaseModel):
    """A recipient or category of recipients (Art. 15(1)(c)), with its transfer safeguard (15(2))."""

    model_config = ConfigDict(extra="forbid")
    name: Text = Field(default_factory=Localized, description="e.g. 'Stripe Payments Europe Ltd' or "
                                                                "'our accountant'.")
    role: Text = Field(default_factory=Localized, description="What it does, e.g. 'payment processing'.")
    country: Annotated[str, BeforeValidator(_country)] = Field(
        default="", description="ISO 3166-1 alpha-2 code where the data goes.")
    safeguard: Safeguard | None = Field(default=None, description="Required outside the EEA (Art. 15(2)).")
    safeguard_detail: Text = Field(default_factory=Localized,
                                   description="e.g. 'EU-US Data Privacy Framework' or 'SCC 2021/914'.")


_KEY = r"^[a-z][a-z0-9_]{0,39}$"
_SQL_IDENT = r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$"


class Withdrawal(BaseModel):
    """What withdrawing consent to a purpose means in one connected system (Art. 7(3)); exactly one way:

    * ``subscriptions``: HubSpot subscription types (ids or names) the address is unsubscribed from;
    * ``table`` (+ ``email``, the column holding the address): an sql connector deletes those rows, or, with
      ``set``, writes those values into them (``{ marketing_opt_in = "false" }``);
    * ``residual``: the system offers nothing the engine can switch: a line for the operator, followed up;
    * ``task``: a ``processor`` or ``manual`` system (reached by a person): its contact is emailed, the same day, to
      stop processing the person's data for the purpose, in these words (what to stop, where), and answers on the
      answer page like any other task (``dsr tasks``)."""

    model_config = ConfigDict(extra="forbid")
    subscriptions: list[str] = Field(default_factory=list)
    table: str = Field(default="", pattern=rf"^$|{_SQL_IDENT}")
    email: str = Field(default="email", pattern=_SQL_IDENT)
    set: dict[str, str] = Field(default_factory=dict)
    residual: Text = Field(default_factory=Localized)
    task: Text = Field(default_factory=Localized)

    @field_validator("set")
    @classmethod
    def _columns(cls, value: dict[str, str]) -> dict[str, str]:
        for column in value:
            if not re.fullmatch(_SQL_IDENT, column):
                raise ValueError(f"{column!r} is not a column name")
        return value

    @model_validator(mode="after")
    def _one_way(self) -> Withdrawal:
        ways = [bool(self.subscriptions), bool(self.table), bool(self.residual), bool(self.task)]
        if sum(ways) != 1:
            raise ValueError("name exactly one of subscriptions, table, residual or task")
        if self.set and not self.table:
            raise ValueError("set needs a table")
        return self


class Purpose(BaseModel):
    """One processing purpose and what Art. 15(1) says about it."""

    model_config = ConfigDict(extra="forbid")
    key: str = Field(default="", pattern=rf"^$|{_KEY}",
                     description="A stable name (newsletter): how requests, links and the ledger name a consent "
                                 "purpose.")
    marketing: bool = Field(default=False, description="Direct marketing: withdrawn by the one-click "
                                                       "List-Unsubscribe of our emails (RFC 8058).")
    withdrawal: dict[str, Withdrawal] = Field(
        default_factory=dict, description="Connector name -> what withdrawing consent means there (Art. 7(3)).")
    name: Text = Field(default_factory=Localized, description="Art. 15(1)(a).")
    categories: TextList = Field(default_factory=list, description="Art. 15(1)(b).")
    legal_basis: LegalBasis | None = Field(default=None, description="Art. 6(1).")
    legal_basis_detail: Text = Field(default_factory=Localized,
                                     description="e.g. the legitimate interest pursued, or the law.")
    recipients: list[Recipient] | None = Field(
        default=None, description="Art. 15(1)(c); an empty list states that nobody outside the company "
                                  "receives the data.")
    retention: Text = Field(default_factory=Localized, description="Art. 15(1)(d): period, or its criteria.")
    source: Text = Field(default_factory=Localized,
                         description="Art. 15(1)(g): where the data comes from ('you' when collected from "
                                     "the subject).")
    automated_decisions: Annotated[Localized | Literal["none"] | None, BeforeValidator(_automated)] = Field(
        default=None, description='Art. 15(1)(h): "none", or the logic involved and its consequences.')


class PrivacyContact(BaseModel):
    """Who the subject writes to about their data: a designated DPO (Art. 37) or a privacy contact."""

    model_config = ConfigDict(extra="forbid")
    name: Text = Field(default_factory=Localized, description="e.g. 'Data protection officer'.")
    email: str = ""
    postal_address: str = Field(default="", description="Defaults to the controller's postal address.")
    designated_dpo: bool = False

    @field_validator("email")
    @classmethod
    def _check_email(cls, value: str) -> str:
        return _email(value)

    @field_validator("postal_address")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return _single_line(value)


CNIL_NAME = "Commission nationale de l'informatique et des libertés (CNIL)"
CNIL_ADDRESS = "3 Place de Fontenoy, TSA 80715, 75334 Paris Cedex 07"
CNIL_WEBSITE = "https://www.cnil.fr"


class SupervisoryAuthority(BaseModel):
    """Where the subject may complain (Art. 15(1)(f), 77). The CNIL unless the file says otherwise."""

    model_config = ConfigDict(extra="forbid")
    name: str = CNIL_NAME
    postal_address: str = CNIL_ADDRESS
    website: Url = CNIL_WEBSITE

    @field_validator("name", "postal_address")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return _single_line(value)


_RECEIVES = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)?")


class Art19Recipient(BaseModel):
    """A recipient told of every rectification and erasure (Art. 19), one email each."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    email: str = Field(min_length=1)
    language: Language = Field(default=Language.FR, description="Language of the notice sent to it.")
    receives: list[str] = Field(
        min_length=1,
        description='What it is disclosed: systems ("stripe") or datasets ("woocommerce.orders"). It is told '
                    "only when records of the subject were erased or rectified there, and named only then.")

    @field_validator("email")
    @classmethod
    def _check_email(cls, value: str) -> str:
        return _email(value)

    @field_validator("receives")
    @classmethod
    def _check_receives(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _RECEIVES.fullmatch(item):
                raise ValueError(f'expected "system" or "system.dataset" (e.g. "woocommerce.orders"), got {item!r}')
        return value

    def received(self, connector: str, dataset: str) -> bool:
        """Whether ``dataset`` of ``connector`` is disclosed to this recipient."""
        return connector in self.receives or f"{connector}.{dataset}" in self.receives

    @field_validator("name")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return _single_line(value)


Handling = Literal["staff", "not_covered"]
"""How a system outside the engine is dealt with: ``staff``, a person handles each request there (searches,
exports, corrects or erases by hand); ``not_covered``, requests are not carried out there (backups overwritten
on a cycle, say), and the replies say so with the reason."""


class OtherSystem(BaseModel):
    """A system holding personal data that no connector reaches, so that replies never pass the systems searched
    off as all of them: each reply names it, what it may hold, and how it is dealt with."""

    model_config = ConfigDict(extra="forbid")
    name: Text = Field(description="e.g. 'Paper archives' or 'Accounting software (Sage)'.")
    holds: Text = Field(description="What of a person's data it may hold, e.g. 'signed order forms'.")
    handling: Handling
    by: Text = Field(default_factory=Localized,
                     description="Who handles requests there (handling = staff), e.g. 'our customer service'.")
    how: Text = Field(default_factory=Localized,
                      description="Required for not_covered: why requests are not carried out there and what "
                                  "becomes of the data (e.g. 'backups, overwritten after 30 days'); optional "
                                  "for staff.")

    @model_validator(mode="after")
    def _says_who_or_why(self) -> OtherSystem:
        if not self.name or not self.holds:
            raise ValueError("name and holds must not be empty")
        if self.handling == "staff" and not self.by:
            raise ValueError('handling = "staff" needs by: who handles requests there')
        if self.handling == "not_covered" and not self.how:
            raise ValueError('handling = "not_covered" needs how: why requests are not carried out there')
        return self


class ControllerProfile(BaseModel):
    """The ``[controller]`` table of dsr.toml."""

    model_config = ConfigDict(extra="forbid")
    legal_name: str = ""
    postal_address: str = ""
    website: Url = ""
    privacy_policy_url: Url = ""
    privacy_contact: PrivacyContact = Field(default_factory=PrivacyContact)
    supervisory_authority: SupervisoryAuthority = Field(default_factory=SupervisoryAuthority)
    purposes: list[Purpose] = Field(default_factory=list)
    art19_recipients: list[Art19Recipient] = Field(default_factory=list)
    other_systems: list[OtherSystem] = Field(
        default_factory=list, description="Systems no connector reaches, named in every reply with how they are "
                                          "dealt with.")
    systems: dict[str, Text] = Field(
        default_factory=dict,
        description="Connector name -> how replies name that system, e.g. hubspot = 'our CRM (HubSpot)'.")
    legal_bases: dict[str, Text] = Field(
        default_factory=dict,
        description="A retention basis as connectors report it -> its wording in each language; the engine "
                    "words GDPR articles and Code de commerce L123-22 itself (dsr.mail.replies.legal_basis_wording).")

    @field_validator("legal_name", "postal_address")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return _single_line(value)

    def system_label(self, connector: str, language: Language | str) -> str:
        label = self.systems.get(connector)
        return label.text(language) if label else connector

    def consent_purposes(self) -> list[ConsentPurpose]:
        """Every purpose based on consent that has a key, as requests freeze it (profile order)."""
        return [ConsentPurpose(
            key=p.key, name_fr=p.name.text("fr"), name_en=p.name.text("en"), marketing=p.marketing,
            actions={connector: ConsentAction(
                purpose=p.key, subscriptions=list(w.subscriptions), table=w.table, email_column=w.email,
                set_values=dict(w.set), residual=w.residual.text("en"), task_fr=w.task.text("fr"),
                task_en=w.task.text("en")) for connector, w in p.withdrawal.items()},
        ) for p in self.purposes if p.legal_basis == "consent" and p.key]

    @model_validator(mode="after")
    def _unique_keys(self) -> ControllerProfile:
        seen: set[str] = set()
        for i, purpose in enumerate(self.purposes):
            if purpose.key in seen:
                raise ValueError(f"purposes[{i}].key: {purpose.key!r} names two purposes")
            if purpose.key:
                seen.add(purpose.key)
        return self


# --- reading ------------------------------------------------------------------------------------------


def _location(loc: tuple[Any, ...]) -> str:
    out = "controller"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "Localized" or str(part).startswith(("function-", "literal[")):
            continue  # pydantic's names for validator wrappers and union members, not keys of the file
        else:
            out += f".{part}"
    return out


def parse_profile(text: str, source: str = "dsr.toml") -> ControllerProfile | None:
    """The profile in the ``[controller]`` table of a dsr.toml text; ``None`` when there is no such table.

    Raises :class:`ProfileError` (a :class:`~dsr.errors.ConfigurationError`) naming the key path.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"{source}: not valid TOML ({err})") from None
    table = raw.get("controller")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ProfileError(f"{source}: controller: expected a table ([controller])")
    try:
        return ControllerProfile.model_validate(table)
    except ValidationError as err:
        first = err.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        raise ProfileError(f"{source}: {_location(tuple(first['loc']))}: {message}") from None


def load_profile(path: Path | str) -> ControllerProfile | None:
    """The profile in the file at ``path``; ``None`` when the file or its ``[controller]`` table is absent."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ProfileError(f"{path}: cannot be read ({err.strerror})") from None
    return parse_profile(text, source=str(path))


# --- completeness --------------------------------------------------------------------------------------


def check_profile(profile: ControllerProfile | None) -> list[str]:
    """Every item an access reply would lack, one line each with its key path; empty when complete."""
    if profile is None:
        return ["controller: missing (no [controller] table in dsr.toml; the access reply needs the "
                "Art. 15(1) information)"]
    missing: list[str] = []

    def need(ok: object, path: str, why: str) -> None:
        if not ok:
            missing.append(f"controller.{path}: missing ({why})")

    need(profile.legal_name, "legal_name", "identity of the controller, Art. 13(1)(a)")
    need(profile.postal_address, "postal_address", "contact details of the controller, Art. 13(1)(a)")
    need(profile.privacy_contact.email, "privacy_contact.email", "contact details of the DPO or privacy "
                                                                  "contact, Art. 13(1)(b)")
    authority = profile.supervisory_authority
    need(authority.name, "supervisory_authority.name", "Art. 15(1)(f)")
    need(authority.postal_address or authority.website, "supervisory_authority.postal_address",
         "Art. 15(1)(f)")
    need(profile.purposes, "purposes", "Art. 15(1)(a): at least one [[controller.purposes]]")
    for i, purpose in enumerate(profile.purposes):
        at = f"purposes[{i}]"
        need(purpose.name, f"{at}.name", "Art. 15(1)(a)")
        need(any(purpose.categories), f"{at}.categories", "Art. 15(1)(b)")
        need(purpose.legal_basis, f"{at}.legal_basis", "Art. 6(1), told with the purpose")
        need(purpose.recipients is not None, f"{at}.recipients",
             "Art. 15(1)(c); write recipients = [] when nobody outside the company receives the data")
        for j, recipient in enumerate(purpose.recipients or []):
            where = f"{at}.recipients[{j}]"
            need(recipient.name, f"{where}.name", "Art. 15(1)(c)")
            need(recipient.country, f"{where}.country", "Art. 15(1)(c), 15(2): needed to tell whether the "
                                                         "data leaves the EEA")
            if is_third_country(recipient.country):
                need(recipient.safeguard, f"{where}.safeguard",
                     f"Art. 15(2): transfer to {recipient.country}, outside the EEA")
        need(purpose.retention, f"{at}.retention", "Art. 15(1)(d): the period, or the criteria used to set it")
        need(purpose.source, f"{at}.source", "Art. 15(1)(g); write \"you\" when collected from the subject")
        need(purpose.automated_decisions is not None, f"{at}.automated_decisions",
             'Art. 15(1)(h); write "none" when there is none')
    return missing


def check_consent(profile: ControllerProfile | None, connectors: Mapping[str, str]) -> list[str]:
    """What a withdrawal of consent (Art. 7(3)) could not carry out: a consent purpose without a key (it cannot be
    named), or without a mapping to any system, or mapped to a connector that is not configured (``connectors``:
    name -> type), or mapped in a way its type cannot carry out (a ``processor`` or ``manual`` system is asked by
    email, ``task``; an API connector never is). A connector a purpose does not map takes no part in its
    withdrawal (the purpose does not use that system)."""
    if profile is None:
        return []
    problems: list[str] = []
    for i, purpose in enumerate(profile.purposes):
        at = f"controller.purposes[{i}]"
        if purpose.legal_basis != "consent":
            if purpose.withdrawal or purpose.marketing:
                problems.append(f"{at}: withdrawal and marketing are only for legal_basis = \"consent\"")
            continue
        if not purpose.key:
            problems.append(f"{at}.key: missing (a consent purpose needs a key to be withdrawn: newsletter...)")
            continue
        if not purpose.withdrawal:
            problems.append(f"{at}.withdrawal: missing: withdrawing consent to {purpose.key!r} changes no system "
                            "(map each connector: subscriptions, table, residual or task)")
        for connector in sorted(purpose.withdrawal):
            way = purpose.withdrawal[connector]
            kind = connectors.get(connector)
            if kind is None:
                problems.append(f"{at}.withdrawal.{connector}: no connector of that name")
            elif kind in OUTSIDE_TYPES and not way.task:
                problems.append(f"{at}.withdrawal.{connector}: a {kind} system is asked by email: map it with "
                                "task = \"...\" (what to stop there)")
            elif kind not in OUTSIDE_TYPES and way.task:
                problems.append(f"{at}.withdrawal.{connector}: task is for processor and manual systems; a {kind} "
                                "connector takes subscriptions, table or residual")
    return problems


class ProfileFile:
    """``load_profile(path)`` read once per change of the file: every notice and reply asks for the profile, and
    parsing it (TOML, then validation) cost about 1% of a worker's CPU per request when re-done each time.

    The parsed profile (or the error the file gives) is kept keyed by the file's modification time, size and inode,
    so an edited or replaced ``dsr.toml`` is read again at the next call, without restarting the worker. Each
    process keeps its own copy of its own file: configuration, nothing to share. Safe from several threads (the
    activities run in a thread pool); the profile returned is shared, and read only."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._key: tuple[int, int, int] | None = None
        self._value: ControllerProfile | None = None
        self._error: ProfileError | None = None
        self.reads = 0
        """How many times the file was read and parsed (for the tests)."""

    def __call__(self) -> ControllerProfile | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise ProfileError(f"{self.path}: cannot be read ({err.strerror})") from None
        key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        with self._lock:
            if key != self._key:
                self.reads += 1
                try:
                    self._value, self._error = load_profile(self.path), None
                except ProfileError as err:
                    self._value, self._error = None, err
                self._key = key
            if self._error is not None:
                raise self._error
            return self._value
