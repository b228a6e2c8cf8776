"""The one exception tree: every error the core raises on purpose is a DsrError, in its family, and is still the
built-in error it was before (so no except clause written against the built-in changed what it catches)."""

from __future__ import annotations

import inspect
import pkgutil
from importlib import import_module

import pytest

import connectors
import dsr
import intake
from connectors.base import ConnectorError as ReExported
from connectors.config import ConfigFileError
from dsr.cli.common import UserError
from dsr.config.profile import ProfileError
from dsr.config.settings import ConfigError
from dsr.errors import (
    ConfigurationError,
    ConflictError,
    ConnectorError,
    CryptoError,
    DsrError,
    InvalidInputError,
    NotFoundError,
    PermanentConnectorError,
    StoreError,
    TransientConnectorError,
    UnavailableError,
)
from dsr.mail.bundle import BundleError
from dsr.mail.replies import IncompleteProfileError
from dsr.runtime.codec_server import CodecTokenError
from dsr.runtime.stack import StackError
from dsr.store import ObjectExists, ObjectNotFound, StorageError
from dsr.store.attachments import AttachmentLimitError
from dsr.store.crypto import (
    DecryptionError,
    ForeignPayloadError,
    KeyRingError,
    UnencryptedPayloadError,
    UnknownKeyError,
)
from dsr.store.ledger import LedgerUnavailableError, UnknownRequestError
from dsr.store.links import InvalidLink
from dsr.web.body import BodyTooLarge
from intake.email.mimescan import MessageTooComplex
from intake.email.settings import MailboxConnectionError, MailboxError
from intake.service import IntakeUnavailable, RateLimited, RequestClosed
from intake.submission import SubmissionError
from intake.web.pages import FormRefused
from sandbox.demo import DemoError

TREE = [
    # (class, family, the built-in it was before the tree, or None)
    (ConfigError, ConfigurationError, ValueError),
    (ConfigFileError, ConfigurationError, ValueError),
    (ProfileError, ConfigurationError, ValueError),
    (IncompleteProfileError, ConfigurationError, ValueError),
    (CodecTokenError, ConfigurationError, ValueError),
    (StackError, ConfigurationError, RuntimeError),
    (DemoError, ConfigurationError, RuntimeError),
    (UserError, InvalidInputError, None),
    (AttachmentLimitError, InvalidInputError, ValueError),
    (InvalidLink, InvalidInputError, ValueError),
    (BodyTooLarge, InvalidInputError, None),
    (UnknownRequestError, NotFoundError, LookupError),
    (ObjectNotFound, NotFoundError, FileNotFoundError),
    (ObjectExists, ConflictError, FileExistsError),
    (StorageError, StoreError, OSError),
    (LedgerUnavailableError, StoreError, RuntimeError),
    (KeyRingError, CryptoError, ValueError),
    (UnknownKeyError, KeyRingError, ValueError),
    (DecryptionError, KeyRingError, ValueError),
    (UnencryptedPayloadError, DecryptionError, ValueError),
    (ForeignPayloadError, DecryptionError, ValueError),
    (BundleError, DecryptionError, ValueError),
    (TransientConnectorError, ConnectorError, None),
    (PermanentConnectorError, ConnectorError, None),
    (SubmissionError, InvalidInputError, ValueError),
    (MessageTooComplex, InvalidInputError, ValueError),
    (RateLimited, ConflictError, None),
    (RequestClosed, ConflictError, None),
    (IntakeUnavailable, UnavailableError, RuntimeError),
    (MailboxError, UnavailableError, None),
    (MailboxConnectionError, MailboxError, None),
    (FormRefused, InvalidInputError, None),
]


@pytest.mark.parametrize(("error", "family", "builtin"), TREE, ids=[e.__name__ for e, _, _ in TREE])
def test_each_error_sits_in_its_family_and_keeps_its_builtin(error: type, family: type, builtin: type | None) -> None:
    assert issubclass(error, family)
    assert issubclass(error, DsrError)
    if builtin is not None:
        assert issubclass(error, builtin)


def test_the_families_are_apart() -> None:
    families = [ConfigurationError, InvalidInputError, NotFoundError, ConflictError, StoreError, CryptoError,
                ConnectorError, UnavailableError]
    for family in families:
        assert family.__bases__ == (DsrError,)
    # The profile is configuration, not a connector's file: catching one no longer catches the other.
    assert not issubclass(ProfileError, ConfigFileError)
    assert not issubclass(ProfileError, ConnectorError)
    # Storage failures are not "not found": a missing object is not an unreachable store.
    assert not issubclass(ObjectNotFound, StorageError)


def test_connectors_reexport_the_trees_connector_errors() -> None:
    assert ReExported is ConnectorError


def test_every_error_class_of_the_core_and_the_connectors_is_in_the_tree() -> None:
    """A new exception class in dsr/, connectors/ or intake/ must join the tree (or be listed here with a reason)."""
    outside: list[str] = []
    for package in (dsr, connectors, intake):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if info.name == "dsr.cli.main":
                continue  # the Typer app; nothing of its own
            if info.name == "dsr.migrations.env" or info.name.startswith("dsr.migrations.versions."):
                continue  # Alembic's scripts: run by Alembic with its context, never imported; they define no class
            module = import_module(info.name)
            for name, value in inspect.getmembers(module, inspect.isclass):
                if value.__module__ != module.__name__ or not issubclass(value, BaseException):
                    continue
                if name.startswith("_"):
                    continue  # module-internal control flow (connectors.stripe._Unsupported), never leaves it
                if not issubclass(value, DsrError):
                    outside.append(f"{module.__name__}.{name}")
    assert outside == []
