"""Reaching a Temporal cluster over TLS (a self-hosted cluster with a private CA, or Temporal Cloud with mTLS).

A real TLS endpoint: a TLS-terminating proxy on 127.0.0.1, requiring a client certificate signed by a test CA,
in front of a real Temporal server; the engine's own ``connect`` is what is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dsr.config.settings import ConfigError, Settings
from dsr.runtime.temporal import connect
from tests.harness import TEST_KEYRING
from tests.servers import start_time_skipping_server


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
                 issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
                 server: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("temporal.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


class TlsFront:
    """A TLS-terminating TCP proxy (HTTP/2 by ALPN, as gRPC wants) requiring a client certificate of the CA."""

    def __init__(self, folder: Path, backend: str) -> None:
        self.folder = folder
        self.backend_host, port = backend.rsplit(":", 1)
        self.backend_port = int(port)
        ca_key = _key()
        ca = _certificate("dsr test CA", ca_key, None, ca_key, ca=True)
        server_key, client_key = _key(), _key()
        files = {
            "ca.pem": _pem(ca),
            "server.pem": _pem(_certificate("temporal.test", server_key, ca, ca_key, server=True)),
            "server.key": _pem_key(server_key),
            "client.pem": _pem(_certificate("dsr-worker", client_key, ca, ca_key)),
            "client.key": _pem_key(client_key),
        }
        for name, content in files.items():
            (folder / name).write_bytes(content)
            (folder / name).chmod(0o600)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(folder / "ca.pem"))
        self.context.load_cert_chain(folder / "server.pem", folder / "server.key")
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.set_alpn_protocols(["h2"])
        self.server: asyncio.Server | None = None
        self.handshakes = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.backend_host, self.backend_port)
        except OSError:
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            with contextlib.suppress(Exception):
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)


@pytest_asyncio.fixture
async def tls_front(tmp_path: Path) -> AsyncIterator[tuple[TlsFront, int]]:
    env = await start_time_skipping_server(None, search_attributes=False)
    front = TlsFront(tmp_path, env.client.service_client.config.target_host)
    try:
        yield front, await front.start()
    finally:
        await front.stop()
        await env.shutdown()


def _settings(tmp_path: Path, port: int, **env: str) -> Settings:
    return Settings.from_env({"DSR_HOME": str(tmp_path / "home"), "TEMPORAL_ADDRESS": f"127.0.0.1:{port}", **env})


async def test_mutual_tls_with_a_private_ca_reaches_the_cluster(tmp_path: Path, tls_front: tuple[TlsFront, int],
                                                                ) -> None:
    front, port = tls_front
    settings = _settings(tmp_path, port, TEMPORAL_TLS_CA=str(tmp_path / "ca.pem"),
                         TEMPORAL_TLS_CERT=str(tmp_path / "client.pem"), TEMPORAL_TLS_KEY=str(tmp_path / "client.key"))
    client = await connect(settings, TEST_KEYRING)
    assert await client.service_client.check_health()
    assert front.handshakes >= 1


async def test_without_the_client_certificate_the_cluster_is_not_reached(
    tmp_path: Path, tls_front: tuple[TlsFront, int]
) -> None:
    _, port = tls_front
    settings = _settings(tmp_path, port, TEMPORAL_TLS_CA=str(tmp_path / "ca.pem"))
    with pytest.raises(RuntimeError):
        client = await asyncio.wait_for(connect(settings, TEST_KEYRING), 30)
        await client.service_client.check_health()


async def test_plaintext_settings_do_not_speak_tls(tmp_path: Path, tls_front: tuple[TlsFront, int]) -> None:
    _, port = tls_front
    with pytest.raises(RuntimeError):
        client = await asyncio.wait_for(connect(_settings(tmp_path, port), TEST_KEYRING), 30)
        await client.service_client.check_health()


@pytest.mark.parametrize(("env", "message"), [
    ({"TEMPORAL_TLS_CERT": "/nonexistent/client.pem", "TEMPORAL_TLS_KEY": "/nonexistent/client.key"},
     "TEMPORAL_TLS_CERT must name a readable PEM file"),
    ({"TEMPORAL_TLS": "maybe"}, "TEMPORAL_TLS must be true or false"),
])
def test_bad_tls_settings_name_the_variable(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"DSR_HOME": str(tmp_path), **env})


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "client.pem").write_text("x")
    with pytest.raises(ConfigError, match="TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together"):
        Settings.from_env({"DSR_HOME": str(tmp_path), "TEMPORAL_TLS_CERT": str(tmp_path / "client.pem")})


def test_an_api_key_turns_tls_on(tmp_path: Path) -> None:
    settings = Settings.from_env({"DSR_HOME": str(tmp_path), "TEMPORAL_API_KEY": "key"})
    assert settings.temporal_tls is not None and settings.temporal_tls.client_cert is None
    assert Settings.from_env({"DSR_HOME": str(tmp_path)}).temporal_tls is None
