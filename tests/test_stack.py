"""The acceptance scenario of the engine, run for real: `dsr up`, the CLI, kill -9, `dsr up` again."""

from __future__ import annotations

import email
import email.policy
import functools
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Literal, TypeVar

import pytest

from tests.harness import binary, free_port, text_of

pytestmark = pytest.mark.slow  # the whole `dsr up` stack, as processes

BIN = Path(sys.executable).parent
EMAIL = "camille.durand@example.org"
NAME = "Camille Durand"


class Stack:
    """`dsr up` in its own process group, with its own ports and DSR_HOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        temporal_port = free_port()
        self.env = {
            **os.environ,
            "DSR_HOME": str(home),
            "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}",
            "DSR_UI_PORT": str(free_port()),
            "DSR_CODEC_PORT": str(free_port()),
            "DSR_SMTP_PORT": str(free_port()),
            "DSR_INTAKE_PORT": str(free_port()),
            "DSR_OPERATOR_EMAIL": "dpo@example.com",
        }
        self.env.pop("DSR_KEYS", None)
        self.env.pop("DSR_SMTP_HOST", None)
        self.process: subprocess.Popen[bytes] | None = None

    def up(self, *extra: str) -> None:
        path = self.home / "up.log"
        offset = path.stat().st_size if path.exists() else 0  # the log of a previous run stays
        log = path.open("ab")
        self.process = subprocess.Popen(
            [str(BIN / "dsr"), "up", *extra], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        for _ in range(360):
            if b"dsr is up." in path.read_bytes()[offset:]:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.25)
        raise AssertionError("dsr up did not start:\n" + (self.home / "up.log").read_text()[-3000:])

    def kill_group(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def dsr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "dsr"), *args], env=self.env, capture_output=True, text=True, timeout=60)

    def temporal(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary("temporal"), *args, "--address", self.env["TEMPORAL_ADDRESS"]],
            env=self.env, capture_output=True, text=True, timeout=60,
        )

    def outbox(self) -> list[email.message.EmailMessage]:
        files = sorted((self.home / "outbox").glob("*.eml"))
        return [email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in files]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path)
    try:
        yield stack
    finally:
        stack.stop()


T = TypeVar("T")


def wait_until(predicate: Callable[[], T | Literal[False] | None], what: str, timeout: float = 20.0) -> T:
    """The first truthy value of ``predicate``, asked every 0.25 s for at most ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_request_survives_kill_of_the_whole_stack(stack: Stack) -> None:
    stack.up()
    # No dsr.toml yet: the operator is told at start that access replies would wait for the profile.
    assert "profile         INCOMPLETE:" in (stack.home / "up.log").read_text()
    submitted = stack.dsr("submit", "--kind", "access", "--email", EMAIL, "--name", NAME, "--channel", "api",
                          "--json")
    assert submitted.returncode == 0, submitted.stderr
    reply = json.loads(submitted.stdout)
    request_id, deadline = reply["id"], date.fromisoformat(reply["deadline"])
    assert request_id.startswith("dsr-") and deadline > date.today()

    def stage() -> str:
        shown = stack.dsr("status", request_id, "--json")
        return json.loads(shown.stdout)["stage"] if shown.returncode == 0 else ""

    wait_until(lambda: stage() == "awaiting_identity", "the identity request")
    wait_until(lambda: len(stack.outbox()) >= 2, "acknowledgement and identity request in the outbox")

    stack.kill_group()  # kill -9 of dsr up, the dev server, the worker: nothing shuts down cleanly
    stack.up()

    shown_status = stack.dsr("status", request_id, "--json")
    assert shown_status.returncode == 0, shown_status.stderr
    status = json.loads(shown_status.stdout)
    assert status["id"] == request_id and status["deadline"] == deadline.isoformat()
    assert status["stage"] == "awaiting_identity" and status["kind"] == "access" and not status["extended"]
    for field in ("outcome", "received"):
        assert field in status

    literal = (deadline + timedelta(days=1)).isoformat() + "T00:00:00Z"
    listed = stack.temporal("workflow", "list", "--query", f'DsrDeadline < "{literal}"', "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert request_id in listed.stdout

    shown = stack.temporal("workflow", "show", "-w", request_id, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert EMAIL not in shown.stdout and "Camille" not in shown.stdout and "Durand" not in shown.stdout

    first = stack.dsr("extend", request_id, "--reason", "Three systems and ten years of orders to search.")
    assert first.returncode == 0, first.stderr
    extended = wait_until(
        lambda: [m for m in stack.outbox() if "Three systems" in text_of(m)],
        "the extension notice",
    )
    assert extended[0]["To"] == EMAIL
    second = stack.dsr("extend", request_id, "--reason", "again")
    assert second.returncode != 0
    assert second.stderr.strip().startswith("error:") and "already extended" in second.stderr
    assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1

    history = stack.dsr("history", request_id, "--json")
    events = [e["event"] for e in json.loads(history.stdout)["events"]]
    # The acknowledgement goes beside identity (patch ack-nonblocking): sent, whatever comes before it.
    assert events[0] == "received" and "notice_sent" in events and "extended" in events
    due = json.loads(stack.dsr("due", "--within", "400", "--json").stdout)
    assert [row["id"] for row in due] == [request_id] and due[0]["extended"]

    # A request Temporal no longer holds (past its retention) is still answered from the ledger.
    old_id = "dsr-2025-01-OLD0AA"
    subprocess.run([str(BIN / "python"), "-c", f"""
from datetime import UTC, date, datetime
from dsr.config.settings import Settings
from dsr.store.crypto import KeyRing
from dsr.store.ledger import Ledger
from dsr.domain.model import AuditEvent, Channel, Language, Outcome, RequestKind, RequestRecordInput, Stage, Subject
settings = Settings.from_env()
ledger = Ledger(settings.database_url, KeyRing.from_settings(settings))
ledger.record_request(RequestRecordInput("{old_id}", RequestKind.ERASURE, Channel.EMAIL, Subject("o@example.org"),
    datetime(2025, 1, 31, 10, tzinfo=UTC), date(2025, 2, 28), Language.FR), now=datetime.now(UTC))
ledger.append_event(AuditEvent("{old_id}", "closed", stage=Stage.CLOSED, outcome=Outcome.FULFILLED),
    key="old-closed", at=datetime.now(UTC))
"""], env=stack.env, check=True)
    old = stack.dsr("status", old_id, "--json")
    assert old.returncode == 0, old.stderr
    assert json.loads(old.stdout) | {} == {
        "id": old_id, "kind": "erasure", "stage": "closed", "outcome": "fulfilled", "channel": "email",
        "received": "2025-01-31", "deadline": "2025-02-28", "extended": False, "source": "ledger",
    }


def test_demo_serves_sample_customers_through_real_connectors(stack: Stack) -> None:
    base = free_port()
    while any(not _free(p) for p in (base + 1, base + 2)):
        base = free_port()
    stack.env["DSR_DEMO_BASE_PORT"] = str(base)
    stack.up("--demo")
    assert "profile         controller profile complete" in (stack.home / "up.log").read_text()
    customers = json.loads(stack.dsr("demo", "customers", "--json").stdout)
    heavy = next(c for c in customers if c["email"] == "marie.lefevre@example.com")
    assert heavy["systems"]["woocommerce"]["orders"] == 10_000 and heavy["systems"]["stripe"]["charges"] == 2000
    everywhere = next(c for c in customers if c["email"] == "camille.durand@example.org")
    assert set(everywhere["systems"]) == {"app", "hubspot", "stripe", "woocommerce"}
    # What the Stripe connector exports, as the reply lists it (issue 18: the listing said 5, the reply 7).
    # What the reply lists for Stripe (tests/sandbox/test_stripe_sandbox.py checks these against the connector).
    assert everywhere["systems"]["stripe"] == {
        "customer": 1, "charges": 4, "payment_intents": 4, "subscriptions": 1, "invoices": 1, "credit_notes": 1,
        "quotes": 1, "payment_methods": 1, "setup_intents": 1, "checkout_sessions": 2}
    assert sum(heavy["systems"]["app"].values()) == 10_002  # the application database (sql connector)

    check = stack.dsr("connectors", "check", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    assert {(r["name"], r["ok"]) for r in json.loads(check.stdout)} == {
        ("app", True), ("hubspot", True), ("stripe", True), ("woocommerce", True), ("support-chat", True),
        ("backups", True)}

    submitted = json.loads(stack.dsr("submit", "--kind", "erasure", "--email", "hugo.bernard@example.net",
                                     "--json").stdout)
    request_id = submitted["id"]
    wait_until(lambda: stack.dsr("confirm-identity", request_id, "--method", "email").returncode == 0,
               "the identity step")
    # The processor (by email) and the backups (a person) answer: here through `dsr tasks complete`.
    waiting = wait_until(lambda: len(rows := json.loads(stack.dsr("tasks", "list", "--json").stdout)) == 2 and rows,
                         "the processor's and the owner's tasks")
    assert {(r["system"], r["type"]) for r in waiting} == {("support-chat", "processor"), ("backups", "manual")}
    wait_until(lambda: any(m["To"] == "privacy@support-chat.example" and request_id in str(m["Subject"])
                           for m in stack.outbox()), "the email to the processor, with its answer link")
    for args in (["support-chat", "--done"],
                 ["backups", "--kept", "--basis", "Art. 17(3)(b) GDPR", "--until", "2027-06-30"]):
        answered = stack.dsr("tasks", "complete", request_id, *args, "--by", "operator:alice")
        assert answered.returncode == 0, answered.stderr

    def closed() -> dict | None:
        status = json.loads(stack.dsr("status", request_id, "--json").stdout)
        return status if status["stage"] == "closed" else None

    status = wait_until(closed, "the erasure", timeout=60)
    assert status["outcome"] == "fulfilled"
    shop = next(c for c in status["connectors"] if c["connector"] == "woocommerce")
    assert shop["outcome"]["counts"]["anonymised"] == 2  # a guest's orders: kept anonymised for accounting

    # The orders' IP address and user agent cannot be cleared through the API: the operator must do it.
    assert any(line.startswith("woocommerce: orders") for line in status["residuals"])
    shown = stack.dsr("status", request_id)
    assert "residual data to clear by hand" in shown.stdout and "customer_ip_address" in shown.stdout
    cleared = stack.dsr("clear-residuals", request_id, "--note", "IP and user agent emptied in the shop's DB",
                        "--by", "operator:alice")
    assert cleared.returncode == 0, cleared.stderr
    history = json.loads(stack.dsr("history", request_id, "--json").stdout)
    done = [e for e in history["events"] if e["event"] == "residuals_cleared"]
    assert len(done) == 1 and done[0]["actor"] == "operator:alice"
    again = wait_until(lambda: (r := stack.dsr("clear-residuals", request_id)).returncode != 0 and r, "the end")
    assert again.stderr.startswith("error:") and len(again.stderr.strip().splitlines()) == 1


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "--kind", "deletion", "--email", "a@example.org"], "kind must be one of"),
        (["submit", "--kind", "access", "--email", "not-an-address"], "email is not a valid address"),
        (["status", "not-a-reference"], "is not a request reference"),
        (["extend", "dsr-2026-11-AAAAAA", "--reason", "x"], "no key file"),
        (["refuse", "dsr-2026-11-AAAAAA", "--reason", "x", "--ground", "whim"], "--ground must be one of"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(tmp_path: Path, args: list[str], message: str) -> None:
    env = {**os.environ, "DSR_HOME": str(tmp_path), "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"}
    env.pop("DSR_KEYS", None)
    if "no key file" not in message:  # input errors are found before keys or Temporal are needed
        subprocess.run([str(BIN / "python"), "-c", "from dsr.store.crypto import KeyRing; from pathlib import Path; "
                        f"KeyRing.load_or_create(Path({str(tmp_path / 'keys.json')!r}))"], check=True)
    result = subprocess.run([str(BIN / "dsr"), *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr


def test_no_worker_stack_with_demo_faults_waits_for_a_dsr_worker(stack: Stack) -> None:
    import httpx

    base = free_port()
    while any(not _free(p) for p in (base + 1, base + 2)):
        base = free_port()
    stack.env["DSR_DEMO_BASE_PORT"] = str(base)
    stack.env["DSR_DEMO_FAULTS"] = "429=1"
    stack.up("--demo", "--no-worker")
    banner = (stack.home / "up.log").read_text()
    assert "none (--no-worker)" in banner and "faults       429 100% of requests" in banner
    for port in (base, base + 1, base + 2):  # every demo system, each with its faults
        answer = httpx.get(f"http://127.0.0.1:{port}/v1/customers")
        assert answer.status_code == 429 and answer.headers["retry-after"] == "1", (port, answer.status_code)

    submitted = json.loads(stack.dsr("submit", "--kind", "access", "--email", EMAIL, "--name", NAME,
                                     "--json").stdout)
    time.sleep(3)
    assert stack.outbox() == []  # no worker: nothing runs the request
    worker = subprocess.Popen([str(BIN / "dsr"), "worker"], env=stack.env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: any(submitted["id"] in str(m["Subject"]) or submitted["id"] in
                               text_of(m) for m in stack.outbox()),
                   "the identity email, sent by the separate worker", timeout=60)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)


def _plain_trusted_erasure_input(stack: Stack, request_id: str) -> str:
    """The JSON a local user would hand to `temporal workflow start`: a trusted erasure, no key needed."""
    from dataclasses import replace

    from temporalio.contrib.pydantic import PydanticPayloadConverter

    from dsr.config.settings import Settings
    from dsr.domain.model import IdentityMethod
    from intake.submission import Submission, prepare

    settings = Settings.from_env(stack.env)
    settings = replace(settings, policy=replace(settings.policy, identity=IdentityMethod.TRUSTED))
    request = prepare(Submission(kind="erasure", email=EMAIL, name=NAME, channel="api"), settings)
    request = replace(request, request_id=request_id)
    return PydanticPayloadConverter().to_payloads([request])[0].data.decode()


def test_a_local_user_without_the_token_can_neither_decode_nor_start_requests(stack: Stack) -> None:
    """Issue 12 finding 3: `dsr up` no longer trusts loopback."""
    import httpx

    stack.up()
    token_file = stack.home / "codec-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    codec = f"http://127.0.0.1:{stack.env['DSR_CODEC_PORT']}"
    banner = (stack.home / "up.log").read_text()
    assert f"{codec}/{token}" in banner and "single-user development stack" in banner
    nothing = json.dumps({"payloads": []})
    for path in ("/decode", "/default/decode", "/encode", "/not-the-token/decode"):
        refused = httpx.post(codec + path, content=nothing)
        assert refused.status_code == 401 and refused.json() == {"error": "missing or invalid bearer token"}, path
    assert httpx.post(f"{codec}/{token}/decode", content=nothing).status_code == 200  # the UI's endpoint
    assert httpx.post(f"{codec}/decode", content=nothing, headers={"Authorization": f"Bearer {token}"}
                      ).status_code == 200  # the CLI's --codec-auth
    # The UI server is not handed the token (its command line is readable by every local user).
    assert token not in subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout

    # A hand-made start with plain JSON: refused by the worker, so no erasure and no mail.
    forged = "dsr-2026-12-PLA1N0"
    started = stack.temporal("workflow", "start", "--type", "DataSubjectRequest", "--task-queue", "dsr-requests",
                             "--workflow-id", forged, "--input", _plain_trusted_erasure_input(stack, forged))
    assert started.returncode == 0, started.stderr

    def task_failures() -> list[dict]:
        shown = stack.temporal("workflow", "show", "-w", forged, "-o", "json")
        events = json.loads(shown.stdout)["events"] if shown.returncode == 0 else []
        return [e for e in events if "workflowTaskFailedEventAttributes" in e]

    failures = wait_until(task_failures, "the worker's refusal")
    shown = stack.temporal("workflow", "show", "-w", forged, "-o", "json").stdout
    assert "UnencryptedPayloadError" in shown or "RuntimeError" in shown
    assert "activityTaskScheduledEventAttributes" not in shown and failures
    assert stack.dsr("history", forged, "--json").returncode != 0  # never recorded in the ledger
    assert stack.outbox() == []
    stack.temporal("workflow", "terminate", "-w", forged, "--reason", "test over")

    stack.stop()
    stack.up()
    assert (stack.home / "up.log").read_text().count(token) == 1  # printed once, at creation
    assert token_file.read_text().strip() == token


def _private_or_exited(process: subprocess.Popen[bytes]) -> bool:
    """The process runs with umask 077, or has exited already."""
    return _umask_of(process.pid) == 0o077 or process.poll() is not None


def _umask_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except FileNotFoundError:
        return None
    return None


def test_every_entry_point_keeps_its_files_private_whatever_the_umask(stack: Stack) -> None:
    """Issue 12 finding 7: the ledger, Temporal's database and the logs were 0644/0755 under a usual umask."""
    loose = os.umask(0o022)  # what a shell usually has; every process below inherits it
    try:
        stack.up()
        assert stack.process is not None
        assert _umask_of(stack.process.pid) == 0o077
        for name in ("ledger.sqlite3", "temporal.sqlite", "logs/temporal.log", "keys.json", "codec-token"):
            assert stat.S_IMODE((stack.home / name).stat().st_mode) == 0o600, name
        for name in ("logs", "outbox", "storage"):
            assert stat.S_IMODE((stack.home / name).stat().st_mode) == 0o700, name
        env = {**stack.env, "DSR_CODEC_TOKEN": "a-token-for-this-test-only-0123456789abcdef",
               "DSR_CODEC_PORT": str(free_port()), "DSR_INTAKE_PORT": str(free_port())}
        for args in (["dsr", "worker"], ["dsr", "intake"], ["dsr", "codec-server"], ["python", "worker.py"]):
            process = subprocess.Popen([str(BIN / args[0]), *args[1:]], env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True,
                                       cwd=Path(__file__).resolve().parents[1])
            try:
                seen = wait_until(functools.partial(_private_or_exited, process),
                                  f"{' '.join(args)} to start", timeout=30)
                assert seen and process.poll() is None and _umask_of(process.pid) == 0o077, args
            finally:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
    finally:
        os.umask(loose)


def test_the_ui_cancel_and_terminate_buttons_leave_a_true_record(stack: Stack) -> None:
    stack.up()
    banner = (stack.home / "up.log").read_text()
    # Links that stay true: the dated view is reached through `dsr dashboard`, no date frozen at start.
    assert "`dsr dashboard due` (opens today's" in banner and "DsrDeadline" not in banner
    links = json.loads(stack.dsr("dashboard", "--json").stdout)
    assert "DsrDeadline" in urllib.parse.unquote(links["due within 7 days"])
    unknown = stack.dsr("dashboard", "nonsense")
    assert unknown.returncode != 0 and unknown.stderr.startswith("error: view 'nonsense' is unknown")

    def submit() -> str:
        done = stack.dsr("submit", "--kind", "access", "--email", EMAIL, "--name", NAME, "--channel", "api",
                         "--json")
        assert done.returncode == 0, done.stderr
        request_id = json.loads(done.stdout)["id"]
        wait_until(lambda: json.loads(stack.dsr("status", request_id, "--json").stdout)["stage"]
                   == "awaiting_identity", "the identity request")
        return request_id

    # "Request Cancellation" (the UI's button sends what `temporal workflow cancel` sends): withdrawn by staff.
    cancelled = submit()
    assert stack.temporal("workflow", "cancel", "--workflow-id", cancelled).returncode == 0
    status = wait_until(lambda: (s := json.loads(stack.dsr("status", cancelled, "--json").stdout))["stage"]
                        == "closed" and s, "the cancellation")
    assert status["outcome"] == "withdrawn"
    history = json.loads(stack.dsr("history", cancelled, "--json").stdout)
    assert [(e["actor"], e["details"]) for e in history["events"] if e["event"] == "withdrawn"] == [
        ("temporal-cancel", {"via": "cancellation"})]
    assert history["outcome"] == "withdrawn"

    # "Terminate" runs no code of the request: `dsr status` says so, `dsr reconcile` records it.
    terminated = submit()
    assert stack.temporal("workflow", "terminate", "--workflow-id", terminated, "--reason", "test").returncode == 0
    shown = wait_until(lambda: "TERMINATED" in (s := stack.dsr("status", terminated)).stdout and s, "the status")
    assert f"dsr reconcile {terminated}" in shown.stdout
    assert json.loads(stack.dsr("history", terminated, "--json").stdout)["stage"] == "awaiting_identity"
    reconciled = stack.dsr("reconcile", "--json")
    assert reconciled.returncode == 0, reconciled.stderr
    assert json.loads(reconciled.stdout)["reconciled"] == [
        {"id": terminated, "temporal_state": "terminated", "previous_stage": "awaiting_identity"}]
    history = json.loads(stack.dsr("history", terminated, "--json").stdout)
    assert (history["stage"], history["outcome"]) == ("closed", "terminated")
    assert json.loads(stack.dsr("reconcile", "--json").stdout)["reconciled"] == [], "recorded once"
