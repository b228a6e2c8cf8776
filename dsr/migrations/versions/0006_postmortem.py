"""Directives on the fate of a person's data after death (loi 78-17 art. 85; dsr.store.directives): blind indexes
of the person and of the designated person, the instruction, the sealed content (issue 15).

Revision ID: 0006_postmortem
Revises: 0005_consent
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_postmortem"
down_revision = "0005_consent"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    if "directives" in sa.inspect(op.get_bind()).get_table_names():
        return  # a database stamped anew at the baseline (its revision table lost) may hold it already
    op.create_table(
        "directives",
        sa.Column("directive_id", sa.String(length=40), nullable=False),
        sa.Column("subject_index", sa.String(length=128), nullable=False),
        sa.Column("designee_index", sa.String(length=128), nullable=False),
        sa.Column("instruction", sa.String(length=16), nullable=False),
        sa.Column("content_sealed", sa.Text(), nullable=False),
        sa.Column("recorded_at", UTC_DATETIME, nullable=False),
        sa.Column("revoked_at", UTC_DATETIME, nullable=True),
        sa.Column("applied_by", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("directive_id"),
    )
    op.create_index("ix_directives_subject_index", "directives", ["subject_index"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_directives_subject_index", table_name="directives")
    op.drop_table("directives")
