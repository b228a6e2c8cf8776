"""The HTTP connectors verify vendors' certificates with one TLS context per process (``connectors.http.tls_context``),
which httpx would otherwise build again for each client."""

from __future__ import annotations

import ssl

from connectors.http import tls_context
from connectors.hubspot import HubSpotConnector
from connectors.woocommerce import WooCommerceConnector


async def test_every_http_connector_verifies_vendors_with_one_shared_context() -> None:
    context = tls_context()
    assert context is tls_context()
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 100  # a CA bundle (certifi's) is loaded, not an empty store

    connectors: list[HubSpotConnector | WooCommerceConnector] = [
        HubSpotConnector(token="pat-na1-test", base_url="https://api.hubapi.com"),
        *(WooCommerceConnector(f"shop{n}", consumer_key="ck_test", consumer_secret="cs_test",
                               base_url=f"https://shop{n}.example") for n in (1, 2)),
    ]
    try:
        for connector in connectors:
            # httpx's pool holds the context its connections are wrapped with.
            assert connector._client._transport._pool._ssl_context is context, connector.name  # type: ignore[attr-defined]
    finally:
        for connector in connectors:
            await connector.aclose()
