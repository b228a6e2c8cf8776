"""Deadlines under GDPR Art. 12(3) counted with Regulation 1182/71 (see LEGAL.md, "Counting a month").

Expected dates are written out by hand from a calendar; the property tests check the rules against an
oracle built independently of ``dsr.domain.deadlines`` (calendar.monthrange + a fresh ``holidays`` calendar).
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta, timezone
from functools import cache
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsr.domain import deadlines
from dsr.domain.deadlines import (
    days_left,
    deadline_as_search_value,
    deadline_schedule,
    is_working_day,
    receipt_date,
    response_deadline,
)
from dsr.domain.model import Deadline, DeadlineInput, Deadlines, Reminder

PARIS = ZoneInfo("Europe/Paris")


def d(text: str) -> date:
    return date.fromisoformat(text)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- worked examples: one month --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("received", "due", "why"),
    [
        # LEGAL.md's own examples
        ("2025-01-31", "2025-02-28", "31 Jan -> no 31 Feb -> last day of Feb (Art. 3(2)(c)); a Friday"),
        ("2025-04-08", "2025-05-09", "8 May 2025 (Thu) is Victoire 1945 -> Fri 9 May"),
        # ends of months
        ("2024-01-31", "2024-02-29", "leap year: last day of Feb is the 29th (Thu)"),
        ("2024-01-29", "2024-02-29", "29 Feb exists in 2024"),
        ("2025-01-29", "2025-02-28", "no 29 Feb in 2025"),
        ("2025-01-30", "2025-02-28", "no 30 Feb"),
        ("2025-03-31", "2025-04-30", "no 31 Apr -> Wed 30 Apr"),
        ("2025-05-31", "2025-06-30", "no 31 Jun -> Mon 30 Jun"),
        ("2025-04-30", "2025-05-30", "30 Apr -> Fri 30 May, not the last day of May"),
        ("2025-07-31", "2025-09-01", "31 Aug 2025 is a Sunday -> Mon 1 Sep, out of August"),
        ("2025-02-28", "2025-03-28", "28 Feb -> 28 Mar (not 31 Mar): same date, not month end"),
        # year end
        ("2025-12-15", "2026-01-15", "crosses the year: Thu 15 Jan 2026"),
        ("2025-12-01", "2026-01-02", "1 Jan 2026 (Thu) is a holiday -> Fri 2 Jan"),
        ("2025-12-31", "2026-02-02", "31 Jan 2026 is a Saturday -> Mon 2 Feb"),
        ("2024-11-30", "2024-12-30", "Mon 30 Dec 2024"),
        # weekends
        ("2025-02-01", "2025-03-03", "Sat 1 Mar -> Mon 3 Mar"),
        ("2025-02-02", "2025-03-03", "Sun 2 Mar -> Mon 3 Mar"),
        # French public holidays
        ("2025-03-21", "2025-04-22", "Easter Monday 21 Apr 2025 -> Tue 22 Apr"),
        ("2025-03-19", "2025-04-22", "Sat 19, Sun 20, Easter Monday 21 Apr -> Tue 22 Apr"),
        ("2025-04-01", "2025-05-02", "1 May 2025 (Thu, Labour Day) -> Fri 2 May"),
        ("2025-04-29", "2025-05-30", "Ascension Thu 29 May 2025 -> Fri 30 May"),
        ("2025-05-07", "2025-06-10", "Sat 7, Sun 8, Whit Monday 9 Jun 2025 -> Tue 10 Jun"),
        ("2025-06-14", "2025-07-15", "14 July 2025 is a Monday -> Tue 15 Jul"),
        ("2025-06-12", "2025-07-15", "Sat 12, Sun 13, Mon 14 Jul -> Tue 15 Jul"),
        ("2025-07-15", "2025-08-18", "15 Aug 2025 is a Friday, then Sat, Sun -> Mon 18 Aug"),
        ("2024-10-01", "2024-11-04", "1 Nov 2024 is a Friday, then Sat, Sun -> Mon 4 Nov"),
        ("2025-10-01", "2025-11-03", "1 Nov 2025 is a Saturday (holiday on a weekend) -> Mon 3 Nov"),
        ("2025-10-11", "2025-11-12", "11 Nov 2025 (Tue) -> Wed 12 Nov"),
        ("2025-11-25", "2025-12-26", "25 Dec 2025 (Thu) -> Fri 26 Dec, a working day outside Alsace"),
        ("2024-11-25", "2024-12-26", "25 Dec 2024 (Wed) -> Thu 26 Dec"),
    ],
)
def test_one_month_examples(received: str, due: str, why: str) -> None:
    assert response_deadline(d(received)) == d(due), why


def test_day_of_receipt_is_not_counted() -> None:
    """Art. 3(1): received on the 10th, the period ends on the 10th of the next month, not the 9th."""
    assert response_deadline(d("2025-09-10")) == d("2025-10-10")  # a Friday


# --- Alsace-Moselle -------------------------------------------------------------------------------


@pytest.mark.parametrize("subdiv", ["57", "6AE", "Moselle", "Alsace"])
def test_alsace_moselle_good_friday_chain(subdiv: str) -> None:
    """Good Friday 18 Apr 2025, Sat, Sun, Easter Monday: four days rolled, Tue 22 Apr."""
    assert response_deadline(d("2025-03-18")) == d("2025-04-18")  # an ordinary Friday elsewhere
    assert response_deadline(d("2025-03-18"), subdiv=subdiv) == d("2025-04-22")


@pytest.mark.parametrize("subdiv", ["57", "6AE"])
def test_alsace_moselle_26_december(subdiv: str) -> None:
    # Thu 25 Dec, Fri 26 Dec (Saint-Étienne), Sat, Sun -> Mon 29 Dec 2025
    assert response_deadline(d("2025-11-25"), subdiv=subdiv) == d("2025-12-29")
    assert response_deadline(d("2025-11-26"), subdiv=subdiv) == d("2025-12-29")
    assert response_deadline(d("2025-11-26")) == d("2025-12-26")
    assert not is_working_day(d("2025-12-26"), subdiv=subdiv)
    assert is_working_day(d("2025-12-26"))


def test_overseas_department_holiday() -> None:
    """La Réunion's abolition of slavery, 20 December (a Saturday in 2025, Friday in 2024)."""
    assert response_deadline(d("2024-11-20")) == d("2024-12-20")
    assert response_deadline(d("2024-11-20"), subdiv="974") == d("2024-12-23")


