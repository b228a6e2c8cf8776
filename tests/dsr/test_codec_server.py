"""The codec server over real HTTP: uvicorn on 127.0.0.1, an httpx client, the Web UI's CORS dance."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import DataConverter

from dsr.runtime.codec_server import MAX_BODY_BYTES, codec_app
from dsr.store.crypto import ENCODING, KEY_ID_METADATA_KEY, EncryptionCodec, KeyRing
from dsr.web.serve import RunningServer, serve_app
from tests.harness import http_client

EMAIL = "jeanne.martin@example.org"
UI = "http://127.0.0.1:8233"
TOKEN = "s3cret-codec-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing.generate()


@pytest_asyncio.fixture
async def server(ring: KeyRing) -> AsyncIterator[RunningServer]:
    running = await serve_app(codec_app(ring, allowed_origin=UI, token=TOKEN), port=0)
    try:
        yield running
    finally:
        await running.stop()


@pytest_asyncio.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(base_url=server.url, timeout=30) as client:
        yield client


def _body(payloads: list[Payload]) -> str:
    return json_format.MessageToJson(Payloads(payloads=payloads))


def _payloads(response: httpx.Response) -> list[Payload]:
    return list(json_format.Parse(response.text, Payloads()).payloads)


async def _encrypted(ring: KeyRing, value: object) -> list[Payload]:
    plain = DataConverter.default.payload_converter.to_payloads([value])
    return await EncryptionCodec(ring).encode(plain)


async def test_serves_on_loopback_and_answers_health(server: RunningServer, http: httpx.AsyncClient) -> None:
    assert server.host == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}"
    response = await http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_decodes_what_the_codec_encoded(ring: KeyRing, http: httpx.AsyncClient) -> None:
    encrypted = await _encrypted(ring, {"email": EMAIL})
    body = _body(encrypted)
    assert EMAIL not in body

    response = await http.post(
        "/decode",
        content=body,
        headers={**AUTH, "Content-Type": "application/json", "X-Namespace": "default", "Origin": UI},
    )

    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == UI
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["cache-control"] == "no-store"
    decoded = _payloads(response)
    assert DataConverter.default.payload_converter.from_payloads(decoded) == [{"email": EMAIL}]
    assert list(response.json()) == ["payloads"]


async def test_encode_then_decode_under_a_namespace_path(ring: KeyRing, http: httpx.AsyncClient) -> None:
    plain = DataConverter.default.payload_converter.to_payloads([{"email": EMAIL}, "second"])

    encoded = await http.post("/default/encode", content=_body(plain), headers=AUTH)

    assert encoded.status_code == 200, encoded.text
    assert EMAIL not in encoded.text
    encrypted = _payloads(encoded)
    assert [p.metadata["encoding"] for p in encrypted] == [ENCODING, ENCODING]
    assert encrypted[0].metadata[KEY_ID_METADATA_KEY] == ring.current_key_id.encode()
    decoded = await http.post("/default/decode", content=encoded.text, headers=AUTH)
    assert decoded.status_code == 200
    assert _payloads(decoded) == plain


async def test_plain_payloads_and_empty_lists_pass_through(http: httpx.AsyncClient) -> None:
    plain = DataConverter.default.payload_converter.to_payloads(["not secret"])
    response = await http.post("/decode", content=_body(plain), headers=AUTH)
    assert response.status_code == 200
    assert _payloads(response) == plain
    empty = await http.post("/decode", json={"payloads": []}, headers=AUTH)
    assert empty.status_code == 200
    assert empty.json() == {"payloads": []}


@pytest.mark.parametrize("origin", [UI, "http://localhost:8233"])
async def test_preflight_from_the_ui_is_allowed(http: httpx.AsyncClient, origin: str) -> None:
    response = await http.options(
        "/decode",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
        },
    )
    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] == origin
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].lower().split(",")}
    assert {"content-type", "x-namespace", "authorization"} <= allowed


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:9999", "https://127.0.0.1:8233"])
async def test_other_origins_get_no_cors_grant(ring: KeyRing, http: httpx.AsyncClient, origin: str) -> None:
    preflight = await http.options("/decode", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code >= 400
    post = await http.post("/decode", content=_body(await _encrypted(ring, EMAIL)), headers={**AUTH, "Origin": origin})
    assert "access-control-allow-origin" not in post.headers
    assert post.status_code == 403
    assert EMAIL not in post.text


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}],
)
async def test_missing_or_wrong_bearer_token_is_401(
    ring: KeyRing, http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await http.post(
        "/decode", content=_body(await _encrypted(ring, EMAIL)), headers={**headers, "Origin": UI}
    )
    assert response.status_code == 401
    assert "error" in response.json()
    assert EMAIL not in response.text
    assert response.headers["access-control-allow-origin"] == UI  # so the UI can read the error


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[]",
        b'{"payloads": {}}',
        b'{"other": []}',
        b'{"payloads": [{"data": "***not base64***"}]}',
        b'{"payloads": [{"metadata": {"encoding": 5}}]}',
        b'{"payloads": ["x"]}',
        b"\xff\xfe",
    ],
)
async def test_malformed_body_is_400_json(http: httpx.AsyncClient, body: bytes) -> None:
    for action in ("decode", "encode"):
        response = await http.post(f"/{action}", content=body, headers=AUTH)
        assert response.status_code == 400, (action, body, response.text)
        assert isinstance(response.json()["error"], str)


async def test_plaintext_is_not_echoed_in_errors(http: httpx.AsyncClient) -> None:
    body = json.dumps({"payloads": [{"metadata": {EMAIL: 5}, "data": 7}]})
    response = await http.post("/encode", content=body, headers=AUTH)
    assert response.status_code == 400
    assert EMAIL not in response.text


async def test_unknown_key_or_tampered_payload_is_400(http: httpx.AsyncClient) -> None:
    foreign = await _encrypted(KeyRing.generate("kforeign"), EMAIL)
    response = await http.post("/decode", content=_body(foreign), headers=AUTH)
    assert response.status_code == 400
    assert "kforeign" in response.json()["error"]
    assert EMAIL not in response.text
    tampered = Payload(metadata=dict(foreign[0].metadata), data=b"\x00" * 40)
    tampered.metadata[KEY_ID_METADATA_KEY] = b"nope"
    response = await http.post("/decode", content=_body([tampered]), headers=AUTH)
    assert response.status_code == 400


async def test_oversize_body_is_413(http: httpx.AsyncClient) -> None:
    big = b'{"payloads": [{"data": "' + b"A" * (MAX_BODY_BYTES + 1024) + b'"}]}'
    response = await http.post("/decode", content=big, headers=AUTH)
    assert response.status_code == 413
    assert "error" in response.json()

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is enforced while reading
        for _ in range(5):
            yield b" " * (1024 * 1024)

    response = await http.post("/decode", content=chunks(), headers=AUTH)
    assert response.status_code == 413
    assert (await http.get("/health")).status_code == 200  # still serving


async def test_unknown_paths_and_methods(http: httpx.AsyncClient) -> None:
    assert (await http.post("/other", json={"payloads": []}, headers=AUTH)).status_code == 404
    response = await http.get("/decode", headers=AUTH)
    assert response.status_code == 405
    assert "error" in response.json()


async def test_without_a_token_no_authorization_is_needed(ring: KeyRing) -> None:
    async with (
        await serve_app(codec_app(ring, allowed_origin=UI, token=None), port=0) as running,
        http_client(base_url=running.url) as client,
    ):
        response = await client.post("/decode", content=_body(await _encrypted(ring, EMAIL)))
        assert response.status_code == 200
        assert DataConverter.default.payload_converter.from_payloads(_payloads(response)) == [EMAIL]
    assert running.task.done()


async def test_stop_frees_the_port_and_a_busy_port_raises(ring: KeyRing) -> None:
    app = codec_app(ring, allowed_origin=UI, token=TOKEN)
    first = await serve_app(app, port=0)
    try:
        with pytest.raises(OSError, match="cannot listen"):
            await serve_app(app, port=first.port)
    finally:
        await first.stop()
    again = await serve_app(app, port=first.port)
    await again.stop()


def test_bad_configuration_is_refused(ring: KeyRing) -> None:
    with pytest.raises(ValueError, match="allowed_origin"):
        codec_app(ring, allowed_origin="127.0.0.1:8233", token=None)
    with pytest.raises(ValueError, match="empty"):
        codec_app(ring, allowed_origin=UI, token="")


async def test_the_token_as_first_path_segment_is_the_uis_endpoint(ring: KeyRing, http: httpx.AsyncClient) -> None:
    """The Web UI cannot send a static header: its endpoint is http://host:port/<token>."""
    body = _body(await _encrypted(ring, EMAIL))
    for path in (f"/{TOKEN}/decode", f"/{TOKEN}/default/decode"):
        response = await http.post(path, content=body, headers={"Origin": UI})
        assert response.status_code == 200, path
        assert DataConverter.default.payload_converter.from_payloads(_payloads(response)) == [EMAIL]
    for path in ("/decode", "/wrong/decode", f"/{TOKEN}x/decode", f"/x/{TOKEN}/decode", f"/{TOKEN}"):
        response = await http.post(path, content=body, headers={"Origin": UI})
        assert response.status_code in (401, 404), path
        assert EMAIL not in response.text
    # the browser's preflight carries no credentials and needs none
    preflight = await http.options(f"/{TOKEN}/decode", headers={
        "Origin": UI, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 204


def test_the_local_stacks_token_is_made_once_private_and_reused(tmp_path: Path) -> None:
    import os
    import stat

    from dsr.runtime.codec_server import CodecTokenError, load_or_create_token

    path = tmp_path / "codec-token"
    old = os.umask(0)
    try:
        token, created = load_or_create_token(path)
    finally:
        os.umask(old)
    assert created and len(token) >= 43 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(path) == (token, False)
    assert load_or_create_token(tmp_path / "other")[0] != token
    path.chmod(0o644)
    with pytest.raises(CodecTokenError, match="chmod 600") as err:
        load_or_create_token(path)
    assert token not in str(err.value)
    path.chmod(0o600)
    path.write_text("short\n")
    with pytest.raises(CodecTokenError, match="malformed"):
        load_or_create_token(path)
