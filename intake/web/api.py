"""The machine doors of the intake app: ``POST /api/requests`` and the support-desk webhooks.

Every route reads the raw body itself (bounded: :data:`MAX_BODY_BYTES`, else 413) because the webhook
signatures are over the exact bytes received, then validates with pydantic, then hands a
:class:`~intake.submission.Submission` to the :class:`~intake.service.IntakeSink`. Errors are JSON
``{"error": "...", "field": "..."}`` with a 4xx status, and nothing is created; Temporal unreachable is
503 with ``Retry-After``. A submission taken is answered 202 with the same neutral receipt whatever happened
(:func:`intake.service.receipt`: no reference, no "attached"), so that nobody learns from it whether another
person has a request under way; the subject learns the reference, or the attachment, by email.

Support desks
-------------
* **Zendesk** (``POST /webhooks/zendesk``): a webhook called by a trigger (for instance "ticket created
  with tag dsr_erasure"). ``X-Zendesk-Webhook-Signature`` is ``base64(HMAC-SHA256(secret, timestamp +
  body))`` with ``X-Zendesk-Webhook-Signature-Timestamp`` (ISO 8601, as Zendesk sends it); a timestamp
  more than :data:`MAX_SKEW` away is refused, and so is a signature already seen (a replay). The body is
  the JSON the trigger's webhook action writes with Zendesk placeholders (see the README)::

      {"ticket_id": "{{ticket.id}}", "requester_email": "{{ticket.requester.email}}",
       "requester_name": "{{ticket.requester.name}}", "requester_locale": "{{ticket.requester.locale}}",
       "tags": "{{ticket.tags}}", "description": "{{ticket.description}}"}

  The kind comes from a ``kind`` field (a custom ticket field placeholder) or from exactly one tag
  ``dsr_access``, ``dsr_rectification``, ``dsr_erasure``, ``dsr_portability``, ``dsr_objection`` (with the
  tag ``dsr_marketing`` an objection is to direct marketing; without it, to other processing),
  ``dsr_consent_withdrawal`` (the purposes named by tags ``dsr_purpose_<key>`` and/or a ``purposes`` field from a
  ticket field; none named: every purpose based on consent; an unknown key: 422) or
  ``dsr_post_mortem`` (a request about a deceased person: the trigger adds ``deceased_email``, ``deceased_name``
  and ``quality`` from ticket fields; with the tag ``dsr_estate`` it asks the estate's information, else the
  accounts' closure).
* **Any other desk** (``POST /webhooks/ticket``): ``X-DSR-Timestamp`` (Unix seconds) and
  ``X-DSR-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``; body
  ``{"desk", "ticket_id", "email", "name", "kind", "scope", "language", "details", "authenticated"}`` (and, for
  ``post_mortem``, ``deceased_email``, ``deceased_name``, ``quality``).

A ticket's request id is derived from the ticket (keyed hash), so a webhook the desk delivers twice
starts one request. ``authenticated: true`` marks the requester as already identified by the desk (a
signed-in customer), which skips the email check, but only when the operator turned that on for the desk
(``DSR_ZENDESK_TRUST_AUTHENTICATED``, ``DSR_TICKET_TRUST_AUTHENTICATED``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool

from dsr.domain.model import (
    WORKFLOW_ID_PREFIX,
    Language,
    ObjectionScope,
    PostMortemAim,
    Quality,
    RequestKind,
    RestrictionGround,
)
from dsr.store.guards import Guards
from dsr.web.body import BodyTooLarge, read_limited_body
from intake.service import IntakeSink, IntakeUnavailable, RateLimited, receipt
from intake.submission import _ALPHABET, MAX_DETAILS, MAX_NAME, Submission, SubmissionError, late_receipt_warning

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_SKEW = timedelta(minutes=5)
REPLAY_WINDOW = 2 * MAX_SKEW
"""How long an accepted signature is remembered: longer than any timestamp the skew check lets through."""


def error(status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})


def _iso_text(value: Any) -> Any:
    """A time is ISO 8601 text, as the schema says: not a number of seconds (which pydantic would take)."""
    if value is not None and not isinstance(value, str):
        raise ValueError("expected an ISO 8601 date and time with its offset, e.g. 2026-11-23T10:00:00+01:00")
    return value


ReceivedAt = Annotated[AwareDatetime | None, BeforeValidator(_iso_text)]
ScopeValue = Literal["marketing", "other", "closure", "estate"]
"""An objection's scope (ObjectionScope) or a post_mortem request's aim (PostMortemAim); the kind decides which."""
assert set(get_args(ScopeValue)) == {*ObjectionScope, *PostMortemAim}  # one list of values, checked at import


# --- bodies -------------------------------------------------------------------------------------------


class RequestBody(BaseModel):
    """``POST /api/requests``."""

    model_config = ConfigDict(extra="forbid", str_max_length=MAX_DETAILS)

    kind: RequestKind
    email: Annotated[str, Field(max_length=254, description="The subject's email address (checked later).")]
    name: Annotated[str, Field(max_length=MAX_NAME)] = ""
    language: Language | None = None
    details: Annotated[str, Field(max_length=MAX_DETAILS)] = ""
    identifiers: Annotated[
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=200)]],
        Field(max_length=20, description="Other identifiers the subject gave, for staff. From an authenticated "
                                         "caller (DSR_API_TOKEN), customer_id and phone also locate the subject "
                                         "in an application database whose map names those columns."),
    ] = {}
    changes: Annotated[
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=500)]],
        Field(max_length=20, description="Rectification: canonical field -> correct value."),
    ] = {}
    scope: ScopeValue | None = Field(
        default=None, description="Objection: marketing (direct marketing, stopped at once) or other (the default: "
                                  "processing on legitimate interests, decided by the controller). Post_mortem: "
                                  "closure (the default: accounts closed, art. 85-II 2°) or estate (information "
                                  "useful to settle the estate, 85-II 1°).")
    deceased_email: Annotated[str, Field(max_length=254, description=(
        "Post_mortem: the deceased person's email address; ``email`` is then the sender's (an heir, the executor, "
        "the person designated in the directives), to whom every email goes."))] = ""
    deceased_name: Annotated[str, Field(max_length=MAX_NAME)] = ""
    quality: Quality | None = Field(default=None, description="Post_mortem: what the sender says they are (heir, "
                                    "the default; executor; designated). A document proves it, reviewed by staff.")
    purposes: Annotated[list[Annotated[str, Field(max_length=40)]], Field(
        max_length=20, description="Withdrawal of consent: the purposes' keys of the controller profile "
                                   "(newsletter...); none or \"all\": every purpose based on consent.")] = []
    ground: RestrictionGround | None = Field(
        default=None, description="Restriction (required): the Art. 18(1) ground: a (accuracy contested), b (unlawful "
                                  "processing, no erasure wanted), c (needed for legal claims), d (objection being "
                                  "verified).")
    received_at: ReceivedAt = Field(
        default=None, description="When the subject's request was received, if earlier than now (ISO 8601 with its "
        "offset): the deadline counts from it. One recorded after its month is answered with a warning.")


class AcceptedBody(BaseModel):
    """The same neutral receipt for every submission (issue 12): no reference (it goes to the subject's address
    by email), nothing saying whether an open request of the same subject and kind took it."""

    status: str = Field(description='Always "received".')
    kind: RequestKind
    received: str = Field(description="The day this submission was received.")
    deadline: str = Field(description="The answer is due by this day, counted from this submission.")
    extended_deadline: str
    warning: str | None = Field(default=None, description="Only for a submission received long ago (received_at):"
                                " the deadline has passed or is less than 7 days away.")


class ZendeskBody(BaseModel):
    model_config = ConfigDict(extra="ignore", str_max_length=MAX_DETAILS)

    ticket_id: Annotated[str, Field(min_length=1, max_length=32)]
    requester_email: Annotated[str, Field(max_length=254)]
    requester_name: Annotated[str, Field(max_length=MAX_NAME)] = ""
    requester_locale: Annotated[str, Field(max_length=16)] = ""
    tags: Annotated[str, Field(max_length=2000)] = ""
    kind: Annotated[str, Field(max_length=32)] = ""
    description: Annotated[str, Field(max_length=MAX_DETAILS)] = ""
    authenticated: bool = False
    # Tag dsr_post_mortem: the ticket's fields naming the deceased person and the requester's quality.
    deceased_email: Annotated[str, Field(max_length=254)] = ""
    deceased_name: Annotated[str, Field(max_length=MAX_NAME)] = ""
    quality: Annotated[str, Field(max_length=32)] = ""
    # Tag dsr_consent_withdrawal: the consent purposes withdrawn, from a custom field (keys, or a multi-select
    # field's tags dsr_purpose_<key>, separated by spaces or commas), beside the ticket's dsr_purpose_<key> tags.
    purposes: Annotated[str, Field(max_length=2000)] = ""
    received_at: ReceivedAt = Field(
        default=None, description="When the subject's request was received, if earlier than now (ISO 8601 with its "
        "offset): the deadline counts from it. One recorded after its month is answered with a warning.")

    @field_validator("ticket_id", mode="before")
    @classmethod
    def _ticket_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class TicketBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=MAX_DETAILS)

    desk: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,20}$")] = "ticket"
    ticket_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")]
    email: Annotated[str, Field(max_length=254)]
    name: Annotated[str, Field(max_length=MAX_NAME)] = ""
    kind: RequestKind
    scope: ScopeValue | None = None
    purposes: Annotated[list[Annotated[str, Field(max_length=40)]], Field(max_length=20)] = []
    deceased_email: Annotated[str, Field(max_length=254)] = ""
    deceased_name: Annotated[str, Field(max_length=MAX_NAME)] = ""
    quality: Quality | None = None
    ground: RestrictionGround | None = None
    language: Language | None = None
    details: Annotated[str, Field(max_length=MAX_DETAILS)] = ""
    authenticated: bool = False
    received_at: ReceivedAt = Field(
        default=None, description="When the subject's request was received, if earlier than now (ISO 8601 with its "
        "offset): the deadline counts from it. One recorded after its month is answered with a warning.")


# --- signatures ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeskSettings:
    """One desk's webhook secret (None: the endpoint is off) and whether its sign-in is trusted."""

    secret: str | None = None
    trust_authenticated: bool = False


