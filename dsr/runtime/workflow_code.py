"""Workflow modules compiled once per worker process, however Python is told to keep its bytecode.

The SDK's sandbox executes a workflow's module afresh for every workflow run it starts, so that no state leaks from
one run to the next (``temporalio.worker.workflow_sandbox``). Executing a module is cheap; compiling it is not.
Python reads a module's bytecode from ``__pycache__`` when it is there and compiles the source again when it is not,
and it is not there when the process runs with ``PYTHONDONTWRITEBYTECODE=1`` (common in container images), from a
read-only checkout, or as another user than the one who installed it. The engine's request workflow then
compiled ``workflows/request.py`` and the eleven workflow modules it imports at every run: 30-38 ms of the worker's
CPU against 7-9 ms with bytecode (``bench/throughput.py`` measures what it means per request).

``compile_once("workflows")`` keeps each of those modules' code objects in memory the first time one is compiled
(or read from ``__pycache__``) and hands the same code to every later run. Each run still executes the module into a
module object of its own: only the compiling is shared, never a module's state. The code is what the worker
process read when it first ran a workflow of that module; a changed source file is picked up at the next start, as
the modules imported outside the sandbox are.

``CompiledOnceSandbox`` does the same for the sandbox's own glue. The SDK's sandbox (1.35) crosses into a run's
sandbox by ``exec`` of a source string: at every activation, and at every payload the worker encodes or decodes
for the run, twice when the payload may go to external storage (``get_serialization_context``,
``get_external_store_context``), because our codec binds each payload to its workflow. ``exec`` of a string
compiles it first, each time: counted under ``bench/throughput.py``, about 175 crossings per light request, each
54-88 us of CPU, half of it compiling the same three lines again. The runner hands ``exec`` the code of each of
those strings compiled once per process; the crossing, the sandbox's importer and its restrictions are the SDK's.
The two questions asked for each payload are then answered without a crossing: what runs in the sandbox for them is
a lookup in the run's pending commands, needing nothing of the sandbox, and the crossing (its importer applied,
builtins swapped) was most of their cost: a replay takes x0.84 the CPU without it (``bench/replay.py``).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import CodeType, ModuleType
from typing import Any

from temporalio.converter import SerializationContext
from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import _runner as sdk_sandbox

_CODE: dict[str, CodeType] = {}  # source path -> its compiled module code, for the life of the process


class _CompiledOnceLoader(importlib.machinery.SourceFileLoader):
    """A source loader whose ``get_code`` compiles (or reads the bytecode of) a file once per process."""

    def get_code(self, fullname: str) -> CodeType:
        code = _CODE.get(self.path)
        if code is None:
            compiled = super().get_code(fullname)
            if compiled is None:  # pragma: no cover - a SourceFileLoader always has code for a source file
                raise ImportError(f"no code for {fullname}", name=fullname)
            code = _CODE.setdefault(self.path, compiled)  # atomic: two threads compiling at once keep one code
        return code


class _CompiledOnceFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of the given top-level packages as the finders after it do (the path finder, an editable
    install's), with the compiled-once loader."""

    def __init__(self, packages: frozenset[str]) -> None:
        self.packages = packages

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] not in self.packages:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, _CompiledOnceFinder):
                continue
            find = getattr(finder, "find_spec", None)
            if find is not None and (spec := find(fullname, path, target)) is not None:
                break
        if spec is None or type(spec.loader) is not importlib.machinery.SourceFileLoader:
            return spec  # a namespace package, an extension, a .pyc-only install: left to the usual loaders
        spec.loader = _CompiledOnceLoader(spec.loader.name, spec.loader.path)
        return spec


def compile_once(*packages: str) -> None:
    """Compile the modules of ``packages`` once per process, for every workflow run the sandbox starts.
    Idempotent: a second call adds only packages not yet covered."""
    covered: set[str] = set()
    for finder in sys.meta_path:
        if isinstance(finder, _CompiledOnceFinder):
            covered |= finder.packages
    missing = frozenset(packages) - covered
    if missing:
        sys.meta_path.insert(0, _CompiledOnceFinder(missing))


def compiled_modules() -> int:
    """How many module files have their code kept in this process."""
    return len(_CODE)


_GLUE: dict[str, CodeType] = {}  # the sandbox's own code strings -> compiled once, for the life of the process


class _GlueCompiledOnce(sdk_sandbox._Instance):
    """A run's sandbox, as the SDK makes it, whose crossings run code compiled once."""

    def _run_code(self, code: str, **extra_globals: Any) -> None:
        compiled = _GLUE.get(code)
        if compiled is None:
            compiled = _GLUE.setdefault(code, compile(code, "<workflow sandbox>", "exec"))
        # The SDK's own crossing (globals in, the in-sandbox flag, globals out), given code instead of source.
        super()._run_code(compiled, **extra_globals)  # type: ignore[arg-type]

    # The two questions asked for every payload the worker encodes or decodes for the run: in the SDK (1.35), a
    # lookup in the run's pending commands (which activity, which child, which signal) building frozen dataclasses of
    # the SDK's, which the sandbox passes through; nothing that needs the sandbox (no import of a module not already
    # loaded, no restricted builtin, no context variable). The SDK asks them through a crossing, its importer applied
    # and its builtins swapped: most of their cost. Asked directly. The SDK's methods are pinned by a hash in
    # tests/dsr/test_workflow_code.py: a new SDK that changes them fails there until they are read again.

    def get_serialization_context(self, command_info: Any) -> SerializationContext | None:
        in_sandbox: Any = self.globals_and_locals["__temporal_in_sandbox"]  # made by __init__, or it raised
        context: SerializationContext | None = in_sandbox.get_serialization_context(command_info)
        return context

    def get_external_store_context(self, command_info: Any) -> Any:
        in_sandbox: Any = self.globals_and_locals["__temporal_in_sandbox"]
        return in_sandbox.get_external_store_context(command_info)


class CompiledOnceSandbox(SandboxedWorkflowRunner):
    """The SDK's sandbox (``SandboxedWorkflowRunner``, same restrictions, a sandbox per run), whose glue code is
    compiled once per process instead of at every crossing (see the module's docstring)."""

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return _GlueCompiledOnce(det, self.runner_class, self.restrictions)


def glue_compiled() -> int:
    """How many of the sandbox's code strings have their code kept in this process."""
    return len(_GLUE)
