"""Assembling the intake app from the settings: what `dsr up` and `dsr intake` serve."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi import FastAPI
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from dsr.config.settings import ConfigError, Settings
from dsr.domain.aftercare import aftercare_id
from dsr.domain.model import LINK_ONLY_KINDS, AuditEvent, CodeLocked
from dsr.mail.bundle import BundleStream, open_bundle
from dsr.store import ObjectNotFound
from dsr.store.attachments import AttachmentStore
from dsr.store.crypto import KeyRing
from dsr.store.exports import ExportStore
from dsr.store.guards import AnswerThrottle, Guards
from dsr.store.ledger import Ledger
from dsr.store.links import DownloadLinks, IdentityLinks
from intake.email.poller import Mailbox
from intake.email.settings import MailboxSettings
from intake.service import IdentityOutcome, IntakeService, RateLimits, confirm_identity
from intake.web.api import DeskSettings, api_router
from intake.web.app import intake_app
from intake.web.form import form_router
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
                    await client.get_workflow_handle_for(RequestAftercare.run, aftercare_id(request_id)).signal(
                        RequestAftercare.code_locked, locked)
                    return
                except RPCError as err:
                    if err.status != RPCStatusCode.NOT_FOUND:
                        raise
            await client.get_workflow_handle_for(DataSubjectRequest.run, request_id).signal(
                DataSubjectRequest.code_locked, locked)
        except RPCError as err:
            # A request and aftercare already over, or Temporal away: the ledger has it.
            logger.warning("intake: could not tell request %s that its %s code is closed (%s)",
                           request_id, page, err.status.name if err.status else "error")

    return on_locked


def _link_only(ledger: Ledger, request_id: str) -> bool:
    """No code was offered for this request (an erasure or a rectification): ``/verify`` takes none."""
    found = ledger.get_request(request_id)
    return found is not None and found.kind in LINK_ONLY_KINDS


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
        ),
        form_router(
            service,
            # From the current key: rotates with the ring (forms are good for two hours; one opened before a
            # rotation is simply filled in again).
            csrf_key=keyring.derive_key("dsr/form-csrf/v2"),
            default_language=language,
            public_path=public_path,
            controller_name=settings.controller_name,
        ),
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
    )
    return app, service


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
