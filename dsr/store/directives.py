"""Directives on the fate of a person's data after their death (loi n° 78-17 du 6 janvier 1978, art. 85-I).

A person may give the controller *specific* directives ("directives particulières") on the keeping, erasure and
communication of their data after death, and designate someone to carry them out. Art. 85-I: the designated
person then "a qualité [...] pour prendre connaissance des directives et demander leur mise en œuvre"; without a
designation (or if the designated person died first, unless the directives say otherwise) the heirs may.
Directives can be changed or revoked at any time: a new record for the same address replaces the older one.

What the table keeps, and why so little in clear:

* ``subject_index``: the ledger's blind index of the person's address (the same keyed HMAC as
  :meth:`dsr.store.ledger.Ledger.subject_key`), so a death reported later finds the directives without the
  table holding the address;
* ``designee_index``: the blind index of the designated person's address ("" when nobody is designated), so
  the engine can tell whether the sender of a post_mortem request is that person, without their address;
* ``instruction``: erase, keep or hand_over (no personal data: a word of ours);
* ``content_sealed``: the person's own words and the designee's name and address, sealed (encrypted, bound to
  the directive's id), shown only to an operator;
* ``recorded_at``, and ``applied_by`` (the request that applied them) once applied.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import String, Text
from sqlmodel import Field, Session, SQLModel, col, select

from dsr.domain.model import DirectiveInstruction, DirectivesFound, is_valid_email
from dsr.errors import InvalidInputError
from dsr.store.ledger import Ledger, UTCDateTime

CONTENT_PURPOSE = "directives.content"
MAX_TEXT = 5_000


class DirectivesError(InvalidInputError, ValueError):
    """Directives that cannot be recorded as given (the message names the field, never a value)."""


class DirectiveRow(SQLModel, table=True):
    """One person's directives for after their death, as blind indexes and a sealed content."""

    __tablename__ = "directives"

    directive_id: str = Field(primary_key=True, sa_type=String(40))
    subject_index: str = Field(sa_type=String(128), index=True)
    designee_index: str = Field(default="", sa_type=String(128))
    instruction: str = Field(sa_type=String(16))
    content_sealed: str = Field(sa_type=Text)
    recorded_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    applied_by: str = Field(default="", sa_type=String(100))  # the post_mortem request that applied them


@dataclass(frozen=True)
class Directives:
    """A person's directives, opened (personal data: for an operator only)."""

    directive_id: str
    instruction: DirectiveInstruction
    text: str
    designee_email: str
    designee_name: str
    recorded_at: datetime
    applied_by: str


