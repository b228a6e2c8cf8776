"""Saved histories replay against today's workflow code: a non-deterministic change fails CI.

Histories are recorded by the lifecycle tests with ``make histories`` (DSR_RECORD_HISTORIES=1) and
committed; re-record only for an intended, versioned change (``workflow.patched``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from dsr.store.crypto import data_converter
from tests.harness import TEST_KEYRING
from workflows.request import DataSubjectRequest
from workflows.subjects import SubjectQueue

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_histories_are_saved() -> None:
    # Without them the replay test below would pass vacuously.
    assert len(HISTORIES) >= 4, "run `make histories` and commit tests/workflows/histories"


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_saved_history_replays(path: Path) -> None:
    saved = json.loads(path.read_text())  # noqa: ASYNC240 - a small file, once
    history = WorkflowHistory.from_json(saved["workflow_id"], saved["history"])
    replayer = Replayer(workflows=[DataSubjectRequest, SubjectQueue], data_converter=data_converter(TEST_KEYRING))
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
