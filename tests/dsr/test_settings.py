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
