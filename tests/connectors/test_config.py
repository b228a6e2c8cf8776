"""dsr.toml: a malformed file is reported with the file, the key and what was expected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.config import ConfigFileError, load_config, parse_config
from dsr.domain.model import RequestKind
from tests.cli import run_dsr

GOOD = """
[[connectors]]
type = "hubspot"
name = "crm"
credentials = { token = "HUBSPOT_TOKEN" }
kinds = ["access", "erasure"]

[[connectors]]
type = "woocommerce"
base_url = "http://127.0.0.1:9000"
credentials = { consumer_key = "WC_KEY", consumer_secret = "WC_SECRET" }
rate_limit = { requests = 5, per_seconds = 1 }

[[connectors.retention]]
dataset = "orders"
legal_basis = "Code de commerce L123-22"
years = 10
"""


def test_a_good_file_parses_with_defaults() -> None:
    config = parse_config(GOOD)
    crm, shop = config.connectors
    assert (crm.display_name, crm.kinds, crm.base_url) == ("crm", [RequestKind.ACCESS, RequestKind.ERASURE], None)
    assert shop.display_name == "woocommerce" and shop.kinds == list(RequestKind)
    assert shop.rate_limit is not None and shop.rate_limit.requests == 5
    assert shop.retention is not None and shop.retention[0].years == 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[connectors]]\ntype = 'salesforce'", "dsr.toml: connectors[0].type: Input should be 'hubspot', 'stripe'"),
        ("[[connectors]]\ntype = 'hubspot'", "connectors[0].credentials.token: missing; expected the name of the "
                                            "environment variable holding the HubSpot private-app token"),
        ("[[connectors]]\ntype = 'hubspot'\ncredentials = { token = 'pat-na1-123' }",
         "connectors[0].credentials: Value error, token must name an environment variable"),
        ("[[connectors]]\ntype = 'stripe'\ncredentials = { api_key = 'K', token = 'T' }",
         "connectors[0].credentials.token: unknown for stripe; expected api_key"),
        ("[[connectors]]\ntype = 'woocommerce'\ncredentials = { consumer_key = 'A', consumer_secret = 'B' }",
         "connectors[0].base_url: required for woocommerce"),
        ("[[connectors]]\ntype = 'stripe'\ncredentials = { api_key = 'K' }\nkinds = ['deletion']",
         "connectors[0].kinds[0]: Input should be 'access'"),
        ("[[connectors]]\ntype = 'stripe'\ncredentials = { api_key = 'K' }\nrate_limit = { requests = 0, "
         "per_seconds = 1 }", "connectors[0].rate_limit.requests: Input should be greater than or equal to 1"),
        ("[[connectors]]\ntype = 'stripe'\ncredentials = { api_key = 'K' }\n"
         "[[connectors]]\ntype = 'stripe'\ncredentials = { api_key = 'K' }",
         "connectors[1].name: 'stripe' is used twice"),
        ("[[connectors]]\ntype = 'stripe'\ncredentials = { api_key = 'K' }\ncolour = 'blue'",
         "connectors[0].colour: Extra inputs are not permitted"),
        ("connectors = [", "dsr.toml: not valid TOML"),
    ],
)
def test_malformed_files_name_the_key_and_the_expectation(text: str, message: str) -> None:
    with pytest.raises(ConfigFileError) as raised:
        parse_config(text)
    assert message in str(raised.value)


def test_a_missing_file_means_no_connectors(tmp_path: Path) -> None:
    assert load_config(tmp_path / "dsr.toml").connectors == []


def test_connectors_check_reports_a_missing_secret_and_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "dsr.toml").write_text(GOOD)
    # In this process (tests/cli.py): a process spends seconds of CPU importing the engine.
    result = run_dsr(["connectors", "check"], {"DSR_HOME": str(tmp_path), "HUBSPOT_TOKEN": None, "WC_KEY": None,
                                               "WC_SECRET": None})
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("FAIL  crm") and "HUBSPOT_TOKEN" in lines[0]
    assert lines[1].startswith("FAIL  woocommerce") and "WC_KEY" in lines[1]


def test_a_broken_file_stops_the_cli_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "dsr.toml").write_text("[[connectors]]\ntype = 'hubspot'\n")
    result = run_dsr(["connectors", "check"], {"DSR_HOME": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "credentials.token: missing" in result.stderr


def test_secrets_file_fills_missing_variables_and_must_be_private(tmp_path: Path) -> None:
    from dsr.config.settings import ConfigError, Settings

    settings = Settings.from_env({"DSR_HOME": str(tmp_path)})
    settings.secrets_file.write_text("# demo\nHUBSPOT_TOKEN='from-file'\nexport WC_KEY=k\n")
    settings.secrets_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        settings.connector_environment({})
    settings.secrets_file.chmod(0o600)
    merged = settings.connector_environment({"WC_KEY": "from-environment"})
    assert merged["HUBSPOT_TOKEN"] == "from-file" and merged["WC_KEY"] == "from-environment"
    settings.secrets_file.write_text("not a pair\n")
    with pytest.raises(ConfigError, match="line 1: expected NAME=value"):
        settings.connector_environment({})


@pytest.mark.slow
async def test_connectors_check_over_real_http(tmp_path: Path) -> None:
    import asyncio

    from dsr.web.serve import serve_app
    from sandbox.hubspot import HubSpotState, hubspot_app

    crm = await serve_app(hubspot_app(HubSpotState(), token="pat-right"), port=0)
    try:
        (tmp_path / "dsr.toml").write_text(
            f'[[connectors]]\ntype = "hubspot"\nname = "crm"\nbase_url = "{crm.url}"\n'
            'credentials = { token = "CRM_TOKEN" }\n')
        dsr = Path(sys.executable).parent / "dsr"

        async def check(token: str) -> tuple[int, str]:
            env = {**os.environ, "DSR_HOME": str(tmp_path), "CRM_TOKEN": token}
            # Not subprocess.run: this event loop must keep serving the sandbox meanwhile.
            process = await asyncio.create_subprocess_exec(str(dsr), "connectors", "check", env=env,
                                                           stdout=asyncio.subprocess.PIPE)
            out, _ = await process.communicate()
            return process.returncode or 0, out.decode()

        code, out = await check("pat-right")
        assert code == 0 and out.startswith("ok    crm") and "auth OK" in out
        code, out = await check("pat-wrong")
        assert code == 1 and out.startswith("FAIL  crm") and "check the credentials of connector crm" in out
    finally:
        await crm.stop()


@pytest.mark.slow
def test_config_check_lists_what_the_profile_misses(tmp_path: Path) -> None:
    dsr = Path(sys.executable).parent / "dsr"
    env = {**os.environ, "DSR_HOME": str(tmp_path)}
    (tmp_path / "dsr.toml").write_text(GOOD + '\n[controller]\nlegal_name = "Exemple SAS"\n')
    result = subprocess.run([str(dsr), "config", "check"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "controller profile incomplete" in result.stdout and "Art. 15(1)" in result.stdout
    demo = (Path(__file__).resolve().parents[2] / "sandbox" / "demo_profile.toml").read_text()
    (tmp_path / "dsr.toml").write_text(GOOD + "\n" + demo)
    result = subprocess.run([str(dsr), "config", "check", "--json"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["profile_complete"] and report["connectors"] == ["crm", "woocommerce"]


OUTSIDE = """
[[connectors]]
type = "processor"
name = "chat-tool"
contact = "privacy@chat-tool.example"
language = "fr"
answer_within_days = 12
reminder_days = [1, 4]
kinds = ["erasure", "access"]

