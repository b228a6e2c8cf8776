"""``dsr.toml``: which systems hold personal data, and how to reach them.

Secrets never sit in the file: it names the environment variables that hold them. A malformed file is
reported with the file, the key and what was expected.

```toml
[[connectors]]
type = "hubspot"                       # hubspot | stripe | woocommerce | sql | processor | manual
name = "crm"                           # unique, shown to operators (default: the type)
base_url = "https://api.hubapi.com"    # default: the vendor's real API (required for woocommerce)
kinds = ["access", "erasure", "rectification", "portability"]   # default: all four
credentials = { token = "HUBSPOT_TOKEN" }
rate_limit = { requests = 100, per_seconds = 10 }
timeout_seconds = 30

[[connectors.retention]]               # kept (anonymised or as is) instead of deleted
dataset = "orders"
legal_basis = "Art. 17(3)(b) GDPR; Code de commerce L123-22"
years = 10
```

A processor reached by email, and a system only a person acts on (connectors/outside.py):

```toml
[[connectors]]
type = "processor"
name = "chat-tool"
contact = "privacy@chat-tool.example"  # its privacy contact (Art. 28(3)(e))
language = "en"                        # of the emails to it: fr | en
answer_within_days = 10                # the date we need the answer by (before our own deadline)
reminder_days = [3, 1]                 # reminders, days before that date

[[connectors]]
type = "manual"
name = "backups"
owner = "backup-admin@company.example" # the internal owner who answers
```
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connectors.base import Connector, RetentionRule, month_day
from connectors.http import RateLimiter, SharedWindows, with_margin
from connectors.outside import OutsideSystem
from connectors.sql.map import SqlMap, SqlMapError, SubjectConfig, TableConfig, resolve
from dsr.domain.model import CANONICAL_FIELDS, ConsentAction, Language, RequestKind, is_valid_email
from dsr.domain.outside import OUTSIDE_TYPES
from dsr.errors import ConfigurationError

ConnectorType = Literal["hubspot", "stripe", "woocommerce", "sql", "processor", "manual"]

CREDENTIALS: dict[str, dict[str, str]] = {
    "hubspot": {"token": "the HubSpot private-app token"},
    "stripe": {"api_key": "the Stripe secret key"},
    "woocommerce": {"consumer_key": "the WooCommerce consumer key",
                    "consumer_secret": "the WooCommerce consumer secret"},
    "sql": {},  # url_env and hash_key_env name its secrets
    "processor": {},  # no secret: answered through the signed answer page
    "manual": {},
}
DEFAULT_BASE_URL = {"hubspot": "https://api.hubapi.com", "stripe": "https://api.stripe.com"}
# The vendors' documented limits: HubSpot 100 per 10 s (Free/Starter), Stripe 25/s in test mode.
DEFAULT_RATE = {"hubspot": (100, 10.0), "stripe": (25, 1.0), "woocommerce": (20, 1.0), "sql": (1000, 1.0),
                "processor": (1000, 1.0), "manual": (1000, 1.0)}
HUBSPOT_SEARCH_RATE = (4, 1.25)
"""HubSpot's CRM search allows 5 requests per second per account: 4 per 1.25 s leaves the margin."""


class ConfigFileError(ConfigurationError, ValueError):
    """The configuration file is missing, unreadable or malformed; the message says where and why."""


class RateLimitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: int = Field(ge=1, description="Calls allowed per window.")
    per_seconds: float = Field(gt=0, description="Length of the window, in seconds.")


class RetentionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str = Field(min_length=1, description="Dataset kept instead of deleted, e.g. orders.")
    legal_basis: str = Field(min_length=1, description="Why it is kept (told to the subject).")
    years: int = Field(default=10, ge=1, le=100, description="How many years it is kept.")
    counted_from: Literal["record", "financial_year_end"] = Field(
        default="record", description="From the record's date, or from the close of its financial year "
                                      "(accounting records, Code de commerce L123-22).")
    financial_year_end: str = Field(default="12-31", description="Closing day of the financial year, MM-DD.")

    @field_validator("financial_year_end")
    @classmethod
    def _a_day_of_the_year(cls, value: str) -> str:
        month_day(value)  # the rule's own check, so a file that loads builds its connectors
        return value


