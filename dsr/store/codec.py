"""The Temporal payload codec and data converter: every payload encrypted with the key ring, bound to its workflow.

The key ring, the blob format and the authenticated data are described in :mod:`dsr.store.crypto`; this module
is its Temporal side, kept apart so that a process using only the ledger (a CLI command) never loads the SDK.
"""

from __future__ import annotations

from collections.abc import Sequence

import temporalio.converter
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter, PydanticPayloadConverter

from dsr.store.crypto import (
    _PAYLOAD_AAD,
    ENCODING,
    KEY_ID_METADATA_KEY,
    REFUSED_ENCODING,
    WORKFLOW_ID_METADATA_KEY,
    DecryptionError,
    ForeignPayloadError,
    KeyRing,
    UnencryptedPayloadError,
    UnknownKeyError,
)

__all__ = ["EncryptionCodec", "EnginePayloadConverter", "data_converter"]


class EncryptionCodec(temporalio.converter.PayloadCodec, temporalio.converter.WithSerializationContext):
    """Encrypts every payload with the key ring's current key, bound to its workflow.

    An encoded payload has metadata ``encoding: binary/encrypted``, ``encryption-key-id: <id>`` and, when
    the SDK gives a serialization context, ``encryption-workflow-id: <workflow id>``; data = nonce +
    AES-GCM(serialized original ``Payload`` proto). The key id and the workflow id are authenticated (part
    of the AAD, see the module docstring), so relabelling a payload with another key or moving it into
    another workflow fails.

    ``strict`` (the engine's own clients and workers, :func:`data_converter`): a payload that is not
    ``binary/encrypted`` is refused with :class:`UnencryptedPayloadError`, since nothing the engine sends is
    ever plain: a hand-made ``temporal workflow start`` / ``update`` / ``activity complete`` with plain
    JSON is not the engine speaking. Non-strict (the codec server, which the UI also sends plain payloads
    to, e.g. a termination's details) passes such payloads through. An empty ``Payload`` (no metadata, no
    data) holds nothing and passes in both modes. Errors name key ids only, never data.
    """

    def __init__(self, keyring: KeyRing, *, strict: bool = False, workflow_id: str | None = None) -> None:
        self._keyring = keyring
        self._strict = strict
        self._workflow_id = workflow_id or None

    @property
    def keyring(self) -> KeyRing:
        return self._keyring

    @property
    def workflow_id(self) -> str | None:
        """The workflow this codec's payloads are bound to (from the serialization context), if any."""
        return self._workflow_id

    def with_context(self, context: temporalio.converter.SerializationContext) -> EncryptionCodec:
        workflow_id = None
        if isinstance(
            context,
            temporalio.converter.WorkflowSerializationContext | temporalio.converter.ActivitySerializationContext,
        ):
            workflow_id = context.workflow_id
        if workflow_id == self._workflow_id:
            return self
        return EncryptionCodec(self._keyring, strict=self._strict, workflow_id=workflow_id)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._encode_one(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decode_one(p) for p in payloads]

    def _encode_one(self, payload: Payload) -> Payload:
        metadata = {"encoding": ENCODING}
        if self._workflow_id is None:
            aad = _PAYLOAD_AAD
        else:
            aad = _workflow_payload_aad(self._workflow_id)
            metadata[WORKFLOW_ID_METADATA_KEY] = self._workflow_id.encode("utf-8")
        key_id, blob = self._keyring.encrypt(payload.SerializeToString(), aad=aad)
        metadata[KEY_ID_METADATA_KEY] = key_id.encode("ascii")
        return Payload(metadata=metadata, data=blob)

    def _decode_one(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            if self._strict and (payload.metadata or payload.data):
                return _refused(_UNENCRYPTED)
            return payload
        try:
            return self._open(payload)
        except UnknownKeyError:
            raise  # a worker missing a key: fail the task, so a worker holding the whole ring takes it
        except DecryptionError as err:
            if self._strict:
                return _refused(_FOREIGN if isinstance(err, ForeignPayloadError) else _UNAUTHENTIC)
            raise

    def _open(self, payload: Payload) -> Payload:
        raw_id = payload.metadata.get(KEY_ID_METADATA_KEY)
        if raw_id is None:
            raise DecryptionError(f"encrypted payload has no {KEY_ID_METADATA_KEY} metadata")
        try:
            key_id = raw_id.decode("ascii")
        except UnicodeDecodeError:
            raise DecryptionError("encrypted payload names a malformed key id") from None
        bound = payload.metadata.get(WORKFLOW_ID_METADATA_KEY)
        if bound is None:
            aad = _PAYLOAD_AAD  # v1: written before payloads were bound, or encoded without a context
        else:
            try:
                bound_id = bound.decode("utf-8")
            except UnicodeDecodeError:
                raise DecryptionError("encrypted payload names a malformed workflow id") from None
            if self._workflow_id is not None and bound_id != self._workflow_id:
                raise ForeignPayloadError(
                    f"encrypted payload under key {key_id!r} belongs to another workflow; refused"
                )
            aad = _workflow_payload_aad(bound_id)
        plaintext = self._keyring.decrypt(key_id, payload.data, aad=aad)
        try:
            return Payload.FromString(plaintext)
        except DecodeError:  # pragma: no cover - authenticated, so only if encrypted by other code
            raise DecryptionError(f"payload under key {key_id!r} does not hold a Payload") from None


# Why the strict codec marks a refused payload instead of raising: a codec error fails the whole workflow task,
# again and again, so one forged signal or update would stall a genuine request. The marker (its data dropped)
# makes the payload converter raise at the one value instead: the SDK then rejects the update, drops the signal,
# fails the activity, or fails the tasks of a workflow started with it (which so never runs).
_UNENCRYPTED = b"unencrypted"
_FOREIGN = b"other-workflow"
_UNAUTHENTIC = b"unauthentic"
_REFUSED_REASON_KEY = "refused"
_REFUSALS: dict[bytes, tuple[type[DecryptionError], str]] = {
    _UNENCRYPTED: (
        UnencryptedPayloadError,
        "refused an unencrypted payload: the engine encrypts everything it sends to its workflows, updates and "
        "activities (talk to them with the engine's client, or through its codec)",
    ),
    _FOREIGN: (ForeignPayloadError, "refused an encrypted payload that belongs to another workflow"),
    _UNAUTHENTIC: (DecryptionError, "refused an encrypted payload that failed authentication (tampered, or not ours)"),
}


def _refused(reason: bytes) -> Payload:
    return Payload(metadata={"encoding": REFUSED_ENCODING, _REFUSED_REASON_KEY: reason})


class _RefusedPayloadConverter(temporalio.converter.EncodingPayloadConverter):
    """Turns the strict codec's marker for a refused payload into a clear error, at the one value."""

    @property
    def encoding(self) -> str:
        return REFUSED_ENCODING.decode("ascii")

    def to_payload(self, value: object) -> Payload | None:
        return None  # never chosen to convert a value: only the codec makes such payloads

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> object:
        error, message = _REFUSALS.get(payload.metadata.get(_REFUSED_REASON_KEY, b""), _REFUSALS[_UNAUTHENTIC])
        raise error(message)


# One JSON converter, and so one cache of pydantic TypeAdapters, for every EnginePayloadConverter of the process.
# The SDK makes a payload converter for each workflow run it starts (the run's own, in the sandbox), and the
# pydantic converter keeps its TypeAdapters per instance: each run built again the adapter of every type it
# converted (its input, each activity's result, each signal), pydantic schema generation at every step, about 7% of
# the worker's CPU under bench/throughput.py. The engine's payload types are host classes (dsr.domain, passed
# through the sandbox, never reloaded; tests/dsr/test_codec_types.py holds them to it), so one cache serves every
# run; it is bounded (1,024 adapters, the SDK's default, least recently used first out).
_JSON = PydanticJSONPlainPayloadConverter()

# The converters of every EnginePayloadConverter, made once: the SDK's defaults (themselves shared by every
# DefaultPayloadConverter), JSON replaced by ``_JSON``, and the refusal. None of them keeps state of its own.
_CONVERTERS: tuple[temporalio.converter.EncodingPayloadConverter, ...] = (
    *(_JSON if isinstance(c, temporalio.converter.JSONPlainPayloadConverter) else c
      for c in temporalio.converter.DefaultPayloadConverter.default_encoding_payload_converters),
    _RefusedPayloadConverter(),
)


class EnginePayloadConverter(PydanticPayloadConverter):
    """Pydantic JSON (one converter per process, see ``_JSON``), plus the refusal of what the strict codec marked
    as unencrypted."""

    def __init__(self) -> None:
        # Not PydanticPayloadConverter's own __init__: the SDK makes a new data converter, and so a payload
        # converter, at every serialization context (the codec binds each payload to its workflow), which is each
        # workflow activation, each payload sequence of its completion, each activity task and heartbeat; building
        # a pydantic JSON converter there each time (to be replaced by ``_JSON``) was 4% of the worker's CPU under
        # bench/throughput.py.
        temporalio.converter.CompositePayloadConverter.__init__(self, *_CONVERTERS)


def _workflow_payload_aad(workflow_id: str) -> bytes:
    return _PAYLOAD_AAD + b"\x00workflow\x00" + workflow_id.encode("utf-8")


def data_converter(keyring: KeyRing) -> temporalio.converter.DataConverter:
    """The one data converter every Temporal client and worker uses.

    Pydantic payload converter (it serialises the ``date`` and ``datetime`` fields of the model's
    dataclasses, which the default JSON converter cannot), :class:`EncryptionCodec`, and a failure
    converter that moves failure messages and stack traces into encoded (hence encrypted)
    attributes. Still in plaintext in Temporal: workflow ids, search attributes,
    ``ApplicationError.type``, activity/workflow type names, task queues and headers -- keep
    personal data out of those.
    """
    return temporalio.converter.DataConverter(
        payload_converter_class=EnginePayloadConverter,
        payload_codec=EncryptionCodec(keyring, strict=True),
        failure_converter_class=temporalio.converter.DefaultFailureConverterWithEncodedAttributes,
    )
