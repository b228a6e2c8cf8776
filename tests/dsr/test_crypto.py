"""Keys, the payload codec and field sealing; and a real Temporal history that must not leak an email."""

from __future__ import annotations

import base64
import json
import os
import stat
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.converter import ActivitySerializationContext, DataConverter, WorkflowSerializationContext
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import Worker

# This module defines a workflow, so the sandbox re-imports it: pass the native-code imports through.
with workflow.unsafe.imports_passed_through():
    from dsr.config.settings import Settings
    from dsr.store.crypto import (
        ENCODING,
        KEY_ID_METADATA_KEY,
        REFUSED_ENCODING,
        SEALED_OBJECT_MAGIC,
        WORKFLOW_ID_METADATA_KEY,
        DecryptionError,
        EncryptionCodec,
        ForeignPayloadError,
        KeyRing,
        KeyRingError,
        UnencryptedPayloadError,
        UnknownKeyError,
        data_converter,
        is_sealed_object,
    )
    from tests.servers import start_time_skipping_server

EMAIL = "jeanne.martin@example.org"


@dataclass
class Person:
    email: str
    name: str


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------------------------------- codec


async def test_data_converter_round_trip_hides_the_email() -> None:
    ring = KeyRing.generate()
    converter = data_converter(ring)
    person = Person(email=EMAIL, name="Jeanne Martin")

    payloads = await converter.encode([person])

    assert len(payloads) == 1
    raw = payloads[0].SerializeToString()
    assert EMAIL.encode() not in raw
    assert b"Jeanne" not in raw
    assert payloads[0].metadata["encoding"] == ENCODING
    assert payloads[0].metadata[KEY_ID_METADATA_KEY] == ring.current_key_id.encode()
    assert await converter.decode(payloads, [Person]) == [person]
    # the same value without the codec would have shown the email: the assertion above is meaningful
    plain = await DataConverter.default.encode([person])
    assert EMAIL.encode() in plain[0].SerializeToString()


async def test_codec_passes_through_payloads_it_did_not_encrypt() -> None:
    plain = (await DataConverter.default.encode(["hello"]))[0]
    assert await EncryptionCodec(KeyRing.generate()).decode([plain]) == [plain]


async def test_the_engine_converter_refuses_unencrypted_payloads_without_their_data() -> None:
    """Issue 12 finding 3: a plain payload sent by hand (no key) is refused, at the one value, saying why."""
    plain = (await DataConverter.default.encode([{"email": EMAIL, "identity": "trusted"}]))[0]
    codec = EncryptionCodec(KeyRing.generate(), strict=True)
    [marked] = await codec.decode([plain])
    assert marked.metadata["encoding"] == REFUSED_ENCODING and not marked.data  # the plaintext is dropped
    with pytest.raises(Exception) as err:
        await data_converter(KeyRing.generate()).decode([plain])
    refusal = err.value if isinstance(err.value, UnencryptedPayloadError) else err.value.__cause__
    assert isinstance(refusal, UnencryptedPayloadError) and "unencrypted payload" in str(refusal)
    assert EMAIL not in str(err.value) and EMAIL not in str(refusal)
    # nothing in a list, or an empty payload, holds data: nothing to refuse
    assert await codec.decode([]) == []
    assert await codec.decode([Payload()]) == [Payload()]


def _context(workflow_id: str) -> WorkflowSerializationContext:
    return WorkflowSerializationContext(namespace="default", workflow_id=workflow_id)


