"""The ``send_notice`` activity: render a lifecycle notice and send it by SMTP, at most once per attempt.

Idempotency: the Message-ID is derived from the activity's identity (workflow id, run id, activity id),
so every retry of one activity produces the same Message-ID and the same ledger key. When a
:class:`SentLog` is given, a retry that finds the key already recorded returns without sending. If the
worker dies between the SMTP transaction and the ledger write, the retry sends again with the same
Message-ID (at-least-once delivery; receivers and the outbox can de-duplicate on it).

Nothing this module logs or raises names the recipient: failure messages travel to Temporal in clear
(the payload codec does not cover them), so they say "the subject's address" plus template and request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import re
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email import policy as email_policy
from email.headerregistry import Address, HeaderRegistry, MessageIDHeader
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Protocol

import aiosmtplib
from jinja2 import TemplateError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from dsr.config.profile import ControllerProfile
from dsr.config.settings import SmtpSettings
from dsr.domain.model import (
    LINK_ONLY_KINDS,
    OPERATOR_TEMPLATES,
    IdentityMethod,
    Language,
    Notice,
    NoticeTemplate,
    SentNotice,
    is_valid_email,
)
from dsr.errors import ConfigurationError
from dsr.store.links import ConsentLinks, IdentityLinks, StatusLinks, format_code
from dsr.store.mail_sends import SendIntent
from templates import RenderedNotice, one_line, render_notice

__all__ = [
    "NOTICE_DEFERRED",
    "NOTICE_INVALID",
    "NOTICE_INVALID_ADDRESS",
    "NOTICE_REJECTED",
    "NOTICE_SMTP_ERROR",
    "NOTICE_TEMPLATE_ERROR",
    "Delivery",
    "Mailer",
    "MaybeDelivered",
    "NoticeActivities",
    "SentCopies",
    "SentLog",
    "beating",
    "build_message",
    "compose",
    "content_digest",
    "deliver_once",
    "is_deliverable_address",
    "notice_key",
]

# ApplicationError types raised by send_notice (workflows may match on them; none carries an address).
NOTICE_REJECTED = "NoticeRejected"  # 5xx on RCPT or DATA: the server will never take it (non-retryable)
NOTICE_INVALID_ADDRESS = "NoticeInvalidAddress"  # `to` is not one plain mailbox (non-retryable)
NOTICE_INVALID = "NoticeInvalid"  # context lacks reference/kind or kind is unknown (non-retryable)
NOTICE_DEFERRED = "NoticeDeferred"  # connection refused/lost, timeout, 4xx: try again later (retryable)
NOTICE_SMTP_ERROR = "NoticeSmtpError"  # our side is misconfigured: auth, sender refused, TLS (retryable)
NOTICE_TEMPLATE_ERROR = "NoticeTemplateError"  # a broken template; fixed by a deploy (retryable)

# Long Message-IDs in In-Reply-To/References must not be folded into RFC 2047 encoded words (which breaks
# threading); parsing them as msg-id makes the generator keep them intact whatever policy flattens them.
_HEADERS = HeaderRegistry()
# typeshed wants a BaseHeader subclass; the registry itself mixes BaseHeader into the class it is given.
_HEADERS.map_to_type("in-reply-to", MessageIDHeader)  # type: ignore[arg-type]
_HEADERS.map_to_type("references", MessageIDHeader)  # type: ignore[arg-type]
MAIL_POLICY = email_policy.SMTP.clone(header_factory=_HEADERS)

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~.-"
_MSG_ID = re.compile(rf"<[{_ATEXT}]+@[{_ATEXT}\[\]:]+>")
_EMAIL_LIKE = re.compile(r"[^\s<>()\[\],;:\"']+@[^\s<>()\[\],;:\"']+")


log = logging.getLogger(__name__)

_SMTP_DOWN: set[tuple[str, int]] = set()
"""SMTP servers this process last found unreachable: the worker says so once per outage, not per attempt
(only a log; whether a notice is delivered lives in Temporal, where every worker sees it)."""


def _smtp_reachable(host: str, port: int) -> None:
    if (host, port) in _SMTP_DOWN:
        _SMTP_DOWN.discard((host, port))
        log.warning("SMTP server %s:%s is reachable again: waiting notices and replies go out", host, port)


def _smtp_unreachable(host: str, port: int, error: str) -> None:
    if (host, port) not in _SMTP_DOWN:
        _SMTP_DOWN.add((host, port))
        log.error("SMTP server %s:%s is down (%s): notices and replies are kept and retried until it is back; "
                  "requests go on (see `dsr status`, dashboard 'mail not delivered')", host, port, error)


HEARTBEAT_EVERY = 2.0
"""Seconds between liveness heartbeats of the mail activities (the SDK throttles to the timeout)."""


@contextlib.asynccontextmanager
async def beating() -> AsyncIterator[None]:
    """Heartbeat while the body runs (a bundle being built in a thread, an SMTP exchange), so that a lost
    worker is noticed within the activity's heartbeat timeout instead of its start-to-close timeout."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(HEARTBEAT_EVERY)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class SentLog(Protocol):
    """Where sent notices are recorded (the ledger, through an adapter). Called from a worker thread."""

    def has_event(self, key: str) -> bool: ...

    def record_sent(self, request_id: str, key: str, template: str, message_id: str, *,
                    possible_duplicate: bool = False, found_in_sent_folder: bool = False) -> None: ...

    def begin_send(self, key: str, *, request_id: str, template: str, message_id: str,
                   digest: str) -> SendIntent:
        """Record, durably, that an SMTP transaction of ``key`` starts (see :mod:`dsr.store.mail_sends`)."""
        ...

    def end_send(self, key: str, *, sent: bool, possible_duplicate: bool = False) -> None:
        """The transaction ended: accepted (perhaps a second time), or certainly not accepted."""
        ...


