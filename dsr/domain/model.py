"""The words of the domain and the dataclasses that cross boundaries.

Everything here is imported by workflow code, so it stays deterministic and free of I/O: plain
dataclasses and enums, no clocks, no randomness. Each workflow, activity, update and query takes one
dataclass so fields can be added later without breaking running workflows (new fields get defaults).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any

TASK_QUEUE = "dsr-requests"
"""The one task queue every worker polls; scale by running more workers on it."""

WORKFLOW_ID_PREFIX = "dsr-"
TRIAGE_PREFIX = "triage-"  # + the reserved request id: an email waiting for an operator to classify it
"""Workflow ids are the request reference, e.g. ``dsr-2026-11-7KQ3FJ``: no personal data, ever."""


class RequestKind(StrEnum):
    """The right the subject exercises (GDPR articles 15, 16, 17, 20, 21)."""

    ACCESS = "access"
    RECTIFICATION = "rectification"
    ERASURE = "erasure"
    PORTABILITY = "portability"
    OBJECTION = "objection"
    CONSENT_WITHDRAWAL = "consent_withdrawal"
    POST_MORTEM = "post_mortem"  # loi 78-17 art. 85: the data of a deceased person, asked by an heir or designee
    RESTRICTION = "restriction"


class RestrictionGround(StrEnum):
    """The ground of Art. 18(1) a restriction rests on, chosen at intake; it says when the restriction ends."""

    ACCURACY = "a"  # 18(1)(a): accuracy contested, for the period to verify it (ends with the rectification)
    UNLAWFUL = "b"  # 18(1)(b): unlawful processing, and the subject opposes erasure (lifted by an operator)
    LEGAL_CLAIMS = "c"  # 18(1)(c): we no longer need the data, the subject needs it for legal claims (idem)
    OBJECTION = "d"  # 18(1)(d): an objection under 21(1) is being verified (ends with its decision)


class ObjectionScope(StrEnum):
    """What an objection (Art. 21) is to: it decides whether the controller may weigh it at all."""

    MARKETING = "marketing"  # 21(2)-(3): direct marketing; absolute, carried out at once, no balancing
    OTHER = "other"  # 21(1): processing on legitimate interests or a public task; an operator decides


def objection_scope(kind: RequestKind, scope: str) -> ObjectionScope | None:
    """The scope of an objection (``other`` when none was given: the one that asks a person to look), or None
    for any other kind."""
    if kind != RequestKind.OBJECTION:
        return None
    return ObjectionScope(scope) if scope else ObjectionScope.OTHER


class Quality(StrEnum):
    """Who may act for a deceased person (loi 78-17 art. 85), as the sender claims and an operator confirms."""

    HEIR = "heir"  # 85-II: an heir, without directives or where they do not say otherwise
    EXECUTOR = "executor"  # the estate's executor (exécuteur testamentaire / notaire), acting for the heirs
    DESIGNATED = "designated"  # 85-I: the person the deceased designated in their directives


class PostMortemAim(StrEnum):
    """What the sender of a ``post_mortem`` request asks (the request's ``scope``), within art. 85-II."""

    CLOSURE = "closure"  # 85-II 2°: the death taken into account: accounts closed, processing stopped (default)
    ESTATE = "estate"  # 85-II 1°: information useful to settle the estate, digital goods, family memories


class DirectiveInstruction(StrEnum):
    """What a person's directives (art. 85-I) say to do with their data after death."""

    ERASE = "erase"  # close the accounts, erase the data
    KEEP = "keep"  # keep the data as it is (no erasure by the heirs' request: a contrary mention, 85-II)
    HAND_OVER = "hand_over"  # communicate the data to the designated person


def post_mortem_aim(kind: RequestKind, scope: str) -> PostMortemAim | None:
    """The aim of a post_mortem request (closure when none was given), or None for any other kind."""
    if kind != RequestKind.POST_MORTEM:
        return None
    return PostMortemAim(scope) if scope else PostMortemAim.CLOSURE


class Stage(StrEnum):
    """Where a request is in its lifecycle; mirrored in the ``DsrStage`` search attribute."""

    RECEIVED = "received"
    AWAITING_IDENTITY = "awaiting_identity"
    PROCESSING = "processing"
    NEEDS_ATTENTION = "needs_attention"
    REPLYING = "replying"
    CLOSED = "closed"


class Outcome(StrEnum):
    """How a closed request ended."""

    FULFILLED = "fulfilled"
    REFUSED = "refused"  # Art. 12(5): manifestly unfounded or excessive, reason recorded
    # Art. 21(1): an objection answered and not upheld (the controller's compelling legitimate grounds, told to the
    # subject with the 12(4) remedies). Not "fulfilled": the register must not count it as a right satisfied.
    DECLINED = "declined"
    UNVERIFIED = "unverified"  # identity not confirmed in time
    WITHDRAWN = "withdrawn"
    # Stopped by hand in Temporal (terminate), which no code of the request can catch: the request was never
    # answered; ``dsr reconcile`` records it so the ledger and the register say so.
    TERMINATED = "terminated"


class Channel(StrEnum):
    """How the request reached the controller."""

    API = "api"
    EMAIL = "email"
    FORM = "form"
    SUPPORT_DESK = "support_desk"
    OPERATOR = "operator"  # typed in by staff
    LETTER = "letter"  # a paper letter, typed in by staff with the day it was received


class IdentityMethod(StrEnum):
    """How the subject proves who they are (EDPB 01/2022: proportionate to the doubt)."""

    TRUSTED = "trusted"  # the channel already authenticated the person
    EMAIL = "email"  # control of the address on file, by one-time link or code
    DOCUMENT = "document"  # an operator reviews a document, which is then deleted


class ClockPolicy(StrEnum):
    """When the one-month clock runs (LEGAL.md, décret 2019-536)."""

    RECEIPT = "receipt"  # from receipt, whatever happens: never late
    SUSPEND_DURING_IDENTITY = "suspend_during_identity"  # from the day identity is confirmed


class Language(StrEnum):
    FR = "fr"
    EN = "en"


# Deliberately simple: a syntactic check that catches typos and injection, not RFC 5322 in full.
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")


def is_valid_email(address: str) -> bool:
    """True when ``address`` is a plausible single mailbox (no display name, no CR/LF, <= 254 chars)."""
    return len(address) <= 254 and _EMAIL.fullmatch(address) is not None


BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
"""Embeddings, overrides, isolates and marks: they make text read in another order than it is (U+202E turns
"moc.elpmaxe" into "example.com")."""
_JOINERS = frozenset("\u200c\u200d")  # ZWNJ/ZWJ: part of how Persian, Indic names and emoji are written


def strip_controls(value: str) -> str:
    """``value`` without bidi controls, control characters or other invisible format characters (ZWNJ and
    ZWJ kept); line and paragraph breaks become spaces. For text strangers type that others will read."""
    if value.isprintable():
        # No character of the categories Other (Cc, Cf, Cs...) or Separator but the space: nothing below would change
        # it (the bidi controls and the joiners are Cf). The usual case, in a C loop rather than one per character.
        return value
    out = []
    for char in value:
        if char in _JOINERS:
            out.append(char)
            continue
        category = unicodedata.category(char)
        if char in BIDI_CONTROLS or category in ("Cf", "Cs"):
            continue
        if category == "Cc" or category in ("Zl", "Zp"):
            out.append(" ")
            continue
        out.append(char)
    return "".join(out)


def display_name(value: str) -> str:
    """A person's name as it may be shown or written anywhere: one line, no controls, spaces collapsed."""
    return " ".join(strip_controls(value).split())


@dataclass
class Subject:
    """The person the request is about. Personal data: only ever inside encrypted payloads."""

    email: str
    name: str = ""
    # Other identifiers an authenticated channel vouched for (the company's own app through the API, staff through
    # `dsr submit`): an application database's map may locate the subject by them too (connectors/sql).
    customer_id: str = ""
    phone: str = ""


@dataclass
class Reminder:
    """A moment before the deadline when operators are reminded (D-7, D-2)."""

    label: str  # "D-7", "D-2"
    at: datetime  # UTC instant


@dataclass
class Deadline:
    """A response deadline, computed outside workflow code so replays never see new holiday data."""

    due: date  # last day on which a reply is in time (Regulation 1182/71)
    overdue_at: datetime  # UTC instant when ``due`` ends in the controller's time zone
    reminders: list[Reminder] = field(default_factory=list)


@dataclass
class Deadlines:
    """The normal deadline and the one an extension would give, both from the same starting date."""

    normal: Deadline
    extended: Deadline


@dataclass
class DeadlineInput:
    """What the deadline calculation needs: the starting date and the controller's calendar."""

    start: date  # receipt date, or the identity-confirmation date when the clock was suspended
    country: str = "FR"
    subdiv: str | None = None
    timezone: str = "Europe/Paris"
    suspended_days: int = 0  # décret 2019-536: days the period stood still, added to its end


@dataclass
class ClockResume:
    """A suspended period resumes (décret 2019-536): how long it stood still, and the deadlines it now has."""

    received_on: date
    suspended_at: datetime  # UTC instants; their dates are taken in ``timezone``
    resumed_at: datetime
    suspended_days_before: int = 0  # earlier suspensions of the same request
    country: str = "FR"
    subdiv: str | None = None
    timezone: str = "Europe/Paris"


@dataclass
class ResumedClock:
    suspended_on: date
    resumed_on: date
    suspended_days: int  # in all, this suspension included
    deadlines: Deadlines


@dataclass
class RequestPolicy:
    """Settings frozen into a request when it starts, so later configuration changes never alter it."""

    identity: IdentityMethod = IdentityMethod.EMAIL
    clock: ClockPolicy = ClockPolicy.RECEIPT
    identity_reminder_after_days: int = 7
    identity_timeout_days: int = 30
    operator_email: str = "privacy@localhost"
    country: str = "FR"
    subdiv: str | None = None
    timezone: str = "Europe/Paris"
    escalation_repeat_days: int = 7
    connector_heartbeat_seconds: int = 120  # a crashed worker's connector run is retried after this
    document_reason: str = ""  # why the document policy asks every requester for one (told to them; suspends)
    connector_degraded_minutes: int = 60  # a connector failing this long (no success, no progress) is degraded
    suppression_years: int = 3  # CNIL: a marketing objection is remembered (blind index only) this long
    restriction_lift_notice_days: int = 3  # Art. 18(3): days between telling the subject and lifting a restriction


CANONICAL_FIELDS = frozenset({
    "first_name", "last_name", "email", "phone",
    "address_line1", "address_line2", "city", "postcode", "state", "country",
})
"""Fields a rectification may name (Art. 16); each connector maps them onto its own system's fields."""


@dataclass
class RequestInput:
    """The single input of the ``DataSubjectRequest`` workflow."""

    request_id: str
    kind: RequestKind
    subject: Subject
    channel: Channel
    received_at: datetime  # UTC instant of receipt
    received_on: date  # receipt date in the controller's time zone
    deadlines: Deadlines
    language: Language = Language.FR
    details: str = ""  # free text from the subject; may hold personal data (encrypted payload)
    policy: RequestPolicy = field(default_factory=RequestPolicy)
    changes: dict[str, str] = field(default_factory=dict)  # rectification: canonical field -> new value
    in_reply_to: str | None = None  # Message-ID of the subject's email, so notices stay in its thread
    ticket: str | None = None  # support-desk ticket ("zendesk:4521"); shown to staff, quoted in replies
    subject_key: str = ""  # blind index of the subject's email (set at intake): keys their line; "" = none
    scope: str = ""  # objection: an ObjectionScope value; post_mortem: a PostMortemAim value ("" for other kinds)
    purposes: list[ConsentPurpose] = field(default_factory=list)  # consent_withdrawal: frozen from the profile
    # post_mortem (loi 78-17 art. 85): ``subject`` is the sender (heir, executor, designee), who gets every
    # email; ``deceased`` is the person whose data the systems are searched for (personal data: encrypted
    # payload only); ``quality`` is what the sender says they are (a Quality value), confirmed by an operator.
    deceased: Subject | None = None
    quality: str = ""
    documents: int = 0  # post_mortem: files sent with the web form, stored under the request (no personal data)
    ground: str = ""  # restriction: a RestrictionGround value ("" for other kinds)


# --- updates (one dataclass each) ---------------------------------------------------------------


class IdentityProof(StrEnum):
    """How a confirmation of identity was obtained (beside its :class:`IdentityMethod`)."""

    LINK = "link"  # the subject pressed the button behind the signed link we emailed (``/verify/{token}``)
    CODE = "code"  # the subject typed the reference and the emailed code (``/verify``)
    REVIEW = "review"  # an operator checked (``dsr confirm-identity``); older callers sent no proof: the same


LINK_ONLY_KINDS = frozenset({RequestKind.ERASURE, RequestKind.RECTIFICATION, RequestKind.RESTRICTION})
"""Requests that change or delete the person's data: the email check is the signed link only, never a typed
code (a code can be guessed; a link cannot), so no code is sent for them and ``/verify`` refuses one."""


def code_offered(identity: IdentityMethod, kind: RequestKind) -> bool:
    """Whether the identity email of such a request carries a code (typed on ``/verify``)."""
    return identity == IdentityMethod.EMAIL and kind not in LINK_ONLY_KINDS


@dataclass
class IdentityConfirmation:
    method: IdentityMethod
    confirmed_by: str  # operator login or "subject" (email link); never the subject's address
    note: str = ""
    proof: IdentityProof = IdentityProof.REVIEW


def confirmation_refused(identity: IdentityMethod, kind: RequestKind, confirmation: IdentityConfirmation
                         ) -> str | None:
    """Why the request's identity policy does not allow ``confirmation`` (a sentence for the operator), or None.

    ``email`` takes the subject's link, their code (unless :data:`LINK_ONLY_KINDS`), or an operator's review
    (by email or of a document: at least as strong); ``document`` takes only an operator's review of a document;
    ``trusted`` is settled at the start and takes no confirmation."""
    by_subject = confirmation.proof in (IdentityProof.LINK, IdentityProof.CODE)
    if identity == IdentityMethod.DOCUMENT:
        if by_subject or confirmation.method != IdentityMethod.DOCUMENT:
            return "its policy requires an operator's review of a document (--method document)"
        return None
    if identity == IdentityMethod.EMAIL:
        if confirmation.method == IdentityMethod.TRUSTED:
            return "its policy is email: a trusted confirmation is only given by the channel at the start"
        if by_subject and confirmation.method != IdentityMethod.EMAIL:
            return "a link or code proves control of the address, which is the email method"
        if confirmation.proof == IdentityProof.CODE and not code_offered(identity, kind):
            return f"a {kind.value} request is confirmed by the signed link only, never by a code"
        return None
    return f"its policy is {identity.value}: nothing to confirm"


@dataclass
class CodeLocked:
    """Signal ``code_locked``: the lasting cap of wrong codes of this request was reached on a page (``verify``
    or ``exports``); its code path is closed and the operator is told. No client address, nothing typed."""

    page: str
    wrong: int


@dataclass
class Doubt:
    """An operator's reasonable doubt about the requester's identity (Art. 12(6)): what the subject must
    provide and why, told to them and kept (sealed) in the ledger."""

    reason: str
    requested_by: str = "operator"


@dataclass
class IdentityResend:
    """The subject asked, from their status page, for the identity email again (a new link, the same code)."""

    via: str = "status_page"


@dataclass
class Extension:
    reason: str  # Art. 12(3): the reasons are told to the subject
    requested_by: str = "operator"


class RefusalGround(StrEnum):
    """Why the controller does not act on a request; each has its own wording and article in the letter."""

    EXCESSIVE = "excessive"  # Art. 12(5): manifestly unfounded or excessive
    IDENTITY = "identity"  # Art. 11(2), 12(2): the subject cannot be identified
    OTHERS_RIGHTS = "others_rights"  # Art. 15(4), 20(4): a copy would harm the rights of others
    ERASURE_EXCEPTION = "erasure_exception"  # Art. 17(3): erasure does not apply
    LEGAL_RESTRICTION = "legal_restriction"  # Art. 23: a restriction laid down by law
    QUALITY = "quality"  # loi 78-17 art. 85: the sender of a post_mortem request has not shown they may act


@dataclass
class Refusal:
    reason: str  # Art. 12(5): the controller bears the burden of proof, so the reason is kept
    requested_by: str = "operator"
    ground: RefusalGround = field(default_factory=lambda: RefusalGround.EXCESSIVE)


@dataclass
class Withdrawal:
    requested_by: str = "subject"
    reason: str = ""


@dataclass
class Retry:
    requested_by: str = "operator"


@dataclass
class Rectification:
    """The corrections an operator read in a rectification request that did not state them (``dsr rectify``)."""

    changes: dict[str, str]  # canonical field -> new value; personal data (encrypted payload, never logged)
    requested_by: str = "operator"


@dataclass
class ObjectionDecision:
    """An operator's decision on an objection to processing other than marketing (Art. 21(1)): uphold it (the
    processing stops), or reject it on compelling legitimate grounds, told to the subject with the 12(4)
    remedies and kept sealed in the ledger (the controller bears the burden of proof)."""

    uphold: bool
    grounds: str = ""
    decided_by: str = "operator"


@dataclass
class ConsentAction:
    """What withdrawing consent to one purpose means in one system, as the controller profile maps it
    (``[controller.purposes.withdrawal]``), frozen into the request when it starts. Exactly one way is set:
    ``subscriptions`` (HubSpot: subscription type ids or names to unsubscribe the address from), ``table``
    (sql: the rows of ``table`` whose ``email_column`` is the address are deleted, or get ``set_values``),
    ``residual`` (a line for the operator: the system offers no switch the engine can turn), or ``task`` (a
    ``processor`` or ``manual`` system: its contact is asked by email to stop, in these words)."""

    purpose: str = ""  # the purpose's key
    subscriptions: list[str] = field(default_factory=list)
    table: str = ""
    email_column: str = "email"
    set_values: dict[str, str] = field(default_factory=dict)  # empty: delete the rows
    residual: str = ""
    task_fr: str = ""  # processor / manual: what to stop there, in the words of the profile (its contact's language)
    task_en: str = ""

    def task(self, language: str) -> str:
        return (self.task_en if language == "en" else self.task_fr) or self.task_fr or self.task_en


@dataclass
class ConsentPurpose:
    """A processing purpose based on consent (Art. 6(1)(a)) whose consent is withdrawn (Art. 7(3))."""

    key: str  # stable, from the profile (``newsletter``): in links, the API, the CLI and the ledger
    name_fr: str = ""
    name_en: str = ""
    marketing: bool = False  # direct marketing: withdrawn by the one-click List-Unsubscribe POST (RFC 8058)
    actions: dict[str, ConsentAction] = field(default_factory=dict)  # connector name -> its action

    def name(self, language: str) -> str:
        return (self.name_en if language == "en" else self.name_fr) or self.name_fr or self.name_en or self.key


@dataclass
class ConsentRecord:
    """Input of the ``record_consent_withdrawal`` activity: the purposes the subject withdrew consent to, kept
    as the blind index of the address only (like the suppression list), surviving a later erasure."""

    request_id: str
    subject: Subject
    purposes: list[str] = field(default_factory=list)


@dataclass
class QualityConfirmation:
    """An operator checked the document the sender of a ``post_mortem`` request sent (death certificate and proof
    of their quality: certificate of inheritance, notarial deed, the directives naming them): the request may
    run on the deceased person's data. Stands for the identity confirmation of the other kinds."""

    quality: Quality
    confirmed_by: str = "operator"
    note: str = ""  # what was checked; sealed in the ledger, never logged


@dataclass
class DirectivesLookup:
    """Input of ``find_directives``: the deceased person and the sender (personal data: encrypted payload)."""

    request_id: str
    deceased: Subject
    sender: Subject


@dataclass
class DirectivesFound:
    """What the ledger holds of the deceased person's directives, without personal data: the instruction, and
    whether they designate someone, and whether the sender is that person (compared by blind index)."""

    found: bool = False
    directive_id: str = ""
    instruction: str = ""  # a DirectiveInstruction value
    designates: bool = False
    sender_designated: bool = False


@dataclass
class Suppression:
    """Input of the ``suppress_marketing`` activity: put the subject on the suppression list."""

    request_id: str
    subject: Subject
    years: int = 3


@dataclass
class ResidualsCleared:
    """An operator cleared by hand what a system's API could not erase (the report's residual lines)."""

    cleared_by: str = "operator"
    note: str = ""  # how it was done; kept in the workflow history (encrypted), only its length in the ledger


@dataclass
class DuplicateAttached:
    """A new submission of the same subject and kind, attached to this open request instead of a second one."""

    channel: Channel
    received_at: datetime
    in_reply_to: str | None = None  # the new email's Message-ID: the notice answers in its thread
    ticket: str | None = None
    documents: int = 0  # files sent with the new submission (the form's), moved under this request


@dataclass
class Correspondence:
    """The subject wrote again about this open request (a reply to one of our emails), e.g. with an ID copy.

    Deliberately without the text or the sender: the email stays in the privacy mailbox, its attachments in
    the attachment store under the request's id. ``message_key`` is the mailbox's keyed hash of the
    message (no personal data): the update is applied once per message, however often it is delivered.
    """

    message_key: str
    received_at: datetime  # our server's receipt instant (IMAP INTERNALDATE)
    attachments: int = 0  # files of this message now stored under the request
    message_id: str | None = None  # the subject's Message-ID: later notices to them answer in its thread
    # What the receiving mail server said of the sender (DMARC, DKIM, SPF results, no domains), e.g.
    # "dmarc=pass dkim=pass spf=pass (mx.example.com)"; shown to operators beside the attachments.
    sender_check: str = ""


@dataclass
class UpdateResult:
    """What an update tells its caller: the stage and deadline after it was applied."""

    stage: Stage
    deadline: date
    extended: bool


# --- connectors -----------------------------------------------------------------------------------


class ConnectorState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # permanent error: waits for an operator's retry


@dataclass
class ConnectorTask:
    """Input of the activity that runs one connector for one request."""

    request_id: str
    connector: str
    kind: RequestKind
    subject: Subject
    changes: dict[str, str] = field(default_factory=dict)
    consent: list[ConsentAction] = field(default_factory=list)  # consent_withdrawal: this system's actions
    resume: dict[str, Any] | None = None  # the checkpoint a fresh schedule starts from (a progressed failure)
    lift: bool = False  # restriction: remove the mark instead of setting it
    schedule: int = 0
    """The workflow's number for this schedule of the connector; 0 = a task no workflow watches (the activity
    called on its own), whose activity neither reports progress as a failure type nor tells the workflow of
    failures."""


@dataclass
class ConnectorHealth:
    """Signal ``connector_health`` from a connector's activity to its request: the schedule it belongs to
    began failing (``failing``, with the error's class and hint, no personal data) or, failing, advanced its
    checkpoint again (``failing`` False)."""

    connector: str
    schedule: int
    failing: bool
    error: str = ""


class RecordAction(StrEnum):
    """What happened to one record of the subject in one system."""

    EXPORTED = "exported"
    DELETED = "deleted"
    ANONYMISED = "anonymised"  # kept for accounting, personal fields blanked
    RETAINED = "retained"  # kept as is, under a legal basis, until a date
    ALREADY_GONE = "already_gone"  # a repeated erasure: nothing left to do
    CHANGED = "changed"  # rectification applied
    UNCHANGED = "unchanged"  # rectification already applied (idempotent)
    RESIDUAL = "residual"  # could not be cleared through the API (told to the subject)
    UNSUBSCRIBED = "unsubscribed"  # objection to marketing: the subscription is ended in the system
    WITHDRAWN = "withdrawn"  # consent withdrawn: the system no longer processes the data for that purpose
    RESTRICTED = "restricted"  # restriction (Art. 18): the record is marked restricted in the system
    LIFTED = "lifted"  # the restriction's mark is removed (after the subject was told, Art. 18(3))


@dataclass
class RecordReport:
    """One line of a per-system report. Record ids only (e.g. ``cus_123``), never record contents."""

    dataset: str  # e.g. "customer", "orders", "charges"
    record_id: str
    action: RecordAction
    legal_basis: str = ""  # for retained/anonymised: e.g. "Art. 17(3)(b) GDPR; Code de commerce L123-22"
    retained_until: date | None = None
    fields: list[str] = field(default_factory=list)  # rectification: canonical fields changed; residual: which
    note: str = ""  # human-readable, no personal data


@dataclass
class DatasetSummary:
    """One exported dataset in the export store."""

    dataset: str
    records: int
    provided: bool  # Art. 20: data the subject provided (profile, addresses, orders), not derived data


class AnswerStatus(StrEnum):
    """What a processor (by email) or an internal owner (a task) answered for one request."""

    DONE = "done"  # carried out (erased, exported, corrected) by them
    NO_DATA = "no_data"  # they hold nothing about the subject
    KEPT = "kept"  # kept under a legal basis, until a date
    CANNOT = "cannot"  # they cannot carry it out (reason given)
    NO_ANSWER = "no_answer"  # recorded by an operator: the reply goes without their answer (told as such)


@dataclass
class OutsideAnswer:
    """The answer of a system reached by a person (``processor`` by email, ``manual`` task), as recorded.

    ``reason`` and ``legal_basis`` are typed by a person: they travel only in encrypted payloads and the sealed
    ledger row, never in ids, summaries or failure messages."""

    status: AnswerStatus
    legal_basis: str = ""  # kept
    kept_until: date | None = None  # kept
    reason: str = ""  # cannot
    answered_by: str = ""  # "processor" (the link), "owner" (the link), or the operator's name (CLI)
    answered_at: datetime | None = None
    export_records: int = 0  # records of an uploaded export file, stored encrypted with the request's exports
    asked_on: date | None = None  # when the request was first sent to them
    system_type: str = ""  # "processor" or "manual": the reply says who acted


@dataclass
class ConnectorOutcome:
    """What one connector did. Counts and ids only: record contents go to the export store, never history."""

    connector: str
    found: int = 0  # records located for the subject
    counts: dict[str, int] = field(default_factory=dict)  # e.g. exported, deleted, anonymised, retained
    notes: list[str] = field(default_factory=list)  # human-readable, no personal data
    report: list[RecordReport] = field(default_factory=list)
    datasets: list[DatasetSummary] = field(default_factory=list)
    answer: OutsideAnswer | None = None  # a system reached by a person: what they answered (the reply says so)


@dataclass
class ConnectorProgress:
    connector: str
    state: ConnectorState = ConnectorState.PENDING
    attempts: int = 0
    error: str = ""  # class and hint, no personal data
    outcome: ConnectorOutcome | None = None
    # Since when the current schedule fails without success or progress, whether
    # that has lasted past the policy's ``connector_degraded_minutes``, and how often a failure after progress
    # was resumed at once from its checkpoint (attempts and backoff reset).
    failing_since: datetime | None = None
    degraded: bool = False
    resumed: int = 0


@dataclass
class FanOutPlan:
    """Which connectors take part in a request of a given kind (from the worker's configuration)."""

    connectors: list[str]
    outside: list[str] = field(default_factory=list)
    """Those of ``connectors`` reached by a person (``processor``, ``manual``): each runs as an
    ``OutsideSystemTask`` child workflow instead of the connector activity."""


@dataclass
class PlanInput:
    kind: RequestKind


# --- notices and ledger ---------------------------------------------------------------------------


class NoticeTemplate(StrEnum):
    """Lifecycle notices; each is a folder of templates in ``templates/<lang>/``."""

    ACKNOWLEDGEMENT = "acknowledgement"
    IDENTITY_REQUEST = "identity_request"
    IDENTITY_REMINDER = "identity_reminder"
    EXTENSION = "extension"
    REFUSAL = "refusal"
    UNVERIFIED = "unverified"
    WITHDRAWN = "withdrawn"
    COMPLETED = "completed"
    OPERATOR_REMINDER = "operator_reminder"
    OPERATOR_ESCALATION = "operator_escalation"
    OPERATOR_ATTENTION = "operator_attention"
    OPERATOR_TRIAGE = "operator_triage"
    DUPLICATE = "duplicate"  # a second request of the same kind was attached to the open one
    OPERATOR_REPLY_HELD = "operator_reply_held"  # the final reply cannot be written (e.g. incomplete profile)
    OPERATOR_RESIDUAL = "operator_residual"  # data a system's API could not clear: to be cleared by hand
    OPERATOR_CORRESPONDENCE = "operator_correspondence"  # the subject wrote again (e.g. sent an ID copy)
    OPERATOR_CHANGES_NEEDED = "operator_changes_needed"  # a rectification that does not say what to correct
    IDENTITY_DOUBT = "identity_doubt"  # a reasonable doubt: what to provide, and the clock suspended meanwhile
    CLOCK_RESUMED = "clock_resumed"  # the subject provided it: the time left resumes, the new due date
    OPERATOR_DEGRADED = "operator_degraded"  # a connector has been failing (retried) for longer than the policy allows
    OPERATOR_CODE_LOCKED = "operator_code_locked"  # too many wrong codes: the request's code path is closed
    OPERATOR_DECISION_NEEDED = "operator_decision_needed"  # an objection (21(1)) waits for ``dsr decide``
    OPERATOR_CANCELLATION = "operator_cancellation"  # a cancellation from the Temporal UI: taken or refused
    RESTRICTION_LIFT = "restriction_lift"  # Art. 18(3): the subject is told before a restriction is lifted


OPERATOR_TEMPLATES = frozenset({
    NoticeTemplate.OPERATOR_REMINDER,
    NoticeTemplate.OPERATOR_ESCALATION,
    NoticeTemplate.OPERATOR_ATTENTION,
    NoticeTemplate.OPERATOR_TRIAGE,
    NoticeTemplate.OPERATOR_REPLY_HELD,
    NoticeTemplate.OPERATOR_RESIDUAL,
    NoticeTemplate.OPERATOR_CORRESPONDENCE,
    NoticeTemplate.OPERATOR_CHANGES_NEEDED,
    NoticeTemplate.OPERATOR_DEGRADED,
    NoticeTemplate.OPERATOR_CODE_LOCKED,
    NoticeTemplate.OPERATOR_DECISION_NEEDED,
    NoticeTemplate.OPERATOR_CANCELLATION,
})


@dataclass
class Notice:
    """One email to send. ``to`` is the subject's address or the operator address."""

    request_id: str
    template: NoticeTemplate
    to: str
    language: Language
    context: dict[str, str] = field(default_factory=dict)  # values for the template; strings only
    in_reply_to: str | None = None  # Message-ID of the subject's email, to reply in the same thread
    # Idempotency key of this email within its request, when it may take more than one activity (a first try,
    # then retries): every activity sending it uses the same Message-ID and sent-log key. Empty: the activity's.
    key: str = ""


@dataclass
class SentNotice:
    message_id: str
    already_sent: bool = False  # a retried activity found the notice in the ledger


@dataclass
class RequestRecordInput:
    """Input of the activity that creates (or finds) the request's row in the ledger."""

    request_id: str
    kind: RequestKind
    channel: Channel
    subject: Subject
    received_at: datetime
    deadline: date
    language: Language
    scope: str = ""  # post_mortem: the sender's aim (a PostMortemAim value), kept on ``received`` for the register
    documents: int = 0  # files that came with the submission (the web form's documents), kept on ``received``


@dataclass
class AuditEvent:
    """One append-only ledger event. ``details`` never holds raw personal data."""

    request_id: str
    event: str  # e.g. "received", "identity_confirmed", "extended", "connector_done", "closed"
    actor: str = "engine"
    details: dict[str, str] = field(default_factory=dict)
    stage: Stage | None = None  # when given, the request row's stage is updated too
    outcome: Outcome | None = None
    deadline: date | None = None
    extended: bool | None = None
    note: str = ""
    """The operator's own words for the record (an extension's or a refusal's reason): they may name people,
    so the ledger keeps them sealed; the Art. 12(4)-(5) burden of proof outlives Temporal's history."""


@dataclass
class EventBatch:
    """Ledger events written in one transaction, in order, under ``key`` (the n-th: ``key/n``): whichever activity
    writes the batch first writes it, any other (a retry, the reply's retried activity, the request's ledger writer
    handed it back) finds every key known and writes nothing twice."""

    key: str
    events: list[AuditEvent] = field(default_factory=list)


@dataclass
class ReplyInput:
    """Input of the activity sending the final reply (and Art. 19 notices) of a fulfilled request."""

    request_id: str
    kind: RequestKind
    language: Language
    subject: Subject
    received: date
    deadline: date
    extended: bool = False
    extension_reason: str = ""
    outcomes: list[ConnectorOutcome] = field(default_factory=list)
    in_reply_to: str | None = None
    scope: str = ""  # objection: marketing or other
    decision: str = ""  # objection (other): "upheld" or "rejected"
    grounds: str = ""  # a rejected objection: the compelling legitimate grounds, told to the subject
    suppressed_until: date | None = None  # a marketing objection: how long the suppression list remembers it
    purposes: list[ConsentPurpose] = field(default_factory=list)  # consent_withdrawal: the purposes withdrawn
    consent_earlier: list[str] = field(default_factory=list)  # of those, the ones an earlier request withdrew
    quality: str = ""  # post_mortem: the sender's confirmed quality
    action: str = ""  # post_mortem: "closed", "kept" (directives), "staff" (estate information, a hand-over)
    directives: str = ""  # post_mortem: the instruction of the directives applied ("" when none were found)
    ground: str = ""  # restriction: the Art. 18(1) ground (a RestrictionGround value)
    lift_notice_days: int = 0  # restriction: days between telling the subject and lifting (Art. 18(3))
    # The emails' idempotency key within the workflow run: the same for the first try and the retried activity,
    # so both send one Message-ID. "": the activity's id (histories from before it).
    key: str = ""
    # The ledger events noted before the reply (``turn_taken``, ``connector_done``..., ``replying``), written by
    # the reply's first try before anything else: one activity and one workflow task less than a batch of their own.
    events: EventBatch | None = None


@dataclass
class ReplyResult:
    message_id: str
    no_data: bool = False
    link_expires_at: datetime | None = None  # the bundle and exports are deleted then
    bundle_sha256: str = ""
    recipients_notified: list[str] = field(default_factory=list)


@dataclass
class ExportsDeletion:
    request_id: str


@dataclass
class RequestStatus:
    """Answer of the ``status`` query. Deliberately free of the subject's email and name."""

    request_id: str
    kind: RequestKind
    stage: Stage
    outcome: Outcome | None
    channel: Channel
    received: date
    deadline: date
    extended: bool
    overdue: bool
    identity: IdentityMethod
    identity_confirmed: bool
    language: Language
    connectors: list[ConnectorProgress] = field(default_factory=list)
    extension_reason: str = ""
    refusal_reason: str = ""
    clock_suspended: bool = False
    link_expires_at: datetime | None = None  # access/portability: the download link, then deletion
    exports_deleted: bool = False
    reply_held: str = ""  # why the final reply waits for an operator (error type and message, no personal data)
    residuals: list[str] = field(default_factory=list)  # residual lines still to clear by hand, if any
    waiting_for: str = ""  # the request of the same person whose systems work this one waits for
    mail_pending: list[str] = field(default_factory=list)  # notices whose first sending failed, still retried
    awaiting_changes: bool = False  # a rectification that did not say what to correct waits for ``dsr rectify``
    # Each reply of the subject recorded on the request: when, files kept, what our mail server said of the sender.
    correspondence: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)  # connectors failing longer than the policy allows
    scope: str = ""  # objection: marketing or other
    awaiting_decision: bool = False  # an objection (21(1)) waits for ``dsr decide``
    quality: str = ""  # post_mortem: the sender's confirmed quality (heir, executor, designated)
    directives: str = ""  # post_mortem: the instruction of the deceased person's directives, "" when none
    decision: str = ""  # "upheld" or "rejected", once decided
    purposes: list[str] = field(default_factory=list)  # consent_withdrawal: the keys of the purposes withdrawn
    # The end of the request: the aftercare workflow that follows the link and residual data once it is answered;
    # why a cancellation from the Temporal UI was refused; what Temporal says of a run that ended without closing
    # the request (``terminated``: filled in by ``dsr status``, never by the workflow, which cannot see it).
    aftercare: str = ""
    cancellation_refused: str = ""
    temporal_state: str = ""
    ground: str = ""  # restriction: its Art. 18(1) ground
    restriction: str = ""  # an answered restriction: the workflow holding it in force (``restriction-<reference>``)
    # The supplementary letter to the subject (the systems the reply told as not answered yet), from the aftercare:
    # "", "waiting" (for ``supplement_pending``), "sent" or "failed" (filled in by ``dsr status``).
    supplement: str = ""
    supplement_pending: list[str] = field(default_factory=list)


