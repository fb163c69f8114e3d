"""Segmentation's tables (SQLAlchemy Core; the domain stays free of the ORM)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table

from shared.db import UTCDateTime, new_metadata
from shared.runtime import MessagingTables

metadata = new_metadata()
messaging = MessagingTables.on(metadata)

orders = Table(
    "orders", metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("order_id", String(128), primary_key=True),
    Column("customer_id", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("paid_at", UTCDateTime, nullable=True),
    Index("ix_orders_merchant_customer", "merchant_id", "customer_id"),
)

customers = Table(
    "customers", metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("customer_id", String(128), primary_key=True),
    Column("paid_orders", Integer, nullable=False),
    Column("paid_amount_fen", BigInteger, nullable=False),
    Column("first_order_at", UTCDateTime, nullable=True),
    Column("last_order_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
)

import_jobs = Table(
    "import_jobs", metadata,
    Column("merchant_id", String(128), primary_key=True),
    Column("source", String(512), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("rows_done", BigInteger, nullable=False),
    Column("rows_imported", BigInteger, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
)
