"""Everything that persists: the ledger's database and the object storage, and the keys that seal what they hold.

* :mod:`dsr.store.ledger` -- requests, append-only audit events, subject claims (SQLite or PostgreSQL);
* :mod:`dsr.store.guards` -- the intake's shared counters, lockouts and replay guards, beside the ledger;
* :mod:`dsr.store.crypto` -- the key ring, the payload codec, sealing and blind indexes;
* :mod:`dsr.store.links` -- signed download and identity links, and their codes;
* :mod:`dsr.store.objects` -- the :class:`ObjectStore` interface and the local-files backend;
* :mod:`dsr.store.s3` -- the S3 backend (any S3-compatible service);
* :mod:`dsr.store.exports` -- exported records (sealed chunks) and the bundle's object;
* :mod:`dsr.store.attachments` -- files that came with a request (ID copies), sealed;
* :mod:`dsr.store.journals` -- what erasures and rectifications did, across attempts.

``DSR_STORAGE_URL`` chooses the object storage's backend (:func:`open_store`). Only ciphertext is ever stored.
"""

from __future__ import annotations

from typing import Protocol

from dsr.store.location import StorageLocation, parse_storage_url
from dsr.store.objects import FileStore, ObjectExists, ObjectNotFound, ObjectReader, ObjectStore, StorageError


class StorageSettings(Protocol):
    """What :func:`open_store` reads of the settings (:class:`dsr.config.settings.Settings` has it): the store
    layer sits below the configuration and knows it by this shape only."""

    @property
    def storage_url(self) -> str: ...

__all__ = [
    "FileStore",
    "ObjectExists",
    "ObjectNotFound",
    "ObjectReader",
    "ObjectStore",
    "StorageError",
    "StorageLocation",
    "open_store",
    "parse_storage_url",
    "store_at",
]


def store_at(url: str) -> ObjectStore:
    """The object store at ``url`` (``file:///path`` or ``s3://bucket/prefix``)."""
    location = parse_storage_url(url)
    if location.scheme == "s3":
        from dsr.store.s3 import S3Store  # boto3 is imported only by those who use it

        return S3Store(location.bucket, location.prefix, options=location.options)
    assert location.path is not None
    return FileStore(location.path)


def open_store(settings: StorageSettings) -> ObjectStore:
    """The object store the settings name (``DSR_STORAGE_URL``): the one place every process builds it."""
    return store_at(settings.storage_url)