# --- per-subject order ----------------------------------------------------------------------------

SUBJECT_QUEUE_PREFIX = "subject-"
SUBJECT_TURN_SIGNAL = "subject_turn"
"""The signal of a request (or a restriction's lift) by which it is told who holds its person's turn
(:mod:`dsr.store.turns`, told by the activities of :mod:`activities.subjects`)."""


def subject_queue_id(subject_key: str) -> str:
    """Key of a subject's line for their systems (:mod:`dsr.store.turns`): the blind index (a keyed HMAC, hex)
    shortened to 128 bits; it tells requests of one person apart from another's, and nothing about who they are."""
    return SUBJECT_QUEUE_PREFIX + subject_key[:32]


@dataclass
class TurnAsk:
    """A request asking for its subject's turn (``ask_subject_turn``). ``round`` counts the request's asks, so
    answers to an earlier one are told apart (it asks again after a retry)."""

    request_id: str
    received_at: datetime  # the earliest received is granted first (ties: request id)
    round: int = 1


@dataclass
class TurnRelease:
    """The request is done with its subject's systems, or no longer waits (``release_subject_turn``)."""

    request_id: str
    round: int = 1


@dataclass
class SubjectTurn:
    """Who holds a request's person's turn, told to the request (the answer of the ask, then signal
    ``subject_turn`` when it changes): itself means granted."""

    holder: str
    round: int


