"""The export bundle: built by streaming from a real export store, encrypted at rest, verifiable; stored on
and streamed back from both object store backends (local files, S3 over HTTP)."""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import os
import re
import tracemalloc
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dsr.domain.model import Language, RequestKind
from dsr.mail.bundle import (
    BUNDLE_MAGIC,
    CHUNK_SIZE,
    PREVIEW_ROWS,
    BundleError,
    BundleInfo,
    build_bundle,
    open_bundle,
)
from dsr.store import ObjectNotFound, store_at
from dsr.store.crypto import DecryptionError, KeyRing, UnknownKeyError
from dsr.store.exports import ExportStore
from tests.harness import TEST_KEYRING

REQUEST = "dsr-2026-11-BNDL01"
HOSTILE = "<script>alert(1)</script>\r\nX-Injected: yes"
NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
INFO = {"reference": "DSR-2026-11-BNDL01", "controller_name": "Atelier Roux SAS", "contact": "dpo@atelier.example",
        "received": "2026-11-03"}

SEED: dict[tuple[str, str], tuple[bool, list[dict]]] = {
    ("crm", "contacts"): (True, [
        {"id": "c-1", "name": HOSTILE, "email": "zoe.roux@example.org",
         "address": {"city": "Lyon", "street": "12 rue Mercière", "geo": {"lat": 45.76, "lon": 4.83}},
         "tags": ["vip", "newsletter"], "opt_in": True, "phone": None},
    ]),
    ("crm", "notes"): (False, [
        {"id": f"n-{i}", "body": f"Called about order {i}; formula =SUM(A1)", "author": "agent-7"} for i in range(3)
    ] + [{"id": "n-x", "body": "=HYPERLINK(\"http://evil.example\")", "extra": {"deep": {"er": 1}}}]),
    ("shop", "orders"): (True, [
        {"id": 1000 + i, "total": 19.9 + i, "currency": "EUR", "billing": {"email": "zoe.roux@example.org",
                                                                           "name": "Zoé Roux"},
         "lines": [{"sku": f"SKU-{i}", "qty": 1}]}
        for i in range(PREVIEW_ROWS + 7)
    ]),
    ("shop", "empty"): (True, []),
    ("shop", "tickets"): (False, [
        {"id": "t-1", "subject": "Où est ma commande ?", "body": "line one\r\nline two"},
    ]),
}


def seed(store: ExportStore, request_id: str = REQUEST,
         data: dict[tuple[str, str], tuple[bool, list[dict]]] = SEED) -> None:
    exports = store.for_request(request_id)
    for (system, dataset), (provided, records) in data.items():
        with exports.open(system, dataset, provided=provided) as writer:
            for record in records:
                writer.write(record)


@pytest.fixture
def store(storage_url: str) -> ExportStore:
    store = ExportStore(store_at(storage_url), TEST_KEYRING)
    seed(store)
    # another subject's request in the same store must never leak into this bundle
    seed(store, "dsr-2026-11-OTHER9", {("crm", "contacts"): (True, [{"id": "c-9", "email": "other@example.org"}])})
    return store


def build(store: ExportStore, **kwargs: Any) -> BundleInfo:
    options: dict[str, Any] = {"language": Language.EN, "kind": RequestKind.ACCESS, "reference_info": INFO, "now": NOW}
    options.update(kwargs)
    return build_bundle(store, REQUEST, **options)


def unzip(store: ExportStore, info: BundleInfo, request_id: str = REQUEST) -> zipfile.ZipFile:
    with open_bundle(TEST_KEYRING, store.objects, info.key, request_id) as stream:
        data = b"".join(stream)
    assert len(data) == info.size and hashlib.sha256(data).hexdigest() == info.sha256
    return zipfile.ZipFile(io.BytesIO(data))


def sorted_pairs(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    assert keys == sorted(keys), f"keys not sorted: {keys}"
    return dict(pairs)


def csv_rows(zf: zipfile.ZipFile, name: str, delimiter: str = ",") -> list[dict[str, str]]:
    raw = zf.read(name)
    assert raw.startswith(b"\xef\xbb\xbf"), "UTF-8 BOM for Excel"
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline=""), delimiter=delimiter))


