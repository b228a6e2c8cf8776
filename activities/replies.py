"""The final reply of a fulfilled request: export bundle and download link, the reply itself, and the
Art. 19 notices to recipients; then, when the link expires, the deletion of what was exported."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.ledger import record_batch
from activities.notices import Mailer, SentCopies, SentLog, beating, consent_url, content_digest, deliver_once
from dsr.config.profile import Art19Recipient, ControllerProfile
from dsr.domain.model import (
    ConnectorOutcome,
    ExportsDeletion,
    Language,
    RecordAction,
    ReplyInput,
    ReplyResult,
    RequestKind,
)
from dsr.mail.bundle import build_bundle
from dsr.mail.replies import IncompleteProfileError, ReplyContext, render_reply
from dsr.store.exports import ExportStore
from dsr.store.ledger import Ledger
from dsr.store.links import ConsentLinks, DownloadLinks, day_end_expiry, format_code, last_valid_day
from templates import RenderedNotice

# ApplicationError types raised by send_reply that only an operator can fix (the workflow asks them).
INCOMPLETE_PROFILE = "IncompleteProfile"  # an access reply lacks an Art. 15(1) item of the controller profile
REPLY_INVALID = "ReplyInvalid"  # a reply that cannot be written truthfully (e.g. an inconsistent outcome)


class ReplyActivities:
    """The final reply's activities: the notices' mailer and sent-log, the export store, links and profile;
    ``timezone`` (the controller's, ``DSR_TIMEZONE``) dates the export's contents and the link's last day;
    ``system_types`` (connector name -> type, from dsr.toml) picks the export's field labels."""

    def __init__(self, mailer: Mailer, *, sent_log: SentLog | None, exports: ExportStore, links: DownloadLinks,
                 public_url: str, profile: Callable[[], ControllerProfile | None],
                 suppressed_until: Callable[[str], date | None] | None = None, timezone: str = "UTC",
                 system_types: Mapping[str, str] | None = None,
                 sent_copies: SentCopies | None = None, consent_links: ConsentLinks | None = None,
                 ledger: Ledger) -> None:
        self._mailer = mailer
        self._ledger = ledger  # the events the request noted before its reply (ReplyInput.events) go here
        self._consent_links = consent_links
        # The suppression list (dsr.store.suppressions): an erasure reply says what it keeps of an objection.
        self._suppressed_until = suppressed_until or (lambda email: None)
        self._sent_log = sent_log
        self._sent_copies = sent_copies
        self._exports = exports
        self._links = links
        self._public_url = public_url.rstrip("/")
        self._profile = profile
        self._timezone = timezone
        self._system_types = dict(system_types or {})

    def _key(self, step: str, suffix: str = "") -> str:
        info = activity.info()
        raw = f"{info.workflow_id}/{info.workflow_run_id}/{step or info.activity_id}/{suffix}"
        return "reply-" + hashlib.sha256(raw.encode()).hexdigest()[:32]

    async def _deliver(self, request_id: str, to: str, language: Language, rendered: RenderedNotice, key: str,
                       in_reply_to: str | None, what: str, whose: str, unsubscribe_url: str = "") -> str:
        """Send once per key: a retried activity finds what it already sent in the sent-log, and one retried
        after a worker lost between the server's 250 and the sent-log sends the same Message-ID again, recorded
        as a possible duplicate (``deliver_once``)."""
        message_id = self._mailer.message_id(key)
        message = self._mailer.compose(to, language, rendered, message_id=message_id, in_reply_to=in_reply_to,
                                       whose=whose, unsubscribe_url=unsubscribe_url)
        await deliver_once(self._mailer, self._sent_log, message, to=to, key=key, request_id=request_id,
                           template=what, digest=content_digest(rendered), whose=whose,
                           where=f"{what} for request {request_id}", sent_copies=self._sent_copies)
        return message_id

    @activity.defn(name="send_reply")
    async def send_reply(self, reply: ReplyInput) -> ReplyResult:
        # Building a large bundle and sending by SMTP take a while: heartbeats prove the worker alive, so a
        # lost one is replaced within the heartbeat timeout (the sent-log keeps every email single).
        async with beating():
            return await self._send_reply(reply)

    async def _send_reply(self, reply: ReplyInput) -> ReplyResult:
        if reply.events is not None and reply.events.events:
            # First, before anything may fail: whatever the reply's fate, the request counts these as written.
            await asyncio.to_thread(record_batch, self._ledger, reply.events.events, key=reply.events.key)
        profile = await asyncio.to_thread(self._profile)
        # An objection is answered with what was done or decided, data found or not.
        # A restriction too: its reply says, system by system, what was marked, held nothing or is restricted by hand.
        no_data = (reply.kind not in (RequestKind.OBJECTION, RequestKind.CONSENT_WITHDRAWAL, RequestKind.RESTRICTION)
                   and all(o.found == 0 for o in reply.outcomes))
        result = ReplyResult(message_id="", no_data=no_data)
        context = ReplyContext(
            reference=reply.request_id, received=reply.received, deadline=reply.deadline,
            extended=reply.extended, subject_name=reply.subject.name, profile=profile,
            systems=list(reply.outcomes), extension_reason=reply.extension_reason, request_kind=reply.kind,
            scope=reply.scope, decision=reply.decision, grounds=reply.grounds, suppressed_until=reply.suppressed_until,
            consent_purposes=list(reply.purposes), consent_earlier=list(reply.consent_earlier),
            quality=reply.quality, action=reply.action, directives=reply.directives,
            ground=reply.ground, lift_notice_days=reply.lift_notice_days,
        )
        if reply.kind == RequestKind.ERASURE:
            # Kept whatever is erased (the legal reason to keep that one fact): the subject is told so.
            context.suppressed_until = await asyncio.to_thread(self._suppressed_until, reply.subject.email)
        if reply.kind in (RequestKind.ACCESS, RequestKind.PORTABILITY) and no_data:
            # Nothing to deliver, so no link and no expiry timer: the empty export files go now.
            await asyncio.to_thread(self._exports.delete, reply.request_id)
        if reply.kind in (RequestKind.ACCESS, RequestKind.PORTABILITY) and not no_data:
            info = await asyncio.to_thread(
                build_bundle, self._exports, reply.request_id, language=reply.language, kind=reply.kind,
                reference_info={"reference": reply.request_id, "received": reply.received.isoformat(),
                                **({"controller_name": profile.legal_name} if profile else {})},
                provided_only=reply.kind == RequestKind.PORTABILITY, timezone=self._timezone,
                system_types=self._system_types,
                system_labels={o.connector: profile.system_label(o.connector, reply.language)
                               for o in reply.outcomes} if profile else None,
            )
            # The reply promises the link "until <day> inclusive" and the download page says the same: the link
            # expires at the midnight ending that day in the controller's time zone, so both are exact.
            now = datetime.now(UTC)
            expiry = day_end_expiry(now, self._links.ttl, self._timezone)
            link = self._links.issue(reply.request_id, now=now, ttl=expiry - now)
            # ?lang: the download page speaks the reply's language, whatever the browser's.
            context.download_url = f"{link.url(self._public_url)}?lang={Language(reply.language).value}"
            context.download_code = format_code(link.code)
            context.link_expires = last_valid_day(link.expires_at, self._timezone)
            result.link_expires_at = link.expires_at
            result.bundle_sha256 = info.sha256

        if reply.kind in (RequestKind.ERASURE, RequestKind.RECTIFICATION, RequestKind.RESTRICTION) and profile:
            # Art. 19: a recipient is told of the rectification or erasure of what was disclosed to it: only
            # when records of this subject were changed in a dataset it receives (a recipient never told of
            # this person learns nothing of them), and of those systems only.
            for index, recipient in enumerate(profile.art19_recipients):
                systems = _acted_for(recipient, reply.outcomes)
                if not systems:
                    continue
                notice_context = ReplyContext(
                    reference=reply.request_id, received=reply.received, deadline=reply.deadline,
                    profile=profile, systems=systems, request_kind=reply.kind,
                    subject_email=reply.subject.email, subject_name=reply.subject.name,
                    recipient_name=recipient.name,
                )
                # In the recipient's language (a French accountant, an English processor), not the subject's.
                language = Language(recipient.language)
                rendered = render_reply("art19_notice", language, notice_context)
                await self._deliver(reply.request_id, str(recipient.email), language, rendered,
                                    self._key(reply.key, f"art19-{index}"), None, "art19_notice",
                                    whose=f"the address of Art. 19 recipient {index + 1}")
                result.recipients_notified.append(recipient.name)
            context.recipients_notified = list(result.recipients_notified)

        # A post_mortem reply speaks of the deceased person's data to the sender, found or not: its own wording.
        template = "reply_no_data" if no_data and reply.kind != RequestKind.POST_MORTEM else f"reply_{reply.kind.value}"
        context.consent_url = consent_url(self._consent_links, self._public_url, lambda: profile, reply.subject.email,
                                          reply.language.value)
        try:
            rendered = render_reply(template, reply.language, context)
        except IncompleteProfileError as err:
            # Art. 15(1): an access reply may not omit an item; an operator must complete the profile.
            raise ApplicationError(f"{reply.request_id}: {err}", type=INCOMPLETE_PROFILE) from None
        except ValueError as err:
            # A reply that cannot be made truthfully: retried after an operator fixes the cause.
            raise ApplicationError(f"{reply.request_id}: {template} cannot be written ({err})",
                                   type=REPLY_INVALID) from None
        result.message_id = await self._deliver(reply.request_id, reply.subject.email, reply.language, rendered,
                                                self._key(reply.key), reply.in_reply_to, template,
                                                whose="the subject's address", unsubscribe_url=context.consent_url)
        return result

    @activity.defn(name="delete_exports")
    def delete_exports(self, deletion: ExportsDeletion) -> bool:
        """The link expired (or the request closed without a reply): the bundle and every exported record go
        (idempotent)."""
        return self._exports.delete(deletion.request_id)


_ACTED = (RecordAction.CHANGED, RecordAction.DELETED, RecordAction.ANONYMISED, RecordAction.RESTRICTED)


def _acted_for(recipient: Art19Recipient, outcomes: Iterable[ConnectorOutcome]) -> list[ConnectorOutcome]:
    """The outcomes, each cut to its lines that changed a dataset disclosed to ``recipient`` (none: not told)."""
    kept = []
    for outcome in outcomes:
        lines = [line for line in outcome.report
                 if line.action in _ACTED and recipient.received(outcome.connector, line.dataset)]
        if lines:
            kept.append(dataclasses.replace(outcome, report=lines))
    return kept