@dataclass
class QueueAsk:
    """Input of the ``ask_subject_turn`` activity (and of ``check_subject_turn``, without events or plan): the ask,
    in the person's line, and the ledger events noted before it (written by it, in order)."""

    queue_id: str
    ask: TurnAsk
    events: list[AuditEvent] = field(default_factory=list)
    plan: PlanInput | None = None  # the fan-out's plan, answered with the turn when granted at once
    # The events' key (the request's: its local tries and the activity after them write the events once). Empty:
    # the activity's own (``ledger_event_key``).
    events_key: str = ""


@dataclass
class TurnAnswer:
    """Answer of ``ask_subject_turn``: who holds the turn; when it is granted at once and the ask asked for it, the
    fan-out's plan too, so that the connectors start in the workflow task that reads the answer (no local activity
    and no second activation between the grant and the connectors)."""

    turn: SubjectTurn
    plan: FanOutPlan | None = None


@dataclass
class QueueRelease:
    """Input of the ``release_subject_turn`` activity: the request's ask leaves its person's line; the ledger events
    noted before it are written after it, under ``events_key`` (as ``QueueAsk``'s)."""

    queue_id: str
    release: TurnRelease
    events: list[AuditEvent] = field(default_factory=list)
    events_key: str = ""


@dataclass
class SubjectQueueStatus:
    """Who holds a person's turn and who waits for it, the earliest received first: request ids only."""

    holder: str
    waiting: list[str] = field(default_factory=list)


