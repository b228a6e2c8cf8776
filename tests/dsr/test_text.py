"""Text strangers type, as others will read it: ``strip_controls`` and ``display_name`` (dsr.domain.model)."""

from __future__ import annotations

import sys
import unicodedata

from dsr.domain.model import BIDI_CONTROLS, display_name, strip_controls


def strip_per_character(value: str) -> str:
    """The rule, one character at a time: joiners kept, bidi controls and other format characters dropped, control
    characters and line or paragraph separators turned into spaces."""
    out = []
    for char in value:
        category = unicodedata.category(char)
        if char in ("\u200c", "\u200d"):
            out.append(char)
        elif char in BIDI_CONTROLS or category in ("Cf", "Cs"):
            continue
        else:
            out.append(" " if category in ("Cc", "Zl", "Zp") else char)
    return "".join(out)


def test_every_character_of_the_basic_plane_and_samples_beyond_are_stripped_by_the_rule() -> None:
    # The printable text's shortcut (returned as it is) must answer what the rule does, character by character.
    samples = [*range(0x10000), *range(0x1F300, 0x1F700), *range(0xE0000, 0xE0080), 0xF0000, 0x10FFFD, sys.maxunicode]
    for code in samples:
        value = f"a{chr(code)}b"
        assert strip_controls(value) == strip_per_character(value), hex(code)


def test_printable_text_is_kept_and_invisible_reordering_is_not() -> None:
    assert strip_controls("Jeanne Martin — 12 rue des Lilas") == "Jeanne Martin — 12 rue des Lilas"
    assert strip_controls("\u202emoc.elpmaxe@x") == "moc.elpmaxe@x"
    assert strip_controls("Zoë\u200dß\u2028line\tnext\x00") == "Zoë\u200dß line next "
    assert display_name("  Jeanne\n\u2066Martin\u2069  ") == "Jeanne Martin"