def test_bundle_holds_every_record_and_a_matching_manifest(store: ExportStore) -> None:
    info = build(store)
    assert info.key == "exports/dsr-2026-11-bndl01/bundle.zip.enc" == store.bundle_key(REQUEST)
    zf = unzip(store, info)
    names = zf.namelist()
    expected_csv = [f"csv/{s}/{d}.csv" for (s, d), (_, records) in sorted(SEED.items()) if records]
    assert names == ["data.json", *expected_csv, "report.html", "manifest.json"] == info.files
    assert info.records == {f"{s}/{d}": len(records) for (s, d), (_, records) in SEED.items()}

    manifest = json.loads(zf.read("manifest.json"))
    assert {f["name"] for f in manifest["files"]} == set(names) - {"manifest.json"}
    for entry in manifest["files"]:
        content = zf.read(entry["name"])
        assert len(content) == entry["size"] and hashlib.sha256(content).hexdigest() == entry["sha256"]
    assert manifest["reference"] == INFO["reference"] and manifest["request"] == INFO
    assert (manifest["kind"], manifest["language"], manifest["provided_only"]) == ("access", "en", False)
    assert manifest["generated_at"] == "2026-12-01T09:30:00Z"
    empty = next(d for d in manifest["datasets"] if d["dataset"] == "empty")
    assert empty == {"system": "shop", "dataset": "empty", "records": 0, "provided": True, "csv": None}

    data = json.loads(zf.read("data.json"), object_pairs_hook=sorted_pairs)
    expected: dict = {}
    for (system, dataset), (_, records) in sorted(SEED.items()):
        expected.setdefault(system, {})[dataset] = records
    assert data == expected  # every record, nothing else (not the other request's subject)
    assert b"other@example.org" not in zf.read("data.json")

    for (system, dataset), (_, records) in SEED.items():
        if records:
            rows = csv_rows(zf, f"csv/{system}/{dataset}.csv")
            assert len(rows) == len(records)
    # Columns are labelled (nested ones segment by segment), values worded for a reader.
    [contact] = csv_rows(zf, "csv/crm/contacts.csv")
    assert contact["Name"] == HOSTILE  # CRLF kept inside a quoted field
    assert contact["Address › Geo › Lat"] == "45.76" and contact["Address › City"] == "Lyon"
    assert json.loads(contact["Tags"]) == ["vip", "newsletter"]
    assert (contact["Opt in"], contact["Phone"]) == ("yes", "")
    notes = csv_rows(zf, "csv/crm/notes.csv")
    assert notes[-1]["Body"].startswith("'=HYPERLINK") and notes[-1]["Extra › Deep › Er"] == "1"
    assert notes[0]["Extra › Deep › Er"] == ""  # columns are the union over every record
    orders = csv_rows(zf, "csv/shop/orders.csv")
    assert [int(r["Identifier"]) for r in orders] == [r["id"] for r in SEED["shop", "orders"][1]]
    assert orders[0]["Billing › Name"] == "Zoé Roux"
    assert [r["Total"] for r in orders[:2]] == ["€19.90", "€20.90"]


def test_encrypted_at_rest_private_and_no_plaintext_left(store: ExportStore, storage_url: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))  # where the worker's private zip is built
    info = build(store)
    raw = store.objects.get(info.key)
    assert raw.startswith(BUNDLE_MAGIC)
    if storage_url.startswith("file:"):
        assert oct((Path(storage_url.removeprefix("file://")) / info.key).stat().st_mode & 0o777) == "0o600"
    assert os.listdir(scratch) == [], "the plaintext zip was never visible, and is gone"
    assert [k for k in store.objects.list(store.prefix(REQUEST)) if "/data/" not in k] == [info.key]
    for key in store.objects.list("exports/"):  # the bundle, and every export chunk it was built from
        for value in (b"zoe.roux", b"Lyon", b"Merci", b"<script>", b"HYPERLINK", b"PK\x03\x04", b"data.json",
                      "Zoé".encode(), b"SKU-1"):
            assert value not in store.objects.get(key), key


