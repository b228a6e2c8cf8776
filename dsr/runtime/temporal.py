"""Connecting to Temporal: one client factory, always with the encryption codec."""

from __future__ import annotations

from collections.abc import Mapping

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from dsr.config.settings import Settings, TemporalTls
from dsr.store.codec import data_converter
from dsr.store.crypto import KeyRing
from workflows import search_attributes as sa


async def connect(settings: Settings, keyring: KeyRing) -> Client:
    """A client whose payloads (inputs, results, summaries, failures) are encrypted with ``keyring``.

    Over TLS when the settings say so (``TEMPORAL_TLS*``), with Temporal Cloud's API key when one is set
    (``TEMPORAL_API_KEY``, from the environment or ``secrets.env``).
    """
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(keyring),
        tls=tls_config(settings.temporal_tls),
        api_key=settings.secret("TEMPORAL_API_KEY"),
    )


def tls_config(tls: TemporalTls | None) -> TLSConfig | bool:
    """The SDK's TLS options from the settings; False: plaintext."""
    if tls is None:
        return False
    return TLSConfig(
        client_cert=tls.client_cert.read_bytes() if tls.client_cert else None,
        client_private_key=tls.client_key.read_bytes() if tls.client_key else None,
        server_root_ca_cert=tls.server_ca.read_bytes() if tls.server_ca else None,
        domain=tls.server_name,
    )


_INDEXED_TYPES: Mapping[str, IndexedValueType.ValueType] = {
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
}


async def register_search_attributes(client: Client) -> None:
    """Add the engine's search attributes if missing (the time-skipping server and new clusters).

    ``dsr up`` registers them on the command line of the dev server instead.
    """
    try:
        existing = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        )
        known = set(existing.custom_attributes)
    except RPCError as err:
        if err.status != RPCStatusCode.UNIMPLEMENTED:  # the time-skipping server cannot list them
            raise
        known = set()
    missing = {
        key.name: _INDEXED_TYPES[type_name]
        for key, type_name in sa.TEMPORAL_TYPE_NAMES.items()
        if key.name not in known
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=client.namespace, search_attributes=missing)
        )
