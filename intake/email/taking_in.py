"""Taking one email in, exactly once: the state machine between a parsed message and a request.

The poller (:mod:`intake.email.poller`) reads a message and hands it here with its receipt instant; what comes
back says where the message goes (the processed, triage or rejected folder) or that it stays in the inbox for
the next poll. No IMAP here: the only state is the message's row in the ledger's database
(:mod:`dsr.store.inbox`), so any poller on any machine resumes where another one died.

Exactly once
------------
A poll may die at any instant (crash, kill, lost connection) and the next poll must neither lose the
message nor start a second request for it. Each message goes through these steps, each durable before the
next begins (table ``inbound_messages``, :mod:`dsr.store.inbox`, in the ledger's database):

1. **look up** the message by a keyed hash of its Message-ID and sender (a message without Message-ID gets
   a synthetic one from a hash of its raw bytes);
2. if absent, **reserve**: a new request id (``new_request_id``) is committed as ``reserved``;
3. **attachments** are stored encrypted under the reserved id (cleared and stored again if a previous
   attempt died half-way; never again once recorded as stored, so an ID copy deleted after identity
   confirmation cannot come back);
4. **submit** with ``request_id=`` the reserved id (or **triage** with it). The service starts workflows
   idempotently by id, so re-submitting after a crash here answers with the same request, never a second;
5. mark ``submitted`` / ``triaged``;
6. the poller **moves** the message to the processed folder (UID MOVE, or COPY + STORE \\Deleted + EXPUNGE on
   servers without MOVE), then :meth:`MessageIntake.moved` marks it ``moved``.

A crash before 5 re-submits the same id (idempotent); between 5 and 6 the next poll finds the row and only
moves the message; after the move the message is no longer in the inbox. A message that is delivered
again with the same Message-ID and sender is moved without a second request.

Replies about a request
-----------------------
Before anything is stored or classified (between 2 and 3), a sink that is also a
:class:`~intake.service.ReplySink` is asked whether the message answers a request: a reference
(``dsr-2026-11-7KQ3FJ``, any case) in its Subject or one of our Message-IDs in In-Reply-To/References, *and*
the sender being that request's subject (blind index in the ledger). Otherwise -- no reference, no such
request, someone else writing -- the steps above apply unchanged. The decision is committed on the row
(``reason`` ``correspondence`` or ``closed_reply``, ``reference`` the request) before anything else, so a
retry takes the same path:

* open request: 3') the attachments are stored under the *request's* id, each tagged with the message's key
  and part, so a retry stores only what is missing and never clears the request's other files;
  4') the ``record_correspondence`` update, idempotent by the message key (a crash after it and before 5
  sends it again: the workflow recognises the key and does nothing); 5) ``submitted``; 6) processed folder.
* closed request (or one that refuses the update because it closed meanwhile, its files then moved back
  under the reserved id): triage, with the reason "reply about closed request dsr-...", never a new request.

A message the service refuses (``SubmissionError``) is marked ``rejected`` (its stored files deleted: there
will never be a request to review them for); ``RateLimited``, an unavailable engine or an unreadable ledger
leave the row ``reserved``, and the message in the inbox for the next poll.

Logs name IMAP UIDs, request ids and reason codes only: never addresses, names, subjects or bodies.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from dsr.domain.deadlines import receipt_date
from dsr.domain.model import Channel, Correspondence, Language, RequestKind, is_valid_email
from dsr.store.attachments import AttachmentLimitError, AttachmentStore
from dsr.store.inbox import InboundMessage, Inbox, MessageState
from intake.email.mime import InboundEmail
from intake.email.settings import Outcome
from intake.service import IntakeSink, RateLimited, ReplySink, RequestClosed, TriageItem
from intake.submission import MAX_DETAILS, Submission, SubmissionError, new_request_id

log = logging.getLogger("dsr.intake.mailbox")

TRUNCATED_MARK = "\n[…]"
"""Ends a body cut to fit a request's details (the whole email stays in the mailbox)."""

CORRESPONDENCE = "correspondence"
"""Inbox reason code: a reply about the open request named in ``reference``."""
CLOSED_REPLY = "closed_reply"
"""Inbox reason code: a reply about the closed request named in ``reference``: to triage."""
FORGED_REPLY = "dmarc_fail_reply"
"""Inbox reason code: a reply naming the open request ``reference`` whose sender failed DMARC: to triage."""


class ClassificationLike(Protocol):
    @property
    def kind(self) -> RequestKind | None: ...

    @property
    def language(self) -> Language | None: ...

    @property
    def reason(self) -> str: ...


