"""What every verb shares: one-line errors and exit codes, JSON output, the option types, reading
references, dates and changes, and reaching Temporal or the ledger through the bootstrap."""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Callable, Coroutine
from dataclasses import asdict, is_dataclass
from datetime import date, datetime
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from temporalio.client import Client, WorkflowHandle

    from dsr.config.settings import Settings
    from dsr.domain.model import RequestStatus
    from dsr.runtime.bootstrap import Deployment
    from dsr.store.ledger import Ledger
    from workflows.request import DataSubjectRequest

from dsr.errors import InvalidInputError

T = TypeVar("T")


JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def normalise_reference(value: str) -> str:
    """A reference as people type it back: any case (``DSR-2026-12-7kq3fj``, the download page's form), spaces
    around it; anything else is left as given, for :func:`check_reference` to refuse in one line."""
    found = _ANY_CASE_REFERENCE.fullmatch(value or "")
    if found is None:
        return value
    triage, year, month, code = found.groups()
    return f"{'triage-' if triage else ''}dsr-{year}-{month}-{code.upper()}"


_ANY_CASE_REFERENCE = re.compile(r"\s*(triage-)?dsr-(\d{4})-(\d{2})-([0-9a-z]{6})\s*", re.IGNORECASE)


RequestId = Annotated[str, typer.Argument(help="The request reference, e.g. dsr-2026-11-7KQ3FJ (any case).",
                                          callback=normalise_reference)]


Actor = Annotated[str, typer.Option("--by", help="Who acts (an operator login), kept in the ledger.")]


class UserError(InvalidInputError):
    """A problem the operator can fix; printed as one line."""


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


_SCALARS = frozenset({str, int, float, bool})


def plain(value: Any) -> Any:
    """JSON-ready form of dataclasses, enums and dates."""
    if value is None or type(value) in _SCALARS:  # most values: answered before the slower checks (not enums)
        return value
    if is_dataclass(value) and not isinstance(value, type):
        return {k: plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def emit_json(value: Any) -> None:
    typer.echo(json.dumps(plain(value), ensure_ascii=False, indent=2, sort_keys=True))


def run(coroutine_fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command and turn every expected failure into one line and a non-zero exit."""

    @functools.wraps(coroutine_fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        from temporalio.client import WorkflowUpdateFailedError
        from temporalio.service import RPCError, RPCStatusCode

        from connectors.config import ConfigFileError
        from dsr.config.settings import ConfigError
        from dsr.store.crypto import KeyRingError
        from intake.submission import SubmissionError

        try:
            return asyncio.run(coroutine_fn(*args, **kwargs))
        except (UserError, ConfigError, ConfigFileError, SubmissionError, KeyRingError) as err:
            fail(str(err))
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            fail(getattr(cause, "message", None) or str(cause) or "the request refused the change")
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                fail("no such request (check the reference)")
            if err.status == RPCStatusCode.UNAVAILABLE:
                fail("cannot reach Temporal: is `dsr up` running, or TEMPORAL_ADDRESS right?")
            fail(f"Temporal refused the call: {err.message}")
        except RuntimeError as err:
            if "Failed client connect" in str(err) or "connection" in str(err).lower():
                fail("cannot reach Temporal: is `dsr up` running, or TEMPORAL_ADDRESS right?")
            raise
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper


async def connect_deployment() -> tuple[Deployment, Client]:
    """The deployment of the environment's settings, and its Temporal client (one line if it cannot be reached)."""
    from dsr.runtime.bootstrap import Deployment

    deployment = Deployment.from_env()
    try:
        return deployment, await deployment.client()
    except RuntimeError as err:
        raise UserError(
            f"cannot reach Temporal at {deployment.settings.temporal_address}: is `dsr up` running?"
        ) from err


async def temporal_client() -> tuple[Settings, Client]:
    """The settings and the Temporal client, for the verbs that need nothing else."""
    deployment, client = await connect_deployment()
    return deployment.settings, client


def check_reference(request_id: str) -> None:
    if not re.fullmatch(r"dsr-\d{4}-\d{2}-[0-9A-Z]{6}", request_id):
        raise UserError(f"{request_id!r} is not a request reference (they look like dsr-2026-11-7KQ3FJ)")


def request_handle(client: Client, request_id: str) -> WorkflowHandle[DataSubjectRequest, RequestStatus]:
    """The typed handle of the request ``request_id`` (refused in one line if it is not a reference)."""
    from workflows.request import DataSubjectRequest

    check_reference(request_id)
    return client.get_workflow_handle_for(DataSubjectRequest.run, request_id)


def parse_changes(values: list[str]) -> dict[str, str]:
    changes: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--change must look like field=value, got {item!r}")
        changes[key.strip()] = value
    return changes


def open_ledger() -> tuple[Settings, Ledger]:
    """Settings and the ledger, for the verbs that read the ledger alone (no Temporal needed); the caller closes
    the ledger."""
    from dsr.config.settings import ConfigError
    from dsr.runtime.bootstrap import Deployment
    from dsr.store.crypto import KeyRingError
    from dsr.store.ledger import LedgerUnavailableError

    try:
        deployment = Deployment.from_env()
        return deployment.settings, deployment.ledger
    except (ConfigError, KeyRingError, ValueError, LedgerUnavailableError) as err:
        fail(str(err))


def parse_day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        fail(f"{option} must be a date YYYY-MM-DD, got {value!r}")


def parse_language(value: str | None, default: Any) -> Any:
    from dsr.domain.model import Language

    if value is None:
        return default
    try:
        return Language(value.strip().lower())
    except ValueError:
        fail(f"--language must be fr or en, got {value!r}")


def parse_period(since: str | None, until: str | None) -> tuple[date | None, date | None]:
    first, last = parse_day(since, "--since"), parse_day(until, "--until")
    if first is not None and last is not None and last < first:
        fail(f"--until ({last.isoformat()}) is before --since ({first.isoformat()})")
    return first, last