def test_other_member_state() -> None:
    """Art. 2(1): the holidays are those of the Member State; 3 Oct is German Unity Day."""
    assert response_deadline(d("2025-09-03")) == d("2025-10-03")
    assert response_deadline(d("2025-09-03"), country="DE") == d("2025-10-06")


# --- extended deadline ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("received", "due"),
    [
        # The earlier of receipt + 3 months and (receipt + 1 month) + 2 months: they differ at month ends.
        ("2025-01-31", "2025-04-28"),  # 28 Feb + 2 = Mon 28 Apr, not 30 Apr
        ("2025-10-31", "2026-01-30"),  # 30 Nov + 2 = Fri 30 Jan, not Sat 31 Jan -> Mon 2 Feb (LEGAL.md)
        ("2025-12-31", "2026-03-31"),  # 31 Jan + 2 = 31 Mar, as receipt + 3
        ("2025-03-31", "2025-06-30"),  # 30 Apr + 2 = Mon 30 Jun, as receipt + 3
        ("2023-11-30", "2024-02-29"),  # leap year, Thu 29 Feb
        ("2024-11-30", "2025-02-28"),  # Fri 28 Feb 2025
        ("2025-11-30", "2026-03-02"),  # Sat 28 Feb 2026 -> Mon 2 Mar
        ("2025-02-08", "2025-05-09"),  # 8 May holiday -> Fri 9 May
        ("2025-05-31", "2025-09-01"),  # Sun 31 Aug -> Mon 1 Sep
        ("2025-03-01", "2025-06-02"),  # Sun 1 Jun -> Mon 2 Jun
        ("2025-10-01", "2026-01-02"),  # 1 Jan 2026 holiday -> Fri 2 Jan
        ("2025-04-14", "2025-07-15"),  # 14 July (Mon) -> Tue 15 Jul
    ],
)
def test_extended_examples(received: str, due: str) -> None:
    assert response_deadline(d(received), extended=True) == d(due)


