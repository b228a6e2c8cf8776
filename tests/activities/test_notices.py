"""send_notice against real SMTP servers (aiosmtpd on 127.0.0.1), inside an ActivityEnvironment."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import re
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.notices import NoticeActivities, build_message, notice_key
from connectors.config import ConfigFileError
from dsr.config.profile import ControllerProfile, SupervisoryAuthority
from dsr.config.settings import SmtpSettings
from dsr.domain.model import Language, Notice, NoticeTemplate, SentNotice
from dsr.mail.outbox import OutboxSink
from dsr.store.mail_sends import SendIntent
from templates import render_notice
from tests.harness import text_of

SUBJECT_ADDRESS = "zoe.martin@example.com"
REQUEST = "dsr-2026-11-7KQ3FJ"
CONTEXT = {
    "reference": REQUEST,
    "kind": "access",
    "received": "2026-11-23",
    "deadline": "2026-12-23",
    "subject_name": "Zoé Martin",
}
GMAIL_ID = "<CAKjVkZ0aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789abcdefghijklmnopqrstuv@mail.gmail.com>"
HOSTILE = "<script>alert(1)</script>\r\nBcc: x@evil.test"


class Collector:
    """An aiosmtpd handler keeping every envelope; optionally answers RCPT with a canned reply."""

    def __init__(self, rcpt_reply: str | None = None) -> None:
        self.rcpt_reply = rcpt_reply
        self.envelopes: list[tuple[str, list[str], bytes]] = []
        self.greetings: list[str] = []  # the name each client gave in EHLO

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply.format(address=address)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos), envelope.original_content))
        self.greetings.append(str(session.host_name))
        return "250 OK"

    def messages(self) -> list[EmailMessage]:
        return [email.message_from_bytes(raw, policy=email.policy.default) for _, _, raw in self.envelopes]


@asynccontextmanager
async def smtp_server(handler: Any) -> AsyncIterator[int]:
    """A real aiosmtpd server on 127.0.0.1 and a free port, in the test's event loop."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="localhost", loop=loop), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def activities(port: int, **kwargs: Any) -> NoticeActivities:
    return NoticeActivities(
        SmtpSettings(host="127.0.0.1", port=port, timeout_seconds=5),
        mail_from="privacy@example.com",
        from_name=kwargs.pop("from_name", "Équipe protection des données"),
        mail_domain="example.com",
        **kwargs,
    )


def notice(**changes: Any) -> Notice:
    base = Notice(request_id=REQUEST, template=NoticeTemplate.ACKNOWLEDGEMENT, to=SUBJECT_ADDRESS,
                  language=Language.FR, context=dict(CONTEXT))
    return dataclasses.replace(base, **changes)


class MemorySentLog:
    """Stand-in for the ledger adapter (a neighbour of the unit under test)."""

    def __init__(self, keys: set[str] | None = None) -> None:
        self.keys = set(keys or ())
        self.records: list[tuple[str, str, str, str]] = []

    def has_event(self, key: str) -> bool:
        return key in self.keys

    def record_sent(self, request_id: str, key: str, template: str, message_id: str, *,
                    possible_duplicate: bool = False, found_in_sent_folder: bool = False) -> None:
        self.keys.add(key)
        self.records.append((request_id, key, template, message_id))

    def begin_send(self, key: str, *, request_id: str, template: str, message_id: str, digest: str) -> SendIntent:
        return SendIntent(attempts=1, possible_duplicate=False, same_content=True)

    def end_send(self, key: str, *, sent: bool, possible_duplicate: bool = False) -> None:
        pass


