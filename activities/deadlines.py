"""Deadline arithmetic as a local activity, so new holiday data never changes a replayed history."""

from __future__ import annotations

from temporalio import activity

from dsr.deadlines import deadline_schedule, receipt_date
from dsr.model import ClockStart, DeadlineInput, Deadlines


@activity.defn(name="deadlines_from")
def deadlines_from(start: ClockStart) -> Deadlines:
    """The deadlines of a clock that starts at ``start.at`` (e.g. when identity was confirmed)."""
    return deadline_schedule(
        DeadlineInput(
            start=receipt_date(start.at, start.timezone),
            country=start.country,
            subdiv=start.subdiv,
            timezone=start.timezone,
        )
    )
