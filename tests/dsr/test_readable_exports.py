"""Issue 18 point 6: the export bundle reads like a document, in the subject's language, while data.json stays
the systems' exact data. Records shaped like the connectors' (HubSpot, Stripe, WooCommerce), built into a real
bundle on a real export store, read back from the decrypted zip."""

from __future__ import annotations

import csv
import html
import io
import json
import zipfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from dsr.domain.model import Language, RequestKind
from dsr.mail.bundle import build_bundle, open_bundle
from dsr.mail.readable import Readable, format_amount, humanise
from dsr.store import store_at
from dsr.store.exports import ExportStore
from tests.harness import TEST_KEYRING

REQUEST = "dsr-2026-11-READ01"
NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)  # 10:30 in Paris
CREATED = 1796280788  # a Unix time: 2026-12-03 06:53:08 UTC, 07:53 in Paris (UTC+1 in December)
INFO = {"reference": "DSR-2026-11-READ01", "controller_name": "Kestio SAS", "received": "2026-11-03"}

SEED: dict[tuple[str, str], list[dict]] = {
    ("stripe", "charges"): [
        {"id": "ch_1", "object": "charge", "amount": 1250, "amount_refunded": 0, "currency": "eur",
         "created": CREATED, "paid": True, "description": "=HYPERLINK(\"http://evil.example\")",
         "billing_details": {"address": {"city": "Lyon", "postal_code": "69003"}, "name": "Camille Durand"}},
        {"id": "ch_2", "object": "charge", "amount": 123456, "amount_refunded": 0, "currency": "eur",
         "created": CREATED, "paid": False, "description": None, "billing_details": {}},
    ],
    ("stripe", "invoices"): [],
    ("hubspot", "notes"): [
        {"id": "51", "archived": False, "createdAt": "2026-11-03T09:05:00.000Z",
         "properties": {"hs_note_body": "Called about a late delivery; offered a voucher.",
                        "hs_timestamp": "2026-11-03T09:05:00.000Z", "hs_first_visit": "direct"}},
    ],
    ("woocommerce", "orders"): [
        {"id": 7, "currency": "EUR", "total": "12.50", "date_created": "2026-11-03T10:05:00",
         "date_created_gmt": "2026-11-03T09:05:00", "billing": {"first_name": "Camille"}},
    ],
}
SYSTEMS = {"fr": {"stripe": "Stripe (paiements)", "hubspot": "CRM HubSpot", "woocommerce": "Boutique"},
           "en": {"stripe": "Stripe (payments)", "hubspot": "HubSpot CRM", "woocommerce": "Shop"}}


@pytest.fixture
def store(tmp_path: Path) -> ExportStore:
    store = ExportStore(store_at(f"file://{tmp_path}"), TEST_KEYRING)
    exports = store.for_request(REQUEST)
    for (system, dataset), records in SEED.items():
        with exports.open(system, dataset, provided=True) as writer:
            for record in records:
                writer.write(record)
    return store


def bundle(store: ExportStore, lang: str) -> zipfile.ZipFile:
    info = build_bundle(store, REQUEST, language=Language(lang), kind=RequestKind.ACCESS, reference_info=INFO,
                        now=NOW, timezone="Europe/Paris", system_labels=SYSTEMS[lang])
    with open_bundle(TEST_KEYRING, store.objects, info.key, REQUEST) as stream:
        return zipfile.ZipFile(io.BytesIO(b"".join(stream)))


def table(zf: zipfile.ZipFile, name: str, delimiter: str) -> list[list[str]]:
    raw = zf.read(name)
    assert raw.startswith(b"\xef\xbb\xbf"), "UTF-8 BOM: Excel reads the accents"
    return list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline=""), delimiter=delimiter))