def test_tampering_truncation_moving_and_another_request_fail(store: ExportStore) -> None:
    big = {("shop", "orders"): (True, [{"id": i, "pad": os.urandom(300).hex()} for i in range(4000)])}
    request = "dsr-2026-11-BIG001"
    seed(store, request, big)
    info = build_bundle(store, request, language=Language.FR, kind=RequestKind.ACCESS, reference_info={})
    assert info.size > 2 * CHUNK_SIZE  # several chunks
    objects = store.objects
    assert len(b"".join(open_bundle(TEST_KEYRING, objects, info.key, request))) == info.size
    original = objects.get(info.key)

    with pytest.raises(DecryptionError):  # bound to its request
        open_bundle(TEST_KEYRING, objects, info.key, "dsr-2026-11-OTHER9")
    objects.put(store.bundle_key("dsr-2026-11-OTHER9"), original)  # moved under another request
    with pytest.raises(DecryptionError):
        open_bundle(TEST_KEYRING, objects, store.bundle_key("dsr-2026-11-OTHER9"), "dsr-2026-11-OTHER9")

    for offset in (len(original) // 2, len(original) - 1, 20):  # a later chunk, the last one, the header
        tampered = bytearray(original)
        tampered[offset] ^= 0x01
        objects.put(info.key, bytes(tampered))
        with pytest.raises(DecryptionError):
            b"".join(open_bundle(TEST_KEYRING, objects, info.key, request))

    for damaged in (original[:-1], original[: len(original) - CHUNK_SIZE - 28], original + b"\x00", b"PK" + original):
        objects.put(info.key, damaged)
        with pytest.raises(DecryptionError):
            b"".join(open_bundle(TEST_KEYRING, objects, info.key, request))

    objects.put(info.key, original)
    with pytest.raises(UnknownKeyError):
        open_bundle(KeyRing({"other": bytes(32)}, current="other"), objects, info.key, request)
    with pytest.raises(BundleError):  # not a bundle at all
        open_bundle(TEST_KEYRING, objects, store.dataset_prefix(request, "shop", "orders") + "meta.json", request)

    stream = open_bundle(TEST_KEYRING, objects, info.key, request)
    next(stream)
    assert store.delete(request)  # the link expired during the download: the rest is not served
    with pytest.raises(BundleError, match="deleted during the download"):
        b"".join(stream)
    with pytest.raises(ObjectNotFound):  # the intake's "gone" page
        open_bundle(TEST_KEYRING, objects, info.key, request)


def test_report_is_escaped_self_contained_and_in_the_language(store: ExportStore) -> None:
    for language, words in ((Language.EN, ("Your personal data", "About these files", "7 more records")),
                            (Language.FR, ("Vos données personnelles", "À propos de ces fichiers",
                                           "7 autres enregistrements", "1er décembre 2026"))):
        info = build(store, language=language)
        report = unzip(store, info).read("report.html").decode("utf-8")
        assert report.startswith("<!DOCTYPE html>") and f'<html lang="{language.value}"' in report
        for word in words:
            assert word in report
        assert "<script" not in report.lower()
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report
        assert "http://" not in report.replace("http://evil.example", "")  # only the record's own (escaped) text
        assert "https://" not in report
        links = re.findall(r"""(?:src|href|action|srcset)\s*=\s*["']?([^"'\s>]+)""", report, re.IGNORECASE)
        assert links and all(link.startswith("#") for link in links), links
        assert "url(" not in report and "@import" not in report and "<link" not in report
        assert "@media print" in report and "default-src 'none'" in report
        assert report.count('<tr><td>') == PREVIEW_ROWS + 4 + 1  # orders capped + notes + tickets rows
        assert html.unescape(report).count("Called about order") == 3
        # 'contacts' has more than WIDE_TABLE columns: one field/value table per record
        label = "Address › Geo › Lat" if language == Language.EN else "Adresse › Geo › Lat"
        assert 'class="record"' in report and label in report
        assert "Transmitting" not in report and "Transmettre" not in report


def test_portability_keeps_only_provided_datasets(store: ExportStore) -> None:
    info = build(store, kind=RequestKind.PORTABILITY, provided_only=True, language=Language.FR)
    zf = unzip(store, info)
    assert zf.namelist() == ["data.json", "csv/crm/contacts.csv", "csv/shop/orders.csv", "report.html",
                             "manifest.json"]
    data = json.loads(zf.read("data.json"))
    assert data == {"crm": {"contacts": SEED["crm", "contacts"][1]},
                    "shop": {"empty": [], "orders": SEED["shop", "orders"][1]}}
    manifest = json.loads(zf.read("manifest.json"))
    assert manifest["provided_only"] is True and manifest["kind"] == "portability"
    assert set(info.records) == {"crm/contacts", "shop/empty", "shop/orders"}
    report = zf.read("report.html").decode()
    assert "Transmettre vos données à un autre responsable du traitement" in report
    assert "notes" not in report and "tickets" not in report and "Called about" not in report
    assert "Vide : aucun enregistrement dans ce jeu de données (donc pas de fichier CSV)." in report
    assert "csv/shop/empty.csv" not in report
    assert csv_rows(zf, "csv/crm/contacts.csv", ";")[0]["Adresse › Ville"] == "Lyon"


def test_no_data_gives_an_empty_but_valid_bundle(storage_url: str) -> None:
    store = ExportStore(store_at(storage_url), TEST_KEYRING)
    info = build_bundle(store, "dsr-2026-11-NODATA", language=Language.EN, kind=RequestKind.ACCESS,
                        reference_info={})
    zf = unzip(store, info, "dsr-2026-11-NODATA")
    assert json.loads(zf.read("data.json")) == {}
    assert "holds any record about you" in zf.read("report.html").decode()
    assert json.loads(zf.read("manifest.json"))["reference"] == "dsr-2026-11-NODATA"
    assert store.delete("dsr-2026-11-NODATA") and not store.objects.exists(info.key)  # dies with the exports


def test_a_failed_build_leaves_no_plaintext_and_the_previous_bundle(store: ExportStore, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    before = build(store)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))

    def broken(*args: object, **kwargs: object) -> Iterator[bytes]:
        yield b"DSRBNDL"
        raise RuntimeError("disk full")

    monkeypatch.setattr("dsr.mail.bundle._encrypt", broken)
    with pytest.raises(RuntimeError):
        build(store)
    assert os.listdir(scratch) == []
    assert unzip(store, before).namelist()[0] == "data.json"  # the retry's failure did not damage it


