"""`dsr attachments`: files that came with requests (ID documents by email, documents of the web form)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from dsr.store.attachments import AttachmentStore

from dsr.cli.common import (
    JsonOption,
    RequestId,
    UserError,
    check_reference,
    emit_json,
    fail,
    open_ledger,
    plain,
)

app = typer.Typer(help="Files that came with requests (ID documents, documents of the web form).", no_args_is_help=True)


def _attachments() -> AttachmentStore:
    from dsr.runtime.bootstrap import Deployment

    return Deployment.from_env().attachments


@app.command("list")
def attachments_list(request_id: RequestId, as_json: JsonOption = False) -> None:
    """What a request came with (deleted automatically once identity is confirmed)."""
    from dsr.config.settings import ConfigError
    from dsr.store import StorageError
    from dsr.store.crypto import KeyRingError

    try:
        check_reference(request_id)
        found = _attachments().list(request_id)
    except (UserError, ConfigError, KeyRingError, ValueError, StorageError) as err:
        fail(str(err))
    if as_json:
        emit_json([plain(a) for a in found])
        return
    if not found:
        typer.echo(f"{request_id}: no attachments")
    for item in found:
        typer.echo(f"  {item.index}  {item.filename}  {item.content_type}  {item.size} bytes")
        if item.sender_check:  # what our mail server said of the email's sender: a forged From shows here
            typer.echo(f"     sender: {item.sender_check}")


@app.command("get")
def attachments_get(
    request_id: RequestId,
    index: Annotated[int, typer.Argument(help="The attachment's number (from `dsr attachments list`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write it (created 0600).")],
) -> None:
    """Decrypt one attachment to a file, to review a document; delete your copy after."""

    from dsr.config.settings import ConfigError
    from dsr.store import StorageError
    from dsr.store.crypto import KeyRingError

    try:
        check_reference(request_id)
        data = _attachments().read(request_id, index)
        descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fail(f"{output} exists; choose another path")
    except (UserError, ConfigError, KeyRingError, ValueError, LookupError, FileNotFoundError, StorageError) as err:
        fail(str(err) or f"{request_id} has no attachment {index}")
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
    typer.echo(f"{output}: {len(data)} bytes (delete it once reviewed)")



@app.command("delete-orphans")
def attachments_delete_orphans(request_id: RequestId) -> None:
    """Delete the documents filed under a reference the ledger has no request for: those the web form kept when the
    engine could not say whether the request had started (its log names the reference), once it is known that it did
    not. A request's own documents are never deleted here: its workflow deletes them once reviewed or closed."""
    from dsr.config.settings import ConfigError
    from dsr.store import StorageError
    from dsr.store.crypto import KeyRingError

    try:
        check_reference(request_id)
    except UserError as err:
        fail(str(err))
    _, ledger = open_ledger()
    try:
        known = ledger.has_request(request_id)
    finally:
        ledger.close()
    if known:
        fail(f"{request_id} is a request: its documents are deleted by the request itself (once reviewed, or closed)")
    try:
        deleted = _attachments().delete_all(request_id)
    except (ConfigError, KeyRingError, ValueError, StorageError) as err:
        fail(str(err))
    typer.echo(f"{request_id}: {deleted} orphan document(s) deleted")
