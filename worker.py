"""``python worker.py``: one worker process running every workflow and activity of the engine.

Scale by running more of these on the same task queue; nothing here assumes one machine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker, WorkflowRunner

from activities.connectors import ConnectorActivities
from activities.deadlines import deadlines_resumed, local_instant
from activities.intake import IntakeActivities
from activities.ledger import LedgerActivities
from activities.notices import Mailer, NoticeActivities
from activities.outside import ANSWER_LINK_PURPOSE, OutsideActivities
from activities.replies import ReplyActivities
from activities.restrictions import RestrictionActivities
from activities.storage import StorageActivities
from activities.subjects import SubjectActivities
from connectors.base import Connector
from dsr.config.profile import ControllerProfile, ProfileFile
from dsr.config.settings import Settings
from dsr.domain.model import TRIAGE_PREFIX, AuditEvent
from dsr.errors import ConfigurationError
from dsr.runtime.workflow_code import CompiledOnceSandbox, compile_once
from dsr.store.attachments import AttachmentStore
from dsr.store.crypto import KeyRing
from dsr.store.exports import ExportStore
from dsr.store.ledger import Ledger
from dsr.store.links import ConsentLinks, DownloadLinks, IdentityLinks, StatusLinks
from dsr.store.mail_sends import MailSends, SendIntent
from dsr.store.suppressions import SuppressionList
from dsr.store.tasks import OutsideTasks
from dsr.store.turns import SubjectTurns
from intake.email.imap import ImapSession
from intake.email.imap import connect as imap_connect
from intake.email.settings import MailboxSettings
from intake.service import TriagedSubmission
from workflows.aftercare import RequestAftercare
from workflows.outside import OutsideSystemTask
from workflows.request import DataSubjectRequest
from workflows.restriction import RestrictionInForce
from workflows.triage import TriageMessageWorkflow

WORKFLOWS: Sequence[type] = (DataSubjectRequest, TriageMessageWorkflow, OutsideSystemTask, RequestAftercare,
                             RestrictionInForce)


class LedgerSentLog:
    """Lets the mail activities ask the ledger whether an email already went out (retries), and keep its send
    intent (``dsr.store.mail_sends``) around each SMTP transaction."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._sends = MailSends(ledger.engine)

    def has_event(self, key: str) -> bool:
        return self._ledger.has_event(key)

    def begin_send(self, key: str, *, request_id: str, template: str, message_id: str, digest: str) -> SendIntent:
        return self._sends.begin(key, request_id=request_id, template=template, message_id=message_id,
                                 digest=digest, now=datetime.now(UTC))

    def end_send(self, key: str, *, sent: bool, possible_duplicate: bool = False) -> None:
        self._sends.end(key, sent=sent, now=datetime.now(UTC), possible_duplicate=possible_duplicate)

    def record_sent(self, request_id: str, key: str, template: str, message_id: str, *,
                    possible_duplicate: bool = False, found_in_sent_folder: bool = False) -> None:
        if request_id.startswith(TRIAGE_PREFIX):
            return  # an unclassified email is not a request (yet): the ledger has no row to attach it to

        details = {"template": template, "message_id": message_id}
        if possible_duplicate:
            # For the operator: this email may have reached its recipient twice (same Message-ID).
            details["possible_duplicate"] = "true"
        if found_in_sent_folder:
            # A worker was lost after the server's 250; its copy in the Sent folder proved the send.
            details["found_in_sent_folder"] = "true"
        self._ledger.append_event(
            AuditEvent(request_id=request_id, event="notice_sent", details=details),
            key=key,
            at=datetime.now(UTC),
        )


class ImapSentCopies:
    """The Sent folder (``DSR_IMAP_SENT_FOLDER``) of the ``DSR_IMAP_*`` account, where the SMTP relay files a copy
    of every message it accepts (Gmail and Microsoft 365 do, for the account that logs in to send): searched by
    Message-ID, it tells whether an attempt whose worker was lost after the DATA was accepted."""

    def __init__(self, mailbox: MailboxSettings, folder: str) -> None:
        self._mailbox = mailbox
        self._folder = folder

    async def holds(self, message_id: str) -> bool:
        session = ImapSession(await imap_connect(self._mailbox), timeout=self._mailbox.timeout)
        try:
            await session.learn_delimiter()
            await session.select(self._folder)
            return bool(await session.uids_with_message_id(message_id))
        finally:
            await session.logout()


