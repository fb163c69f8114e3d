"""segmentation: order lifecycle (created, cancelled, refunds), items, per-category history, behaviours

Revision ID: seg_0002
Revises: seg_0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "seg_0002"
down_revision = "seg_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("created_at", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("cancelled_at", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("refunded_fen", sa.BigInteger, nullable=False, server_default=sa.text("0")))
        batch.add_column(sa.Column("fully_refunded", sa.Boolean, nullable=False, server_default=sa.false()))
    with op.batch_alter_table("customers") as batch:
        batch.add_column(sa.Column("unpaid_orders", sa.Integer, nullable=False, server_default=sa.text("0")))
    op.create_table(
        "order_items",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("order_id", sa.String(128), primary_key=True),
        sa.Column("line", sa.Integer, primary_key=True),
        sa.Column("sku", sa.String(128), nullable=False),
        sa.Column("category", sa.String(128), nullable=True),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("amount_fen", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "refunds",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("refund_id", sa.String(128), primary_key=True),
        sa.Column("order_id", sa.String(128), nullable=False),
        sa.Column("amount_fen", sa.BigInteger, nullable=False),
        sa.Column("full", sa.Boolean, nullable=False),
        sa.Column("occurred_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_refunds_merchant_order", "refunds", ["merchant_id", "order_id"])
    op.create_table(
        "customer_categories",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("category", sa.String(128), primary_key=True),
        sa.Column("orders", sa.Integer, nullable=False),
        sa.Column("amount_fen", sa.BigInteger, nullable=False),
        sa.Column("first_at", UTCDateTime, nullable=False),
        sa.Column("last_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "behaviours",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("sku", sa.String(128), primary_key=True),
        sa.Column("category", sa.String(128), nullable=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("first_at", UTCDateTime, nullable=False),
        sa.Column("last_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    for table in ("behaviours", "customer_categories", "refunds", "order_items"):
        op.drop_table(table)
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("unpaid_orders")
    with op.batch_alter_table("orders") as batch:
        for column in ("fully_refunded", "refunded_fen", "cancelled_at", "created_at"):
            batch.drop_column(column)
