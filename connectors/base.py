"""The one protocol every system holding personal data is reached through.

Connectors know HTTP and the vendor's API, nothing of Temporal: the activities in
``activities/connectors.py`` run them and turn their errors into retry decisions. Error messages must
never contain the subject's email, name or address — they end up in Temporal failures and the UI.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from dsr.model import ConnectorOutcome, RequestKind, Subject


class ConnectorError(Exception):
    """Base of connector errors. The message is shown to operators: no personal data in it."""


class TransientConnectorError(ConnectorError):
    """Worth retrying (429, 5xx, timeouts). ``retry_after`` honours the vendor's Retry-After."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentConnectorError(ConnectorError):
    """Retrying will not help until a person acts (bad credentials, unknown configuration).

    The request moves to ``needs_attention`` and waits for an operator's ``retry``.
    """


@runtime_checkable
class Connector(Protocol):
    """A system that holds personal data: a CRM, a payment processor, a shop."""

    name: str
    """Unique, stable, shown to operators (e.g. "hubspot", "stripe-eu")."""

    kinds: frozenset[RequestKind]
    """The request kinds this system takes part in."""

    async def access(self, request_id: str, subject: Subject) -> ConnectorOutcome:
        """Locate and export every record of the subject (Art. 15)."""
        ...

    async def portability(self, request_id: str, subject: Subject) -> ConnectorOutcome:
        """Export the data the subject provided, machine-readable (Art. 20)."""
        ...

    async def erase(self, request_id: str, subject: Subject) -> ConnectorOutcome:
        """Erase, anonymise or retain (with legal basis) every record (Art. 17). Idempotent."""
        ...

    async def rectify(self, request_id: str, subject: Subject, changes: dict[str, str]) -> ConnectorOutcome:
        """Apply changes given on canonical fields to the system's own fields (Art. 16). Idempotent."""
        ...


async def run_connector(
    connector: Connector,
    kind: RequestKind,
    request_id: str,
    subject: Subject,
    changes: dict[str, str] | None = None,
) -> ConnectorOutcome:
    """Dispatch one request kind to the matching connector operation."""
    match kind:
        case RequestKind.ACCESS:
            return await connector.access(request_id, subject)
        case RequestKind.PORTABILITY:
            return await connector.portability(request_id, subject)
        case RequestKind.ERASURE:
            return await connector.erase(request_id, subject)
        case RequestKind.RECTIFICATION:
            return await connector.rectify(request_id, subject, dict(changes or {}))
    raise PermanentConnectorError(f"connector {connector.name} cannot handle requests of kind {kind}")
