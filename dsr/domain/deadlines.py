"""Response deadlines of GDPR Art. 12(3), counted as Regulation (EEC, Euratom) No 1182/71 requires.

GDPR Art. 12(3) gives the controller "one month of receipt of the request", extendable "by two further
months". The GDPR does not say how to count a month; Regulation 1182/71 (rules applicable to periods,
dates and time limits in EU acts) does, and it applies to every EU act that sets a time limit:

* Art. 3(1): the day of the event (the receipt) is not counted;
* Art. 3(2)(c): a period in months ends at the end of the day, in the last month, that has the same date
  as the day the period runs from, or at the end of that month's last day if it has no such date;
* Art. 3(3): Saturdays, Sundays and public holidays are counted inside the period;
* Art. 3(4): if the last day is a public holiday, a Saturday or a Sunday, the period ends at the end of
  the following working day;
* Art. 2(1): the public holidays are those of the Member State where the action is taken.

Everything here is pure: no I/O and no clock reads. Holiday calendars come from the ``holidays`` package,
which is data that changes between releases, so deadlines are computed once, outside workflow code (in an
activity or by the client that starts the workflow), and passed in: a workflow replay never sees a newer
calendar. See ``LEGAL.md``, "Counting a month".
"""

from __future__ import annotations

import calendar
import math
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

from dsr.domain.model import Deadline, DeadlineInput, Deadlines, Reminder

__all__ = [
    "EXTENDED_MONTHS",
    "NORMAL_MONTHS",
    "REMINDER_DAYS_BEFORE",
    "REMINDER_TIME",
    "deadline_as_search_value",
    "deadline_schedule",
    "is_working_day",
    "receipt_date",
    "response_deadline",
]

NORMAL_MONTHS = 1
"""GDPR Art. 12(3): "within one month of receipt of the request"."""

EXTENDED_MONTHS = 3
"""GDPR Art. 12(3): "extended by two further months": receipt + 3 months, or 2 months after the first month
ends, whichever is earlier (see :func:`response_deadline` and LEGAL.md)."""

REMINDER_DAYS_BEFORE = (7, 2)
"""Operator reminders, in calendar days before the due date: D-7 and D-2."""

REMINDER_TIME = time(9, 0)
"""Reminders fire at 09:00 in the controller's time zone, when someone is at work to act on them."""


# --- holiday calendars -----------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _calendar_class(country: str, subdiv: str | None) -> type[holidays.HolidayBase]:
    """The ``holidays`` class for ``country``, after checking ``country`` and ``subdiv`` exist.

    Checked here rather than left to ``holidays`` because it raises ``NotImplementedError`` for an unknown
    code and silently *accepts* deprecated subdivisions (e.g. France "GES", which does not carry the
    Alsace-Moselle holidays): a wrong calendar would give a deadline that is silently wrong, which for
    Art. 12(3) means silently late.
    """
    supported = holidays.list_supported_countries(include_aliases=True)
    if country not in supported:
        raise ValueError(
            f"unknown country {country!r} for public holidays (Regulation 1182/71 Art. 2(1)): expected an "
            f"ISO 3166-1 code supported by the holidays package, in upper case, e.g. 'FR'"
        )
    cls: type[holidays.HolidayBase] = getattr(holidays, country)
    if subdiv is not None:
        aliases = getattr(cls, "subdivisions_aliases", {}) or {}
        if subdiv not in cls.subdivisions and subdiv not in aliases:
            known = ", ".join(cls.subdivisions) or "none"
            raise ValueError(
                f"unknown subdivision {subdiv!r} for country {country!r}: expected one of {known}"
                + (f" or an alias ({', '.join(aliases)})" if aliases else "")
            )
    return cls


@lru_cache(maxsize=1024)
def _holiday_dates(country: str, subdiv: str | None, year: int) -> frozenset[date]:
    """The public holidays of one country/subdivision in one year, cached because deadlines are computed
    often and building a calendar is comparatively slow.

    A frozenset rather than the ``HolidayBase`` object: that object is a mutable dict which adds whole
    years to itself on lookup, so sharing it through a cache would not be pure nor thread-safe.
    """
    cls = _calendar_class(country, subdiv)
    if not cls.start_year <= year <= cls.end_year:
        # Outside its range the package returns an *empty* calendar, which would make every holiday a
        # working day. Refuse rather than guess.
        raise ValueError(
            f"no public-holiday data for {country!r} in {year}: the holidays package covers "
            f"{cls.start_year}-{cls.end_year}"
        )
    calendar_ = holidays.country_holidays(country, subdiv=subdiv, years=year, expand=False)
    return frozenset(calendar_.keys())


