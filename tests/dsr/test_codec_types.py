"""The payload converter's type adapters, built once per process (``dsr.store.codec._JSON``), and what makes one
cache safe: every type the engine's workflows and activities send through Temporal is a host class, never one of
the workflow modules the sandbox loads again for each run (a cache holding those would keep every run's modules)."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any

import pytest
import temporalio.activity
import temporalio.workflow
from pydantic import TypeAdapter

import workflows.contract
from dsr.store.codec import EnginePayloadConverter
from worker import WORKFLOWS

SANDBOXED = "workflows"  # the package the sandbox executes afresh for every run (worker.build_worker)


def test_a_converter_made_for_another_run_reuses_the_adapters_already_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK makes a payload converter per workflow run; the second one must not build pydantic's adapter for a
    type the first already converted."""
    built: list[Any] = []
    original = TypeAdapter.__init__

    def noting(self: TypeAdapter[Any], hint: Any, *args: Any, **kwargs: Any) -> None:
        built.append(hint)
        original(self, hint, *args, **kwargs)

    monkeypatch.setattr(TypeAdapter, "__init__", noting)
    first, second = EnginePayloadConverter(), EnginePayloadConverter()

    @dataclasses.dataclass(frozen=True)
    class Unconverted:  # a type no converter of this process has seen yet
        number: int

    hint = list[Unconverted]
    payloads = first.to_payloads([[Unconverted(1), Unconverted(2)]])
    assert first.from_payloads(payloads, [hint]) == [[Unconverted(1), Unconverted(2)]]
    assert second.from_payloads(payloads, [hint]) == [[Unconverted(1), Unconverted(2)]]
    assert built.count(hint) == 1


def _classes(hint: Any) -> typing.Iterator[type]:
    """The classes a type hint is made of (``list[AuditEvent] | None``: list, AuditEvent, NoneType)."""
    origin = typing.get_origin(hint)
    if origin is not None:
        if isinstance(origin, type):
            yield origin
        for arg in typing.get_args(hint):
            yield from _classes(arg)
    elif isinstance(hint, type):
        yield hint
    elif isinstance(hint, types.UnionType):  # pragma: no cover - get_origin answers for these
        for arg in hint.__args__:
            yield from _classes(arg)


def _payload_hints() -> typing.Iterator[tuple[str, Any]]:
    for cls in WORKFLOWS:
        definition = temporalio.workflow._Definition.must_from_class(cls)
        for arg in definition.arg_types or []:
            yield f"{cls.__name__} input", arg
        yield f"{cls.__name__} result", definition.ret_type
        for handlers in (definition.signals, definition.queries, definition.updates):
            for name, handler in handlers.items():
                for arg in getattr(handler, "arg_types", None) or []:
                    yield f"{cls.__name__}.{name}", arg
                yield f"{cls.__name__}.{name} result", getattr(handler, "ret_type", None)
    seen: set[int] = set()
    for value in vars(workflows.contract).values():
        candidates = ([member for _, member in inspect.getmembers(value, inspect.isfunction)]
                      if isinstance(value, type) else [value])
        for fn in candidates:
            activity = temporalio.activity._Definition.from_callable(fn)
            if activity is None or id(fn) in seen:
                continue
            seen.add(id(fn))
            for arg in activity.arg_types or []:
                yield f"activity {activity.name}", arg
            yield f"activity {activity.name} result", activity.ret_type


def test_every_payload_type_of_the_workflows_and_activities_is_a_host_class() -> None:
    hints = list(_payload_hints())
    activities = {name.split(" ")[1] for name, _ in hints if name.startswith("activity ")}
    assert len(activities) >= 20  # the walk reached the activities the workflows call
    assert any(name == "DataSubjectRequest input" for name, _ in hints)
    sandboxed = [(name, cls) for name, hint in hints for cls in _classes(hint)
                 if cls.__module__.partition(".")[0] == SANDBOXED]
    assert sandboxed == []
