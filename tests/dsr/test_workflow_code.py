"""The worker's workflow modules compiled once per process (``dsr.runtime.workflow_code``), run in the SDK's real
sandbox on the time-skipping test server: every run still gets a module of its own, and the source is compiled
once, where Python without bytecode on disk compiled it for every run. The sandbox's own glue
(``CompiledOnceSandbox``): compiled once, with the SDK's restrictions unchanged."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.machinery
import inspect
import sys
import textwrap
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import CodeType
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.converter import DataConverter, PayloadCodec, SerializationContext, WithSerializationContext
from temporalio.worker import Worker, WorkflowRunner
from temporalio.worker._workflow_instance import _WorkflowInstanceImpl
from temporalio.worker.workflow_sandbox import RestrictedWorkflowAccessError, SandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import _runner as sdk_sandbox
from temporalio.workflow import _Definition

from dsr.runtime.workflow_code import CompiledOnceSandbox, compile_once, compiled_modules, glue_compiled
from tests.servers import time_skipping_server

WORKFLOW_SOURCE = textwrap.dedent('''
    from temporalio import workflow

    RUNS: list[str] = []  # module state: a run that shared its module with another would see both


    @workflow.defn
    class CountsItsModuleRuns:
        @workflow.run
        async def run(self) -> int:
            RUNS.append(workflow.info().workflow_id)
            return len(RUNS)
''')


@pytest.fixture
def workflow_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[str]]]:
    """A package of one workflow module, importable, with no bytecode on disk and none written (as under
    PYTHONDONTWRITEBYTECODE=1); returns its name and the list every compile of its module is noted in."""
    name = f"compiled_once_{uuid.uuid4().hex[:8]}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "flow.py").write_text(WORKFLOW_SOURCE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))  # compile_once's finder goes with the test

    compiles: list[str] = []
    source_to_code = importlib.machinery.SourceFileLoader.source_to_code

    def noting(self: Any, data: Any, path: Any, *, _optimize: int = -1) -> Any:
        if str(path) == str(package / "flow.py"):
            compiles.append(str(path))
        return source_to_code(self, data, path, _optimize=_optimize)

    monkeypatch.setattr(importlib.machinery.SourceFileLoader, "source_to_code", noting)
    yield name, compiles
    for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[module]


async def run_three(module_name: str, runner: WorkflowRunner | None = None) -> list[int]:
    module = importlib.import_module(f"{module_name}.flow")
    async with time_skipping_server(None, search_attributes=False) as env:
        queue = f"compiled-once-{uuid.uuid4().hex[:6]}"
        async with Worker(env.client, task_queue=queue, workflows=[module.CountsItsModuleRuns],
                          workflow_runner=runner or SandboxedWorkflowRunner()):
            return [await env.client.execute_workflow(module.CountsItsModuleRuns.run, id=f"{queue}-{n}",
                                                      task_queue=queue) for n in range(3)]


async def test_each_run_has_a_module_of_its_own_compiled_once(workflow_package: tuple[str, list[str]]) -> None:
    name, compiles = workflow_package
    compile_once(name)
    kept = compiled_modules()
    assert await run_three(name) == [1, 1, 1]  # no run saw another's module state
    assert len(compiles) == 1
    assert compiled_modules() == kept + 2  # the package's two files, each kept once


async def test_without_it_every_sandboxed_run_compiles_the_module_again(
        workflow_package: tuple[str, list[str]]) -> None:
    """What compile_once is for, shown on the same package: the import outside the sandbox, the worker's check of
    the workflow in the sandbox and each of the three runs compile the source once each."""
    name, compiles = workflow_package
    assert await run_three(name) == [1, 1, 1]
    assert len(compiles) >= 4


async def test_the_sandbox_glue_is_compiled_once_and_each_run_still_has_its_own_module(
        workflow_package: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every crossing into a run's sandbox (its creation, each activation) reaches the SDK's crossing with code
    compiled before, never a string to compile again."""
    name, _ = workflow_package
    crossings: list[object] = []
    sdk_run_code = sdk_sandbox._Instance._run_code

    def noting(self: Any, code: Any, **extra_globals: Any) -> None:
        crossings.append(code)
        sdk_run_code(self, code, **extra_globals)

    monkeypatch.setattr(sdk_sandbox._Instance, "_run_code", noting)
    assert await run_three(name, CompiledOnceSandbox()) == [1, 1, 1]
    # The worker's check and three runs, each created (two crossings) and activated.
    assert len(crossings) >= 4 * 2 + 3 * 2
    assert all(isinstance(code, CodeType) for code in crossings)
    distinct = {id(code) for code in crossings}
    assert len(distinct) <= glue_compiled()
    assert len(distinct) < len(crossings) / 2  # the same few codes, over and over


