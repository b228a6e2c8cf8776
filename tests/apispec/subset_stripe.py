"""Cut the part of Stripe's OpenAPI description that the Stripe connector uses out of the whole one.

Stripe's ``spec3.yaml`` is 4 MB; the tests need the operations listed in :data:`PATHS` (every method of
each) and the component schemas they reach, copied unmodified. Run it again after adding an endpoint:

    python -m tests.apispec.subset_stripe ../shared/vendor-specs/stripe/spec3.2023-09-12.yaml

(writes ``tests/apispec/specs/stripe/spec3.subset.json``; the source is named in tests/apispec/SOURCES.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).parent / "specs" / "stripe" / "spec3.subset.json"

PATHS = (
    "/v1/customers",
    "/v1/customers/search",
    "/v1/customers/{customer}",
    "/v1/customers/{customer}/payment_methods",
    "/v1/charges",
    "/v1/charges/{charge}",
    "/v1/payment_intents",
    "/v1/payment_intents/{intent}",
    "/v1/payment_methods",
    "/v1/payment_methods/{payment_method}",
    "/v1/payment_methods/{payment_method}/detach",
    "/v1/invoices",
    "/v1/invoiceitems",
    "/v1/subscriptions",
    "/v1/setup_intents",
    "/v1/credit_notes",
    "/v1/quotes",
    "/v1/checkout/sessions",
    "/v1/checkout/sessions/{session}",
)


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.add(ref)
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def subset(spec: dict[str, Any]) -> dict[str, Any]:
    paths = {path: spec["paths"][path] for path in PATHS}
    schemas = spec["components"]["schemas"]
    todo: set[str] = set()
    _refs(paths, todo)
    reached: set[str] = set()
    while todo:
        ref = todo.pop()
        if ref in reached:
            continue
        reached.add(ref)
        _refs(schemas[ref.rsplit("/", 1)[-1]], todo)
    names = sorted(ref.rsplit("/", 1)[-1] for ref in reached)
    return {
        "openapi": spec["openapi"],
        "info": spec["info"],
        "servers": spec["servers"],
        "security": spec.get("security", []),
        "paths": paths,
        "components": {"securitySchemes": spec["components"]["securitySchemes"],
                       "schemas": {name: schemas[name] for name in names}},
    }


def main(source: str) -> None:
    with open(source, encoding="utf-8") as f:
        spec = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - safe loaders only
    OUT.write_text(json.dumps(subset(spec), indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