async def test_sends_multipart_text_and_html_with_the_right_headers() -> None:
    collector = Collector()
    async with smtp_server(collector) as port:
        result = await ActivityEnvironment().run(activities(port).send_notice, notice())

    assert isinstance(result, SentNotice) and not result.already_sent
    assert re.fullmatch(r"<[0-9a-f]{32}@example\.com>", result.message_id)
    [(mail_from, rcpt_tos, raw)] = collector.envelopes
    assert mail_from == "privacy@example.com"
    assert rcpt_tos == [SUBJECT_ADDRESS]
    assert b"\r\nBcc:" not in raw

    [msg] = collector.messages()
    expected = render_notice(NoticeTemplate.ACKNOWLEDGEMENT, Language.FR, CONTEXT)
    assert msg.get_content_type() == "multipart/alternative"
    text, html = msg.iter_parts()
    assert text.get_content_type() == "text/plain" and text.get_content_charset() == "utf-8"
    assert html.get_content_type() == "text/html" and html.get_content_charset() == "utf-8"
    assert text.get_content().replace("\r\n", "\n") == expected.text
    assert "23 décembre 2026" in html.get_content()

    assert msg["Subject"] == expected.subject
    assert msg["From"].addresses[0].display_name == "Équipe protection des données"
    assert msg["From"].addresses[0].addr_spec == "privacy@example.com"
    assert msg["To"] == SUBJECT_ADDRESS
    assert msg["Message-ID"] == result.message_id
    assert msg["Date"].datetime is not None
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Content-Language"] == "fr"
    assert msg["In-Reply-To"] is None and msg["References"] is None
    assert raw.isascii()  # headers RFC 2047-encoded, bodies quoted-printable


async def test_replies_in_the_subjects_thread() -> None:
    collector = Collector()
    async with smtp_server(collector) as port:
        await ActivityEnvironment().run(activities(port).send_notice, notice(in_reply_to=GMAIL_ID))

    [(_, _, raw)] = collector.envelopes
    # Long ids stay verbatim (not RFC 2047-encoded), or mail clients could not thread on them.
    assert f"\r\nIn-Reply-To: {GMAIL_ID}\r\n".encode() in raw
    assert f"\r\nReferences: {GMAIL_ID}\r\n".encode() in raw
    [msg] = collector.messages()
    assert msg["In-Reply-To"] == GMAIL_ID and msg["References"] == GMAIL_ID


async def test_message_id_is_stable_across_retries_of_one_activity() -> None:
    collector = Collector()
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id=REQUEST, workflow_run_id="run-1", activity_id="7")
    other = ActivityEnvironment()
    other.info = dataclasses.replace(env.info, activity_id="8")
    async with smtp_server(collector) as port:
        acts = activities(port)
        first = await env.run(acts.send_notice, notice())
        env.info = dataclasses.replace(env.info, attempt=2)
        retry = await env.run(acts.send_notice, notice())
        different = await other.run(acts.send_notice, notice())

    assert first.message_id == retry.message_id != different.message_id
    ids = [m["Message-ID"] for m in collector.messages()]
    assert ids == [first.message_id, first.message_id, different.message_id]
    assert first.message_id == f"<{notice_key(REQUEST, 'run-1', '7').removeprefix('notice-')}@example.com>"


