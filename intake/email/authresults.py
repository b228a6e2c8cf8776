"""What our own mail server said about a message's sender: its ``Authentication-Results`` (RFC 8601).

A From address is whatever the sender typed. The server that received the message for the privacy mailbox
checks SPF, DKIM and DMARC and writes the verdicts in an ``Authentication-Results`` header that starts with
its *authserv-id* (``mx.example.com; dmarc=pass header.from=example.org; dkim=pass ...``). Anyone can put
such headers in a message too, so only the ones naming the authserv-id the engine is configured to trust
(``DSR_MAIL_AUTHSERV_ID``) count, and of those only the first contiguous run from the top: headers are
prepended as a message travels, so the receiving server's are above everything the sender wrote. RFC 8601
section 5 requires that server to remove headers claiming its authserv-id from incoming mail (Postfix with
OpenDKIM/OpenDMARC, Rspamd, Exim, Gmail and Microsoft 365 do); a forged one lower in the message is ignored
here either way when the server wrote its own above it.

The verdicts kept are the result words only (``pass``, ``fail``, ``none``...), never the domains or
addresses in the header's properties: they are shown to operators and recorded in the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

HEADER = "Authentication-Results"
METHODS = ("dmarc", "dkim", "spf")
MAX_HEADERS = 20  # a hostile message may carry thousands; ours are at the top
MAX_HEADER_CHARS = 8_000
# Headers receiving servers add beside their verdicts; the run of trusted verdicts may span them, and ends at
# any other header (the message's own, written by the sender).
TRACE_HEADERS = frozenset({
    "received", "received-spf", "return-path", "delivered-to", "x-original-to",
    "arc-seal", "arc-message-signature", "arc-authentication-results",
})


@dataclass(frozen=True)
class SenderCheck:
    """The receiving server's verdicts on a message's sender; each None when it did not say."""

    authserv_id: str | None  # the trusted server, when configured
    found: bool = False  # a header of that server was there
    dmarc: str | None = None
    dkim: str | None = None
    spf: str | None = None

    @property
    def dmarc_failed(self) -> bool:
        """DMARC failed: the From domain publishes a policy and the message passes neither aligned SPF nor
        aligned DKIM (``none`` would mean no policy published: nothing to conclude)."""
        return self.dmarc == "fail"

    def summary(self) -> str:
        """One line for operators: ``dmarc=pass dkim=pass spf=pass (mx.example.com)``, or why there is none."""
        if self.authserv_id is None:
            return "sender not checked (DSR_MAIL_AUTHSERV_ID is not set)"
        if not self.found:
            return f"sender not checked (no Authentication-Results from {self.authserv_id})"
        verdicts = " ".join(f"{method}={getattr(self, method) or 'unknown'}" for method in METHODS)
        return f"{verdicts} ({self.authserv_id})"


UNCHECKED = SenderCheck(authserv_id=None)
"""No server is trusted (``DSR_MAIL_AUTHSERV_ID`` unset): nothing is known of the sender."""


def sender_check(headers: Iterable[tuple[str, str]], authserv_id: str | None) -> SenderCheck:
    """The verdicts of ``authserv_id`` among a message's raw headers (name, value), in message order."""
    trusted = (authserv_id or "").strip().lower()
    if not trusted:
        return SenderCheck(authserv_id=None)
    verdicts: dict[str, str] = {}
    found = False
    seen = 0
    for name, value in headers:
        name = name.strip().lower()
        if name != HEADER.lower():
            if found and name not in TRACE_HEADERS:
                break  # past the receiving servers' trace: the sender's own headers, which it may have forged
            continue
        seen += 1
        if seen > MAX_HEADERS:
            break
        parsed = _parse(str(value)[:MAX_HEADER_CHARS])
        if parsed is None or parsed[0] != trusted:
            if found:
                break  # the run of our server's headers is over: anything lower is the sender's to write
            continue
        found = True
        by_method: dict[str, list[str]] = {}
        for method, result in parsed[1]:
            by_method.setdefault(method, []).append(result)
        for method, results in by_method.items():
            if method in METHODS and method not in verdicts:  # the highest header saying it wins
                # Several DKIM signatures: one that passes is DKIM's pass (DMARC judges alignment).
                verdicts[method] = "pass" if method == "dkim" and "pass" in results else results[0]
    return SenderCheck(
        authserv_id=authserv_id.strip() if authserv_id else None,
        found=found,
        dmarc=verdicts.get("dmarc"),
        dkim=verdicts.get("dkim"),
        spf=verdicts.get("spf"),
    )


def _parse(value: str) -> tuple[str, list[tuple[str, str]]] | None:
    """(authserv-id lower-cased, [(method, result)]) of one header value; None when unreadable."""
    segments = _split(_without_comments(" ".join(value.split())))
    if not segments:
        return None
    head = segments[0].split()
    if not head:
        return None
    authserv_id = head[0].strip('"').lower()
    verdicts: list[tuple[str, str]] = []
    for segment in segments[1:]:
        words = segment.split()
        if not words or "=" not in words[0]:
            continue  # "none" (no results), or something unreadable
        method, _, result = words[0].partition("=")
        method = method.split("/", 1)[0].strip().lower()  # "dkim/1=pass": a method version
        result = result.strip().strip('"').lower()
        if method and result:
            verdicts.append((method, result))
    return authserv_id, verdicts


def _without_comments(value: str) -> str:
    """RFC 5322 comments (nested parentheses, backslash escapes) removed; quoted strings kept."""
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for char in value:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(char)
            continue
        if char == "\\":
            escaped = True
            if depth == 0:
                out.append(char)
            continue
        if quoted:
            out.append(char)
            quoted = char != '"'
            continue
        if char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth == 0:
            out.append(char)
            quoted = char == '"'
    return "".join(out)


def _split(value: str) -> list[str]:
    """The ``;``-separated parts, outside quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == ";" and not quoted:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return [part for part in parts if part]
