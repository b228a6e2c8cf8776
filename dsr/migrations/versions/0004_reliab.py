"""Send intents of outgoing emails (dsr.store.mail_sends): a row per email, written before its SMTP transaction.

Revision ID: 0004_reliab
Revises: 0003_rights
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_reliab"
down_revision = "0003_rights"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "mail_sends" in sa.inspect(op.get_bind()).get_table_names():
        return  # a database stamped anew at the baseline (its revision table lost) may hold it already
    op.create_table(
        "mail_sends",
        sa.Column("send_key", sa.String(length=100), nullable=False),
        sa.Column("request_id", sa.String(length=100), nullable=False),
        sa.Column("template", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=300), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("possible_duplicate", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("send_key"),
    )
    op.create_index("ix_mail_sends_request_id", "mail_sends", ["request_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_mail_sends_request_id", table_name="mail_sends")
    op.drop_table("mail_sends")