async def test_payloads_are_bound_to_their_workflow() -> None:
    """Issue 12 finding 9: a payload copied into another workflow does not open there."""
    ring = KeyRing.generate()
    converter = data_converter(ring)
    payloads = await converter.with_context(_context("dsr-2026-11-AAAAAA")).encode([Person(EMAIL, "A")])
    assert payloads[0].metadata[WORKFLOW_ID_METADATA_KEY] == b"dsr-2026-11-AAAAAA"
    # the same workflow (or an activity of it) opens it
    assert await converter.with_context(_context("dsr-2026-11-AAAAAA")).decode(payloads, [Person]) == [
        Person(EMAIL, "A")]
    activity = ActivitySerializationContext(namespace="default", activity_id="1", activity_type="x",
                                            activity_task_queue="q", workflow_id="dsr-2026-11-AAAAAA",
                                            workflow_type="DataSubjectRequest", is_local=False)
    assert await converter.with_context(activity).decode(payloads, [Person]) == [Person(EMAIL, "A")]
    # the codec server has no context: the id in the metadata is what the AAD binds
    assert isinstance(converter.payload_codec, EncryptionCodec)
    assert await EncryptionCodec(ring).decode(payloads) == await converter.payload_codec.with_context(
        _context("dsr-2026-11-AAAAAA")).decode(payloads)
    # another workflow refuses it, and relabelling the metadata breaks authentication
    with pytest.raises(ForeignPayloadError):
        await EncryptionCodec(ring).with_context(_context("dsr-2026-11-BBBBBB")).decode(payloads)
    relabelled = Payload(metadata={**payloads[0].metadata, WORKFLOW_ID_METADATA_KEY: b"dsr-2026-11-BBBBBB"},
                         data=payloads[0].data)
    with pytest.raises(DecryptionError):
        await EncryptionCodec(ring).with_context(_context("dsr-2026-11-BBBBBB")).decode([relabelled])
    with pytest.raises(DecryptionError):
        await EncryptionCodec(ring).decode([relabelled])
    unbound = Payload(metadata={k: v for k, v in payloads[0].metadata.items() if k != WORKFLOW_ID_METADATA_KEY},
                      data=payloads[0].data)
    with pytest.raises(DecryptionError):
        await EncryptionCodec(ring).decode([unbound])
    # in the engine's converter, a foreign payload is refused at the value (no workflow task stalls on it)
    with pytest.raises(Exception) as err:
        await converter.with_context(_context("dsr-2026-11-BBBBBB")).decode(payloads, [Person])
    assert isinstance(err.value.__cause__ or err.value, ForeignPayloadError)


async def test_payloads_written_before_binding_still_open() -> None:
    """Histories and stored payloads of the first scheme (constant AAD, no workflow id) stay readable."""
    ring = KeyRing.generate()
    legacy = (await EncryptionCodec(ring).encode([Payload(metadata={"encoding": b"json/plain"}, data=b'"x"')]))[0]
    assert WORKFLOW_ID_METADATA_KEY not in legacy.metadata
    opened = await EncryptionCodec(ring, strict=True).with_context(_context("dsr-2026-11-AAAAAA")).decode([legacy])
    assert opened[0].data == b'"x"'


async def test_rotation_keeps_old_data_readable_and_encrypts_with_the_new_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    old = KeyRing.load_or_create(path)
    old_payloads = await data_converter(old).encode([Person(EMAIL, "A")])

    new = KeyRing.rotate(path)

    assert new.current_key_id != old.current_key_id
    assert old.current_key_id in new
    assert new.key_ids == (old.current_key_id, new.current_key_id)
    assert _mode(path) == 0o600
    reloaded = KeyRing.load_or_create(path)
    assert reloaded.current_key_id == new.current_key_id
    assert await data_converter(reloaded).decode(old_payloads, [Person]) == [Person(EMAIL, "A")]
    new_payloads = await data_converter(reloaded).encode([Person(EMAIL, "B")])
    assert new_payloads[0].metadata[KEY_ID_METADATA_KEY] == new.current_key_id.encode()
    # a process still holding the old ring cannot read new data, and says which key it lacks
    with pytest.raises(UnknownKeyError, match=new.current_key_id):
        await data_converter(old).decode(new_payloads, [Person])


async def test_unknown_key_id_fails_clearly_without_leaking_data() -> None:
    payloads = await data_converter(KeyRing.generate("kA")).encode([Person(EMAIL, "A")])
    with pytest.raises(UnknownKeyError) as err:
        await data_converter(KeyRing.generate("kB")).decode(payloads, [Person])
    message = str(err.value)
    assert "'kA'" in message and "kB" in message
    assert EMAIL not in message


async def test_tampered_ciphertext_fails() -> None:
    ring = KeyRing.generate()
    payload = (await data_converter(ring).encode([Person(EMAIL, "A")]))[0]
    data = bytearray(payload.data)
    data[-1] ^= 0x01
    tampered = Payload(metadata=dict(payload.metadata), data=bytes(data))
    with pytest.raises(DecryptionError):
        await EncryptionCodec(ring).decode([tampered])
    truncated = Payload(metadata=dict(payload.metadata), data=payload.data[:10])
    with pytest.raises(DecryptionError):
        await EncryptionCodec(ring).decode([truncated])


async def test_key_id_is_authenticated() -> None:
    """Relabelling a payload with another key id of the same ring fails, even if the key were equal."""
    key = os.urandom(32)
    ring = KeyRing({"k1": key, "k2": key}, current="k1")
    payload = (await EncryptionCodec(ring).encode([Payload(data=b"x")]))[0]
    relabelled = Payload(metadata={**payload.metadata, KEY_ID_METADATA_KEY: b"k2"}, data=payload.data)
    with pytest.raises(DecryptionError):
        await EncryptionCodec(ring).decode([relabelled])