class MarketingAction(BaseModel):
    """``[connectors.marketing]`` of an sql connector: the rows of ``table`` whose ``email`` column is the address
    are deleted, or, with ``set``, given those values (``{ marketing_opt_in = "false" }``)."""

    model_config = ConfigDict(extra="forbid")
    table: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
    email: str = Field(default="email", pattern=r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
    set: dict[str, str] = Field(default_factory=dict)

    @field_validator("set")
    @classmethod
    def _columns(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,62}", name):
                raise ValueError(f"{name!r} is not a column name")
        return value


class ConnectorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: ConnectorType
    name: str = Field(default="", pattern=r"^$|^[a-z0-9][a-z0-9_-]{0,39}$",
                      description="Unique lower-case name shown to operators; defaults to the type.")
    base_url: str | None = Field(default=None, pattern=r"^https?://", description="API root.")
    kinds: list[RequestKind] = Field(default_factory=lambda: list(RequestKind), min_length=1)
    credentials: dict[str, str] = Field(default_factory=dict,
                                        description="Names of environment variables holding secrets.")
    rate_limit: RateLimitConfig | None = None
    timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    retention: list[RetentionConfig] | None = None
    # type = "sql" only: the application database and its map (connectors/sql/map.py)
    url_env: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
                                description="Environment variable holding the database URL (SQLAlchemy).")
    hash_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
                                     description="Environment variable holding the key of hashed columns.")
    batch_size: int = Field(default=500, ge=1, le=10_000, description="Rows per fetch, per erasure transaction.")
    subject: SubjectConfig | None = None
    tables: list[TableConfig] | None = None
    rectify: dict[str, str | list[str]] = Field(default_factory=dict,
                                                description="Canonical field -> table.column (or a list).")
    marketing: MarketingAction | None = Field(
        default=None, description="sql: how an objection to direct marketing stops it in this database (rows of "
                                  "a table with the address deleted, or given values).")
    restriction: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*$",
                                    description="table.column of a nullable timestamp marking a restricted "
                                                "subject (Art. 18), e.g. users.restricted_at.")
    # type = "processor" / "manual" only: who answers, in which language, by when (connectors/outside.py)
    contact: str | None = Field(default=None, description="processor: its privacy contact's email address.")
    owner: str | None = Field(default=None, description="manual: the internal owner's email address.")
    language: Language | None = Field(default=None, description="Language of the emails to them (fr | en).")
    answer_within_days: int | None = Field(default=None, ge=1, le=60,
                                           description="Days from the first email to the answer-by date.")
    reminder_days: list[int] | None = Field(default=None, max_length=5,
                                            description="Reminders, days before the answer-by date.")
    label: str | None = Field(default=None, max_length=80, description="How the emails name the system.")

    @field_validator("credentials")
    @classmethod
    def _names_not_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        for key, env_name in value.items():
            if not env_name.replace("_", "").isalnum() or not env_name[0].isalpha():
                raise ValueError(f"{key} must name an environment variable (e.g. HUBSPOT_TOKEN), not hold a secret")
        return value

    @property
    def display_name(self) -> str:
        return self.name or self.type


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    connectors: list[ConnectorConfig] = Field(default_factory=list)
    controller: dict[str, Any] | None = None  # the controller profile, validated by dsr.config.profile


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_config(text: str, *, source: str = "dsr.toml") -> EngineConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigFileError(f"{source}: not valid TOML ({err})") from None
    try:
        config = EngineConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = _location(tuple(first["loc"])) or "(top level)"
        raise ConfigFileError(f"{source}: {where}: {first['msg']}") from None
    names: set[str] = set()
    for index, connector in enumerate(config.connectors):
        where = f"{source}: connectors[{index}]"
        if connector.display_name in names:
            raise ConfigFileError(f"{where}.name: {connector.display_name!r} is used twice; names must be unique")
        names.add(connector.display_name)
        expected = CREDENTIALS[connector.type]
        missing = [k for k in expected if k not in connector.credentials]
        unknown = [k for k in connector.credentials if k not in expected]
        if missing:
            k = missing[0]
            raise ConfigFileError(f"{where}.credentials.{k}: missing; expected the name of the environment "
                                  f"variable holding {expected[k]}")
        if unknown:
            raise ConfigFileError(f"{where}.credentials.{unknown[0]}: unknown for {connector.type}; "
                                  f"expected {', '.join(expected)}")
        if connector.type == "woocommerce" and not connector.base_url:
            raise ConfigFileError(f"{where}.base_url: required for woocommerce (the shop's address)")
        outside_keys = [k for k in OUTSIDE_KEYS if getattr(connector, k) is not None]
        if connector.type in OUTSIDE_TYPES:
            _check_outside(connector, where)
        elif outside_keys:
            raise ConfigFileError(f"{where}.{outside_keys[0]}: only for type = \"processor\" or \"manual\"")
        sql_keys = [k for k in ("url_env", "hash_key_env", "subject", "tables") if getattr(connector, k)]
        sql_keys += ["rectify"] if connector.rectify else []
        sql_keys += ["marketing"] if connector.marketing else []
        sql_keys += ["restriction"] if connector.restriction else []
        if connector.type != "sql":
            if sql_keys:
                raise ConfigFileError(f"{where}.{sql_keys[0]}: only for type = \"sql\"")
            continue
        if connector.retention is not None:
            raise ConfigFileError(f"{where}.retention: a sql table gives its own retention (tables[i].retention)")
        sql_map = sql_map_of(connector, where)
        if connector.restriction and connector.restriction.split(".")[0] not in {t.name for t in sql_map.tables}:
            raise ConfigFileError(f"{where}.restriction: table {connector.restriction.split('.')[0]!r} is not mapped "
                                  "in tables")
        if sql_map.uses_hash and not connector.hash_key_env:
            raise ConfigFileError(f"{where}.hash_key_env: required when a column is hashed; expected the name of "
                                  "the environment variable holding the hash key")
    return config


