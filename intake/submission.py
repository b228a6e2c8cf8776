"""Turning a submission (CLI, API, form, email) into a started ``DataSubjectRequest`` workflow.

Everything is validated before anything is started, so bad input never leaves a half-created request.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import TypeVar

from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from dsr.config.settings import Settings
from dsr.domain.deadlines import deadline_schedule, receipt_date
from dsr.domain.model import (
    CANONICAL_FIELDS,
    WORKFLOW_ID_PREFIX,
    Channel,
    ConsentPurpose,
    DeadlineInput,
    IdentityMethod,
    Language,
    ObjectionScope,
    PostMortemAim,
    Quality,
    RequestInput,
    RequestKind,
    RequestPolicy,
    RestrictionGround,
    Stage,
    Subject,
    display_name,
    is_valid_email,
    strip_controls,
)
from dsr.errors import InvalidInputError
from workflows import search_attributes as sa

MAX_NAME = 200
GDPR_APPLIES = datetime(2018, 5, 25, tzinfo=UTC)
"""Art. 99(2): no request received before this falls under the GDPR."""
MAX_DETAILS = 10_000
# Crockford's base32 without look-alikes: references are read out on the phone.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_REQUEST_ID = re.compile(rf"{WORKFLOW_ID_PREFIX}\d{{4}}-\d{{2}}-[{_ALPHABET}]{{6}}")
_TICKET = re.compile(r"[A-Za-z0-9:_-]{1,64}")
_PHONE = re.compile(r"\+?(?:[\s().-]*\d){6,20}[\s().-]*")


class SubmissionError(InvalidInputError, ValueError):
    """The submission is invalid; the message says which field and why (no personal data echoed)."""


@dataclass
class Submission:
    kind: str
    email: str
    name: str = ""
    channel: str = Channel.API.value
    language: str | None = None
    details: str = ""
    received_at: datetime | None = None  # defaults to now; staff may enter an earlier receipt (a letter)
    changes: dict[str, str] = field(default_factory=dict)
    in_reply_to: str | None = None  # Message-ID of the subject's email: notices reply in that thread
    request_id: str | None = None  # reserved beforehand (email intake's exactly-once); default: a new one
    ticket: str | None = None  # support-desk ticket id, e.g. "zendesk:4521": replies can reference it
    trusted: bool = False  # the channel authenticated the person (configured per desk): no identity check
    scope: str = ""  # objection: "marketing" (Art. 21(2)-(3)) or "other" (21(1), the default); post_mortem: the aim
    # post_mortem (loi 78-17 art. 85): the sender (``email``) acts for a deceased person, named here, as
    # ``quality`` (heir, executor, designated); the systems are searched for ``deceased_email``.
    deceased_email: str = ""
    deceased_name: str = ""
    quality: str = ""
    ground: str = ""  # restriction: the Art. 18(1) ground, "a" to "d" (required for a restriction)
    # Identifiers other than the address, vouched for by the channel (an authenticated API caller, staff): an
    # application database's map may locate the subject by them too.
    customer_id: str = ""
    phone: str = ""
    purposes: list[str] = field(default_factory=list)  # consent_withdrawal: profile keys; "all" or none: every one
    documents: int = 0  # post_mortem: files sent with the form, already stored under ``request_id``


def consent_purposes(settings: Settings, asked: list[str], *, marketing_only: bool = False) -> list[ConsentPurpose]:
    """The consent purposes of the controller profile a withdrawal names (``all``, or none named: every one;
    ``marketing_only``: every marketing one), frozen into the request; raises :class:`SubmissionError`."""
    from dsr.config.profile import load_profile  # read at each withdrawal: an edited dsr.toml is followed

    profile = load_profile(settings.config_file)
    known = profile.consent_purposes() if profile is not None else []
    if not known:
        raise SubmissionError("no purpose based on consent is configured (controller.purposes with "
                              "legal_basis = \"consent\" and a key)")
    wanted = {p.strip().lower() for p in asked if p.strip()}
    if marketing_only:
        chosen = [p for p in known if p.marketing]
    elif not wanted or "all" in wanted:
        chosen = known
    else:
        unknown = sorted(wanted - {p.key for p in known})
        if unknown:
            raise SubmissionError(f"purposes must be among {', '.join(p.key for p in known)} (or all); "
                                  f"got {', '.join(repr(u[:40]) for u in unknown)}")
        chosen = [p for p in known if p.key in wanted]
    if not chosen:
        raise SubmissionError("no such purpose to withdraw consent from")
    return chosen


def late_receipt_warning(deadline: date, today: date) -> str | None:
    """What staff must hear at once when a submission is recorded late (a letter typed in, or an API or webhook
    submission with an earlier ``received_at``): the month is over, or nearly so. No personal data."""
    if deadline < today:
        return (f"the one-month deadline passed on {deadline.isoformat()}: reply at once and record the reasons "
                "for the delay; it can no longer be extended (Art. 12(3))")
    if (deadline - today).days < 7:
        return (f"only {(deadline - today).days} day(s) left before the deadline ({deadline.isoformat()}); "
                "an extension must be decided and told before then")
    return None


def new_request_id(received_on: date) -> str:
    """``dsr-2026-11-7KQ3FJ``: month of receipt plus 30 random bits; no personal data."""
    code = "".join(secrets.choice(_ALPHABET) for _ in range(6))
    return f"{WORKFLOW_ID_PREFIX}{received_on:%Y-%m}-{code}"


_Choice = TypeVar("_Choice", bound=StrEnum)


def _enum(value: str, enum: type[_Choice], field_name: str) -> _Choice:
    try:
        return enum(value.strip().lower())
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise SubmissionError(f"{field_name} must be one of {allowed}; got {value!r}") from None


def prepare(submission: Submission, settings: Settings, *, now: datetime | None = None) -> RequestInput:
    """Validate a submission and compute its deadlines; raises :class:`SubmissionError`."""
    now = now or datetime.now(UTC)
    kind = _enum(submission.kind, RequestKind, "kind")
    channel = _enum(submission.channel, Channel, "channel")
    language = (
        _enum(submission.language, Language, "language") if submission.language else settings.default_language
    )
    email = submission.email.strip()
    if not is_valid_email(email):
        raise SubmissionError("email is not a valid address")
    # Bidi overrides and invisible characters removed, whatever the channel: the name is written into emails.
    name = display_name(submission.name)
    if len(name) > MAX_NAME:
        raise SubmissionError(f"name is longer than {MAX_NAME} characters")
    if len(submission.details) > MAX_DETAILS:
        raise SubmissionError(f"details are longer than {MAX_DETAILS} characters")
    if kind == RequestKind.RECTIFICATION and not submission.changes and not submission.details.strip():
        raise SubmissionError("a rectification request needs the changes asked for (or details describing them)")
    unknown = sorted(set(submission.changes) - CANONICAL_FIELDS)
    if unknown:
        raise SubmissionError(
            f"cannot rectify {', '.join(unknown)}; fields are {', '.join(sorted(CANONICAL_FIELDS))}"
        )
    empty = sorted(f for f, value in submission.changes.items() if not value.strip())
    if empty:  # "correct my city to nothing" is not a correction the engine can apply without a person
        raise SubmissionError(f"changes: no correct value given for {', '.join(empty)}")
    if submission.changes and kind != RequestKind.RECTIFICATION:
        raise SubmissionError("changes are only for rectification requests")
    if "email" in submission.changes and not is_valid_email(submission.changes["email"].strip()):
        raise SubmissionError("the new email is not a valid address")
    if submission.purposes and kind != RequestKind.CONSENT_WITHDRAWAL:
        raise SubmissionError("purposes are only for consent_withdrawal requests")
    purposes = consent_purposes(settings, submission.purposes) if kind == RequestKind.CONSENT_WITHDRAWAL else []
    scope = ""
    if submission.scope.strip() and kind not in (RequestKind.OBJECTION, RequestKind.POST_MORTEM):
        raise SubmissionError("scope is only for objection and post_mortem requests")
    if kind == RequestKind.OBJECTION:
        # Without a scope a person decides (21(1)): never an absolute stop the subject did not ask for.
        scope = _enum(submission.scope or ObjectionScope.OTHER.value, ObjectionScope, "scope").value
    ground = ""
    if submission.ground.strip() and kind != RequestKind.RESTRICTION:
        raise SubmissionError("ground is only for restriction requests")
    if kind == RequestKind.RESTRICTION:
        # The ground decides how long the restriction lasts and what ends it: never guessed for the subject.
        if not submission.ground.strip():
            raise SubmissionError("ground is required for a restriction request (Art. 18(1)): a (accuracy "
                                  "contested), b (unlawful processing, no erasure wanted), c (needed for legal claims) "
                                  "or d (objection being verified)")
        ground = _enum(submission.ground.strip().lower().removeprefix("18(1)(").rstrip(")"), RestrictionGround,
                       "ground").value

    deceased: Subject | None = None
    quality = ""
    if kind == RequestKind.POST_MORTEM:
        # Art. 85: never the sender's own data; the deceased person is named, and the sender says who they are.
        scope = _enum(submission.scope or PostMortemAim.CLOSURE.value, PostMortemAim, "scope").value
        deceased_email = submission.deceased_email.strip()
        if not is_valid_email(deceased_email):
            raise SubmissionError("deceased_email is not a valid address (the deceased person's)")
        if deceased_email.lower() == email.lower():
            raise SubmissionError("deceased_email is the sender's own address: a request about a deceased person "
                                  "comes from someone else (an heir, the executor, the person designated)")
        deceased_name = display_name(submission.deceased_name)
        if len(deceased_name) > MAX_NAME:
            raise SubmissionError(f"deceased_name is longer than {MAX_NAME} characters")
        deceased = Subject(email=deceased_email, name=deceased_name)
        quality = _enum(submission.quality or Quality.HEIR.value, Quality, "quality").value
    elif submission.deceased_email.strip() or submission.deceased_name.strip() or submission.quality.strip():
        raise SubmissionError("deceased_email (with deceased_name and quality) is only for post_mortem requests")

    customer_id = strip_controls(submission.customer_id).strip()
    if len(customer_id) > 64:
        raise SubmissionError("customer_id is longer than 64 characters")
    phone = submission.phone.strip()
    if phone and not _PHONE.fullmatch(phone):
        raise SubmissionError("phone must be a telephone number: digits, spaces, + ( ) - . (6 to 20 digits)")

    received_at = submission.received_at or now
    if received_at.tzinfo is None:
        raise SubmissionError("received time must include a time zone")
    received_at = received_at.astimezone(UTC)
    if received_at > now + timedelta(minutes=5):
        raise SubmissionError("received time is in the future")
    if received_at < GDPR_APPLIES:  # no deadline to compute (nor holidays known) for what no GDPR right governed
        raise SubmissionError(f"received time is before {GDPR_APPLIES:%Y-%m-%d}, when the GDPR began to apply")

    policy: RequestPolicy = settings.policy
    if submission.trusted:
        policy = replace(policy, identity=IdentityMethod.TRUSTED)
    if not 0 <= submission.documents <= 5:
        raise SubmissionError("documents: at most 5 files come with a request")
    if submission.request_id is not None and not _REQUEST_ID.fullmatch(submission.request_id):
        raise SubmissionError("request id must look like dsr-2026-11-7KQ3FJ")
    if submission.ticket is not None and not _TICKET.fullmatch(submission.ticket):
        raise SubmissionError("ticket must be 1 to 64 letters, digits, ':', '-' or '_'")
    received_on = receipt_date(received_at, policy.timezone)
    deadlines = deadline_schedule(
        DeadlineInput(start=received_on, country=policy.country, subdiv=policy.subdiv, timezone=policy.timezone)
    )
    return RequestInput(
        request_id=submission.request_id or new_request_id(received_on),
        kind=kind,
        subject=Subject(email=email, name=name, customer_id=customer_id, phone=phone),
        channel=channel,
        received_at=received_at,
        received_on=received_on,
        deadlines=deadlines,
        language=language,
        details=submission.details,
        policy=policy,
        changes={f: value.strip() for f, value in submission.changes.items()},
        in_reply_to=submission.in_reply_to,
        ticket=submission.ticket,
        scope=scope,
        purposes=purposes,
        deceased=deceased,
        quality=quality,
        ground=ground,
        documents=submission.documents if kind == RequestKind.POST_MORTEM else 0,
    )


def _qualifier(request: RequestInput) -> str:
    """An objection's scope or a restriction's ground, for the UI's summary (no personal data)."""
    what = request.scope or request.ground
    return f" ({what})" if what else ""


async def start(client: Client, request: RequestInput, *, task_queue: str) -> WorkflowHandle:
    """Start the request's workflow, with its dashboard attributes set from the first instant."""
    from workflows.request import DataSubjectRequest

    purposes = ", ".join(p.key for p in request.purposes)
    return await client.start_workflow(
        DataSubjectRequest.run,
        request,
        id=request.request_id,
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        static_summary=f"{request.kind.value}{_qualifier(request)}"
                       f"{f' ({purposes})' if purposes else ''} · due "
                       f"{request.deadlines.normal.due.isoformat()}",
        search_attributes=TypedSearchAttributes(sa.dashboard(
            Stage.RECEIVED, request.channel, request.deadlines.normal.due, kind=request.kind, extended=False)),
    )
