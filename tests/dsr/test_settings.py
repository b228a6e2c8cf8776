"""Settings read from the environment into the policy frozen into each request."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsr.config.settings import ConfigError, Settings


def test_connector_degraded_minutes_default_and_override(tmp_path: Path) -> None:
    assert Settings.from_env({"DSR_HOME": str(tmp_path)}).policy.connector_degraded_minutes == 60
    settings = Settings.from_env({"DSR_HOME": str(tmp_path), "DSR_CONNECTOR_DEGRADED_MINUTES": "15"})
    assert settings.policy.connector_degraded_minutes == 15


@pytest.mark.parametrize("bad", ["0", "an hour"])
def test_connector_degraded_minutes_must_be_a_positive_whole_number(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="DSR_CONNECTOR_DEGRADED_MINUTES"):
        Settings.from_env({"DSR_HOME": str(tmp_path), "DSR_CONNECTOR_DEGRADED_MINUTES": bad})


@pytest.mark.parametrize(("country", "subdivision"), [("FR", None), ("de", None), ("DEU", None), ("FR", "57"),
                                                      ("DE", "BY")])
def test_a_public_holiday_calendar_that_exists_is_accepted(tmp_path: Path, country: str,
                                                          subdivision: str | None) -> None:
    env = {"DSR_HOME": str(tmp_path), "DSR_COUNTRY": country, **({"DSR_SUBDIVISION": subdivision} if subdivision
                                                                  else {})}
    settings = Settings.from_env(env)
    assert (settings.policy.country, settings.policy.subdiv) == (country.upper(), subdivision)


@pytest.mark.parametrize(("country", "subdivision"), [("XX", None), ("EU", None), ("FR", "ZZ"), ("XX", "57")])
def test_a_public_holiday_calendar_that_does_not_exist_is_refused(tmp_path: Path, country: str,
                                                                 subdivision: str | None) -> None:
    env = {"DSR_HOME": str(tmp_path), "DSR_COUNTRY": country, **({"DSR_SUBDIVISION": subdivision} if subdivision
                                                                  else {})}
    with pytest.raises(ConfigError, match="no public-holiday calendar"):
        Settings.from_env(env)


def test_consent_link_days_default_bounds_and_override(tmp_path: Path) -> None:
    assert Settings.from_env({"DSR_HOME": str(tmp_path)}).consent_link_days == 400
    for value in ("1", "3650", "30"):
        settings = Settings.from_env({"DSR_HOME": str(tmp_path), "DSR_CONSENT_LINK_DAYS": value})
        assert settings.consent_link_days == int(value)


@pytest.mark.parametrize(("bad", "said"), [("0", "at least 1"), ("3651", "at most 3650"), ("a year", "whole number")])
def test_a_bad_consent_link_days_stops_every_command_with_one_line(tmp_path: Path, bad: str, said: str) -> None:
    from tests.cli import run_dsr

    with pytest.raises(ConfigError, match=f"DSR_CONSENT_LINK_DAYS must be .*{said}"):
        Settings.from_env({"DSR_HOME": str(tmp_path), "DSR_CONSENT_LINK_DAYS": bad})
    for args in (["due"], ["suppression", "list"], ["config", "check"]):
        result = run_dsr(args, {"DSR_HOME": str(tmp_path), "DSR_CONSENT_LINK_DAYS": bad})
        assert result.returncode != 0, (args, result.stdout)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "DSR_CONSENT_LINK_DAYS" in lines[0] and said in lines[0], (args, result.stderr)


def test_a_consent_link_seals_the_lifetime_it_was_issued_with(tmp_path: Path) -> None:
    """Each link seals its expiry: issued as the worker does under DSR_CONSENT_LINK_DAYS=30 (worker.py), it opens
    on day 29, not on day 31, whatever the setting of the process that opens it."""
    from datetime import UTC, datetime, timedelta

    from dsr.store.links import ConsentLinks, ExpiredLink
    from tests.harness import TEST_KEYRING

    settings = Settings.from_env({"DSR_HOME": str(tmp_path), "DSR_CONSENT_LINK_DAYS": "30"})
    now = datetime(2026, 12, 5, tzinfo=UTC)
    token = ConsentLinks(TEST_KEYRING, ttl=timedelta(days=settings.consent_link_days)).issue_for(
        "camille.durand@example.org", "fr", now=now)
    opener = ConsentLinks(TEST_KEYRING)  # the intake opens it whatever its own setting
    assert opener.open(token, now=now + timedelta(days=29)) == ("camille.durand@example.org", "fr")
    with pytest.raises(ExpiredLink):
        opener.open(token, now=now + timedelta(days=31))
