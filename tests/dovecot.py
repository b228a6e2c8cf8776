"""A throwaway Dovecot IMAP server for tests: real IMAPS on 127.0.0.1, its own certificate authority.

:class:`Dovecot` writes a complete configuration into a temporary directory (base_dir, state, logs,
maildirs, a passwd-file user database, a CA and a server certificate for ``127.0.0.1``/``localhost`` made
with ``cryptography`` at test time) and runs ``dovecot -F -c <conf>`` in the foreground as a child process,
stopped with SIGTERM at teardown. It never reads ``/etc/dovecot`` and never listens on anything but
loopback; plain IMAP is disabled (``port = 0``), only implicit TLS (imaps) on a free port is offered.

Each test gets its own IMAP user (:meth:`Dovecot.new_user`), hence its own mailbox, while one server serves
the whole module. Test messages are delivered with the standard library's ``imaplib`` (APPEND with an
explicit INTERNALDATE), deliberately not with the code under test.

Dovecot is found at ``/usr/sbin/dovecot`` or on PATH (``scripts/ensure-dovecot`` installs it). Without it
the tests are skipped, unless ``DSR_REQUIRE_DOVECOT`` is set: then they fail.
"""

from __future__ import annotations

import contextlib
import grp
import imaplib
import ipaddress
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.harness import free_port

DOVECOT_CANDIDATES = ("/usr/sbin/dovecot",)
REQUIRE_ENV = "DSR_REQUIRE_DOVECOT"
USER_BATCH = 64


def dovecot_binary() -> str | None:
    """The dovecot executable, or None when it is not installed."""
    for candidate in DOVECOT_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("dovecot")


def dovecot_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() not in {"", "0", "false", "no", "off"}


# --- certificates -----------------------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class CertificateAuthority:
    """A test CA; :meth:`issue` signs server certificates for loopback names."""

    name: str = "dsr test CA"
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        now = datetime.now(UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{self.name} {secrets.token_hex(4)}")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> tuple[bytes, bytes]:
        """A server certificate (PEM, with the CA appended) and its private key (PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem, _pem_key(key)


# --- the server ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImapUser:
    username: str
    password: str


_CONFIG = """\
# Generated by tests/dovecot.py for one test session; not /etc/dovecot.
base_dir = {base_dir}
state_dir = {state_dir}
instance_name = dsr-test-{tag}
log_path = {log}
info_log_path = {log}
protocols = imap
listen = 127.0.0.1
shutdown_clients = yes

ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = plain login

# Mail belongs to one account (the invoking user; 'nobody' when started as root, since Dovecot never gives
# mail access to root) and the valid UID/GID range is exactly that account.
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
mail_uid = {uid}
mail_gid = {gid}
mail_privileged_group =
mail_location = maildir:{mail_root}/%u/Maildir
mail_home = {mail_root}/%u
mailbox_list_index = yes

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = static
  # No uid/gid here: a userdb answering uid 0 is refused outright, while mail_uid = 0 is accepted
  # once first_valid_uid allows it.
  args = home={mail_root}/%u
}}

