"""Reading a request body with a size limit, for every HTTP app of the project (codec server, intake).

An oversize body is read on and thrown away, up to ``drain_limit``, so the client receives the 413
instead of a reset connection; past that (or when ``Content-Length`` already says so) reading stops and
the server closes the connection after its answer.
"""

from __future__ import annotations

from starlette.requests import Request

from dsr.errors import InvalidInputError

DEFAULT_DRAIN_LIMIT = 1024 * 1024


class BodyTooLarge(InvalidInputError):
    """The body is longer than the limit; answer 413 (with ``Connection: close``)."""


def _is_ascii_number(value: str) -> bool:
    """``str.isdigit`` alone accepts "²" or "١", which ``int`` then refuses: a header must not cause a 500."""
    return value.isascii() and value.isdigit()


async def read_limited_body(request: Request, limit: int, *, drain_limit: int = DEFAULT_DRAIN_LIMIT) -> bytes:
    """The body, or :class:`BodyTooLarge` past ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if _is_ascii_number(declared) and int(declared) > drain_limit:
        raise BodyTooLarge  # not worth reading: the connection is closed after the 413
    too_large = _is_ascii_number(declared) and int(declared) > limit
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if too_large or total > limit:
            too_large = True
            chunks.clear()
            if total > drain_limit:
                break
            continue
        chunks.append(chunk)
    if too_large:
        raise BodyTooLarge
    return b"".join(chunks)
