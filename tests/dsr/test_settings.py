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
