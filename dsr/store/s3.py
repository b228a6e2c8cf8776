"""The S3 backend (``s3://bucket/prefix``): AWS S3 or any S3-compatible object storage (MinIO, OVHcloud,
Scaleway, ...), through boto3.

Credentials, region and endpoint come from the standard variables boto3 reads itself
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, profiles, instance roles);
``AWS_REGION`` is passed on when set. Large objects are uploaded in parts (multipart upload), completed
only once every part is there, so a reader never sees half a bundle. A conditional put uses
``If-None-Match: *`` (AWS S3, MinIO, Ceph, R2 support it).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dsr.store.objects import (
    ObjectExists,
    ObjectNotFound,
    ObjectReader,
    ObjectStore,
    StorageError,
    check_key,
    check_prefix,
)

MAX_POOL_CONNECTIONS = 64
"""Connections a process keeps open to the object store (botocore's default: 10)."""

PART_SIZE = 8 << 20
"""Bytes per uploaded part (S3's minimum is 5 MiB, except the last): the memory a large upload takes."""
_MISSING = {"NoSuchKey", "404", "NotFound"}
_TAKEN = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


F = TypeVar("F", bound=Callable[..., Any])


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _translated(method: F) -> F:
    """boto3's errors as :class:`StorageError`, naming the bucket and the error code (never the object)."""

    @functools.wraps(method)
    def wrapper(self: S3Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except ClientError as err:
            raise StorageError(f"{self.url}: {method.__name__} refused ({_code(err) or 'error'})") from None
        except BotoCoreError as err:
            raise StorageError(f"{self.url}: {method.__name__} failed ({type(err).__name__}: {err})") from None

    return wrapper  # type: ignore[return-value]


class _S3Reader(ObjectReader):
    def __init__(self, body: Any, size: int) -> None:
        self._body = body
        self.size = size

    def read(self, n: int) -> bytes:
        parts, wanted = [], n
        while wanted > 0:
            data = self._body.read(wanted)
            if not data:
                break
            parts.append(data)
            wanted -= len(data)
        return b"".join(parts)

    def close(self) -> None:
        self._body.close()


class S3Store(ObjectStore):
    def __init__(self, bucket: str, prefix: str = "", *, options: Mapping[str, str] | None = None,
                 client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        options = dict(options or {})
        if client is None:
            config = Config(
                # Compatible services (older MinIO, some providers) refuse the newer default checksums.
                request_checksum_calculation=os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required"),
                response_checksum_validation=os.environ.get("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required"),
                s3={"addressing_style": options.get("addressing_style", "auto")},
                retries={"mode": "standard", "max_attempts": 5},
                # An export stores its chunks 16 at a time (dsr.store.exports.CHUNKS_PARALLEL), and several exports
                # run at once on a worker: botocore's default pool of 10 connections would drop and reopen
                # connections (a TLS handshake each) under that load.
                max_pool_connections=MAX_POOL_CONNECTIONS,
            )
            client = boto3.session.Session().client(
                "s3", region_name=os.environ.get("AWS_REGION") or None, config=config
            )
        self._client = client

    @_translated
    def check(self) -> None:
        self._client.head_bucket(Bucket=self.bucket)

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    @_translated
    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=bytes(data), **extra)
        except ClientError as err:
            if if_absent and _code(err) in _TAKEN:
                raise ObjectExists(f"object {key} exists") from None
            raise

    @_translated
    def put_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        full_key = self._key(key)
        buffer = bytearray()
        size = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            for chunk in chunks:
                buffer += chunk
                size += len(chunk)
                while len(buffer) >= PART_SIZE:
                    if upload_id is None:
                        upload_id = self._client.create_multipart_upload(Bucket=self.bucket, Key=full_key)["UploadId"]
                    self._upload_part(full_key, upload_id, parts, bytes(buffer[:PART_SIZE]))
                    del buffer[:PART_SIZE]
            if upload_id is None:  # small enough for one request
                self._client.put_object(Bucket=self.bucket, Key=full_key, Body=bytes(buffer))
                return size
            if buffer or not parts:
                self._upload_part(full_key, upload_id, parts, bytes(buffer))
            self._client.complete_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id,
                                                   MultipartUpload={"Parts": parts})
            upload_id = None
            return size
        finally:
            if upload_id is not None:  # failed half-way: the parts must not linger (they are billed, and kept)
                with contextlib.suppress(ClientError):
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)

    def _upload_part(self, key: str, upload_id: str, parts: list[dict[str, Any]], data: bytes) -> None:
        number = len(parts) + 1
        answer = self._client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                          Body=data)
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def _get(self, key: str, **extra: Any) -> Any:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)
        except ClientError as err:
            if _code(err) in _MISSING:
                raise ObjectNotFound(f"no object {key}") from None
            if _code(err) == "InvalidRange":  # a range past the end: nothing there
                return None
            raise

    @_translated
    def get(self, key: str) -> bytes:
        answer = self._get(key)
        with answer["Body"] as body:
            return body.read()

    @_translated
    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            if not self.exists(key):
                raise ObjectNotFound(f"no object {key}")
            return b""
        answer = self._get(key, Range=f"bytes={start}-{start + length - 1}")
        if answer is None:
            return b""
        with answer["Body"] as body:
            return body.read()

    @_translated
    def open(self, key: str) -> ObjectReader:
        answer = self._get(key)
        return _S3Reader(answer["Body"], int(answer["ContentLength"]))

    @_translated
    def size(self, key: str) -> int | None:
        try:
            return int(self._client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except ClientError as err:
            if _code(err) in _MISSING:
                return None
            raise

    @_translated
    def list(self, prefix: str) -> list[str]:
        check_prefix(prefix)
        keys: list[str] = []
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                            Prefix=self.prefix + prefix):
            keys.extend(item["Key"][len(self.prefix):] for item in page.get("Contents", ()))
        return sorted(keys)

    @_translated
    def delete(self, key: str) -> bool:
        full_key = self._key(key)
        if self.size(key) is None:
            return False
        self._client.delete_object(Bucket=self.bucket, Key=full_key)
        return True

    @_translated
    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(self._folder_prefix(prefix))
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = keys[start:start + 1000]
            answer = self._client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": self.prefix + key} for key in batch], "Quiet": True,
            })
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise OSError(f"{self.url}: could not delete {len(answer['Errors'])} object(s) "
                              f"({first.get('Code')}: {first.get('Message')})")
        return len(keys)
