"""The one place a process wires the engine's parts from its settings.

Every entry point (``python worker.py`` and ``dsr worker``, ``dsr intake``, ``dsr up`` and each CLI verb) gets its
settings, key ring, ledger, object storage, export and attachment stores, connectors and Temporal client from a
:class:`Deployment`: built the same way everywhere, each at most once per process, and closed in one place.
Nothing is opened before it is first asked for, so a verb that reads the ledger never connects to Temporal
and a verb that talks to Temporal never opens the ledger.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING

from dsr.config.settings import Settings
from dsr.store.crypto import KeyRing

# Imported where first used, not here: a verb that reads the ledger (`dsr due`, `dsr history`) starts in a
# fraction of the time when it does not load the Temporal SDK, the connectors and the object storage's clients.
if TYPE_CHECKING:
    from temporalio.client import Client

    from connectors.base import Connector
    from connectors.http import SharedWindows
    from dsr.store import ObjectStore
    from dsr.store.attachments import AttachmentStore
    from dsr.store.exports import ExportStore
    from dsr.store.ledger import Ledger

__all__ = ["Deployment", "configured_connectors"]


def configured_connectors(settings: Settings, env: Mapping[str, str] | None = None, *,
                          shared: SharedWindows | None = None) -> list[Connector]:
    """The connectors of ``dsr.toml``, with their secrets from the environment (or ``secrets.env``); ``shared``
    keeps their rate limits in windows every worker shares."""
    from connectors.config import build_connectors, load_config

    return build_connectors(load_config(settings.config_file), settings.connector_environment(env), shared=shared)


class Deployment:
    """One deployment's parts, as this process reaches them: built on first use, then shared.

    ``Deployment.from_env()`` reads the settings (:class:`~dsr.config.settings.ConfigError` if they are wrong) and
    the key ring (:class:`~dsr.store.crypto.KeyRingError`); the rest raises its own errors when first used:
    the ledger :class:`~dsr.store.ledger.LedgerUnavailableError` or ``ValueError`` (a malformed URL), the storage
    :class:`~dsr.store.StorageError` (from :meth:`check_storage`), Temporal ``RuntimeError``. ``close()`` (or
    ``async with``) closes what was opened.
    """

    def __init__(self, settings: Settings, keyring: KeyRing) -> None:
        self.settings = settings
        self.keyring = keyring
        self._client: Client | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, create_keys: bool = False) -> Deployment:
        """The parts of ``settings``. Only ``dsr up`` passes ``create_keys``: see :meth:`KeyRing.from_settings`."""
        return cls(settings, KeyRing.from_settings(settings, create=create_keys))

    @classmethod
    def from_env(cls) -> Deployment:
        """The parts of the settings in the environment (``DSR_*``, ``TEMPORAL_*``, ``DSR_HOME/secrets.env``)."""
        return cls.from_settings(Settings.from_env())

    @cached_property
    def ledger(self) -> Ledger:
        """The ledger (requests, audit events, the intake's shared counters), its tables created if missing."""
        from dsr.store.ledger import Ledger

        return Ledger(self.settings.database_url, self.keyring)

    @cached_property
    def objects(self) -> ObjectStore:
        """The object storage of ``DSR_STORAGE_URL`` (not yet checked: see :meth:`check_storage`)."""
        from dsr.store import open_store

        return open_store(self.settings)

    @cached_property
    def exports(self) -> ExportStore:
        """Exported records and bundles, sealed with the key ring."""
        from dsr.store.exports import ExportStore

        return ExportStore(self.objects, self.keyring)

    @cached_property
    def attachments(self) -> AttachmentStore:
        """Files that came with email requests (ID copies), sealed with the key ring."""
        from dsr.store.attachments import AttachmentStore

        return AttachmentStore(self.objects, self.keyring)

    async def check_storage(self) -> None:
        """Fail early with :class:`~dsr.store.StorageError` (``s3://bucket/prefix/: check refused (403)``) rather
        than in activities later."""
        await asyncio.to_thread(self.objects.check)

    async def client(self) -> Client:
        """The Temporal client of the settings, every payload encrypted with the key ring; connected once."""
        if self._client is None:
            from dsr.runtime.temporal import connect

            self._client = await connect(self.settings, self.keyring)
        return self._client

    def connectors(self, env: Mapping[str, str] | None = None) -> list[Connector]:
        """New connectors from ``dsr.toml`` (the caller closes them: ``await connector.aclose()``).

        The vendors' rate limits are per account: every worker counts in the same windows, in the ledger's
        database (:meth:`~dsr.store.guards.Guards.reserve`), so two workers never send more than one may."""
        from dsr.store.guards import Guards

        return configured_connectors(self.settings, env, shared=Guards(self.ledger.engine, self.keyring))

    def close(self) -> None:
        """Close what was opened (the ledger's connections); the Temporal client needs no closing."""
        if "ledger" in self.__dict__:
            self.ledger.close()

    async def __aenter__(self) -> Deployment:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self.close()
