"""A linear pre-scan of a raw message's MIME structure, before the ``email`` package is let near it.

The standard library's parser builds a header object per header of every part, and reading a message walks
them again: its cost grows with the number of parts much faster than with the bytes (40,000 tiny parts,
3.9 MB, took a minute in the intake process). A message cannot be refused for its size alone, so its shape
is measured first, in one pass over the bytes that costs about as much as copying them: every boundary the
message declares (``boundary=`` parameters, wherever they are), then every line that is a delimiter of one of
them, counting parts and following the nesting of multiparts. It may count a part too many (a body line
that looks like a delimiter), never one too few: the parser splits on nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dsr.errors import InvalidInputError

MAX_PARTS = 100
"""Parts a message may have (every body part, at any depth); an ID copy and a letter need a handful."""
MAX_DEPTH = 10
"""Multiparts nested in multiparts (a forwarded message inside a reply is 3 or 4)."""
_MAX_BOUNDARY = 200  # RFC 2046 allows 70 characters; longer ones are kept, cut, as the parser would not care

_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n\\]{1,200})"|([^\s;"()\\]{1,200}))(?=\s*(?:;|$|\r?\n))',
                       re.IGNORECASE | re.MULTILINE)
# Every spelling of the parameter, read or not: RFC 2231 continuations (boundary*0=), comments, folds, escapes.
_ANY_BOUNDARY = re.compile(rb"boundary\s*\*?\s*\d*\s*\*?\s*=", re.IGNORECASE)


@dataclass(frozen=True)
class MimeShape:
    parts: int  # delimiter lines: the body parts the parser would make (at least)
    depth: int  # deepest nesting of multiparts (0: not multipart)


class MessageTooComplex(InvalidInputError, ValueError):
    """The message has more parts or deeper nesting than allowed; the message says which (no content)."""


def mime_shape(raw: bytes, *, stop_at_parts: int | None = None) -> MimeShape:
    """Count the parts and the nesting of ``raw`` without parsing it; stops counting past ``stop_at_parts``."""
    found = _BOUNDARY.findall(raw)
    boundaries = {(quoted or bare)[:_MAX_BOUNDARY] for quoted, bare in found}
    # A boundary written in a way this scan does not read (the parser might): then every line starting with
    # "--" counts as a delimiter, which over-counts a little and never misses one.
    every_dash_line = len(_ANY_BOUNDARY.findall(raw)) > len(found)
    if not boundaries and not every_dash_line:
        return MimeShape(parts=0, depth=0)
    parts = 0
    depth = 0
    stack: list[bytes] = []  # the multiparts open around the current line, outermost first
    # The parser ends lines at CR, LF or CRLF (email.feedparser): so does the scan, or bare CRs would hide parts.
    for line in raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        if not line.startswith(b"--"):
            continue
        token = line[2:].rstrip(b" \t")
        closing = token.endswith(b"--") and token[:-2] in boundaries
        boundary = token[:-2] if closing else token
        if boundary not in boundaries:
            if not every_dash_line:
                continue
            boundaries.add(boundary)
        if boundary in stack:
            del stack[stack.index(boundary) + 1:]  # inner multiparts left unclosed end with their parent's part
        else:
            stack.append(boundary)
            depth = max(depth, len(stack))
        if closing:
            stack.pop()
        else:
            parts += 1
            if stop_at_parts is not None and parts > stop_at_parts:
                break
    return MimeShape(parts=parts, depth=depth)


def check_mime_caps(raw: bytes, *, max_parts: int = MAX_PARTS, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`MessageTooComplex` when ``raw`` has more than ``max_parts`` parts or ``max_depth`` levels."""
    shape = mime_shape(raw, stop_at_parts=max_parts)
    if shape.parts > max_parts:
        raise MessageTooComplex(f"more than {max_parts} MIME parts")
    if shape.depth > max_depth:
        raise MessageTooComplex(f"MIME parts nested more than {max_depth} deep")
