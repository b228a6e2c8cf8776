"""The controller profile: parsed from dsr.toml, malformed keys named, missing Art. 15 items listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.config import ConfigFileError
from dsr.config.profile import (
    CNIL_ADDRESS,
    ControllerProfile,
    ProfileError,
    ProfileFile,
    check_profile,
    is_third_country,
    load_profile,
    parse_profile,
)
from dsr.domain.model import Language
from dsr.errors import ConfigurationError

DEMO = Path(__file__).resolve().parents[2] / "sandbox" / "demo_profile.toml"

COMPLETE = """
[controller]
legal_name = "Kestio SAS"
postal_address = "14B chemin du Professeur Depéret, 69160 Tassin-la-Demi-Lune"
[controller.privacy_contact]
email = "privacy@kestio.example"
[[controller.purposes]]
name = { fr = "Commandes", en = "Orders" }
categories = ["identité", { fr = "coordonnées", en = "contact details" }]
legal_basis = "contract"
recipients = []
retention = "10 ans"
source = "vous"
automated_decisions = false
"""


def test_demo_profile_is_complete() -> None:
    profile = load_profile(DEMO)
    assert isinstance(profile, ControllerProfile)
    assert check_profile(profile) == []
    assert len(profile.purposes) >= 3
    assert {"hubspot", "stripe", "woocommerce"} <= set(profile.systems)
    assert profile.art19_recipients and all(r.email.endswith(".example") for r in profile.art19_recipients)
    assert [(o.handling, o.by.text("en")) for o in profile.other_systems] == [("staff", "our customer service team")]
    transfers = [r for p in profile.purposes for r in p.recipients or [] if is_third_country(r.country)]
    assert transfers and all(r.safeguard for r in transfers)


def test_demo_profile_parses_inside_a_whole_dsr_toml() -> None:
    text = '[[connectors]]\ntype = "stripe"\ncredentials = { api_key = "STRIPE_KEY" }\n\n' + DEMO.read_text("utf-8")
    profile = parse_profile(text, source="dsr.toml")
    assert profile is not None and check_profile(profile) == []


def test_complete_minimal_profile() -> None:
    profile = parse_profile(COMPLETE)
    assert profile is not None
    assert check_profile(profile) == []
    purpose = profile.purposes[0]
    assert purpose.name.text(Language.EN) == "Orders" and purpose.name.text("fr") == "Commandes"
    assert purpose.categories[0].text("en") == "identité"  # one string serves both languages
    assert purpose.automated_decisions == "none"
    assert profile.supervisory_authority.postal_address == CNIL_ADDRESS  # CNIL by default
    assert profile.system_label("crm", "fr") == "crm"


def test_no_controller_table_or_file_means_no_profile(tmp_path: Path) -> None:
    assert parse_profile('[[connectors]]\ntype = "stripe"\n') is None
    assert load_profile(tmp_path / "absent.toml") is None
    assert check_profile(None) == [
        "controller: missing (no [controller] table in dsr.toml; the access reply needs the Art. 15(1) information)"
    ]


def test_every_missing_item_is_listed_with_its_key_path() -> None:
    profile = parse_profile("""