def _parse_zendesk_time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def ticket_request_id(ticket: str, received: datetime, index: Callable[[str], str]) -> str:
    """A request id derived from the ticket, so a webhook delivered twice starts one request."""
    digest = bytes.fromhex(index(ticket))
    code = "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:6])
    return f"{WORKFLOW_ID_PREFIX}{received:%Y-%m}-{code}"


def _language(locale: str) -> str | None:
    primary = locale.strip().lower().replace("_", "-").split("-")[0]
    return primary if primary in {"fr", "en"} else None


def _zendesk_scope(body: ZendeskBody, kind: RequestKind) -> str:
    """An objection's scope from the tags: ``dsr_marketing`` for direct marketing, else other processing; a
    post_mortem request's aim: ``dsr_estate`` for the estate's information, else the accounts' closure."""
    if kind == RequestKind.POST_MORTEM:
        estate = "dsr_estate" in body.tags.lower().split()
        return (PostMortemAim.ESTATE if estate else PostMortemAim.CLOSURE).value
    if kind != RequestKind.OBJECTION:
        return ""
    marketing = "dsr_marketing" in body.tags.lower().split()
    return (ObjectionScope.MARKETING if marketing else ObjectionScope.OTHER).value


def _zendesk_ground(body: ZendeskBody, kind: RequestKind) -> str:
    """A restriction's Art. 18(1) ground from the tags ``dsr_ground_a`` to ``dsr_ground_d`` (none: refused, 422)."""
    if kind != RequestKind.RESTRICTION:
        return ""
    grounds = {tag.removeprefix("dsr_ground_") for tag in body.tags.lower().split() if tag.startswith("dsr_ground_")}
    return grounds.pop() if len(grounds) == 1 else ""