def sent_copies_of(settings: Settings) -> ImapSentCopies | None:
    """The Sent folder to search when ``DSR_IMAP_SENT_FOLDER`` is set (with the intake's IMAP account)."""
    imap = settings.imap
    if imap is None or not imap.sent_folder:
        return None
    password = settings.secret("DSR_IMAP_PASSWORD")
    if password is None:
        raise ConfigurationError("DSR_IMAP_SENT_FOLDER is set but DSR_IMAP_PASSWORD is not (environment or "
                                 "secrets.env)")
    mailbox = MailboxSettings(host=imap.host, username=imap.username, password=password, port=imap.port,
                              cafile=Path(imap.cafile) if imap.cafile else None, timeout=30.0)
    return ImapSentCopies(mailbox, imap.sent_folder)


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
    suppressions = SuppressionList(ledger)
    profile = profile or ProfileFile(settings.config_file)  # re-read only when the file changes
    signature = controller_signature(settings, profile)
    sent_copies = sent_copies_of(settings)
    notices = NoticeActivities(
        settings.smtp,
        mail_from=settings.mail_from,
        from_name=signature or "Privacy",
        mail_domain=settings.mail_domain,
        sent_log=LedgerSentLog(ledger),
        controller_name=signature,
        request_link=settings.request_link,
        identity_links=IdentityLinks(keyring, ttl=timedelta(days=settings.policy.identity_timeout_days)),
        status_links=StatusLinks(keyring),
        consent_links=ConsentLinks(keyring, ttl=timedelta(days=settings.consent_link_days)),
        public_url=settings.intake_url,
        profile=profile,
        sent_copies=sent_copies,
    )
    intake = IntakeActivities(
        TriagedSubmission(settings, ledger),
        delete_documents=AttachmentStore(exports.objects, keyring).delete_all,
    )
    connectors = list(connectors)
    fan_out = ConnectorActivities(connectors, exports)
    turns = SubjectActivities(ledger, SubjectTurns(ledger.engine), plan=fan_out.plan)
    outside = OutsideActivities(
        connectors, OutsideTasks(ledger.engine, keyring),
        Mailer(settings.smtp, mail_from=settings.mail_from, from_name=signature or "Privacy",
               mail_domain=settings.mail_domain),
        DownloadLinks(keyring, purpose=ANSWER_LINK_PURPOSE), public_url=settings.intake_url,
        controller_name=signature, sent_log=LedgerSentLog(ledger), profile=profile, sent_copies=sent_copies,
        timezone=settings.policy.timezone)
    replies = ReplyActivities(
        Mailer(settings.smtp, mail_from=settings.mail_from, from_name=signature or "Privacy",
               mail_domain=settings.mail_domain),
        sent_log=LedgerSentLog(ledger),
        exports=exports,
        links=DownloadLinks(keyring, ttl=timedelta(days=settings.link_days)),
        public_url=settings.intake_url,
        profile=profile,
        suppressed_until=lambda email: (entry.until.date() if (entry := suppressions.entry(email)) else None),
        timezone=settings.policy.timezone,
        system_types=connector_types(settings),
        sent_copies=sent_copies,
        consent_links=ConsentLinks(keyring, ttl=timedelta(days=settings.consent_link_days)),
        ledger=ledger,
    )
    storage = StorageActivities(exports, ledger)
    restrictions = RestrictionActivities(
        ledger, mailer=Mailer(settings.smtp, mail_from=settings.mail_from, from_name=signature or "Privacy",
                              mail_domain=settings.mail_domain),
        sent_log=LedgerSentLog(ledger), profile=profile, connectors=connectors, controller_name=signature,
        sent_copies=sent_copies)
    return [
        ledger_activities.record_request,
        ledger_activities.record_event,
        ledger_activities.record_events,
        ledger_activities.record_event_batch,
        ledger_activities.record_triage_dismissal,
        ledger_activities.suppress_marketing,
        ledger_activities.consent_already_withdrawn,
        ledger_activities.record_consent_withdrawal,
        ledger_activities.find_directives,
        ledger_activities.mark_directives_applied,
        notices.send_notice,
        fan_out.plan_fanout,
        fan_out.run_connector,
        outside.open_outside_task,
        outside.send_outside_mail,
        outside.pending_answers,
        outside.send_supplement,
        deadlines_resumed,
        local_instant,
        replies.send_reply,
        replies.delete_exports,
        storage.delete_earlier_exports,
        intake.submit_triaged,
        intake.delete_identity_documents,
        turns.ask_subject_turn,
        turns.release_subject_turn,
        turns.start_aftercare,
        turns.check_subject_turn,
        restrictions.end_restriction_grounds,
        restrictions.ground_ended_already,
        restrictions.tell_restriction_lifted,
    ]


def connector_types(settings: Settings) -> dict[str, str]:
    """Each configured connector's name -> type (the export's field labels follow the type); a configuration
    that cannot be read gives none (the labels are then guessed; `dsr config check` reports the file)."""
    from connectors.config import load_config

    try:
        return {c.display_name: c.type for c in load_config(settings.config_file).connectors}
    except ConfigurationError:
        return {}


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
    workflow_runner: WorkflowRunner | None = None,
) -> Worker:
    """The engine's worker. ``workflow_runner`` is a test seam (the tests validate the workflow definitions in
    the sandbox once per process rather than at every worker start); left out, the SDK's sandbox, which executes
    the workflow modules afresh for each run from code compiled once per process, its own glue too
    (``dsr.runtime.workflow_code``)."""
    compile_once("workflows")
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=list(WORKFLOWS),
        activities=activities_for(settings, ledger, connectors, exports, profile),
        activity_executor=executor or concurrent.futures.ThreadPoolExecutor(max_workers=16),
        max_cached_workflows=settings.workflow_cache,
        workflow_runner=workflow_runner or CompiledOnceSandbox(),
    )


def settle_heap() -> None:
    """Freeze what the process holds once started (its modules, the SDK, connectors, the worker): it lives as long
    as the process, and the garbage collector's full passes then stop walking it. Workflow runs allocate heavily
    (each a sandbox with its own copies of the workflow modules), so full passes come often; without this, each
    walked every object the imports left."""
    gc.collect()
    gc.freeze()


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
            settle_heap()
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