class DirectivesRegister:
    """The directives table, on the ledger's database and key ring. Thread-safe like the ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._write_engine = ledger.engine.execution_options(dsr_write=True)

    @contextlib.contextmanager
    def _session(self, *, write: bool) -> Iterator[Session]:
        engine = self._write_engine if write else self._ledger.engine
        with Session(engine) as session, session.begin():
            yield session

    def record(self, email: str, *, instruction: DirectiveInstruction | str, text: str = "",
               designee_email: str = "", designee_name: str = "", now: datetime | None = None) -> str:
        """Record the person's directives (replacing any earlier ones: art. 85-I, they may be changed at any time);
        answers the new directive id (no personal data)."""
        email, designee_email = email.strip(), designee_email.strip()
        if not is_valid_email(email):
            raise DirectivesError("the person's email is not a valid address")
        if designee_email and not is_valid_email(designee_email):
            raise DirectivesError("the designated person's email is not a valid address")
        if designee_email and self._ledger.subject_key(designee_email) == self._ledger.subject_key(email):
            raise DirectivesError("the designated person must be someone else than the person")
        try:
            chosen = DirectiveInstruction(str(instruction).strip().lower())
        except ValueError:
            raise DirectivesError("instruction must be one of "
                                  + ", ".join(i.value for i in DirectiveInstruction)) from None
        if chosen == DirectiveInstruction.HAND_OVER and not designee_email:
            raise DirectivesError("a hand-over needs the designated person (to whom the data goes)")
        if len(text) > MAX_TEXT or len(designee_name) > 200:
            raise DirectivesError(f"the directives' text is limited to {MAX_TEXT} characters, the name to 200")
        now = (now or datetime.now(UTC)).astimezone(UTC)
        directive_id = "dir-" + secrets.token_hex(8)
        content = json.dumps({"text": text, "designee_email": designee_email, "designee_name": designee_name},
                             ensure_ascii=False)
        index = self._ledger.subject_key(email)
        with self._session(write=True) as session:
            for row in session.exec(select(DirectiveRow).where(col(DirectiveRow.subject_index) == index,
                                                              col(DirectiveRow.revoked_at).is_(None))):
                row.revoked_at = now
                session.add(row)
            session.add(DirectiveRow(
                directive_id=directive_id, subject_index=index,
                designee_index=self._ledger.subject_key(designee_email) if designee_email else "",
                instruction=chosen.value,
                content_sealed=self._ledger.sealer.seal_text(content, purpose=CONTENT_PURPOSE, context=directive_id),
                recorded_at=now,
            ))
        return directive_id

    def revoke(self, email: str, *, now: datetime | None = None) -> int:
        """Revoke the person's directives (art. 85-I); answers how many were in force (0 or 1)."""
        now = (now or datetime.now(UTC)).astimezone(UTC)
        index = self._ledger.subject_key(email.strip())
        with self._session(write=True) as session:
            rows = list(session.exec(select(DirectiveRow).where(col(DirectiveRow.subject_index) == index,
                                                               col(DirectiveRow.revoked_at).is_(None))))
            for row in rows:
                row.revoked_at = now
                session.add(row)
            return len(rows)

    def _current(self, session: Session, email: str) -> DirectiveRow | None:
        return session.exec(select(DirectiveRow).where(
            col(DirectiveRow.subject_index) == self._ledger.subject_key(email.strip()),
            col(DirectiveRow.revoked_at).is_(None),
        ).order_by(col(DirectiveRow.recorded_at).desc())).first()

    def find(self, deceased_email: str, sender_email: str) -> DirectivesFound:
        """What the engine may know of the deceased person's directives in force, without personal data."""
        with self._session(write=False) as session:
            row = self._current(session, deceased_email)
            if row is None:
                return DirectivesFound()
            return DirectivesFound(
                found=True, directive_id=row.directive_id, instruction=row.instruction,
                designates=bool(row.designee_index),
                sender_designated=bool(row.designee_index)
                and row.designee_index == self._ledger.subject_key(sender_email.strip()),
            )

    def mark_applied(self, directive_id: str, request_id: str) -> bool:
        """Record which request applied the directives (idempotent); False when there is no such directive."""
        with self._session(write=True) as session:
            row = session.get(DirectiveRow, directive_id)
            if row is None:
                return False
            if not row.applied_by:
                row.applied_by = request_id
                session.add(row)
            return True

    def show(self, email: str) -> Directives | None:
        """The person's directives in force, opened (personal data: for ``dsr directives show``)."""
        with self._session(write=False) as session:
            row = self._current(session, email)
            if row is None:
                return None
            content = json.loads(self._ledger.sealer.open_text(row.content_sealed, purpose=CONTENT_PURPOSE,
                                                               context=row.directive_id))
            return Directives(directive_id=row.directive_id, instruction=DirectiveInstruction(row.instruction),
                              text=content["text"], designee_email=content["designee_email"],
                              designee_name=content["designee_name"], recorded_at=row.recorded_at,
                              applied_by=row.applied_by)

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Directives in force (recorded, not revoked) per instruction, and those of them a request applied: for
        the register's report, counts and nothing else."""
        in_force = {i.value: 0 for i in DirectiveInstruction}
        applied = dict(in_force)
        with self._session(write=False) as session:
            for instruction, applied_by in session.exec(select(DirectiveRow.instruction, DirectiveRow.applied_by).where(
                    col(DirectiveRow.revoked_at).is_(None))):
                in_force[instruction] = in_force.get(instruction, 0) + 1
                if applied_by:
                    applied[instruction] = applied.get(instruction, 0) + 1
        return in_force, applied

    def count(self) -> int:
        """Directives in force (for the register): a count, nothing else."""
        with self._session(write=False) as session:
            return len(list(session.exec(select(DirectiveRow.directive_id).where(
                col(DirectiveRow.revoked_at).is_(None)))))