OUTSIDE_KEYS = ("contact", "owner", "language", "answer_within_days", "reminder_days", "label")
OUTSIDE_DEFAULTS = {"processor": (10, (3, 1)), "manual": (7, (2,))}
"""Per type: days to answer, and reminders (days before the answer-by date)."""


def _check_outside(connector: ConnectorConfig, where: str) -> None:
    """A processor names its contact, a manual system its owner; each a valid address, reminders inside the
    answering period."""
    key, other = ("contact", "owner") if connector.type == "processor" else ("owner", "contact")
    address = getattr(connector, key)
    if getattr(connector, other) is not None:
        raise ConfigFileError(f"{where}.{other}: not for type = \"{connector.type}\" (it takes {key})")
    if not address:
        raise ConfigFileError(f"{where}.{key}: missing; expected the email address that answers for "
                              f"{connector.display_name}")
    if not (is_valid_email(address) or is_valid_email(address.removesuffix("@localhost") + "@localhost.localdomain")):
        raise ConfigFileError(f"{where}.{key}: not a valid email address")
    for k in ("rate_limit", "retention", "base_url"):
        if getattr(connector, k) is not None:
            raise ConfigFileError(f"{where}.{k}: not for type = \"{connector.type}\"")
    within, _ = OUTSIDE_DEFAULTS[connector.type]
    within = connector.answer_within_days or within
    for day in connector.reminder_days or ():
        if not 1 <= day < within:
            raise ConfigFileError(f"{where}.reminder_days: {day} is not between 1 and answer_within_days - 1 "
                                  f"({within - 1})")


def outside_system_of(connector: ConnectorConfig) -> OutsideSystem:
    """The ``processor`` / ``manual`` system of a checked configuration."""
    within, reminders = OUTSIDE_DEFAULTS[connector.type]
    contact = connector.contact if connector.type == "processor" else connector.owner
    assert contact is not None  # parse_config checked it
    return OutsideSystem(
        name=connector.display_name, type=connector.type, contact=contact,
        language=connector.language or Language.EN,
        answer_within_days=connector.answer_within_days or within,
        reminder_days=tuple(sorted(set(connector.reminder_days), reverse=True))
        if connector.reminder_days is not None else reminders,
        label=connector.label or "", kinds=frozenset(connector.kinds))


def sql_map_of(connector: ConnectorConfig, where: str = "") -> SqlMap:
    """The resolved map of a ``type = "sql"`` connector; :class:`ConfigFileError` says where it is wrong."""
    where = where or f"connector {connector.display_name}"
    if not connector.url_env:
        raise ConfigFileError(f"{where}.url_env: missing; expected the name of the environment variable holding "
                              "the database URL")
    if connector.subject is None:
        raise ConfigFileError(f"{where}.subject: missing; expected {{ table = \"users\", email = \"email\" }}")
    if not connector.tables:
        raise ConfigFileError(f"{where}.tables: missing; map at least the subject's table")
    try:
        return resolve(connector.subject, connector.tables, connector.rectify)
    except SqlMapError as err:
        raise ConfigFileError(f"{where}.{err.key}: {err}") from None


def load_config(path: Path) -> EngineConfig:
    """The configuration at ``path``; a missing file means no connectors (a fresh install)."""
    if not path.exists():
        return EngineConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigFileError(f"{path}: cannot be read ({err.strerror})") from None
    return parse_config(text, source=str(path))


