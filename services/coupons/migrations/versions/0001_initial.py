"""coupons: messaging tables

Revision ID: cou_0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op

from shared.migrations import create_messaging_tables_v1

revision = "cou_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_messaging_tables_v1()


def downgrade() -> None:
    for table in ("merchant_api_keys", "merchants", "inbox", "outbox"):
        op.drop_table(table)
