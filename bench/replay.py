"""Benchmark: what a replay costs the worker — a request evicted from its cache, or every request after a restart.

A worker that no longer holds a request in its cache (``DSR_WORKFLOW_CACHE``) replays the request's history before it
can answer a query or run the next step: ``bench/idle.py`` measures that through a server, where queueing is most of
the time. This replays the saved histories of this release (``tests/workflows/histories/<workflow>/<version>/``, the
scenarios of the lifecycle tests) with the worker's own sandbox (``CompiledOnceSandbox``) in this process, no server,
and prints the CPU per replay and per history event, in ``--rounds`` rounds (median and range). ``--profile`` adds
the functions that took the most time in one more pass, its activations run inline (the SDK's debug mode).

    .venv/bin/python bench/replay.py [--rounds 5] [--workflow DataSubjectRequest] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from temporalio.client import WorkflowHistory  # noqa: E402
from temporalio.worker import Replayer  # noqa: E402

from dsr.runtime.workflow_code import CompiledOnceSandbox, compile_once  # noqa: E402
from dsr.store.crypto import data_converter  # noqa: E402
from tests.harness import TEST_KEYRING  # noqa: E402
from worker import WORKFLOWS  # noqa: E402


def saved_histories(workflow: str) -> list[WorkflowHistory]:
    from tests.harness import project_version

    folder = ROOT / "tests" / "workflows" / "histories" / workflow / project_version()
    histories = []
    for path in sorted(folder.glob("*.json")):
        saved = json.loads(path.read_text(encoding="utf-8"))
        histories.append(WorkflowHistory.from_json(saved["workflow_id"], saved["history"]))
    if not histories:
        raise SystemExit(f"bench/replay.py: no saved history in {folder.relative_to(ROOT)}")
    return histories


async def _each(histories: Sequence[WorkflowHistory]) -> AsyncIterator[WorkflowHistory]:
    for history in histories:
        yield history


async def replay_all(replayer: Replayer, histories: Sequence[WorkflowHistory]) -> float:
    """Replay every history once; the process's CPU seconds it took. A replay that fails ends the benchmark: the
    figure would be of an unfinished replay."""
    began = time.process_time()
    async with replayer.workflow_replay_iterator(_each(histories)) as results:
        async for result in results:
            if result.replay_failure is not None:
                raise SystemExit(f"bench/replay.py: {result.history.workflow_id} failed to replay: "
                                 f"{result.replay_failure}")
    return time.process_time() - began


def replayer_of_the_worker(*, debug_mode: bool = False) -> Replayer:
    """The worker's workflows in its sandbox, with the key the saved histories' payloads were encrypted with."""
    return Replayer(workflows=list(WORKFLOWS), workflow_runner=CompiledOnceSandbox(), debug_mode=debug_mode,
                    data_converter=data_converter(TEST_KEYRING))


async def main(workflow: str, rounds: int, profile: bool) -> None:
    histories = saved_histories(workflow)
    events = sum(len(h.events) for h in histories)
    compile_once("workflows")  # as build_worker does
    replayer = replayer_of_the_worker()
    await replay_all(replayer, histories[:1])  # the first sandbox imports what later ones find ready
    per_replay = []
    for n in range(rounds):
        cpu = await replay_all(replayer, histories)
        per_replay.append(cpu / len(histories))
        print(f"round {n + 1}: {len(histories)} histories of {workflow} ({events / len(histories):.0f} events on "
              f"average) replayed in {cpu:.2f} s of CPU: {cpu / len(histories) * 1000:.1f} ms each, "
              f"{cpu / events * 1e6:.0f} us per event", flush=True)
    median = statistics.median(per_replay)
    print(f"median over {rounds} rounds: {median * 1000:.1f} ms of CPU per replay "
          f"(rounds {min(per_replay) * 1000:.1f}-{max(per_replay) * 1000:.1f}), "
          f"{median * len(histories) / events * 1e6:.0f} us per event")
    if profile:
        # Activations run in the SDK's thread pool, where cProfile does not look: debug mode runs them inline.
        inline = replayer_of_the_worker(debug_mode=True)
        await replay_all(inline, histories[:1])
        profiler = cProfile.Profile()
        profiler.enable()
        await replay_all(inline, histories)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", default="DataSubjectRequest",
                        help="the workflow type whose saved histories are replayed")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print the costliest functions of one more pass")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    asyncio.run(main(args.workflow, args.rounds, args.profile))