class MaybeDelivered(ApplicationError):
    """The connection broke or timed out while the message may already have been accepted (after the DATA went
    out): the send intent stays open, so the retry knows it may send a duplicate."""

    def __init__(self, message: str) -> None:
        super().__init__(message, type=NOTICE_DEFERRED)


class SentCopies(Protocol):
    """Where the SMTP relay files a copy of every message it accepts (an IMAP Sent folder), when configured."""

    async def holds(self, message_id: str) -> bool:
        """Whether a message with this Message-ID is there (raises when the folder cannot be read)."""
        ...


@dataclasses.dataclass(frozen=True)
class Delivery:
    message_id: str
    already_sent: bool = False
    possible_duplicate: bool = False
    found_in_sent_folder: bool = False  # an earlier attempt's copy was found: not sent again


def content_digest(rendered: RenderedNotice) -> str:
    """What an email says (subject and both bodies), as a digest: no personal data in the send intent."""
    digest = hashlib.sha256()
    for part in (rendered.subject, rendered.text, rendered.html):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


async def deliver_once(mailer: Mailer, sent_log: SentLog | None, message: EmailMessage, *, to: str, key: str,
                       request_id: str, template: str, digest: str, whose: str, where: str,
                       sent_copies: SentCopies | None = None) -> Delivery:
    """Send ``message`` (Message-ID derived from ``key``) unless the sent-log has it; the send intent is written
    before the SMTP transaction and closed after it.

    What SMTP allows, no more: the server's 250 and our sent-log write cannot be one step. A worker lost between
    them leaves the intent open; the retry then sends again with the same Message-ID (clients de-duplicate on
    it) and records the email as a possible duplicate. Every other failure is told apart: a transaction that
    certainly did not deliver (refused connection, a 4xx/5xx answer) closes the intent as unsent, so retries
    through an SMTP outage are ordinary retries. With ``sent_copies`` (the relay's Sent folder), an open intent is
    first looked up there: a copy found means the server accepted the earlier attempt, and nothing is sent again."""
    message_id = str(message["Message-ID"])
    if sent_log is None:
        async with beating():
            await mailer.send(message, to, whose=whose, where=where)
        return Delivery(message_id)
    if await asyncio.to_thread(sent_log.has_event, key):
        return Delivery(message_id, already_sent=True)
    intent = await asyncio.to_thread(functools.partial(
        sent_log.begin_send, key, request_id=request_id, template=template, message_id=message_id, digest=digest))
    if intent.already_sent:
        return Delivery(message_id, already_sent=True)
    if intent.possible_duplicate and sent_copies is not None:
        try:
            found = await sent_copies.holds(message_id)
        except Exception as err:  # the folder cannot be read: the reply must still go (flagged)
            log.warning("%s: the Sent folder could not be searched (%s)", where, type(err).__name__)
            found = False
        if found:
            log.info("%s: the earlier attempt's copy is in the Sent folder: not sending again", where)
            await asyncio.to_thread(functools.partial(sent_log.record_sent, request_id, key, template, message_id,
                                                      found_in_sent_folder=True))
            await asyncio.to_thread(functools.partial(sent_log.end_send, key, sent=True))
            return Delivery(message_id, found_in_sent_folder=True)
    if intent.possible_duplicate:
        log.warning("%s: an earlier attempt may have been accepted by the SMTP server (worker lost after the DATA): "
                    "sending again with the same Message-ID, recorded as a possible duplicate%s", where,
                    "" if intent.same_content else " (its content differs: a new download link or code)")
    try:
        async with beating():
            await mailer.send(message, to, whose=whose, where=where)
    except MaybeDelivered:
        raise  # the intent stays open: the retry knows
    except ApplicationError:
        await asyncio.to_thread(functools.partial(sent_log.end_send, key, sent=False))
        raise
    await asyncio.to_thread(functools.partial(sent_log.record_sent, request_id, key, template, message_id,
                                              possible_duplicate=intent.possible_duplicate))
    await asyncio.to_thread(functools.partial(sent_log.end_send, key, sent=True,
                                              possible_duplicate=intent.possible_duplicate))
    return Delivery(message_id, possible_duplicate=intent.possible_duplicate)


