"""Tasks of systems reached by a person (``processor`` by email, ``manual``): dsr/store/tasks.py.

Revision ID: 0002_processor
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_processor"
down_revision = "0001"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    if "outside_tasks" in sa.inspect(op.get_bind()).get_table_names():
        return  # a database that lost its revision stamp (see 0001): its tables stay as they are
    op.create_table(
        "outside_tasks",
        sa.Column("request_id", sa.String(length=100), nullable=False),
        sa.Column("system", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("asked_on", sa.Date(), nullable=False),
        sa.Column("answer_by", UTC_DATETIME, nullable=False),
        sa.Column("rounds", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("answer_sealed", sa.Text(), nullable=False),
        sa.Column("answered_by", sa.Text(), nullable=False),
        sa.Column("answered_at", UTC_DATETIME, nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("request_id", "system"),
    )
    op.create_index("ix_outside_tasks_status", "outside_tasks", ["status"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_outside_tasks_status", table_name="outside_tasks")
    op.drop_table("outside_tasks")