# --- errors and caching ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("country", "subdiv", "message"),
    [
        ("XX", None, "unknown country 'XX'"),
        ("fr", None, "unknown country 'fr'"),
        ("France", None, "unknown country 'France'"),
        ("FR", "99", "unknown subdivision '99' for country 'FR'"),
        ("FR", "6ae", "unknown subdivision '6ae'"),
        ("FR", "GES", "unknown subdivision 'GES'"),  # deprecated in holidays: silently lacks Alsace days
    ],
)
@pytest.mark.parametrize("received", ["2025-03-18", "2025-01-31"])
def test_unknown_calendar_raises(country: str, subdiv: str | None, message: str, received: str) -> None:
    with pytest.raises(ValueError, match=message):
        response_deadline(d(received), country=country, subdiv=subdiv)


def test_unknown_calendar_raises_even_when_last_day_is_a_weekend() -> None:
    with pytest.raises(ValueError, match="unknown country"):
        response_deadline(d("2025-02-01"), country="XX")  # nominal Sat 1 Mar
    with pytest.raises(ValueError, match="unknown country"):
        is_working_day(d("2025-03-01"), country="XX")


def test_years_without_holiday_data_raise() -> None:
    """The holidays package returns an empty calendar past 2100: refuse instead of guessing."""
    assert response_deadline(d("2100-09-30"), extended=True) == d("2100-12-30")
    with pytest.raises(ValueError, match="no public-holiday data for 'FR' in 2101"):
        response_deadline(d("2100-12-15"))


def test_datetime_is_not_a_date_here() -> None:
    with pytest.raises(TypeError, match="receipt_date"):
        response_deadline(datetime(2025, 1, 31, 23, 30, tzinfo=UTC))
    with pytest.raises(TypeError):
        deadline_as_search_value(datetime(2025, 1, 31, tzinfo=UTC))


def test_holiday_calendars_are_cached() -> None:
    response_deadline(d("2025-04-08"), subdiv="57")
    before = deadlines._holiday_dates.cache_info()
    for _ in range(5):
        assert response_deadline(d("2025-04-08"), subdiv="57") == d("2025-05-09")
    after = deadlines._holiday_dates.cache_info()
    assert after.misses == before.misses
    assert after.hits >= before.hits + 5
    assert isinstance(deadlines._holiday_dates("FR", None, 2025), frozenset)


# --- receipt date ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instant", "zone", "expected"),
    [
        ("2025-01-31T23:30:00", "Europe/Paris", "2025-02-01"),  # LEGAL.md: not UTC's date
        ("2025-01-31T22:59:59", "Europe/Paris", "2025-01-31"),  # 23:59:59 CET
        ("2025-01-31T23:00:00", "Europe/Paris", "2025-02-01"),  # 00:00 CET
        ("2025-06-30T21:59:59", "Europe/Paris", "2025-06-30"),  # 23:59:59 CEST
        ("2025-06-30T22:00:00", "Europe/Paris", "2025-07-01"),  # 00:00 CEST
        ("2025-03-29T23:00:00", "Europe/Paris", "2025-03-30"),  # 00:00 CET, the night clocks go forward
        ("2025-03-30T01:30:00", "Europe/Paris", "2025-03-30"),  # 03:30 CEST
        ("2025-03-30T21:59:59", "Europe/Paris", "2025-03-30"),  # 23:59:59 CEST
        ("2025-03-30T22:00:00", "Europe/Paris", "2025-03-31"),  # 00:00 CEST: day of DST start is 23 h
        ("2025-10-25T22:00:00", "Europe/Paris", "2025-10-26"),  # 00:00 CEST, the night clocks go back
        ("2025-10-26T22:59:59", "Europe/Paris", "2025-10-26"),  # 23:59:59 CET: that day lasts 25 h
        ("2025-10-26T23:00:00", "Europe/Paris", "2025-10-27"),
        ("2025-02-01T03:00:00", "America/New_York", "2025-01-31"),  # 22:00 EST
        ("2025-02-01T12:00:00", "Pacific/Kiritimati", "2025-02-02"),  # UTC+14
    ],
)
def test_receipt_date(instant: str, zone: str, expected: str) -> None:
    assert receipt_date(utc(instant), zone) == d(expected)


def test_receipt_date_default_zone_is_paris_and_any_aware_instant_works() -> None:
    assert receipt_date(utc("2025-01-31T23:30:00")) == d("2025-02-01")
    new_york = datetime(2025, 1, 31, 18, 30, tzinfo=ZoneInfo("America/New_York"))  # 23:30 UTC
    assert receipt_date(new_york) == d("2025-02-01")
    fixed = datetime(2025, 1, 31, 23, 30, tzinfo=timezone(timedelta(hours=-1)))  # 00:30 UTC, 01:30 Paris
    assert receipt_date(fixed) == d("2025-02-01")


