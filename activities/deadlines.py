"""Deadline arithmetic as a local activity, so new holiday data never changes a replayed history."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

from temporalio import activity

from dsr.domain.deadlines import deadline_schedule, receipt_date
from dsr.domain.model import ClockResume, DeadlineInput, LocalMoment, ResumedClock


@activity.defn(name="deadlines_resumed")
def deadlines_resumed(resume: ClockResume) -> ResumedClock:
    """The deadlines once a suspension ends: every day it lasted (local dates) is added to the period's end."""
    suspended_on = receipt_date(resume.suspended_at, resume.timezone)
    resumed_on = receipt_date(resume.resumed_at, resume.timezone)
    days = resume.suspended_days_before + max(0, (resumed_on - suspended_on).days)
    deadlines = deadline_schedule(DeadlineInput(start=resume.received_on, country=resume.country,
                                                subdiv=resume.subdiv, timezone=resume.timezone,
                                                suspended_days=days))
    return ResumedClock(suspended_on=suspended_on, resumed_on=resumed_on, suspended_days=days, deadlines=deadlines)


@activity.defn(name="local_instant")
def local_instant(moment: LocalMoment) -> datetime:
    """The instant (UTC) of ``moment.hour``:00 on ``moment.day`` in the controller's zone: reminders go at a
    working hour there, whatever the worker's or the server's clock."""
    return datetime.combine(moment.day, time(moment.hour), ZoneInfo(moment.timezone)).astimezone(UTC)
