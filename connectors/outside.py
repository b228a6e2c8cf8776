"""Systems no API reaches: a processor answering by email (``processor``), a task for a person (``manual``).

They take part in the fan-out like any connector (``plan_fanout`` names them), but a person does the work: the
request's workflow runs an ``OutsideSystemTask`` child workflow for each (``workflows/outside.py``), which emails
the contact with a link to the answer page and waits, durably, for the answer. This class only carries the
configuration the activities need (who to write to, in which language, by when); its connector methods refuse,
since no code can act in such a system.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from connectors.base import ExportJob, Located, OperationJob, PermanentConnectorError
from dsr.domain.model import ConnectorOutcome, Language, RequestKind, Subject

__all__ = ["OutsideSystem"]


@dataclass
class OutsideSystem:
    """A ``processor`` (its privacy contact, Art. 28(3)(e)) or a ``manual`` system (its internal owner)."""

    name: str
    type: str  # "processor" | "manual"
    contact: str  # the email address written to: the processor's privacy contact or the internal owner
    language: Language = Language.EN
    answer_within_days: int = 10
    """Days from the first email to the date the answer is needed by (never after the request's deadline)."""
    reminder_days: tuple[int, ...] = (3, 1)
    """Days before the answer-by date when a reminder goes, if no answer came."""
    label: str = ""  # how the emails name the controller's system (default: the name)
    kinds: frozenset[RequestKind] = field(default_factory=lambda: frozenset(RequestKind))

    async def check(self) -> str:
        return f"{self.type}: answers by {self.contact.rpartition('@')[2]} within {self.answer_within_days} days"

    async def locate(self, subject: Subject) -> list[Located]:
        return []  # nothing to look up: the answer says what they hold

    async def export(self, job: ExportJob) -> ConnectorOutcome:
        raise PermanentConnectorError(f"{self.name} is answered by a person, through its task (dsr tasks)")

    async def erase(self, job: OperationJob) -> ConnectorOutcome:
        raise PermanentConnectorError(f"{self.name} is answered by a person, through its task (dsr tasks)")

    async def rectify(self, job: OperationJob) -> ConnectorOutcome:
        raise PermanentConnectorError(f"{self.name} is answered by a person, through its task (dsr tasks)")

    async def aclose(self) -> None:
        return None