# --- triage (email intake) -------------------------------------------------------------------------


@dataclass
class TriageInput:
    """An email the classifier was unsure about, waiting for an operator. Personal data: encrypted only."""

    triage_id: str  # "triage-" + the reserved request id
    request_id: str  # the request it becomes once classified
    received_at: datetime
    received_on: date
    deadline: date  # if it is a request, the clock already runs from receipt
    email: str
    name: str = ""
    language: Language = Language.FR  # detected, else the default: the acknowledgement's language
    subject_line: str = ""
    body: str = ""
    in_reply_to: str | None = None
    reason: str = ""  # why it was not classified; no personal data
    policy: RequestPolicy = field(default_factory=RequestPolicy)


@dataclass
class TriageDecision:
    kind: RequestKind
    decided_by: str = "operator"
    language: Language | None = None  # overrides the detected language
    changes: dict[str, str] = field(default_factory=dict)  # rectification, read from the email by staff
    scope: str = ""  # objection: marketing or other (the default), as staff read it; post_mortem: closure or estate
    # post_mortem: the deceased person staff read in the email (personal data: sealed in the ledger's note), and
    # what the sender says they are (heir, executor, designated).
    deceased_email: str = ""
    deceased_name: str = ""
    quality: str = ""
    ground: str = ""  # restriction: its Art. 18(1) ground, a to d, as staff read it (required for a restriction)
    purposes: list[str] = field(default_factory=list)  # consent_withdrawal: the profile's keys; none: all of them


