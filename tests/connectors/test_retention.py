"""How long a record kept under a legal obligation is kept: the dates the erasure reply promises."""

from __future__ import annotations

from datetime import date

import pytest

from connectors.base import FINANCIAL_YEAR_END, RetentionRule
from connectors.config import ConfigFileError, parse_config

L123_22 = "Art. 17(3)(b) GDPR; Code de commerce L123-22"


@pytest.mark.parametrize(("created", "year_end", "kept_until"), [
    (date(2024, 3, 14), "12-31", date(2034, 12, 31)),  # calendar financial year
    (date(2024, 12, 31), "12-31", date(2034, 12, 31)),  # the closing day belongs to its own year
    (date(2025, 1, 1), "12-31", date(2035, 12, 31)),
    (date(2024, 3, 14), "06-30", date(2034, 6, 30)),  # a year closing on 30 June
    (date(2024, 7, 1), "06-30", date(2035, 6, 30)),
    (date(2023, 3, 1), "02-29", date(2034, 2, 28)),  # closing at the end of February: in the year closing
    (date(2024, 2, 29), "02-29", date(2034, 2, 28)),  # on 29 Feb 2024, kept to 28 Feb 2034 (a common year)
])
def test_accounting_records_are_kept_from_the_close_of_their_financial_year(
    created: date, year_end: str, kept_until: date
) -> None:
    rule = RetentionRule("orders", L123_22, 10, counted_from=FINANCIAL_YEAR_END, financial_year_end=year_end)
    assert rule.until(created) == kept_until


def test_other_records_are_kept_from_their_own_date() -> None:
    rule = RetentionRule("contact", "Art. 17(3)(e) GDPR: legal claims", 5)
    assert rule.until(date(2024, 3, 14)) == date(2029, 3, 14)
    assert rule.until(date(2024, 2, 29)) == date(2029, 2, 28)


def test_the_closing_day_of_a_year_ending_in_february_follows_leap_years() -> None:
    rule = RetentionRule("orders", L123_22, counted_from=FINANCIAL_YEAR_END, financial_year_end="02-29")
    assert rule.year_closing(date(2023, 3, 1)) == date(2024, 2, 29)
    assert rule.year_closing(date(2024, 3, 1)) == date(2025, 2, 28)


@pytest.mark.parametrize("bad", ["13-01", "12-32", "1231", "02-30"])
def test_a_malformed_closing_day_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="financial_year_end"):
        RetentionRule("orders", L123_22, counted_from=FINANCIAL_YEAR_END, financial_year_end=bad)


def test_dsr_toml_can_count_from_the_financial_year_end() -> None:
    config = parse_config("""
[[connectors]]
type = "woocommerce"
base_url = "https://shop.example.com"
credentials = { consumer_key = "WOO_KEY", consumer_secret = "WOO_SECRET" }
[[connectors.retention]]
dataset = "orders"
legal_basis = "Code de commerce L123-22"
counted_from = "financial_year_end"
financial_year_end = "06-30"
""", source="dsr.toml")
    [rule] = config.connectors[0].retention or []
    assert (rule.counted_from, rule.financial_year_end) == ("financial_year_end", "06-30")
    with pytest.raises(ConfigFileError, match="financial_year_end"):
        parse_config("""
[[connectors]]
type = "woocommerce"
base_url = "https://shop.example.com"
credentials = { consumer_key = "WOO_KEY", consumer_secret = "WOO_SECRET" }
[[connectors.retention]]
dataset = "orders"
legal_basis = "Code de commerce L123-22"
financial_year_end = "31-12"
""", source="dsr.toml")
    with pytest.raises(ConfigFileError, match="financial_year_end"):  # shaped like a date, but no such day
        parse_config("""
[[connectors]]
type = "woocommerce"
base_url = "https://shop.example.com"
credentials = { consumer_key = "WOO_KEY", consumer_secret = "WOO_SECRET" }
[[connectors.retention]]
dataset = "orders"
legal_basis = "Code de commerce L123-22"
financial_year_end = "02-30"
""", source="dsr.toml")
