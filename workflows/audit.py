"""What the audit trail keeps of each update's input: every field reaches the ledger, either in plain sight (who,
when, which choice: no personal data) or in the event's sealed note (the operator's or the subject's own words,
new values, Message-IDs). Pure functions, so the workflows stay deterministic and the test of the contract
(tests/workflows/test_audit_trail.py) can name where each field goes."""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from dsr.domain.model import Correspondence, DuplicateAttached, RequestKind, TriageDecision


def instant(value: datetime) -> str:
    """An instant as the ledger's details show it: UTC, to the second."""
    return value.astimezone(UTC).isoformat(timespec="seconds")


def changes_note(changes: dict[str, str]) -> str:
    """Corrections as ``field=value`` lines (personal data: for the sealed note only)."""
    return "\n".join(f"{field}={value}" for field, value in sorted(changes.items()))


def message_note(message_id: str | None) -> str:
    """A Message-ID (it may carry the sender's domain or address): sealed, kept to find the email again."""
    return f"message-id: {message_id}" if message_id else ""


def duplicate_details(duplicate: DuplicateAttached) -> dict[str, str]:
    details = {"channel": duplicate.channel.value, "received_at": instant(duplicate.received_at)}
    if duplicate.ticket:  # a desk's ticket number ("zendesk:4521"): no personal data
        details["ticket"] = duplicate.ticket
    if duplicate.documents:  # how many files came with it (the status page counts them)
        details["documents"] = str(duplicate.documents)
    return details


def correspondence_details(letter: Correspondence) -> dict[str, str]:
    # The message key is a keyed hash of the message: it finds the email in the mailbox, and names nobody.
    return {"message_key": letter.message_key, "received_at": instant(letter.received_at)}


def triage_details(triage_id: str, decision: TriageDecision, attached: bool) -> dict[str, str]:
    details = {"triage_id": triage_id, "kind": decision.kind.value, "attached": str(attached).lower()}
    if decision.language is not None:
        details["language"] = decision.language.value
    if decision.changes:
        details["fields"] = ",".join(sorted(decision.changes))
    if decision.scope:  # an objection: marketing or other; a post_mortem request: closure or estate
        details["scope"] = decision.scope
    if decision.quality:  # a post_mortem request: what the sender says they are (no personal data)
        details["quality"] = decision.quality
    if decision.ground:  # a restriction: its Art. 18(1) ground
        details["ground"] = decision.ground
    if decision.kind == RequestKind.CONSENT_WITHDRAWAL:  # the purposes staff read in the email; none named: all
        details["purposes"] = ",".join(decision.purposes) or "all"
    return details


def deceased_note(email: str, name: str = "") -> str:
    """The deceased person a post_mortem request is about (personal data: for the sealed note only)."""
    return f"deceased: {name} <{email}>".replace(":  <", ": <") if email else ""


def triage_note(decision: TriageDecision) -> str:
    """What staff read in the email and gave with the kind: corrections, the deceased person (sealed)."""
    return "\n".join(filter(None, (changes_note(decision.changes),
                                    deceased_note(decision.deceased_email, decision.deceased_name))))
