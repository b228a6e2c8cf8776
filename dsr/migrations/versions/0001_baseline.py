"""Baseline: the schema of release 0.1.0, the last whose tables were made by ``create_all``.

A database of that release has no revision but some or all of these tables (each table was created by the
first process that imported its model), so this revision creates only the missing ones and leaves the others,
rows and all, as they are: the database ends stamped at the baseline either way.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)


def _requests() -> None:
    op.create_table(
        "requests",
        sa.Column("request_id", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("language", sa.String(length=8), nullable=False),
        sa.Column("received_at", UTC_DATETIME, nullable=False),
        sa.Column("deadline", sa.Date(), nullable=False),
        sa.Column("extended", sa.Boolean(), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("subject_email_sealed", sa.Text(), nullable=False),
        sa.Column("subject_name_sealed", sa.Text(), nullable=False),
        sa.Column("subject_index", sa.String(length=128), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )
    op.create_index("ix_requests_stage", "requests", ["stage"], unique=False)
    op.create_index("ix_requests_subject_index", "requests", ["subject_index"], unique=False)


def _events() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_key", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(length=100), nullable=False),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["request_id"], ["requests.request_id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_key"),
    )
    op.create_index("ix_events_request_id", "events", ["request_id"], unique=False)


def _event_notes() -> None:
    op.create_table(
        "event_notes",
        sa.Column("event_key", sa.String(length=400), nullable=False),
        sa.Column("note_sealed", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("event_key"),
    )


def _subject_claims() -> None:
    op.create_table(
        "subject_claims",
        sa.Column("subject_index", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.String(length=100), nullable=False),
        sa.Column("claimed_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("subject_index", "kind"),
    )


def _triage_dismissals() -> None:
    op.create_table(
        "triage_dismissals",
        sa.Column("triage_id", sa.String(length=100), nullable=False),
        sa.Column("received_at", UTC_DATETIME, nullable=False),
        sa.Column("deadline", sa.Date(), nullable=False),
        sa.Column("classifier_reason", sa.Text(), nullable=False),
        sa.Column("reason_sealed", sa.Text(), nullable=False),
        sa.Column("decided_by", sa.Text(), nullable=False),
        sa.Column("attachments_deleted", sa.Integer(), nullable=False),
        sa.Column("dismissed_at", UTC_DATETIME, nullable=False),
        sa.Column("refused_as", sa.String(length=32), nullable=False),
        sa.Column("ground", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("triage_id"),
    )


def _rate_limits() -> None:
    op.create_table(
        "rate_limits",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("hits", sa.Text(), nullable=False),
        sa.Column("expires_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_rate_limits_expires_at", "rate_limits", ["expires_at"], unique=False)


def _attempt_limits() -> None:
    op.create_table(
        "attempt_limits",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("first_failed", UTC_DATETIME, nullable=True),
        sa.Column("locked_until", UTC_DATETIME, nullable=True),
        sa.Column("expires_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_attempt_limits_expires_at", "attempt_limits", ["expires_at"], unique=False)


def _answer_caps() -> None:
    op.create_table(
        "answer_caps",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("wrong", sa.Integer(), nullable=False),
        sa.Column("closed_at", UTC_DATETIME, nullable=True),
        sa.Column("expires_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_answer_caps_expires_at", "answer_caps", ["expires_at"], unique=False)


def _seen_signatures() -> None:
    op.create_table(
        "seen_signatures",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("expires_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_seen_signatures_expires_at", "seen_signatures", ["expires_at"], unique=False)


def _inbound_messages() -> None:
    op.create_table(
        "inbound_messages",
        sa.Column("message_key", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("reference", sa.String(length=100), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("attachments_stored", sa.Boolean(), nullable=False),
        sa.Column("received_at", UTC_DATETIME, nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("message_key"),
    )
    op.create_index("ix_inbound_messages_request_id", "inbound_messages", ["request_id"], unique=False)


# In creation order (events refer to requests).
TABLES: dict[str, Callable[[], None]] = {
    "requests": _requests,
    "events": _events,
    "event_notes": _event_notes,
    "subject_claims": _subject_claims,
    "triage_dismissals": _triage_dismissals,
    "rate_limits": _rate_limits,
    "attempt_limits": _attempt_limits,
    "answer_caps": _answer_caps,
    "seen_signatures": _seen_signatures,
    "inbound_messages": _inbound_messages,
}


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for name, create in TABLES.items():
        if name not in existing:
            create()
    if "requests" in existing and "subject_claims" not in existing:
        _claim_open_requests()


def _claim_open_requests() -> None:
    """A ledger from before claims existed: its open requests hold their subject and kind (the oldest of each
    pair), so that a duplicate of a request already under way does not start a second workflow."""
    requests = sa.table("requests", sa.column("request_id"), sa.column("kind"), sa.column("stage"),
                        sa.column("subject_index"), sa.column("received_at"), sa.column("created_at"))
    claims = sa.table("subject_claims", sa.column("subject_index"), sa.column("kind"), sa.column("request_id"),
                      sa.column("claimed_at"))
    bind = op.get_bind()
    open_requests = bind.execute(
        sa.select(requests.c.subject_index, requests.c.kind, requests.c.request_id, requests.c.created_at)
        .where(requests.c.stage != "closed").order_by(requests.c.received_at, requests.c.request_id)
    ).all()
    taken: set[tuple[str, str]] = set()
    for subject_index, kind, request_id, created_at in open_requests:
        if (subject_index, kind) not in taken:
            taken.add((subject_index, kind))
            bind.execute(claims.insert().values(subject_index=subject_index, kind=kind, request_id=request_id,
                                                claimed_at=created_at))


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)  # its indexes go with it