@pytest.mark.slow
def test_memory_stays_bounded_for_a_large_export(storage_url: str, tmp_path: Path) -> None:
    store = ExportStore(store_at(storage_url), TEST_KEYRING)
    records = 20_000
    with store.for_request(REQUEST).open("shop", "orders", provided=True) as writer:
        for i in range(records):
            writer.write({"id": i, "billing": {"email": f"zoe.roux+{i}@example.org", "city": "Lyon"},
                          "note": f"order {i} " + "x" * 2000, "lines": [{"sku": f"SKU-{i}", "qty": i % 5}]})
    limit = 30 * 1024 * 1024
    tracemalloc.start()
    try:
        info = build_bundle(store, REQUEST, language=Language.EN, kind=RequestKind.ACCESS, reference_info={})
        _, build_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        streamed = sum(len(chunk) for chunk in open_bundle(TEST_KEYRING, store.objects, info.key, REQUEST))
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert streamed == info.size and info.records == {"shop/orders": records}
    plain = tmp_path / "large.zip"
    with plain.open("wb") as f:
        for chunk in open_bundle(TEST_KEYRING, store.objects, info.key, REQUEST):
            f.write(chunk)
    with zipfile.ZipFile(plain) as zf:
        data_json = zf.getinfo("data.json").file_size
        with zf.open("csv/shop/orders.csv") as f:
            assert sum(1 for _ in csv.reader(io.TextIOWrapper(f, encoding="utf-8-sig", newline=""))) == records + 1
    assert data_json > limit, "data.json must be larger than the memory allowed, or the test proves nothing"
    assert build_peak < limit, f"peak traced memory while building: {build_peak / 2**20:.1f} MiB"
    assert read_peak < limit, f"peak traced memory while streaming: {read_peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("cell", [
    "=SUM(A1)", "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1",
    " =HYPERLINK(\"http://evil.example\")", "\n=1", "  \n\t+1", "\u00a0=1", "\u200b=1", "\u3000@x",
    "\uff1dHYPERLINK(\"http://evil.example\")", "\uff0b1", "\uff0d1", "\uff20SUM(A1)", "\ufe66 1", "\x00=1",
])
def test_csv_cells_that_a_spreadsheet_would_run_are_quoted(cell: str) -> None:
    """Issue 12 finding 9: leading blanks, newlines, controls and full-width signs no longer slip through."""
    from dsr.mail.bundle import _csv_safe

    assert _csv_safe(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["Lyon", "a=b", " Lyon", "", "   ", "1-2", "\u00e9=1", "order #4521 (+33)"])
def test_csv_cells_that_are_not_formulas_stay_as_they_are(cell: str) -> None:
    from dsr.mail.bundle import _csv_safe

    assert _csv_safe(cell) == cell
