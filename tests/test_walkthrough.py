"""The README's first walkthrough ("A first request, with the demo running") runs as written, on `dsr up --demo`:
every `dsr` line of its block, in order, the references it shows replaced by the ones the submits printed."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_stack import Stack

pytestmark = pytest.mark.slow  # the whole `dsr up --demo` stack, as processes

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLE_ID = "dsr-2026-11-7KQ3FJ"
ITS_ID = "<its-id>"  # "<its id>" in the README: the reference of the latest submit


def walkthrough() -> list[list[str]]:
    """The block's commands, comments and the printed-output lines left out."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### A first request, with the demo running", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the walkthrough's code block"
    commands = []
    for line in block.group(1).splitlines():
        words = shlex.split(line.replace("<its id>", ITS_ID), comments=True)
        if words:
            commands.append(words)
    assert all(words[0] == "dsr" for words in commands), commands
    return commands


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path)
    try:
        yield stack
    finally:
        stack.stop()


def test_the_readme_walkthrough_runs_as_written(stack: Stack) -> None:
    commands = walkthrough()
    assert any(words[1] == "extend" for words in commands)  # the step that once failed on an answered request
    stack.up("--demo")
    ids: dict[str, str] = {}
    for words in commands:
        args = [ids.get(word, word) for word in words[1:]]
        result = stack.dsr(*args)
        assert result.returncode == 0, f"{' '.join(words)}\n{result.stderr}"
        if words[1] == "submit":
            # The first submit's reference is the one the block shows; later ones are "<its id>".
            key = EXAMPLE_ID if EXAMPLE_ID not in ids else ITS_ID
            ids[key] = json.loads(result.stdout)["id"]
        if words[1] == "confirm-identity":
            assert "awaiting_identity" not in result.stdout, result.stdout  # the stage after the update
    history = stack.dsr("history", ids[ITS_ID]).stdout
    assert "extended" in history and "identity_confirmed" in history