def test_low_level_encrypt_binds_aad() -> None:
    ring = KeyRing.generate()
    key_id, blob = ring.encrypt(b"secret", aad=b"one")
    assert ring.decrypt(key_id, blob, aad=b"one") == b"secret"
    assert blob[:12] != ring.encrypt(b"secret", aad=b"one")[1][:12]  # random nonce
    with pytest.raises(DecryptionError):
        ring.decrypt(key_id, blob, aad=b"two")


# ---------------------------------------------------------------------------------------------- key file


def test_key_file_is_created_with_mode_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "home" / "keys.json"
    first = KeyRing.load_or_create(path)
    assert _mode(path) == 0o600
    doc = json.loads(path.read_text())
    assert doc["current"] == first.current_key_id
    assert list(doc["keys"]) == [first.current_key_id]
    again = KeyRing.load_or_create(path)
    assert again.current_key_id == first.current_key_id
    assert again.blind_index("x", purpose="p") == first.blind_index("x", purpose="p")
    assert [p.name for p in path.parent.iterdir()] == ["keys.json"]  # no temporary file left behind


def test_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    KeyRing.load_or_create(path)
    path.chmod(0o644)
    with pytest.raises(KeyRingError, match=r"chmod 600") as err:
        KeyRing.load_or_create(path)
    assert json.loads(path.read_text())["keys"].popitem()[1] not in str(err.value)
    path.chmod(0o640)
    with pytest.raises(KeyRingError):
        KeyRing.load(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("not json", "not valid JSON"),
        ('{"keys": {}}', "must hold"),
        ('{"current": "k1", "keys": {"k1": "AAAA"}}', "32 bytes"),
        (json.dumps({"current": "k2", "keys": {"k1": _b64(bytes(32))}}), '"current"'),
        (json.dumps({"current": "k1", "keys": {"k.1": _b64(bytes(32))}}), "key ids"),
    ],
)
def test_malformed_key_file_is_refused(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "keys.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, content.encode())
    os.close(fd)
    with pytest.raises(KeyRingError, match=expected):
        KeyRing.load_or_create(path)


def test_rotate_needs_an_existing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match="does not exist"):
        KeyRing.rotate(tmp_path / "keys.json")


# ---------------------------------------------------------------------------------------------- DSR_KEYS


def test_dsr_keys_first_entry_is_current() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    ring = KeyRing.from_env_value(f" k2:{_b64(k2)} ,\n k1:{base64.urlsafe_b64encode(k1).decode()}")
    assert ring.current_key_id == "k2"
    assert ring.key_ids == ("k1", "k2")  # oldest first
    assert ring.index_key_id == "k1"
    only_k1 = KeyRing.from_env_value(f"k1:{_b64(k1)}")
    key_id, blob = only_k1.encrypt(b"x", aad=b"a")
    assert ring.decrypt(key_id, blob, aad=b"a") == b"x"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("k1", "KEY_ID:BASE64_KEY"),
        ("k1:{k},", "entry 2 is empty"),
        ("k1:!!!not-base64!!!", "not valid base64"),
        ("k1:" + _b64(b"short key"), "32 bytes"),
        ("k1:{k},k1:{k}", "twice"),
        ("bad id:{k}", "key ids"),
        ("k.1:{k}", "key ids"),
    ],
)
def test_dsr_keys_errors_are_clear_and_never_show_key_material(value: str, expected: str) -> None:
    key = _b64(b"0123456789abcdef0123456789abcdef")
    value = value.replace("{k}", key)
    with pytest.raises(KeyRingError, match=expected) as err:
        KeyRing.from_env_value(value)
    assert isinstance(err.value, ValueError)
    assert key not in str(err.value)
    assert "!!!" not in str(err.value)
    assert _b64(b"short key") not in str(err.value)


def test_from_settings_prefers_dsr_keys_then_the_key_file(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database_url="sqlite://")
    key = _b64(os.urandom(32))
    from_env = KeyRing.from_settings(settings, {"DSR_KEYS": f"prod1:{key}"})
    assert from_env.current_key_id == "prod1"
    assert not settings.key_file.exists()
    # Clients never make a key of their own: only `dsr up` (create=True) does.
    with pytest.raises(KeyRingError, match="no key file"):
        KeyRing.from_settings(settings, {})
    assert not settings.key_file.exists()
    local = KeyRing.from_settings(settings, {}, create=True)
    assert settings.key_file.exists() and _mode(settings.key_file) == 0o600
    assert KeyRing.from_settings(settings, {"DSR_KEYS": ""}).current_key_id == local.current_key_id