@dataclass
class TriageDismissal:
    reason: str  # e.g. "spam", "newsletter unsubscribe": kept as the record of why nothing was done
    decided_by: str = "operator"
    # A request the controller will not act on (Art. 12(4)): the sender is told why, on this ground, as the
    # request of this kind it was; None: not a request at all, nobody is answered.
    refused_as: RequestKind | None = None
    ground: RefusalGround = field(default_factory=lambda: RefusalGround.EXCESSIVE)


@dataclass
class TriageDismissed:
    """What ``record_triage_dismissal`` keeps in the ledger; ``reason`` may quote the message (sealed there)."""

    triage_id: str
    received_at: datetime
    deadline: date
    classifier_reason: str
    reason: str
    decided_by: str
    attachments_deleted: int
    dismissed_at: datetime
    refused_as: str = ""  # a request of this kind refused (the sender was told); "": not a request
    ground: str = ""


@dataclass
class TriageSubmitted:
    """What ``submit_triaged`` answers: the request a classified email became."""

    request_id: str
    attached: bool  # it duplicated an open request and was attached to it (no new workflow)


@dataclass
class LocalMoment:
    """A day and an hour on the controller's clock (``09:00`` local), made an instant by a local activity: the
    time zone rules (tzdata) may change between a run and its replay, the recorded instant does not."""

    day: date
    hour: int
    timezone: str