def _zendesk_purposes(body: ZendeskBody, kind: RequestKind) -> list[str]:
    """A withdrawal's consent purposes: the tags ``dsr_purpose_<key>`` and the ``purposes`` field (keys or such
    tags); none named: every consent purpose. Other kinds take none (a purpose tag left on the ticket is no
    request of its own). An unknown key is refused by the submission (422, field ``purposes``)."""
    if kind != RequestKind.CONSENT_WITHDRAWAL:
        return []
    named = [tag.removeprefix("dsr_purpose_") for tag in body.tags.lower().split() if tag.startswith("dsr_purpose_")]
    named += [word.removeprefix("dsr_purpose_") for word in body.purposes.lower().replace(",", " ").split()]
    return list(dict.fromkeys(named))


def _zendesk_kind(body: ZendeskBody) -> RequestKind | None:
    if body.kind.strip():
        value = body.kind.strip().lower().removeprefix("dsr_")
        return RequestKind(value) if value in {k.value for k in RequestKind} else None
    found = {tag.removeprefix("dsr_") for tag in body.tags.lower().split() if tag.startswith("dsr_")}
    kinds = {k for k in found if k in {k.value for k in RequestKind}}
    return RequestKind(kinds.pop()) if len(kinds) == 1 else None


# --- the router -----------------------------------------------------------------------------------------