def notice_key(workflow_id: str | None, run_id: str | None, activity_id: str) -> str:
    """Stable idempotency key of one send_notice activity: the same for every retry of it."""
    seed = "\n".join((workflow_id or "", run_id or "", activity_id))
    return "notice-" + hashlib.sha256(seed.encode()).hexdigest()[:32]


def is_deliverable_address(address: str) -> bool:
    """One plain mailbox (no display name, no CR/LF, no list), or ``name@localhost`` for local use."""
    if address.endswith("@localhost"):
        return is_valid_email(address.removesuffix("@localhost") + "@localhost.localdomain")
    return is_valid_email(address)


def _invalid_address(whose: str) -> ApplicationError:
    return ApplicationError(
        f"{whose} is not a single valid email address", type=NOTICE_INVALID_ADDRESS, non_retryable=True
    )


def _reply_id(value: str | None) -> str | None:
    """The Message-ID to thread under, if it looks like one; anything else is dropped, never sent."""
    if not value:
        return None
    candidate = one_line(value)
    if not candidate.startswith("<"):
        candidate = f"<{candidate}>"
    if len(candidate) > 900 or not _MSG_ID.fullmatch(candidate):
        return None
    return candidate


def consent_url(links: ConsentLinks | None, public_url: str, profile: Callable[[], ControllerProfile | None] | None,
                to: str, language: str) -> str:
    """The subject's one-click withdrawal link (``/consent/{token}``), when the profile has consent purposes to
    withdraw; made in the activity, never in workflow history (it is a secret bound to the address)."""
    if links is None or not public_url or profile is None:
        return ""
    try:
        loaded = profile()
    except ConfigurationError:
        return ""
    if loaded is None or not loaded.consent_purposes():
        return ""
    return links.consent_url(public_url, links.issue_for(to, str(language), now=datetime.now(UTC)))


def build_message(
    notice: Notice, rendered: RenderedNotice, *, mail_from: str, from_name: str, message_id: str,
    unsubscribe_url: str = "",
) -> EmailMessage:
    """A multipart/alternative (text, then HTML) UTF-8 email for ``notice`` (see :func:`compose`)."""
    return compose(notice.to, Language(notice.language), rendered, mail_from=mail_from, from_name=from_name,
                   message_id=message_id, in_reply_to=notice.in_reply_to, whose=_whose(notice),
                   unsubscribe_url=unsubscribe_url)


