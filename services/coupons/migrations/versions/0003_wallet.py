"""coupons: the wallet's policy per merchant and refused redemptions

Revision ID: cou_0003
Revises: cou_0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "cou_0003"
down_revision = "cou_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coupon_policies",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("refund_policy", sa.String(16), nullable=False, server_default=sa.text("'keep_used'")),
        sa.Column("expiring_days_before", sa.Integer, nullable=False, server_default=sa.text("3")),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "redemption_refusals",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("order_id", sa.String(128), primary_key=True),
        sa.Column("coupon_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("refused_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_redemption_refusals_customer", "redemption_refusals", ["merchant_id", "customer_id"])


def downgrade() -> None:
    op.drop_table("redemption_refusals")
    op.drop_table("coupon_policies")