@dataclass
class TriageStatus:
    """The ``status`` query of a triage workflow; no personal data (``dsr triage show`` asks ``message``)."""

    triage_id: str
    request_id: str
    received: date
    deadline: date
    reason: str
    state: str  # "waiting", "classified", "dismissed"
    kind: RequestKind | None = None
    dismissal_reason: str = ""
    attached_to: str = ""  # the open request it was attached to, when it duplicated one


@dataclass
class TriageMessage:
    """The ``message`` query: the email itself, for the operator's terminal (personal data)."""

    email: str
    name: str
    subject_line: str
    body: str
    language: Language


# --- restriction (Art. 18) ---------------------------------------------------------------------------


@dataclass
class Lift:
    """``dsr lift``: an operator lifts a restriction (the reason is sealed in the ledger). The subject is told first
    (Art. 18(3)); the marks are removed after the notice period."""

    reason: str
    requested_by: str = "operator"


@dataclass
class SubjectInformed:
    """``dsr lift REF --subject-told HOW``: staff told the subject of the lift by other means (a letter, a call)
    after the mail server refused the email notice (Art. 18(3)). ``how`` is sealed in the ledger."""

    how: str
    informed_by: str = "operator"


@dataclass
class GroundEnded:
    """Signal ``ground_ended`` to a restriction in force: the request that ends its ground is done (ground a: a
    rectification of the same person answered; ground d: their objection decided). Ids only."""

    ground: str
    by_request: str


