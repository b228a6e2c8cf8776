"""The operator's questions as Temporal visibility queries, shared by ``dsr due`` and the UI links.

Filters need full RFC 3339 literals and SQLite visibility has no ORDER BY, so sorting is done here.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from datetime import date, timedelta

from temporalio.client import Client

from dsr.domain.deadlines import deadline_as_search_value
from dsr.domain.model import RequestKind, Stage
from workflows import search_attributes as sa

# A request's workflow ends when it is answered (its download link and residual data live on in its aftercare);
# the few instants between closing and ending are not something still due either.
REQUESTS_RUNNING = "WorkflowType = 'DataSubjectRequest' AND ExecutionStatus = 'Running'"
RUNNING = f"{REQUESTS_RUNNING} AND DsrStage != '{Stage.CLOSED.value}'"
AFTERCARE_RUNNING = "WorkflowType = 'RequestAftercare' AND ExecutionStatus = 'Running'"


def _literal(day: date) -> str:
    return deadline_as_search_value(day).strftime('"%Y-%m-%dT%H:%M:%SZ"')


def due_within(today: date, days: int) -> str:
    """Open requests whose due date is at most ``days`` after ``today`` (overdue ones included)."""
    return f"{RUNNING} AND {sa.DSR_DEADLINE.name} < {_literal(today + timedelta(days=days + 1))}"


def overdue() -> str:
    return f"{RUNNING} AND {sa.DSR_OVERDUE.name} = true"


def in_stage(stage: Stage) -> str:
    return f"{RUNNING} AND {sa.DSR_STAGE.name} = '{stage.value}'"


def residual_data() -> str:
    """Answered requests whose residual data (not erasable through a system's API) waits to be cleared: their
    aftercare workflows (``aftercare-<reference>``)."""
    return f"{AFTERCARE_RUNNING} AND {sa.DSR_RESIDUAL.name} = true"


def mail_not_delivered() -> str:
    """Requests with a notice that could not be sent on its first try and is still being retried."""
    return f"{REQUESTS_RUNNING} AND {sa.DSR_MAIL_PENDING.name} > 0"


def connectors_degraded() -> str:
    """Requests with a connector failing (retried, neither succeeding nor progressing) past the policy's limit."""
    return f"{RUNNING} AND {sa.DSR_DEGRADED.name} > 0"


def of_kind(kind: RequestKind) -> str:
    """Open requests of one kind (``DsrKind``), e.g. every objection under way."""
    return f"{RUNNING} AND {sa.DSR_KIND.name} = '{RequestKind(kind).value}'"


def decisions_needed() -> str:
    """Objections to processing other than marketing (Art. 21(1)) waiting for ``dsr decide``."""
    return f"{of_kind(RequestKind.OBJECTION)} AND {sa.DSR_STAGE.name} = '{Stage.NEEDS_ATTENTION.value}'"


def quality_to_confirm() -> str:
    """Requests about a deceased person (loi 78-17 art. 85) waiting for staff to review the sender's documents:
    ``dsr confirm-quality`` or ``dsr refuse --ground quality``."""
    return f"{of_kind(RequestKind.POST_MORTEM)} AND {sa.DSR_STAGE.name} = '{Stage.AWAITING_IDENTITY.value}'"


def restrictions_in_force() -> str:
    """Answered restrictions (Art. 18) not yet lifted, their lift scheduled or not: ``restriction-<reference>``."""
    return "WorkflowType = 'RestrictionInForce' AND ExecutionStatus = 'Running'"


def open_requests() -> str:
    """Every request not yet answered (what the UI's list shows by default, less the other workflow types)."""
    return RUNNING


def ended_by_hand() -> str:
    """Requests whose workflow was terminated (or otherwise stopped) in Temporal: to record with `dsr reconcile`."""
    return ("WorkflowType = 'DataSubjectRequest' AND ExecutionStatus IN "
            "('Terminated', 'Canceled', 'Failed', 'TimedOut')")


DATED_VIEWS = frozenset({"due within 7 days"})
"""Views whose query holds today's date (visibility queries have no "now"): a link to one is true on the day it
was made; ``dsr dashboard`` makes them afresh."""


def ui_links(ui_url: str, namespace: str, today: date) -> dict[str, str]:
    """Temporal UI links pre-filtered for the daily questions of a DPO or an operator on call."""
    queries = {
        "open requests": open_requests(),
        "due within 7 days": due_within(today, 7),
        "overdue": overdue(),
        "awaiting identity": in_stage(Stage.AWAITING_IDENTITY),
        "needs attention": in_stage(Stage.NEEDS_ATTENTION),
        "residual data to clear": residual_data(),
        "mail not delivered": mail_not_delivered(),
        "connector degraded": connectors_degraded(),
        "objections under way": of_kind(RequestKind.OBJECTION),
        "objections to decide": decisions_needed(),
        "withdrawals of consent under way": of_kind(RequestKind.CONSENT_WITHDRAWAL),
        "deceased persons' data": of_kind(RequestKind.POST_MORTEM),
        "quality to confirm (deceased persons)": quality_to_confirm(),
        "restrictions in force": restrictions_in_force(),
        "ended by hand": ended_by_hand(),
    }
    base = f"{ui_url}/namespaces/{namespace}/workflows"
    return {label: f"{base}?query={urllib.parse.quote(q)}" for label, q in queries.items()}


@dataclass
class DueRequest:
    id: str
    kind: str
    stage: str
    deadline: date
    extended: bool
    overdue: bool


async def list_due(client: Client, today: date, days: int) -> list[DueRequest]:
    """Open requests due within ``days``, soonest (and overdue) first."""
    rows: list[DueRequest] = []
    async for wf in client.list_workflows(due_within(today, days)):
        attrs = wf.typed_search_attributes
        deadline = attrs.get(sa.DSR_DEADLINE)
        if deadline is None:
            continue
        rows.append(DueRequest(
            id=wf.id,
            kind=attrs.get(sa.DSR_KIND) or "",
            stage=attrs.get(sa.DSR_STAGE) or "",
            deadline=deadline.date(),
            extended=bool(attrs.get(sa.DSR_EXTENDED)),
            overdue=bool(attrs.get(sa.DSR_OVERDUE)) or deadline.date() < today,
        ))
    rows.sort(key=lambda r: (r.deadline, r.id))
    return rows
