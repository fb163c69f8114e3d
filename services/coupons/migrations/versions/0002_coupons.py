"""coupons: templates, rules, spend, issuances, wallets, orders, referrals, segment replica

Revision ID: cou_0002
Revises: cou_0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision = "cou_0002"
down_revision = "cou_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "templates",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("template_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("stock", sa.Integer, nullable=True),
        sa.Column("issued", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("public", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "customer_limits",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("template_id", sa.String(64), primary_key=True),
        sa.Column("issued", sa.Integer, nullable=False),
    )
    op.create_table(
        "rules",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("rule_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("trigger_type", sa.String(32), nullable=False),
        sa.Column("preset", sa.String(64), nullable=True),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("next_fire_at", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_rules_merchant_trigger", "rules", ["merchant_id", "trigger_type"])
    op.create_index("ix_rules_next_fire_at", "rules", ["next_fire_at"])
    op.create_table(
        "rule_spend",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("rule_id", sa.String(64), primary_key=True),
        sa.Column("period", sa.String(10), primary_key=True),
        sa.Column("spent_fen", sa.BigInteger, nullable=False),
        sa.Column("coupons", sa.Integer, nullable=False),
    )
    op.create_table(
        "issuances",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("issuance_key", sa.String(64), primary_key=True),
        sa.Column("rule_id", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("trigger_key", sa.String(255), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("decided_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_issuances_rule", "issuances", ["merchant_id", "rule_id", "outcome"])
    op.create_table(
        "coupons",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("coupon_id", sa.String(64), primary_key=True),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("template_id", sa.String(64), nullable=False),
        sa.Column("rule_id", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("order_id", sa.String(128), nullable=True),
        sa.Column("starts_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("issued_at", UTCDateTime, nullable=False),
        sa.Column("locked_at", UTCDateTime, nullable=True),
        sa.Column("used_at", UTCDateTime, nullable=True),
        sa.Column("discount_fen", sa.BigInteger, nullable=True),
        sa.Column("order_amount_fen", sa.BigInteger, nullable=True),
        sa.Column("reminded_at", UTCDateTime, nullable=True),
        sa.Column("version", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.create_index("ix_coupons_wallet", "coupons", ["merchant_id", "customer_id", "state"])
    op.create_index("ix_coupons_rule", "coupons", ["merchant_id", "rule_id"])
    op.create_index("ix_coupons_order", "coupons", ["merchant_id", "order_id"])
    op.create_index("ix_coupons_state_expires", "coupons", ["state", "expires_at"])
    op.create_table(
        "orders",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("order_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("amount_fen", sa.BigInteger, nullable=False),
        sa.Column("paid_at", UTCDateTime, nullable=True),
        sa.Column("cancelled_at", UTCDateTime, nullable=True),
        sa.Column("refunded_fen", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    )
    op.create_index("ix_coupons_orders_customer", "orders", ["merchant_id", "customer_id"])
    op.create_table(
        "referrals",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("referrer_id", sa.String(128), nullable=False),
        sa.Column("bound_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "customer_segments",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("tier", sa.String(1), nullable=True),
        sa.Column("cell", sa.String(8), nullable=True),
        sa.Column("rfm_class", sa.String(32), nullable=True),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "customer_segments",
        "referrals",
        "orders",
        "coupons",
        "issuances",
        "rule_spend",
        "rules",
        "customer_limits",
        "templates",
    ):
        op.drop_table(table)