@dataclass
class GroundEnd:
    """Input of the ``end_restriction_grounds`` activity: the request that may end restrictions of its subject, and
    when (the workflow's time: the end of a ground counts for the restrictions received no later)."""

    request_id: str
    ground: str
    at: datetime | None = None


RESTRICTION_PREFIX = "restriction-"


def restriction_id(request_id: str) -> str:
    """Workflow id of a restriction in force: derived from the reference alone (no personal data)."""
    return RESTRICTION_PREFIX + request_id


@dataclass
class RestrictionInput:
    """What an answered restriction hands to ``RestrictionInForce`` (id ``restriction-<reference>``): who to tell
    before lifting, which systems hold a mark, and how long to wait between the notice and the lift."""

    request_id: str
    subject: Subject  # personal data: encrypted payload
    language: Language
    ground: str
    operator_email: str
    marked: list[str] = field(default_factory=list)  # connectors whose records this request marked
    by_hand: list[str] = field(default_factory=list)  # systems restricted by a person (residual, processor)
    timezone: str = "Europe/Paris"
    notice_days: int = 3
    escalation_repeat_days: int = 7
    in_reply_to: str | None = None
    notice_context: dict[str, str] = field(default_factory=dict)
    # Told of the lift (Art. 19), once the marks are off: the recipients the reply named (their names in the
    # controller profile), and the processors and manual systems that did not answer "no data" (system names).
    recipients: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    subject_key: str = ""  # blind index of the subject's email: the marks come off in the person's turn


