"""Loyalty's tables (SQLAlchemy Core; the domain stays free of the ORM).

Every table is keyed by ``merchant_id``. The row every change to a customer's points locks first
is ``accounts`` (``SELECT … FOR UPDATE``, customers in sorted order): entries, lots, orders,
offsets, growth and bonus awards of that customer are written only under that lock, so the
locked row serialises everything that can overspend. Stored value has its own row to lock
(``sv_accounts``). The running sums on both rows are CHECKed non-negative, so a bug that would
overspend fails the transaction instead of committing a negative balance."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from shared.db import BigId, UTCDateTime, new_metadata
from shared.runtime import MessagingTables

metadata = new_metadata()
messaging = MessagingTables.on(metadata)

# Each merchant's rules in force (JSON bodies of the domain models), one row, version bumped by
# every save. No row: the defaults (service_layer.rules.LoyaltyRules()).
rules = Table(
    "loyalty_rules",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("earn_rules", Text, nullable=False),
    Column("ledger_rules", Text, nullable=False),
    Column("offset_rules", Text, nullable=False),
    Column("level_rules", Text, nullable=True),  # null: no member levels
    Column("updated_at", UTCDateTime, nullable=False),
)

# One row per customer: the three sums of the points ledger (Σ entries.points / pending / debt),
# the member level and its review clock, and the row every points change locks.
accounts = Table(
    "accounts",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("balance", BigInteger, nullable=False, server_default=text("0")),
    Column("pending", BigInteger, nullable=False, server_default=text("0")),
    Column("debt", BigInteger, nullable=False, server_default=text("0")),
    Column("level", String(32), nullable=True),  # null: the ladder's first level (or no ladder)
    Column("level_since", UTCDateTime, nullable=True),
    Column("last_review_at", UTCDateTime, nullable=True),
    Column("next_review_at", UTCDateTime, nullable=True),  # null: nothing to review (first level)
    Column("warned_for", UTCDateTime, nullable=True),  # the review that warned of a downgrade
    Column("first_paid_at", UTCDateTime, nullable=True),
    Column("version", Integer, nullable=False, server_default=text("0")),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("balance >= 0", name="balance_not_negative"),
    CheckConstraint("pending >= 0", name="pending_not_negative"),
    CheckConstraint("debt >= 0", name="debt_not_negative"),
    Index("ix_accounts_next_review_at", "next_review_at"),
)

# Points that became available together and expire together (a matured order, a bonus, a
# positive adjustment). Emptied lots stay (remaining 0) so a restore can reopen them.
lots = Table(
    "lots",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("lot_id", String(160), primary_key=True),
    Column("earned_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),  # null: never
    Column("points", BigInteger, nullable=False),
    Column("remaining", BigInteger, nullable=False),
    Column("notified_at", UTCDateTime, nullable=True),  # points.expiring sent
    CheckConstraint("remaining >= 0 AND remaining <= points", name="remaining_within_points"),
    Index("ix_lots_expires_at", "expires_at"),
)

# Every change, with its cause. lot_id is '' for entries that name no lot (pending, debt), so
# that (event_id, kind, lot_id) is unique on both databases: a replayed operation fails on the
# constraint instead of counting twice.
entries = Table(
    "entries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("merchant_id", String(128), nullable=False),
    Column("customer_id", String(128), nullable=False),
    Column("event_id", String(200), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("lot_id", String(160), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("pending", BigInteger, nullable=False),
    Column("debt", BigInteger, nullable=False),
    Column("order_id", String(128), nullable=True),
    Column("reason", String(500), nullable=True),
    Column("operator", String(128), nullable=True),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("merchant_id", "customer_id", "event_id", "kind", "lot_id", name="uq_entries_cause"),
    Index("ix_entries_customer", "merchant_id", "customer_id", "id"),
)

# What each paid order earned (points, and growth value 成长值 while the merchant has levels) and
# how much of it was refunded; matured when its window closed. A refund or cancellation that
# arrives before the payment is kept here (paid_fen null) and applied when the payment arrives.
# The growth in a member's window is Σ (growth - growth_removed) of the orders paid in it, plus
# the growth of the bonuses awarded in it (bonus_awards).
order_points = Table(
    "order_points",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("order_id", String(128), primary_key=True),
    Column("customer_id", String(128), nullable=False),
    Column("paid_fen", BigInteger, nullable=True),
    Column("points", BigInteger, nullable=False),
    Column("growth", BigInteger, nullable=False),
    Column("growth_removed", BigInteger, nullable=False),  # taken back by refunds
    Column("paid_at", UTCDateTime, nullable=True),
    Column("matures_at", UTCDateTime, nullable=True),
    Column("refunded_fen", BigInteger, nullable=False),
    Column("matured", Boolean, nullable=False),
    Column("cancelled", Boolean, nullable=False),
    Index("ix_order_points_due", "matured", "matures_at"),
    Index("ix_order_points_customer", "merchant_id", "customer_id", "paid_at"),
)

# Points earned per customer and local day (gross, after the cap): the daily cap's memory.
daily_earned = Table(
    "daily_earned",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD on the merchant's calendar
    Column("points", BigInteger, nullable=False),
)

# Each once-only bonus awarded (domain.earning.once_key): first order, birthday month per year,
# sign-in per day, review per order.
bonus_awards = Table(
    "bonus_awards",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("once_key", String(160), primary_key=True),
    Column("event", String(32), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("growth", BigInteger, nullable=False),
    Column("cause", String(200), nullable=False),
    Column("awarded_at", UTCDateTime, nullable=False),  # when the action happened
)

# What the shop tells of a customer that loyalty uses (the birthday, for the birthday bonus).
profiles = Table(
    "profiles",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("birthday", String(10), nullable=True),  # YYYY-MM-DD or MM-DD
    Column("updated_at", UTCDateTime, nullable=False),
)

# A cash offset at checkout: the points taken for an order (one per order), and how many came
# back (order cancelled or refunded).
offsets = Table(
    "offsets",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("order_id", String(128), primary_key=True),
    Column("customer_id", String(128), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("fen", BigInteger, nullable=False),
    Column("order_fen", BigInteger, nullable=False),
    Column("restored", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# The points mall. `body` is domain.redemption.MallItem as JSON; `redeemed` counts what was
# taken from the stock, raised atomically (redeemed + q <= stock).
mall_items = Table(
    "mall_items",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("item_id", String(128), primary_key=True),
    Column("body", Text, nullable=False),
    Column("stock", BigInteger, nullable=True),  # null: unlimited
    Column("redeemed", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("stock IS NULL OR redeemed <= stock", name="redeemed_within_stock"),
)

mall_redemptions = Table(
    "mall_redemptions",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("redemption_id", String(64), primary_key=True),
    Column("customer_id", String(128), nullable=False),
    Column("item_id", String(128), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("reward", Text, nullable=False),  # the item's reward as JSON (coupon template or gift sku)
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_mall_redemptions_customer_item", "merchant_id", "customer_id", "item_id"),
)

# ---------------------------------------------------------------- stored value (储值)

sv_plans = Table(
    "sv_plans",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("plan_id", String(128), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("pay_fen", BigInteger, nullable=False),
    Column("bonus_fen", BigInteger, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

sv_accounts = Table(
    "sv_accounts",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("paid_fen", BigInteger, nullable=False),
    Column("bonus_fen", BigInteger, nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("paid_fen >= 0", name="paid_not_negative"),
    CheckConstraint("bonus_fen >= 0", name="bonus_not_negative"),
)

sv_entries = Table(
    "sv_entries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("merchant_id", String(128), nullable=False),
    Column("customer_id", String(128), nullable=False),
    Column("event_id", String(200), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("paid_fen", BigInteger, nullable=False),
    Column("bonus_fen", BigInteger, nullable=False),
    Column("ref", String(160), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    UniqueConstraint("merchant_id", "event_id", "kind", name="uq_sv_entries_cause"),
    Index("ix_sv_entries_customer", "merchant_id", "customer_id", "id"),
)

# A top-up: pending until the payment is confirmed (by the merchant's backend), then credited.
sv_top_ups = Table(
    "sv_top_ups",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("top_up_id", String(64), primary_key=True),
    Column("customer_id", String(128), nullable=False),
    Column("plan_id", String(128), nullable=False),
    Column("payment_ref", String(128), nullable=False),
    Column("pay_fen", BigInteger, nullable=False),
    Column("bonus_fen", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # pending | confirmed
    Column("refunded_fen", BigInteger, nullable=False),
    Column("forfeited_fen", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("confirmed_at", UTCDateTime, nullable=True),
    UniqueConstraint("merchant_id", "payment_ref", name="uq_sv_top_ups_payment_ref"),
    Index("ix_sv_top_ups_customer", "merchant_id", "customer_id"),
)

# A stored-value payment of an order (one per order), and how much of it was refunded.
sv_spends = Table(
    "sv_spends",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("order_id", String(128), primary_key=True),
    Column("customer_id", String(128), nullable=False),
    Column("paid_fen", BigInteger, nullable=False),
    Column("bonus_fen", BigInteger, nullable=False),
    Column("refunded_fen", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
