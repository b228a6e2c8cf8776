"""``python worker.py``: one worker process running every workflow and activity of the engine.

Scale by running more of these on the same task queue; nothing here assumes one machine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from activities.connectors import ConnectorActivities
from activities.deadlines import deadlines_resumed, local_instant
from activities.intake import IntakeActivities
from activities.ledger import LedgerActivities
from activities.notices import Mailer, NoticeActivities
from activities.replies import ReplyActivities
from activities.storage import StorageActivities
from activities.subjects import ask_subject_turn, subject_request_running
from connectors.base import Connector
from dsr.config.profile import ControllerProfile, load_profile
from dsr.config.settings import Settings
from dsr.errors import ConfigurationError
from dsr.store.attachments import AttachmentStore
from dsr.store.crypto import KeyRing
from dsr.store.exports import ExportStore
from dsr.store.ledger import Ledger
from dsr.store.links import DownloadLinks, IdentityLinks
from intake.service import IntakeService
from workflows.aftercare import RequestAftercare
from workflows.request import DataSubjectRequest
from workflows.subjects import SubjectQueue
from workflows.triage import TriageMessageWorkflow

WORKFLOWS: Sequence[type] = (DataSubjectRequest, TriageMessageWorkflow, SubjectQueue, RequestAftercare)


class LedgerSentLog:
    """Lets the notice activity ask the ledger whether a notice already went out (retries)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def has_event(self, key: str) -> bool:
        return self._ledger.has_event(key)

    def record_sent(self, request_id: str, key: str, template: str, message_id: str) -> None:
        from datetime import UTC, datetime

        from dsr.domain.model import TRIAGE_PREFIX, AuditEvent

        if request_id.startswith(TRIAGE_PREFIX):
            return  # an unclassified email is not a request (yet): the ledger has no row to attach it to

        self._ledger.append_event(
            AuditEvent(request_id=request_id, event="notice_sent",
                       details={"template": template, "message_id": message_id}),
            key=key,
            at=datetime.now(UTC),
        )


def activities_for(
    settings: Settings, ledger: Ledger, connectors: Iterable[Connector], exports: ExportStore,
    profile: Callable[[], ControllerProfile | None] | None = None,
) -> list:
    """Every activity function of the engine, bound to its dependencies."""
    keyring = exports.sealer
    if not isinstance(keyring, KeyRing):
        # Identity and download links, and the attachment store, derive their own keys from the ring itself.
        raise TypeError("the export store must be sealed with the settings' key ring (dsr.store.crypto.KeyRing)")
    ledger_activities = LedgerActivities(ledger)
    profile = profile or (lambda: load_profile(settings.config_file))
    signature = controller_signature(settings, profile)
    notices = NoticeActivities(
        settings.smtp,
        mail_from=settings.mail_from,
        from_name=signature or "Privacy",
        mail_domain=settings.mail_domain,
        sent_log=LedgerSentLog(ledger),
        controller_name=signature,
        request_link=settings.request_link,
        identity_links=IdentityLinks(keyring, ttl=timedelta(days=settings.policy.identity_timeout_days)),
        public_url=settings.intake_url,
        profile=profile,
    )
    intake = IntakeActivities(
        lambda client: IntakeService(client, settings, ledger),
        delete_documents=AttachmentStore(exports.objects, keyring).delete_all,
    )
    fan_out = ConnectorActivities(connectors, exports)
    replies = ReplyActivities(
        Mailer(settings.smtp, mail_from=settings.mail_from, from_name=signature or "Privacy",
               mail_domain=settings.mail_domain),
        sent_log=LedgerSentLog(ledger),
        exports=exports,
        links=DownloadLinks(keyring, ttl=timedelta(days=settings.link_days)),
        public_url=settings.intake_url,
        profile=profile,
    )
    storage = StorageActivities(exports, ledger)
    return [
        ledger_activities.record_request,
        ledger_activities.record_event,
        ledger_activities.record_triage_dismissal,
        notices.send_notice,
        fan_out.plan_fanout,
        fan_out.run_connector,
        deadlines_resumed,
        local_instant,
        replies.send_reply,
        replies.delete_exports,
        storage.delete_earlier_exports,
        intake.submit_triaged,
        intake.delete_identity_documents,
        ask_subject_turn,
        subject_request_running,
    ]


def controller_signature(settings: Settings, profile: Callable[[], ControllerProfile | None]) -> str:
    """Who signs notices and names the sender: DSR_CONTROLLER_NAME, else the profile's legal name (read once,
    at the worker's start), so the acknowledgement and the final reply are signed alike."""
    if settings.controller_name:
        return settings.controller_name
    try:
        loaded = profile()
    except ConfigurationError:
        return ""  # a malformed profile is reported by `dsr config check` and holds access replies
    return loaded.legal_name if loaded is not None else ""


def build_worker(
    client: Client,
    settings: Settings,
    ledger: Ledger,
    connectors: Iterable[Connector] = (),
    *,
    exports: ExportStore,
    profile: Callable[[], ControllerProfile | None] | None = None,
    task_queue: str | None = None,
    executor: concurrent.futures.Executor | None = None,
) -> Worker:
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=list(WORKFLOWS),
        activities=activities_for(settings, ledger, connectors, exports, profile),
        activity_executor=executor or concurrent.futures.ThreadPoolExecutor(max_workers=16),
    )


async def run_worker(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Connect with the settings' key ring and run until ``stop`` is set (or forever)."""
    from dsr.runtime.bootstrap import Deployment

    deployment = Deployment.from_settings(settings)
    connectors = deployment.connectors()
    await deployment.check_storage()
    client = await deployment.client()
    ledger = deployment.ledger
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as executor:
            worker = build_worker(client, settings, ledger, connectors, exports=deployment.exports, executor=executor)
            async with worker:
                await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        deployment.close()
        for connector in connectors:
            await connector.aclose()


def main() -> None:
    import os

    os.umask(0o077)  # what this process creates (a SQLite ledger, logs) is its user's alone; see dsr.cli.main
    asyncio.run(run_worker(Settings.from_env()))


if __name__ == "__main__":
    main()
