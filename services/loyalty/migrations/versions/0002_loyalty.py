"""loyalty: rules, accounts, lots, entries, order points, bonuses, offsets, mall, stored value

Revision ID: loy_0002
Revises: loy_0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from shared.db import BigId, UTCDateTime

revision = "loy_0002"
down_revision = "loy_0001"
branch_labels = None
depends_on = None


def _merchant() -> sa.Column:
    return sa.Column("merchant_id", sa.String(128), primary_key=True)


def upgrade() -> None:
    op.create_table(
        "loyalty_rules",
        _merchant(),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("earn_rules", sa.Text, nullable=False),
        sa.Column("ledger_rules", sa.Text, nullable=False),
        sa.Column("offset_rules", sa.Text, nullable=False),
        sa.Column("level_rules", sa.Text, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "accounts",
        _merchant(),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("balance", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("pending", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("debt", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("level", sa.String(32), nullable=True),
        sa.Column("level_since", UTCDateTime, nullable=True),
        sa.Column("last_review_at", UTCDateTime, nullable=True),
        sa.Column("next_review_at", UTCDateTime, nullable=True),
        sa.Column("warned_for", UTCDateTime, nullable=True),
        sa.Column("first_paid_at", UTCDateTime, nullable=True),
        sa.Column("version", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("balance >= 0", name=op.f("ck_accounts_balance_not_negative")),
        sa.CheckConstraint("pending >= 0", name=op.f("ck_accounts_pending_not_negative")),
        sa.CheckConstraint("debt >= 0", name=op.f("ck_accounts_debt_not_negative")),
    )
    op.create_index("ix_accounts_next_review_at", "accounts", ["next_review_at"])
    op.create_table(
        "lots",
        _merchant(),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("lot_id", sa.String(160), primary_key=True),
        sa.Column("earned_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("remaining", sa.BigInteger, nullable=False),
        sa.Column("notified_at", UTCDateTime, nullable=True),
        sa.CheckConstraint("remaining >= 0 AND remaining <= points", name=op.f("ck_lots_remaining_within_points")),
    )
    op.create_index("ix_lots_expires_at", "lots", ["expires_at"])
    op.create_table(
        "entries",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("merchant_id", sa.String(128), nullable=False),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("lot_id", sa.String(160), nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("pending", sa.BigInteger, nullable=False),
        sa.Column("debt", sa.BigInteger, nullable=False),
        sa.Column("order_id", sa.String(128), nullable=True),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("operator", sa.String(128), nullable=True),
        sa.Column("occurred_at", UTCDateTime, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("merchant_id", "customer_id", "event_id", "kind", "lot_id", name="uq_entries_cause"),
    )
    op.create_index("ix_entries_customer", "entries", ["merchant_id", "customer_id", "id"])
    op.create_table(
        "order_points",
        _merchant(),
        sa.Column("order_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("paid_fen", sa.BigInteger, nullable=True),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("growth", sa.BigInteger, nullable=False),
        sa.Column("growth_removed", sa.BigInteger, nullable=False),
        sa.Column("paid_at", UTCDateTime, nullable=True),
        sa.Column("matures_at", UTCDateTime, nullable=True),
        sa.Column("refunded_fen", sa.BigInteger, nullable=False),
        sa.Column("matured", sa.Boolean, nullable=False),
        sa.Column("cancelled", sa.Boolean, nullable=False),
    )
    op.create_index("ix_order_points_due", "order_points", ["matured", "matures_at"])
    op.create_index("ix_order_points_customer", "order_points", ["merchant_id", "customer_id", "paid_at"])
    op.create_table(
        "daily_earned",
        _merchant(),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("points", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "bonus_awards",
        _merchant(),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("once_key", sa.String(160), primary_key=True),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("growth", sa.BigInteger, nullable=False),
        sa.Column("cause", sa.String(200), nullable=False),
        sa.Column("awarded_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "profiles",
        _merchant(),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("birthday", sa.String(10), nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "offsets",
        _merchant(),
        sa.Column("order_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("fen", sa.BigInteger, nullable=False),
        sa.Column("order_fen", sa.BigInteger, nullable=False),
        sa.Column("restored", sa.BigInteger, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "mall_items",
        _merchant(),
        sa.Column("item_id", sa.String(128), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("stock", sa.BigInteger, nullable=True),
        sa.Column("redeemed", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("stock IS NULL OR redeemed <= stock", name=op.f("ck_mall_items_redeemed_within_stock")),
    )
    op.create_table(
        "mall_redemptions",
        _merchant(),
        sa.Column("redemption_id", sa.String(64), primary_key=True),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("reward", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_mall_redemptions_customer_item", "mall_redemptions", ["merchant_id", "customer_id", "item_id"])
    op.create_table(
        "sv_plans",
        _merchant(),
        sa.Column("plan_id", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("pay_fen", sa.BigInteger, nullable=False),
        sa.Column("bonus_fen", sa.BigInteger, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "sv_accounts",
        _merchant(),
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("paid_fen", sa.BigInteger, nullable=False),
        sa.Column("bonus_fen", sa.BigInteger, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("paid_fen >= 0", name=op.f("ck_sv_accounts_paid_not_negative")),
        sa.CheckConstraint("bonus_fen >= 0", name=op.f("ck_sv_accounts_bonus_not_negative")),
    )
    op.create_table(
        "sv_entries",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("merchant_id", sa.String(128), nullable=False),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("paid_fen", sa.BigInteger, nullable=False),
        sa.Column("bonus_fen", sa.BigInteger, nullable=False),
        sa.Column("ref", sa.String(160), nullable=False),
        sa.Column("occurred_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("merchant_id", "event_id", "kind", name="uq_sv_entries_cause"),
    )
    op.create_index("ix_sv_entries_customer", "sv_entries", ["merchant_id", "customer_id", "id"])
    op.create_table(
        "sv_top_ups",
        _merchant(),
        sa.Column("top_up_id", sa.String(64), primary_key=True),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("plan_id", sa.String(128), nullable=False),
        sa.Column("payment_ref", sa.String(128), nullable=False),
        sa.Column("pay_fen", sa.BigInteger, nullable=False),
        sa.Column("bonus_fen", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("refunded_fen", sa.BigInteger, nullable=False),
        sa.Column("forfeited_fen", sa.BigInteger, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("confirmed_at", UTCDateTime, nullable=True),
        sa.UniqueConstraint("merchant_id", "payment_ref", name="uq_sv_top_ups_payment_ref"),
    )
    op.create_index("ix_sv_top_ups_customer", "sv_top_ups", ["merchant_id", "customer_id"])
    op.create_table(
        "sv_spends",
        _merchant(),
        sa.Column("order_id", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("paid_fen", sa.BigInteger, nullable=False),
        sa.Column("bonus_fen", sa.BigInteger, nullable=False),
        sa.Column("refunded_fen", sa.BigInteger, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "sv_spends",
        "sv_top_ups",
        "sv_entries",
        "sv_accounts",
        "sv_plans",
        "mall_redemptions",
        "mall_items",
        "offsets",
        "profiles",
        "bonus_awards",
        "daily_earned",
        "order_points",
        "entries",
        "lots",
        "accounts",
        "loyalty_rules",
    ):
        op.drop_table(table)
