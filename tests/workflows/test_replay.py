"""Saved histories replay against today's workflow code: a non-deterministic change fails CI.

Histories are frozen per release in ``histories/<workflow type>/<version>/<scenario>.json``: ``make histories``
records the current version's folder from the lifecycle tests; the folders of earlier releases are never
re-recorded, so every patch keeps a history that takes its old branch until it is retired (VERSIONING.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer
from temporalio.workflow import _Definition

from dsr.store.crypto import data_converter
from tests.harness import TEST_KEYRING, project_version
from tests.servers import validated_once
from workflows.aftercare import RequestAftercare
from workflows.outside import OutsideSystemTask
from workflows.request import DataSubjectRequest
from workflows.restriction import RestrictionInForce
from workflows.triage import TriageMessageWorkflow

ROOT = Path(__file__).parent / "histories"
HISTORIES = sorted(ROOT.glob("*/*/*.json"))
WORKFLOWS = (DataSubjectRequest, TriageMessageWorkflow, OutsideSystemTask, RequestAftercare,
             RestrictionInForce)
VERSION = project_version()


def test_the_current_release_has_histories_of_every_workflow() -> None:
    # Without them the replay test below would pass vacuously, or miss a workflow.
    for workflow in WORKFLOWS:
        name = _Definition.must_from_class(workflow).name or workflow.__name__
        saved = list((ROOT / name / VERSION).glob("*.json"))
        assert saved, f"no saved history of {name} for {VERSION}: run `make histories` and commit them"


def test_histories_are_filed_under_their_workflow_type() -> None:
    for path in HISTORIES:
        saved = json.loads(path.read_text())
        started = saved["history"]["events"][0]["workflowExecutionStartedEventAttributes"]
        assert started["workflowType"]["name"] == path.parent.parent.name, path


@pytest.mark.parametrize("path", HISTORIES, ids=[str(p.relative_to(ROOT).with_suffix("")) for p in HISTORIES])
async def test_saved_history_replays(path: Path) -> None:
    saved = json.loads(path.read_text())  # noqa: ASYNC240 - a small file, once
    history = WorkflowHistory.from_json(saved["workflow_id"], saved["history"])
    replayer = Replayer(workflows=list(WORKFLOWS), data_converter=data_converter(TEST_KEYRING),
                        workflow_runner=validated_once())  # each replay still runs in a sandbox of its own
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
