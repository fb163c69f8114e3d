"""segmentation: messaging tables, orders, customers, import jobs

Revision ID: seg_0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime
from shared.migrations import create_messaging_tables_v1

revision = "seg_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_messaging_tables_v1()
    op.create_table(
        "orders",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("order_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("amount_fen", sa.BigInteger, nullable=False),
        sa.Column("paid_at", UTCDateTime, nullable=True),
    )
    op.create_index("ix_orders_merchant_customer", "orders", ["merchant_id", "customer_id"])
    op.create_table(
        "customers",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("paid_orders", sa.Integer, nullable=False),
        sa.Column("paid_amount_fen", sa.BigInteger, nullable=False),
        sa.Column("first_order_at", UTCDateTime, nullable=True),
        sa.Column("last_order_at", UTCDateTime, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "import_jobs",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("source", sa.String(512), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("rows_done", sa.BigInteger, nullable=False),
        sa.Column("rows_imported", sa.BigInteger, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    for table in ("import_jobs", "customers", "orders", "merchant_api_keys", "merchants", "inbox", "outbox"):
        op.drop_table(table)