def is_working_day(day: date, *, country: str = "FR", subdiv: str | None = None) -> bool:
    """False on Saturdays, Sundays and the public holidays of ``country`` (Regulation 1182/71 Art. 3(4)
    and Art. 2(1)), True otherwise. Raises ValueError for an unknown country or subdivision."""
    _require_date(day, "day")
    holidays_of_year = _holiday_dates(country, subdiv, day.year)  # validates even on weekends
    return day.weekday() < 5 and day not in holidays_of_year


# --- the deadline ---------------------------------------------------------------------------------


def _require_date(value: date, name: str) -> None:
    # A datetime is a date subclass: accepting one would silently drop its time and time zone, which is
    # exactly the mistake receipt_date() exists to prevent.
    if isinstance(value, datetime) or not isinstance(value, date):
        raise TypeError(f"{name} must be a datetime.date, got {type(value).__name__}; "
                        f"use receipt_date() to turn an instant into a date")


def _add_months(start: date, months: int) -> date:
    """Regulation 1182/71 Art. 3(2)(c): the day, ``months`` months later, with the same date as ``start``,
    or the last day of that month when it has no such date (31 January + 1 month = 28/29 February)."""
    month_index = start.year * 12 + (start.month - 1) + months
    year, month = divmod(month_index, 12)
    month += 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def response_deadline(
    received: date, *, extended: bool = False, country: str = "FR", subdiv: str | None = None,
    suspended_days: int = 0,
) -> date:
    """The last day on which a reply to a request received on ``received`` is in time.

    GDPR Art. 12(3): one month from receipt; extended, the earlier of three months from receipt and two
    months from the end of the first month. Counted under Regulation 1182/71:
    the day of receipt is not counted (Art. 3(1)); the period ends on the same date ``months`` later, or
    on the last day of a shorter month (Art. 3(2)(c)); weekends and holidays inside the period count
    (Art. 3(3)); a last day that is a Saturday, Sunday or public holiday of ``country`` (Art. 2(1)) moves
    to the following working day, repeatedly (Art. 3(4)).

    ``received`` is the receipt *date* in the controller's time zone (see :func:`receipt_date`), or the
    date identity was confirmed when the clock was suspended (décret 2019-536, requests started before
    suspensions resumed the time left); ``suspended_days`` is how long the period was suspended in all.
    Raises ValueError for an unknown country or subdivision, or a year the holidays package has no data for.

    >>> response_deadline(date(2025, 1, 31))
    datetime.date(2025, 2, 28)
    >>> response_deadline(date(2025, 4, 8))  # 8 May 2025 is Victoire 1945
    datetime.date(2025, 5, 9)
    >>> response_deadline(date(2025, 10, 31), extended=True)  # 30 Nov + 2 months, not 31 Jan -> Mon 2 Feb
    datetime.date(2026, 1, 30)
    """
    _require_date(received, "received")
    day = _add_months(received, NORMAL_MONTHS)
    if extended:
        # "Extended by two further months" reads as three months from receipt, or as two months from the
        # end of the first; at month ends they differ (received 31 October: 31 January, or 30 November + 2
        # = 30 January). Nothing settles it, so the engine keeps the earlier: never late under either.
        day = min(_add_months(received, EXTENDED_MONTHS), _add_months(day, EXTENDED_MONTHS - NORMAL_MONTHS))
    # Décret 2019-536: days the period was suspended (a reasonable doubt, until the subject answered) are
    # added to the last day, before the weekend/holiday rule: the time left resumes, it does not restart.
    day += timedelta(days=suspended_days)
    while not is_working_day(day, country=country, subdiv=subdiv):
        day += timedelta(days=1)
    return day


# --- time zones -----------------------------------------------------------------------------------


def _zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {timezone!r}: expected an IANA name such as "
                         f"'Europe/Paris'") from exc