def compose(
    to: str, language: Language, rendered: RenderedNotice, *, mail_from: str, from_name: str, message_id: str,
    in_reply_to: str | None = None, whose: str = "the subject's address", unsubscribe_url: str = "",
) -> EmailMessage:
    """A multipart/alternative (text, then HTML) UTF-8 email to ``to``.

    Header values are collapsed to one line before use and the SMTP policy refuses CR/LF anyway, so a
    hostile name or subject can never add a header. ``to`` must be one plain mailbox: anything else raises
    a non-retryable ``ApplicationError`` of type ``NoticeInvalidAddress`` that names only ``whose`` it is.
    """
    if not is_deliverable_address(to):
        raise _invalid_address(whose)
    if not is_deliverable_address(mail_from):
        raise ValueError("mail_from must be a single valid email address")
    if not _MSG_ID.fullmatch(message_id):
        raise ValueError("message_id must look like <id@domain>")

    message = EmailMessage(policy=MAIL_POLICY)
    message["From"] = Address(display_name=one_line(from_name), addr_spec=mail_from)
    message["To"] = Address(addr_spec=to)
    message["Subject"] = one_line(rendered.subject)
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = message_id
    reply_to = _reply_id(in_reply_to)
    if reply_to:
        message["In-Reply-To"] = reply_to
        message["References"] = reply_to
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, no vacation loops
    message["X-Auto-Response-Suppress"] = "All"
    if unsubscribe_url and re.fullmatch(r"https?://[^\s<>]{1,1900}", unsubscribe_url):
        # RFC 2369 and RFC 8058: the mail client's own "unsubscribe" button POSTs List-Unsubscribe=One-Click to this
        # signed URI, which withdraws every marketing consent of the address without further interaction.
        message["List-Unsubscribe"] = f"<{unsubscribe_url}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    # quoted-printable keeps every line 7-bit and short, whatever the relay supports.
    message.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    message.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    message["Content-Language"] = language.value  # after set_content, which clears Content-*
    return message


def _whose(notice: Notice) -> str:
    return "the operator address" if notice.template in OPERATOR_TEMPLATES else "the subject's address"


def _redact(text: str, recipient: str) -> str:
    """Server replies often quote the recipient (``550 <bob@x>: unknown``): keep the code, drop the address."""
    text = one_line(text).replace(recipient, "<address>")
    return _EMAIL_LIKE.sub("<address>", text)[:200]