[[connectors]]
type = "manual"
name = "backups"
owner = "backup-admin@example.com"
"""


def test_processor_and_manual_systems_build_with_their_contact_language_and_dates() -> None:
    from connectors.config import build_connectors
    from connectors.outside import OutsideSystem
    from dsr.domain.model import Language

    chat, backups = build_connectors(parse_config(OUTSIDE), env={})  # no secret: answered through a page
    assert isinstance(chat, OutsideSystem) and isinstance(backups, OutsideSystem)
    assert (chat.type, chat.contact, chat.language, chat.answer_within_days, chat.reminder_days, chat.kinds) == (
        "processor", "privacy@chat-tool.example", Language.FR, 12, (4, 1),
        frozenset({RequestKind.ERASURE, RequestKind.ACCESS}))
    # A manual system's defaults: a week to answer, a reminder two days before, emails in English.
    assert (backups.type, backups.contact, backups.language, backups.answer_within_days, backups.reminder_days) == (
        "manual", "backup-admin@example.com", Language.EN, 7, (2,))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[connectors]]\ntype = 'processor'\nname = 'chat'",
         "connectors[0].contact: missing; expected the email address that answers for chat"),
        ("[[connectors]]\ntype = 'manual'\nname = 'backups'\ncontact = 'a@example.com'",
         "connectors[0].contact: not for type = \"manual\" (it takes owner)"),
        ("[[connectors]]\ntype = 'processor'\ncontact = 'not an address'", "connectors[0].contact: not a valid email"),
        ("[[connectors]]\ntype = 'processor'\ncontact = 'a@example.com'\nanswer_within_days = 5\n"
         "reminder_days = [5]", "connectors[0].reminder_days: 5 is not between 1 and answer_within_days - 1 (4)"),
        ("[[connectors]]\ntype = 'processor'\ncontact = 'a@example.com'\nlanguage = 'de'",
         "connectors[0].language: Input should be 'fr' or 'en'"),
        ("[[connectors]]\ntype = 'processor'\ncontact = 'a@example.com'\nbase_url = 'https://x.example'",
         "connectors[0].base_url: not for type = \"processor\""),
        ("[[connectors]]\ntype = 'stripe'\ncredentials = { api_key = 'K' }\nowner = 'a@example.com'",
         "connectors[0].owner: only for type = \"processor\" or \"manual\""),
    ],
)
def test_processor_and_manual_mistakes_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigFileError) as raised:
        parse_config(text)
    assert message in str(raised.value)
@pytest.mark.slow
def test_config_check_names_the_systems_outside_the_engine_and_refuses_one_also_connected(tmp_path: Path) -> None:
    dsr = Path(sys.executable).parent / "dsr"
    env = {**os.environ, "DSR_HOME": str(tmp_path)}
    demo = (Path(__file__).resolve().parents[2] / "sandbox" / "demo_profile.toml").read_text()
    (tmp_path / "dsr.toml").write_text(GOOD + "\n" + demo)
    result = subprocess.run([str(dsr), "config", "check"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("1 system(s) outside the engine, named in every reply: The customer service mailbox "
            "(staff: our customer service team)") in result.stdout
    report = json.loads(subprocess.run([str(dsr), "config", "check", "--json"], env=env, capture_output=True,
                                       text=True, timeout=60).stdout)
    assert report["other_systems"] == ["The customer service mailbox (staff: our customer service team)"]
    # The CRM both connected and declared outside the engine: the replies would contradict each other.
    clash = demo + '\n[[controller.other_systems]]\nname = "CRM"\nholds = "contacts"\nhandling = "staff"\nby = "x"\n'
    (tmp_path / "dsr.toml").write_text(GOOD + "\n" + clash)
    result = subprocess.run([str(dsr), "config", "check"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "other_systems[1].name: 'CRM' is also a connector" in result.stderr


def test_rectifiable_fields_are_those_a_connector_taking_rectifications_can_correct() -> None:
    from connectors.config import rectifiable_fields
    from connectors.hubspot import FIELD_MAP
    from dsr.domain.model import CANONICAL_FIELDS
    from sandbox.appdb import DEMO_MAP

    hubspot = parse_config('[[connectors]]\ntype = "hubspot"\ncredentials = { token = "T" }\n')
    assert rectifiable_fields(hubspot) == frozenset(FIELD_MAP) and "address_line2" not in FIELD_MAP
    app = parse_config(DEMO_MAP)
    assert rectifiable_fields(app) == frozenset(app.connectors[0].rectify) < CANONICAL_FIELDS
    both = parse_config(DEMO_MAP + '\n[[connectors]]\ntype = "stripe"\ncredentials = { api_key = "K" }\n')
    assert rectifiable_fields(both) == CANONICAL_FIELDS  # Stripe holds every field
    not_taking = parse_config('[[connectors]]\ntype = "stripe"\nkinds = ["access"]\ncredentials = { api_key = "K" }\n')
    assert rectifiable_fields(not_taking) == CANONICAL_FIELDS  # nothing corrects automatically: staff do
    assert rectifiable_fields(parse_config("")) == CANONICAL_FIELDS

