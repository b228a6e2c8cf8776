"""Settings, read once from the environment. Every setting is listed in the README.

Settings are plain environment variables so the same worker image runs locally (``dsr up``) and in
production. A bad value raises :class:`ConfigError` naming the variable and what was expected.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from dsr.domain.model import TASK_QUEUE, ClockPolicy, IdentityMethod, Language, RequestPolicy, is_valid_email
from dsr.errors import ConfigurationError

E = TypeVar("E")


class ConfigError(ConfigurationError, ValueError):
    """A setting is missing or malformed; the message names the variable and the expected value."""


DEFAULT_COUNTRY = "FR"
"""Default of ``DSR_COUNTRY``: public holidays (Regulation 1182/71) of France."""

WORKFLOW_CACHE = 1000
"""Default of ``DSR_WORKFLOW_CACHE``, the SDK's own. bench/idle.py, 1,000 requests waiting for identity: the worker
grew 455 MB with a cache of 1,000 (about 0.45 MB per cached request) and 127 MB with 100, but a request evicted
is replayed from its history when it wakes (querying all 1,000 took 4.2 s against 134 s on a loaded machine).
A thousand requests open per worker is a large controller; lower it where memory is the tighter limit."""


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


_AUTHSERV_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def _authserv_id(env: Mapping[str, str]) -> str | None:
    """``DSR_MAIL_AUTHSERV_ID``: a host name-like token (RFC 8601 authserv-id as servers write it)."""
    raw = (env.get("DSR_MAIL_AUTHSERV_ID") or "").strip()
    if not raw:
        return None
    if not _AUTHSERV_ID.fullmatch(raw):
        raise ConfigError(f"DSR_MAIL_AUTHSERV_ID must be the authserv-id your mail server writes in "
                          f"Authentication-Results (e.g. mx.example.com), got {raw!r}")
    return raw


def _choice(env: Mapping[str, str], name: str, enum: type[E], default: E) -> E:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return enum(raw)  # type: ignore[call-arg]
    except ValueError:
        allowed = ", ".join(e.value for e in enum)  # type: ignore[attr-defined]
        raise ConfigError(f"{name} must be one of {allowed}; got {raw!r}") from None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def read_secrets_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines (``#`` comments, optional quotes); refused if others can read it."""
    if not path.exists():
        return {}
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path} holds secrets and must not be readable by others: chmod 600 {path}")
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not name.strip().replace("_", "").isalnum():
            raise ConfigError(f"{path}, line {number}: expected NAME=value")
        values[name.strip()] = value.strip().strip("'\"")
    return values