def test_repr_and_errors_never_show_keys() -> None:
    key = bytes(range(32))
    ring = KeyRing({"test-1": key}, current="test-1")
    assert _b64(key) not in repr(ring) and str(list(key)) not in repr(ring)
    assert "test-1" in repr(ring)
    with pytest.raises(KeyRingError):
        KeyRing({"k1": key}, current="k2")
    with pytest.raises(KeyRingError):
        KeyRing({"k1": key[:16]}, current="k1")


def test_generated_key_ids_are_short_and_unique() -> None:
    ids = {KeyRing.generate().current_key_id for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("k") and len(i) <= 20 and "." not in i for i in ids)


# ---------------------------------------------------------------------------------------------- sealing


def test_seal_and_open_with_purpose_binding() -> None:
    ring = KeyRing.generate()
    token = ring.seal_text(EMAIL, purpose="email")
    assert token.isascii()
    assert token.startswith(f"v1.{ring.current_key_id}.")
    assert EMAIL not in token
    assert ring.open_text(token, purpose="email") == EMAIL
    assert ring.seal_text(EMAIL, purpose="email") != token  # random nonce
    with pytest.raises(DecryptionError):
        ring.open_text(token, purpose="name")
    version, key_id, data = token.split(".")
    flipped = data[:-2] + ("A" if data[-2] != "A" else "B") + data[-1]
    with pytest.raises(DecryptionError):
        ring.open_text(f"{version}.{key_id}.{flipped}", purpose="email")
    for garbage in ("", "hello", "v2.k.AAAA", "v1..AAAA", "v1.k1.AAAA.extra"):
        with pytest.raises(DecryptionError):
            ring.open_text(garbage, purpose="email")
    assert ring.open_text(ring.seal_text("", purpose="note"), purpose="note") == ""
    assert ring.open_text(ring.seal_text("Zoë 😀", purpose="name"), purpose="name") == "Zoë 😀"