@dataclass
class LiftTelling:
    """Input of ``tell_restriction_lifted``: one recipient (``to`` "recipient", its name in the controller profile)
    or one processor / manual system (``to`` "system", its configured name) to tell that the restriction of
    ``request_id`` is lifted, in its own language. ``lifted_at`` is the workflow's time, dated in ``timezone``."""

    request_id: str
    subject: Subject  # personal data: encrypted payload; the letter names the person by this address only
    to: str
    name: str
    lifted_at: datetime
    timezone: str = "Europe/Paris"


@dataclass
class RestrictionStatus:
    """Answer of ``RestrictionInForce.status`` (no personal data)."""

    request_id: str
    ground: str
    state: str  # "in force", "lift scheduled", "lifted"
    lift_at: datetime | None = None
    lifted_by: str = ""  # an operator's login, or "ground_ended:<request>"
    failed: list[str] = field(default_factory=list)  # connectors whose mark could not be removed (retry)
    waiting_for: str = ""  # the lift waits for the person's turn, held by this request (or "" when not waiting)
    # Art. 18(3): the notice of the lift to the subject was sent (True), refused for good by the mail server (False:
    # the operator must tell them by other means before the lift), or not sent yet (None).
    subject_told: bool | None = None


def told_words(subject_told: bool | None) -> str:
    """What the operator reads about the lift's notice to the subject (Art. 18(3)): never "told" unless it was."""
    if subject_told is None:
        return "the subject is being told"
    return "the subject was told" if subject_told else (
        "the notice to the subject FAILED: tell them by other means, then `dsr lift REF --subject-told \"how\"`")