def test_receipt_date_never_guesses_a_zone() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        receipt_date(datetime(2025, 1, 31, 23, 30))
    with pytest.raises(ValueError, match="unknown time zone 'Europe/Pariss'"):
        receipt_date(utc("2025-01-31T23:30:00"), "Europe/Pariss")
    with pytest.raises(TypeError):
        receipt_date(d("2025-01-31"))  # type: ignore[arg-type]


def test_receipt_date_then_deadline() -> None:
    """A request at 23:30 UTC on 31 Jan reaches Paris on 1 Feb: due Mon 3 Mar (1 Mar is a Saturday)."""
    assert response_deadline(receipt_date(utc("2025-01-31T23:30:00"))) == d("2025-03-03")
    assert response_deadline(receipt_date(utc("2025-01-31T22:30:00"))) == d("2025-02-28")


# --- schedule -------------------------------------------------------------------------------------


def test_schedule_worked_example() -> None:
    got = deadline_schedule(DeadlineInput(start=d("2025-01-31")))
    assert got == Deadlines(
        normal=Deadline(
            due=d("2025-02-28"),
            overdue_at=utc("2025-02-28T23:00:00"),  # Sat 1 Mar 00:00 CET
            reminders=[
                Reminder("D-7", utc("2025-02-21T08:00:00")),
                Reminder("D-2", utc("2025-02-26T08:00:00")),
            ],
        ),
        extended=Deadline(
            due=d("2025-04-28"),  # 28 Feb + 2 months, earlier than 31 Jan + 3 months (30 Apr)
            overdue_at=utc("2025-04-28T22:00:00"),  # Tue 29 Apr 00:00 CEST
            reminders=[
                Reminder("D-7", utc("2025-04-21T07:00:00")),
                Reminder("D-2", utc("2025-04-26T07:00:00")),
            ],
        ),
    )
    for deadline in (got.normal, got.extended):
        assert deadline.overdue_at.tzinfo is UTC
        assert all(r.at.tzinfo is UTC for r in deadline.reminders)


def test_schedule_across_dst_start() -> None:
    """Due Tue 1 Apr 2025: D-7 in winter time, D-2 on the day clocks go forward, end in summer time."""
    got = deadline_schedule(DeadlineInput(start=d("2025-03-01"))).normal
    assert got.due == d("2025-04-01")
    assert got.overdue_at == utc("2025-04-01T22:00:00")  # 2 Apr 00:00 +02:00
    assert got.overdue_at.astimezone(PARIS).utcoffset() == timedelta(hours=2)
    assert got.reminders == [
        Reminder("D-7", utc("2025-03-25T08:00:00")),  # 09:00 +01:00
        Reminder("D-2", utc("2025-03-30T07:00:00")),  # 09:00 +02:00, Sunday 30 Mar (DST starts 02:00)
    ]


def test_schedule_across_dst_end() -> None:
    """Due Tue 28 Oct 2025: D-7 in summer time, D-2 on the day clocks go back, end in winter time."""
    got = deadline_schedule(DeadlineInput(start=d("2025-09-28"))).normal
    assert got.due == d("2025-10-28")
    assert got.overdue_at == utc("2025-10-28T23:00:00")  # 29 Oct 00:00 +01:00
    assert got.overdue_at.astimezone(PARIS).utcoffset() == timedelta(hours=1)
    assert got.reminders == [
        Reminder("D-7", utc("2025-10-21T07:00:00")),  # 09:00 +02:00
        Reminder("D-2", utc("2025-10-26T08:00:00")),  # 09:00 +01:00, Sunday 26 Oct (DST ended 03:00)
    ]
    # The Friday before the change ends in summer time, the Monday after in winter time.
    friday = deadline_schedule(DeadlineInput(start=d("2025-09-24"))).normal
    assert (friday.due, friday.overdue_at) == (d("2025-10-24"), utc("2025-10-24T22:00:00"))
    monday = deadline_schedule(DeadlineInput(start=d("2025-09-27"))).normal
    assert (monday.due, monday.overdue_at) == (d("2025-10-27"), utc("2025-10-27T23:00:00"))