def test_french_bundle_reads_in_french_with_semicolons_paris_times_and_euros(store: ExportStore) -> None:
    zf = bundle(store, "fr")
    # No 3-byte CSV for an empty dataset: the manifest and the report say it is empty.
    assert sorted(n for n in zf.namelist() if n.startswith("csv/")) == [
        "csv/hubspot/notes.csv", "csv/stripe/charges.csv", "csv/woocommerce/orders.csv"]
    manifest = json.loads(zf.read("manifest.json"))
    assert {d["dataset"]: d["csv"] for d in manifest["datasets"]}["invoices"] is None
    assert (manifest["timezone"], manifest["csv_delimiter"]) == ("Europe/Paris", ";")

    # A French spreadsheet splits on ';': one cell per column, even with commas in the values.
    [header, first, second] = table(zf, "csv/stripe/charges.csv", ";")
    charge = dict(zip(header, first, strict=True))
    assert header[0] == "Identifiant" and charge["Identifiant"] == "ch_1"
    assert charge["Montant"] == "12,50\u00a0€" and charge["Montant remboursé"] == "0,00\u00a0€"
    assert dict(zip(header, second, strict=True))["Montant"] == "1\u202f234,56\u00a0€"
    assert charge["Créé le"] == "2026-12-03 07:53"  # the Unix time, in Paris, as a spreadsheet reads a date
    assert charge["Payé"] == "oui" and charge["Devise"] == "EUR"
    assert charge["Facturation › Adresse › Ville"] == "Lyon"
    assert charge["Description"] == "'=HYPERLINK(\"http://evil.example\")"  # the formula guard stays

    [header, row] = table(zf, "csv/hubspot/notes.csv", ";")
    note = dict(zip(header, row, strict=True))
    assert note["Note"] == "Called about a late delivery; offered a voucher."  # properties.hs_note_body
    assert note["Date"] == "2026-11-03 10:05"  # an ISO time in UTC, shown in Paris
    assert note["First visit"] == "direct"  # no label known: a humanised name, never the raw hs_ property
    assert not any("properties." in h or h.startswith("hs_") for h in header)

    [header, row] = table(zf, "csv/woocommerce/orders.csv", ";")
    order = dict(zip(header, row, strict=True))
    assert order["Total"] == "12,50\u00a0€"  # WooCommerce amounts are in euros already, not cents
    assert order["Créé le"] == "2026-11-03 10:05" == order["Créé le (horloge GMT)"]  # the shop's clock = Paris

    report = html.unescape(zf.read("report.html").decode("utf-8"))
    for words in ("Paiements", "Notes de notre équipe", "Commandes", "Factures",  # the reply email's words
                  "Stripe (paiements)", "CRM HubSpot",  # the systems as the profile names them
                  "12,50\u00a0€", "3 décembre 2026 à 07:53", "3 novembre 2026 à 10:05", "Note", "Montant",
                  "Vide : aucun enregistrement dans ce jeu de données (donc pas de fichier CSV).",
                  "1er décembre 2026, 10:30 (Europe/Paris)", "fuseau horaire Europe/Paris",
                  "cellules séparées par des points-virgules"):
        assert words in report, words
    assert "1796280788" not in report and "hs_note_body" not in report.replace("hubspot/notes", "")
    assert "csv/stripe/invoices.csv" not in report

    # data.json keeps the systems' own names and values, exactly.
    data = json.loads(zf.read("data.json"))
    assert data["stripe"]["charges"] == SEED["stripe", "charges"]
    assert data["hubspot"]["notes"][0]["properties"]["hs_note_body"].startswith("Called about")
    assert data["stripe"]["invoices"] == []


def test_english_bundle_reads_in_english_with_commas(store: ExportStore) -> None:
    zf = bundle(store, "en")
    assert json.loads(zf.read("manifest.json"))["csv_delimiter"] == ","
    [header, first, second] = table(zf, "csv/stripe/charges.csv", ",")
    charge = dict(zip(header, first, strict=True))
    assert (charge["Amount"], charge["Paid"], charge["Created"]) == ("€12.50", "yes", "2026-12-03 07:53")
    assert dict(zip(header, second, strict=True))["Amount"] == "€1,234.56"  # quoted: the comma stays in the cell
    [header, row] = table(zf, "csv/hubspot/notes.csv", ",")
    assert dict(zip(header, row, strict=True))["Note"].startswith("Called about")
    report = html.unescape(zf.read("report.html").decode("utf-8"))
    for words in ("Payments", "Notes from our team", "Stripe (payments)", "€12.50", "3 December 2026, 07:53",
                  "Empty: no record in this dataset (so no CSV file).", "cells separated by commas"):
        assert words in report, words
    assert "Paiements" not in report


@pytest.mark.parametrize(("amount", "currency", "fr", "en"), [
    (Decimal("12.5"), "eur", "12,50\u00a0€", "€12.50"),
    (Decimal("-3"), "EUR", "-3,00\u00a0€", "-€3.00"),
    (Decimal("1250"), "jpy", "1\u202f250\u00a0¥", "¥1,250"),  # no minor unit
    (Decimal("9.99"), "chf", "9,99\u00a0CHF", "CHF\u00a09.99"),
])
def test_amounts_with_their_currency(amount: Decimal, currency: str, fr: str, en: str) -> None:
    assert format_amount(amount, currency, "fr") == fr
    assert format_amount(amount, currency, "en") == en


