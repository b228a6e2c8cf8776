"""Ledger writes, as activities: every step of a request leaves an audit event that outlives Temporal."""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity

from dsr.domain.model import (
    AuditEvent,
    Channel,
    ConsentRecord,
    DirectivesFound,
    DirectivesLookup,
    EventBatch,
    RequestRecordInput,
    Stage,
    Suppression,
    TriageDismissed,
)
from dsr.store.directives import DirectivesRegister
from dsr.store.ledger import Ledger, TriageDismissalRecord
from dsr.store.suppressions import SuppressionList


def ledger_event_key() -> str:
    """Stable across retries of one activity execution (and, for a local activity, across the replays that run it
    again after a lost workflow task), unique across executions and runs. A local activity's id is its sequence
    number, counted apart from the activities': marked, so that local 3 and activity 3 never share a key."""
    info = activity.info()
    return f"{info.workflow_id}/{info.workflow_run_id}/{'local-' if info.is_local else ''}{info.activity_id}"


def record_batch(ledger: Ledger, events: list[AuditEvent], *, key: str = "") -> int:
    """Append ``events`` in order, in one transaction, keyed by ``key`` (default: the running activity's,
    ``ledger_event_key``) and their place in the batch: a retry writes none twice. Answers how many were new."""
    key = key or ledger_event_key()
    return ledger.append_events([(event, f"{key}/{n}") for n, event in enumerate(events)], at=datetime.now(UTC))


class LedgerActivities:
    """Synchronous database work; the worker runs these in its thread pool."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._suppressions = SuppressionList(ledger)
        self._directives = DirectivesRegister(ledger)

    @activity.defn(name="record_request")
    def record_request(self, record: RequestRecordInput) -> bool:
        """Create the request's row and its first event, ``received``; a retry finds them and changes nothing.

        The event is written here, by the step that does the work, rather than by an activity of its own: one
        round trip less, and the ledger's story starts with it before any email of the request is recorded. Keyed by
        the run (one row per run), not by the activity: the request's local tries and the activity that may follow
        them (``_local_first``) write it once, even after a try that committed and was not heard of."""
        now = datetime.now(UTC)
        info = activity.info()
        created = self._ledger.record_request(record, now=now)
        self._ledger.append_event(
            AuditEvent(request_id=record.request_id, event="received", stage=Stage.RECEIVED,
                       details={"channel": Channel(record.channel).value,
                                **({"scope": record.scope} if record.scope else {}),
                                **({"documents": str(record.documents)} if record.documents else {})}),
            key=f"{info.workflow_id}/{info.workflow_run_id}/received", at=now)
        return created

    @activity.defn(name="record_event")
    def record_event(self, event: AuditEvent) -> bool:
        """Append one audit event (and move the request's stage); a retry writes nothing twice."""
        return self._ledger.append_event(event, key=ledger_event_key(), at=datetime.now(UTC))

    @activity.defn(name="record_events")
    def record_events(self, events: list[AuditEvent]) -> int:
        """Append several audit events in order, in one transaction (the workflow's events noted while the
        previous batch was being written); a retry writes none twice. Answers how many were new."""
        return record_batch(self._ledger, events)

    @activity.defn(name="record_event_batch")
    def record_event_batch(self, batch: EventBatch) -> int:
        """Append a batch made under its own key (the reply's first try carried it and failed): written once,
        whichever of the reply and this writes it first. Answers how many were new."""
        return record_batch(self._ledger, batch.events, key=batch.key)

    @activity.defn(name="record_triage_dismissal")
    def record_triage_dismissal(self, dismissed: TriageDismissed) -> bool:
        """Keep why a triaged email was not a request; a retry finds it kept and changes nothing."""
        return self._ledger.record_triage_dismissal(TriageDismissalRecord(
            triage_id=dismissed.triage_id, received_at=dismissed.received_at, deadline=dismissed.deadline,
            classifier_reason=dismissed.classifier_reason, reason=dismissed.reason,
            decided_by=dismissed.decided_by, attachments_deleted=dismissed.attachments_deleted,
            dismissed_at=dismissed.dismissed_at, refused_as=dismissed.refused_as, ground=dismissed.ground))

    @activity.defn(name="suppress_marketing")
    def suppress_marketing(self, suppression: Suppression) -> datetime:
        """Put the subject on the suppression list (blind index only); answers until when. A retry extends
        nothing twice that matters: the entry runs from the latest call, a few seconds apart at most."""
        return self._suppressions.suppress(suppression.subject.email, years=suppression.years,
                                           now=datetime.now(UTC)).until

    @activity.defn(name="consent_already_withdrawn")
    def consent_already_withdrawn(self, record: ConsentRecord) -> list[str]:
        """Of ``record.purposes``, those the address withdrew before (read only, so a retry answers the same as
        long as nothing is recorded: the workflow asks before it records)."""
        return sorted(set(record.purposes) & set(self._suppressions.withdrawn(record.subject.email)))

    @activity.defn(name="record_consent_withdrawal")
    def record_consent_withdrawal(self, record: ConsentRecord) -> None:
        """Record the purposes withdrawn (blind index only); idempotent: a purpose keeps its first date."""
        self._suppressions.withdraw(record.subject.email, record.purposes, now=datetime.now(UTC))
    @activity.defn(name="find_directives")
    def find_directives(self, lookup: DirectivesLookup) -> DirectivesFound:
        """The deceased person's directives in force (loi 78-17 art. 85-I), without personal data: the instruction,
        whether they designate someone, and whether the sender is that person (compared by blind index)."""
        return self._directives.find(lookup.deceased.email, lookup.sender.email)

    @activity.defn(name="mark_directives_applied")
    def mark_directives_applied(self, lookup: DirectivesLookup) -> bool:
        """Record that this request applied the directives found (idempotent)."""
        found = self._directives.find(lookup.deceased.email, lookup.sender.email)
        return found.found and self._directives.mark_applied(found.directive_id, lookup.request_id)
