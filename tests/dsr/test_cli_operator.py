"""Issue 18, point 5: the CLI as an operator meets it (`--version`, help, references in any case, letters) and
`dsr history` showing every sealed word of the audit trail; the installed `dsr` run as a process for
`--version`, the verbs in the test's process (tests/cli.py)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import string
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer
from temporalio import workflow
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from dsr.cli.common import normalise_reference
from dsr.cli.main import app
from dsr.config.settings import Settings
from dsr.domain.model import (
    AuditEvent,
    Channel,
    IdentityMethod,
    Language,
    Outcome,
    RequestKind,
    RequestRecordInput,
    RequestStatus,
    Stage,
    Subject,
)
from dsr.store.crypto import KeyRing, data_converter
from dsr.store.ledger import Ledger
from intake.submission import Submission, prepare
from tests.cli import run_dsr
from workflows import search_attributes as sa

BIN = Path(sys.executable).parent
REFERENCE = "dsr-2026-11-7KQ3FJ"


def cli_env(home: Path) -> dict[str, str | None]:
    return {"DSR_HOME": str(home), "DSR_DATABASE_URL": f"sqlite:///{home / 'ledger.sqlite3'}",
            "TEMPORAL_ADDRESS": "127.0.0.1:9",  # nothing listens there: a verb needing Temporal says so
            "DSR_KEYS": None, "DSR_CONFIG": None}


def dsr(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The verb in this process (tests/cli.py): what it prints and how it exits."""
    return run_dsr(list(args), cli_env(home))


