"""The object store contract, on local files and on a real S3 API over HTTP (moto's server)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dsr.config.settings import ConfigError, Settings
from dsr.store import FileStore, ObjectExists, ObjectNotFound, StorageError, open_store, parse_storage_url, store_at

if TYPE_CHECKING:
    from tests.harness import S3Server


def test_put_get_ranges_list_and_delete(storage_url: str) -> None:
    store = store_at(storage_url)
    store.put("exports/dsr-a/data/x/1.chunk", b"one")
    store.put("exports/dsr-a/data/x/1.chunk", b"one, again")  # replaces
    store.put("exports/dsr-a/bundle.zip.enc", bytes(range(256)))
    store.put("exports/dsr-ab/kept", b"not under exports/dsr-a/")
    assert store.get("exports/dsr-a/data/x/1.chunk") == b"one, again"
    assert store.read_range("exports/dsr-a/bundle.zip.enc", 10, 5) == bytes(range(10, 15))
    assert store.read_range("exports/dsr-a/bundle.zip.enc", 250, 100) == bytes(range(250, 256))
    assert store.size("exports/dsr-a/bundle.zip.enc") == 256 and store.exists("exports/dsr-ab/kept")
    with store.open("exports/dsr-a/bundle.zip.enc") as reader:
        assert reader.size == 256 and reader.read(100) == bytes(range(100)) and reader.read(1000) == bytes(
            range(100, 256)) and reader.read(1) == b""
    assert store.list("exports/dsr-a/") == ["exports/dsr-a/bundle.zip.enc", "exports/dsr-a/data/x/1.chunk"]
    assert store.list("exports/dsr-a") == [*store.list("exports/dsr-a/"), "exports/dsr-ab/kept"]

    assert store.delete_prefix("exports/dsr-a/") == 2
    assert store.delete_prefix("exports/dsr-a/") == 0  # idempotent
    assert store.list("exports/") == ["exports/dsr-ab/kept"]
    assert store.delete("exports/dsr-ab/kept") and not store.delete("exports/dsr-ab/kept")
    for missing in (lambda: store.get("exports/dsr-a/bundle.zip.enc"),
                    lambda: store.read_range("exports/dsr-a/bundle.zip.enc", 0, 10),
                    lambda: store.open("nothing/here")):
        with pytest.raises(ObjectNotFound) as caught:
            missing()
        assert isinstance(caught.value, FileNotFoundError)
    assert store.size("nothing/here") is None and not store.exists("nothing/here")
    with pytest.raises(ValueError, match="must end with '/'"):
        store.delete_prefix("exports/dsr-a")  # would also match exports/dsr-ab


def test_a_conditional_put_never_overwrites(storage_url: str) -> None:
    store = store_at(storage_url)
    store.put("attachments/dsr-x/1.bin", b"first", if_absent=True)
    with pytest.raises(ObjectExists):
        store.put("attachments/dsr-x/1.bin", b"second", if_absent=True)
    assert store.get("attachments/dsr-x/1.bin") == b"first"


def test_streamed_put_is_whole_or_nothing(storage_url: str, monkeypatch: pytest.MonkeyPatch,
                                          request: pytest.FixtureRequest) -> None:
    store = store_at(storage_url)
    if storage_url.startswith("s3:"):
        monkeypatch.setattr("dsr.store.s3.PART_SIZE", 5 << 20)  # S3's smallest part: three parts below
    piece = os.urandom(1 << 20)
    assert store.put_stream("exports/dsr-s/bundle.zip.enc", (piece for _ in range(12))) == 12 << 20
    assert store.size("exports/dsr-s/bundle.zip.enc") == 12 << 20
    assert store.read_range("exports/dsr-s/bundle.zip.enc", (11 << 20) + 5, 10) == piece[5:15]

    def failing() -> Iterator[bytes]:
        yield piece * 6  # a whole part is uploaded before the failure
        raise RuntimeError("the zip could not be read")

    with pytest.raises(RuntimeError):
        store.put_stream("exports/dsr-s/bundle.zip.enc", failing())
    assert store.size("exports/dsr-s/bundle.zip.enc") == 12 << 20, "the previous object stays"
    assert store.list("exports/dsr-s/") == ["exports/dsr-s/bundle.zip.enc"]  # no temporary left behind
    if storage_url.startswith("s3:"):  # the failed multipart upload was aborted: no parts kept (and billed)
        server = request.getfixturevalue("s3_server")
        uploads = server.client().list_multipart_uploads(Bucket=server.bucket, Prefix=storage_url.split("/", 3)[3])
        assert uploads.get("Uploads", []) == []


def test_keys_cannot_leave_the_store(storage_url: str) -> None:
    store = store_at(storage_url)
    for bad in ("../etc/passwd", "/abs", "a//b", "a/../b", "a/.hidden", "", "a b", "é"):
        with pytest.raises(ValueError):
            store.put(bad, b"x")


def test_files_are_private_and_writes_leave_no_temporary(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "storage")
    store.put("attachments/dsr-x/1.bin", b"sealed")
    path = tmp_path / "storage" / "attachments" / "dsr-x" / "1.bin"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "storage").stat().st_mode) == 0o700
    assert os.listdir(path.parent) == ["1.bin"]
    store.delete_prefix("attachments/dsr-x/")
    assert not path.parent.exists(), "an emptied folder goes too"


def test_storage_url_setting(tmp_path: Path) -> None:
    settings = Settings.from_env({"DSR_HOME": str(tmp_path)})
    assert settings.storage_url == (tmp_path / "storage").as_uri()  # dsr up with no settings at all
    assert isinstance(open_store(settings), FileStore) and (tmp_path / "storage").is_dir()
    assert parse_storage_url("s3://my.bucket-1/some/prefix/?addressing_style=path").options == {
        "addressing_style": "path"}
    assert parse_storage_url("s3://bucket").prefix == ""
    for bad in ("storage", "/var/lib/dsr", "file://relative/path", "file:///", "ftp://host/x", "s3://", "s3://B",
                "s3://ab", "s3://key:secret@bucket/p", "s3://bucket/../x", "s3://bucket/p?region=x",
                "file:///a/../b"):
        with pytest.raises(ConfigError, match=r"^DSR_STORAGE_URL: ") as caught:
            Settings.from_env({"DSR_HOME": str(tmp_path), "DSR_STORAGE_URL": bad})
        assert "secret" not in str(caught.value)


def test_an_s3_storage_url_setting_opens_its_bucket(tmp_path: Path, s3_url: str) -> None:  # slow: moto (conftest)
    store = open_store(Settings.from_env({"DSR_HOME": str(tmp_path), "DSR_STORAGE_URL": s3_url}))
    store.put("a/b", b"c")
    assert store.url == f"{s3_url}/" and store.get("a/b") == b"c"


@pytest.mark.slow
def test_an_unreachable_bucket_is_a_storage_error(tmp_path: Path, s3_url: str, monkeypatch: pytest.MonkeyPatch,
                                                  ) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = store_at(s3_url)
    with pytest.raises(StorageError, match=r"^s3://dsr-test/t-\w+/: get failed"):
        store.get("a/b")
    with pytest.raises(OSError):  # what the CLI and the activities' retries handle
        store.list("a/")


def test_check_names_what_is_wrong(storage_url: str, tmp_path: Path) -> None:
    store_at(storage_url).check()  # usable
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    with pytest.raises(StorageError, match="cannot create the folder"):  # a file in the way
        FileStore(blocked)
    gone = FileStore(tmp_path / "gone")
    (tmp_path / "gone").rmdir()  # e.g. an unmounted volume
    with pytest.raises(StorageError, match="not a folder this process can write to"):
        gone.check()


def test_check_names_a_missing_bucket(s3_url: str) -> None:  # slow: moto (conftest)
    with pytest.raises(StorageError, match=r"^s3://no-such-bucket/: check refused \(404\)"):
        store_at("s3://no-such-bucket").check()


@pytest.mark.slow
@pytest.mark.parametrize("command", [["worker"], ["intake"], ["attachments", "list", "dsr-2026-11-7KQ3FJ"]])
def test_the_cli_stops_with_one_line_when_the_bucket_is_missing(command: list[str], s3_server: S3Server,
                                                                tmp_path: Path) -> None:
    env = {**os.environ, **s3_server.env, "DSR_HOME": str(tmp_path), "DSR_STORAGE_URL": "s3://no-such-bucket/dsr",
           "DSR_KEYS": "test-1:" + "A" * 43 + "=", "TEMPORAL_ADDRESS": "127.0.0.1:9"}
    dsr = Path(sys.executable).parent / "dsr"
    result = subprocess.run([str(dsr), *command], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: s3://no-such-bucket/dsr/: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_an_s3_store_keeps_a_connection_for_each_chunk_an_export_stores_at_once() -> None:
    """botocore keeps 10 connections by default; an export stores CHUNKS_PARALLEL chunks at once, and several
    exports run on a worker: with fewer connections, each PUT beyond the pool would open (and TLS-handshake) one."""
    from dsr.store.exports import CHUNKS_PARALLEL

    store = store_at("s3://dsr-bucket/exports")
    assert store._client.meta.config.max_pool_connections >= 2 * CHUNKS_PARALLEL  # type: ignore[attr-defined]