service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
  process_min_avail = 0
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0600
  }}
}}
service doveadm {{
  inet_listener {{
    port = 0
  }}
}}
{service_users}
"""

# Unprivileged: every service must run as the invoking user (Dovecot cannot switch users).
_SERVICE_USERS_UNPRIVILEGED = """\
service anvil {{
  user = {user}
  chroot =
}}
service imap-login {{
  user = {user}
  chroot =
}}
service auth {{
  user = {user}
}}
service auth-worker {{
  user = {user}
}}
service stats {{
  user = {user}
}}
service dict {{
  user = {user}
}}
service dict-async {{
  user = {user}
}}
service indexer-worker {{
  user = {user}
}}
"""


class DovecotError(RuntimeError):
    """The test server could not be started; the message holds the tail of its log."""


class Dovecot:
    """A Dovecot IMAPS server in a temporary directory; ``start()``/``stop()`` or use as a context manager."""

    host = "127.0.0.1"

    def __init__(self, binary: str, *, root: Path | None = None) -> None:
        self.binary = binary
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="dsr-dovecot-")) if root is None else root
        self.ca = CertificateAuthority()
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._users: dict[str, ImapUser] = {}
        self._passwd_group: int | None = None
        self._spare: list[ImapUser] = []
        self.cafile = self.root / "ca.pem"
        self.log = self.root / "dovecot.log"
        self.passwd = self.root / "passwd"

    # -- lifecycle

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write_config(self) -> Path:
        uid, gid = os.getuid(), os.getgid()
        user = pwd.getpwuid(uid).pw_name
        group = grp.getgrgid(gid).gr_name
        for sub in ("run", "state", "mail"):
            (self.root / sub).mkdir(mode=0o700, exist_ok=True)
        cert_pem, key_pem = self.ca.issue()
        (self.root / "server.pem").write_bytes(cert_pem)
        key_path = self.root / "server.key"
        key_path.write_bytes(key_pem)  # read by the master process, which stays root when started as root
        key_path.chmod(0o600)
        self.cafile.write_bytes(self.ca.cert_pem)
        if uid == 0:
            # As root Dovecot drops privileges: internal processes (auth included) run as 'dovecot', login
            # processes as 'dovenull' (both created by the package), and it refuses mail access as root
            # ("Mail access not allowed for root", and a userdb answering uid 0 is rejected), so the mail
            # belongs to an unprivileged account. The tests only ever read it over IMAP.
            internal = _existing_user("dovecot") or _existing_user("nobody") or user
            login = _existing_user("dovenull") or _existing_user("nobody") or user
            internal_group = _primary_group(internal)
            mail_user = _existing_user("nobody") or internal
            mail_uid, mail_gid = pwd.getpwnam(mail_user).pw_uid, pwd.getpwnam(mail_user).pw_gid
            os.chown(self.root / "mail", mail_uid, mail_gid)
            self.root.chmod(0o755)  # the unprivileged processes must traverse to base_dir and the mail
            # The auth process reads the passwd-file as the internal user.
            self._passwd_group = grp.getgrnam(internal_group).gr_gid
            service_users = ""
        else:
            # Unprivileged: Dovecot cannot switch users, so every process is the invoking user.
            internal, login, internal_group = user, user, group
            mail_uid, mail_gid = uid, gid
            service_users = _SERVICE_USERS_UNPRIVILEGED.format(user=user)
        if not self._spare:
            self._spare = [self._make_user() for _ in range(USER_BATCH)]
        self._write_passwd()
        conf = self.root / "dovecot.conf"
        conf.write_text(
            _CONFIG.format(
                base_dir=self.root / "run",
                state_dir=self.root / "state",
                tag=secrets.token_hex(3),
                log=self.log,
                cert=self.root / "server.pem",
                key=key_path,
                internal_user=internal,
                internal_group=internal_group,
                login_user=login,
                uid=mail_uid,
                gid=mail_gid,
                mail_root=self.root / "mail",
                passwd=self.passwd,
                port=self.port,
                service_users=service_users,
            )
        )
        return conf

    def start(self, timeout: float = 30.0) -> None:
        last_error = ""
        for _attempt in range(3):  # the free port may be taken between probing and binding
            self.port = free_port()
            conf = self._write_config()
            self.log.unlink(missing_ok=True)
            self._process = subprocess.Popen(
                [self.binary, "-F", "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest must not reach it before teardown does
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    out = self._process.stdout.read().decode(errors="replace") if self._process.stdout else ""
                    last_error = f"dovecot exited with {self._process.returncode}:\n{out}\n{self.log_tail()}"
                    self._process = None
                    break
                if self._tls_ready():
                    return
                time.sleep(0.1)
            else:
                self.stop(remove=False)
                raise DovecotError(f"dovecot did not accept TLS connections within {timeout} s\n{self.log_tail()}")
            if "Address already in use" not in last_error:
                break
        raise DovecotError(last_error)

    def _tls_ready(self) -> bool:
        try:
            with (
                socket.create_connection((self.host, self.port), timeout=1) as raw,
                self.ssl_context().wrap_socket(raw, server_hostname=self.host) as tls,
            ):
                tls.settimeout(2)
                return tls.recv(64).startswith(b"* OK")
        except OSError:
            return False

    def stop(self, *, remove: bool = True) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if remove and self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "dovecot log:\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no dovecot log)"

    # -- users and mail

    def new_user(self) -> ImapUser:
        """A fresh user with an empty mailbox.

        Users are made in batches written before they are needed: Dovecot looks at a changed passwd-file
        at most once per second, so a user added just now may not log in yet.
        """
        if not self._spare:
            self._spare = [self._make_user() for _ in range(USER_BATCH)]
            self._write_passwd()
            time.sleep(1.1)
        return self._spare.pop(0)

    def _make_user(self) -> ImapUser:
        user = ImapUser(f"privacy-{secrets.token_hex(4)}", secrets.token_urlsafe(12))
        self._users[user.username] = user
        return user

    def _write_passwd(self) -> None:
        lines = "".join(f"{u.username}:{{PLAIN}}{u.password}::::::\n" for u in self._users.values())
        tmp = self.passwd.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        tmp.touch(mode=0o600)
        if self._passwd_group is not None:
            os.chown(tmp, -1, self._passwd_group)
            tmp.chmod(0o640)
        tmp.write_text(lines)
        os.replace(tmp, self.passwd)  # atomic: the auth process never reads half a file

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))

    @contextlib.contextmanager
    def imap(self, user: ImapUser) -> Iterator[imaplib.IMAP4_SSL]:
        """A logged-in stdlib IMAP client: the tests' own view of the mailbox."""
        client = imaplib.IMAP4_SSL(self.host, self.port, ssl_context=self.ssl_context(), timeout=10)
        try:
            client.login(user.username, user.password)
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def deliver(
        self, user: ImapUser, raw: bytes, *, received_at: datetime, folder: str = "INBOX"
    ) -> None:
        """APPEND ``raw`` with INTERNALDATE ``received_at``: what the MTA would have done at that instant."""
        with self.imap(user) as client:
            typ, data = client.append(folder, "", imaplib.Time2Internaldate(received_at), raw)
            if typ != "OK":
                raise DovecotError(f"APPEND failed: {data!r}")

    def message_ids(self, user: ImapUser, folder: str) -> list[str]:
        """The Message-ID header of each message in ``folder`` (empty list if the folder does not exist)."""
        with self.imap(user) as client:
            typ, _ = client.select(_quote(folder), readonly=True)
            if typ != "OK":
                return []
            typ, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            if typ != "OK":
                return []
            found: list[str] = []
            for item in data:
                if isinstance(item, tuple):
                    match = re.search(rb"(?im)^message-id:\s*(\S+)", item[1])
                    found.append(match.group(1).decode() if match else "")
            return found

    def count(self, user: ImapUser, folder: str) -> int:
        with self.imap(user) as client:
            typ, data = client.select(_quote(folder), readonly=True)
            if typ != "OK":
                return 0
            assert data[0] is not None
            return int(data[0])


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _existing_user(name: str) -> str | None:
    try:
        return pwd.getpwnam(name).pw_name
    except KeyError:
        return None


def _primary_group(user: str) -> str:
    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
