"""Assembling the intake app from the settings: what `dsr up` and `dsr intake` serve."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi import APIRouter, FastAPI
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from activities.outside import ANSWER_LINK_PURPOSE
from connectors.config import load_config, rectifiable_fields
from dsr.config.profile import load_profile
from dsr.config.settings import ConfigError, Settings
from dsr.domain.aftercare import AftercareStatus, aftercare_id
from dsr.domain.model import (
    CANONICAL_FIELDS,
    LINK_ONLY_KINDS,
    AuditEvent,
    CodeLocked,
    ConsentPurpose,
    OutsideAnswer,
    RequestKind,
    RequestStatus,
)
from dsr.errors import ConfigurationError
from dsr.mail.bundle import BundleStream, open_bundle
from dsr.store import ObjectNotFound
from dsr.store.attachments import AttachmentStore
from dsr.store.crypto import KeyRing
from dsr.store.exports import ExportStore
from dsr.store.guards import AnswerThrottle, Guards
from dsr.store.ledger import Ledger
from dsr.store.links import ConsentLinks, DownloadLinks, IdentityLinks, StatusLinks
from dsr.store.suppressions import SuppressionList
from dsr.store.tasks import OutsideTasks
from intake.answers import AnswerResult, ExportFile, record_answer
from intake.email.poller import Mailbox
from intake.email.settings import MailboxSettings
from intake.service import IdentityOutcome, IntakeService, RateLimits, confirm_identity, resend_identity_email
from intake.web.answers import answers_router
from intake.web.api import DeskSettings, api_router
from intake.web.app import intake_app
from intake.web.consent import consent_router, press_index
from intake.web.form import form_router
from intake.web.status import status_router, status_view
from intake.web.verify import verify_router

logger = logging.getLogger(__name__)


def bundle_opener(keyring: KeyRing, exports: ExportStore) -> Callable[[str], BundleStream | None]:
    """What a download streams: the request's bundle from the object store (whichever machine built it), or
    None when it is gone (deleted at the link's expiry, by an erasure, or never built): the "gone" page."""

    def opener(request_id: str) -> BundleStream | None:
        try:
            return open_bundle(keyring, exports.objects, exports.bundle_key(request_id), request_id)
        except ObjectNotFound:
            return None

    return opener


def code_locked_hook(ledger: Ledger, client: Client) -> Callable[[str, str, int], Awaitable[None]]:
    """What the pages call when a request's code is closed for good: a ledger event (once: keyed by request and
    page), then the ``code_locked`` signal, on which the request's workflow tells the operator."""

    from workflows.aftercare import RequestAftercare
    from workflows.request import DataSubjectRequest

    async def on_locked(request_id: str, page: str, wrong: int) -> None:
        event = AuditEvent(request_id=request_id, event="code_locked", actor="intake",
                           details={"page": page, "wrong": str(wrong)})
        await asyncio.to_thread(ledger.append_event, event, key=f"code-locked-{page}-{request_id}",
                                at=datetime.now(UTC))
        locked = CodeLocked(page=page, wrong=wrong)
        try:
            if page == "exports":
                # A download link comes with the answer, when the request's workflow ends: its aftercare tells.
                try:
                    # Handles annotated: mypy's inference of get_workflow_handle_for alone depends on its order.
                    aftercare: WorkflowHandle[RequestAftercare, AftercareStatus] = client.get_workflow_handle_for(
                        RequestAftercare.run, aftercare_id(request_id))
                    await aftercare.signal(RequestAftercare.code_locked, locked)
                    return
                except RPCError as err:
                    if err.status != RPCStatusCode.NOT_FOUND:
                        raise
            handle: WorkflowHandle[DataSubjectRequest, RequestStatus] = client.get_workflow_handle_for(
                DataSubjectRequest.run, request_id)
            await handle.signal(DataSubjectRequest.code_locked, locked)
        except RPCError as err:
            # A request and aftercare already over, or Temporal away: the ledger has it.
            logger.warning("intake: could not tell request %s that its %s code is closed (%s)",
                           request_id, page, err.status.name if err.status else "error")

    return on_locked


def _link_only(ledger: Ledger, request_id: str) -> bool:
    """No code was offered for this request (an erasure or a rectification): ``/verify`` takes none."""
    found = ledger.get_request(request_id)
    return found is not None and found.kind in LINK_ONLY_KINDS


def outside_answers_router(keyring: KeyRing, ledger: Ledger, exports: ExportStore, client: Client, *,
                           default_language: str, public_path: str, timezone: str = "UTC",
                           clock: Callable[[], datetime] | None = None) -> APIRouter:
    """``/answer/{token}``: the answers of processors and internal owners, into the ledger and their tasks."""
    tasks = OutsideTasks(ledger.engine, keyring)

    def kind_of(request_id: str) -> RequestKind | None:
        found = ledger.get_request(request_id)
        return found.kind if found is not None else None

    async def take(request_id: str, system: str, answer: OutsideAnswer, upload: ExportFile | None) -> AnswerResult:
        return await record_answer(tasks, client, request_id, system, answer, exports=exports, upload=upload)

    return answers_router(DownloadLinks(keyring, purpose=ANSWER_LINK_PURPOSE), task_of=tasks.get, kind_of=kind_of,
                          take=take, default_language=default_language, public_path=public_path, clock=clock,
                          timezone=timezone)


def controller_name(settings: Settings) -> str:
    """The name the pages show: ``DSR_CONTROLLER_NAME``, else the profile's legal name (as the worker signs
    notices, worker.controller_signature); a malformed profile names nobody (``dsr config check`` reports it)."""
    if settings.controller_name:
        return settings.controller_name
    try:
        profile = load_profile(settings.config_file)
    except ConfigurationError:
        return ""
    return profile.legal_name if profile is not None else ""


def _rectifiable(settings: Settings) -> frozenset[str]:
    """The fields the form offers to correct: those the configured connectors can correct. A dsr.toml that does
    not load stops the worker anyway; the form then offers every field (staff apply what no connector can)."""
    try:
        return rectifiable_fields(load_config(settings.config_file))
    except ConfigurationError as err:
        logger.warning("intake: dsr.toml does not load (%s); the form offers every field to correct", err)
        return CANONICAL_FIELDS


def build_intake_app(
    settings: Settings, keyring: KeyRing, ledger: Ledger, exports: ExportStore, client: Client
) -> tuple[FastAPI, IntakeService]:
    """The intake app (form, API, webhooks, identity confirmation, downloads) and its service."""
    # Every counter and guard of the app in the ledger's database: replicas on other machines share them.
    guards = Guards(ledger.engine, keyring)
    service = IntakeService(client, settings, ledger, guards=guards, limits=RateLimits(
        per_client=settings.rate_per_client_hour, per_subject=settings.rate_per_subject_day))

    def audit(request_id: str, event: str, details: dict[str, str]) -> None:
        ledger.append_event(AuditEvent(request_id=request_id, event=event, actor="subject", details=details),
                            key=f"download-{uuid.uuid4()}", at=datetime.now(UTC))

    async def confirm(request_id: str, proof: str) -> IdentityOutcome:
        return await confirm_identity(client, request_id, proof=proof)

    on_locked = code_locked_hook(ledger, client)
    throttle = AnswerThrottle(per_client=settings.answers_per_client_hour, overall=settings.answers_per_hour)

    language = settings.default_language.value
    company = controller_name(settings)
    public_path = settings.intake_url.split("://", 1)[-1].partition("/")[2].rstrip("/")
    public_path = f"/{public_path}" if public_path else ""
    routers = [
        api_router(
            service,
            ticket_index=lambda ticket: keyring.blind_index(ticket, purpose="dsr/ticket/v1"),
            guards=guards,
            zendesk=DeskSettings(settings.secret("DSR_ZENDESK_WEBHOOK_SECRET"), settings.zendesk_trust_authenticated),
            ticket=DeskSettings(settings.secret("DSR_TICKET_WEBHOOK_SECRET"), settings.ticket_trust_authenticated),
            api_token=settings.secret("DSR_API_TOKEN"),
            timezone=settings.policy.timezone,
        ),
        verify_router(
            IdentityLinks(keyring, ttl=timedelta(days=settings.policy.identity_timeout_days)),
            confirm,
            guards=guards,
            exists=ledger.has_request,
            link_only=lambda request_id: _link_only(ledger, request_id),
            max_wrong=settings.code_max_wrong,
            throttle=throttle,
            on_locked=on_locked,
            default_language=language,
            public_path=public_path,
            controller_name=company,
        ),
        status_router(
            StatusLinks(keyring),
            lambda request_id: status_view(ledger, request_id, settings.policy.timezone),
            lambda request_id: resend_identity_email(client, request_id),
            guards=guards,
            throttle=throttle,
            default_language=language,
            public_path=public_path,
        ),
        consent_router(
            ConsentLinks(keyring, ttl=timedelta(days=settings.consent_link_days)),
            service,
            lambda: _consent_purposes(settings),
            lambda email: set(SuppressionList(ledger).withdrawn(email)),
            guards=guards,
            press_key=press_index(ledger.subject_key),
            default_language=language,
            public_path=public_path,
        ),
        form_router(
            service,
            # From the current key: rotates with the ring (forms are good for two hours; one opened before a
            # rotation is simply filled in again).
            csrf_key=keyring.derive_key("dsr/form-csrf/v2"),
            default_language=language,
            public_path=public_path,
            controller_name=company,
            rectifiable=_rectifiable(settings),
            consent_purposes=lambda: _consent_purposes(settings),
            # A request about a deceased person may come with its documents, sealed like the mailbox's.
            attachments=AttachmentStore(exports.objects, keyring),
            timezone=settings.policy.timezone,
        ),
        outside_answers_router(keyring, ledger, exports, client, default_language=language,
                               public_path=public_path, timezone=settings.policy.timezone),
    ]
    app = intake_app(
        links=DownloadLinks(keyring, ttl=timedelta(days=settings.link_days)),
        bundle_opener=bundle_opener(keyring, exports),
        audit=audit,
        public_url=settings.intake_url,
        guards=guards,
        default_language=language,
        max_wrong=settings.code_max_wrong,
        throttle=throttle,
        on_locked=on_locked,
        routers=routers,
        controller_name=company,
        timezone=settings.policy.timezone,
    )
    return app, service


def _consent_purposes(settings: Settings) -> list[ConsentPurpose]:
    """The profile's consent purposes, read at each press; a malformed profile offers none (config check says)."""
    try:
        profile = load_profile(settings.config_file)
    except ConfigurationError:
        return []
    return profile.consent_purposes() if profile is not None else []


async def run_mailbox(settings: Settings, keyring: KeyRing, ledger: Ledger, service: IntakeService,
                      stop: asyncio.Event, attachments: AttachmentStore) -> None:
    """Email intake until ``stop``: polls ``DSR_IMAP_*`` and hands messages to ``service``."""
    imap = settings.imap
    if imap is None:
        return
    password = settings.secret("DSR_IMAP_PASSWORD")
    if password is None:
        raise ConfigError("DSR_IMAP_HOST is set but DSR_IMAP_PASSWORD is not (environment or secrets.env)")
    mailbox = Mailbox(
        MailboxSettings(
            host=imap.host,
            username=imap.username,
            password=password,
            port=imap.port,
            folder=imap.folder,
            processed_folder=imap.processed_folder,
            rejected_folder=imap.rejected_folder,
            authserv_id=imap.authserv_id,
            poll_interval=float(imap.poll_seconds),
            cafile=Path(imap.cafile) if imap.cafile else None,
            timezone=settings.policy.timezone,
        ),
        service,
        engine=ledger.engine,
        keyring=keyring,
        attachments=attachments,
    )
    await mailbox.run(stop)