class Mailer:
    """The engine's one way to send an email: compose it and hand it to the SMTP relay.

    SMTP failures become ``ApplicationError`` s whose type tells the workflow what to do (see the
    ``NOTICE_*`` constants) and whose message never names the recipient, only ``whose`` address it is.
    """

    def __init__(self, smtp: SmtpSettings, *, mail_from: str, from_name: str, mail_domain: str) -> None:
        if not is_deliverable_address(mail_from):
            raise ValueError("mail_from must be a single valid email address")
        if not re.fullmatch(r"[A-Za-z0-9.-]+", mail_domain):
            raise ValueError("mail_domain must be a domain name such as example.com")
        self._smtp = smtp
        self.mail_from = mail_from
        self.from_name = one_line(from_name)
        self.mail_domain = mail_domain
        # The name this host gives in EHLO, looked up once, as the worker starts. Left to aiosmtplib, every
        # connection looked it up in a thread of the default executor, which the ledger's writes share: under load
        # the lookup waited there until the email's activity timed out (seen with 10,000 requests opened at once),
        # and a slow resolver would make every email wait on DNS.
        self._local_hostname = socket.getfqdn()

    def message_id(self, key: str) -> str:
        """The Message-ID of the email with idempotency key ``key`` (``notice-…``, ``reply-…``)."""
        return f"<{key.split('-', 1)[-1]}@{self.mail_domain}>"

    def compose(self, to: str, language: Language, rendered: RenderedNotice, *, message_id: str,
                in_reply_to: str | None = None, whose: str = "the subject's address",
                unsubscribe_url: str = "") -> EmailMessage:
        return compose(to, language, rendered, mail_from=self.mail_from, from_name=self.from_name,
                       message_id=message_id, in_reply_to=in_reply_to, whose=whose, unsubscribe_url=unsubscribe_url)

    async def send(self, message: EmailMessage, to: str, *, whose: str, where: str) -> None:
        """Deliver ``message`` to ``to`` only (never to addresses read from its headers)."""
        smtp = self._smtp
        try:
            await aiosmtplib.send(
                message,
                sender=self.mail_from,
                recipients=[to],  # explicit: never derived from headers
                hostname=smtp.host,
                port=smtp.port,
                username=smtp.username,
                password=smtp.password,
                use_tls=smtp.use_tls,
                # A bool, never None: None would try STARTTLS whenever a server advertises it.
                start_tls=bool(smtp.start_tls) and not smtp.use_tls,
                timeout=smtp.timeout_seconds,
                local_hostname=self._local_hostname,
            )
        except aiosmtplib.SMTPRecipientsRefused as err:
            code = min((r.code for r in err.recipients), default=0)
            detail = _redact(err.recipients[0].message, to) if err.recipients else ""
            raise self._refused(where, f"SMTP server refused {whose}", code, detail) from None
        except aiosmtplib.SMTPRecipientRefused as err:
            detail = _redact(err.message, to)
            raise self._refused(where, f"SMTP server refused {whose}", err.code, detail) from None
        except aiosmtplib.SMTPDataError as err:
            detail = _redact(err.message, to)
            raise self._refused(where, "SMTP server refused the message", err.code, detail) from None
        except (aiosmtplib.SMTPAuthenticationError, aiosmtplib.SMTPSenderRefused) as err:
            detail = _redact(err.message, to)
            activity.logger.warning("%s: SMTP configuration problem (%s)", where, err.code)
            raise ApplicationError(
                f"{where}: SMTP server refused our login or sender address ({err.code} {detail})",
                type=NOTICE_SMTP_ERROR,
            ) from None
        except aiosmtplib.SMTPResponseException as err:
            detail = _redact(err.message, to)
            kind = NOTICE_DEFERRED if 400 <= err.code < 500 else NOTICE_SMTP_ERROR
            raise ApplicationError(f"{where}: SMTP error {err.code} {detail}", type=kind) from None
        except (aiosmtplib.SMTPConnectError, ConnectionRefusedError) as err:  # never reached: nothing sent
            _smtp_unreachable(smtp.host, smtp.port, type(err).__name__)
            activity.logger.info("%s: SMTP server unreachable (%s)", where, type(err).__name__)
            raise ApplicationError(
                f"{where}: SMTP server {smtp.host}:{smtp.port} unreachable ({type(err).__name__})",
                type=NOTICE_DEFERRED,
            ) from None
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, TimeoutError, OSError) as err:
            # Lost mid-transaction: perhaps after the server took the DATA. The retry must know (deliver_once).
            _smtp_unreachable(smtp.host, smtp.port, type(err).__name__)
            activity.logger.info("%s: SMTP connection lost (%s)", where, type(err).__name__)
            raise MaybeDelivered(
                f"{where}: SMTP server {smtp.host}:{smtp.port} unreachable ({type(err).__name__})",
            ) from None
        except aiosmtplib.SMTPException as err:  # e.g. STARTTLS or AUTH not supported by the server
            raise ApplicationError(
                f"{where}: SMTP error ({type(err).__name__}: {_redact(err.message, to)})",
                type=NOTICE_SMTP_ERROR,
            ) from None
        else:
            _smtp_reachable(smtp.host, smtp.port)

    @staticmethod
    def _refused(where: str, what: str, code: int, detail: str) -> ApplicationError:
        if 500 <= code < 600:
            activity.logger.warning("%s: %s (%s)", where, what, code)
            return ApplicationError(
                f"{where}: {what} permanently ({code} {detail})".rstrip(),
                type=NOTICE_REJECTED,
                non_retryable=True,
            )
        return ApplicationError(f"{where}: {what} for now ({code} {detail})", type=NOTICE_DEFERRED)