async def test_the_ehlo_name_is_the_hosts_own_looked_up_once_for_every_email(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Looked up for each connection, the name waited in the default executor behind the ledger's writes; and a
    # slow resolver would make every email wait on DNS.
    lookups: list[str] = []

    def getfqdn(name: str = "") -> str:
        lookups.append(name)
        return "worker-1.mail.example.com"

    monkeypatch.setattr(socket, "getfqdn", getfqdn)
    collector = Collector()
    env = ActivityEnvironment()
    async with smtp_server(collector) as port:
        acts = activities(port)
        for n in range(3):
            env.info = dataclasses.replace(env.info, activity_id=str(n))
            await env.run(acts.send_notice, notice())

    assert len(collector.envelopes) == 3
    assert collector.greetings == ["worker-1.mail.example.com"] * 3
    assert lookups == [""]


async def test_a_notice_already_in_the_sent_log_is_not_sent_again() -> None:
    collector = Collector()
    log = MemorySentLog()
    env = ActivityEnvironment()
    async with smtp_server(collector) as port:
        acts = activities(port, sent_log=log)
        first = await env.run(acts.send_notice, notice())
        again = await env.run(acts.send_notice, notice())

    assert len(collector.envelopes) == 1
    assert not first.already_sent and again.already_sent
    assert again.message_id == first.message_id
    key = notice_key(env.info.workflow_id, env.info.workflow_run_id, env.info.activity_id)
    assert log.records == [(REQUEST, key, "acknowledgement", first.message_id)]


async def test_prerecorded_key_sends_nothing() -> None:
    collector = Collector()
    env = ActivityEnvironment()
    key = notice_key(env.info.workflow_id, env.info.workflow_run_id, env.info.activity_id)
    async with smtp_server(collector) as port:
        result = await env.run(activities(port, sent_log=MemorySentLog({key})).send_notice, notice())
    assert result.already_sent
    assert collector.envelopes == []


async def test_hostile_name_and_display_name_cannot_add_headers() -> None:
    collector = Collector()
    hostile_context = {**CONTEXT, "subject_name": HOSTILE}
    async with smtp_server(collector) as port:
        acts = activities(port, from_name=HOSTILE)
        await ActivityEnvironment().run(
            # A notice sent after identity is confirmed: those before it never carry the name at all.
            acts.send_notice, notice(template=NoticeTemplate.COMPLETED, context=hostile_context,
                                     in_reply_to="<a@b.example>\r\nBcc: x@evil.test")
        )

    [(_, rcpt_tos, raw)] = collector.envelopes
    assert rcpt_tos == [SUBJECT_ADDRESS]
    [msg] = collector.messages()
    assert {name.lower() for name in msg} == {  # nothing added, by name or by line break
        "from", "to", "subject", "date", "message-id", "auto-submitted", "x-auto-response-suppress",
        "mime-version", "content-type", "content-language",
    }
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"evil.test") == 1  # only inside the quoted From display name
    assert msg["In-Reply-To"] is None  # not a Message-ID once flattened: dropped, never sent
    assert "\n" not in msg["From"] and "\r" not in msg["From"]
    _text, html = msg.iter_parts()
    assert "<script>" not in html.get_content()
    assert "&lt;script&gt;" in html.get_content()


@pytest.mark.parametrize(
    "to",
    [f"{SUBJECT_ADDRESS}\r\nBcc: x@evil.test", f"{SUBJECT_ADDRESS}, x@evil.test", f"Zoé <{SUBJECT_ADDRESS}>", ""],
)
async def test_a_recipient_that_is_not_one_address_is_refused_for_good(to: str) -> None:
    collector = Collector()
    async with smtp_server(collector) as port:
        with pytest.raises(ApplicationError) as caught:
            await ActivityEnvironment().run(activities(port).send_notice, notice(to=to))
    assert caught.value.non_retryable
    assert caught.value.type == "NoticeInvalidAddress"
    assert SUBJECT_ADDRESS not in str(caught.value)
    assert collector.envelopes == []


async def test_localhost_operator_address_is_accepted() -> None:
    collector = Collector()
    op = notice(template=NoticeTemplate.OPERATOR_REMINDER, to="privacy@localhost",
                context={**CONTEXT, "label": "D-7", "days_left": "7"})
    async with smtp_server(collector) as port:
        await ActivityEnvironment().run(activities(port).send_notice, op)
    [(_, rcpt_tos, raw)] = collector.envelopes
    assert rcpt_tos == ["privacy@localhost"]
    [msg] = collector.messages()
    assert "Zoé" not in text_of(msg)
    assert b"Zo=C3=A9" not in raw


async def test_permanent_recipient_refusal_is_non_retryable_and_names_no_one() -> None:
    collector = Collector(rcpt_reply="550 5.1.1 <{address}>: Recipient address rejected: user unknown")
    async with smtp_server(collector) as port:
        with pytest.raises(ApplicationError) as caught:
            await ActivityEnvironment().run(activities(port).send_notice, notice())
    error = caught.value
    assert error.non_retryable
    assert error.type == "NoticeRejected"
    assert "550" in str(error) and REQUEST in str(error) and "acknowledgement" in str(error)
    assert SUBJECT_ADDRESS not in str(error) and "zoe" not in str(error).lower()
    assert error.__cause__ is None  # the SMTP exception (which holds the address) is not attached
    assert collector.envelopes == []


