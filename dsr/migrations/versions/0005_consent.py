"""Withdrawals of consent (Art. 7(3)): which purposes an address withdrew, as a blind index only (issue 15).

Revision ID: 0005_consent
Revises: 0004_reliab
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_consent"
down_revision = "0004_reliab"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    if "consent_withdrawals" in sa.inspect(op.get_bind()).get_table_names():
        return  # a database stamped anew at the baseline (its revision table lost) may hold it already
    op.create_table(
        "consent_withdrawals",
        sa.Column("subject_index", sa.String(length=128), nullable=False),
        sa.Column("purpose", sa.String(length=40), nullable=False),
        sa.Column("withdrawn_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("subject_index", "purpose"),
    )


def downgrade() -> None:
    op.drop_table("consent_withdrawals")