[controller]
legal_name = "X SAS"
[[controller.purposes]]
name = "Orders"
legal_basis = "contract"
source = "you"
automated_decisions = "none"
recipients = []
categories = ["identity"]
retention = "3 years"
[[controller.purposes]]
name = "CRM"
[[controller.purposes.recipients]]
name = "HubSpot, Inc."
country = "us"
[[controller.purposes.recipients]]
name = "Someone"
""")
    assert profile is not None
    missing = check_profile(profile)
    assert missing == [
        "controller.postal_address: missing (contact details of the controller, Art. 13(1)(a))",
        "controller.privacy_contact.email: missing (contact details of the DPO or privacy contact, Art. 13(1)(b))",
        "controller.purposes[1].categories: missing (Art. 15(1)(b))",
        "controller.purposes[1].legal_basis: missing (Art. 6(1), told with the purpose)",
        "controller.purposes[1].recipients[0].safeguard: missing (Art. 15(2): transfer to US, outside the EEA)",
        "controller.purposes[1].recipients[1].country: missing (Art. 15(1)(c), 15(2): needed to tell whether "
        "the data leaves the EEA)",
        "controller.purposes[1].retention: missing (Art. 15(1)(d): the period, or the criteria used to set it)",
        "controller.purposes[1].source: missing (Art. 15(1)(g); write \"you\" when collected from the subject)",
        "controller.purposes[1].automated_decisions: missing (Art. 15(1)(h); write \"none\" when there is none)",
    ]


def test_no_purpose_and_no_recipients_key_are_missing() -> None:
    assert "controller.purposes: missing (Art. 15(1)(a): at least one [[controller.purposes]])" in check_profile(
        ControllerProfile(legal_name="X"))
    profile = parse_profile(COMPLETE.replace("recipients = []\n", ""))
    assert profile is not None
    assert check_profile(profile) == [
        "controller.purposes[0].recipients: missing (Art. 15(1)(c); write recipients = [] when nobody outside "
        "the company receives the data)"
    ]


def test_blanked_supervisory_authority_is_missing() -> None:
    profile = parse_profile(COMPLETE + '[controller.supervisory_authority]\nname = ""\n')
    assert profile is not None
    assert check_profile(profile) == ["controller.supervisory_authority.name: missing (Art. 15(1)(f))"]


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("[controller]\nlegal_name = 3\n", "dsr.toml: controller.legal_name: Input should be a valid string"),
        ("[controller]\nunknown = 1\n", "dsr.toml: controller.unknown: Extra inputs are not permitted"),
        ("[controller]\n[[controller.purposes]]\nname = 3\n",
         'dsr.toml: controller.purposes[0].name: expected a string or a table { fr = "...", en = "..." }'),
        ("[controller]\n[[controller.purposes]]\nname = { fr = \"a\", de = \"b\" }\n",
         "dsr.toml: controller.purposes[0].name.de: Extra inputs are not permitted"),
        ("[controller]\n[[controller.purposes]]\ncategories = \"identity\"\n",
         "dsr.toml: controller.purposes[0].categories: expected a list of strings"),
        ("[controller]\n[[controller.purposes]]\nlegal_basis = \"because\"\n",
         "dsr.toml: controller.purposes[0].legal_basis: Input should be 'consent', 'contract'"),
        ("[controller]\n[[controller.purposes]]\n[[controller.purposes.recipients]]\ncountry = \"USA\"\n",
         "dsr.toml: controller.purposes[0].recipients[0].country: 'USA' is not a country code"),
        ("[controller]\n[[controller.purposes]]\n[[controller.purposes.recipients]]\nsafeguard = \"shield\"\n",
         "dsr.toml: controller.purposes[0].recipients[0].safeguard: Input should be 'adequacy', 'scc'"),
        ("[controller]\n[[controller.purposes]]\nautomated_decisions = true\n",
         "dsr.toml: controller.purposes[0].automated_decisions: describe the logic"),
        ("[controller.privacy_contact]\nemail = \"dpo@x.example\\r\\nBcc: y@z.example\"\n",
         "dsr.toml: controller.privacy_contact.email: "),
        ("[[controller.art19_recipients]]\nname = \"Partner\"\n",
         "dsr.toml: controller.art19_recipients[0].email: Field required"),
        ("[[controller.art19_recipients]]\nname = \"Partner\"\nemail = \"not-an-address\"\n",
         "dsr.toml: controller.art19_recipients[0].email: 'not-an-address' is not a valid email address"),
        # Art. 19: a recipient is told only of what was disclosed to it, so the file must say what that is.
        ("[[controller.art19_recipients]]\nname = \"Partner\"\nemail = \"p@x.example\"\n",
         "dsr.toml: controller.art19_recipients[0].receives: Field required"),
        ("[[controller.art19_recipients]]\nname = \"P\"\nemail = \"p@x.example\"\nreceives = [\"Stripe Invoices\"]\n",
         "dsr.toml: controller.art19_recipients[0].receives: "),
        ("[controller]\nwebsite = \"www.x.example\"\n",
         "dsr.toml: controller.website: 'www.x.example' is not a web address"),
        ("[controller.systems]\ncrm = 4\n", "dsr.toml: controller.systems.crm: expected a string or a table"),
        # Systems outside the engine: who handles them, or why they are not covered, is said.
        ("[[controller.other_systems]]\nname = \"Archives\"\nholds = \"forms\"\nhandling = \"staff\"\n",
         'dsr.toml: controller.other_systems[0]: handling = "staff" needs by'),
        ("[[controller.other_systems]]\nname = \"Backups\"\nholds = \"copies\"\nhandling = \"not_covered\"\n",
         'dsr.toml: controller.other_systems[0]: handling = "not_covered" needs how'),
        ("[[controller.other_systems]]\nname = \"A\"\nholds = \"b\"\nhandling = \"later\"\nby = \"c\"\n",
         "dsr.toml: controller.other_systems[0].handling: Input should be 'staff' or 'not_covered'"),
        ("[[controller.other_systems]]\nname = \"A\"\nhandling = \"staff\"\nby = \"c\"\n",
         "dsr.toml: controller.other_systems[0].holds: Field required"),
        ("controller = 3\n", "dsr.toml: controller: expected a table ([controller])"),
        ("[controller\n", "dsr.toml: not valid TOML"),
    ],
)
def test_malformed_profile_names_the_key_path(snippet: str, expected: str) -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(snippet)
    assert str(caught.value).startswith(expected), str(caught.value)
    # Not a connector error any more, but the same family as one: `dsr config check` reports both the same way.
    assert isinstance(caught.value, ConfigurationError)
    assert not isinstance(caught.value, ConfigFileError)


def test_load_profile_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dsr.toml"
    path.write_text("[controller]\n[[controller.purposes]]\nlegal_basis = 1\n", encoding="utf-8")
    with pytest.raises(ProfileError, match=rf"^{path}: controller\.purposes\[0\]\.legal_basis: "):
        load_profile(path)


def test_profile_file_is_parsed_once_until_it_changes(tmp_path: Path) -> None:
    import os

    path = tmp_path / "dsr.toml"
    profile = ProfileFile(path)
    assert profile() is None and profile.reads == 0  # no file yet: nothing read
    path.write_text(COMPLETE, encoding="utf-8")
    first = profile()
    assert first is not None and first.legal_name == "Kestio SAS"
    assert profile() is first and profile() is first
    assert profile.reads == 1  # every later notice and reply reuses the parsed profile
    # Edited in place (same size, a new modification time): read again at the next call, no restart needed.
    path.write_text(COMPLETE.replace("Kestio SAS", "Kestia SAS"), encoding="utf-8")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert (edited := profile()) is not None and edited.legal_name == "Kestia SAS"
    assert profile.reads == 2
    # A malformed file gives its error at every call (kept, not re-parsed), and a fix is seen again.
    path.write_text("[controller]\n[[controller.purposes]]\nlegal_basis = 1\n", encoding="utf-8")
    for _ in range(2):
        with pytest.raises(ProfileError, match=r"legal_basis"):
            profile()
    assert profile.reads == 3
    path.write_text(COMPLETE, encoding="utf-8")
    assert (fixed := profile()) is not None and fixed.legal_name == "Kestio SAS"
    path.unlink()
    assert profile() is None


def test_one_line_fields_lose_their_line_breaks() -> None:
    profile = parse_profile('[controller]\nlegal_name = "Kestio\\r\\nSAS"\npostal_address = "a\\nb"\n')
    assert profile is not None
    assert profile.legal_name == "Kestio SAS" and profile.postal_address == "a b"


def test_third_countries() -> None:
    assert is_third_country("US") and is_third_country("gb") and is_third_country("CH")
    assert not is_third_country("FR") and not is_third_country("IE") and not is_third_country("NO")
    assert not is_third_country("")


def test_the_demo_consent_purposes_are_frozen_with_what_withdrawing_means_in_each_system() -> None:
    from dsr.config.profile import check_consent

    profile = load_profile(DEMO)
    assert profile is not None
    purposes = {p.key: p for p in profile.consent_purposes()}
    assert list(purposes) == ["newsletter", "partner_offers"] and all(p.marketing for p in purposes.values())
    newsletter = purposes["newsletter"]
    assert newsletter.name("en") == "Sending our newsletter and promotional offers"
    assert newsletter.actions["hubspot"].subscriptions == ["Newsletter", "Offers"]
    assert (newsletter.actions["app"].table, newsletter.actions["app"].email_column) == (
        "newsletter_subscriptions", "email")
    assert newsletter.actions["app"].set_values == {} and newsletter.actions["app"].purpose == "newsletter"
    assert purposes["partner_offers"].actions["woocommerce"].residual.startswith("untick")
    assert check_consent(profile, {"hubspot": "hubspot", "stripe": "stripe", "woocommerce": "woocommerce",
                                   "app": "sql"}) == []
    assert check_consent(profile, {"hubspot": "hubspot"}) == [
        "controller.purposes[3].withdrawal.app: no connector of that name",
        "controller.purposes[4].withdrawal.woocommerce: no connector of that name"]


@pytest.mark.parametrize(("snippet", "expected"), [
    ('hubspot = { subscriptions = ["A"], table = "t" }', "exactly one of subscriptions, table, residual or task"),
    ("hubspot = {}", "exactly one of subscriptions, table, residual or task"),
    ('chat = { residual = "x", task = "y" }', "exactly one of subscriptions, table, residual or task"),
    ('app = { residual = "x", set = { a = "1" } }', "set needs a table"),
    ('app = { table = "t; drop" }', "string should match pattern"),
    ('app = { table = "t", set = { "a b" = "1" } }', "is not a column name"),
])
def test_a_withdrawal_mapping_names_exactly_one_way(snippet: str, expected: str) -> None:
    text = COMPLETE + f'\n[[controller.purposes]]\nkey = "news"\nlegal_basis = "consent"\n' \
                      f"[controller.purposes.withdrawal]\n{snippet}\n"
    with pytest.raises(ProfileError) as err:
        parse_profile(text)
    assert expected in str(err.value).lower()


def test_config_check_warns_of_consent_purposes_it_cannot_withdraw() -> None:
    from dsr.config.profile import check_consent

    text = COMPLETE + '''
[[controller.purposes]]
name = "Newsletter"
legal_basis = "consent"
[[controller.purposes]]
key = "offers"
legal_basis = "consent"
[[controller.purposes]]
key = "stats"
legal_basis = "legitimate_interests"
marketing = true
'''
    profile = parse_profile(text)
    assert profile is not None
    assert check_consent(profile, {"crm": "hubspot"}) == [
        "controller.purposes[1].key: missing (a consent purpose needs a key to be withdrawn: newsletter...)",
        "controller.purposes[2].withdrawal: missing: withdrawing consent to 'offers' changes no system (map each "
        "connector: subscriptions, table, residual or task)",
        'controller.purposes[3]: withdrawal and marketing are only for legal_basis = "consent"']
    assert [p.key for p in profile.consent_purposes()] == ["offers"]  # without a key it cannot be named
    with pytest.raises(ProfileError, match="names two purposes"):
        parse_profile(text.replace('key = "stats"', 'key = "offers"'))


def test_config_check_says_how_a_processor_or_manual_system_takes_part_in_a_withdrawal() -> None:
    """A processor or a manual system is asked by email (task = "..."): a mapping an API connector takes is
    refused there, and a task on an API connector is refused too; a task is frozen in both languages."""
    from dsr.config.profile import check_consent

    text = COMPLETE + '''
[[controller.purposes]]
key = "news"
legal_basis = "consent"
[controller.purposes.withdrawal]
chat = { task = { fr = "retirer l'adresse de l'audience Lettre", en = "remove the address from the Letter audience" } }
backups = { residual = "nothing" }
crm = { task = "stop it" }
'''
    profile = parse_profile(text)
    assert profile is not None
    assert check_consent(profile, {"chat": "processor", "backups": "manual", "crm": "hubspot"}) == [
        'controller.purposes[1].withdrawal.backups: a manual system is asked by email: map it with task = "..." '
        "(what to stop there)",
        "controller.purposes[1].withdrawal.crm: task is for processor and manual systems; a hubspot connector "
        "takes subscriptions, table or residual"]
    [news] = profile.consent_purposes()
    assert news.actions["chat"].task("fr") == "retirer l'adresse de l'audience Lettre"
    assert news.actions["chat"].task("en") == "remove the address from the Letter audience"
