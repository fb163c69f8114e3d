"""Coupons's tables (SQLAlchemy Core; the domain stays free of the ORM).

Limits that must hold under concurrency live in rows updated atomically: a template's stock
(`templates.issued`), a customer's per-template limit (`customer_limits.issued`), a rule's
budget per day and in total (`rule_spend`), and a coupon's state (`coupons.version`, written
with compare-and-set). A rule's trigger fires once per customer (`issuances`, keyed by rule,
trigger and customer)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, String, Table, Text, text

from shared.db import UTCDateTime, new_metadata
from shared.runtime import MessagingTables

metadata = new_metadata()
messaging = MessagingTables.on(metadata)

# Templates merchants define (body: services.coupons.domain.templates.CouponTemplate as JSON).
templates = Table(
    "templates",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("template_id", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("body", Text, nullable=False),
    Column("stock", Integer, nullable=True),  # null: unlimited
    Column("issued", Integer, nullable=False, server_default=text("0")),
    Column("public", Boolean, nullable=False, server_default=text("false")),
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# How many coupons of a template each customer holds (issued or claimed), for per_customer_limit.
customer_limits = Table(
    "customer_limits",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("template_id", String(64), primary_key=True),
    Column("issued", Integer, nullable=False),
)

# Campaign rules (body: services.coupons.domain.rules.CampaignRule as JSON).
rules = Table(
    "rules",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("rule_id", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("body", Text, nullable=False),
    Column("trigger_type", String(32), nullable=False),
    Column("preset", String(64), nullable=True),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("next_fire_at", UTCDateTime, nullable=True),  # schedule triggers: the next run
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_rules_merchant_trigger", "merchant_id", "trigger_type"),
    Index("ix_rules_next_fire_at", "next_fire_at"),
)

# What a rule spent: one row per local day ("YYYY-MM-DD") and one for its whole life ("total").
rule_spend = Table(
    "rule_spend",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("rule_id", String(64), primary_key=True),
    Column("period", String(10), primary_key=True),
    Column("spent_fen", BigInteger, nullable=False),
    Column("coupons", Integer, nullable=False),
)

# Each (rule, trigger, customer) decided once: issued, held out (for lift), capped, or not in
# the audience. The key is domain.rules.issuance_key.
issuances = Table(
    "issuances",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("issuance_key", String(64), primary_key=True),
    Column("rule_id", String(64), nullable=False),
    Column("customer_id", String(128), nullable=False),
    Column("trigger_key", String(255), nullable=False),
    Column("outcome", String(16), nullable=False),  # issued | holdout | capped | out_of_audience | out_of_stock
    Column("decided_at", UTCDateTime, nullable=False),
    Index("ix_issuances_rule", "merchant_id", "rule_id", "outcome"),
)

# Every coupon in a wallet. State changes bump version (compare-and-set).
coupons = Table(
    "coupons",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("coupon_id", String(64), primary_key=True),
    Column("customer_id", String(128), nullable=False),
    Column("template_id", String(64), nullable=False),
    Column("rule_id", String(64), nullable=True),
    Column("state", String(16), nullable=False),  # available | locked | used | expired | revoked
    Column("order_id", String(128), nullable=True),
    Column("starts_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("issued_at", UTCDateTime, nullable=False),
    Column("locked_at", UTCDateTime, nullable=True),
    Column("used_at", UTCDateTime, nullable=True),
    Column("discount_fen", BigInteger, nullable=True),  # on redemption: what it took off
    Column("order_amount_fen", BigInteger, nullable=True),  # on redemption: the order's paid amount
    Column("reminded_at", UTCDateTime, nullable=True),  # coupon.expiring sent
    Column("version", Integer, nullable=False, server_default=text("0")),
    Index("ix_coupons_wallet", "merchant_id", "customer_id", "state"),
    Index("ix_coupons_rule", "merchant_id", "rule_id"),
    Index("ix_coupons_order", "merchant_id", "order_id"),
    Index("ix_coupons_state_expires", "state", "expires_at"),
)

# The shop's orders as coupons needs them: Nth order and goal triggers, redemption, ROI.
orders = Table(
    "orders",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("order_id", String(128), primary_key=True),
    Column("customer_id", String(128), nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("paid_at", UTCDateTime, nullable=True),
    Column("cancelled_at", UTCDateTime, nullable=True),
    Column("refunded_fen", BigInteger, nullable=False, server_default=text("0")),
    Index("ix_coupons_orders_customer", "merchant_id", "customer_id"),
)

# Who referred whom (referral.bound), for referral conversions.
referrals = Table(
    "referrals",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),  # the referee
    Column("referrer_id", String(128), nullable=False),
    Column("bound_at", UTCDateTime, nullable=False),
)

# Each customer's segment as segmentation announced it (segment.changed): audience filters on
# tier, cell, class and tags are evaluated here without asking segmentation.
customer_segments = Table(
    "customer_segments",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("tier", String(1), nullable=True),
    Column("cell", String(8), nullable=True),
    Column("rfm_class", String(32), nullable=True),
    Column("tags", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Each merchant's wallet policy (the wallet's, cou_0003): whether a full refund gives the coupons
# used on the order back (restore) or not (keep_used, the default), and how many days before
# expiry coupon.expiring is sent. No row: the defaults.
coupon_policies = Table(
    "coupon_policies",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("refund_policy", String(16), nullable=False, server_default=text("'keep_used'")),
    Column("expiring_days_before", Integer, nullable=False, server_default=text("3")),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Coupons an order.paid named and that could not be redeemed (used by another order, expired, not
# the payer's, not applicable, unknown): kept for the merchant's support staff, never applied.
redemption_refusals = Table(
    "redemption_refusals",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("order_id", String(128), primary_key=True),
    Column("coupon_id", String(128), primary_key=True),
    Column("customer_id", String(128), nullable=False),
    Column("code", String(32), nullable=False),
    Column("message", Text, nullable=False),
    Column("refused_at", UTCDateTime, nullable=False),
    Index("ix_redemption_refusals_customer", "merchant_id", "customer_id"),
)
