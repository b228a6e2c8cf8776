"""Taking the answer of a system reached by a person: from the answer page, or from ``dsr tasks complete``.

One way for both: the answer is checked (kept -> basis and date, cannot -> reason), an uploaded export file is
stored encrypted with the request's exports (dataset ``upload`` of the system), the answer is recorded in the
ledger once (:meth:`dsr.store.tasks.OutsideTasks.record_answer`: a second answer, on any replica, is refused),
then handed to the waiting ``OutsideSystemTask`` workflow (the ``answer`` update). The ledger is the record: when
the workflow no longer waits (no answer came by the date, and the request asks for attention), the answer stays
there and the request is told (signal ``outside_answered``): if nothing else waits for an operator, it goes on
at once, the task's next run taking the answer from the ledger; otherwise the operator's retry takes it.

An operator's ``no_answer`` ("go on without their answer") is no answer: the system's real answer, when it comes,
still goes in (once). After the request is answered, its aftercare is told (signal ``outside_settled``): the
subject, told in the reply that this system had not answered yet, gets a supplementary letter.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError

from dsr.domain.aftercare import SUPPLEMENT_SIGNAL, OutsideSettled, aftercare_id
from dsr.domain.model import AnswerStatus, OutsideAnswer
from dsr.domain.outside import (
    LATE_ANSWER_SIGNAL,
    UPLOAD_DATASET,
    AnswerRefused,
    check_answer,
    outside_workflow_id,
)
from dsr.errors import InvalidInputError
from dsr.store.exports import ExportStore
from dsr.store.tasks import OutsideTasks, UnknownTask

__all__ = ["MAX_UPLOAD_BYTES", "AnswerResult", "ExportFile", "UploadRefused", "record_answer", "upload_records"]

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
"""An export file uploaded with an answer: at most 10 MiB."""
_PART = 48 * 1024
"""A file neither CSV nor JSON is stored in base64 parts of this many bytes, one record each."""


class UploadRefused(InvalidInputError, ValueError):
    """An export file that cannot be taken (too large, empty)."""


@dataclass(frozen=True)
class ExportFile:
    name: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class AnswerResult:
    state: Literal["recorded", "already", "unknown"]
    delivered: bool = False  # the waiting workflow took it (False: kept in the ledger for the operator's retry)
    resumed: bool = False  # a late answer: the request, waiting for attention, was told and goes on with it
    aftercare: bool = False  # the request was answered already: its aftercare was told (supplementary letter)
    replaced: bool = False  # it replaced an operator's no_answer (the request had gone on without it)


def upload_records(upload: ExportFile) -> Iterator[dict[str, Any]]:
    """The records of an uploaded export: a CSV's rows, a JSON array's objects (or the one object), else the
    file itself in base64 parts, so the subject's bundle holds whatever the processor sent."""
    name = upload.name.lower()
    if name.endswith(".csv") or upload.content_type == "text/csv":
        try:
            text = upload.data.decode("utf-8-sig")
            rows = list(csv.DictReader(io.StringIO(text)))
            if rows:
                yield from ({str(k): v for k, v in row.items() if k is not None} for row in rows)
                return
        except (UnicodeDecodeError, csv.Error):
            pass
    if name.endswith(".json") or upload.content_type == "application/json":
        try:
            value = json.loads(upload.data)
        except ValueError:
            value = None
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            yield from value
            return
        if isinstance(value, dict):
            yield value
            return
    for part, start in enumerate(range(0, len(upload.data), _PART)):
        yield {"file": upload.name, "content_type": upload.content_type, "part": part,
               "base64": base64.b64encode(upload.data[start:start + _PART]).decode("ascii")}


def _store_upload(exports: ExportStore, request_id: str, system: str, upload: ExportFile) -> int:
    writer = exports.for_request(request_id).open(system, UPLOAD_DATASET, provided=False)
    try:
        writer.truncate(0)
        for record in upload_records(upload):
            writer.write(record)
        writer.flush()
        return writer.count
    finally:
        writer.close()


async def record_answer(tasks: OutsideTasks, client: Client, request_id: str, system: str, answer: OutsideAnswer,
                        *, exports: ExportStore | None = None, upload: ExportFile | None = None) -> AnswerResult:
    """Record ``answer`` (:class:`AnswerRefused` when it does not say what the reply needs), then hand it to the
    task's workflow."""
    check_answer(answer)
    found = await asyncio.to_thread(tasks.get, request_id, system)
    if found is None:
        return AnswerResult("unknown")
    if found.answer is not None and (found.answer.status != AnswerStatus.NO_ANSWER
                                     or answer.status == AnswerStatus.NO_ANSWER):
        return AnswerResult("already")
    if upload is not None and upload.data:
        if exports is None:
            raise UploadRefused("this answer takes no file")
        if len(upload.data) > MAX_UPLOAD_BYTES:
            raise UploadRefused(f"the file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB")
        answer.export_records = await asyncio.to_thread(_store_upload, exports, request_id, system, upload)
    try:
        recorded = await asyncio.to_thread(tasks.record_answer, request_id, system, answer)
    except UnknownTask:
        return AnswerResult("unknown")
    if not recorded:
        return AnswerResult("already")
    aftercare = await _tell_aftercare(client, request_id, system, answer)
    if found.answer is not None:
        # It replaces an operator's no_answer: the task ended with it and the request went on without it; what
        # remains is to tell the subject (the supplementary letter, read from the ledger).
        return AnswerResult("recorded", aftercare=aftercare, replaced=True)
    from workflows.outside import OutsideSystemTask

    try:
        handle = client.get_workflow_handle_for(OutsideSystemTask.run, outside_workflow_id(request_id, system))
        await handle.execute_update(OutsideSystemTask.answer, answer)
    except (RPCError, WorkflowUpdateFailedError) as err:
        # Not waiting any more (no answer by the date: the request asks for attention): the ledger has the
        # answer; the request is told, and goes on with it once nothing else waits for an operator. Temporal
        # away: the operator's retry takes it.
        logger.warning("answer of %s for %s recorded; its task was not waiting (%s)", system, request_id,
                       type(err).__name__)
        try:
            await client.get_workflow_handle(request_id).signal(LATE_ANSWER_SIGNAL, system)
        except RPCError as signal_err:  # the request is closed, or Temporal away
            logger.warning("late answer of %s for %s: the request was not told (%s)", system, request_id,
                           type(signal_err).__name__)
            return AnswerResult("recorded", delivered=False, aftercare=aftercare)
        return AnswerResult("recorded", delivered=False, resumed=True)
    return AnswerResult("recorded", delivered=True)


async def _tell_aftercare(client: Client, request_id: str, system: str, answer: OutsideAnswer) -> bool:
    """Tell the request's aftercare, if it runs, that the system answered: the supplementary letter may be due.
    Best effort: an aftercare not started yet reads the ledger when it starts, and one waiting past a lost signal
    reads it at its last day anyway."""
    try:
        await client.get_workflow_handle(aftercare_id(request_id)).signal(
            SUPPLEMENT_SIGNAL, OutsideSettled(system=system, status=answer.status.value))
    except RPCError as err:  # no aftercare (none needed, not yet started, ended), or Temporal away
        logger.debug("answer of %s for %s: no aftercare told (%s)", system, request_id, type(err).__name__)
        return False
    return True


__all__ += ["AnswerRefused"]