def test_overdue_at_when_midnight_is_skipped() -> None:
    """Asia/Tehran, 22 Mar 2019: clocks went from 00:00 (+03:30) to 01:00 (+04:30), so Thu 21 Mar ended
    at 20:30 UTC (not 19:30, which is still 23:00 on the 21st)."""
    got = deadline_schedule(DeadlineInput(start=d("2019-02-21"), timezone="Asia/Tehran")).normal
    assert got.due == d("2019-03-21")
    assert got.overdue_at == utc("2019-03-21T20:30:00")


def test_end_of_day_when_midnight_is_repeated() -> None:
    """America/Santiago, 6 Apr 2024: 24:00 (-03:00) became 23:00 (-04:00), so Saturday 6 Apr had 25 hours
    and ended at 04:00 UTC on the 7th."""
    santiago = ZoneInfo("America/Santiago")
    assert deadlines._end_of_day(d("2024-04-06"), santiago) == utc("2024-04-07T04:00:00")
    assert deadlines._end_of_day(d("2024-04-05"), santiago) == utc("2024-04-06T03:00:00")


def test_schedule_uses_country_and_subdivision() -> None:
    spec = DeadlineInput(start=d("2025-11-26"), country="FR", subdiv="57", timezone="Europe/Paris")
    assert deadline_schedule(spec).normal.due == d("2025-12-29")
    with pytest.raises(ValueError, match="unknown time zone"):
        deadline_schedule(DeadlineInput(start=d("2025-01-31"), timezone="Paris"))
    with pytest.raises(ValueError, match="unknown subdivision"):
        deadline_schedule(DeadlineInput(start=d("2025-01-31"), subdiv="Lorraine"))


def test_search_value_is_midnight_utc_of_the_due_date() -> None:
    value = deadline_as_search_value(d("2025-02-28"))
    assert value == datetime(2025, 2, 28, 0, 0, tzinfo=UTC)
    assert value.utcoffset() == timedelta(0)
    assert value.isoformat() == "2025-02-28T00:00:00+00:00"


# --- properties -----------------------------------------------------------------------------------

# Receipts from 1990 to the end of September 2100: the holidays package has no data after 2100, and an
# extended deadline from a later receipt falls in 2101 (which raises, see test_years_without_holiday_data).
receipts = st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 9, 30))
subdivisions = st.sampled_from([None, "57", "6AE"])


@cache
def oracle_holidays(subdiv: str | None, year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays("FR", subdiv=subdiv, years=year).keys())


def oracle_working(day: date, subdiv: str | None) -> bool:
    return day.weekday() < 5 and day not in oracle_holidays(subdiv, day.year)


def oracle_nominal(received: date, months: int) -> date:
    year = received.year + (received.month - 1 + months) // 12
    month = (received.month - 1 + months) % 12 + 1
    return date(year, month, min(received.day, calendar.monthrange(year, month)[1]))


@settings(max_examples=400, deadline=None)
@given(received=receipts, subdiv=subdivisions, extended=st.booleans())
def test_property_rolls_forward_from_the_nominal_date(received: date, subdiv: str | None,
                                                       extended: bool) -> None:
    due = response_deadline(received, extended=extended, subdiv=subdiv)
    nominal = oracle_nominal(received, 1)
    if extended:  # the earlier reading of "two further months" (see test_extended_examples)
        nominal = min(oracle_nominal(received, 3), oracle_nominal(nominal, 2))

    assert due > received
    assert due.weekday() < 5
    assert due not in oracle_holidays(subdiv, due.year)
    # the nominal date, then exactly the run of non-working days that follows it
    rolled = 0
    while not oracle_working(nominal + timedelta(days=rolled), subdiv):
        rolled += 1
    assert due - timedelta(days=rolled) == nominal
    day = nominal + timedelta(days=1)
    while day < due:
        assert not oracle_working(day, subdiv), day
        day += timedelta(days=1)
    # mainland France never has more than Sat-Sun-holiday in a row; Alsace-Moselle has Good Friday to
    # Easter Monday (4 days)
    assert rolled <= (3 if subdiv is None else 4)


@settings(max_examples=300, deadline=None)
@given(received=receipts)
def test_property_nominal_length(received: date) -> None:
    one = oracle_nominal(received, 1)
    three = oracle_nominal(received, 3)
    assert 28 <= (one - received).days <= 31
    assert 89 <= (three - received).days <= 92
    assert (one.year * 12 + one.month) - (received.year * 12 + received.month) == 1
    assert one.day == received.day or (one.day < received.day and (one + timedelta(days=1)).day == 1)
    assert deadlines._add_months(received, 1) == one
    assert deadlines._add_months(received, 3) == three