def _secrets(connector: ConnectorConfig, env: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    if connector.type == "sql":
        for key, env_name, what in (("url", connector.url_env, "the database URL"),
                                    ("hash_key", connector.hash_key_env, "the hash key")):
            if env_name:
                if not env.get(env_name, ""):
                    raise ConfigFileError(f"connector {connector.display_name}: environment variable {env_name} "
                                          f"({what}) is not set")
                values[key] = env[env_name]
        return values
    for key, env_name in connector.credentials.items():
        value = env.get(env_name, "")
        if not value:
            raise ConfigFileError(f"connector {connector.display_name}: environment variable {env_name} "
                                  f"({CREDENTIALS[connector.type][key]}) is not set")
        values[key] = value
    return values


def build_connector(connector: ConnectorConfig, env: Mapping[str, str], *,
                    shared: SharedWindows | None = None) -> Connector:
    """A live connector from its configuration and the secrets in ``env``.

    With ``shared`` (the worker passes the ledger database's windows), its rate limits are kept across every
    worker: the vendor's limit is per account, not per process."""
    if connector.type in OUTSIDE_TYPES:
        return outside_system_of(connector)
    secrets = _secrets(connector, env)
    requests, per_seconds = (
        (connector.rate_limit.requests, connector.rate_limit.per_seconds)
        if connector.rate_limit else DEFAULT_RATE[connector.type]
    )
    common: dict[str, Any] = {
        "kinds": frozenset(connector.kinds),
        # A margin (5% + 50 ms): the limiter stamps a call when it leaves, the vendor counts it when it arrives,
        # so a warm burst can land in the same vendor window as a slower first one.
        "rate_limit": RateLimiter(requests, with_margin(per_seconds), shared=shared, key=connector.display_name),
        "timeout": connector.timeout_seconds,
    }
    if connector.retention is not None:  # otherwise each connector's legal default
        common["retention"] = tuple(RetentionRule(r.dataset, r.legal_basis, r.years, r.counted_from,
                                                  r.financial_year_end) for r in connector.retention)
    base_url = connector.base_url or DEFAULT_BASE_URL.get(connector.type, "")
    name = connector.display_name
    match connector.type:
        case "hubspot":
            from connectors.hubspot import HubSpotConnector

            # HubSpot's search endpoints have their own, lower limit, per account too.
            search = RateLimiter(*HUBSPOT_SEARCH_RATE, shared=shared, key=f"{connector.display_name}:search")
            return HubSpotConnector(name, token=secrets["token"], base_url=base_url, search_rate_limit=search,
                                    **common)
        case "stripe":
            from connectors.stripe import StripeConnector

            return StripeConnector(name, api_key=secrets["api_key"], base_url=base_url, **common)
        case "sql":
            from connectors.sql import SqlConnector

            marketing = connector.marketing
            return SqlConnector(name, url=secrets["url"], sql_map=sql_map_of(connector),
                                hash_key=secrets.get("hash_key", ""), kinds=frozenset(connector.kinds),
                                batch_size=connector.batch_size,
                                marketing=None if marketing is None else ConsentAction(
                                    purpose="marketing", table=marketing.table, email_column=marketing.email,
                                    set_values=dict(marketing.set)),
                                restriction=connector.restriction)
        case "woocommerce":
            from connectors.woocommerce import WooCommerceConnector

            return WooCommerceConnector(name, consumer_key=secrets["consumer_key"],
                                        consumer_secret=secrets["consumer_secret"], base_url=base_url, **common)
    raise ConfigFileError(f"unknown connector type {connector.type!r}")  # pragma: no cover - Literal guards it


def rectifiable_fields(config: EngineConfig) -> frozenset[str]:
    """The canonical fields (:data:`~dsr.domain.model.CANONICAL_FIELDS`) that at least one connector taking
    rectifications can correct: what the web form offers. HubSpot has no property for some (``FIELD_MAP``), an
    application database only its map's ``rectify``; Stripe and WooCommerce hold them all, and so does any
    system a person handles. No connector configured (or none taking rectifications): all of them, so that the
    form still takes a correction for staff to apply."""
    from connectors.hubspot import FIELD_MAP

    takers = [c for c in config.connectors if RequestKind.RECTIFICATION in c.kinds]
    if not takers:
        return CANONICAL_FIELDS
    fields: set[str] = set()
    for connector in takers:
        if connector.type == "hubspot":
            fields |= set(FIELD_MAP)
        elif connector.type == "sql":
            fields |= set(connector.rectify)
        else:
            fields |= CANONICAL_FIELDS
    return frozenset(fields & CANONICAL_FIELDS)


def build_connectors(config: EngineConfig, env: Mapping[str, str], *,
                     shared: SharedWindows | None = None) -> list[Connector]:
    return [build_connector(c, env, shared=shared) for c in config.connectors]
