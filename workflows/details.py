"""Markdown for the Temporal UI's "current details" that reads the same in every UI version.

The UI (2.54, the one `temporal server start-dev` ships) renders GitHub tables as a bare ``<table>`` with no cell
padding and strips HTML, so cells ran together ("stateattempts", "running2"). Each cell but the last now ends with
an em space (U+2003): the renderer keeps it (HTML entities are escaped, ASCII and no-break spaces are trimmed),
so columns have a visible gutter; UIs that style tables only get a little more room. A ``|`` or a line break in a
cell (an error message) would end the cell or the row: escaped and folded.
"""

from __future__ import annotations

from collections.abc import Sequence

GUTTER = "\u2003"
"""EM SPACE: a gutter the UI's markdown renderer does not trim."""


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> list[str]:
    """The lines of a markdown table; columns whose index is in ``right`` are right-aligned (numbers)."""
    last = len(header) - 1

    def line(cells: Sequence[str]) -> str:
        shown = [_cell(text) + (GUTTER if i < last else "") for i, text in enumerate(cells)]
        return "| " + " | ".join(shown) + " |"

    align = "|" + "|".join("---:" if i in right else ":---" for i in range(len(header))) + "|"
    return [line(header), align, *(line(row) for row in rows)]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
