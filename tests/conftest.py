"""Shared fixtures. PostgreSQL: a real server, either given or started for the test session.

* ``DSR_TEST_POSTGRES_URL`` set: use that server (the URL's user must be allowed to CREATE DATABASE).
* otherwise, when the PostgreSQL server binaries are installed (``initdb``/``pg_ctl`` on PATH or under
  ``/usr/lib/postgresql/*/bin``; ``scripts/ensure-postgres`` installs them): a throwaway cluster in a
  temporary directory, on a free port, listening on 127.0.0.1 only, stopped and removed at session end.
  As root it runs as the ``postgres`` system user (PostgreSQL refuses to run as root).
* otherwise the PostgreSQL tests are skipped, unless ``DSR_REQUIRE_POSTGRES=1``: then they fail.

Fixtures: ``postgres_admin_url`` (session: a URL to the server's ``postgres`` database),
``postgres_url`` (a fresh, empty database per test, dropped afterwards) and ``database_url``
(parametrised: every test using it runs once on SQLite, in a temporary file, and once on PostgreSQL).

Object storage: ``s3_server`` (session: moto's S3 server over HTTP on 127.0.0.1, one bucket), ``s3_url``
(a fresh prefix of it, AWS variables set) and ``storage_url`` (parametrised: ``file://`` and ``s3://``).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import URL

from tests.harness import MailSink, S3Server, wait_for_database
from tests.servers import dev_server, time_skipping  # noqa: F401  (fixtures: the Temporal servers)

if TYPE_CHECKING:
    pass


# A test needing one of these fixtures (directly or through another) gets the marker: `make test-fast` leaves it out.
# moto's S3 server costs a worker seconds of CPU to start and every call goes over HTTP: its tests are slow (the
# file:// twin of a storage test stays in the fast loop).
_MARKER_OF_FIXTURE = {"postgres_admin_url": "postgres", "dovecot": "imap", "browser": "browser", "s3_server": "slow"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        needs = set(getattr(item, "fixturenames", ()))
        for fixture, marker in _MARKER_OF_FIXTURE.items():
            if fixture in needs:
                item.add_marker(marker)
        callspec = getattr(item, "callspec", None)  # database_url asks for PostgreSQL only when run
        params = {v for v in callspec.params.values() if isinstance(v, str)} if callspec is not None else set()
        # A database parametrised by name (database_url, the sql connector's backends) asks for its server only
        # when it runs: marked by the parameter's value.
        if "postgresql" in params:
            item.add_marker("postgres")
        if "mariadb" in params:
            item.add_marker("mariadb")
        if callspec is not None and callspec.params.get("storage_url") == "s3":
            item.add_marker("slow")  # over HTTP to moto, seconds a test; its file:// twin stays in the fast loop


def pytest_collection_finish(session: pytest.Session) -> None:
    # What is imported and collected by now lives until the session ends: frozen, the garbage collector stops
    # walking it at every full collection during the run, and at pytest's own at the end (over a second of CPU a
    # worker).
    gc.freeze()


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _postgres_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, newest version first."""
    candidates: list[Path] = []
    for tool in ("initdb", "pg_ctl"):
        found = shutil.which(tool)
        if found:
            candidates.append(Path(os.path.realpath(found)).parent)
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.name.split(".")],
        reverse=True,
    )
    candidates.extend(Path(p) for p in versions)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as_user() -> str | None:
    """PostgreSQL refuses to run as root: pick an unprivileged system user to run it as."""
    if os.geteuid() != 0:
        return None
    for user in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return user
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


class _Cluster:
    """A throwaway PostgreSQL cluster in a temporary directory."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.user = _run_as_user()
        self.dir = Path(tempfile.mkdtemp(prefix="dsr-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.password = secrets.token_urlsafe(16)
        self.port = 0
        self.running = False
        if self.user is not None:
            shutil.chown(self.dir, user=self.user, group=pwd.getpwnam(self.user).pw_gid)

    def _cmd(self, *args: str | Path) -> list[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.user is not None else []
        return [*prefix, *(str(a) for a in args)]

    def _run(self, *args: str | Path, timeout: float = 120) -> None:
        result = subprocess.run(
            self._cmd(*args), cwd=self.dir, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(str(args[0])).name} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                f"{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        try:
            return "server log:\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return ""

    def start(self) -> None:
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.user is not None:
            shutil.chown(pwfile, user=self.user)
        pwfile.chmod(0o600)
        try:
            self._run(
                self.bindir / "initdb", "-D", self.data, "-U", "postgres", "--pwfile", pwfile,
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        last_error: Exception | None = None
        for _attempt in range(3):  # the free port may be taken between probing and binding
            self.port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            try:
                self._run(self.bindir / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w",
                          "-t", "60", "start")
            except RuntimeError as exc:
                last_error = exc
                continue
            self.running = True
            return
        raise RuntimeError(f"could not start PostgreSQL: {last_error}")

    def stop(self) -> None:
        if self.running:
            self.running = False
            with contextlib.suppress(Exception):
                self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop", timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self) -> URL:
        return URL.create(
            "postgresql+psycopg", username="postgres", password=self.password,
            host="127.0.0.1", port=self.port, database="postgres",
        )


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[URL]:
    """A URL to a PostgreSQL server on which the test session may create databases."""
    given = os.environ.get("DSR_TEST_POSTGRES_URL")
    if given:
        url = make_url(given)
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        wait_for_database(url)
        yield url
        return
    bindir = _postgres_bindir()
    if bindir is None:
        if _truthy("DSR_REQUIRE_POSTGRES"):
            pytest.fail(
                "DSR_REQUIRE_POSTGRES=1 but PostgreSQL is not installed: run scripts/ensure-postgres, "
                "or set DSR_TEST_POSTGRES_URL to a server"
            )
        pytest.skip("PostgreSQL not installed")
    cluster = _Cluster(bindir)
    atexit.register(cluster.stop)  # in case the session is torn down abruptly
    try:
        cluster.start()
        wait_for_database(cluster.url())
    except Exception as exc:
        cluster.stop()
        pytest.fail(f"could not start a throwaway PostgreSQL cluster from {bindir}: {exc}")
    try:
        yield cluster.url()
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_admin_url: URL) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (SQLAlchemy URL string, psycopg 3 driver)."""
    name = f"dsr_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield postgres_admin_url.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run the test on SQLite (a temporary file) and on PostgreSQL (a fresh database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))


# --- object storage: a real S3 API over HTTP (moto's server, as a subprocess) ----------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server started for the session, listening on 127.0.0.1 on a free port, stopped at the end."""
    try:
        server = S3Server()
    except RuntimeError as err:
        pytest.fail(str(err))
    atexit.register(server.stop)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """``DSR_STORAGE_URL`` of a fresh prefix of the test bucket, with the AWS variables set for this test."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return f"s3://{s3_server.bucket}/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["file", "s3"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run the test on both backends: local files (a temporary folder) and S3 (moto over HTTP)."""
    if request.param == "file":
        return (tmp_path / "storage").as_uri()
    return str(request.getfixturevalue("s3_url"))


# --- real servers shared by several test modules ------------------------------------------------------------


@pytest.fixture
def mail() -> Iterator[MailSink]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 collecting every message sent to it."""
    sink = MailSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()