def api_router(
    sink: IntakeSink,
    *,
    ticket_index: Callable[[str], str],
    guards: Guards,
    zendesk: DeskSettings = DeskSettings(),
    ticket: DeskSettings = DeskSettings(),
    api_token: str | None = None,
    clock: Callable[[], datetime] | None = None,
    timezone: str = "Europe/Paris",
) -> APIRouter:
    """``ticket_index(value)`` is a keyed hash (hex) of a ticket reference (``Ledger.subject_key``'s kind).
    ``guards`` remembers the signatures accepted (in the ledger's database: a delivery replayed to another
    replica is refused too)."""
    now_fn = clock or (lambda: datetime.now(UTC))
    router = APIRouter()

    async def first_delivery(signature: bytes, now: datetime) -> bool:
        return await run_in_threadpool(guards.first_delivery, signature, now, keep=REPLAY_WINDOW)

    async def read(request: Request) -> bytes | JSONResponse:
        try:
            return await read_limited_body(request, MAX_BODY_BYTES)
        except BodyTooLarge:
            return error(413, f"body larger than {MAX_BODY_BYTES} bytes", headers={"Connection": "close"})

    def parse_json(raw: bytes, model: type[BaseModel]) -> BaseModel | JSONResponse:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return error(400, "body is not valid JSON")
        if not isinstance(data, dict):
            return error(400, "body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as err:
            first = err.errors(include_url=False, include_input=False)[0]
            field = ".".join(str(p) for p in first["loc"]) or None
            return error(422, f"{field or 'body'}: {first['msg']}", field)

    async def hand_over(submission: Submission, client: str | None) -> JSONResponse:
        try:
            accepted = await sink.submit(submission, client=client)
        except SubmissionError as err:
            message = str(err)
            first = message.split(" ", 1)[0].rstrip(":")
            # "cannot rectify iban", "the new email is not...": the changes; "received time...": received_at.
            fields = {"received": "received_at", "cannot": "changes", "the": "changes",
                      "customer_id": "identifiers", "phone": "identifiers",
                      **{f: f for f in ("kind", "email", "name", "details", "changes", "language", "ticket", "scope",
                                        "purposes", "deceased_email", "deceased_name", "quality", "ground")}}
            field = fields.get(first)
            return error(422, message, field)
        except RateLimited as err:
            return error(429, str(err), headers={"Retry-After": str(err.retry_after)})
        except IntakeUnavailable as err:
            return error(503, str(err), headers={"Retry-After": "30"})
        answer: dict[str, Any] = dict(receipt(accepted))
        # A submission recorded after the fact (received_at) may have little or no time left: the caller is told at
        # once, as `dsr submit` tells staff, and so are the operators' logs (the reference only: no personal data).
        warning = late_receipt_warning(accepted.deadline, now_fn().astimezone(ZoneInfo(timezone)).date())
        if warning:
            answer["warning"] = warning
            logger.warning("intake: %s recorded late: %s", accepted.reference, warning)
        return JSONResponse(answer, status_code=202, headers={"Cache-Control": "no-store"})

    def client_of(request: Request) -> str | None:
        return request.client.host if request.client else None

    @router.post(
        "/api/requests",
        status_code=202,
        response_model=AcceptedBody,
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": _inline_schema(RequestBody)}}}},
        responses={400: {}, 401: {}, 413: {}, 415: {}, 422: {}, 429: {}, 503: {}},
        summary="Submit a data-subject request",
    )
    async def submit_request(request: Request) -> JSONResponse:
        if api_token is not None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), api_token.encode()):
                return error(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        if request.headers.get("content-type", "").partition(";")[0].strip().lower() != "application/json":
            return error(415, "send the request as application/json")
        raw = await read(request)
        if isinstance(raw, JSONResponse):
            return raw
        body = parse_json(raw, RequestBody)
        if isinstance(body, JSONResponse):
            return body
        assert isinstance(body, RequestBody)
        if body.received_at is not None and api_token is None:
            # The receipt date is the controller's evidence of its deadline: an anonymous caller does not set it.
            return error(422, "received_at is taken only from an authenticated caller (set DSR_API_TOKEN)",
                         "received_at")
        details = body.details
        if body.identifiers:
            given = "\n".join(f"{k}: {v}" for k, v in sorted(body.identifiers.items()))
            details = f"{details}\n\nIdentifiers given:\n{given}".strip()[:MAX_DETAILS]
        return await hand_over(
            Submission(kind=body.kind.value, email=body.email, name=body.name, channel="api",
                       language=body.language.value if body.language else None, details=details,
                       changes=dict(body.changes), scope=body.scope or "",
                       purposes=list(body.purposes), received_at=body.received_at,
                       ground=body.ground.value if body.ground else "",
                       deceased_email=body.deceased_email, deceased_name=body.deceased_name,
                       quality=body.quality.value if body.quality else "",
                       # Vouched for by the company's own app (it authenticated the customer): an anonymous
                       # caller's identifiers are only read by staff, never used to find someone's rows.
                       customer_id=body.identifiers.get("customer_id", "") if api_token is not None else "",
                       phone=body.identifiers.get("phone", "") if api_token is not None else ""),
            client_of(request),
        )

    @router.post("/webhooks/zendesk", status_code=202, response_model=AcceptedBody,
                 responses={400: {}, 401: {}, 404: {}, 409: {}, 413: {}, 422: {}, 429: {}, 503: {}},
                 summary="Zendesk trigger webhook")
    async def zendesk_webhook(request: Request) -> JSONResponse:
        if zendesk.secret is None:
            return error(404, "the Zendesk webhook is not configured (DSR_ZENDESK_WEBHOOK_SECRET)")
        raw = await read(request)
        if isinstance(raw, JSONResponse):
            return raw
        signature = request.headers.get("x-zendesk-webhook-signature", "")
        stamp = request.headers.get("x-zendesk-webhook-signature-timestamp", "")
        if not signature or not stamp:
            return error(401, "missing X-Zendesk-Webhook-Signature or X-Zendesk-Webhook-Signature-Timestamp")
        sent_at = _parse_zendesk_time(stamp[:64])
        now = now_fn()
        if sent_at is None:
            return error(401, "X-Zendesk-Webhook-Signature-Timestamp is not an ISO 8601 time")
        expected = base64.b64encode(
            hmac.new(zendesk.secret.encode(), stamp.encode() + raw, hashlib.sha256).digest()
        )
        if not hmac.compare_digest(signature.strip().encode("utf-8", "replace"), expected):
            return error(401, "the signature does not match the body")
        if abs(now - sent_at) > MAX_SKEW:
            return error(401, "the signature timestamp is too old or in the future")
        if not await first_delivery(expected, now):
            return error(409, "this delivery was already received (replay)")
        body = parse_json(raw, ZendeskBody)
        if isinstance(body, JSONResponse):
            return body
        assert isinstance(body, ZendeskBody)
        kind = _zendesk_kind(body)
        if kind is None:
            return error(422, "no request kind: set the kind field or exactly one dsr_<kind> tag", "kind")
        reference = f"zendesk:{body.ticket_id}"
        return await hand_over(
            Submission(kind=kind.value, email=body.requester_email, name=body.requester_name,
                       channel="support_desk", language=_language(body.requester_locale),
                       details=body.description, ticket=reference, scope=_zendesk_scope(body, kind),
                       deceased_email=body.deceased_email, deceased_name=body.deceased_name,
                       quality=body.quality, ground=_zendesk_ground(body, kind),
                       purposes=_zendesk_purposes(body, kind), received_at=body.received_at,
                       trusted=body.authenticated and zendesk.trust_authenticated,
                       request_id=ticket_request_id(reference, now, ticket_index)),
            None,  # the desk's address is not the subject's: the per-subject limit still applies
        )

    @router.post("/webhooks/ticket", status_code=202, response_model=AcceptedBody,
                 responses={400: {}, 401: {}, 404: {}, 409: {}, 413: {}, 422: {}, 429: {}, 503: {}},
                 summary="Generic support-desk webhook")
    async def ticket_webhook(request: Request) -> JSONResponse:
        if ticket.secret is None:
            return error(404, "the ticket webhook is not configured (DSR_TICKET_WEBHOOK_SECRET)")
        raw = await read(request)
        if isinstance(raw, JSONResponse):
            return raw
        signature = request.headers.get("x-dsr-signature", "")
        stamp = request.headers.get("x-dsr-timestamp", "")
        if not signature.startswith("sha256=") or not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12:
            return error(401, "missing X-DSR-Signature (sha256=<hex>) or X-DSR-Timestamp (Unix seconds)")
        expected = hmac.new(ticket.secret.encode(), stamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature.removeprefix("sha256=").strip().encode("utf-8", "replace"),
                                   expected.encode()):
            return error(401, "the signature does not match the body")
        now = now_fn()
        if abs(now.timestamp() - int(stamp)) > MAX_SKEW.total_seconds():
            return error(401, "the signature timestamp is too old or in the future")
        if not await first_delivery(expected.encode(), now):
            return error(409, "this delivery was already received (replay)")
        body = parse_json(raw, TicketBody)
        if isinstance(body, JSONResponse):
            return body
        assert isinstance(body, TicketBody)
        reference = f"{body.desk}:{body.ticket_id}"
        return await hand_over(
            Submission(kind=body.kind.value, email=body.email, name=body.name, channel="support_desk",
                       language=body.language.value if body.language else None, details=body.details,
                       ticket=reference, trusted=body.authenticated and ticket.trust_authenticated,
                       scope=body.scope or "", purposes=list(body.purposes),
                       deceased_email=body.deceased_email, deceased_name=body.deceased_name,
                       quality=body.quality.value if body.quality else "",
                       ground=body.ground.value if body.ground else "",
                       received_at=body.received_at,
                       request_id=ticket_request_id(reference, now, ticket_index)),
            None,
        )

    return router


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` inlined: the body is declared by hand (the route reads
    raw bytes for signatures), so nothing would register those definitions in the OpenAPI components."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)
