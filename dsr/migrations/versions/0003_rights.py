"""The suppression list: addresses that objected to direct marketing, as blind indexes only (issue 15).

Revision ID: 0003_rights
Revises: 0002_processor
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_rights"
down_revision = "0002_processor"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "suppressions",
        sa.Column("subject_index", sa.String(length=128), nullable=False),
        sa.Column("since", UTC_DATETIME, nullable=False),
        sa.Column("until", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("subject_index"),
    )
    op.create_index("ix_suppressions_until", "suppressions", ["until"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_suppressions_until", table_name="suppressions")
    op.drop_table("suppressions")
