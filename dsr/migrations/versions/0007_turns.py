"""Each person's line for their systems (one subject, one thing at a time; dsr.store.turns): who holds the turn and
who waits, per subject queue id (a blind index), in place of a queue workflow per person (issue 19).

Revision ID: 0007_turns
Revises: 0006_postmortem
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_turns"
down_revision = "0006_postmortem"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    if "subject_turns" in sa.inspect(op.get_bind()).get_table_names():
        return  # a database stamped anew at the baseline (its revision table lost) may hold it already
    op.create_table(
        "subject_turns",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("subject_turns")
