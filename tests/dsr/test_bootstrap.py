"""The bootstrap: each part built on first use and once, on the settings given, and closed in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsr.config.settings import Settings
from dsr.runtime.bootstrap import Deployment
from dsr.store import FileStore
from dsr.store.crypto import KeyRingError
from dsr.store.ledger import Ledger

ENV_KEYS = "DSR_KEYS"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv(ENV_KEYS, raising=False)
    return Settings.from_env({"DSR_HOME": str(tmp_path)})


def test_a_client_without_keys_is_refused_and_only_dsr_up_creates_them(settings: Settings) -> None:
    with pytest.raises(KeyRingError, match="no key file"):
        Deployment.from_settings(settings)
    assert not settings.key_file.exists()
    created = Deployment.from_settings(settings, create_keys=True)
    again = Deployment.from_settings(settings)
    assert again.keyring.key_ids == created.keyring.key_ids


def test_parts_are_built_on_first_use_once_and_share_the_key_ring(settings: Settings) -> None:
    deployment = Deployment.from_settings(settings, create_keys=True)
    ledger_file = settings.home / "ledger.sqlite3"
    assert not ledger_file.exists()  # nothing opened before it is asked for
    assert isinstance(deployment.objects, FileStore)
    assert deployment.exports.objects is deployment.objects
    assert deployment.exports.sealer is deployment.keyring
    assert deployment.attachments is deployment.attachments
    ledger = deployment.ledger
    assert isinstance(ledger, Ledger) and deployment.ledger is ledger
    assert ledger_file.exists()
    deployment.close()


async def test_close_closes_the_ledger_it_opened_and_nothing_else(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[Ledger] = []
    real_close = Ledger.close

    def recording_close(ledger: Ledger) -> None:
        closed.append(ledger)
        real_close(ledger)

    monkeypatch.setattr(Ledger, "close", recording_close)
    async with Deployment.from_settings(settings, create_keys=True) as untouched:
        pass
    assert closed == []
    assert "ledger" not in untouched.__dict__  # closing did not open it
    async with Deployment.from_settings(settings) as deployment:
        assert not deployment.ledger.has_request("dsr-2026-11-7KQ3FJ")
    assert closed == [deployment.ledger]
