"""`dsr setup`: a new deployment prepared once, from any machine, against real services: a Temporal dev server
started without the engine's search attributes, the ledger in SQLite, the bucket on moto's S3 server."""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from tests.harness import S3Server, free_port
from tests.servers import dev_server_running
from workflows import search_attributes as sa

pytestmark = pytest.mark.slow  # dsr setup as a process against a dev server

BIN = Path(sys.executable).parent


@pytest_asyncio.fixture
async def bare_cluster() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server as a new cluster comes: none of the engine's search attributes."""
    async with dev_server_running(None, search_attributes=False) as env:
        yield env


def _setup(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "dsr"), "setup"], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def _environment(tmp_path: Path, temporal: str, s3: S3Server, storage: str) -> dict[str, str]:
    return {
        **os.environ, **s3.env,
        "DSR_HOME": str(tmp_path / "home"),
        "DSR_KEYS": "setup-1:" + base64.b64encode(bytes(range(32))).decode(),
        "TEMPORAL_ADDRESS": temporal,
        "DSR_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        "DSR_STORAGE_URL": storage,
    }


async def test_setup_prepares_the_ledger_the_search_attributes_and_checks_the_bucket(
    tmp_path: Path, bare_cluster: WorkflowEnvironment, s3_server: S3Server,
) -> None:
    env = _environment(tmp_path, bare_cluster.client.service_client.config.target_host, s3_server,
                       f"s3://{s3_server.bucket}/setup")
    listed = await bare_cluster.client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace="default"))
    assert sa.DSR_KIND.name not in listed.custom_attributes

    done = _setup(env)
    assert done.returncode == 0, done.stderr
    assert "storage: s3://" in done.stdout and "conditional writes" in done.stdout

    listed = await bare_cluster.client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace="default"))
    assert {key.name for key in sa.TEMPORAL_TYPE_NAMES} <= set(listed.custom_attributes)
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"requests", "events", "subject_claims", "rate_limits", "attempt_limits", "seen_signatures"} <= tables
    assert s3_server.keys("setup/") == [], "the probe object is deleted"

    again = _setup(env)  # idempotent: a second machine may run it too
    assert again.returncode == 0, again.stderr


async def test_setup_names_what_is_wrong_in_one_line(
    tmp_path: Path, bare_cluster: WorkflowEnvironment, s3_server: S3Server,
) -> None:
    temporal = bare_cluster.client.service_client.config.target_host
    missing_bucket = _setup(_environment(tmp_path, temporal, s3_server, "s3://no-such-bucket/x"))
    assert missing_bucket.returncode == 1
    assert missing_bucket.stderr.startswith("error: s3://no-such-bucket/") and missing_bucket.stderr.count("\n") == 1

    nobody = _setup(_environment(tmp_path, f"127.0.0.1:{free_port()}", s3_server, f"s3://{s3_server.bucket}/x"))
    assert nobody.returncode == 1
    assert nobody.stderr.startswith("error: cannot reach Temporal") and "Traceback" not in nobody.stderr
