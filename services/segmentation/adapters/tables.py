"""Segmentation's tables (SQLAlchemy Core; the domain stays free of the ORM)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, String, Table, Text, false, text

from shared.db import UTCDateTime, new_metadata
from shared.runtime import MessagingTables

metadata = new_metadata()
messaging = MessagingTables.on(metadata)

# One row per order, whatever order its events arrive in: each event fills in its own facts
# (created_at, paid_at, cancelled_at) and refunds are summed from `refunds`, so the row, and the
# aggregates recomputed from it, end the same for any delivery order.
orders = Table(
    "orders",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("order_id", String(128), primary_key=True),
    Column("customer_id", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("paid_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=True),
    Column("cancelled_at", UTCDateTime, nullable=True),
    Column("refunded_fen", BigInteger, nullable=False, server_default=text("0")),
    Column("fully_refunded", Boolean, nullable=False, server_default=false()),
    Index("ix_orders_merchant_customer", "merchant_id", "customer_id"),
)

order_items = Table(
    "order_items",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("order_id", String(128), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("sku", String(128), nullable=False),
    Column("category", String(128), nullable=True),
    Column("quantity", Integer, nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
)

refunds = Table(
    "refunds",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("refund_id", String(128), primary_key=True),
    Column("order_id", String(128), nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("full", Boolean, nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Index("ix_refunds_merchant_order", "merchant_id", "order_id"),
)

# What each customer bought per category: the basis of repurchase cycles.
customer_categories = Table(
    "customer_categories",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("category", String(128), primary_key=True),
    Column("orders", Integer, nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("first_at", UTCDateTime, nullable=False),
    Column("last_at", UTCDateTime, nullable=False),
)

# Carts and favourites, for "interested but not bought".
behaviours = Table(
    "behaviours",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("sku", String(128), primary_key=True),
    Column("category", String(128), nullable=True),
    Column("count", Integer, nullable=False),
    Column("first_at", UTCDateTime, nullable=False),
    Column("last_at", UTCDateTime, nullable=False),
)

customers = Table(
    "customers",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("paid_orders", Integer, nullable=False),
    Column("paid_amount_fen", BigInteger, nullable=False),
    Column("first_order_at", UTCDateTime, nullable=True),
    Column("last_order_at", UTCDateTime, nullable=True),
    Column("unpaid_orders", Integer, nullable=False, server_default=text("0")),
    Column("updated_at", UTCDateTime, nullable=False),
)

import_jobs = Table(
    "import_jobs",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("source", String(512), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("rows_done", BigInteger, nullable=False),
    Column("rows_imported", BigInteger, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Every version a merchant saved; the highest is in force.
rfm_configs = Table(
    "rfm_configs",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("body", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# Quantile boundaries and averages of the merchant's customers, as last computed.
rfm_stats = Table(
    "rfm_stats",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("config_version", Integer, nullable=False),
    Column("body", Text, nullable=False),
    Column("computed_at", UTCDateTime, nullable=False),
)

# Each customer's segment (levels, cell, tier, class: null before a first paid order) and tags,
# as of the configuration version that scored it; next_change_at is when time alone would
# change any of it (a recency boundary, an order leaving the period, a tag's window): the sweep
# re-scores exactly the rows whose moment has come.
segments = Table(
    "segments",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("config_version", Integer, nullable=False),
    Column("r_level", Integer, nullable=True),
    Column("f_level", Integer, nullable=True),
    Column("m_level", Integer, nullable=True),
    Column("cell", String(8), nullable=True),
    Column("tier", String(1), nullable=True),
    Column("rfm_class", String(32), nullable=True),
    Column("frequency", Integer, nullable=True),  # F and M over the period, as scored
    Column("monetary_fen", BigInteger, nullable=True),
    Column("tags", Text, nullable=False),
    Column("next_change_at", UTCDateTime, nullable=True),
    Column("tags_change_at", UTCDateTime, nullable=True),  # the parts of next_change_at that the
    Column("period_change_at", UTCDateTime, nullable=True),  # configuration's boundaries do not move
    Column("scored_at", UTCDateTime, nullable=False),
    Index("ix_segments_next_change_at", "next_change_at"),
)

# One row per tag a customer has now (the lifecycle tags, later the merchant's own).
customer_tags = Table(
    "customer_tags",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("tag", String(160), primary_key=True),
    Index("ix_customer_tags_merchant_tag", "merchant_id", "tag"),
)

# Re-scoring every customer after a configuration change: a resumable background job.
rescore_jobs = Table(
    "rescore_jobs",
    metadata,
    Column("job_id", String(36), primary_key=True),
    Column("merchant_id", String(128), nullable=False),
    Column("config_version", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("total", Integer, nullable=False),
    Column("done", Integer, nullable=False),
    Column("changed", Integer, nullable=False),
    Column("cursor", String(128), nullable=True),
    # full: every customer through the whole path; scores: levels, cell, tier and class only, in SQL
    Column("mode", String(16), nullable=False, server_default=text("'full'")),
    Column("created_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Index("ix_rescore_jobs_merchant_id", "merchant_id"),
    Index("ix_rescore_jobs_status", "status"),
)

# What the shop tells about a customer (customer.registered / customer.updated).
profiles = Table(
    "profiles",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("region", String(128), nullable=True),
    Column("birthday", String(10), nullable=True),
    Column("registered_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_profiles_merchant_region", "merchant_id", "region"),
)

# Each customer's member level, as loyalty announced it (level.changed): audiences filter on it.
member_levels = Table(
    "member_levels",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("level", String(64), nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
    Index("ix_member_levels_merchant_level", "merchant_id", "level"),
)

# Audiences merchants saved, for the other services to reference by id.
audiences = Table(
    "audiences",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("audience_id", String(36), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("filter", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Merchants' own tags: a customer has tag custom:<name> while the rule's audience filter holds.
tag_rules = Table(
    "tag_rules",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("filter", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Each merchant's segments counted once per local calendar day (the merchant's zone), for trends:
# taken hourly, the row of the current day replaced each time (the last one of a day stands).
# Counts are JSON objects: tiers {"S": n}, classes {code: n}, cells {"3-3-3": n}, tags {tag: n}
# (the lifecycle tags, custom ones left out); the repurchase rate is repeat_buyers / buyers.
segment_snapshots = Table(
    "segment_snapshots",
    metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD in the merchant's time zone
    Column("taken_at", UTCDateTime, nullable=False),
    Column("config_version", Integer, nullable=False),
    Column("customers", BigInteger, nullable=False),
    Column("buyers", BigInteger, nullable=False),
    Column("repeat_buyers", BigInteger, nullable=False),
    Column("tiers", Text, nullable=False),
    Column("classes", Text, nullable=False),
    Column("cells", Text, nullable=False),
    Column("tags", Text, nullable=False),
)
