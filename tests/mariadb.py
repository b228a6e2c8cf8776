"""A real MariaDB server for the tests: given, or started for the session.

* ``DSR_TEST_MARIADB_URL`` set (``mysql+pymysql://root:pw@host:port/``): use that server; its user must be
  allowed to CREATE DATABASE.
* otherwise, when the server binaries are installed (``mariadbd`` and ``mariadb-install-db``;
  ``scripts/ensure-mariadb`` installs them): a throwaway server in a temporary directory, on a free port, on
  127.0.0.1 only (and its own socket there), stopped and removed at session end.
* otherwise the MariaDB tests are skipped, unless ``DSR_REQUIRE_MARIADB=1``: then they fail.

Fixtures (import them into a test module or a conftest): ``mariadb_admin_url`` (session) and ``mariadb_url``
(a fresh, empty database per test, dropped afterwards).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import URL

from tests.harness import free_port, wait_for_database


def _binary(*names: str) -> Path | None:
    for name in names:
        found = shutil.which(name) or next((f"{d}/{name}" for d in ("/usr/sbin", "/usr/libexec", "/usr/bin")
                                            if os.access(f"{d}/{name}", os.X_OK)), None)
        if found:
            return Path(found)
    return None


class _Server:
    """A throwaway mariadbd in a temporary directory (as root it runs as root: it is ours alone)."""

    def __init__(self, server: Path, install: Path) -> None:
        self.server = server
        self.install = install
        self.dir = Path(tempfile.mkdtemp(prefix="dsr-mariadb-"))
        self.data = self.dir / "data"
        # Its own folder for temporary tables: in the shared /tmp, a server's internal temporary table (a query
        # streamed with an unbuffered cursor) was removed under it ("Error on delete of
        # '/tmp/#sql-temptable-....MAI'") when several test processes ran servers at once (likely another server
        # clearing what it took for its own leftovers): 1 run in 3 to 5 of test_sql.py under -n 3, none in 8 since.
        self.tmp = self.dir / "tmp"
        self.socket = self.dir / "mariadb.sock"
        self.log = self.dir / "server.log"
        self.password = secrets.token_urlsafe(16)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._user = ["--user=root"] if os.geteuid() == 0 else []

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return ""

    def start(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [str(self.install), "--no-defaults", f"--datadir={self.data}", "--auth-root-authentication-method=normal",
             "--skip-test-db", *self._user],
            capture_output=True, text=True, timeout=180, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        for _attempt in range(3):  # the free port may be taken between probing and binding
            self.port = free_port()
            self.process = subprocess.Popen(
                [str(self.server), "--no-defaults", f"--datadir={self.data}", f"--socket={self.socket}",
                 f"--port={self.port}", "--bind-address=127.0.0.1", f"--log-error={self.log}",
                 f"--pid-file={self.dir / 'mariadbd.pid'}", "--skip-name-resolve", "--innodb-flush-log-at-trx-commit=0",
                 "--innodb-doublewrite=0", "--skip-log-bin", "--max-connections=200", f"--tmpdir={self.tmp}",
                 *self._user],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.process.poll() is None and not self.socket.exists():
                time.sleep(0.1)
            if self.process.poll() is None and self.socket.exists():
                break
            self.process = None
        else:
            raise RuntimeError(f"mariadbd did not start:\n{self._log_tail()}")
        # Root has no password yet (unix socket, this process's user): give it one for TCP.
        client = _binary("mariadb", "mysql")
        if client is None:
            raise RuntimeError("the mariadb client is not installed")
        sql = (f"ALTER USER 'root'@'localhost' IDENTIFIED BY '{self.password}'; "
               f"CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; "
               f"ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY '{self.password}'; "
               "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;")
        result = subprocess.run([str(client), "--no-defaults", f"--socket={self.socket}", "-uroot", "-e", sql],
                                capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"could not set the root password: {result.stderr}\n{self._log_tail()}")

    def stop(self) -> None:
        if self.process is not None:
            process, self.process = self.process, None
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self) -> URL:
        return URL.create("mysql+pymysql", username="root", password=self.password, host="127.0.0.1",
                          port=self.port, query={"charset": "utf8mb4"})


@pytest.fixture(scope="session")
def mariadb_admin_url() -> Iterator[URL]:
    """A URL to a MariaDB server on which the test session may create databases."""
    given = os.environ.get("DSR_TEST_MARIADB_URL")
    if given:
        url = make_url(given)
        if url.drivername in ("mysql", "mariadb"):
            url = url.set(drivername="mysql+pymysql")
        wait_for_database(url)
        yield url
        return
    server, install = _binary("mariadbd", "mysqld"), _binary("mariadb-install-db", "mysql_install_db")
    if server is None or install is None:
        if os.environ.get("DSR_REQUIRE_MARIADB", "").strip().lower() in {"1", "true", "yes", "on"}:
            pytest.fail("DSR_REQUIRE_MARIADB=1 but MariaDB is not installed: run scripts/ensure-mariadb, "
                        "or set DSR_TEST_MARIADB_URL to a server")
        pytest.skip("MariaDB not installed (scripts/ensure-mariadb)")
    instance = _Server(server, install)
    atexit.register(instance.stop)  # in case the session is torn down abruptly
    try:
        instance.start()
        wait_for_database(instance.url())
    except Exception as exc:
        instance.stop()
        pytest.fail(f"could not start a throwaway MariaDB server from {server}: {exc}")
    try:
        yield instance.url()
    finally:
        instance.stop()


@pytest.fixture
def mariadb_url(mariadb_admin_url: URL) -> Iterator[str]:
    """A fresh, empty MariaDB database for one test (SQLAlchemy URL string, PyMySQL driver)."""
    name = f"dsr_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(mariadb_admin_url)
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
        yield mariadb_admin_url.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn, contextlib.suppress(Exception):
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    finally:
        admin.dispose()


__all__ = ["mariadb_admin_url", "mariadb_url"]