async def test_temporary_recipient_refusal_is_retryable() -> None:
    collector = Collector(rcpt_reply="450 4.2.0 <{address}>: mailbox busy")
    async with smtp_server(collector) as port:
        with pytest.raises(ApplicationError) as caught:
            await ActivityEnvironment().run(activities(port).send_notice, notice())
    assert not caught.value.non_retryable
    assert caught.value.type == "NoticeDeferred"
    assert SUBJECT_ADDRESS not in str(caught.value)


async def test_connection_refused_is_retryable() -> None:
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(activities(free_port()).send_notice, notice())
    assert not caught.value.non_retryable
    assert caught.value.type == "NoticeDeferred"
    assert SUBJECT_ADDRESS not in str(caught.value)


async def test_outbox_sink_files_each_message_as_a_private_eml(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    sink = OutboxSink(outbox)
    port = await sink.start(port=0)
    try:
        assert sink.host == "127.0.0.1" and port == sink.port
        result = await ActivityEnvironment().run(activities(port).send_notice, notice())
    finally:
        await sink.stop()

    [path] = sink.saved
    assert sorted(outbox.iterdir()) == [path]  # no temp file left behind
    assert path.suffix == ".eml"
    assert result.message_id.strip("<>").replace("@", "_") in path.name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o700
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert msg["Message-ID"] == result.message_id
    assert msg["X-RcptTo"] == SUBJECT_ADDRESS
    assert msg.get_content_type() == "multipart/alternative"

    with pytest.raises(ApplicationError):  # stopped means stopped
        await ActivityEnvironment().run(activities(port).send_notice, notice())


async def test_outbox_sink_listens_on_loopback_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        await OutboxSink(tmp_path).start(host="0.0.0.0", port=0)  # noqa: S104 - must be refused
    async with OutboxSink(tmp_path / "o") as sink:
        assert sink.port and sink.host == "127.0.0.1"
    assert sink._server is None


async def test_outbox_sink_stop_drops_open_connections(tmp_path: Path) -> None:
    sink = OutboxSink(tmp_path)
    port = await sink.start(port=0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert (await reader.readline()).startswith(b"220 ")
        await asyncio.wait_for(sink.stop(), timeout=5)
        assert await asyncio.wait_for(reader.read(), timeout=5) == b""  # server hung up
    finally:
        writer.close()
    await sink.stop()  # idempotent


def test_build_message_sanitises_headers_without_smtp() -> None:
    rendered = render_notice(NoticeTemplate.COMPLETED, Language.EN, {"reference": "R\r\nBcc: x@evil.test",
                                                                      "kind": "erasure"})
    msg = build_message(notice(language=Language.EN), rendered, mail_from="privacy@localhost",
                        from_name="A\nB", message_id="<abc@localhost>")
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert parsed["Bcc"] is None
    assert "Bcc: x@evil.test" in parsed["Subject"]  # harmless text on the one Subject line
    assert parsed["From"].addresses[0].display_name == "A B"


async def test_subject_notices_name_the_profile_s_supervisory_authority_not_always_the_cnil() -> None:
    """A Belgian controller's refusal points to the Belgian authority (Art. 77); operators' notices never
    carry it, and an unreadable profile falls back to the profile's default, the CNIL."""
    belgian = ControllerProfile(supervisory_authority=SupervisoryAuthority(
        name="Autorité de protection des données (APD)", postal_address="Rue de la Presse 35, 1000 Bruxelles",
        website="https://www.autoriteprotectiondonnees.be"))
    collector = Collector()
    async with smtp_server(collector) as port:
        await ActivityEnvironment().run(activities(port, profile=lambda: belgian).send_notice,
                                        notice(template=NoticeTemplate.REFUSAL, key="refusal"))

        def unreadable() -> ControllerProfile | None:
            raise ConfigFileError("dsr.toml: broken")

        await ActivityEnvironment().run(activities(port, profile=unreadable).send_notice,
                                        notice(template=NoticeTemplate.REFUSAL, key="refusal-2"))
    belgian_refusal, default_refusal = (text_of(msg) for msg in collector.messages())
    assert "Autorité de protection des données (APD), Rue de la Presse 35, 1000 Bruxelles" in belgian_refusal
    assert "CNIL" not in belgian_refusal
    assert "Commission nationale de l'informatique et des libertés (CNIL)" in default_refusal