def test_sealed_objects_are_binary_and_bound_to_their_purpose(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ring = KeyRing.load_or_create(path)
    chunk = json.dumps([{"email": EMAIL, "name": "Zoë 😀"}]).encode()
    sealed = ring.seal_bytes(chunk, purpose="export:r1:shop:orders:0:1")
    assert sealed.startswith(SEALED_OBJECT_MAGIC + ring.current_key_id.encode() + b"\n")
    assert is_sealed_object(sealed) and not is_sealed_object(ring.seal_text("x", purpose="p").encode())
    # nonce, ciphertext (as long as the plaintext) and tag: no base64
    assert len(sealed) == len(SEALED_OBJECT_MAGIC) + len(ring.current_key_id) + 1 + 12 + len(chunk) + 16
    assert EMAIL.encode() not in sealed
    assert ring.open_bytes(sealed, purpose="export:r1:shop:orders:0:1") == chunk
    assert ring.seal_bytes(chunk, purpose="p") != ring.seal_bytes(chunk, purpose="p")  # random nonce
    for other in ("export:r1:shop:orders:1:1", "export:r2:shop:orders:0:1"):
        with pytest.raises(DecryptionError):
            ring.open_bytes(sealed, purpose=other)
    flipped = sealed[:-3] + bytes([sealed[-3] ^ 1]) + sealed[-2:]
    with pytest.raises(DecryptionError):
        ring.open_bytes(flipped, purpose="export:r1:shop:orders:0:1")
    # a field token with the same purpose is not an object: the uses are separated in the authenticated data
    key_id, blob = ring.encrypt(chunk, aad=b"field\x00p")
    with pytest.raises(DecryptionError):
        ring.open_bytes(SEALED_OBJECT_MAGIC + key_id.encode() + b"\n" + blob, purpose="p")
    head = SEALED_OBJECT_MAGIC + ring.current_key_id.encode()
    for garbage in (b"", b"hello", SEALED_OBJECT_MAGIC, head, head + b"\nAAAA", SEALED_OBJECT_MAGIC + b"\n" + bytes(40),
                    SEALED_OBJECT_MAGIC + b"k.1\n" + bytes(40)):
        with pytest.raises(DecryptionError):
            ring.open_bytes(garbage, purpose="p")
    with pytest.raises(UnknownKeyError, match="does not hold"):
        ring.open_bytes(SEALED_OBJECT_MAGIC + b"gone\n" + bytes(40), purpose="p")
    rotated = KeyRing.rotate(path)  # sealed before a rotation: still opens
    assert rotated.open_bytes(sealed, purpose="export:r1:shop:orders:0:1") == chunk
    assert rotated.seal_bytes(b"", purpose="p").startswith(SEALED_OBJECT_MAGIC + rotated.current_key_id.encode())
    assert rotated.open_bytes(rotated.seal_bytes(b"", purpose="p"), purpose="p") == b""


def test_sealed_text_survives_rotation(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    token = KeyRing.load_or_create(path).seal_text(EMAIL, purpose="email")
    rotated = KeyRing.rotate(path)
    assert rotated.open_text(token, purpose="email") == EMAIL
    assert rotated.seal_text(EMAIL, purpose="email").startswith(f"v1.{rotated.current_key_id}.")


def test_blind_index_is_stable_across_rotation_and_separated_by_purpose(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    before = KeyRing.load_or_create(path)
    index = before.blind_index(EMAIL, purpose="email")
    assert len(index) == 64 and int(index, 16) >= 0
    assert EMAIL not in index

    after = KeyRing.rotate(path)
    after = KeyRing.rotate(path)
    assert after.index_key_id == before.current_key_id
    assert after.blind_index(EMAIL, purpose="email") == index
    assert KeyRing.load(path).blind_index(EMAIL, purpose="email") == index
    assert after.blind_index(EMAIL, purpose="phone") != index
    assert after.blind_index("other@example.org", purpose="email") != index
    assert KeyRing.generate().blind_index(EMAIL, purpose="email") != index


def test_blind_index_with_dsr_keys_uses_the_oldest_key() -> None:
    k1, k2 = _b64(os.urandom(32)), _b64(os.urandom(32))
    before = KeyRing.from_env_value(f"k1:{k1}")
    after = KeyRing.from_env_value(f"k2:{k2},k1:{k1}")
    assert after.blind_index(EMAIL, purpose="email") == before.blind_index(EMAIL, purpose="email")


# ---------------------------------------------------------------------------------------------- real Temporal


@dataclass
class Greeting:
    person: Person


@activity.defn
async def contact_person(person: Person) -> str:
    raise ApplicationError(f"mailbox of {person.email} is full", type="MailboxFull", non_retryable=True)


@workflow.defn
class ContactWorkflow:
    @workflow.run
    async def run(self, greeting: Greeting) -> str:
        return await workflow.execute_activity(
            contact_person,
            greeting.person,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )


async def test_temporal_history_holds_no_plaintext_email() -> None:
    ring = KeyRing.generate()
    converter = data_converter(ring)
    env = await start_time_skipping_server(ring, search_attributes=False)
    try:
        task_queue = f"crypto-{uuid.uuid4()}"
        workflow_id = f"crypto-test-{uuid.uuid4()}"
        async with Worker(env.client, task_queue=task_queue, workflows=[ContactWorkflow], activities=[contact_person]):
            with pytest.raises(WorkflowFailureError) as failure:
                await env.client.execute_workflow(
                    ContactWorkflow.run,
                    Greeting(Person(EMAIL, "Jeanne Martin")),
                    id=workflow_id,
                    task_queue=task_queue,
                )
        # the client with the codec sees the real message
        cause = failure.value.cause
        assert isinstance(cause, ActivityError)
        assert isinstance(cause.cause, ApplicationError)
        assert EMAIL in cause.cause.message
        assert cause.cause.type == "MailboxFull"

        # a client without the codec sees only ciphertext
        raw_client = Client(env.client.service_client, namespace=env.client.namespace)
        history = await raw_client.get_workflow_handle(workflow_id).fetch_history()
        raw = History(events=history.events).SerializeToString()
        assert len(history.events) > 5
        assert EMAIL.encode() not in raw
        assert b"Jeanne" not in raw
        assert b"is full" not in raw
        as_json = history.to_json()
        assert EMAIL not in as_json
        assert _b64(EMAIL.encode())[:16] not in as_json

        # and decoding with the codec recovers everything
        started = history.events[0].workflow_execution_started_event_attributes
        assert await converter.decode(started.input.payloads, [Greeting]) == [Greeting(Person(EMAIL, "Jeanne Martin"))]
        failed = [e for e in history.events if e.HasField("activity_task_failed_event_attributes")]
        assert len(failed) == 1
        proto = failed[0].activity_task_failed_event_attributes.failure
        assert EMAIL not in proto.message  # the SDK puts a placeholder there
        decoded = await converter.decode_failure(proto)
        assert isinstance(decoded, ApplicationError)
        assert decoded.message == f"mailbox of {EMAIL} is full"
    finally:
        await env.shutdown()