class NoticeActivities:
    """Mail activities; the worker builds one instance with the settings and registers its methods."""

    def __init__(
        self,
        smtp: SmtpSettings,
        *,
        mail_from: str,
        from_name: str,
        mail_domain: str,
        sent_log: SentLog | None = None,
        controller_name: str = "",
        request_link: Callable[[str], str] | None = None,
        identity_links: IdentityLinks | None = None,
        status_links: StatusLinks | None = None,
        public_url: str = "",
        profile: Callable[[], ControllerProfile | None] | None = None,
        sent_copies: SentCopies | None = None,
        consent_links: ConsentLinks | None = None,
    ) -> None:
        """``controller_name`` signs subject notices (templates fall back to a generic team name);
        ``request_link`` maps a request id to its page in the staff UI, for operator notices; ``profile``
        reads the controller profile, whose supervisory authority the notices name."""
        self._mailer = Mailer(smtp, mail_from=mail_from, from_name=from_name, mail_domain=mail_domain)
        self._sent_log = sent_log
        self._sent_copies = sent_copies
        self._controller_name = one_line(controller_name)
        self._request_link = request_link
        self._identity_links = identity_links
        self._status_links = status_links
        self._public_url = public_url
        self._profile = profile
        self._consent_links = consent_links

    def _context(self, notice: Notice) -> dict[str, str]:
        """The workflow's context plus what only the worker knows (its configuration)."""
        context = dict(notice.context)
        if self._controller_name:
            context.setdefault("controller_name", self._controller_name)
        if self._request_link is not None and notice.template in OPERATOR_TEMPLATES:
            context.setdefault("ui_url", self._request_link(notice.request_id))
        if notice.template not in OPERATOR_TEMPLATES:
            context.update(self._authority())
        if (
            self._identity_links is not None
            and self._public_url
            and notice.template in (NoticeTemplate.IDENTITY_REQUEST, NoticeTemplate.IDENTITY_REMINDER)
            and context.get("identity") == IdentityMethod.EMAIL.value
        ):
            # Made here, not in the workflow: the link and code are secrets and stay out of its history.
            link = self._identity_links.issue(notice.request_id, now=datetime.now(UTC))
            context["verify_url"] = self._identity_links.verify_url(self._public_url, link.token)
            if context.get("kind") not in {kind.value for kind in LINK_ONLY_KINDS}:
                # An erasure or rectification is confirmed by the signed link only: a code could be guessed.
                context["verify_code"] = format_code(self._identity_links.request_code(notice.request_id))
        if (self._status_links is not None and self._public_url
                and notice.template == NoticeTemplate.ACKNOWLEDGEMENT):
            # Where the subject can see how their request stands, all along (signed; made here, out of history).
            link = self._status_links.issue(notice.request_id, now=datetime.now(UTC))
            context["status_url"] = self._status_links.status_url(self._public_url, link.token)
        if notice.template not in OPERATOR_TEMPLATES:
            url = consent_url(self._consent_links, self._public_url, self._profile, notice.to, notice.language)
            if url:
                context["consent_url"] = url
        return context

    def _authority(self) -> dict[str, str]:
        """Where the subject may complain (Art. 77): the profile's authority, read at each notice so an edited
        dsr.toml is followed; a missing or unreadable profile leaves the templates' default (the CNIL), and
        ``dsr config check`` reports the file."""
        try:
            loaded = self._profile() if self._profile is not None else None
        except ConfigurationError:
            loaded = None
        if loaded is None:
            return {}
        authority = loaded.supervisory_authority
        return {"authority_name": authority.name, "authority_postal_address": authority.postal_address,
                "authority_website": authority.website}

    @activity.defn(name="send_notice")
    async def send_notice(self, notice: Notice) -> SentNotice:
        """Render ``notice`` in its language and send it; a retry never sends a recorded notice twice."""
        info = activity.info()
        key = notice_key(info.workflow_id, info.workflow_run_id or info.activity_run_id,
                         notice.key or info.activity_id)
        message_id = self._mailer.message_id(key)
        template = NoticeTemplate(notice.template)
        where = f"{template.value} notice for request {notice.request_id}"

        if self._sent_log is not None and await asyncio.to_thread(self._sent_log.has_event, key):
            activity.logger.info("%s already sent; not sending again", where)
            return SentNotice(message_id=message_id, already_sent=True)

        context = self._context(notice)
        try:
            rendered = render_notice(template, Language(notice.language), context)
        except ValueError as err:
            raise ApplicationError(f"{where}: {err}", type=NOTICE_INVALID, non_retryable=True) from None
        except TemplateError as err:
            raise ApplicationError(
                f"{where}: template error ({type(err).__name__})", type=NOTICE_TEMPLATE_ERROR
            ) from None

        message = build_message(notice, rendered, mail_from=self._mailer.mail_from,
                                from_name=self._mailer.from_name, message_id=message_id,
                                unsubscribe_url=context.get("consent_url", ""))
        delivery = await deliver_once(self._mailer, self._sent_log, message, to=notice.to, key=key,
                                      request_id=notice.request_id, template=template.value,
                                      digest=content_digest(rendered), whose=_whose(notice), where=where,
                                      sent_copies=self._sent_copies)
        if delivery.already_sent:
            return SentNotice(message_id=message_id, already_sent=True)
        activity.logger.info("%s sent", where)
        return SentNotice(message_id=message_id)
