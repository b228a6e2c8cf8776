"""``DSR_STORAGE_URL``: where objects are kept, read without touching the storage (or importing boto3)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from dsr.store.objects import check_prefix

# S3's rules for bucket names (3-63 characters, lower-case letters, digits, dots and hyphens).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_S3_OPTIONS = {"addressing_style": {"auto", "path", "virtual"}}


@dataclass(frozen=True)
class StorageLocation:
    scheme: str  # "file" or "s3"
    path: Path | None = None  # file: the root folder
    bucket: str = ""  # s3
    prefix: str = ""  # s3: every key goes under it ("" or ending with "/")
    options: dict[str, str] = field(default_factory=dict)


def parse_storage_url(url: str) -> StorageLocation:
    """``file:///abs/path`` or ``s3://bucket[/prefix][?addressing_style=path]``; ValueError saying why not."""
    parts = urlsplit(url.strip())
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ValueError("a file URL is file:///absolute/path (no host, query or fragment)")
        path = Path(unquote(parts.path))
        if not parts.path.startswith("/") or ".." in path.parts or path == Path("/"):
            raise ValueError("a file URL needs an absolute folder path, such as file:///var/lib/dsr/storage")
        return StorageLocation("file", path=path)
    if parts.scheme == "s3":
        if parts.username or parts.password or parts.port or parts.fragment:
            raise ValueError("an s3 URL is s3://bucket/prefix; credentials come from AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY, the endpoint from AWS_ENDPOINT_URL")
        bucket = parts.hostname or ""
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise ValueError(f"{bucket!r} is not a valid bucket name (3-63 lower-case letters, digits, . and -)")
        prefix = parts.path.strip("/")
        try:
            check_prefix(f"{prefix}/" if prefix else "")
        except ValueError:
            raise ValueError(f"{prefix!r} is not a valid key prefix (letters, digits, _ . - and /)") from None
        options: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
            if name not in _S3_OPTIONS or value not in _S3_OPTIONS[name]:
                raise ValueError(f"unknown s3 option {name}={value} (allowed: addressing_style=auto|path|virtual)")
            options[name] = value
        return StorageLocation("s3", bucket=bucket, prefix=f"{prefix}/" if prefix else "", options=options)
    raise ValueError("expected file:///absolute/path or s3://bucket/prefix")