def test_the_sandbox_still_refuses_what_a_workflow_may_not_do(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The restrictions are the SDK's: a workflow module reading the wall clock as it is imported is refused."""
    name = f"restricted_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent('''
        import datetime
        from temporalio import workflow

        TODAY = datetime.date.today()


        @workflow.defn
        class ReadsTheClock:
            @workflow.run
            async def run(self) -> str:
                return TODAY.isoformat()
    '''), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    try:
        with pytest.raises(RestrictedWorkflowAccessError, match=r"date\.today"):
            CompiledOnceSandbox().prepare_workflow(_Definition.must_from_class(module.ReadsTheClock))
    finally:
        del sys.modules[name]


class _Kept(CompiledOnceSandbox):
    """The sandbox, keeping the instances it makes (to look at what each imported)."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[Any] = []

    def create_instance(self, det: Any) -> Any:
        instance = super().create_instance(det)
        self.made.append(instance)
        return instance


async def test_a_request_s_sandbox_executes_its_own_modules_and_only_refers_to_its_children_s() -> None:
    """A request's sandbox runs its own code in modules of its own, but the contract and the child workflows it
    starts (references only) are the worker's modules, executed once: a workflow class is validated whenever its
    module is executed, and those made half the CPU of each request's sandbox (workflows/children.py)."""
    from workflows.request import DataSubjectRequest

    runner = _Kept()
    runner.prepare_workflow(_Definition.must_from_class(DataSubjectRequest))  # needs the running loop
    [instance] = runner.made
    modules = instance.importer.new_modules
    for own in ("workflows.request", "workflows.children", "workflows.cancellation", "workflows.consent"):
        assert modules[own] is not sys.modules[own]  # executed again, in this sandbox
    for shared in ("workflows.contract", "workflows.restriction", "workflows.outside", "workflows.search_attributes"):
        assert modules[shared] is sys.modules[shared]  # passed through: the worker's own module


ASKS_SOURCE = textwrap.dedent('''
    from datetime import timedelta

    from temporalio import workflow


    @workflow.defn
    class AsksTwoActivities:
        @workflow.run
        async def run(self, word: str) -> str:
            first = await workflow.execute_activity("echo", word, start_to_close_timeout=timedelta(seconds=30))
            second = await workflow.execute_local_activity("echo", first + "!",
                                                           start_to_close_timeout=timedelta(seconds=30))
            return second
''')


class NotingCodec(PayloadCodec, WithSerializationContext):
    """Passes payloads through, noting the serialization context each was encoded or decoded under (the engine's
    codec binds each payload to its workflow with it: a wrong context fails every decryption)."""

    def __init__(self, seen: list[tuple[str, object]], context: SerializationContext | None = None) -> None:
        self.seen = seen
        self.context = context

    def with_context(self, context: SerializationContext) -> NotingCodec:
        return NotingCodec(self.seen, context)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        self.seen.extend(("encode", self.context) for _ in payloads)
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        self.seen.extend(("decode", self.context) for _ in payloads)
        return list(payloads)


@activity.defn(name="echo")
async def echo(word: str) -> str:
    return word


async def test_each_payload_gets_the_serialization_context_the_sdk_s_crossing_gives_without_a_crossing(
        workflow_package: tuple[str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two questions asked for each payload (its serialization context, its external store's) are answered by
    the run's own instance without crossing into the sandbox, with what the SDK's crossing answers: the same
    answers, question by question, and the same contexts given to the codec, payload by payload, for a workflow, an
    activity and a local activity."""
    name, _ = workflow_package
    (tmp_path / name / "asks.py").write_text(ASKS_SOURCE, encoding="utf-8")
    module = importlib.import_module(f"{name}.asks")
    crossings: list[dict[str, Any]] = []
    sdk_run_code = sdk_sandbox._Instance._run_code

    def noting(self: Any, code: Any, **extra_globals: Any) -> None:
        crossings.append(extra_globals)
        sdk_run_code(self, code, **extra_globals)

    monkeypatch.setattr(sdk_sandbox._Instance, "_run_code", noting)
    answers: list[str] = []
    for question in ("get_serialization_context", "get_external_store_context"):
        asked = getattr(_WorkflowInstanceImpl, question)

        def answering(self: Any, command_info: Any, *, _asked: Any = asked, _question: str = question) -> Any:
            answer = _asked(self, command_info)
            answers.append(f"{_question}({command_info!r}) = {answer!r}")
            return answer

        monkeypatch.setattr(_WorkflowInstanceImpl, question, answering)

    async def contexts(runner: WorkflowRunner) -> tuple[list[tuple[str, object]], list[str]]:
        seen: list[tuple[str, object]] = []
        answers.clear()
        async with time_skipping_server(None, search_attributes=False) as env:
            client = Client(env.client.service_client, namespace=env.client.namespace,
                            data_converter=dataclasses.replace(DataConverter.default, payload_codec=NotingCodec(seen)))
            queue = "contexts"  # the same in both runs: the contexts name it
            async with Worker(client, task_queue=queue, workflows=[module.AsksTwoActivities], activities=[echo],
                              workflow_runner=runner):
                handle = await client.start_workflow(module.AsksTwoActivities.run, "word", id="asks-1",
                                                     task_queue=queue)
                assert await handle.result() == "word!"
        run_id = handle.result_run_id or ""
        return seen, [answer.replace(run_id, "<run>") for answer in answers]

    by_the_sdk, sdk_answers = await contexts(SandboxedWorkflowRunner())
    asked_across = [c for c in crossings if "__temporal_command_info" in c]
    crossings.clear()
    directly, direct_answers = await contexts(CompiledOnceSandbox())

    assert asked_across  # the SDK's runner asks through a crossing: what this test compares against
    assert [c for c in crossings if "__temporal_command_info" in c] == []
    kinds = {type(context).__name__ for _, context in by_the_sdk}
    assert {"WorkflowSerializationContext", "ActivitySerializationContext"} <= kinds
    assert directly == by_the_sdk
    assert any(a.startswith("get_external_store_context") for a in sdk_answers)
    assert direct_answers == sdk_answers


# What the two questions run, in the SDK this was checked against (1.35.0). A new SDK that changes them fails here:
# read them again (they must need nothing of the sandbox: no import of a module not yet loaded, no restricted
# builtin, no context variable, no user code) before updating the digests.
SDK_CONTEXT_METHODS = {
    "_WorkflowInstanceImpl.get_serialization_context": "af7aa71c605aa6b0",
    "_WorkflowInstanceImpl.get_external_store_context": "226b82ba54ae3854",
    "InSandbox.get_serialization_context": "80a6c3c66d58539f",
    "InSandbox.get_external_store_context": "d204b2f479964c1d",
}


def test_the_sdk_s_context_methods_asked_without_a_crossing_are_those_read() -> None:
    from temporalio.worker.workflow_sandbox._in_sandbox import InSandbox

    digests = {}
    for cls in (_WorkflowInstanceImpl, InSandbox):
        for method in ("get_serialization_context", "get_external_store_context"):
            source = inspect.getsource(getattr(cls, method))
            digests[f"{cls.__name__}.{method}"] = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert digests == SDK_CONTEXT_METHODS, "the SDK's context methods changed: see SDK_CONTEXT_METHODS"