def _proxies(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Comma-separated IP addresses or networks (CIDR), normalised; ``*`` is refused: trusting everyone would
    let any client pick its own address."""
    found: list[str] = []
    for item in env.get(name, "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(
                f"{name} must list IP addresses or networks of your reverse proxies (e.g. 10.0.0.5,10.1.0.0/16), "
                f"got {item!r}"
            ) from None
        found.append(str(network.network_address) if network.num_addresses == 1 else str(network))
    return tuple(found)


def _host(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return str(ipaddress.ip_address(raw.strip("[]")))
    except ValueError:
        raise ConfigError(
            f"{name} must be an IP address to listen on (e.g. 127.0.0.1 or 10.0.0.7), got {raw!r}"
        ) from None


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 8025
    username: str | None = None
    password: str | None = None
    use_tls: bool = False  # implicit TLS (port 465)
    start_tls: bool = False  # STARTTLS upgrade (port 587)
    timeout_seconds: int = 30


@dataclass(frozen=True)
class ImapSettings:
    """The privacy mailbox that email intake polls (IMAPS, implicit TLS, certificates verified)."""

    host: str
    port: int = 993
    username: str = ""
    folder: str = "INBOX"
    processed_folder: str = "DSR/Processed"
    rejected_folder: str = "DSR/Rejected"
    poll_seconds: int = 60
    cafile: str | None = None  # a private CA (tests, internal servers); default: the system's
    # The authserv-id of the server that receives the privacy mailbox's mail: only its Authentication-Results
    # headers (RFC 8601) are believed; None: senders are not checked, and operators are told so.
    authserv_id: str | None = None
    # Where the SMTP relay files a copy of every message it accepts (Gmail, Microsoft 365: the sending account's
    # Sent folder); searched by Message-ID when a worker was lost after the DATA. None: not searched.
    sent_folder: str | None = None


@dataclass(frozen=True)
class TemporalTls:
    """How workers and clients reach a Temporal cluster over TLS: a self-hosted cluster with a private CA, or
    Temporal Cloud (mTLS with a client certificate, or an API key, which TLS always carries)."""

    client_cert: Path | None = None  # PEM; with client_key: mutual TLS
    client_key: Path | None = None
    server_ca: Path | None = None  # PEM of a private CA; default: the system's roots
    server_name: str | None = None  # the name the server's certificate carries, when not the address's host


def _temporal_tls(env: Mapping[str, str]) -> TemporalTls | None:
    paths: dict[str, Path | None] = {}
    for name in ("TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY", "TEMPORAL_TLS_CA"):
        raw = env.get(name, "").strip()
        path = Path(raw).expanduser() if raw else None
        if path is not None and not path.is_file():
            raise ConfigError(f"{name} must name a readable PEM file, got {raw!r}")
        paths[name] = path
    if (paths["TEMPORAL_TLS_CERT"] is None) != (paths["TEMPORAL_TLS_KEY"] is None):
        raise ConfigError("TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together (a client certificate and its key)")
    server_name = env.get("TEMPORAL_TLS_SERVER_NAME", "").strip() or None
    wanted = _bool(env, "TEMPORAL_TLS", False) or bool(env.get("TEMPORAL_API_KEY", "").strip()) or any(
        paths.values()) or server_name is not None
    if not wanted:
        return None
    return TemporalTls(client_cert=paths["TEMPORAL_TLS_CERT"], client_key=paths["TEMPORAL_TLS_KEY"],
                       server_ca=paths["TEMPORAL_TLS_CA"], server_name=server_name)


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_tls: TemporalTls | None = None  # None: plaintext (the local dev server, a cluster's private network)
    task_queue: str = TASK_QUEUE
    # Workflows a worker keeps in memory between their tasks (the SDK's cache; evicted ones are replayed from
    # their history when they next wake). A request sleeps for weeks between a few tasks: see bench/idle.py.
    workflow_cache: int = WORKFLOW_CACHE
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    smtp_configured: bool = False  # False: `dsr up` runs its own SMTP sink writing to DSR_HOME/outbox
    mail_from: str = "privacy@localhost"
    mail_domain: str = "localhost"  # right-hand side of Message-IDs
    controller_name: str = ""  # signs notices; empty: the templates' generic "data protection team"
    default_language: Language = Language.FR
    policy: RequestPolicy = field(default_factory=RequestPolicy)
    ui_port: int = 8233
    codec_port: int = 8234
    codec_token: str | None = None
    ui_public_url: str = ""  # where staff open the Temporal UI (links in operator notices)
    config_path: Path | None = None  # dsr.toml (connectors); default DSR_HOME/dsr.toml
    intake_port: int = 8235
    intake_host: str = "127.0.0.1"  # the address `dsr intake` listens on (another one behind a proxy elsewhere)
    trusted_proxies: tuple[str, ...] = ()  # addresses/networks whose X-Forwarded-For is believed; none by default
    public_url: str = ""  # where subjects reach the intake app (download links); default the local one
    link_days: int = 7
    # How long the one-click withdrawal link of an email works (Art. 7(3)); sealed in each link when it is issued.
    consent_link_days: int = 400
    rate_per_client_hour: int = 20  # submissions per client address per hour (API, form)
    rate_per_subject_day: int = 5  # submissions per subject address per day (every channel)
    code_max_wrong: int = 10  # wrong codes a request takes in all (/verify, /exports each), then its code is closed
    answers_per_client_hour: int = 30  # answers on /verify and on /exports per client address per hour
    answers_per_hour: int = 1000  # answers on /verify and on /exports per hour, from everyone
    zendesk_trust_authenticated: bool = False
    ticket_trust_authenticated: bool = False
    imap: ImapSettings | None = None  # email intake: None when DSR_IMAP_HOST is unset
    storage_url: str = ""  # DSR_STORAGE_URL: file:///path or s3://bucket/prefix; "" = DSR_HOME/storage

    def __post_init__(self) -> None:
        if not self.storage_url:
            object.__setattr__(self, "storage_url", (Path(self.home).absolute() / "storage").as_uri())

    def secret(self, name: str) -> str | None:
        """A secret from the environment or ``secrets.env`` (webhook secrets, API token, IMAP password)."""
        return self.connector_environment().get(name) or None

    @property
    def outbox(self) -> Path:
        return self.home / "outbox"

    @property
    def codec_token_file(self) -> Path:
        """The token `dsr up` gives its codec server (mode 0600), when ``DSR_CODEC_TOKEN`` is not set."""
        return self.home / "codec-token"

    @property
    def secrets_file(self) -> Path:
        return self.home / "secrets.env"

    def connector_environment(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """Where connector secrets are looked up: the process environment, over ``DSR_HOME/secrets.env``.

        The file (``NAME=value`` lines, mode 0600) is for hosts without a secret manager and for the
        demo, whose sandbox credentials `dsr up --demo` writes there.
        """
        merged = read_secrets_file(self.secrets_file)
        merged.update(os.environ if env is None else env)
        return merged

    @property
    def config_file(self) -> Path:
        return self.config_path or self.home / "dsr.toml"

    @property
    def key_file(self) -> Path:
        return self.home / "keys.json"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    @property
    def intake_url(self) -> str:
        return self.public_url or f"http://127.0.0.1:{self.intake_port}"

    def request_link(self, request_id: str) -> str:
        """The request's page in the Temporal UI, for operator notices."""
        base = (self.ui_public_url or self.ui_url).rstrip("/")
        return f"{base}/namespaces/{self.temporal_namespace}/workflows/{request_id}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("DSR_HOME") or Path.home() / ".dsr").expanduser()
        database_url = env.get("DSR_DATABASE_URL") or f"sqlite:///{home / 'ledger.sqlite3'}"

        operator_email = env.get("DSR_OPERATOR_EMAIL", "privacy@localhost")
        mail_from = env.get("DSR_MAIL_FROM", "privacy@localhost")
        for name, value in (("DSR_OPERATOR_EMAIL", operator_email), ("DSR_MAIL_FROM", mail_from)):
            if not is_valid_email(value) and not value.endswith("@localhost"):
                raise ConfigError(f"{name} must be an email address, got {value!r}")

        smtp_host = env.get("DSR_SMTP_HOST", "")
        smtp = SmtpSettings(
            host=smtp_host or "127.0.0.1",
            port=_int(env, "DSR_SMTP_PORT", 8025, minimum=1),
            username=env.get("DSR_SMTP_USERNAME") or None,
            password=env.get("DSR_SMTP_PASSWORD") or None,
            use_tls=_bool(env, "DSR_SMTP_TLS", False),
            start_tls=_bool(env, "DSR_SMTP_STARTTLS", False),
        )

        reminder_days = _int(env, "DSR_IDENTITY_REMINDER_DAYS", 7, minimum=1)
        timeout_days = _int(env, "DSR_IDENTITY_TIMEOUT_DAYS", 30, minimum=1)
        if timeout_days <= reminder_days:
            raise ConfigError(
                "DSR_IDENTITY_TIMEOUT_DAYS must be longer than DSR_IDENTITY_REMINDER_DAYS "
                f"({timeout_days} <= {reminder_days})"
            )
        timezone = env.get("DSR_TIMEZONE", "Europe/Paris")
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(timezone)
        except Exception:
            raise ConfigError(
                f"DSR_TIMEZONE must be an IANA time zone such as Europe/Paris, got {timezone!r}"
            ) from None
        country = env.get("DSR_COUNTRY", DEFAULT_COUNTRY).upper()
        subdiv = env.get("DSR_SUBDIVISION") or None
        if (country, subdiv) != (DEFAULT_COUNTRY, None):
            # The default needs no check; loading a calendar imports every country's (about 0.4 s, much of a
            # short CLI command), so a country alone is checked against the package's registry of codes.
            try:
                import holidays
                from holidays.registry import EntityLoader

                if subdiv is not None:
                    holidays.country_holidays(country, subdiv=subdiv)
                elif country not in set(EntityLoader.get_country_codes(include_aliases=True)):
                    raise KeyError(country)
            except (NotImplementedError, KeyError):
                raise ConfigError(
                    f"DSR_COUNTRY/DSR_SUBDIVISION: no public-holiday calendar for {country!r}/{subdiv!r}"
                ) from None

        storage_url = env.get("DSR_STORAGE_URL", "").strip()
        if storage_url:
            from dsr.store.location import parse_storage_url

            try:
                parse_storage_url(storage_url)
            except ValueError as err:
                # The value is not echoed: a malformed URL may hold a credential.
                raise ConfigError(f"DSR_STORAGE_URL: {err}") from None

        policy = RequestPolicy(
            identity=_choice(env, "DSR_IDENTITY_METHOD", IdentityMethod, IdentityMethod.EMAIL),
            clock=_choice(env, "DSR_CLOCK", ClockPolicy, ClockPolicy.RECEIPT),
            identity_reminder_after_days=reminder_days,
            identity_timeout_days=timeout_days,
            operator_email=operator_email,
            country=country,
            subdiv=subdiv,
            timezone=timezone,
            escalation_repeat_days=_int(env, "DSR_ESCALATION_REPEAT_DAYS", 7, minimum=1),
            connector_heartbeat_seconds=_int(env, "DSR_CONNECTOR_HEARTBEAT_SECONDS", 120, minimum=5),
            document_reason=" ".join(env.get("DSR_IDENTITY_DOCUMENT_REASON", "").split())[:500],
            connector_degraded_minutes=_int(env, "DSR_CONNECTOR_DEGRADED_MINUTES", 60, minimum=1),
            suppression_years=_int(env, "DSR_SUPPRESSION_YEARS", 3, minimum=1),
            restriction_lift_notice_days=_int(env, "DSR_RESTRICTION_LIFT_NOTICE_DAYS", 3, minimum=1),
        )
        return cls(
            home=home,
            database_url=database_url,
            temporal_address=env.get("TEMPORAL_ADDRESS", "127.0.0.1:7233"),
            temporal_namespace=env.get("TEMPORAL_NAMESPACE", "default"),
            temporal_tls=_temporal_tls(env),
            task_queue=env.get("DSR_TASK_QUEUE", TASK_QUEUE),
            workflow_cache=_int(env, "DSR_WORKFLOW_CACHE", WORKFLOW_CACHE, minimum=1),
            smtp=smtp,
            smtp_configured=bool(smtp_host),
            mail_from=mail_from,
            mail_domain=mail_from.rpartition("@")[2] or "localhost",
            controller_name=" ".join(env.get("DSR_CONTROLLER_NAME", "").split()),
            default_language=_choice(env, "DSR_LANGUAGE", Language, Language.FR),
            policy=policy,
            ui_port=_int(env, "DSR_UI_PORT", 8233, minimum=1),
            codec_port=_int(env, "DSR_CODEC_PORT", 8234, minimum=1),
            codec_token=env.get("DSR_CODEC_TOKEN") or None,
            ui_public_url=env.get("DSR_UI_URL", ""),
            config_path=Path(env["DSR_CONFIG"]).expanduser() if env.get("DSR_CONFIG") else None,
            intake_port=_int(env, "DSR_INTAKE_PORT", 8235, minimum=1),
            intake_host=_host(env, "DSR_INTAKE_HOST", "127.0.0.1"),
            trusted_proxies=_proxies(env, "DSR_TRUSTED_PROXIES"),
            public_url=env.get("DSR_PUBLIC_URL", "").rstrip("/"),
            link_days=_int(env, "DSR_LINK_DAYS", 7, minimum=1),
            consent_link_days=_int(env, "DSR_CONSENT_LINK_DAYS", 400, minimum=1, maximum=3650),
            rate_per_client_hour=_int(env, "DSR_RATE_PER_CLIENT_HOUR", 20, minimum=1),
            rate_per_subject_day=_int(env, "DSR_RATE_PER_SUBJECT_DAY", 5, minimum=1),
            code_max_wrong=_int(env, "DSR_CODE_MAX_WRONG", 10, minimum=1),
            answers_per_client_hour=_int(env, "DSR_ANSWERS_PER_CLIENT_HOUR", 30, minimum=1),
            answers_per_hour=_int(env, "DSR_ANSWERS_PER_HOUR", 1000, minimum=1),
            zendesk_trust_authenticated=_bool(env, "DSR_ZENDESK_TRUST_AUTHENTICATED", False),
            ticket_trust_authenticated=_bool(env, "DSR_TICKET_TRUST_AUTHENTICATED", False),
            imap=ImapSettings(
                host=env["DSR_IMAP_HOST"],
                port=_int(env, "DSR_IMAP_PORT", 993, minimum=1),
                username=env.get("DSR_IMAP_USERNAME", ""),
                folder=env.get("DSR_IMAP_FOLDER") or "INBOX",
                processed_folder=env.get("DSR_IMAP_PROCESSED_FOLDER") or "DSR/Processed",
                rejected_folder=env.get("DSR_IMAP_REJECTED_FOLDER") or "DSR/Rejected",
                poll_seconds=_int(env, "DSR_IMAP_POLL_SECONDS", 60, minimum=5),
                cafile=env.get("DSR_IMAP_CAFILE") or None,
                authserv_id=_authserv_id(env),
                sent_folder=env.get("DSR_IMAP_SENT_FOLDER") or None,
            ) if env.get("DSR_IMAP_HOST") else None,
            storage_url=storage_url,
        )