def test_values_are_only_reworded_when_they_are_what_they_look_like() -> None:
    fr = Readable("fr", "Europe/Paris")

    def value(kind: str | None, key: str, raw: object, parent: dict | None = None) -> str:
        return fr.value(kind, key, raw, parent, parent, csv=False)

    assert value("stripe", "amount", 1250, {"currency": "jpy"}) == "1\u202f250\u00a0¥"  # zero-decimal currency
    assert value("stripe", "amount", 1250, {}) == "1250"  # no currency beside it: a plain number
    assert value("hubspot", "amount", "240", {}) == "240"
    assert value("stripe", "created", 7) == "7"  # not a plausible time: left alone
    assert value("stripe", "quantity", CREATED) == str(CREATED)  # not a date field: a count, left alone
    assert value(None, "createdAt", CREATED * 1000) == "3 décembre 2026 à 07:53"  # milliseconds
    assert value(None, "updated", "2026-07-01T12:00:00+02:00") == "1er juillet 2026 à 12:00"  # summer time
    assert value(None, "date_of_birth", "1990-05-04") == "4 mai 1990"
    assert value(None, "note", "2026-13-45") == "2026-13-45"  # looks like a date, is not one
    assert value(None, "tags", ["a", "b"]) == '["a","b"]'
    assert value(None, "opt_in", False) == "non"
    assert Readable("en").value(None, "created", CREATED, None, None, csv=False) == "3 December 2026, 06:53"  # UTC


def test_labels_per_connector_then_common_words_then_humanised() -> None:
    fr, en = Readable("fr"), Readable("en")
    assert fr.field("hubspot", "properties.hs_note_body") == "Note"
    assert en.field("stripe", "payment_method_details.card.last4") == "Payment method › Card › Last 4 digits"
    assert fr.field(None, "billing.billing") == "Facturation"  # a repeated word reads once
    assert fr.field(None, "loyalty_points") == "Loyalty points"
    assert humanise("hs_first_visit") == "First visit" and humanise("lastSeenAt") == "Last seen at"
    assert Readable.connector_type("crm", "notes") == "hubspot"  # a system named otherwise, known by its datasets
    assert Readable.connector_type("app", "sessions") is None
    assert Readable.connector_type("app", "customer") is None  # Stripe's or WooCommerce's? Neither is assumed
    assert Readable.connector_type("app", "charges", {"app": "sql"}) == "sql"  # as configured: no guess


def test_an_application_database_is_not_read_as_stripe(tmp_path: Path) -> None:
    """A `sql` system's integer amounts are not cents, even in a dataset named like Stripe's: dsr.toml says so."""
    store = ExportStore(store_at(f"file://{tmp_path}"), TEST_KEYRING)
    with store.for_request(REQUEST).open("app", "charges", provided=True) as writer:
        writer.write({"id": 1, "amount": 1250, "currency": "EUR"})
    for types, amount in (({"app": "sql"}, "1\u202f250,00\u00a0€"), ({"app": "stripe"}, "12,50\u00a0€")):
        info = build_bundle(store, REQUEST, language=Language.FR, kind=RequestKind.ACCESS, reference_info=INFO,
                            now=NOW, timezone="Europe/Paris", system_types=types)
        with open_bundle(TEST_KEYRING, store.objects, info.key, REQUEST) as stream:
            zf = zipfile.ZipFile(io.BytesIO(b"".join(stream)))
        [header, row] = table(zf, "csv/app/charges.csv", ";")
        assert dict(zip(header, row, strict=True))["Montant"] == amount, types


def test_the_worker_reads_the_connector_types_from_dsr_toml(tmp_path: Path) -> None:
    from dsr.config.settings import Settings
    from worker import connector_types

    settings = Settings.from_env({"DSR_HOME": str(tmp_path)})
    assert connector_types(settings) == {}  # a fresh install: no connectors
    settings.config_file.write_text('[[connectors]]\ntype = "hubspot"\nname = "crm"\n'
                                    'credentials = { token = "HUBSPOT_TOKEN" }\n\n'
                                    '[[connectors]]\ntype = "stripe"\ncredentials = { api_key = "STRIPE_KEY" }\n',
                                    encoding="utf-8")
    assert connector_types(settings) == {"crm": "hubspot", "stripe": "stripe"}
    settings.config_file.write_text("[[connectors]\n", encoding="utf-8")
    assert connector_types(settings) == {}  # unreadable: labels are guessed, `dsr config check` tells why
