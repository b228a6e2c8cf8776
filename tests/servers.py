"""Real Temporal servers for the tests, started in one place.

Two kinds, both from installed wheels (nothing is downloaded): the **time-skipping test server**
(``temporal-test-server``: months of timers in seconds, no visibility queries) and the **dev server**
(``temporal``, the CLI's: real time, list filters on search attributes, what `dsr up` runs). Both bind 127.0.0.1 on
free ports and encrypt payloads with :data:`tests.harness.TEST_KEYRING` unless told otherwise.

* :func:`time_skipping_server` and :func:`dev_server_running` (async context managers), or
  :func:`start_time_skipping_server` and :func:`start_dev_server` (the caller shuts down): for a test or fixture
  that needs a server of its own (a fresh clock, a keyring of its own, a bare cluster).
* :func:`validated_once`: the sandbox runner for the engine's workers in tests (``build_worker(...,
  workflow_runner=validated_once())``).
* Fixtures (imported by ``tests/conftest.py``): ``time_skipping``, one test server for the whole session, and
  ``dev_server``, one dev server per test module. The workflow tests need a server per test (its clock may run
  far ahead): tests/workflows/conftest.py overrides ``time_skipping`` with one using :func:`time_skipping_server`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import pytest_asyncio
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment
from temporalio.workflow import _Definition

from dsr.runtime.temporal import register_search_attributes
from dsr.runtime.workflow_code import CompiledOnceSandbox
from dsr.store.crypto import KeyRing, data_converter
from tests.harness import TEST_KEYRING, binary
from workflows import search_attributes as sa

# The SDK waits 5 s for a server it starts to answer; on a loaded machine (eight test sessions on two cores) the dev
# server once took longer, and every test of the module using it failed in setup.
STARTUP_TIMEOUT = timedelta(seconds=60)


async def start_time_skipping_server(keyring: KeyRing | None = TEST_KEYRING, *, search_attributes: bool = True
                                     ) -> WorkflowEnvironment:
    """A time-skipping test server of its own (the caller shuts it down). ``keyring=None``: payloads in plain JSON
    (the SDK's default); ``search_attributes``: the engine's registered."""
    converter = DataConverter.default if keyring is None else data_converter(keyring)
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=binary("temporal-test-server"),
                                                        data_converter=converter,
                                                        test_server_startup_timeout=STARTUP_TIMEOUT)
    if search_attributes:
        try:
            await register_search_attributes(env.client)
        except BaseException:
            await env.shutdown()
            raise
    return env


async def start_dev_server(keyring: KeyRing | None = TEST_KEYRING, *, search_attributes: bool = True
                           ) -> WorkflowEnvironment:
    """A Temporal dev server of its own (the caller shuts it down); ``search_attributes=False``: as a new cluster
    comes, with none of the engine's."""
    converter = DataConverter.default if keyring is None else data_converter(keyring)
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=binary("temporal"), ip="127.0.0.1",
        search_attributes=sa.ALL if search_attributes else (), data_converter=converter,
        dev_server_startup_timeout=STARTUP_TIMEOUT,
    )


@contextlib.asynccontextmanager
async def time_skipping_server(keyring: KeyRing | None = TEST_KEYRING, *, search_attributes: bool = True
                               ) -> AsyncIterator[WorkflowEnvironment]:
    """:func:`start_time_skipping_server`, shut down on leaving."""
    env = await start_time_skipping_server(keyring, search_attributes=search_attributes)
    try:
        yield env
    finally:
        await env.shutdown()


@contextlib.asynccontextmanager
async def dev_server_running(keyring: KeyRing | None = TEST_KEYRING, *, search_attributes: bool = True
                             ) -> AsyncIterator[WorkflowEnvironment]:
    """:func:`start_dev_server`, shut down on leaving."""
    env = await start_dev_server(keyring, search_attributes=search_attributes)
    try:
        yield env
    finally:
        await env.shutdown()


@pytest_asyncio.fixture(scope="session")
async def time_skipping() -> AsyncIterator[WorkflowEnvironment]:
    """One time-skipping test server for the session, with the engine's search attributes and codec."""
    async with time_skipping_server() as env:
        yield env


@pytest_asyncio.fixture(scope="module")
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    """A Temporal dev server for one test module, with the engine's search attributes and codec."""
    async with dev_server_running() as env:
        yield env


# Definitions the sandbox has validated in this process (by class: a test may define workflows of its own).
_VALIDATED: set[type] = set()


@dataclass(frozen=True)
class _ValidatedOnce(CompiledOnceSandbox):
    """The worker's sandbox (the SDK's, its glue compiled once), which validates each workflow definition once per
    process instead of at every worker start. A worker's start re-imports every workflow module in a fresh sandbox
    to validate it (about 35 ms of CPU a workflow type, 0.2 s a worker): with a worker per test, the fast loop spent
    tens of seconds of CPU validating the same six classes. Runs still get a sandbox each, as in production."""

    def prepare_workflow(self, defn: _Definition) -> None:
        if defn.cls not in _VALIDATED:
            super().prepare_workflow(defn)
            _VALIDATED.add(defn.cls)


def validated_once() -> CompiledOnceSandbox:
    """The sandbox runner for test workers: see :class:`_ValidatedOnce`."""
    return _ValidatedOnce()