@settings(max_examples=300, deadline=None)
@given(first=receipts, second=receipts, subdiv=subdivisions, extended=st.booleans())
def test_property_monotonic(first: date, second: date, subdiv: str | None, extended: bool) -> None:
    earlier, later = sorted((first, second))
    assert response_deadline(earlier, extended=extended, subdiv=subdiv) <= response_deadline(
        later, extended=extended, subdiv=subdiv
    )


@settings(max_examples=300, deadline=None)
@given(received=receipts, subdiv=subdivisions)
def test_property_extended_is_later(received: date, subdiv: str | None) -> None:
    normal = response_deadline(received, subdiv=subdiv)
    extended = response_deadline(received, extended=True, subdiv=subdiv)
    assert extended >= normal
    assert (extended - normal).days >= 89 - 31 - 3  # two more months, minus at most 3 rolled days


@settings(max_examples=200, deadline=None)
@given(received=receipts, zone=st.sampled_from(["Europe/Paris", "Europe/Dublin", "America/New_York",
                                               "Asia/Tehran", "America/Santiago", "Australia/Sydney"]))
def test_property_schedule_instants(received: date, zone: str) -> None:
    tz = ZoneInfo(zone)
    got = deadline_schedule(DeadlineInput(start=received, timezone=zone))
    assert got.normal.due == response_deadline(received)
    assert got.extended.due == response_deadline(received, extended=True)
    for deadline in (got.normal, got.extended):
        assert deadline.overdue_at.tzinfo is UTC
        # the last second before overdue_at is still the due day locally; overdue_at is the next day
        assert (deadline.overdue_at - timedelta(seconds=1)).astimezone(tz).date() == deadline.due
        assert deadline.overdue_at.astimezone(tz).date() == deadline.due + timedelta(days=1)
        assert [r.label for r in deadline.reminders] == ["D-7", "D-2"]
        for reminder, days in zip(deadline.reminders, (7, 2), strict=True):
            assert reminder.at.tzinfo is UTC
            local = reminder.at.astimezone(tz)
            assert local.date() == deadline.due - timedelta(days=days)
            assert local.time() == time(9, 0)
            assert reminder.at < deadline.overdue_at


@settings(max_examples=300, deadline=None)
@given(instant=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 12, 31),
                            timezones=st.just(UTC)))
def test_property_receipt_date_in_paris(instant: datetime) -> None:
    got = receipt_date(instant)
    offset = instant.astimezone(PARIS).utcoffset()
    assert offset in (timedelta(hours=1), timedelta(hours=2))
    assert got == (instant.replace(tzinfo=None) + offset).date()
    assert got in (instant.date(), instant.date() + timedelta(days=1))
    if instant.hour < 22:
        assert got == instant.date()


@pytest.mark.parametrize("zone", ["Europe/Paris", "Australia/Sydney", "Pacific/Kiritimati", "America/Los_Angeles"])
def test_days_left_counts_the_controllers_local_days(zone: str) -> None:
    """A reminder's "time left" is counted in the controller's days: in Sydney (UTC+11 in January), D-7's 09:00 is
    22:00 UTC the day before, and the UTC date said 8 days."""
    schedule = deadline_schedule(DeadlineInput(start=date(2026, 12, 10), timezone=zone)).normal
    for reminder, days in zip(schedule.reminders, (7, 2), strict=True):
        assert days_left(schedule, reminder.at) == days
    local = ZoneInfo(zone)
    due = schedule.due
    assert days_left(schedule, datetime.combine(due, time(0, 0, 1), local)) == 0  # the due day itself
    assert days_left(schedule, datetime.combine(due, time(23, 59), local)) == 0
    assert days_left(schedule, datetime.combine(due - timedelta(days=1), time(23, 59), local)) == 1
    assert days_left(schedule, schedule.overdue_at + timedelta(hours=5)) == 0  # late: none left, never negative


def test_days_left_in_sydney_where_the_utc_date_is_a_day_behind() -> None:
    schedule = deadline_schedule(DeadlineInput(start=date(2026, 12, 10), timezone="Australia/Sydney")).normal
    d7 = schedule.reminders[0].at
    assert d7.astimezone(UTC).date() == schedule.due - timedelta(days=8)  # what the old count used
    assert days_left(schedule, d7) == 7
    with pytest.raises(ValueError, match="time zone"):
        days_left(schedule, datetime(2027, 1, 1, 9, 0))