def test_version_is_the_installed_distributions(tmp_path: Path) -> None:
    env = {name: value for name, value in {**os.environ, **cli_env(tmp_path)}.items() if value is not None}
    result = subprocess.run([str(BIN / "dsr"), "--version"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"dsr {version('dsr-engine')}"


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every verb and sub-verb (typer's groups: its own copy of click's, hence no isinstance)."""
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if hasattr(command, "commands"):
            found += _commands(command, (*prefix, name))
    return found


def test_no_help_page_labels_a_flag_bool() -> None:
    from typer.testing import CliRunner

    root = typer.main.get_command(app)
    commands = _commands(root)
    assert ("confirm-identity",) in commands and ("triage", "classify") in commands  # the walk finds them all
    runner = CliRunner()
    for path in [(), *commands]:
        shown = runner.invoke(app, [*path, "--help"], prog_name="dsr")
        assert shown.exit_code == 0, (path, shown.output)
        assert "<bool>" not in shown.output, f"dsr {' '.join(path)} --help:\n{shown.output}"
        if path == ("status",):
            assert "--json" in shown.output and "Machine-readable output." in shown.output


def test_a_verb_builds_only_its_own_module() -> None:
    """`dsr due` imports its verbs' module, not the others' nor the Temporal SDK they load; the whole app (`dsr
    --help`, the tests' `app`) has every verb and sub-app, in the order of the tables."""
    from dsr.cli.main import SUB_APPS, VERBS

    assert [path[0] for path in _commands(typer.main.get_command(app)) if len(path) == 1] == [
        name for name, _, _ in (*VERBS, *SUB_APPS)]
    probe = ("import sys; from dsr.cli.main import _named, build_app; "
             "only = build_app(_named(sys.argv[1:])); import typer; "
             "print(sorted(typer.main.get_command(only).commands), 'dsr.cli.decisions' in sys.modules, "
             "'temporalio' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for argv, expected in [(["due", "--within", "3"], "['due'] False False"),
                           (["triage", "list"], "['triage'] False False"),
                           (["--help"], f"{sorted(name for name, _, _ in (*VERBS, *SUB_APPS))} True ")]:
        shown = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, env=env,
                               check=True, timeout=120).stdout
        assert shown.startswith(expected), (argv, shown)


@pytest.mark.parametrize(("typed", "meant"), [
    ("dsr-2026-11-7KQ3FJ", "dsr-2026-11-7KQ3FJ"),
    ("DSR-2026-11-7KQ3FJ", "dsr-2026-11-7KQ3FJ"),  # as the download page and the emails' subjects write it
    ("dsr-2026-11-7kq3fj", "dsr-2026-11-7KQ3FJ"),
    ("  Dsr-2026-11-7Kq3fJ ", "dsr-2026-11-7KQ3FJ"),
    ("TRIAGE-DSR-2026-11-7kq3fj", "triage-dsr-2026-11-7KQ3FJ"),
    ("dsr-2026-11-7KQ3F", "dsr-2026-11-7KQ3F"),  # not a reference: left for the check to refuse
    ("7KQ3FJ", "7KQ3FJ"),
])
def test_a_reference_is_read_in_any_case(typed: str, meant: str) -> None:
    assert normalise_reference(typed) == meant


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A DSR_HOME whose ledger holds one request and what operators wrote about it."""
    received = datetime(2026, 11, 20, 9, tzinfo=UTC)
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", KeyRing.load_or_create(tmp_path / "keys.json")) as led:
        led.record_request(RequestRecordInput(
            request_id=REFERENCE, kind=RequestKind.RECTIFICATION, channel=Channel.LETTER,
            subject=Subject("camille.durand@example.org", "Camille Durand"), received_at=received,
            deadline=date(2026, 12, 21), language=Language.FR), now=received)
        for n, (event, actor, details, note) in enumerate([
            ("received", "engine", {"channel": "letter"}, ""),
            ("identity_confirmed", "alice", {"method": "document", "proof": "review"},
             "Passport checked at the front desk"),
            ("changes_given", "bob", {"fields": "city,last_name"}, "city=Lille\nlast_name=Durand-Morel"),
            ("withdrawn", "subject", {}, "Changed her mind by phone"),
        ]):
            led.append_event(AuditEvent(REFERENCE, event, actor=actor, details=details, note=note,
                                        stage=Stage.RECEIVED if n == 0 else None),
                             key=f"{REFERENCE}/{n}", at=received.replace(minute=n))
    return tmp_path


def test_history_takes_an_upper_case_reference_and_shows_what_operators_wrote(home: Path) -> None:
    shown = dsr(home, "history", "DSR-2026-11-7kq3fj")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"{REFERENCE}  rectification  received")
    text = shown.stdout
    assert "identity_confirmed   alice  method=document, proof=review" in text
    assert "      note: Passport checked at the front desk" in text
    # New values of a rectification, one a line; a withdrawal's reason.
    assert "      changes: city=Lille\n               last_name=Durand-Morel" in text
    assert "      reason: Changed her mind by phone" in text


def test_every_verb_taking_a_reference_takes_it_in_any_case(home: Path) -> None:
    """Upper case gets as far as Temporal (here: not running), where a malformed reference never would."""
    for args in (["status", "DSR-2026-11-7kq3fj"], ["retry", "DSR-2026-11-7KQ3FJ"],
                 ["confirm-identity", "DSR-2026-11-7KQ3FJ", "--method", "email"]):
        result = dsr(home, *args)
        assert result.returncode != 0
        assert "cannot reach Temporal" in result.stderr and "not a request reference" not in result.stderr, args
    listed = dsr(home, "attachments", "list", "DSR-2026-11-7kq3fj")
    assert listed.returncode == 0 and listed.stdout.strip() == f"{REFERENCE}: no attachments", listed.stderr
    refused = dsr(home, "status", "DSR-2026-11-7KQ3F")
    assert refused.returncode != 0 and refused.stderr.strip().splitlines() == [
        "error: 'DSR-2026-11-7KQ3F' is not a request reference (they look like dsr-2026-11-7KQ3FJ)"]


def test_orphan_documents_of_the_form_are_deleted_only_when_no_request_holds_them(home: Path) -> None:
    """The web form keeps documents under a reserved id when the engine could not say whether the request started."""
    from dsr.runtime.bootstrap import Deployment

    orphan = "dsr-2026-11-ORPHAN"
    env = {name: value for name, value in cli_env(home).items() if value is not None}
    store = Deployment.from_settings(Settings.from_env(env)).attachments
    store.save(orphan, "acte.pdf", "application/pdf", b"%PDF-1.7 x")
    store.save(REFERENCE, "id.png", "image/png", b"\x89PNG\r\n\x1a\n")
    kept = dsr(home, "attachments", "delete-orphans", REFERENCE)
    assert kept.returncode != 0 and kept.stderr.strip().splitlines() == [
        f"error: {REFERENCE} is a request: its documents are deleted by the request itself (once reviewed, or closed)"]
    assert [a.filename for a in store.list(REFERENCE)] == ["id.png"]
    deleted = dsr(home, "attachments", "delete-orphans", orphan)
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"{orphan}: 1 orphan document(s) deleted"
    assert store.list(orphan) == []


def test_a_letter_is_a_channel_and_needs_the_day_it_arrived(home: Path) -> None:
    missing = dsr(home, "submit", "--kind", "access", "--email", "camille.durand@example.org", "--channel", "letter")
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines() == [
        "error: --channel letter needs --received: the day the letter arrived (YYYY-MM-DD)"]
    settings = Settings.from_env({"DSR_HOME": str(home)})
    request = prepare(Submission(kind="access", email="camille.durand@example.org", channel="letter",
                                 received_at=datetime(2026, 11, 20, 9, tzinfo=UTC)), settings,
                      now=datetime(2026, 11, 23, 9, tzinfo=UTC))
    assert request.channel == Channel.LETTER and request.deadlines.normal.due == date(2026, 12, 21)
    # The walk of a letter through the engine, with its receipt day, is tests/workflows/test_audit_trail.py's.


@pytest.mark.parametrize("given", [[], ["--reason", "closed", "--retry"],
                                   ["--reason", "closed", "--subject-told", "a letter"],
                                   ["--retry", "--subject-told", "a letter"], ["--subject-told", "  "]])
def test_lift_takes_one_of_reason_retry_and_subject_told(tmp_path: Path, given: list[str]) -> None:
    """One line, before anything is asked of Temporal."""
    result = dsr(tmp_path, "lift", "dsr-2026-12-7KQ3FJ", *given)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--subject-told" in lines[0] and "--retry" in lines[0], result.stderr


def test_triage_classify_takes_purposes_only_for_a_withdrawal_of_consent(tmp_path: Path) -> None:
    """``--purpose`` on another kind is one line, before anything is asked of Temporal."""
    result = dsr(tmp_path, "triage", "classify", "triage-dsr-2026-12-7KQ3FJ", "--kind", "access",
                 "--purpose", "newsletter")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--purpose is only for --kind consent_withdrawal" in lines[0], result.stderr


async def test_a_decision_on_a_closed_request_says_how_it_ended(home: Path, time_skipping: WorkflowEnvironment
                                                                ) -> None:
    """The CLI's typed request handle reaches Temporal: a decision on a closed request is refused in one line that
    says how it ended, the request's outcome when it set one, else how Temporal closed it."""
    async def closed(outcome: str | None) -> str:
        reference = "dsr-2026-11-" + "".join(secrets.choice(string.digits + string.ascii_uppercase) for _ in range(6))
        attributes = TypedSearchAttributes([SearchAttributePair(sa.DSR_OUTCOME, outcome)] if outcome else [])
        handle = await time_skipping.client.start_workflow(
            "DataSubjectRequest", id=reference, task_queue=f"no-worker-{reference}", search_attributes=attributes)
        await handle.terminate("closed for the test")
        return reference

    env = {**cli_env(home), "TEMPORAL_ADDRESS": time_skipping.client.service_client.config.target_host}
    for outcome, said in ((None, "terminated"), ("withdrawn", "withdrawn")):
        reference = await closed(outcome)
        result = await asyncio.to_thread(run_dsr, ["extend", reference.lower(), "--reason", "a complex case"], env)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [f"error: {reference} is closed ({said})"], result.stderr


def test_every_verb_is_run_not_left_a_coroutine() -> None:
    """An ``async def`` verb registered without ``@run`` returns a coroutine that Typer never awaits: the verb does
    nothing and exits 0 (``dsr lift`` did, until this test)."""
    import importlib
    import inspect

    from dsr.cli.main import SUB_APPS, VERBS

    unrun = [name for name, module, function in VERBS
             if inspect.iscoroutinefunction(getattr(importlib.import_module(f"dsr.cli.{module}"), function))]
    for name, module, attribute in SUB_APPS:
        sub_app = getattr(importlib.import_module(f"dsr.cli.{module}"), attribute)
        unrun += [f"{name} {command.name or command.callback.__name__}" for command in sub_app.registered_commands
                  if command.callback is not None and inspect.iscoroutinefunction(command.callback)]
    assert unrun == []


async def test_lift_reaches_temporal_and_says_when_no_restriction_is_held(
        home: Path, time_skipping: WorkflowEnvironment) -> None:
    env = {**cli_env(home), "TEMPORAL_ADDRESS": time_skipping.client.service_client.config.target_host}
    result = await asyncio.to_thread(run_dsr, ["lift", "dsr-2026-11-ZZZZZZ", "--reason", "proceedings closed"], env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: dsr-2026-11-ZZZZZZ holds no restriction in force (not a restriction, not answered yet, or forgotten "
        "by Temporal; see `dsr history`)"], result.stderr


async def test_status_says_what_the_ledger_knows_when_no_worker_answers(
        home: Path, time_skipping: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch) -> None:
    """An on-call operator with every worker down gets the ledger's row, marked as such and why, in the time
    ``STATUS_WAIT`` allows, not a timeout's traceback; a request the ledger does not know either is one line."""
    import dsr.cli.requests

    monkeypatch.setattr(dsr.cli.requests, "STATUS_WAIT", timedelta(seconds=2))
    unknown = "dsr-2026-11-NOWRK2"
    handles = []
    env = {**cli_env(home), "TEMPORAL_ADDRESS": time_skipping.client.service_client.config.target_host}
    # Nothing listens on port 9: the connection is refused at once.
    unreadable = {**env, "DSR_DATABASE_URL": "postgresql://dsr:secret@127.0.0.1:9/dsr"}
    try:
        for reference in (REFERENCE, unknown):
            handles.append(await time_skipping.client.start_workflow("DataSubjectRequest", id=reference,
                                                                     task_queue=f"no-worker-{reference}"))
        said = await asyncio.to_thread(run_dsr, ["status", REFERENCE], env)
        as_json = await asyncio.to_thread(run_dsr, ["status", REFERENCE, "--json"], env)
        neither = await asyncio.to_thread(run_dsr, ["status", unknown], env)
        no_ledger = await asyncio.to_thread(run_dsr, ["status", REFERENCE], unreadable)
    finally:
        for handle in handles:
            await handle.terminate("the test is over")

    why = "no worker answered within 2 s: is `dsr worker` running, or are the workers swamped?"
    assert said.returncode == 0, said.stderr
    assert said.stdout.splitlines() == [f"{REFERENCE}  rectification  received  [from the ledger: {why}]",
                                        "  received 2026-11-20, due 2026-12-21"]
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {
        "id": REFERENCE, "kind": "rectification", "stage": "received", "outcome": None, "channel": "letter",
        "received": "2026-11-20", "deadline": "2026-12-21", "extended": False, "source": "ledger", "why": why}
    assert neither.returncode == 1
    assert neither.stderr.strip().splitlines() == [f"error: {unknown}: {why}"]
    # Workers down because the database is: one line that says both, not a traceback nor "cannot reach Temporal".
    assert no_ledger.returncode == 1
    [line] = no_ledger.stderr.strip().splitlines()
    assert line.startswith(f"error: {REFERENCE}: {why}, and the ledger cannot be read: cannot open the ledger "
                           "database postgresql+psycopg://dsr:***@127.0.0.1:9/dsr: "), line


@workflow.defn(name="DataSubjectRequest", sandboxed=False)
class AnsweredRequest:
    """A request already answered, as its status query says; its aftercare runs on a queue no worker polls."""

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.query
    def status(self) -> RequestStatus:
        return RequestStatus(
            request_id=workflow.info().workflow_id, kind=RequestKind.ACCESS, stage=Stage.CLOSED,
            outcome=Outcome.FULFILLED, channel=Channel.EMAIL, received=date(2026, 11, 20),
            deadline=date(2026, 12, 21), extended=False, overdue=False, identity=IdentityMethod.EMAIL,
            identity_confirmed=True, language=Language.FR, aftercare=f"aftercare-{workflow.info().workflow_id}")


async def test_status_of_an_answered_request_whose_aftercare_no_worker_answers_is_one_line(
        home: Path, time_skipping: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch) -> None:
    """The request's run answers, its aftercare's does not (its worker swamped or gone): one line within the wait,
    not a hang nor the run's stale view of the download link and residual data."""
    import dsr.cli.requests

    monkeypatch.setattr(dsr.cli.requests, "STATUS_WAIT", timedelta(seconds=2))
    keys = KeyRing.load_or_create(home / "keys.json")
    client = Client(time_skipping.client.service_client, namespace=time_skipping.client.namespace,
                    data_converter=data_converter(keys))
    reference = "dsr-2026-11-ANSWRD"
    queue = f"answered-{reference}"
    env = {**cli_env(home), "TEMPORAL_ADDRESS": time_skipping.client.service_client.config.target_host}
    handles = []
    async with Worker(client, task_queue=queue, workflows=[AnsweredRequest]):
        try:
            handles.append(await client.start_workflow("DataSubjectRequest", id=reference, task_queue=queue))
            handles.append(await client.start_workflow("RequestAftercare", id=f"aftercare-{reference}",
                                                       task_queue=f"no-worker-{reference}"))
            said = await asyncio.to_thread(run_dsr, ["status", reference], env)
        finally:
            for handle in handles:
                await handle.terminate("the test is over")

    assert said.returncode == 1
    assert said.stderr.strip().splitlines() == [
        f"error: {reference} is answered, and its aftercare (download link, residual data) did not answer within "
        "2 s: is `dsr worker` running?"], said.stderr
