"""Deleting what a request left on the object store when the request no longer justifies keeping it.

``delete_exports`` (link expiry, and a request closed as refused, withdrawn or unverified) lives with the
replies; ``delete_earlier_exports`` is the erasure's: once a subject's data is erased from every system,
the copies we still hold for their earlier access and portability requests -- bundles downloadable until
their link expires -- go too, or the erasure would leave a complete copy behind.
"""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity

from dsr.domain.model import AuditEvent, ExportsDeletion, RequestKind
from dsr.store.exports import ExportStore
from dsr.store.ledger import Ledger

DOWNLOADABLE_KINDS = (RequestKind.ACCESS, RequestKind.PORTABILITY)


class StorageActivities:
    def __init__(self, exports: ExportStore, ledger: Ledger) -> None:
        self._exports = exports
        self._ledger = ledger

    @activity.defn(name="delete_earlier_exports")
    def delete_earlier_exports(self, erasure: ExportsDeletion) -> int:
        """Delete the exports (and bundles) of the subject's access and portability requests received no
        later than the erasure ``erasure.request_id``, found through the ledger's blind index; each such
        request's ledger records the deletion. Returns how many requests still had exports (idempotent:
        a retry finds nothing left and records nothing twice)."""
        deleted = 0
        for other in self._ledger.earlier_of_same_subject(erasure.request_id, DOWNLOADABLE_KINDS):
            if not self._exports.holds(other):
                continue
            # Recorded first (once, by its key): a crash between the two is retried, and the deletion happens.
            self._ledger.append_event(
                AuditEvent(request_id=other, event="exports_deleted", details={"erasure": erasure.request_id}),
                key=f"erasure-exports/{erasure.request_id}/{other}",
                at=datetime.now(UTC),
            )
            self._exports.delete(other)
            deleted += 1
        return deleted
