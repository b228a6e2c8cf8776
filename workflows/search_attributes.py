"""Search attribute keys, defined once: the Temporal UI's deadline dashboard is built from them.

Values never carry personal data: they are stored in plaintext in Temporal's visibility store.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from temporalio.common import SearchAttributeKey, SearchAttributePair, SearchAttributeUpdate, TypedSearchAttributes

from dsr.domain.deadlines import deadline_as_search_value
from dsr.domain.model import Channel, RequestKind, Stage

DSR_KIND = SearchAttributeKey.for_keyword("DsrKind")
DSR_STAGE = SearchAttributeKey.for_keyword("DsrStage")
DSR_OUTCOME = SearchAttributeKey.for_keyword("DsrOutcome")
DSR_CHANNEL = SearchAttributeKey.for_keyword("DsrChannel")
DSR_DEADLINE = SearchAttributeKey.for_datetime("DsrDeadline")
"""The due date at 00:00 UTC, so ``DsrDeadline < "2026-12-24T00:00:00Z"`` means "due by 23 Dec"."""
DSR_EXTENDED = SearchAttributeKey.for_bool("DsrExtended")
DSR_OVERDUE = SearchAttributeKey.for_bool("DsrOverdue")
DSR_RESIDUAL = SearchAttributeKey.for_bool("DsrResidual")
"""True while data a system's API could not erase waits to be cleared by hand (after the reply)."""

DSR_MAIL_PENDING = SearchAttributeKey.for_int("DsrMailPending")
"""How many emails of the request (notices, the final reply) could not be sent on their first try and are being
retried (SMTP down, a lost worker);
0 when none. An Int, not a Bool: Temporal's SQL visibility (the dev server, PostgreSQL) allows 3 Bools only."""

DSR_DEGRADED = SearchAttributeKey.for_int("DsrDegraded")
"""How many of the request's connectors have been failing (retried, no success, no progress) for longer than
the policy's ``connector_degraded_minutes``; 0 when none. An Int for the same reason as ``DsrMailPending``."""

ALL: tuple[SearchAttributeKey[Any], ...] = (
    DSR_KIND, DSR_STAGE, DSR_OUTCOME, DSR_CHANNEL, DSR_DEADLINE, DSR_EXTENDED, DSR_OVERDUE, DSR_RESIDUAL,
    DSR_MAIL_PENDING, DSR_DEGRADED,
)

TEMPORAL_TYPE_NAMES: dict[SearchAttributeKey[Any], str] = {
    DSR_KIND: "Keyword",
    DSR_STAGE: "Keyword",
    DSR_OUTCOME: "Keyword",
    DSR_CHANNEL: "Keyword",
    DSR_DEADLINE: "Datetime",
    DSR_EXTENDED: "Bool",
    DSR_OVERDUE: "Bool",
    DSR_RESIDUAL: "Bool",
    DSR_MAIL_PENDING: "Int",
    DSR_DEGRADED: "Int",
}
"""Type names as ``temporal server start-dev --search-attribute NAME=TYPE`` spells them."""


def dashboard(stage: Stage, channel: Channel, due: date, *, kind: RequestKind | None = None,
              extended: bool | None = None, overdue: bool = False) -> list[SearchAttributePair[Any]]:
    """The attributes the dashboard filters on, as a workflow starts with them (the intake sets them on start,
    so a request is visible from its first instant) and as a request publishes them again (after a reset).

    A request has a ``kind`` and an ``extended`` flag; a triaged email has neither (it is not a request yet).
    """
    pairs: list[SearchAttributePair[Any]] = []
    if kind is not None:
        pairs.append(SearchAttributePair(DSR_KIND, kind.value))
    pairs += [
        SearchAttributePair(DSR_STAGE, stage.value),
        SearchAttributePair(DSR_CHANNEL, channel.value),
        SearchAttributePair(DSR_DEADLINE, deadline_as_search_value(due)),
    ]
    if extended is not None:
        pairs.append(SearchAttributePair(DSR_EXTENDED, extended))
    pairs.append(SearchAttributePair(DSR_OVERDUE, overdue))
    return pairs


def changes(pairs: list[SearchAttributePair[Any]], current: TypedSearchAttributes) -> list[SearchAttributeUpdate[Any]]:
    """The attributes ``current`` does not already hold with these values, as a workflow upserts them."""
    return [pair.key.value_set(pair.value) for pair in pairs if current.get(pair.key) != pair.value]