def receipt_date(instant: datetime, timezone: str = "Europe/Paris") -> date:
    """The date of the receipt instant in the controller's time zone.

    The period of Art. 12(3) runs from the *day* of receipt (Regulation 1182/71 Art. 3(1)), and that day
    is the controller's calendar day, not UTC's: a request sent at 23:30 UTC on 31 January reaches a Paris
    controller on 1 February. A naive datetime raises ValueError: we never guess its zone.
    """
    if not isinstance(instant, datetime):
        raise TypeError(f"instant must be a datetime.datetime, got {type(instant).__name__}")
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"receipt instant {instant.isoformat()} has no time zone; pass an aware "
                         f"datetime (e.g. in UTC): the receipt date depends on it")
    return instant.astimezone(_zone(timezone)).date()


def end_of_day(day: date, timezone: str) -> datetime:
    """The UTC instant at which ``day`` ends in ``timezone`` (the controller's): the answer-by instant of a date."""
    return _end_of_day(day, _zone(timezone))


def _local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock ``at`` on ``day`` in ``zone``."""
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def _end_of_day(day: date, zone: ZoneInfo) -> datetime:
    """The UTC instant at which ``day`` ends in ``zone``: the local midnight that starts the next day.

    Regulation 1182/71 Art. 3(2)(c) and 3(4): the period ends "at the end of" its last day. Where a DST
    change happens at midnight (e.g. America/Santiago, Asia/Tehran until 2022), that midnight is either
    skipped or repeated; in both cases the later of its two readings (fold 0 and fold 1) is the true end
    of ``day``: for a skipped midnight it is the instant the next day starts, for a repeated one it is the
    second midnight, after the last hour of ``day`` has been lived twice. Elsewhere the two are equal.
    """
    next_day = day + timedelta(days=1)
    first = datetime.combine(next_day, time(0), tzinfo=zone)
    return max(first.astimezone(UTC), first.replace(fold=1).astimezone(UTC))


# --- schedule -------------------------------------------------------------------------------------


def _deadline(due: date, zone: ZoneInfo) -> Deadline:
    reminders = [
        Reminder(label=f"D-{days}", at=_local_instant(due - timedelta(days=days), REMINDER_TIME, zone))
        for days in REMINDER_DAYS_BEFORE
    ]
    return Deadline(due=due, overdue_at=_end_of_day(due, zone), reminders=reminders)


def deadline_schedule(spec: DeadlineInput) -> Deadlines:
    """Both deadlines a request can have, from the same starting date.

    The extended one is computed up front too because GDPR Art. 12(3) lets the controller extend only by
    telling the subject within the first month; the workflow then switches timers without recomputing
    (and so without consulting a holiday calendar during replay). ``overdue_at`` is the UTC instant the
    due day ends in ``spec.timezone``; reminders are at 09:00 local time on D-7 and D-2 (calendar days).
    """
    zone = _zone(spec.timezone)
    normal = response_deadline(spec.start, extended=False, country=spec.country, subdiv=spec.subdiv,
                               suspended_days=spec.suspended_days)
    extended = response_deadline(spec.start, extended=True, country=spec.country, subdiv=spec.subdiv,
                                 suspended_days=spec.suspended_days)
    return Deadlines(normal=_deadline(normal, zone), extended=_deadline(extended, zone))


def days_left(deadline: Deadline, now: datetime) -> int:
    """Whole days from the controller's local date at ``now`` to the due day (0 on the due day itself), for the
    operator's reminders; workflow code, so without the zone's rules: counted back from ``overdue_at``, the instant
    the due day ends there. ``now``'s UTC date was wrong wherever the reminders' 09:00 is still the day before in
    UTC (east of UTC+9: a reminder on D-7 said 8 days). Local days are 24 hours but across a change of summer
    time, which moves local midnight by an hour: a reminder caught up within that hour of midnight may count one
    day off (reminders go at 09:00)."""
    if now.tzinfo is None:
        raise ValueError("an instant needs its time zone")
    remaining = (deadline.overdue_at - now) / timedelta(days=1)
    return max(0, math.ceil(remaining) - 1)


def deadline_as_search_value(due: date) -> datetime:
    """The value stored in the ``DsrDeadline`` Datetime search attribute: the due date at 00:00 UTC.

    A search attribute holds an instant, not a date; fixing the convention to midnight UTC makes
    "deadline on or before D" an exact comparison in visibility queries, whatever the controller's zone.
    It is not the moment the request becomes late; that is ``Deadline.overdue_at``.
    """
    _require_date(due, "due")
    return datetime.combine(due, time(0), tzinfo=UTC)
