"""Documents sent with the public form (a request about a deceased person: the death certificate, the proof of the
sender's quality), read from a ``multipart/form-data`` body and judged before anything is stored.

A file is accepted when its first bytes are those of a PDF, a JPEG or a PNG (the name and the type the browser
declares are not believed), it holds at most :data:`MAX_FILE_BYTES`, the form sends at most :data:`MAX_FILES` of
them, :data:`MAX_TOTAL_BYTES` in all. The body is read within a limit first (:data:`MAX_BODY_BYTES`: the files and
the form's fields), so a larger one is a 413 and nothing of it is parsed. An empty file input (the browser sends a
part with no name and no bytes) is no file.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from dsr.web.body import BodyTooLarge, read_limited_body
from intake.web.pages import FormRefused

__all__ = ["MAX_FILES", "MAX_FILE_BYTES", "MAX_TOTAL_BYTES", "MULTIPART_TYPE", "Upload", "document_type",
           "read_multipart"]

MULTIPART_TYPE = "multipart/form-data"
MAX_FILES = 5
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_TOTAL_BYTES = 20 * 1024 * 1024
MAX_BODY_BYTES = MAX_TOTAL_BYTES + 256 * 1024
"""The files, their parts' headers and the form's fields (64 KiB of them at most, see ``intake.web.form``)."""
_MAGIC = ((b"%PDF-", "application/pdf"), (b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"))


@dataclass(frozen=True)
class Upload:
    """One file of the form, read in memory (10 MiB at most)."""

    field: str
    filename: str
    data: bytes

    @property
    def content_type(self) -> str | None:
        return document_type(self.data)


def document_type(data: bytes) -> str | None:
    """``application/pdf``, ``image/jpeg`` or ``image/png`` from the file's first bytes; None for anything else."""
    return next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def read_multipart(request: Request, *, max_fields: int, max_field_bytes: int
                         ) -> tuple[dict[str, list[str]], list[Upload]]:
    """The form's text fields and its files; :class:`FormRefused` 413 past :data:`MAX_BODY_BYTES`, 400 when the
    body is not a readable multipart form (or has more fields or files than a form of ours sends)."""
    try:
        # Up to twice the limit is read on and thrown away, so a browser sending too much sees our 413 page.
        body = await read_limited_body(request, MAX_BODY_BYTES, drain_limit=2 * MAX_BODY_BYTES)
    except BodyTooLarge:
        raise FormRefused(413) from None
    parser = MultiPartParser(Headers(raw=request.headers.raw), _once(body), max_files=MAX_FILES + 1,
                             max_fields=max_fields, max_part_size=max_field_bytes)
    try:
        form = await parser.parse()
    except (MultiPartException, ValueError):
        raise FormRefused(400) from None
    fields: dict[str, list[str]] = {}
    uploads: list[Upload] = []
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                if value.filename or data:  # an input left empty sends a nameless, empty part
                    uploads.append(Upload(field=name, filename=value.filename or "", data=data))
            else:
                fields.setdefault(name, []).append(value)
    finally:
        await form.close()
    return fields, uploads
