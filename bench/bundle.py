"""Benchmark: building the export bundle of a heavy customer, streamed from the encrypted export store.

Prints, for 1,000 / 10,000 / 20,000 orders shaped like WooCommerce's (plus a customer record):
- the peak memory traced by Python while building, and while streaming the download back (the claim: a
  10,000-order customer never loads into memory, so the peak stays flat as the export grows);
- the build time as a ratio of merely reading and decrypting the same records from the store (what any
  bundle must at least do), medians of several runs: the machine is shared and noisy;
- the zip's size against the records' JSON size.

Run: ``.venv/bin/python bench/bundle.py [--runs 3] [--storage s3://bucket/prefix]`` (default: a temporary
folder; an S3 URL uses the usual ``AWS_*`` variables).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsr.domain.model import Language, RequestKind  # noqa: E402
from dsr.mail.bundle import build_bundle, open_bundle  # noqa: E402
from dsr.store import store_at  # noqa: E402
from dsr.store.crypto import KeyRing  # noqa: E402
from dsr.store.exports import ExportStore  # noqa: E402

REQUEST = "dsr-2026-11-BENCH1"


def order(i: int) -> dict:
    """About the size of a WooCommerce order as the REST API returns it (2-3 KB)."""
    address = {"first_name": "Marie", "last_name": "Lefèvre", "address_1": f"{i % 90 + 1} rue de la Paix",
               "city": "Lyon", "postcode": "69002", "country": "FR"}
    return {
        "id": 100_000 + i, "number": str(100_000 + i), "status": "completed", "currency": "EUR",
        "date_created": f"2024-{i % 12 + 1:02d}-{i % 28 + 1:02d}T10:00:00", "total": f"{(i % 200) + 9.9:.2f}",
        "billing": {**address, "email": "marie.lefevre@example.com", "phone": "+33 6 12 34 56 78"},
        "shipping": address, "customer_note": "Merci de sonner deux fois." if i % 7 == 0 else "",
        "payment_method": "stripe", "payment_method_title": "Carte bancaire",
        "line_items": [{"id": i * 10 + k, "name": f"Article {k}", "sku": f"SKU-{i % 500}-{k}", "quantity": k + 1,
                        "total": f"{(k + 1) * 4.5:.2f}", "meta_data": []} for k in range(3)],
        "meta_data": [{"id": 1, "key": "_wc_order_attribution_source_type", "value": "typein"}],
    }


def seed(store: ExportStore, orders: int) -> int:
    """The export store as the connectors leave it; returns the records' JSON size in bytes."""
    import json

    size = 0
    sink = store.for_request(REQUEST)
    with sink.open("woocommerce", "customer", provided=True) as writer:
        writer.write({"id": 7, "email": "marie.lefevre@example.com", "first_name": "Marie"})
    with sink.open("woocommerce", "orders", provided=True) as writer:
        for i in range(orders):
            record = order(i)
            size += len(json.dumps(record))
            writer.write(record)
    return size


def read_only(store: ExportStore) -> int:
    return sum(1 for system, dataset in (("woocommerce", "customer"), ("woocommerce", "orders"))
               for _ in store.read(REQUEST, system, dataset))


def measure(orders: int, runs: int, storage: str | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        objects = store_at(storage or (Path(tmp) / "storage").as_uri())
        keyring = KeyRing.load_or_create(Path(tmp) / "keys.json")
        store = ExportStore(objects, keyring)
        store.delete(REQUEST)
        json_size = seed(store, orders)
        reads, builds = [], []
        for _ in range(runs):
            started = time.perf_counter()
            read_only(store)
            reads.append(time.perf_counter() - started)
            started = time.perf_counter()
            info = build_bundle(store, REQUEST, language=Language.FR, kind=RequestKind.ACCESS,
                                reference_info={"reference": REQUEST}, timezone="Europe/Paris")
            builds.append(time.perf_counter() - started)
        tracemalloc.start()
        try:
            info = build_bundle(store, REQUEST, language=Language.FR, kind=RequestKind.ACCESS,
                                reference_info={"reference": REQUEST}, timezone="Europe/Paris")
            _, build_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            streamed = sum(len(chunk) for chunk in open_bundle(keyring, objects, info.key, REQUEST))
            _, stream_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert streamed == info.size
        store.delete(REQUEST)
        return {
            "orders": orders, "json_mb": json_size / 2**20, "zip_mb": info.size / 2**20,
            "build_peak_mb": build_peak / 2**20, "stream_peak_mb": stream_peak / 2**20,
            "build_s": statistics.median(builds),
            "ratio": statistics.median(b / r for b, r in zip(builds, reads, strict=True)),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--storage", help="DSR_STORAGE_URL to build on (default: a temporary folder)")
    args = parser.parse_args()
    print(f"{'orders':>7} {'records MB':>10} {'zip MB':>7} {'build peak MB':>13} {'stream peak MB':>14} "
          f"{'build s':>8} {'build / read':>12}")
    for orders in (1_000, 10_000, 20_000):
        m = measure(orders, args.runs, args.storage)
        print(f"{m['orders']:>7} {m['json_mb']:>10.1f} {m['zip_mb']:>7.1f} {m['build_peak_mb']:>13.1f} "
              f"{m['stream_peak_mb']:>14.1f} {m['build_s']:>8.2f} {m['ratio']:>11.1f}x")
    print("(peak: Python allocations traced while building / streaming the download; ratio: median of runs)")


if __name__ == "__main__":
    main()