Classifier = Callable[[str, str], ClassificationLike]
"""``classify(subject, body)``; ``kind`` None means unsure: the message goes to triage."""


def _default_classifier(subject: str, body: str) -> ClassificationLike:
    from intake.email.classify import classify  # imported late: the classifier is its own module

    return classify(subject, body)


@dataclass(frozen=True)
class Taken:
    """Where a message stands after steps 1-5."""

    key: str  # the message's row (keyed hash of its Message-ID and sender)
    request_id: str  # the id reserved for it
    done: MessageState | None  # submitted, triaged or rejected: the folder it goes to; None: stays in the inbox
    outcome: Outcome  # what the poll counts once it is moved


class MessageIntake:
    """Steps 1-5 and the record of step 6 for one message at a time (the poller moves it in between).

    ``attachments`` stores the files sealed; ``sink`` is the intake service (a :class:`ReplySink` too, or
    replies about a request are not recognised); ``timezone`` is the controller's, for the month in the
    reserved request id.
    """

    def __init__(
        self,
        sink: IntakeSink,
        *,
        inbox: Inbox,
        attachments: AttachmentStore,
        classifier: Classifier | None = None,
        timezone: str = "Europe/Paris",
    ) -> None:
        self._sink = sink
        # Replies about a request are recognised only by a sink that can look them up (the intake service).
        self._replies: ReplySink | None = sink if isinstance(sink, ReplySink) else None
        self._inbox = inbox
        self._attachments = attachments
        self._classify: Classifier = classifier or _default_classifier
        self._timezone = timezone

    async def take_in(self, message: InboundEmail, raw: bytes, received_at: datetime, uid: int) -> Taken:
        """Steps 1-5: look up, reserve, decide, store, submit or triage; each durable before the next."""
        key = self._inbox.key_for(message.key_id(raw), message.sender)
        row = await asyncio.to_thread(self._inbox.get, key)
        if row is None:
            request_id = new_request_id(receipt_date(received_at, self._timezone))
            row = await asyncio.to_thread(self._inbox.reserve, key, request_id=request_id, received_at=received_at)
        if row.state == MessageState.RESERVED:
            row = await self._take_in(row, message, received_at, uid)
            if row.state == MessageState.RESERVED:
                return Taken(key, row.request_id, None, Outcome.DEFERRED)
            fresh = True
        else:
            fresh = False  # handled by an earlier poll that did not get to move it, or delivered twice

        done = MessageState(row.outcome or MessageState.SUBMITTED)
        if done == MessageState.REJECTED:
            outcome = Outcome.REJECTED
        elif not fresh:
            outcome = Outcome.SKIPPED
        elif done == MessageState.TRIAGED:
            outcome = Outcome.TRIAGED
        else:
            outcome = Outcome.CORRESPONDED if row.reason == CORRESPONDENCE else Outcome.SUBMITTED
        return Taken(key, row.request_id, done, outcome)

    async def moved(self, key: str) -> None:
        """Step 6, once the message is out of the inbox: the row is done with."""
        await asyncio.to_thread(self._inbox.mark, key, MessageState.MOVED)

    async def _take_in(
        self, row: InboundMessage, message: InboundEmail, received_at: datetime, uid: int
    ) -> InboundMessage:
        """Steps 3-5 of the protocol for a reserved message; returns the row (still reserved: deferred)."""
        if row.reason is None and not row.attachments_stored and not message.unread:
            # Not decided yet (attachments stored means the normal path was taken before a crash: keep it).
            recognised = await self._recognise_reply(row, message, uid)
            if recognised is None:
                return row
            row = recognised
        if row.reason == CORRESPONDENCE and row.reference:
            return await self._correspond(row, message, received_at, uid)
        request_id = row.request_id
        if not row.attachments_stored:
            await asyncio.to_thread(self._store_attachments, request_id, message)
            await asyncio.to_thread(self._inbox.mark_attachments_stored, row.message_key)
        if message.attachments_dropped:
            log.warning(
                "mailbox: message uid=%d: %d attachment(s) over the limits not kept", uid, message.attachments_dropped
            )
        try:
            classification = self._classify(message.subject, message.body)
            kind, language_enum, reason = classification.kind, classification.language, classification.reason
            # An objection's scope (classifiers before objections had none: the default asks a person).
            scope = str(getattr(classification, "scope", "") or "") \
                if kind in (RequestKind.OBJECTION, RequestKind.POST_MORTEM) else ""
            # A restriction's Art. 18(1) ground (the classifier names one only when the message states it).
            ground = str(getattr(classification, "ground", "") or "") if kind == RequestKind.RESTRICTION else ""
        except Exception as exc:  # a classifier bug must not block the inbox: a human decides instead
            log.error("mailbox: classifier failed on message uid=%d (%s); sent to triage", uid, type(exc).__name__)
            kind, language_enum, reason, scope, ground = None, None, "classifier failed", "", ""
        if message.unread:
            kind, reason = None, f"{message.unread}; the email is in the mailbox's triage folder"
        if row.reason == CLOSED_REPLY:
            # Never a new request on its own, whatever it says: a person decides (the language still helps).
            kind, reason = None, f"reply about closed request {row.reference}"
        elif row.reason == FORGED_REPLY:
            kind, reason = None, f"reply about {row.reference} from a sender that failed DMARC"
        if message.sender_check.dmarc_failed:
            # The From domain publishes a DMARC policy and this message fails it: the address is likely forged.
            # A person looks before anything is asked of or sent to whoever really owns that address.
            kind = None
            if row.reason != FORGED_REPLY:
                reason = f"{reason}; " if row.reason == CLOSED_REPLY or message.unread else ""
                reason += "sender failed DMARC"
            reason += f": the From address may be forged ({message.sender_check.summary()})"
        deceased = ""
        if kind == RequestKind.POST_MORTEM:
            # Art. 85: the request is about someone else, whose address the systems know. Taken from the message
            # only when it names exactly one address besides the sender's; otherwise a person reads it and gives
            # it at triage (dsr triage classify ID --kind post_mortem --deceased-email ...).
            deceased = deceased_address(message.body, message.sender)
            if not deceased:
                kind, reason = None, f"{reason}; the deceased person's address is not (or not alone) in the message"
        language = language_enum.value if language_enum is not None else None
        details = _bounded(message.body, MAX_DETAILS)
        in_reply_to = message.message_id  # None for a synthetic id: there is no thread to answer in
        try:
            if kind is None:
                await self._sink.triage(
                    TriageItem(
                        request_id=request_id,
                        received_at=received_at,
                        email=message.sender,
                        name=message.name,
                        language=language_enum,
                        subject_line=message.subject,
                        body=details,
                        in_reply_to=in_reply_to,
                        reason=reason,
                    )
                )
                log.info("mailbox: message uid=%d sent to triage as %s", uid, request_id)
                return await asyncio.to_thread(self._inbox.mark, row.message_key, MessageState.TRIAGED)
            accepted = await self._sink.submit(
                Submission(
                    kind=kind.value,
                    email=message.sender,
                    name=message.name,
                    channel=Channel.EMAIL.value,
                    language=language,
                    details=details,
                    received_at=received_at,
                    in_reply_to=in_reply_to,
                    request_id=request_id,
                    trusted=False,  # a From address is a claim, not proof: identity is still checked
                    scope=scope,
                    deceased_email=deceased,
                    ground=ground,
                )
            )
        except RateLimited:
            log.info("mailbox: message uid=%d rate limited; left in the inbox for the next poll", uid)
            return row
        except SubmissionError as exc:
            # Nothing was started (the service validates first), so the request id will never exist:
            # the stored attachments (perhaps an ID copy) have no request to be reviewed for.
            await asyncio.to_thread(self._attachments.delete_all, request_id)
            log.warning("mailbox: message uid=%d rejected by intake: %s", uid, _first_words(str(exc)))
            return await asyncio.to_thread(
                self._inbox.mark, row.message_key, MessageState.REJECTED, reason="invalid_submission"
            )
        except Exception as exc:  # engine unavailable, network: the reserved id makes the retry safe
            log.warning(
                "mailbox: message uid=%d could not be submitted (%s); left in the inbox", uid, type(exc).__name__
            )
            return row
        if accepted.reference != request_id:
            # Attached to the subject's open request of the same kind: the files belong to that one.
            await asyncio.to_thread(self._attachments.transfer, request_id, accepted.reference)
        log.info(
            "mailbox: message uid=%d %s %s",
            uid,
            "attached to" if accepted.attached else "submitted as",
            accepted.reference,
        )
        return await asyncio.to_thread(
            self._inbox.mark, row.message_key, MessageState.SUBMITTED, reference=accepted.reference
        )

    async def _recognise_reply(self, row: InboundMessage, message: InboundEmail, uid: int) -> InboundMessage | None:
        """Decide, durably, whether the message answers a request of its sender's; None: try again next poll."""
        if self._replies is None:
            return row
        try:
            found = await self._replies.find_replied_request(message.sender, message.subject, message.thread_ids)
        except Exception as exc:  # the ledger unreachable: deciding wrongly would misfile an ID copy
            log.warning(
                "mailbox: message uid=%d: could not check whether it answers a request (%s); left in the inbox",
                uid, type(exc).__name__,
            )
            return None
        if found is None:
            return row
        if found.closed:
            reason = CLOSED_REPLY
        elif message.sender_check.dmarc_failed:
            # Whoever forged the subject's address must not add files to their request: triage, never the request.
            reason = FORGED_REPLY
        else:
            reason = CORRESPONDENCE
        return await asyncio.to_thread(
            self._inbox.mark, row.message_key, MessageState.RESERVED, reason=reason, reference=found.request_id
        )

    async def _correspond(
        self, row: InboundMessage, message: InboundEmail, received_at: datetime, uid: int
    ) -> InboundMessage:
        """Steps 3'-5 for a reply about an open request: its files under the request, then the update."""
        assert self._replies is not None and row.reference is not None
        target, key = row.reference, row.message_key
        try:
            if not row.attachments_stored:
                await asyncio.to_thread(self._store_reply_attachments, target, key, message)
                await asyncio.to_thread(self._inbox.mark_attachments_stored, key)
            if message.attachments_dropped:
                log.warning("mailbox: message uid=%d: %d attachment(s) over the limits not kept", uid,
                            message.attachments_dropped)
            kept = len(await asyncio.to_thread(self._attachments.parts_from, target, key))
            await self._replies.record_correspondence(target, Correspondence(
                message_key=key, received_at=received_at, attachments=kept, message_id=message.message_id,
                sender_check=message.sender_check.summary(),
            ))
        except RequestClosed:
            # Closed since the ledger was read: the files leave the closed request with the message, and the
            # message goes to triage like any reply about a closed request (the move is safe to repeat).
            await asyncio.to_thread(self._attachments.move_from, target, row.request_id, key)
            row = await asyncio.to_thread(self._inbox.mark, key, MessageState.RESERVED, reason=CLOSED_REPLY)
            return await self._take_in(row, message, received_at, uid)
        except Exception as exc:  # engine unavailable, a disk error: the message key makes the retry safe
            log.warning(
                "mailbox: message uid=%d could not be recorded on %s (%s); left in the inbox",
                uid, target, type(exc).__name__,
            )
            return row
        log.info("mailbox: message uid=%d recorded as correspondence on %s (%d attachment(s))", uid, target, kept)
        return await asyncio.to_thread(self._inbox.mark, key, MessageState.SUBMITTED)

    def _store_reply_attachments(self, request_id: str, source: str, message: InboundEmail) -> None:
        # Never cleared first (the request has files of its own): parts already stored by an attempt that
        # died half-way are skipped instead.
        stored = self._attachments.parts_from(request_id, source)
        for part, attachment in enumerate(message.attachments, start=1):
            if part in stored:
                continue
            try:
                self._attachments.save(request_id, attachment.filename, attachment.content_type, attachment.data,
                                       source=source, part=part, sender_check=message.sender_check.summary())
            except AttachmentLimitError:
                log.warning("mailbox: an attachment of request %s is over the store's limits; not kept", request_id)

    def _store_attachments(self, request_id: str, message: InboundEmail) -> None:
        # Clear first: an earlier attempt may have died half-way (before attachments_stored was recorded).
        self._attachments.delete_all(request_id)
        for attachment in message.attachments:
            try:
                self._attachments.save(request_id, attachment.filename, attachment.content_type, attachment.data,
                                       sender_check=message.sender_check.summary())
            except AttachmentLimitError:
                log.warning("mailbox: an attachment of request %s is over the store's limits; not kept", request_id)


_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


def deceased_address(body: str, sender: str) -> str:
    """The one address a message about a deceased person names besides the sender's, or "" (none, or several)."""
    found = {match.group(0).rstrip(".").lower() for match in _ADDRESS.finditer(body[:MAX_DETAILS])}
    found.discard(sender.strip().lower())
    return found.pop() if len(found) == 1 and is_valid_email(next(iter(found))) else ""


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATED_MARK)] + TRUNCATED_MARK


def _first_words(text: str) -> str:
    # SubmissionError messages name the field and the rule, never the value (intake.submission).
    return " ".join(text.split())[:120]
